"""The h-detach LSTM and the small network the tasks share.

h-detach (Kanuparthi et al., ICLR 2019): at every time step, before the cell is applied, one
uniform draw u in [0, 1) is made for the whole batch; if u <= p, the incoming hidden state
h_{t-1} is cut from the backward graph. Forward values are those of a plain LSTM; only the
gradient changes: the recurrent h path through step t is removed, while the c path and the
gradient h_{t-1} receives from its own readout still flow. p <= 0 is plain BPTT.

c-detach (``detach="c"``, the paper's ablation) uses the same draws and the same rule but cuts
the incoming cell state c_{t-1} instead: the c path through step t is removed, while the h path
and the gradient c_{t-1} receives through h_{t-1} = o tanh(c_{t-1}) still flow.

Two implementations of the same layer, selected with ``impl``:

- ``"reference"``: a per-step Python loop of an autograd cell that calls ``h.detach()`` (or
  ``c.detach()``) on the drawn steps, written the way the authors' scripts are. It is the ground
  truth of the tests.
- ``"fast"`` (default): a custom autograd Function (``_FastLSTMFunction``) with a hand-written
  backward. Per step the forward is one matmul (input, recurrent and bias terms at once) and six
  elementwise ops; the backward is two elementwise ops, the weight-gradient matmul and, unless the
  step's h is cut, the recurrent ``dh`` matmul; everything else is done for many steps at once.
  On CUDA the weight-gradient matmul is one per block of steps instead (one launch less a step;
  another summation order, so the CPU keeps the per-step one: ``_per_chunk_weight_grad``), and
  nothing in the forward or backward waits for the device (no host-to-device copy but c-detach's
  mask, non-blocking from pinned memory).
  Exact: the same values and gradients as the reference up to rounding (tests/test_model.py).
  Its ``out`` is a (T, B, H) view of a (T, H, B) buffer (not contiguous; ``.contiguous()`` it
  if needed); ``HDetachNet`` reads it out in that layout.

Both consume the same draws (``draw_detach_mask``), so a run can switch implementation and keep
its trajectory.
"""
import math
import threading

import torch
from torch import nn
from torch.autograd.function import once_differentiable

IMPLS = ("fast", "reference")
DETACHES = ("h", "c")  # the state a drawn step cuts: h-detach, or the c-detach ablation


def draw_detach_mask(steps, p, generator=None):
    """The detach draws for one sequence: a list of ``steps`` booleans, True = cut the incoming
    state (h_{t-1}, or c_{t-1} for c-detach).

    One uniform draw per step for the whole batch, ``u <= p`` blocks (the protocol's rule).
    ``p <= 0`` draws nothing and returns None (plain BPTT), so vanilla runs leave the draw
    stream untouched. The draws come from ``generator`` (a CPU ``torch.Generator``), or from
    torch's global CPU generator when it is None; drawing on the CPU keeps a seeded run's draws
    identical on CPU and GPU. A numpy source (``numpy.random`` itself, or a ``RandomState``)
    draws ``random(steps)`` from it: the authors' scripts draw one ``np.random.random()`` per
    step, and one call of ``steps`` draws is the same stream (``--rng authors``).
    """
    if p <= 0:
        return None
    if generator is not None and not isinstance(generator, torch.Generator):
        return (generator.random(steps) <= p).tolist()
    # device="cpu" explicitly: under torch.set_default_device("cuda") the draws would otherwise
    # be made on the GPU (which a CPU generator refuses) and read back with a sync.
    u = torch.rand(steps, generator=generator, dtype=torch.float64, device="cpu")
    return (u <= p).tolist()


def _reference_lstm(x, h, c, w_ih, w_hh, b_ih, b_hh, mask, detach="h"):
    """Per-step loop with an autograd cell, as in the authors' scripts."""
    outputs = []
    for t in range(x.shape[0]):
        if mask is not None and mask[t]:
            if detach == "h":
                h = h.detach()
            else:  # the reproduction fork's c-detach: c.detach() in place of h.detach()
                c = c.detach()
        gates = x[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c


def _to_ofig(w, hidden):
    """Reorder gate rows from torch's (i, f, g, o) to (o, i, f, g)."""
    i, f, g, o = w.split(hidden, 0)
    return torch.cat((o, i, f, g), 0)


def _from_ofig(w, hidden):
    o, i, f, g = w.split(hidden, 0)
    return torch.cat((i, f, g, o), 0)


# Bytes of gate activations per saved chunk of the forward (the unit the buffer pool reuses),
# and of backward factors per sub-chunk (the factor ops run for that many steps at once: larger
# means fewer ops, smaller means temporaries that stay in cache; 4 MB measured best here).
_CHUNK_BYTES = 2 ** 22
_SUB_BYTES = 2 ** 22
# On CUDA a sub-chunk costs about a dozen launches whatever its length: longer ones amortise
# them (the factors of 64 MB stay far below a GPU's memory).
_SUB_BYTES_CUDA = 2 ** 26


def _chunk_steps(batch, hidden, steps, itemsize=4):
    """Steps per saved chunk of the forward (about ``_CHUNK_BYTES`` of gate activations)."""
    return max(1, min(steps, _CHUNK_BYTES // max(1, batch * 4 * hidden * itemsize)))


def _sub_steps(batch, hidden, steps, itemsize=4, budget=_SUB_BYTES):
    """Steps per backward sub-chunk (about ``budget`` bytes of factors)."""
    return max(1, min(steps, budget // max(1, batch * 6 * hidden * itemsize)))


# The backward's gate gradients u are those of the pre-activations divided by these per-gate
# factors (gate order o, i, f, g); they make every factor one fused op (see the backward).
_BWD_SCALE = (1.0, -4.0, -2.0, 16.0)


def _per_chunk_weight_grad(device):
    """Whether the backward takes the weight (and input) gradient as one GEMM per sub-chunk
    from the stored gate gradients, instead of one ``addmm_`` per step.

    On CUDA, where each launch costs about as much as a small GEMM, it saves a launch per step.
    It sums in a different order, so the CPU keeps the per-step order: committed CPU runs are
    resumed across sessions and must stay bit-identical. Tests force it on the CPU to check it.
    """
    return device.type == "cuda"


def _bool_mask_on(mask, like):
    """``mask`` (a list of bools) as a bool tensor on ``like``'s device, without a blocking copy.

    On CUDA a tensor built from a Python list is copied from pageable memory, which waits for
    the device; from pinned memory with ``non_blocking`` the copy is queued like a kernel (the
    caching host allocator keeps the pinned block alive until the copy is done). Fake tensors
    (the fake-CUDA tests) cannot pin (``aten._pin_memory`` is not implemented for them), so
    there the copy is only checked for where it lands.
    """
    host = torch.tensor(mask, dtype=torch.bool, device="cpu")
    if like.device.type == "cpu":
        return host
    if like.device.type == "cuda" and not _is_fake(like):
        host = host.pin_memory()
    return host.to(like.device, non_blocking=True)


def _is_fake(tensor):
    from torch._subclasses.fake_tensor import is_fake
    return is_fake(tensor)


def eval_chunk_size(device, count, steps, hidden, classes, cpu_chunk, inputs=1):
    """How many sequences an evaluation runs at once (under ``torch.no_grad()``).

    On the CPU: ``cpu_chunk``, unchanged (the committed runs' numbers depend on it). On CUDA,
    where a chunk costs the same launches whatever its size: as many as half the free device
    memory holds, up to all ``count``. A sequence then needs about 4 bytes per step for
    each of z's rows (the inference path's state, see ``_fast_forward``), three copies of the
    logits (readout, its contiguous copy, log-softmax) and the inputs and targets.
    """
    if device.type != "cuda":
        return cpu_chunk
    width = -(-(hidden + inputs + 1) // 8) * 8
    per_sequence = 4 * (steps + 1) * (width + 3 * classes + inputs + 2)
    return int(max(1, min(count, _cuda_free_bytes(device) // 2 // per_sequence)))


def _cuda_free_bytes(device):
    return torch.cuda.mem_get_info(device)[0]


class _BufferPool:
    """Keeps the CPU fast path's saved activations for reuse by the next call.

    A training step saves about 6H*B numbers per step and frees them all at the end of the
    backward; glibc then trims the heap and the next forward page-faults every page back in
    (on the order of 50K faults, tens of ms, per pixel-MNIST step). The pool holds the buffers
    that the last backward released and hands them to the next forward instead. It only ever
    holds buffers no graph uses: a forward takes them out, its backward gives them back (after
    which that graph recomputes them if it is run again, see the backward), and a graph that is
    dropped without a backward frees its own. Between steps it holds one step's worth (what the
    forward would allocate again anyway). Each ``HDetachLSTM`` owns one (``.pool``);
    ``.pool.clear()`` releases it, and a copied layer starts with an empty one.
    """

    def __init__(self):
        self._free = {}
        self._lock = threading.Lock()
        self._constants = {}

    def scale(self, hidden, like):
        """``_BWD_SCALE`` per gate row, (4H, 1), on ``like``'s device and dtype: made once per
        device, so that a CUDA backward does not copy it from the host (a sync) every step."""
        key = (like.device, like.dtype, hidden, type(like))  # type: a fake tensor is not real
        with self._lock:
            scale = self._constants.get(key)
        if scale is None:
            scale = like.new_tensor(_BWD_SCALE).repeat_interleave(hidden).unsqueeze(1)
            with self._lock:
                self._constants[key] = scale
        return scale

    def take(self, numel, like):
        if like.device.type == "cpu":
            with self._lock:
                free = self._free.get((like.dtype, numel))
                if free:
                    return free.pop()
        return like.new_empty(numel)

    def give(self, buffers):
        """Pool ``buffers``; older pooled ones are kept only up to as many bytes again."""
        buffers = [buf for buf in buffers if buf.device.type == "cpu"]
        room = sum(buf.numel() * buf.element_size() for buf in buffers)
        with self._lock:
            free = {}
            for buf in buffers:
                free.setdefault((buf.dtype, buf.numel()), []).append(buf)
            for key, old in self._free.items():
                for buf in old:
                    room -= buf.numel() * buf.element_size()
                    if room < 0:
                        break
                    free.setdefault(key, []).append(buf)
            self._free = free

    def clear(self):
        with self._lock:
            self._free = {}
            self._constants = {}

    def __deepcopy__(self, memo):
        return _BufferPool()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


def _packed_weights(w_ih, w_hh, b_ih, b_hh, width):
    """[W_hh | W_ih | b_ih + b_hh | 0] as one (4H, width) matrix, rows in (o, i, f, g) order."""
    hidden, inputs = w_hh.shape[1], w_ih.shape[1]
    w = w_hh.new_zeros(4 * hidden, width)
    w[:, :hidden] = w_hh
    w[:, hidden:hidden + inputs] = w_ih
    w[:, hidden + inputs] = b_ih + b_hh
    return _to_ofig(w, hidden)


def _fast_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, keep, pool=None):
    """The fast path's forward loop.

    State is kept transposed, (H, B), so that every per-step operand is one contiguous block.
    ``z`` (T+1, K, B) holds at row t the GEMM input [h_{t-1}; x_t; 1; 0-padding], so one matmul
    per step gives the gates and, in the backward, one per step gives all weight gradients;
    rows t >= 1 hold the outputs. c is kept as -2c: then sigmoid(-2c) = (1 - tanh c) / 2 is one
    op, tanh(g) = 2 sigmoid(2 a_g) - 1 comes from doubled g rows (torch's CPU tanh costs several
    sigmoids), and h = o - 2 o sigmoid(-2c) is one addcmul. With ``keep`` the gate activations
    (o, i, f, sigmoid(2 a_g)) and -2c of every step are kept in chunks for the backward, in
    buffers taken from ``pool``.
    Returns z, the final -2c (H, B), and the chunks (buffer, gates (n, 4H, B), -2c (n+1, H, B)).
    """
    steps, batch, inputs = x.shape
    H = w_hh.shape[1]
    width = -(-(H + inputs + 1) // 8) * 8  # multiple of 8: the weight-gradient GEMM is faster
    w = _packed_weights(w_ih, w_hh, b_ih, b_hh, width)
    w[3 * H:] *= 2
    z = x.new_empty(steps + 1, width, batch)
    z[0, :H] = h0.t()
    z[:steps, H:H + inputs] = x.transpose(1, 2)
    z[:, H + inputs] = 1
    z[:, H + inputs + 1:] = 0
    z[steps, H:H + inputs] = 0
    two = x.new_full((), 2.0)
    g_tmp, r_tmp, ring = x.new_empty(H, batch), x.new_empty(H, batch), x.new_empty(4 * H, batch)
    z_in, z_h = z.unbind(0), z[:, :H].unbind(0)
    mm, add, mul, sigmoid, addcmul = torch.mm, torch.add, torch.mul, torch.sigmoid, torch.addcmul
    cn_prev = c0.t() * -2.0
    chunks = []
    chunk = _chunk_steps(batch, H, steps, x.element_size()) if keep else 1
    if not keep:  # inference: one step of gates and two of state, reused
        gates, cs = x.new_empty(1, 4 * H, batch), x.new_empty(2, H, batch)
    for start in range(0, steps, chunk):
        n = min(chunk, steps - start)
        if keep:
            buf = pool.take(n * 4 * H * batch + (n + 1) * H * batch, x)
            gates = buf[:n * 4 * H * batch].view(n, 4 * H, batch)
            cs = buf[n * 4 * H * batch:].view(n + 1, H, batch)
            chunks.append((buf, gates, cs))
            cs[0] = cn_prev
            g = gates.view(n, 4, H, batch)
            cs_l = cs.unbind(0)
            views = zip(z_in[start:start + n], z_h[start + 1:start + n + 1], gates.unbind(0),
                        g[:, 0].unbind(0), g[:, 1].unbind(0), g[:, 2].unbind(0),
                        g[:, 3].unbind(0), cs_l, cs_l[1:])
        else:
            g4, (o, i, f, sg) = gates[0], gates[0].view(4, H, batch).unbind(0)
            cs[start & 1] = cn_prev
            views = [(z_in[start], z_h[start + 1], g4, o, i, f, sg, cs[start & 1],
                      cs[(start + 1) & 1])]
        for z_t, h_next, g4, o, i, f, sg, cn, cn_next in views:
            mm(w, z_t, out=ring)  # into a block that stays in cache, not into cold memory
            sigmoid(ring, out=g4)
            add(two, sg, alpha=-4, out=g_tmp)          # -2 g
            mul(i, g_tmp, out=cn_next)
            cn_next.addcmul_(f, cn)                    # -2 c_t = -2 (i g + f c_{t-1})
            sigmoid(cn_next, out=r_tmp)                # (1 - tanh c_t) / 2
            addcmul(o, o, r_tmp, value=-2, out=h_next)  # h_t = o tanh c_t
        cn_prev = cn_next
    return z, cn_prev, chunks


def _fast_outputs(z, cn, hidden):
    steps = z.shape[0] - 1
    out = z[1:, :hidden].transpose(1, 2)
    return out, z[steps, :hidden].t().contiguous(), (cn * -0.5).t().contiguous()


class _FastLSTMFunction(torch.autograd.Function):
    """Whole-sequence LSTM with a hand-written backward (see ``_fast_forward`` and below)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, hmask, cmask, pool):
        """``hmask`` / ``cmask``: the steps whose incoming h / c is cut (None: none)."""
        ctx.set_materialize_grads(False)
        z, cn, chunks = _fast_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, keep=True, pool=pool)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        # z is kept on ctx rather than saved: its only handles outside are the outputs, views
        # that autograd refuses to modify in place (tests/test_model.py checks it).
        ctx.z, ctx.chunks, ctx.pool = z, chunks, pool
        ctx.hmask, ctx.cmask = hmask, cmask
        return _fast_outputs(z, cn, w_hh.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_h, grad_c):
        """Backward through time, chunk by chunk, sub-chunk by sub-chunk.

        Per sub-chunk, factors that do not depend on the incoming gradient are computed for
        all its steps at once (r = sigmoid(-2c), D(s) = s (1 - s) of each sigmoid s):
            k = o D(r),  fo = (1 - 2r) D(o),  F_i = (1 - 2 sg) D(i),  F_f = (-2c_{t-1}) D(f),
            F_g = i D(sg),  f.
        With dc' = dc / 4 and e' = f dc' (the gradient that reaches c_{t-1}), a step is then
            [dc', u_o] = [e'_{t+1}, 0] + dh * [k, fo]         (one addcmul)
            [u_i, u_f, u_g, e'] = dc' * [F_i, F_f, F_g, f]    (one mul)
            dW += u z_t^T;   dh_{t-1} = grad_out_{t-1} + (s W_hh)^T u  (skipped if h_{t-1} is cut)
        where u = da / s, s = _BWD_SCALE per gate, so each gradient wrt the pre-activations a
        is s * u (a_g the unscaled one). c-detach is the reverse: on a step whose c_{t-1} is
        cut the factor f is 0, so e' = 0, and the dh matmul is done; the per-step ops stay the
        same, so it costs what plain BPTT costs.
        """
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = ctx.saved_tensors
        z, chunks, mask, cmask = ctx.z, ctx.chunks, ctx.hmask, ctx.cmask
        pooled = chunks is not None
        if not pooled:  # run again (retain_graph): the buffers went back to the pool
            z, _, chunks = _fast_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, keep=True,
                                         pool=_BufferPool())
        steps, batch, inputs = x.shape
        H = w_hh.shape[1]
        need = ctx.needs_input_grad
        width = z.shape[1]
        scale = ctx.pool.scale(H, x)
        w_b = _packed_weights(w_ih, w_hh, b_ih, b_hh, width) * scale
        w_b_h = w_b[:, :H].t().contiguous()                  # (H, 4H)
        w_b_x = w_b[:, H:H + inputs].contiguous()            # (4H, I)
        grad_w = x.new_zeros(4 * H, width)
        grad_x = x.new_empty(steps, batch, inputs) if need[0] else None
        batched = _per_chunk_weight_grad(x.device)
        sub = _sub_steps(batch, H, steps, x.element_size(),
                         _SUB_BYTES_CUDA if batched else _SUB_BYTES)
        # (T, 1, 1): broadcast over a sub-chunk's f factors (H, B) to zero those of cut steps
        ccut = _bool_mask_on(cmask, x).view(-1, 1, 1) if cmask else None
        fac = x.new_empty(sub, 6, H, batch)       # [k, fo, F_i, F_f, F_g, f]
        fac2, fac4 = fac[:, 0:2].unbind(0), fac[:, 2:6].unbind(0)
        if not batched:
            dg = x.new_zeros(2, 7, H, batch)      # [dc', u_o, u_i, u_f, u_g, e', 0], by parity
            in2, out2 = dg[:, 5:7].unbind(0), dg[:, 0:2].unbind(0)
            dcs, out4 = dg[:, 0].unbind(0), dg[:, 2:6].unbind(0)
            us = dg[:, 1:5].reshape(2, 4 * H, batch).unbind(0)
            # (the reshape is a view: slots 1-4 are contiguous)
        else:
            # The same slots, slot-major with one column per step of a sub-chunk (step j at
            # [:, :, j], its incoming e' at [5, :, j + 1]), so that the sub-chunk's gate
            # gradients u form one strided (4H, m*B) matrix for a single weight-gradient GEMM.
            dg = x.new_zeros(7, H, sub + 1, batch)
            in2, out2 = dg[5:7].unbind(2), dg[0:2].unbind(2)
            dcs, out4 = dg[0].unbind(1), dg[2:6].unbind(2)
            us = [dg[1:5, :, j].view(4 * H, batch) for j in range(sub + 1)]
            z_sub = x.new_empty(width, sub, batch)  # z of a sub-chunk's steps, (width, m*B)
        go_t = grad_out.transpose(1, 2) if grad_out is not None else None
        if go_t is not None and go_t.is_contiguous():
            # already stored (T, H, B) (HDetachNet's readout works in that layout): no copies
            go_all, go_buf = go_t.unbind(0), None
        else:
            go_all, go_buf = None, x.new_empty(sub, H, batch) if go_t is not None else None
        go_l = go_buf.unbind(0) if go_buf is not None else None
        zero_h = x.new_zeros(H, batch)
        dh_buf = (x.new_empty(H, batch), x.new_empty(H, batch))
        if grad_out is not None:
            dh = grad_out[steps - 1].t().contiguous()
            if grad_h is not None:
                dh += grad_h.t()
        else:
            dh = grad_h.t().contiguous() if grad_h is not None else zero_h
        if grad_c is not None and not batched:
            torch.mul(grad_c.t(), 0.25, out=dg[steps & 1, 5])
        dh0 = None
        first = True
        mm, addmm, addcmul, mul = torch.mm, torch.addmm, torch.addcmul, torch.mul

        def next_dh(t, j, p, u, dh, dh0):
            """(dh_{t-1}, dh0) once step t's gate gradients u are known: the recurrent matmul,
            plus h_{t-1}'s own readout gradient (sub-chunk slot j); a cut step skips the matmul
            and keeps only that readout gradient; at t = 0 it is the gradient of h0."""
            blocked = mask is not None and mask[t]
            if t == 0:
                if not blocked:
                    dh0 = mm(w_b_h, u)
            elif go_l is None:
                dh = zero_h if blocked else mm(w_b_h, u, out=dh_buf[p])
            elif not blocked:
                dh = addmm(go_l[j], w_b_h, u, out=dh_buf[p])
            else:
                dh = go_l[j] if j or go_buf is None else dh_buf[p].copy_(go_l[j])
            return dh, dh0

        chunk = chunks[0][1].shape[0]
        for index in range(len(chunks) - 1, -1, -1):
            _, gates, cs = chunks[index]
            n = gates.shape[0]
            g = gates.view(n, 4, H, batch)
            for s0 in range((n - 1) // sub * sub, -1, -sub):
                m = min(sub, n - s0)
                t0 = index * chunk + s0
                fv, gv = fac[:m], g[s0:s0 + m]
                torch.sigmoid(cs[s0 + 1:s0 + m + 1], out=fv[:, 0])       # r
                torch.addcmul(gv, gv, gv, value=-1, out=fv[:, 1:5])      # D(o, i, f, sg)
                fv[:, 1].addcmul_(fv[:, 0], fv[:, 1], value=-2)          # fo
                fv[:, 0].addcmul_(fv[:, 0], fv[:, 0], value=-1)          # D(r)
                fv[:, 0].mul_(gv[:, 0])                                  # k
                fv[:, 2].addcmul_(gv[:, 3], fv[:, 2], value=-2)          # F_i
                fv[:, 3].mul_(cs[s0:s0 + m])                             # F_f
                fv[:, 4].mul_(gv[:, 1])                                  # F_g
                fv[:, 5].copy_(gv[:, 2])                                 # f
                if ccut is not None and any(cmask[t0:t0 + m]):
                    fv[:, 5].masked_fill_(ccut[t0:t0 + m], 0)        # c-detach: e' = 0
                if go_buf is not None:
                    if t0 > 0:
                        go_buf[:m].copy_(go_t[t0 - 1:t0 + m - 1])
                    elif m > 1:
                        go_buf[1:m].copy_(go_t[0:m - 1])
                elif go_all is not None:
                    go_l = go_all[t0 - 1:t0 + m - 1] if t0 else (None,) + go_all[0:m - 1]
                if batched:
                    # e' entering this sub-chunk's last step: grad_c at first, then what the
                    # previous sub-chunk's first step left in column 0
                    if first and grad_c is not None:
                        torch.mul(grad_c.t(), 0.25, out=dg[5, :, m])
                    elif not first:
                        dg[5, :, m].copy_(dg[5, :, 0])
                    first = False
                    for j in range(m - 1, -1, -1):  # as below, less the weight gradient
                        t = t0 + j
                        p = t & 1
                        addcmul(in2[j + 1], dh, fac2[j], out=out2[j])
                        u = us[j]
                        mul(dcs[j], fac4[j], out=out4[j])
                        dh, dh0 = next_dh(t, j, p, u, dh, dh0)
                    u_all = dg[1:5, :, :m].view(4 * H, m * batch)
                    z_sub[:, :m].copy_(z[t0:t0 + m].transpose(0, 1))
                    grad_w.addmm_(u_all, z_sub[:, :m].view(width, m * batch).t())
                    if grad_x is not None:
                        mm(u_all.t(), w_b_x, out=grad_x[t0:t0 + m].view(m * batch, inputs))
                    continue
                z_t = z[t0:t0 + m].transpose(1, 2).unbind(0)
                for j in range(m - 1, -1, -1):
                    t = t0 + j
                    p = t & 1
                    addcmul(in2[1 - p], dh, fac2[j], out=out2[p])
                    u = us[p]
                    mul(dcs[p], fac4[j], out=out4[p])
                    grad_w.addmm_(u, z_t[j])
                    if grad_x is not None:
                        mm(u.t(), w_b_x, out=grad_x[t])
                    dh, dh0 = next_dh(t, j, p, u, dh, dh0)
        if pooled:
            ctx.pool.give([buf for buf, _, _ in chunks])
            ctx.chunks = None
        grad_h0 = grad_c0 = None
        if need[1]:
            grad_h0 = dh0.t().contiguous() if dh0 is not None else torch.zeros_like(h0)
        if need[2]:
            grad_c0 = ((dg[5, :, 0] if batched else dg[0, 5]) * 4.0).t().contiguous()
        grad_w *= scale
        grad_w_ih = _from_ofig(grad_w[:, H:H + inputs], H) if need[3] else None
        grad_w_hh = _from_ofig(grad_w[:, :H], H) if need[4] else None
        grad_b = _from_ofig(grad_w[:, H + inputs], H) if need[5] or need[6] else None
        return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b, grad_b, None, None, None


class HDetachLSTM(nn.Module):
    """A single-layer LSTM over whole sequences with h-detach (or c-detach) in its backward pass.

    Parameters follow ``torch.nn.LSTM`` exactly (gate order i, f, g, o; ``weight_ih`` (4H, I),
    ``weight_hh`` (4H, H), ``bias_ih`` and ``bias_hh`` (4H,); uniform(-1/sqrt(H), 1/sqrt(H))
    init), so weights copy to and from ``nn.LSTM``'s ``*_l0`` parameters unchanged.
    ``bias=False`` (``nn.LSTM(bias=False)``, as the captioning models use it): no bias
    parameters (``bias_ih`` and ``bias_hh`` are None, the state dict holds ``weight_ih`` and
    ``weight_hh`` only); both implementations then add zeros (not requiring grad) where the
    biases go, so the ``bias=True`` arithmetic is the same code whatever this flag.

    ``forward(x, state=None, p=0.0, generator=None)`` takes ``x`` of shape (T, B, I) and an
    optional initial ``(h, c)``, each (B, H), zero when omitted. It returns all hidden states
    (T, B, H; with ``impl="fast"`` a non-contiguous view) and the final ``(h, c)``. The h-detach
    draws (see ``draw_detach_mask``) are made only when ``p > 0`` and autograd is recording, so
    evaluation under ``torch.no_grad()`` neither changes nor consumes them. ``detach`` says
    which incoming state a drawn step cuts: ``"h"`` (h-detach) or ``"c"`` (c-detach).
    """

    def __init__(self, input_size, hidden_size, impl="fast", detach="h", bias=True):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
        if detach not in DETACHES:
            raise ValueError(f"detach must be one of {DETACHES}, not {detach!r}")
        self.input_size, self.hidden_size, self.impl = input_size, hidden_size, impl
        self.detach = detach
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = bias
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        else:  # as nn.LSTM(bias=False): no bias parameters at all
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.pool = _BufferPool()  # the fast path's reusable CPU buffers (see _BufferPool)
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
        if self.bias_ih is not None:
            weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        else:  # zeros where the biases go (no gradient): the bias=True code runs unchanged
            zero = self.weight_hh.new_zeros(4 * self.hidden_size)
            weights = (self.weight_ih, self.weight_hh, zero, zero)
        if self.impl == "reference":
            out, h, c = _reference_lstm(x, h0, c0, *weights, mask, self.detach)
        elif torch.is_grad_enabled() and any(t.requires_grad for t in (x, h0, c0, *weights)):
            hmask, cmask = (mask, None) if self.detach == "h" else (None, mask)
            out, h, c = _FastLSTMFunction.apply(x, h0, c0, *weights, hmask, cmask, self.pool)
        else:
            z, cn, _ = _fast_forward(x, h0, c0, *weights, keep=False)
            out, h, c = _fast_outputs(z, cn, self.hidden_size)
        return out, (h, c)

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, impl={self.impl!r}, "
                f"detach={self.detach!r}" + ("" if self.bias_ih is not None else ", bias=False"))


class HDetachNet(nn.Module):
    """The network every task uses: an ``HDetachLSTM`` and a linear readout (H -> classes).
    ``impl`` and ``detach`` are the LSTM's.

    ``forward(x, p=0.0, generator=None, last_only=False)`` returns logits (T, B, classes), or
    (B, classes) for the last step only (pixel MNIST reads out the last step alone).
    """

    def __init__(self, input_size, hidden_size, num_classes, impl="fast", detach="h"):
        super().__init__()
        self.lstm = HDetachLSTM(input_size, hidden_size, impl=impl, detach=detach)
        self.readout = nn.Linear(hidden_size, num_classes)

    def forward(self, x, p=0.0, generator=None, last_only=False):
        out, (h, _) = self.lstm(x, p=p, generator=generator)
        if last_only:
            # h is out[-1]; reading it spares the fast backward a (T, B, H) gradient of zeros.
            return self.readout(h)
        out_t = out.transpose(1, 2)
        if out_t.stride(2) == 1 and out_t.stride(1) == out_t.shape[2]:
            # The fast path stores the outputs (T, H, B): reading them out in that layout
            # avoids copying them here, and hands its backward the gradient in its layout.
            weight, bias = self.readout.weight, self.readout.bias
            weight = weight.expand(out_t.shape[0], *weight.shape)
            if bias is None:
                logits_t = torch.bmm(weight, out_t)
            else:
                logits_t = torch.baddbmm(bias.unsqueeze(1), weight, out_t)
            return logits_t.transpose(1, 2).contiguous()
        return self.readout(out)
