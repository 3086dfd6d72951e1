"""The CUDA path's device placement, checked without a GPU on fake CUDA tensors.

torch's ``FakeTensorMode`` runs every op for its metadata only (shape, dtype, device) and raises
on a device mismatch, so the fast forward and backward, a whole training step and evaluation
run here "on CUDA" in CI. What fake tensors cannot run, and what stands in for it:

- torch's autograd engine: with no CUDA device it refuses CUDA tensors ("hasPrimaryContext
  expects a valid device index"), as it sets up per-device threads and streams. ``backward``
  below walks the graph itself and calls every node's backward in dependency order, so every
  backward formula (the fast path's included) runs; only the engine's scheduling does not.
  ``test_stand_in_engine_gives_autograd_gradients`` checks it against ``loss.backward()``.
- data-dependent values: ``.item()`` and ``.tolist()`` have no value on a fake tensor. The
  h-detach draws are host data from a CPU generator, so they are drawn for real (outside the
  fake mode); evaluation's ``.item()`` sums become symbols (a ShapeEnv allows them); the
  training step's ``loss.item()`` (``TrainingRun.step``'s first line) is left out.
- pinned memory (``aten._pin_memory`` is not implemented for fake tensors): the c-detach mask's
  copy is checked for its target and ``non_blocking``, not for pinning.
"""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import copying
import model
import pixelmnist
import test_model as tm
from copying import copying_symbols
from model import HDetachLSTM, HDetachNet

fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor")
symbolic_shapes = pytest.importorskip("torch.fx.experimental.symbolic_shapes")
CUDA = torch.device("cuda", 0)
STEPS = 7  # fake ops cost about as much as real small ones: short sequences keep this quick


def backward(loss):
    """``loss.backward()`` without torch's engine: each node's backward, in dependency order
    (a node runs once every node that feeds it a gradient has run), gradients summed per input
    and reduced to the shape the node expects, as the engine does."""
    deps, nodes, stack = collections.Counter(), {loss.grad_fn}, [loss.grad_fn]
    while stack:
        for nxt, _ in stack.pop().next_functions:
            if nxt is not None:
                deps[nxt] += 1
                if nxt not in nodes:
                    nodes.add(nxt)
                    stack.append(nxt)
    grads, ready = {loss.grad_fn: [torch.ones_like(loss)]}, [loss.grad_fn]
    while ready:
        node = ready.pop()
        inputs = grads.pop(node)
        outs = node(*inputs) if callable(node) else node.apply(*inputs)  # C++ / Python nodes
        outs = outs if isinstance(outs, tuple) else (outs,)
        for (nxt, index), grad in zip(node.next_functions, outs):
            if nxt is None:
                continue
            buf = grads.setdefault(nxt, [None] * len(nxt._input_metadata))
            if grad is not None:
                shape = tuple(nxt._input_metadata[index].shape)
                if tuple(grad.shape) != shape:
                    grad = grad.sum_to_size(shape)
                buf[index] = grad if buf[index] is None else buf[index] + grad
            deps[nxt] -= 1
            if deps[nxt] == 0:
                ready.append(nxt)


class HostToDevice(TorchDispatchMode):
    """Records every copy from a CPU tensor to a CUDA one (with its ``non_blocking``)."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[0] if func is torch.ops.aten._to_copy.default else args[1]
            dst = out if func is torch.ops.aten._to_copy.default else args[0]
            if isinstance(src, torch.Tensor) and src.device.type == "cpu" and \
                    dst.device.type == "cuda":
                self.copies.append((tuple(src.shape), kwargs.get("non_blocking", False)))
        return out


@pytest.fixture
def fake_cuda(monkeypatch):
    """Fake CUDA for the test: tensors made on "cuda" are fake, the draws are real."""
    draw = model.draw_detach_mask

    def real_draws(*args, **kwargs):
        with fake_tensor.unset_fake_temporarily():
            return draw(*args, **kwargs)
    monkeypatch.setattr(model, "draw_detach_mask", real_draws)
    # a small free memory for evaluation's chunk sizes (torch.cuda.mem_get_info needs a GPU)
    monkeypatch.setattr(model, "_cuda_free_bytes", lambda device: 2 ** 30)
    shape_env = symbolic_shapes.ShapeEnv(allow_scalar_outputs=True)
    with fake_tensor.FakeTensorMode(shape_env=shape_env) as mode:
        yield mode


def on_cuda(tensors):
    for t in tensors:
        assert fake_tensor.is_fake(t) and t.device == CUDA, (t.device, type(t))


def fast_lstm(detach):
    with torch.device("cuda"):  # nn.Module.to("cuda") cannot swap in fake parameters
        lstm = HDetachLSTM(tm.IN, tm.H, detach=detach)  # float32: .double() cannot swap either
    on_cuda(lstm.parameters())
    return lstm


def test_stand_in_engine_gives_autograd_gradients():
    x, h0, c0 = tm.make_inputs()
    ours = tm.run(tm.make_lstm("fast", detach="c"), x, h0, c0, p=0.25, backward=backward)
    torchs = tm.run(tm.make_lstm("fast", detach="c"), x, h0, c0, p=0.25)
    for a, b in zip(ours[0] + ours[1], torchs[0] + torchs[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("detach", model.DETACHES)
def test_fast_forward_backward_stay_on_cuda(fake_cuda, monkeypatch, p, detach):
    """Several chunks and sub-chunks, every input needing a gradient: outputs, states and all
    gradients on the device, and no host copy in the second iteration's forward and backward
    but c-detach's mask (non-blocking; the backward's constants are on the device by then)."""
    monkeypatch.setattr(model, "_chunk_steps", lambda *args: 3)
    monkeypatch.setattr(model, "_sub_steps", lambda *args: 2)
    lstm = fast_lstm(detach)
    x, h0, c0 = (t.to("cuda") for t in tm.make_inputs(torch.float32, steps=STEPS))
    gen = torch.Generator().manual_seed(3)
    tm.run(lstm, x, h0, c0, p=p, generator=gen, backward=backward)
    with HostToDevice() as copies:
        outs, grads = tm.run(lstm, x, h0, c0, p=p, generator=gen, backward=backward)
    on_cuda(outs + grads)
    # run() itself moves its loss weights to the device between the forward and the backward
    weights = [((STEPS, tm.B, tm.H), False), ((tm.B, tm.H), False), ((tm.B, tm.H), False)]
    mask = [((STEPS,), True)] if detach == "c" and p > 0 else []  # once, non-blocking
    assert copies.copies == weights + mask


def test_fast_inference_path_stays_on_cuda(fake_cuda):
    lstm = fast_lstm("h")
    x = tm.make_inputs(torch.float32, steps=STEPS)[0].to("cuda")
    with torch.no_grad():
        out, (h, c) = lstm(x, p=0.5, generator=torch.Generator().manual_seed(0))
    on_cuda([out, h, c])


def test_the_suite_catches_loss_weights_left_on_the_cpu(fake_cuda, monkeypatch):
    """tests/test_model.py's run() used to multiply CUDA outputs by CPU loss weights; under
    fake CUDA that fails as it would on a GPU."""
    def cpu_loss_weights(dtype, seed=2, steps=tm.T, device="cpu"):  # the old one: no device
        g = torch.Generator().manual_seed(seed)
        shapes = ((steps, tm.B, tm.H), (tm.B, tm.H), (tm.B, tm.H))
        return [torch.randn(shape, generator=g, dtype=dtype) for shape in shapes]
    monkeypatch.setattr(tm, "loss_weights", cpu_loss_weights)
    x, h0, c0 = (t.to("cuda") for t in tm.make_inputs(torch.float32, steps=STEPS))
    with pytest.raises(RuntimeError, match="same device"):
        tm.run(fast_lstm("h"), x, h0, c0, backward=backward)


@pytest.mark.parametrize("task,detach,p", [("copying", "h", 0.5), ("copying", "c", 0.25),
                                           ("pixel_mnist", "h", 1.0)])
def test_training_step_stays_on_cuda(fake_cuda, task, detach, p):
    """A training step as TrainingRun.step takes it (less its loss.item()): the batch copied
    to the device, loss, backward, clipping, Adam; every parameter, gradient and optimiser
    state on the device."""
    classes = 9 if task == "copying" else 10
    with torch.device("cuda"):
        net = HDetachNet(1, 8, classes, detach=detach)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        if task == "copying":
            x, y = copying.copying_batch(copying_symbols(4, torch.Generator()), 1)
            x, y = x.to("cuda"), y.to("cuda")
            logits = net(x, p=p, generator=gen)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, classes), y.reshape(-1))
        else:
            images = torch.randint(256, (4, 784), dtype=torch.uint8, device="cuda")
            # a permutation's first STEPS pixels: 784 steps cost seconds of fake ops
            x = pixelmnist.pixel_sequences(images, torch.randperm(784)[:STEPS].to("cuda"))
            y = torch.randint(classes, (4,)).to("cuda")
            loss = torch.nn.functional.cross_entropy(
                net(x, p=p, generator=gen, last_only=True), y)
        optimizer.zero_grad(set_to_none=True)
        backward(loss)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
    on_cuda(list(net.parameters()) + [q.grad for q in net.parameters()])
    states = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    assert len(states) == 2 * len(list(net.parameters()))
    on_cuda(states)


def test_evaluation_runs_on_cuda_in_one_chunk(fake_cuda, monkeypatch):
    """copying's and pixel MNIST's evaluation on the device, each split in one chunk (1 GiB
    free holds them; the chunk sizes themselves: the tests at the end)."""
    calls = []
    with torch.device("cuda"):
        net = HDetachNet(1, 8, 9)
    forward = net.forward

    def counted(x, *args, **kwargs):
        calls.append(x.shape[1])
        assert x.device == CUDA
        return forward(x, *args, **kwargs)
    monkeypatch.setattr(net, "forward", counted)
    symbols = copying_symbols(300, torch.Generator())
    loss, accuracy = copying.evaluate(net, symbols, 1, CUDA)
    assert calls == [300]
    with torch.device("cuda"):
        net = HDetachNet(1, 8, 10)
    forward = net.forward
    monkeypatch.setattr(net, "forward", counted)
    split = pixelmnist.Split("valid", torch.randint(256, (250, 784), dtype=torch.uint8,
                                                    device="cuda"),
                             torch.randint(10, (250,), device="cuda"))
    pixelmnist.evaluate(net, split, torch.randperm(784, device="cuda")[:STEPS], 100)
    assert calls == [300, 250]


# ----------------------------------------------------------------------------- evaluation sizes

def test_evaluation_chunks_cpu_unchanged_cuda_as_large_as_fit(monkeypatch):
    cpu = torch.device("cpu")
    for count, cpu_chunk in ((5000, 38), (10000, 100)):
        assert model.eval_chunk_size(cpu, count, 5020, 128, 9, cpu_chunk) == cpu_chunk
    assert copying.eval_chunk(5020, 128) == 38  # the chunk copying used at T' = 5000
    monkeypatch.setattr(model, "_cuda_free_bytes", lambda device: 40 * 2 ** 30)
    # a GPU with 40 GB free: all 5,000 transfer sequences at T' = 5000, all 10,000 MNIST images
    assert model.eval_chunk_size(CUDA, 5000, 5020, 128, 9, 38) == 5000
    assert model.eval_chunk_size(CUDA, 10000, 784, 100, 10, 100) == 10000
    monkeypatch.setattr(model, "_cuda_free_bytes", lambda device: 2 ** 30)
    few = model.eval_chunk_size(CUDA, 5000, 5020, 128, 9, 38)
    assert 38 < few < 5000  # what fits in half of 1 GB
    assert few * 4 * 5021 * (136 + 27 + 3) <= 2 ** 30 // 2
    monkeypatch.setattr(model, "_cuda_free_bytes", lambda device: 0)
    assert model.eval_chunk_size(CUDA, 5000, 5020, 128, 9, 38) == 1


def test_one_chunk_evaluation_equals_the_chunked_one(monkeypatch):
    """What CUDA does (everything at once) gives the CPU's chunked numbers to FP32 rounding;
    run here on the CPU, with the chunk sizes forced."""
    torch.manual_seed(0)
    net = HDetachNet(1, 8, 9)
    symbols = copying_symbols(60, torch.Generator().manual_seed(1))
    monkeypatch.setattr(copying, "eval_chunk", lambda steps, hidden: 7)
    chunked = copying.evaluate(net, symbols, 4, torch.device("cpu"))
    monkeypatch.setattr(copying, "eval_chunk_size", lambda device, count, *args: count)
    whole = copying.evaluate(net, symbols, 4, torch.device("cpu"))
    assert whole[0] == pytest.approx(chunked[0], rel=1e-5)
    assert abs(whole[1] - chunked[1]) <= 100 / (60 * 10)  # at most one prediction flips
    net = HDetachNet(1, 8, 10)
    split = pixelmnist.Split("valid", torch.randint(256, (45, 784), dtype=torch.uint8),
                             torch.randint(10, (45,)))
    order = torch.randperm(784)[:30]
    chunked = pixelmnist.evaluate(net, split, order, 10)
    monkeypatch.setattr(pixelmnist, "eval_chunk_size", lambda device, count, *args: count)
    whole = pixelmnist.evaluate(net, split, order, 10)
    assert whole[0] == pytest.approx(chunked[0], rel=1e-5)
    assert abs(whole[1] - chunked[1]) <= 100 / 45
