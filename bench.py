"""Time one full h-detach training step (forward, backward, clipping, Adam) side by side.

    python bench.py            # the table and, as the last line, one JSON object
    python bench.py --quick    # fewer repetitions, for a smoke check (several minutes on
                               # 2 CPU cores; it says how long once it has timed a warm-up)
    python bench.py --compare-numerics   # only the fast step, --numerics portable vs native,
                                         # in alternating fresh processes (running/numerics.py)
    python bench.py --compare-flush RUN  # a trained run's step (its last.pt) with IEEE
                                         # denormals vs --flush-denormal, one thread
    python bench.py --captioning         # a show_tell training step: this kit's model vs the
                                         # authors' branch's per-step nn.LSTM loop

It prints its progress and each result as it is measured (to stderr, the tables to stdout).

Candidates, interleaved and repeated in one process (medians after a warm-up):
  reference  per-step Python loop of an autograd cell with h.detach() on drawn steps (as the
             authors' scripts do it)
  fast       this kit's default implementation (model.py), h-detach
  fast_c     the same with c-detach (--detach c) at the same p
  fast_bptt  the same with p = 0 (plain BPTT)
  nn_lstm    torch.nn.LSTM, plain BPTT (it cannot do h-detach)
  floor      only the 3*T recurrent matmuls a training step cannot avoid (forward h@W,
             backward dh@W, weight gradient), in a plain loop
  cudnn      (CUDA only) torch.nn.LSTM on cuDNN, in FP32 (TF32 off, like every other row)
  cudnn_tf32 (CUDA only) the same with TF32 allowed (cuDNN's and cuBLAS' default for speed):
             not like for like, shown apart
Every candidate runs with TF32 off (FP32 matmuls) but cudnn_tf32; the settings are restored
after each step.

Launch counts: per shape, the operator launches of one training step are counted with torch's
profiler (the ops that Python and autograd dispatch, not those nested inside another op; on
CUDA also the GPU kernels): forward and backward per time step, and the optimiser step
(zero_grad, clipping, Adam). On CUDA every such op is at least one kernel launch, which costs
about as much as the small per-step kernels themselves, so this is what the GPU path's speed
follows, and it can be tracked on a CPU: ``fast_cudapath`` and ``fast_c_cudapath`` count the
fast path (h-, c-detach) with the code CUDA runs (the per-chunk weight gradient, CUDA's
sub-chunks, Adam's foreach form) on the CPU; clipping stays in its CPU form (a loop).
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
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

if __name__ == "__main__":
    # Before torch loads: it picks its CPU kernels once, at import (running/numerics.py).
    from running import numerics
    numerics.pin_before_torch(sys.argv[1:])

import torch
from torch import nn

import model
from model import HDetachNet
from running.errors import UsageError

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


@contextlib.contextmanager
def _tf32(enabled):
    """TF32 for cuBLAS matmuls and cuDNN on (cudnn_tf32) or off (every other row), restored
    afterwards: the fast path and cuDNN compared in the same FP32 arithmetic."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def make_step(name, shape, device, phases=False):
    """A closure that runs one training step of candidate ``name`` on fixed random data.
    With ``phases`` it takes a function ``phase(label)`` that returns a context manager for
    each of "forward", "backward" and "optimizer" (the launch counts)."""
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
    if name in ("nn_lstm", "cudnn", "cudnn_tf32"):
        net = _NNLSTMNet(hidden, classes).to(device)
    else:
        net = HDetachNet(1, hidden, classes, impl="reference" if name == "reference" else "fast",
                         detach="c" if name in ("fast_c", "fast_c_cudapath") else "h")
        net = net.to(device)
    # fast_cudapath: Adam in the form it takes on CUDA (foreach; the CPU default is a loop)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3,
                           foreach=True if name.endswith("_cudapath") else None)
    gen = torch.Generator().manual_seed(1)
    if last_only:
        y = torch.randint(classes, (batch,), device=device)
    else:
        y = torch.randint(classes, (steps * batch,), device=device)
    p = 0.0 if name in ("nn_lstm", "cudnn", "cudnn_tf32", "fast_bptt") else shape["p"]
    use_cudnn = name in ("cudnn", "cudnn_tf32")
    tf32 = name == "cudnn_tf32"

    def step(phase=lambda label: contextlib.nullcontext()):
        with _tf32(tf32), torch.backends.cudnn.flags(enabled=use_cudnn, allow_tf32=tf32), \
                _cuda_path(name.endswith("_cudapath")):
            with phase("forward"):
                logits = net(x, p=p, generator=gen, last_only=last_only)
                loss = nn.functional.cross_entropy(logits.reshape(-1, classes), y)
            with phase("optimizer"):
                opt.zero_grad(set_to_none=True)
            with phase("backward"):
                loss.backward()
            with phase("optimizer"):
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
    return step


@contextlib.contextmanager
def _cuda_path(enabled):
    """Run the fast path's CUDA-only code on any device (for fast_cudapath's launch counts)."""
    if not enabled:
        yield
        return
    old = model._per_chunk_weight_grad
    model._per_chunk_weight_grad = lambda device: True  # which also takes CUDA's sub-chunks
    try:
        yield
    finally:
        model._per_chunk_weight_grad = old


# Ops that launch no kernel: views, bare allocations, and item() (the profiled items are Adam's
# step counts, CPU tensors on every device); and composite ops that launch one only to copy.
_NO_KERNEL = {"select", "slice", "view", "unbind", "transpose", "t", "detach", "split", "chunk",
              "expand", "as_strided", "unsqueeze", "squeeze", "permute", "narrow", "alias",
              "_unsafe_view", "empty", "empty_like", "new_empty", "empty_strided", "item",
              "_local_scalar_dense", "lift_fresh", "resize_", "set_", "result_type"}
_COPY_IF_NEEDED = {"reshape", "to", "_to_copy", "contiguous", "flatten", "type_as"}

LAUNCH_CANDIDATES = ["reference", "fast", "fast_c", "fast_bptt", "fast_cudapath",
                     "fast_c_cudapath", "nn_lstm"]


def count_launches(name, shape, device):
    """Operator launches of one training step of ``name`` (after a warm-up step), from torch's
    profiler: {"forward_per_step", "backward_per_step", "optimizer"} and, on CUDA, the same
    for GPU kernels (``kernels_*``). An op counts once however many ops it calls inside."""
    step = make_step(name, shape, device)
    step()
    totals = count_step_launches(step, device)
    steps = shape["steps"]
    result = {"forward_per_step": round(totals["forward"] / steps, 2),
              "backward_per_step": round(totals["backward"] / steps, 2),
              "optimizer": totals["optimizer"]}
    if device.type == "cuda":
        result.update({"kernels_forward_per_step": round(totals["kernels_forward"] / steps, 2),
                       "kernels_backward_per_step": round(totals["kernels_backward"] / steps,
                                                          2),
                       "kernels_optimizer": totals["kernels_optimizer"]})
    return result


def count_step_launches(step, device):
    """The operator launches of one call of ``step(phase=...)`` (already warmed up), per phase:
    {"forward", "backward", "optimizer"} and, on CUDA, ``kernels_<phase>`` (GPU kernels)."""
    from torch.profiler import ProfilerActivity, profile, record_function
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        step(phase=lambda label: record_function("bench::" + label))
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    cpu = torch.autograd.DeviceType.CPU
    # the phases' time ranges (on CUDA the backward's ops run on autograd's device thread,
    # outside the calling thread's ranges, so ops are placed by time, not by parent)
    ranges = [(ev.name[len("bench::"):], ev.time_range.start, ev.time_range.end)
              for ev in events if ev.name.startswith("bench::") and ev.device_type == cpu]

    def phase_of(ev):
        for label, start, end in ranges:
            if start <= ev.time_range.start <= end:
                return label
        return None

    def launches(ev):
        """1 if the op runs a kernel of its own: views and bare allocations do not, a composite
        op (reshape, to, contiguous) only when it copies."""
        name = ev.name[len("aten::"):]
        if name in _NO_KERNEL:
            return 0
        if name in _COPY_IF_NEEDED:
            stack = list(ev.cpu_children)
            while stack:
                child = stack.pop()
                if child.name in ("aten::copy_", "aten::clone"):
                    return 1
                stack.extend(child.cpu_children)
            return 0
        return 1

    def nested(ev):
        parent = ev.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    ops = {label: 0 for label in ("forward", "backward", "optimizer")}
    kernels = dict(ops)
    for ev in events:
        if ev.device_type != cpu:
            continue
        label = phase_of(ev)
        if label is None:
            continue
        if ev.name.startswith("aten::") and not nested(ev):
            ops[label] += launches(ev)
        kernels[label] += len(getattr(ev, "kernels", []))  # the GPU kernels it launched
    return {**ops, **{f"kernels_{label}": n for label, n in kernels.items()}}


def candidates(device):
    names = ["reference", "fast", "fast_c", "fast_bptt", "nn_lstm", "floor"]
    return names + (["cudnn", "cudnn_tf32"] if device.type == "cuda" else [])


def progress(message):
    """A progress line on stderr, at once (stdout keeps the tables and the JSON line)."""
    print(message, file=sys.stderr, flush=True)


def time_all(shape, device, reps, label=""):
    steps = {name: make_step(name, shape, device) for name in candidates(device)}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in steps}
    for rep in range(reps + 1):  # the first round is the warm-up
        round_start = time.perf_counter()
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            if rep:
                times[name].append(time.perf_counter() - start)
            else:
                progress(f"{label}: warm-up {name} {time.perf_counter() - start:.1f} s")
        took = time.perf_counter() - round_start
        if rep == 0:
            # the rest of this shape: the timed rounds, one fresh process per candidate for
            # peak memory (start-up plus two steps) and one profiled step per candidate
            rest = took * reps + len(steps) * (3 + 2 * took / len(steps)) + 3 * took
            progress(f"{label}: warm-up round {took:.1f} s; this shape needs about "
                     f"{rest / 60:.1f} min more")
        else:
            progress(f"{label}: round {rep}/{reps} {took:.1f} s")
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    for name, v in ms.items():
        progress(f"{label}: {name} {v:.1f} ms/step")
    return ms


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
        label = f"{device.type} / {shape_name}"
        ms = time_all(shape, device, reps, label)
        entry = {f"{name}_ms": round(v, 2) for name, v in ms.items()}
        entry["fast_over_floor"] = round(ms["fast"] / ms["floor"], 3)
        entry["reference_over_fast"] = round(ms["reference"] / ms["fast"], 3)
        entry["c_over_h"] = round(ms["fast_c"] / ms["fast"], 3)
        entry["c_over_bptt"] = round(ms["fast_c"] / ms["fast_bptt"], 3)
        entry["peak_mb"] = {}
        for name in candidates(device):
            if name != "floor":
                entry["peak_mb"][name] = peak_mb(name, shape_name, device)
                progress(f"{label}: {name} peak {entry['peak_mb'][name]} MB")
        names = LAUNCH_CANDIDATES + (["cudnn"] if device.type == "cuda" else [])
        entry["launches"] = {}
        for name in names:
            entry["launches"][name] = count_launches(name, shape, device)
            progress(f"{label}: {name} launches {entry['launches'][name]}")
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
        print(f"operator launches ({label}, T={shape['steps']}; views and allocations not "
              "counted; fast_cudapath: the code CUDA runs)")
        kernels = device.type == "cuda"
        print(f"{'candidate':<16} {'fwd/step':>9} {'bwd/step':>9} {'optimizer':>10}" +
              (f" {'GPU kernels fwd/step, bwd/step, optimizer':>44}" if kernels else ""))
        for name, n in entry["launches"].items():
            line = (f"{name:<16} {n['forward_per_step']:9.2f} {n['backward_per_step']:9.2f} "
                    f"{n['optimizer']:10d}")
            if kernels:
                line += (f" {n['kernels_forward_per_step']:14.2f} "
                         f"{n['kernels_backward_per_step']:9.2f} {n['kernels_optimizer']:10d}")
            print(line)
        sys.stdout.flush()
    return result


def _time_fast_here(reps):
    """In a child process of ``compare_numerics``: the median ms of ``reps`` fast training
    steps per shape on the CPU, with the kernels this process was pinned to."""
    out = {"aten": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    for shape_name, shape in SHAPES.items():
        step = make_step("fast", shape, torch.device("cpu"))
        step()  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        out[shape_name] = 1000 * statistics.median(times)
    return out


def compare_numerics(reps, pairs=3):
    """Portable vs native numerics on the CPU: the fast training step timed in fresh processes
    (the kernels are chosen when torch loads), ``pairs`` portable/native pairs alternated so
    that the machine's drift hits both; medians over the pairs and their ratio per shape."""
    here = os.path.dirname(os.path.abspath(__file__))
    runs = {"portable": [], "native": []}
    for pair in range(pairs):
        for mode in runs:
            done = subprocess.run([sys.executable, os.path.join(here, "bench.py"), "--numerics",
                                   mode, "--numerics-child", "--reps", str(reps)],
                                  capture_output=True, text=True, check=True, cwd=here)
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            progress(f"numerics: pair {pair + 1}/{pairs} {mode} ({runs[mode][-1]['aten']}) "
                     + ", ".join(f"{name} {runs[mode][-1][name]:.1f} ms" for name in SHAPES))
    result = {mode: {"aten": got[0]["aten"]} for mode, got in runs.items()}
    print(f"\nnumerics on cpu: fast training step, median over {pairs} alternating process "
          f"pairs of the median of {reps} steps (threads={runs['portable'][0]['threads']})")
    print(f"{'shape':<12} {'portable ms':>12} {'native ms':>10} {'native/portable':>16}")
    for name in SHAPES:
        ms = {mode: statistics.median(run[name] for run in got) for mode, got in runs.items()}
        for mode in runs:
            result[mode][name] = round(ms[mode], 2)
        ratio = ms["native"] / ms["portable"]
        result[f"{name}_native_over_portable"] = round(ratio, 3)
        print(f"{name:<12} {ms['portable']:12.1f} {ms['native']:10.1f} {ratio:16.3f}")
    print(f"kernels: portable {result['portable']['aten']}, native {result['native']['aten']}")
    sys.stdout.flush()
    return result


def compare_flush(folder, reps):
    """IEEE denormals vs flushed (``--flush-denormal``) on the weights of a trained run.

    Copying has denormals only once training has made its gradients vanish (pixel MNIST's
    single loss at step 784 has them from the first step), so this loads ``folder``'s last.pt. Its
    step is forward, backward and clipping on one batch, alternated between the two modes in
    this process at one thread (the flag needs one), without Adam's update, so that every rep
    sees the same weights and the same cut steps. The batch: copying sequences of the run's T;
    for pixel MNIST, uniform noise of MNIST's shape (the run's data is not loaded). Also says
    how far the two modes' gradients are apart, relative to the gradient's largest entry.
    """
    from copying import copying_batch, copying_symbols
    from running.annealing import p_in_force
    from running.runfolder import read_checkpoint
    checkpoint = read_checkpoint(os.path.join(folder, "last.pt"))[0]
    config = checkpoint["config"]
    net = HDetachNet(**checkpoint["model_config"])
    net.load_state_dict(checkpoint["model"])
    data = torch.Generator().manual_seed(0)
    batch = config["batch_size"]
    last_only = checkpoint["task"] != "copying"
    if last_only:
        x = torch.rand(784, batch, 1, generator=data)
        y = torch.randint(10, (batch,), generator=data)
    else:
        x, y = copying_batch(copying_symbols(batch, data), config["T"])
        y = y.reshape(-1)
    p = p_in_force(config["p_detach"], checkpoint["epoch"], config["n_epochs"],
                   config["anneal_p"])
    classes = checkpoint["model_config"]["num_classes"]

    def step():
        net.zero_grad(set_to_none=True)
        logits = net(x, p=p, generator=torch.Generator().manual_seed(1), last_only=last_only)
        nn.functional.cross_entropy(logits.reshape(-1, classes), y).backward()
        grads = torch.cat([q.grad.flatten() for q in net.parameters()])
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        return grads

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times, grads = {False: [], True: []}, {}
    try:
        for rep in range(reps + 1):  # the first round is a warm-up
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                start = time.perf_counter()
                grads[flush] = step()
                if rep:
                    times[flush].append(time.perf_counter() - start)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    ms = {flush: 1000 * statistics.median(got) for flush, got in times.items()}
    apart = float((grads[True] - grads[False]).abs().max() / grads[False].abs().max())
    print(f"\n{folder}: {checkpoint['task']} at epoch {checkpoint['epoch']}, p = {p}, batch "
          f"{batch}, one thread, {torch.backends.cpu.get_cpu_capability()} kernels; forward + "
          f"backward + clipping, median of {reps} alternating pairs")
    print(f"IEEE denormals {ms[False]:.1f} ms, flushed {ms[True]:.1f} ms, "
          f"flushed/IEEE {ms[True] / ms[False]:.3f}; gradients apart by {apart:.2e} of the "
          "largest entry")
    sys.stdout.flush()
    return {"ieee_ms": round(ms[False], 2), "flushed_ms": round(ms[True], 2),
            "flushed_over_ieee": round(ms[True] / ms[False], 3), "gradients_apart": apart}


class BranchShowTell(nn.Module):
    """Show and Tell as the authors' branch computes its training step: ``nn.LSTM(bias=False)``
    called once per time step, ``h.detach()`` on the drawn steps (its ShowTellModel.forward),
    with the same weights as ``ours`` (copied), for a side-by-side timing."""

    def __init__(self, ours):
        super().__init__()
        self.ours = ours
        lstm = ours.lstm
        self.core = nn.LSTM(lstm.input_size, lstm.hidden_size, bias=False)
        with torch.no_grad():
            self.core.weight_ih_l0.copy_(lstm.weight_ih)
            self.core.weight_hh_l0.copy_(lstm.weight_hh)

    def forward(self, fc, labels, p, rng):
        from captioning.models import caption_steps
        ours = self.ours
        steps = caption_steps(labels)
        state, outputs = None, []
        for t in range(steps + 1):
            xt = ours.img_embed(fc) if t == 0 else ours.embed(labels[:, t - 1])
            if state is not None and p > 0 and rng.random() <= p:
                state = (state[0].detach(), state[1])
            out, state = self.core(xt.unsqueeze(0), state)
            if t > 0:
                outputs.append(out[0])
        return ours._readout(torch.stack(outputs, 1))


def compare_captioning(reps, device=torch.device("cpu"), vocab=9487, hidden=512, fc_size=2048,
                       length=16):
    """A show_tell training step (forward, masked NLL, backward, element-wise clamp, Adam) at
    the branch's sizes (10 images x 5 captions, 512 units, 2048-d fc features, COCO's 9,487
    words, 16 words + end), p = 0.25: this kit's model (the whole caption through the fast
    HDetachLSTM) against the branch's per-step nn.LSTM loop with the same weights, interleaved,
    median of ``reps`` after a warm-up."""
    import random

    from captioning.models import LanguageModelCriterion, build_model
    torch.manual_seed(0)
    batch = 50
    ours = build_model("show_tell", vocab, input_encoding_size=hidden, rnn_size=hidden,
                       fc_feat_size=fc_size).to(device)
    branch = BranchShowTell(ours).to(device)
    fc = torch.randn(batch, fc_size, device=device)
    labels = torch.zeros(batch, length + 2, dtype=torch.long, device=device)
    labels[:, 1:length + 1] = torch.randint(1, vocab + 1, (batch, length), device=device)
    masks = (torch.arange(length + 2, device=device) <= length + 1).float().expand(batch, -1)
    criterion = LanguageModelCriterion()
    generator, rng = torch.Generator().manual_seed(1), random.Random(1)

    def step(name, phase=contextlib.nullcontext):
        model = ours if name == "ours" else branch
        optimizer = steps_state.setdefault(name, torch.optim.Adam(model.parameters(), 1e-4))
        with phase("forward"):
            logprobs = ours(fc, None, labels, p=0.25, generator=generator) \
                if name == "ours" else branch(fc, labels, 0.25, rng)
            loss = criterion(logprobs, labels[:, 1:], masks[:, 1:])
        with phase("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with phase("optimizer"):
            for param in model.parameters():
                if param.grad is not None:
                    param.grad.clamp_(-0.1, 0.1)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    steps_state = {}
    names = ("ours", "branch")
    for name in names:  # warm-up
        step(name)
    times = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            start = time.perf_counter()
            step(name)
            times[name].append(1000 * (time.perf_counter() - start))
    result = {name: statistics.median(values) for name, values in times.items()}
    result["ours_over_branch"] = result["ours"] / result["branch"]
    # what a GPU would pay per step in launches (one kernel at least per op: docs/speed.md)
    result["launches"] = {name: count_step_launches(functools.partial(step, name), device)
                          for name in names}
    print(f"\n{device.type} / captioning show_tell step (10 images x 5 captions, {hidden} "
          f"units, vocab {vocab}, {length + 1} steps, p=0.25; median of {reps}, "
          f"threads={torch.get_num_threads()})")
    print(f"{'candidate':<28}{'ms/step':>10}")
    print(f"{'ours (fast HDetachLSTM)':<28}{result['ours']:>10.1f}")
    print(f"{'branch (per-step nn.LSTM)':<28}{result['branch']:>10.1f}")
    print(f"ours / branch: {result['ours_over_branch']:.3f}")
    for name in names:
        counts = result["launches"][name]
        print(f"operator launches per training step, {name}: " + ", ".join(
            f"{label} {counts[label]}" for label in ("forward", "backward", "optimizer")) +
            f" (total {sum(counts[label] for label in ('forward', 'backward', 'optimizer'))})")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 7")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per candidate")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--numerics", choices=["portable", "native"], default="portable",
                        help="the CPU kernels of this process (running/numerics.py; default "
                             "portable)")
    parser.add_argument("--compare-numerics", action="store_true",
                        help="only time the fast step with portable vs native numerics, in "
                             "alternating fresh processes (3 pairs)")
    parser.add_argument("--compare-flush", metavar="RUN_DIR",
                        help="only time a trained run's step (RUN_DIR/last.pt) with IEEE "
                             "denormals vs --flush-denormal, alternated, one thread")
    parser.add_argument("--captioning", action="store_true",
                        help="only time a show_tell training step: this kit's model vs the "
                             "authors' branch's per-step nn.LSTM loop, same weights")
    parser.add_argument("--numerics-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    if args.numerics_child:
        print(json.dumps(_time_fast_here(reps)))
        return {}
    if args.compare_numerics:
        return {"numerics": compare_numerics(args.reps or 30)}
    if args.captioning:
        return {"captioning": compare_captioning(reps)}
    if args.compare_flush:
        try:
            return {"flush": compare_flush(args.compare_flush, args.reps or 10)}
        except UsageError as error:
            print(f"bench.py: {error}", file=sys.stderr)
            return 2
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda" and not devices:
        print("bench.py: --device cuda was asked for, but no CUDA device is available",
              file=sys.stderr)
        return 2
    progress(f"bench: {reps} timed steps per candidate, {len(SHAPES)} shapes on "
             f"{', '.join(d.type for d in devices)}: several minutes on 2 CPU cores with --quick "
             "(more on a loaded machine); an estimate per shape follows its warm-up round")
    result = {d.type: bench_device(d, reps) for d in devices}
    if devices[0].type == "cpu":
        result["numerics"] = compare_numerics(max(reps, 5))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(outcome if isinstance(outcome, int) else 0)  # 2: a usage error; else the results
