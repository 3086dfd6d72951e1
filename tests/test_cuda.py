"""The CUDA path on a real GPU: skipped without one (tests/test_fake_cuda.py checks device
placement everywhere). On a GPU machine, see docs/speed.md, "On a GPU":

    python -m pytest -q tests/test_cuda.py

Covers for CUDA what the CPU suite covers for the fast path (parity with the per-step reference
in float64 and float32, sequences longer than one chunk, last_only, HDetachNet, the no-grad
path, h- and c-detach, p = 0 / 0.25 / 1), that a training step makes no host sync, and the
scripts end to end on --device cuda (an epoch of copying and of pixel MNIST, a SIGTERM and
--resume, transfer_copy.py on the result).
"""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import model
import test_model as tm
from model import HDetachNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def fp32_matmuls():
    """Full FP32 (no TF32) for the comparisons, restored afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# FP32 on a GPU: other kernels and summation orders than the CPU's; 23 steps of saturating
# gates amplify rounding, so 1e-4 relative in norm (float64 keeps the CPU's 1e-10).
DTYPES = [(torch.float64, 1e-10), (torch.float32, 1e-4)]


@pytest.mark.parametrize("chunk,sub", [(None, None), (5, 2)])  # default, or several chunks
@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("detach", model.DETACHES)
def test_fast_matches_reference_on_cuda(monkeypatch, chunk, sub, dtype, rtol, p, last_only,
                                        detach):
    if chunk is not None:
        monkeypatch.setattr(model, "_chunk_steps", lambda *args: chunk)
        monkeypatch.setattr(model, "_sub_steps", lambda *args: sub)
    x, h0, c0 = (t.cuda() for t in tm.make_inputs(dtype))
    results = [tm.run(tm.make_lstm(impl, dtype, detach=detach).cuda(), x, h0, c0, p=p,
                      last_only=last_only) for impl in ("reference", "fast")]
    for tensors in results[1]:
        assert all(t.device.type == "cuda" for t in tensors)
    tm.assert_close(results[1][0], results[0][0], rtol)
    tm.assert_close(results[1][1], results[0][1], rtol)


@pytest.mark.parametrize("dtype,rtol", DTYPES)
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("detach", model.DETACHES)
def test_net_and_inference_match_reference_on_cuda(dtype, rtol, last_only, detach):
    x = tm.make_inputs(dtype, steps=300)[0].cuda()  # several default chunks at B = 3
    results = []
    for impl in ("reference", "fast"):
        torch.manual_seed(0)
        net = HDetachNet(tm.IN, tm.H, 4, impl=impl, detach=detach).to(dtype).cuda()
        logits = net(x, p=0.5, generator=torch.Generator().manual_seed(9), last_only=last_only)
        logits.pow(2).sum().backward()
        with torch.no_grad():
            inference = net(x, last_only=last_only)
        results.append([logits.detach(), inference] + [q.grad for q in net.parameters()])
    tm.assert_close(results[1], results[0], rtol)


@pytest.mark.parametrize("detach,p", [("h", 0.25), ("c", 0.25), ("h", 0.0)])
def test_training_step_makes_no_host_sync(detach, p):
    """Forward, backward, clipping and Adam with the batch already on the device: no sync
    (the run's loss.item() and batch copies are outside, see docs/speed.md)."""
    torch.manual_seed(0)
    net = HDetachNet(1, 64, 9, detach=detach).cuda()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(120, 32, 1, device="cuda")
    y = torch.randint(9, (120 * 32,), device="cuda")
    gen = torch.Generator().manual_seed(1)

    def step():
        loss = torch.nn.functional.cross_entropy(net(x, p=p, generator=gen).reshape(-1, 9), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
    step()  # warm-up: the optimiser's state and the backward's constants are made once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- the scripts

ROOT = Path(__file__).resolve().parents[1]


def script(name, *args, timeout=300):
    proc = subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


COPY = ["--T", "20", "--train-size", "2000", "--test-size", "500", "--batch_size", "20",
        "--lstm-size", "32", "--n_epochs", "2", "--p-detach", "0.5", "--device", "cuda"]


def test_copying_on_cuda_sigterm_resume_and_transfer(tmp_path):
    folder = tmp_path / "copy"
    proc = subprocess.Popen([sys.executable, str(ROOT / "copying.py"), *COPY,
                             "--save-dir", str(folder), "--checkpoint-every", "10"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (folder / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no last.pt in 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "SIGTERM" in out, err
    script("copying.py", "--save-dir", folder, "--resume")
    assert (folder / "results.json").exists()
    out = script("transfer_copy.py", "--model-dir", folder, "--T", 30, 60, "--test-size", 500,
                 "--device", "cuda")
    assert "30" in out and "60" in out


def test_pixel_mnist_one_epoch_on_cuda(tmp_path):
    from test_pixelmnist import make_mnist
    make_mnist(tmp_path / "data")
    folder = tmp_path / "mnist"
    script("pixelmnist.py", "--no-download", "--data-dir", tmp_path / "data", "--save-dir",
           folder, "--lstm-size", 16, "--batch_size", 10, "--train-size", 100,
           "--valid-size", 50, "--n_epochs", 1, "--p-detach", 0.25, "--device", "cuda")
    assert (folder / "results.json").exists()
