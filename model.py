"""The h-detach LSTM and the small network the tasks share.

h-detach (Kanuparthi et al., ICLR 2019): at every time step, before the cell is applied, one
uniform draw u in [0, 1) is made for the whole batch; if u <= p, the incoming hidden state
h_{t-1} is cut from the backward graph. Forward values are those of a plain LSTM; only the
gradient changes: the recurrent h path through step t is removed, while the c path and the
gradient h_{t-1} receives from its own readout still flow. p <= 0 is plain BPTT.

Two implementations of the same layer, selected with ``impl``:

- ``"reference"``: a per-step Python loop of an autograd cell that calls ``h.detach()`` on the
  drawn steps, written the way the authors' scripts are. It is the ground truth of the tests.
- ``"fast"`` (default): one input-projection matmul for the whole sequence, a forward loop that
  keeps the gate activations, and a hand-written backward over the whole sequence
  (``_FastLSTMFunction``). A blocked step skips its recurrent ``dh`` matmul, and the weight
  gradients are a few large matmuls instead of one per step.

Both consume the same draws (``draw_detach_mask``), so a run can switch implementation and keep
its trajectory.
"""
import math

import torch
from torch import nn

IMPLS = ("fast", "reference")


def draw_detach_mask(steps, p, generator=None):
    """The h-detach draws for one sequence: a list of ``steps`` booleans, True = cut h_{t-1}.

    One uniform draw per step for the whole batch, ``u <= p`` blocks (the protocol's rule).
    ``p <= 0`` draws nothing and returns None (plain BPTT), so vanilla runs leave the draw
    stream untouched. The draws come from ``generator`` (a CPU ``torch.Generator``), or from
    torch's global CPU generator when it is None; drawing on the CPU keeps a seeded run's draws
    identical on CPU and GPU.
    """
    if p <= 0:
        return None
    u = torch.rand(steps, generator=generator, dtype=torch.float64)
    return (u <= p).tolist()


def _reference_lstm(x, h, c, w_ih, w_hh, b_ih, b_hh, mask):
    """Per-step loop with an autograd cell, as in the authors' scripts."""
    outputs = []
    for t in range(x.shape[0]):
        if mask is not None and mask[t]:
            h = h.detach()
        gates = x[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c


def _to_ofig(w, hidden):
    """Reorder gate rows from torch's (i, f, g, o) to (o, i, f, g).

    In that order the sigmoid gates are one block and g the last, so the backward writes the
    gate gradients with two multiplications (o from dh; i, f, g from dc).
    """
    i, f, g, o = w.split(hidden, 0)
    return torch.cat((o, i, f, g), 0)


def _from_ofig(w, hidden):
    o, i, f, g = w.split(hidden, 0)
    return torch.cat((i, f, g, o), 0)


def _chunk_steps(batch, hidden, steps):
    """Steps per chunk: about 8 MB of gates, so that no buffer the loop allocates per call is
    large enough for the C allocator to hand to mmap (fresh pages cost more than the math)."""
    return max(1, min(steps, (2 ** 18) // max(1, batch * 4 * hidden)))


class _FastLSTMFunction(torch.autograd.Function):
    """Whole-sequence LSTM with a hand-written backward; see the module docstring.

    CPU notes that shaped it: tanh is several times dearer than sigmoid in torch's CPU kernels,
    so tanh(a) is computed as 2*sigmoid(2a) - 1 (the factor 2 is folded into the g rows of the
    weights, so one sigmoid covers all four gates); buffers are kept per chunk of steps (see
    ``_chunk_steps``); per-step views come from ``unbind`` rather than Python indexing.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, mask):
        steps, batch, _ = x.shape
        hidden = w_hh.shape[1]
        H = hidden
        w_ih_r, w_hh_r = _to_ofig(w_ih, H), _to_ofig(w_hh, H)
        bias_r = _to_ofig(b_ih + b_hh, H)
        # Doubling the g rows makes sigmoid(.) of them sigmoid(2a), and tanh(a) = 2 sigmoid(2a) - 1.
        scale = x.new_ones(4 * H, 1)
        scale[3 * H:] = 2
        w_ih_f, w_hh_ft, bias_f = w_ih_r * scale, (w_hh_r * scale).t(), bias_r * scale[:, 0]
        minus_one = x.new_full((batch, H), -1.0)
        out = x.new_empty(steps, batch, H)
        chunk = _chunk_steps(batch, H, steps)
        saved = []
        h, c = h0, c0
        for start in range(0, steps, chunk):
            n = min(chunk, steps - start)
            # The chunk's input projections in one matmul; each step adds its recurrent term in
            # place, and the buffer ends up holding the activated gates the backward needs.
            gates = torch.addmm(bias_f, x[start:start + n].reshape(n * batch, -1), w_ih_f.t())
            gates = gates.view(n, batch, 4 * H)
            # cs[0] holds the chunk's incoming c; cs[k + 1] the state after its step k.
            cs, tanh_cs = x.new_empty(n + 1, batch, H), x.new_empty(n, batch, H)
            cs[0] = c
            views = zip(gates.unbind(0), gates[..., :H].unbind(0), gates[..., H:2 * H].unbind(0),
                        gates[..., 2 * H:3 * H].unbind(0), gates[..., 3 * H:].unbind(0),
                        cs[1:].unbind(0), tanh_cs.unbind(0), out[start:start + n].unbind(0))
            for g_all, o, i, f, g, c_next, tc, h_next in views:
                g_all.addmm_(h, w_hh_ft)
                g_all.sigmoid_()
                torch.add(minus_one, g, alpha=2, out=g)
                torch.mul(i, g, out=c_next)
                c_next.addcmul_(f, c)
                torch.mul(c_next, 2, out=tc)
                tc.sigmoid_()
                torch.add(minus_one, tc, alpha=2, out=tc)
                torch.mul(o, tc, out=h_next)
                h, c = h_next, c_next
            saved += [gates, cs, tanh_cs]
        ctx.save_for_backward(x, h0, c0, w_ih_r, w_hh_r, out, *saved)
        ctx.mask, ctx.chunk = mask, chunk
        return out, h.clone(), c.clone()

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        x, h0, c0, w_ih_r, w_hh_r, out, *saved = ctx.saved_tensors
        mask, chunk = ctx.mask, ctx.chunk
        steps, batch, _ = x.shape
        H = w_hh_r.shape[1]
        flat_x = x.reshape(steps * batch, -1)
        need = ctx.needs_input_grad
        grad_x = torch.empty_like(x) if need[0] else None
        grad_w_ih, grad_w_hh = torch.zeros_like(w_ih_r), torch.zeros_like(w_hh_r)
        grad_b = w_hh_r.new_zeros(4 * H)
        dh = grad_out[steps - 1] + grad_h
        dc = grad_c
        dh0 = None
        one = x.new_ones(())
        for index in range(len(saved) // 3 - 1, -1, -1):
            gates, cs, tanh_cs = saved[3 * index:3 * index + 3]
            n = gates.shape[0]
            start = index * chunk
            o, i, g = gates[..., :H], gates[..., H:2 * H], gates[..., 3 * H:]
            # Factors that do not depend on the incoming gradient, for the whole chunk at once
            # (s' = s (1 - s) for the sigmoid gates):
            #   dc_t += dh_t * o (1 - tanh(c)^2);    d(o) = dh_t * tanh(c) o'
            #   d(i, f, g) = dc_t * [g i', c_{t-1} f', i (1 - g^2)]     (pre-activation grads)
            sig = gates[..., :3 * H]
            dsig = torch.addcmul(sig, sig, sig, value=-1)
            fac = x.new_empty(n, batch, 5, H)
            torch.mul(o, torch.addcmul(one, tanh_cs, tanh_cs, value=-1), out=fac[:, :, 0])
            torch.mul(tanh_cs, dsig[..., :H], out=fac[:, :, 1])
            torch.mul(g, dsig[..., H:2 * H], out=fac[:, :, 2])
            torch.mul(cs[:-1], dsig[..., 2 * H:], out=fac[:, :, 3])
            torch.mul(i, torch.addcmul(one, g, g, value=-1), out=fac[:, :, 4])
            f = gates[..., 2 * H:3 * H]
            dgates = torch.empty_like(gates)
            views = zip(range(start + n - 1, start - 1, -1), dgates.unbind(0)[::-1],
                        dgates[..., :H].unbind(0)[::-1],
                        dgates[..., H:].view(n, batch, 3, H).unbind(0)[::-1],
                        fac[:, :, 0].unbind(0)[::-1], fac[:, :, 1].unbind(0)[::-1],
                        fac[:, :, 2:].unbind(0)[::-1], f.unbind(0)[::-1])
            for t, dg_all, dg_o, dg_ifg, dc_dh, f_o, f_ifg, f_t in views:
                dc = torch.addcmul(dc, dh, dc_dh)
                torch.mul(dh, f_o, out=dg_o)
                torch.mul(dc.unsqueeze(1), f_ifg, out=dg_ifg)
                dc = dc * f_t
                blocked = mask is not None and mask[t]
                if t > 0:
                    # A blocked step cuts h_{t-1}: it keeps only its own readout's gradient.
                    dh = grad_out[t - 1] if blocked else torch.addmm(grad_out[t - 1], dg_all, w_hh_r)
                elif not blocked:
                    dh0 = dg_all @ w_hh_r
            flat = dgates.view(n * batch, 4 * H)
            h_prev = out[start - 1:start + n - 1] if start else torch.cat((h0.unsqueeze(0), out[:n - 1]))
            grad_w_hh.addmm_(flat.t(), h_prev.reshape(n * batch, H))
            grad_w_ih.addmm_(flat.t(), flat_x[start * batch:(start + n) * batch])
            grad_b += flat.sum(0)
            if grad_x is not None:
                torch.mm(flat, w_ih_r, out=grad_x[start:start + n].view(n * batch, -1))
        grad_h0 = (dh0 if dh0 is not None else torch.zeros_like(h0)) if need[1] else None
        grad_c0 = dc if need[2] else None
        grad_w_ih = _from_ofig(grad_w_ih, H) if need[3] else None
        grad_w_hh = _from_ofig(grad_w_hh, H) if need[4] else None
        grad_b = _from_ofig(grad_b, H) if need[5] or need[6] else None
        return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b, grad_b, None


class HDetachLSTM(nn.Module):
    """A single-layer LSTM over whole sequences with h-detach in its backward pass.

    Parameters follow ``torch.nn.LSTM`` exactly (gate order i, f, g, o; ``weight_ih`` (4H, I),
    ``weight_hh`` (4H, H), ``bias_ih`` and ``bias_hh`` (4H,); uniform(-1/sqrt(H), 1/sqrt(H))
    init), so weights copy to and from ``nn.LSTM``'s ``*_l0`` parameters unchanged.

    ``forward(x, state=None, p=0.0, generator=None)`` takes ``x`` of shape (T, B, I) and an
    optional initial ``(h, c)``, each (B, H), zero when omitted. It returns all hidden states
    (T, B, H) and the final ``(h, c)``. The h-detach draws (see ``draw_detach_mask``) are made
    only when ``p > 0`` and autograd is recording, so evaluation under ``torch.no_grad()``
    neither changes nor consumes them.
    """

    def __init__(self, input_size, hidden_size, impl="fast"):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
        self.input_size, self.hidden_size, self.impl = input_size, hidden_size, impl
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, x, state=None, p=0.0, generator=None):
        steps, batch, _ = x.shape
        if state is None:
            zeros = x.new_zeros(batch, self.hidden_size)
            state = (zeros, zeros)
        h0, c0 = state
        mask = draw_detach_mask(steps, p, generator) if torch.is_grad_enabled() else None
        weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if self.impl == "reference":
            out, h, c = _reference_lstm(x, h0, c0, *weights, mask)
        else:
            out, h, c = _FastLSTMFunction.apply(x, h0, c0, *weights, mask)
        return out, (h, c)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, impl={self.impl!r}"


class HDetachNet(nn.Module):
    """The network every task uses: an ``HDetachLSTM`` and a linear readout (H -> classes).

    ``forward(x, p=0.0, generator=None, last_only=False)`` returns logits (T, B, classes), or
    (B, classes) for the last step only (pixel MNIST reads out the last step alone).
    """

    def __init__(self, input_size, hidden_size, num_classes, impl="fast"):
        super().__init__()
        self.lstm = HDetachLSTM(input_size, hidden_size, impl=impl)
        self.readout = nn.Linear(hidden_size, num_classes)

    def forward(self, x, p=0.0, generator=None, last_only=False):
        out, _ = self.lstm(x, p=p, generator=generator)
        return self.readout(out[-1] if last_only else out)
