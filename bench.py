"""Time one full h-detach training step (forward, backward, clipping, Adam) side by side.

    python bench.py            # the table and, as the last line, one JSON object
    python bench.py --quick    # fewer repetitions, for a smoke check

Candidates, interleaved and repeated in one process (medians after a warm-up):
  reference  per-step Python loop of an autograd cell with h.detach() on drawn steps (as the
             authors' scripts do it)
  fast       this kit's default implementation (model.py), h-detach
  fast_c     the same with c-detach (--detach c) at the same p
  fast_bptt  the same with p = 0 (plain BPTT)
  nn_lstm    torch.nn.LSTM, plain BPTT (it cannot do h-detach)
  floor      only the 3*T recurrent matmuls a training step cannot avoid (forward h@W,
             backward dh@W, weight gradient), in a plain loop
  cudnn      (CUDA only) torch.nn.LSTM on cuDNN
Ratios are to the floor and to the reference; a last line per shape compares c-detach with
h-detach and with plain BPTT (c-detach keeps every recurrent dh matmul, which h-detach skips on
its cut steps, so it can at best cost what plain BPTT costs). Peak memory is measured per
candidate in a fresh subprocess that builds the candidate and then runs two training steps. On
CPU it is the peak of the bytes the C allocator has handed out and not had back (glibc
mallinfo2: uordblks + hblkhd, all arenas, where torch's CPU tensors live), read every ~1 ms by
a background thread, minus the value just before the first step: like CUDA's
max_memory_allocated, it counts live allocations (tensors, autograd graphs, the fast path's
reusable buffers) but not allocator slack, so it does not depend on when glibc returns memory
to the OS (peak RSS does: it varied by 50% between identical runs here). Without mallinfo2 it
falls back to sampled RSS (/proc/self/statm), then to ru_maxrss. On CUDA:
torch.cuda.max_memory_allocated above the allocation before the steps.
"""
import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch
from torch import nn

from model import HDetachNet

SHAPES = {
    # name: batch, hidden, steps, classes, p, loss at the last step only
    "pixel_mnist": dict(batch=100, hidden=100, steps=784, classes=10, p=0.25, last_only=True),
    "copying": dict(batch=100, hidden=128, steps=320, classes=9, p=0.5, last_only=False),
}


class _NNLSTMNet(nn.Module):
    def __init__(self, hidden, classes):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden)
        self.readout = nn.Linear(hidden, classes)

    def forward(self, x, p=0.0, generator=None, last_only=False):
        out, _ = self.lstm(x)
        return self.readout(out[-1] if last_only else out)


def make_step(name, shape, device):
    """A closure that runs one training step of candidate ``name`` on fixed random data."""
    torch.manual_seed(0)
    batch, hidden, steps = shape["batch"], shape["hidden"], shape["steps"]
    classes, last_only = shape["classes"], shape["last_only"]
    x = torch.rand(steps, batch, 1, device=device)
    if name == "floor":
        w = torch.randn(4 * hidden, hidden, device=device) * 0.05
        h = torch.zeros(batch, hidden, device=device)
        gates = torch.empty(batch, 4 * hidden, device=device)
        dgates = torch.randn(batch, 4 * hidden, device=device) * 0.01
        dh = torch.empty(batch, hidden, device=device)
        dw = torch.zeros_like(w)

        def step():
            for _ in range(steps):
                torch.mm(h, w.t(), out=gates)
            for _ in range(steps):
                torch.mm(dgates, w, out=dh)
            for _ in range(steps):
                dw.addmm_(dgates.t(), h)
        return step
    if name in ("nn_lstm", "cudnn"):
        net = _NNLSTMNet(hidden, classes).to(device)
    else:
        net = HDetachNet(1, hidden, classes, impl="reference" if name == "reference" else "fast",
                         detach="c" if name == "fast_c" else "h")
        net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    if last_only:
        y = torch.randint(classes, (batch,), device=device)
    else:
        y = torch.randint(classes, (steps * batch,), device=device)
    p = 0.0 if name in ("nn_lstm", "cudnn", "fast_bptt") else shape["p"]
    use_cudnn = name == "cudnn"

    def step():
        with torch.backends.cudnn.flags(enabled=use_cudnn):
            logits = net(x, p=p, generator=gen, last_only=last_only)
            loss = nn.functional.cross_entropy(logits.reshape(-1, classes), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    return step


def candidates(device):
    names = ["reference", "fast", "fast_c", "fast_bptt", "nn_lstm", "floor"]
    return names + (["cudnn"] if device.type == "cuda" else [])


def time_all(shape, device, reps):
    steps = {name: make_step(name, shape, device) for name in candidates(device)}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in steps}
    for rep in range(reps + 1):  # the first round is the warm-up
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def peak_mb(name, shape_name, device):
    """Peak memory of two training steps of one candidate, in MB, from a fresh process."""
    code = ("import bench, torch; d = torch.device(%r); "
            "print(bench._peak_here(%r, %r, d))" % (device.type, name, shape_name))
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=here)
    return float(out.stdout.strip().splitlines()[-1])


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _malloc_in_use():
    """A function returning the bytes glibc's malloc has handed out and not had back
    (mallinfo2: uordblks + hblkhd, over all arenas), or None without glibc >= 2.33."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def in_use():
        info = mallinfo2()
        return info.uordblks + info.hblkhd
    return in_use


def _peak_above_start(fn, measure, interval=0.001):
    """Run ``fn()``; return max(measure()) while it ran minus measure() before it, in bytes.

    A daemon thread calls ``measure`` every ``interval`` seconds (torch ops release the GIL, so
    it keeps sampling during long kernels); the value after ``fn`` is included too.
    """
    stop = threading.Event()
    base = measure()
    peak = [base]

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], measure())
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        stop.set()
        sampler.join()
    return max(peak[0], measure()) - base


def _peak_here(name, shape_name, device):
    step = make_step(name, SHAPES[shape_name], device)

    def two_steps():
        step()
        step()

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        two_steps()
        torch.cuda.synchronize()
        return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    in_use = _malloc_in_use()
    if in_use is not None:
        above = _peak_above_start(two_steps, in_use)
    elif os.path.exists("/proc/self/statm"):
        page = os.sysconf("SC_PAGE_SIZE")

        def rss():
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * page
        above = _peak_above_start(two_steps, rss)
    else:  # ru_maxrss (KiB on Linux) is a high-water mark since start: coarse
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        two_steps()
        above = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    return round(above / 2**20, 1)


def bench_device(device, reps):
    result = {}
    for shape_name, shape in SHAPES.items():
        ms = time_all(shape, device, reps)
        entry = {f"{name}_ms": round(v, 2) for name, v in ms.items()}
        entry["fast_over_floor"] = round(ms["fast"] / ms["floor"], 3)
        entry["reference_over_fast"] = round(ms["reference"] / ms["fast"], 3)
        entry["c_over_h"] = round(ms["fast_c"] / ms["fast"], 3)
        entry["c_over_bptt"] = round(ms["fast_c"] / ms["fast_bptt"], 3)
        entry["peak_mb"] = {name: peak_mb(name, shape_name, device)
                            for name in candidates(device) if name != "floor"}
        result[shape_name] = entry
        print(f"\n{device.type} / {shape_name}: {shape}  (median of {reps} steps, threads="
              f"{torch.get_num_threads()})")
        print(f"{'candidate':<10} {'ms/step':>9} {'x floor':>8} {'x ref':>7} {'peak MB':>8}")
        for name, v in ms.items():
            peak = entry["peak_mb"].get(name, "")
            print(f"{name:<10} {v:9.1f} {v / ms['floor']:8.2f} {v / ms['reference']:7.2f} "
                  f"{peak:>8}")
        print(f"c-detach / h-detach (fast, p={shape['p']}): {entry['c_over_h']:.3f}; "
              f"c-detach / plain BPTT (fast): {entry['c_over_bptt']:.3f}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 7")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per candidate")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    result = {d.type: bench_device(d, reps) for d in devices}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
