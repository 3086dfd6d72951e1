"""Tests of model.py: nn.LSTM parity, h- and c-detach semantics, fast == reference, draws, init."""
import math

import pytest
import torch
from torch import nn

import model
from model import HDetachLSTM, HDetachNet, draw_detach_mask

T, B, IN, H = 23, 3, 2, 5  # T is not a multiple of the chunk sizes the tests force


def manual_lstm(x, h, c, w_ih, w_hh, b_ih, b_hh, cut, detach="h"):
    """A plain per-step LSTM loop that detaches h_{t-1} (or c_{t-1}) where ``cut[t]``."""
    outs = []
    for t in range(x.shape[0]):
        if cut[t] and detach == "h":
            h = h.detach()
        elif cut[t]:
            c = c.detach()
        i, f, g, o = (x[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


def make_inputs(dtype=torch.float64, seed=0, steps=T):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, B, IN, generator=g, dtype=dtype)
    h0 = 0.5 * torch.randn(B, H, generator=g, dtype=dtype)
    c0 = torch.randn(B, H, generator=g, dtype=dtype)
    return x, h0, c0


def make_lstm(impl, dtype=torch.float64, seed=1, detach="h"):
    torch.manual_seed(seed)
    lstm = HDetachLSTM(IN, H, impl=impl, detach=detach).to(dtype)
    with torch.no_grad():  # larger weights than the init, so that gates saturate somewhat
        for p in lstm.parameters():
            p.mul_(2.0)
    return lstm


def loss_weights(dtype, seed=2, steps=T, device="cpu"):
    """Drawn on the CPU (the same numbers on every device), then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    shapes = ((steps, B, H), (B, H), (B, H))
    return [torch.randn(shape, generator=g, dtype=dtype).to(device) for shape in shapes]


def run(lstm, x, h0, c0, p=0.0, seed=3, last_only=False, generator=None, backward=None):
    """Forward and backward of a random linear loss; returns outputs and all gradients.
    ``backward(loss)`` replaces ``loss.backward()`` (the fake-CUDA tests run their own)."""
    x, h0, c0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    lstm.zero_grad(set_to_none=True)
    out, (h, c) = lstm(x, (h0, c0), p=p, generator=gen)
    # on the outputs' device: the weights built on the CPU failed with CUDA outputs
    w_out, w_h, w_c = loss_weights(x.dtype, steps=x.shape[0], device=x.device)
    loss = (h * w_h).sum() + (c * w_c).sum()
    if not last_only:
        loss = loss + (out * w_out).sum()
    loss.backward() if backward is None else backward(loss)
    zero = torch.zeros_like
    grads = [t.grad if t.grad is not None else zero(t) for t in (x, h0, c0)]
    grads += [p.grad if p.grad is not None else zero(p) for p in lstm.parameters()]
    return [out.detach(), h.detach(), c.detach()], grads


def assert_close(actual, expected, rtol):
    """Relative error in norm, per tensor (robust to entries that are tiny by cancellation)."""
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        err = (a - e).norm().item()
        assert err <= rtol * max(e.norm().item(), 1e-12), (err, e.norm().item())


# --- parameters -----------------------------------------------------------------------------

def test_parameters_follow_nn_lstm_and_init_range():
    lstm, ref = HDetachLSTM(3, 64), nn.LSTM(3, 64)
    names = [n for n, _ in lstm.named_parameters()]
    assert names == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    for name, p in lstm.named_parameters():
        assert p.shape == getattr(ref, name + "_l0").shape
        bound = 1 / math.sqrt(64)
        assert p.abs().max() <= bound
        # spread over the whole range (not a narrower init): uniform's extremes and spread
        assert p.max() > 0.9 * bound and p.min() < -0.9 * bound
        assert abs(p.std().item() - bound / math.sqrt(3)) < 0.15 * bound
    net = HDetachNet(3, 64, 7)
    assert isinstance(net.lstm, HDetachLSTM) and isinstance(net.readout, nn.Linear)
    assert net.readout.out_features == 7 and net.lstm.impl == "fast"
    assert set(model.IMPLS) == {"fast", "reference"}
    with pytest.raises(ValueError):
        HDetachLSTM(3, 4, impl="nope")
    assert net.lstm.detach == "h" and HDetachNet(3, 4, 2, detach="c").lstm.detach == "c"
    assert set(model.DETACHES) == {"h", "c"}
    with pytest.raises(ValueError, match="detach"):
        HDetachLSTM(3, 4, detach="hc")


# --- parity with torch.nn.LSTM (plain BPTT) -------------------------------------------------

@pytest.mark.parametrize("impl", model.IMPLS)
@pytest.mark.parametrize("p", [0.0, -1.0])
def test_matches_nn_lstm_without_hdetach(impl, p):
    torch.manual_seed(0)
    ref = nn.LSTM(IN, H).double()
    lstm = HDetachLSTM(IN, H, impl=impl).double()
    with torch.no_grad():
        for name, param in lstm.named_parameters():
            param.copy_(getattr(ref, name + "_l0"))
    x, h0, c0 = make_inputs()
    w_out, w_h, w_c = loss_weights(torch.float64)
    outs, grads = run(lstm, x, h0, c0, p=p)

    xr, h0r, c0r = (t.clone().requires_grad_() for t in (x, h0, c0))
    out, (h, c) = ref(xr, (h0r.unsqueeze(0), c0r.unsqueeze(0)))
    ((out * w_out).sum() + (h[0] * w_h).sum() + (c[0] * w_c).sum()).backward()
    expected = [out.detach(), h[0].detach(), c[0].detach()]
    expected_grads = [xr.grad, h0r.grad, c0r.grad] + [
        getattr(ref, name + "_l0").grad for name, _ in lstm.named_parameters()]
    assert_close(outs, expected, 1e-12)
    assert_close(grads, expected_grads, 1e-10)


# --- h-detach semantics ---------------------------------------------------------------------

@pytest.mark.parametrize("impl", model.IMPLS)
@pytest.mark.parametrize("p", [0.25, 0.5, 1.0])
def test_hdetach_matches_a_loop_that_detaches_the_drawn_steps(impl, p):
    lstm = make_lstm(impl)
    x, h0, c0 = make_inputs()
    cut = draw_detach_mask(T, p, torch.Generator().manual_seed(3))
    assert 0 < sum(cut) <= T and (p < 1 or all(cut))
    outs, grads = run(lstm, x, h0, c0, p=p, seed=3)

    xm, h0m, c0m = (t.clone().requires_grad_() for t in (x, h0, c0))
    params = [q.detach().clone().requires_grad_() for q in lstm.parameters()]
    out, h, c = manual_lstm(xm, h0m, c0m, *params, cut)
    w_out, w_h, w_c = loss_weights(torch.float64)
    ((out * w_out).sum() + (h * w_h).sum() + (c * w_c).sum()).backward()
    zero = torch.zeros_like
    expected = [t.grad if t.grad is not None else zero(t) for t in (xm, h0m, c0m)] + [
        q.grad for q in params]
    assert_close(outs, [out.detach(), h.detach(), c.detach()], 1e-12)
    assert_close(grads, expected, 1e-10)
    # and h-detach did change the gradient (the test could tell the two apart)
    _, plain = run(lstm, x, h0, c0, p=0.0)
    assert (grads[4] - plain[4]).norm() > 1e-3 * plain[4].norm()


@pytest.mark.parametrize("impl", model.IMPLS)
def test_p1_cuts_every_h_path_but_the_c_path_carries_gradient(impl):
    lstm = make_lstm(impl)
    x, h0, c0 = make_inputs()
    x, h0, c0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    out, _ = lstm(x, (h0, c0), p=1.0, generator=torch.Generator().manual_seed(0))
    gx, gh0, gc0 = torch.autograd.grad(out[-1].sum(), (x, h0, c0), allow_unused=True)
    assert gh0 is None or gh0.abs().max() == 0       # h0 reaches h_T only through h paths
    assert gc0.abs().max() > 1e-12                   # c0 reaches it through c (decayed by the
    assert gx[0].abs().max() > 1e-12                 # forget gates); d h_T / d x_1 likewise
    # it equals the loop with h detached at every step ...
    xm = x.detach().clone().requires_grad_()
    params = [q.detach() for q in lstm.parameters()]
    out_m, _, _ = manual_lstm(xm, h0.detach(), c0.detach(), *params, [True] * T)
    (gxm,) = torch.autograd.grad(out_m[-1].sum(), (xm,))
    assert_close([gx], [gxm], 1e-10)
    # ... and differs from plain BPTT
    (gx_plain,) = torch.autograd.grad(lstm(x, (h0, c0))[0][-1].sum(), (x,))
    assert (gx_plain[0] - gx[0]).abs().max() > 1e-3 * gx_plain[0].abs().max()


def test_readout_gradient_of_a_cut_h_still_flows():
    """A cut h_{t-1} keeps the gradient from its own readout (only the recurrent path is cut)."""
    lstm = make_lstm("fast")
    x, h0, c0 = make_inputs()
    x = x.clone().requires_grad_()
    out, _ = lstm(x, (h0, c0), p=1.0, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(out[T // 2].sum(), (x,))
    assert g[T // 2].abs().max() > 0 and g[: T // 2].abs().max() > 0
    assert g[T // 2 + 1:].abs().max() == 0


# --- c-detach semantics ---------------------------------------------------------------------

# seed 3 cuts the first and the last step at p = 0.25, seed 2 neither
@pytest.mark.parametrize("impl", model.IMPLS)
@pytest.mark.parametrize("p,seed", [(0.25, 3), (0.25, 2), (1.0, 3)])
@pytest.mark.parametrize("last_only", [False, True])
def test_cdetach_matches_a_loop_that_detaches_c_on_the_drawn_steps(impl, p, seed, last_only):
    lstm = make_lstm(impl, detach="c")
    x, h0, c0 = make_inputs()
    gen = torch.Generator().manual_seed(seed)
    cut = draw_detach_mask(T, p, torch.Generator().manual_seed(seed))
    assert 0 < sum(cut) <= T and (p < 1 or all(cut))
    assert cut[0] == cut[-1] == (seed == 3)
    outs, grads = run(lstm, x, h0, c0, p=p, last_only=last_only, generator=gen)
    drawn = torch.Generator().manual_seed(seed)
    draw_detach_mask(T, p, drawn)
    assert torch.equal(gen.get_state(), drawn.get_state())  # the same draws as h-detach

    xm, h0m, c0m = (t.clone().requires_grad_() for t in (x, h0, c0))
    params = [q.detach().clone().requires_grad_() for q in lstm.parameters()]
    out, h, c = manual_lstm(xm, h0m, c0m, *params, cut, detach="c")
    w_out, w_h, w_c = loss_weights(torch.float64)
    loss = (h * w_h).sum() + (c * w_c).sum()
    if not last_only:
        loss = loss + (out * w_out).sum()
    loss.backward()
    zero = torch.zeros_like
    expected = [t.grad if t.grad is not None else zero(t) for t in (xm, h0m, c0m)] + [
        q.grad for q in params]
    assert_close(outs, [out.detach(), h.detach(), c.detach()], 1e-12)
    assert_close(grads, expected, 1e-10)
    # c-detach changed the gradient, and not into h-detach's (the test tells all three apart)
    _, plain = run(lstm, x, h0, c0, p=0.0, last_only=last_only)
    _, hcut = run(make_lstm(impl), x, h0, c0, p=p, seed=seed, last_only=last_only)
    for other in (plain, hcut):
        assert (grads[4] - other[4]).norm() > 1e-3 * other[4].norm()


@pytest.mark.parametrize("impl", model.IMPLS)
def test_cdetach_p1_leaves_only_the_h_path(impl):
    """Loss on the last output only: c0 reaches it only through c_0 -> c_1, cut at step 1, so
    its gradient is exactly zero; h0 and W_hh reach it through the h path, which is whole.
    (6 steps: over 23 the h path alone lets d h_T / d h0 vanish to ~1e-13, the paper's point.)"""
    lstm = make_lstm(impl, detach="c")
    x, h0, c0 = make_inputs(steps=6)
    x, h0, c0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    out, _ = lstm(x, (h0, c0), p=1.0, generator=torch.Generator().manual_seed(0))
    gx, gh0, gc0, gw_hh = torch.autograd.grad(out[-1].sum(), (x, h0, c0, lstm.weight_hh),
                                              allow_unused=True)
    assert gc0 is None or gc0.abs().max() == 0
    assert gh0.abs().max() > 1e-4 and gx[0].abs().max() > 1e-4 and gw_hh.abs().max() > 1e-2
    # h-detach at p = 1 is the mirror image: c0 gets a gradient, h0 none
    hcut = make_lstm(impl)
    out_h, _ = hcut(x, (h0, c0), p=1.0, generator=torch.Generator().manual_seed(0))
    gh0_h, gc0_h = torch.autograd.grad(out_h[-1].sum(), (h0, c0), allow_unused=True)
    assert gc0_h.abs().max() > 1e-12 and (gh0_h is None or gh0_h.abs().max() == 0)
    # the forward is a plain LSTM's whatever is detached
    assert_close([out.detach()], [out_h.detach()], 1e-12)


def test_cdetach_cut_c_still_gets_gradient_through_h():
    """A cut c_{t-1} is removed from step t only: the readout of h_{t-1} = o tanh(c_{t-1})
    still sends gradient into it, so a loss on one output reaches every earlier input."""
    lstm = make_lstm("fast", detach="c")
    x, h0, c0 = make_inputs()
    x = x.clone().requires_grad_()
    out, _ = lstm(x, (h0, c0), p=1.0, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(out[T // 2].sum(), (x,))
    assert all(g[t].abs().max() > 0 for t in range(T // 2 + 1))
    assert g[T // 2 + 1:].abs().max() == 0


# --- draws ----------------------------------------------------------------------------------

def test_draws_are_seeded_and_one_per_step():
    a = draw_detach_mask(200, 0.3, torch.Generator().manual_seed(7))
    b = draw_detach_mask(200, 0.3, torch.Generator().manual_seed(7))
    c = draw_detach_mask(200, 0.3, torch.Generator().manual_seed(8))
    assert a == b and a != c and len(a) == 200 and all(isinstance(v, bool) for v in a)
    assert 30 < sum(a) < 90  # about p * steps
    u = torch.rand(200, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert a == (u <= 0.3).tolist()
    assert all(draw_detach_mask(50, 1.0, torch.Generator().manual_seed(1)))


def test_draws_are_made_on_the_cpu_whatever_the_default_device():
    """The draws come from a CPU generator: under set_default_device("cuda") (here "meta",
    which needs no GPU) they must still be made on the CPU, not fail or move to the device."""
    expected = draw_detach_mask(50, 0.5, torch.Generator().manual_seed(4))
    torch.set_default_device("meta")
    try:
        assert torch.empty(1).device.type == "meta"  # the default device is in force
        drawn = draw_detach_mask(50, 0.5, torch.Generator().manual_seed(4))
    finally:
        torch.set_default_device(None)
    assert drawn == expected


@pytest.mark.parametrize("p", [0.0, -0.5])
def test_p_at_most_zero_draws_nothing(p):
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    assert draw_detach_mask(T, p, gen) is None
    for impl in model.IMPLS:
        lstm = make_lstm(impl)
        lstm(make_inputs()[0], p=p, generator=gen)
        assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("impl", model.IMPLS)
def test_draws_consumed_in_training_and_not_under_no_grad(impl):
    lstm = make_lstm(impl)
    x = make_inputs()[0]
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    with torch.no_grad():
        out_eval, _ = lstm(x, p=0.5, generator=gen)
    assert torch.equal(gen.get_state(), state)
    out_train, _ = lstm(x, p=0.5, generator=gen)
    torch.testing.assert_close(out_eval, out_train.detach(), rtol=1e-12, atol=1e-12)
    expected = torch.Generator().manual_seed(5)
    torch.rand(T, generator=expected, dtype=torch.float64)
    assert torch.equal(gen.get_state(), expected.get_state())
    # without a generator the draws come from the global one
    torch.manual_seed(11)
    lstm(x, p=0.5)
    after = torch.rand(3)
    torch.manual_seed(11)
    draw_detach_mask(T, 0.5)
    assert torch.equal(after, torch.rand(3))


# --- fast == reference ----------------------------------------------------------------------

CHUNKINGS = [(5, 2), (4, 4), (1, 1), (T, 3)]  # (steps per chunk, steps per backward sub-chunk)


@pytest.mark.parametrize("chunk,sub", CHUNKINGS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("detach", model.DETACHES)
def test_fast_matches_reference(monkeypatch, chunk, sub, dtype, rtol, p, last_only, detach):
    monkeypatch.setattr(model, "_chunk_steps", lambda *args: chunk)
    monkeypatch.setattr(model, "_sub_steps", lambda *args: sub)
    x, h0, c0 = make_inputs(dtype)
    results, states = [], []
    for impl in ("reference", "fast"):
        gen = torch.Generator().manual_seed(3)
        results.append(run(make_lstm(impl, dtype, detach=detach), x, h0, c0, p=p,
                           last_only=last_only, generator=gen))
        states.append(gen.get_state())
    (ref_out, ref_grads), (fast_out, fast_grads) = results
    assert_close(fast_out, ref_out, rtol)
    assert_close(fast_grads, ref_grads, rtol)
    assert torch.equal(states[0], states[1])  # the same draws, so a run can switch impl


# The CUDA path's weight and input gradients: one GEMM per sub-chunk instead of one per step
# (model._per_chunk_weight_grad). Forced on here, so that the CPU checks the code CUDA runs.
@pytest.mark.parametrize("chunk,sub", [(5, 2), (1, 1), (T, 3)])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("detach", model.DETACHES)
def test_per_chunk_weight_gradient_matches_reference(monkeypatch, chunk, sub, dtype, rtol, p,
                                                     last_only, detach):
    monkeypatch.setattr(model, "_chunk_steps", lambda *args: chunk)
    monkeypatch.setattr(model, "_sub_steps", lambda *args: sub)
    monkeypatch.setattr(model, "_per_chunk_weight_grad", lambda device: True)
    x, h0, c0 = make_inputs(dtype)
    ref_out, ref_grads = run(make_lstm("reference", dtype, detach=detach), x, h0, c0, p=p,
                             last_only=last_only)
    fast_out, fast_grads = run(make_lstm("fast", dtype, detach=detach), x, h0, c0, p=p,
                               last_only=last_only)
    assert_close(fast_out, ref_out, rtol)
    assert_close(fast_grads, ref_grads, rtol)


def test_cpu_default_keeps_the_per_step_weight_gradient(monkeypatch):
    """Committed CPU runs are resumed across sessions: on the CPU the default backward must be
    the per-step path (bit for bit), the per-chunk GEMM only on CUDA."""
    assert model._per_chunk_weight_grad(torch.device("cpu")) is False
    assert model._per_chunk_weight_grad(torch.device("cuda")) is True
    monkeypatch.setattr(model, "_chunk_steps", lambda *args: 5)
    monkeypatch.setattr(model, "_sub_steps", lambda *args: 3)
    x, h0, c0 = make_inputs(torch.float32)
    results = {}
    for mode in ("default", False, True):
        if mode != "default":
            monkeypatch.setattr(model, "_per_chunk_weight_grad", lambda device, m=mode: m)
        results[mode] = run(make_lstm("fast", torch.float32, detach="c"), x, h0, c0, p=0.25)
    for a, b in zip(results["default"][0] + results["default"][1],
                    results[False][0] + results[False][1]):
        assert torch.equal(a, b)
    # the per-chunk sum is another order: equal to rounding, and not the path taken above
    assert_close(results[True][1], results[False][1], 1e-5)


def test_fast_loss_through_some_outputs_only():
    """Gradient arriving at a few steps only (None for the final state), chunked."""
    x, h0, c0 = make_inputs()
    grads = []
    for impl in ("reference", "fast"):
        lstm = make_lstm(impl)
        xg = x.clone().requires_grad_()
        out, _ = lstm(xg, (h0, c0), p=0.25, generator=torch.Generator().manual_seed(4))
        (out[3].sum() + out[17].pow(2).sum()).backward()
        grads.append([xg.grad] + [q.grad for q in lstm.parameters()])
    assert_close(grads[1], grads[0], 1e-10)


def test_fast_backward_twice_and_buffers_reused_between(monkeypatch):
    """retain_graph: a second backward of a graph whose buffers a later step reused."""
    monkeypatch.setattr(model, "_chunk_steps", lambda *args: 4)
    lstm = make_lstm("fast")
    x, h0, c0 = make_inputs()
    w_out = loss_weights(torch.float64)[0]
    out, _ = lstm(x, (h0, c0), p=0.25, generator=torch.Generator().manual_seed(1))
    kept = out.detach().clone()
    loss = (out * w_out).sum()
    loss.backward(retain_graph=True)
    first = lstm.weight_hh.grad.clone()
    # another step takes the same (pooled) buffers and overwrites them
    out2, _ = lstm(x.flip(0), (c0, h0), p=0.25, generator=torch.Generator().manual_seed(2))
    (out2 * w_out).sum().backward()
    assert torch.equal(out, kept)  # outputs are never pooled
    lstm.zero_grad(set_to_none=True)
    loss.backward()
    torch.testing.assert_close(lstm.weight_hh.grad, first, rtol=1e-12, atol=0)


def test_fast_inference_path_matches_reference():
    x, h0, c0 = make_inputs()
    with torch.no_grad():
        results = [make_lstm(impl)(x, (h0, c0)) for impl in ("reference", "fast")]
    (out_r, (h_r, c_r)), (out_f, (h_f, c_f)) = results
    assert_close([out_f, h_f, c_f], [out_r, h_r, c_r], 1e-12)
    assert out_f.shape == (T, B, H) and h_f.shape == c_f.shape == (B, H)


@pytest.mark.parametrize("chunk,sub", [(5, 2), (T, T)])
@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("detach", model.DETACHES)
@pytest.mark.parametrize("per_chunk", [False, True])
def test_net_fast_matches_reference(monkeypatch, chunk, sub, last_only, detach, per_chunk):
    """The net reads the fast path's outputs in its (T, H, B) layout; its gradient goes back
    in that layout, which the backward uses without copies (per_chunk: the CUDA backward)."""
    monkeypatch.setattr(model, "_chunk_steps", lambda *args: chunk)
    monkeypatch.setattr(model, "_sub_steps", lambda *args: sub)
    monkeypatch.setattr(model, "_per_chunk_weight_grad", lambda device: per_chunk)
    x = make_inputs()[0]
    results = []
    for impl in ("reference", "fast"):
        torch.manual_seed(0)
        net = HDetachNet(IN, H, 4, impl=impl, detach=detach).double()
        logits = net(x, p=0.5, generator=torch.Generator().manual_seed(9), last_only=last_only)
        logits.pow(2).sum().backward()
        assert logits.shape == ((B, 4) if last_only else (T, B, 4))
        results.append([logits.detach()] + [q.grad for q in net.parameters()])
    assert_close(results[1], results[0], 1e-10)


# (the CUDA versions of these tests: tests/test_cuda.py; device placement everywhere:
# tests/test_fake_cuda.py)


def test_fast_refuses_outputs_modified_in_place():
    # The backward reads the outputs' storage, so changing them in place must be refused.
    layer = model.HDetachLSTM(2, 3)
    out, _ = layer(torch.randn(4, 2, 2))
    with pytest.raises(RuntimeError, match="inplace"):
        out.mul_(2)


# --- bias=False (nn.LSTM(bias=False), as the captioning models use it) ------------------------

def make_biasless(impl, detach="h", seed=1):
    torch.manual_seed(seed)
    lstm = HDetachLSTM(IN, H, impl=impl, detach=detach, bias=False).double()
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(2.0)
    return lstm


def test_bias_false_has_no_bias_parameters():
    lstm, ref = HDetachLSTM(3, 4, bias=False), nn.LSTM(3, 4, bias=False)
    assert [n for n, _ in lstm.named_parameters()] == ["weight_ih", "weight_hh"]
    assert list(lstm.state_dict()) == ["weight_ih", "weight_hh"]
    assert [n for n, _ in ref.named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]
    assert lstm.bias_ih is None and lstm.bias_hh is None and lstm.bias is False
    assert "bias=False" in repr(lstm) and "bias" not in repr(HDetachLSTM(3, 4))
    # the same init law as nn.LSTM(bias=False), and the same draws: weight_ih, then weight_hh
    torch.manual_seed(4)
    ours = HDetachLSTM(3, 4, bias=False)
    torch.manual_seed(4)
    theirs = nn.LSTM(3, 4, bias=False)
    assert torch.equal(ours.weight_ih, theirs.weight_ih_l0)
    assert torch.equal(ours.weight_hh, theirs.weight_hh_l0)
    # its state dict loads into a fresh one, and not into a layer with biases
    HDetachLSTM(3, 4, bias=False).load_state_dict(lstm.state_dict())
    with pytest.raises(RuntimeError, match="Missing"):
        HDetachLSTM(3, 4).load_state_dict(lstm.state_dict())


@pytest.mark.parametrize("impl", model.IMPLS)
def test_bias_false_matches_nn_lstm_bias_false(impl):
    torch.manual_seed(0)
    ref = nn.LSTM(IN, H, bias=False).double()
    lstm = HDetachLSTM(IN, H, impl=impl, bias=False).double()
    with torch.no_grad():
        for name, param in lstm.named_parameters():
            param.copy_(2.0 * getattr(ref, name + "_l0"))
            getattr(ref, name + "_l0").mul_(2.0)
    x, h0, c0 = make_inputs()
    w_out, w_h, w_c = loss_weights(torch.float64)
    outs, grads = run(lstm, x, h0, c0, p=0.0)

    xr, h0r, c0r = (t.clone().requires_grad_() for t in (x, h0, c0))
    out, (h, c) = ref(xr, (h0r.unsqueeze(0), c0r.unsqueeze(0)))
    ((out * w_out).sum() + (h[0] * w_h).sum() + (c[0] * w_c).sum()).backward()
    expected = [out.detach(), h[0].detach(), c[0].detach()]
    expected_grads = [xr.grad, h0r.grad, c0r.grad, ref.weight_ih_l0.grad, ref.weight_hh_l0.grad]
    assert len(grads) == len(expected_grads)
    assert_close(outs, expected, 1e-12)
    assert_close(grads, expected_grads, 1e-10)
    with torch.no_grad():  # the inference path too
        out_i, (h_i, c_i) = lstm(x, (h0, c0))
    assert_close([out_i, h_i, c_i], expected, 1e-12)


@pytest.mark.parametrize("impl", model.IMPLS)
@pytest.mark.parametrize("detach", model.DETACHES)
def test_bias_false_detach_matches_the_per_step_loop(impl, detach):
    lstm = make_biasless(impl, detach)
    x, h0, c0 = make_inputs()
    cut = draw_detach_mask(T, 0.25, torch.Generator().manual_seed(3))
    assert 0 < sum(cut) < T
    outs, grads = run(lstm, x, h0, c0, p=0.25, seed=3)

    xm, h0m, c0m = (t.clone().requires_grad_() for t in (x, h0, c0))
    params = [q.detach().clone().requires_grad_() for q in lstm.parameters()]
    zero = torch.zeros(4 * H, dtype=torch.float64)
    out, h, c = manual_lstm(xm, h0m, c0m, *params, zero, zero, cut, detach=detach)
    w_out, w_h, w_c = loss_weights(torch.float64)
    ((out * w_out).sum() + (h * w_h).sum() + (c * w_c).sum()).backward()
    expected = [t.grad if t.grad is not None else torch.zeros_like(t) for t in (xm, h0m, c0m)]
    expected += [q.grad for q in params]
    assert_close(outs, [out.detach(), h.detach(), c.detach()], 1e-12)
    assert_close(grads, expected, 1e-10)
    # the cut did change the gradient
    _, plain = run(lstm, x, h0, c0, p=0.0)
    assert (grads[4] - plain[4]).norm() > 1e-3 * plain[4].norm()
