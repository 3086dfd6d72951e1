"""Time one full h-detach training step (forward, backward, clipping, Adam) side by side.

    python bench.py            # the table and, as the last line, one JSON object
    python bench.py --quick    # fewer repetitions, for a smoke check

Candidates, interleaved and repeated in one process (medians after a warm-up):
  reference  per-step Python loop of an autograd cell with h.detach() on drawn steps (as the
             authors' scripts do it)
  fast       this kit's default implementation (model.py)
  nn_lstm    torch.nn.LSTM, plain BPTT (it cannot do h-detach)
  floor      only the 3*T recurrent matmuls a training step cannot avoid (forward h@W,
             backward dh@W, weight gradient), in a plain loop
  cudnn      (CUDA only) torch.nn.LSTM on cuDNN
Ratios are to the floor and to the reference. Peak memory is measured per candidate in a fresh
subprocess (CPU: peak resident memory above the set-up baseline; CUDA: max_memory_allocated).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
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
        net = HDetachNet(1, hidden, classes, impl="reference" if name == "reference" else "fast")
        net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    if last_only:
        y = torch.randint(classes, (batch,), device=device)
    else:
        y = torch.randint(classes, (steps * batch,), device=device)
    p = 0.0 if name in ("nn_lstm", "cudnn") else shape["p"]
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
    names = ["reference", "fast", "nn_lstm", "floor"]
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
    code = ("import bench, torch, resource; d = torch.device(%r); "
            "print(bench._peak_here(%r, %r, d))" % (device.type, name, shape_name))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _peak_here(name, shape_name, device):
    step = make_step(name, SHAPES[shape_name], device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(), step()
        torch.cuda.synchronize()
        return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(), step()
    return round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1)


def bench_device(device, reps):
    result = {}
    for shape_name, shape in SHAPES.items():
        ms = time_all(shape, device, reps)
        entry = {f"{name}_ms": round(v, 2) for name, v in ms.items()}
        entry["fast_over_floor"] = round(ms["fast"] / ms["floor"], 3)
        entry["reference_over_fast"] = round(ms["reference"] / ms["fast"], 3)
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
