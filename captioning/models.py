"""The captioning models with h-detach: Show and Tell (``show_tell``) and Show, Attend and Tell
(``show_attend_tell``), as the authors' branch ``captioning`` of ``bhargav104/h-detach`` has
them (ruotianluo's neuraltalk2.pytorch with h-detach added), rebuilt on the kit's LSTM.

Read from the branch (commit 84cab51, the stored version of the branch), file by file:

- ``models/ShowTellModel.py``: ``img_embed`` Linear(fc 2048 -> 512) is the input of step 0,
  then ``embed`` Embedding(vocab + 1, 512) of the caption tokens, no nonlinearity; ``core``
  ``nn.LSTM(512, 512, 1 layer, bias=False)`` from a zero state; ``logit(dropout(output))``,
  ``log_softmax``; the output of step 0 is discarded. Init: embed and logit weights
  uniform(-0.1, 0.1), logit bias 0, the LSTM torch's default. Step i >= 1 reads token i - 1 of
  ``labels`` (token 0 is the start token) and the loop breaks before step i when ``i >= 2``
  and token i - 1 is 0 for every caption. Before EVERY step run (step 0 included)
  ``p_val = np.random.random()``, and ``if p_detach != 0 and p_val <= p_detach: h =
  h.detach()``: one draw per step, also when ``p_detach`` is 0, and never a cut of c.
- ``models/CaptionModel.py`` (``CaptionModel`` + ``ShowAttendTellCore``): no image step; the
  initial state is ``(image_map, image_map)`` with ``image_map = linear(fc)``, ONE
  Linear(2048 -> 512) shared by h and c, no nonlinearity. Step i reads the embedding of token i
  (token 0 first; no ReLU, no dropout on it); the loop runs over ``labels.size(1) - 1`` steps
  and breaks before step i when ``i >= 1`` and token i is 0 for every caption. The core:
  ``ctx2att`` Linear(2048 -> 512) of every location, ``h2att`` Linear(512 -> 512) of
  ``state[0][-1]`` (the un-detached h_{t-1}), tanh of their sum, ``alpha_net`` Linear(512 ->
  1), softmax over the locations (``F.softmax(dot)`` without ``dim`` on a 2-D input: dim 1),
  the attended feature the weighted sum of the att features; THEN the same draw rule as above
  detaches the h_{t-1} fed to ``nn.LSTM(512 + 2048, 512, bias=False)``, whose input is
  ``[embedding, attended feature]``. Dropout only on the LSTM output, before ``logit``.
  The core draws on every call, so the branch's sampling (greedy and beam) consumes one draw
  per step too (the values unused); ShowTellModel draws in ``forward`` only.
- Both ``sample``s (greedy): the start token, then the argmax of the previous step;
  ``unfinished`` is the running AND of ``token > 0``; the loop stops when no caption is
  unfinished, and finished captions get 0s. At most ``seq_length`` (16) words.
  ``sample_beam``: per image, ``beam_size`` beams; at each step the top ``beam_size`` words of
  each beam (of the first beam only at the first step) are candidates, sorted by their beam's
  running log-probability sum plus theirs (a stable sort of the candidates listed word rank
  by word rank, beam by beam), the best ``beam_size`` become the new beams; a beam is added to
  the done list when its word is 0 or at the last step, and it stays among the beams (the
  2017 neuraltalk2.pytorch beam search does not retire ended beams); the done beam with the
  highest sum wins.
- ``misc/utils.py`` (``LanguageModelCriterion``): the branch stores only its ``.pyc``; the text
  is neuraltalk2.pytorch's (read in a fork of it): target and mask cut to the output's length,
  ``-logprob(target) * mask`` summed and divided by the sum of the mask. ``train.py`` calls
  ``crit(model(fc, att, labels), labels[:, 1:], masks[:, 1:])``.
- The labels (the loader of neuraltalk2.pytorch; the branch's ``dataloader.py`` is not stored):
  ``labels`` (N, L + 2), column 0 the start token 0, the words from column 1, then 0s (the end
  token and the padding); ``masks`` 1 over the start token, the words and the end token.

What differs from the branch, none of it in the numbers: the teacher-forced Show and Tell is one
sequence through the kit's fast LSTM (``HDetachLSTM(512, 512, bias=False)``, the draws as its
mask), the number of steps computed first (``caption_steps``: the branch's early stop), instead
of a loop of one-step ``nn.LSTM`` calls; Show, Attend and Tell applies ``ctx2att`` once per
batch instead of once per step (the same values; its gradient summed in another order) and
steps the kit's ``HDetachLSTM`` one step at a time (its input depends on h_{t-1}); dropout,
readout and log-softmax are applied to all steps at once (the dropout masks are drawn in
another order from torch's generator); all draws of a training batch are made before its
forward (the same numpy stream: the branch's ``np.random.random()`` per step is
``random(steps)``); the beam search keeps the running sums in the model's dtype (the branch:
float32 on the CPU) and returns 0s after the first end token.

The draws: ``generator`` is what ``model.draw_detach_mask`` takes (a CPU ``torch.Generator``,
None for torch's global generator, or a numpy source such as ``numpy.random`` itself:
``--rng authors``). ``forward`` makes one draw per step it runs, whatever ``p`` and whether or
not autograd records (the branch's ``forward`` drew always); ``sample`` of Show, Attend and Tell
draws one per step only when given a ``generator`` (the branch's core drew when decoding too;
pass the training stream to keep it in step with the branch, None to leave every stream
alone). A drawn step is cut when ``p != 0 and u <= p`` (the branch's rule; ``u >= 0``, so a
negative p cuts nothing, as ``draw_detach_mask``'s ``p <= 0``). ``detach="c"`` (the c-detach
ablation, as in model.py) cuts c_{t-1} instead of h_{t-1} on the same steps.

Devices: everything follows the input tensors' device; the only host work is the draws (made on
the CPU) and two reads back that decide the control flow, as in the branch: the number of steps
of a batch (``caption_steps``), and in decoding whether any caption is unfinished (greedy) or
the candidates (beam search).

Shapes: ``fc`` (N, 2048); ``att`` (N, 14, 14, 2048) or (N, 196, 2048) (any (N, ..., 2048),
flattened to its locations; Show and Tell ignores it, None is fine); ``labels`` (N, L + 2) long;
``forward`` returns log-probabilities (N, T, vocab + 1), T the number of steps with an output
(at most L + 1), output t predicting ``labels[:, t + 1]``. Nothing here runs on import.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model import DETACHES, IMPLS, HDetachLSTM

CAPTION_MODELS = ("show_tell", "show_attend_tell")
MAX_LENGTH = 16  # the branch's seq_length: captions cut to 16 words, sampling stops there
INIT_RANGE = 0.1  # init_weights(): embed and logit weights uniform(-0.1, 0.1)


def caption_steps(labels):
    """The number of outputs the branch's teacher-forced loop produces for ``labels`` (N, W):
    the first column j >= 1 in which every caption has ended (all 0), at most W - 1.

    Show and Tell runs j + 1 steps (the image step, then tokens 0 .. j - 1) and Show, Attend and
    Tell j steps (tokens 0 .. j - 1); both give j outputs, the last predicting column j. One
    read back to the host (the branch read one value per step)."""
    width = labels.shape[1]
    if width <= 2:
        return max(width - 1, 0)
    alive = (labels[:, 1:width - 1] != 0).any(0).tolist()  # columns 1 .. W - 2
    for column, any_word in enumerate(alive, start=1):
        if not any_word:
            return column
    return width - 1


def draw_uniforms(steps, generator=None):
    """``steps`` uniform draws in [0, 1) as floats, as ``model.draw_detach_mask`` makes them
    (so ``u <= p`` here is its mask for p > 0): from a numpy source ``random(steps)``, else
    from ``generator`` (a CPU ``torch.Generator``; torch's global one when None) in float64
    on the CPU. Made whatever p (the branch drew before every step)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        return [float(u) for u in generator.random(steps)]
    return torch.rand(steps, generator=generator, dtype=torch.float64, device="cpu").tolist()


class _Drawn:
    """Draws already made, handed to ``HDetachLSTM`` through ``draw_detach_mask``'s numpy
    source interface (``random(steps)``), so that the layer cuts on exactly those steps."""

    def __init__(self, draws):
        self.draws = draws

    def random(self, steps):
        if steps != len(self.draws):
            raise ValueError(f"{len(self.draws)} draws made for {steps} steps")
        return np.asarray(self.draws, dtype=np.float64)


def cut_steps(draws, p):
    """The branch's rule per draw: cut when ``p != 0 and u <= p``."""
    return [p != 0 and u <= p for u in draws]


class LanguageModelCriterion(nn.Module):
    """neuraltalk2.pytorch's masked NLL: ``forward(logprobs, target, mask)`` with logprobs
    (N, T, V), target and mask (N, >= T) (the caller passes ``labels[:, 1:]`` and
    ``masks[:, 1:]``, as the branch's train.py); target and mask are cut to T, and the loss is
    ``sum(-logprobs[target] * mask) / sum(mask)``: the mean over the masked tokens."""

    def forward(self, logprobs, target, mask):
        steps = logprobs.shape[1]
        target = target[:, :steps].reshape(-1, 1)
        mask = mask[:, :steps].reshape(-1, 1).to(logprobs.dtype)
        output = -logprobs.reshape(-1, logprobs.shape[2]).gather(1, target) * mask
        return torch.sum(output) / torch.sum(mask)


class _CaptionModel(nn.Module):
    """What both models share: the word embedding, the readout, dropout, the init, greedy
    decoding and the beam search. A model provides ``forward``, ``_decode_start(fc, att)``
    (the decoding state and context before the start token) and ``_decode_step(it, state,
    context, generator)`` (log-probabilities of the next word, and the new state)."""

    caption_model = None

    def _check(self, detach, impl):
        if detach not in DETACHES:
            raise ValueError(f"detach must be one of {DETACHES}, not {detach!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")

    def _add_fc_norm(self, fc_feat_size, standardize_fc):
        """With ``standardize_fc`` (not in the branch): the fc features enter the model as
        ``(fc - fc_mean) / fc_std``, two buffers of the state dict (so a checkpoint carries
        them to caption_eval.py and to a resume) that ``set_fc_statistics`` fills once before
        training, from the training split. Features with a large part common to every image,
        such as a random ResNet's, otherwise hand Show and Tell's step 0 nearly the same input
        for every image. Off: no buffers, the branch's model."""
        self.standardize_fc = bool(standardize_fc)
        if self.standardize_fc:
            self.register_buffer("fc_mean", torch.zeros(fc_feat_size))
            self.register_buffer("fc_std", torch.ones(fc_feat_size))
            self.model_config["standardize_fc"] = True  # absent when off: older runs' configs

    def set_fc_statistics(self, mean, std):
        """Fill the standardization buffers (arrays or tensors of fc_feat_size values)."""
        if not self.standardize_fc:
            raise ValueError("this model was built without standardize_fc")
        with torch.no_grad():
            self.fc_mean.copy_(torch.as_tensor(mean, dtype=self.fc_mean.dtype))
            self.fc_std.copy_(torch.as_tensor(std, dtype=self.fc_std.dtype))

    def _fc(self, fc):
        """The fc features as the model reads them (standardized when built so)."""
        return (fc - self.fc_mean) / self.fc_std if self.standardize_fc else fc

    def init_weights(self):
        """The branch's init_weights()."""
        self.embed.weight.data.uniform_(-INIT_RANGE, INIT_RANGE)
        self.logit.bias.data.fill_(0)
        self.logit.weight.data.uniform_(-INIT_RANGE, INIT_RANGE)

    def _readout(self, out):
        """log_softmax(logit(dropout(h))) over the last dimension."""
        return F.log_softmax(self.logit(self.dropout(out)), dim=-1)

    @torch.no_grad()
    def sample(self, fc, att=None, max_length=MAX_LENGTH, beam_size=1, generator=None):
        """Decode captions: (N, max_length) word ids, 0 after the end. ``beam_size`` 1 is
        greedy (argmax), more the branch's beam search. Dropout applies as the module's mode
        says (the branch's evaluation calls ``model.eval()`` first). ``generator``: see the
        module's docstring (Show, Attend and Tell draws one per step from it; None: none)."""
        if beam_size > 1:
            return self.beam_search(fc, att, beam_size, max_length, generator)
        return self._greedy(fc, att, max_length, generator)

    def _greedy(self, fc, att, max_length, generator):
        batch = fc.shape[0]
        state, context = self._decode_start(fc, att)
        it = torch.zeros(batch, dtype=torch.long, device=fc.device)  # the start token
        logprobs, state = self._decode_step(it, state, context, generator)
        words, unfinished = [], None
        for t in range(max_length):
            it = torch.max(logprobs, 1)[1]
            unfinished = it > 0 if t == 0 else unfinished & (it > 0)
            if not bool(unfinished.any()):
                break
            words.append(it * unfinished)
            # the branch feeds the raw argmax (also of finished captions) and, after the last
            # word, runs the core once more: that step's draw is made as in the branch
            logprobs, state = self._decode_step(it, state, context, generator)
        seq = torch.zeros(batch, max_length, dtype=torch.long, device=fc.device)
        if words:
            seq[:, :len(words)] = torch.stack(words, 1)
        return seq

    @torch.no_grad()
    def beam_search(self, fc, att, beam_size, max_length=MAX_LENGTH, generator=None):
        """The branch's ``sample_beam``, image by image (see the module's docstring); returns
        (N, max_length) word ids, 0 after the first end token. With ``beam_size`` 1 it is
        greedy decoding."""
        vocab = self.vocab_size + 1
        if beam_size > vocab:
            raise ValueError(f"beam_size {beam_size} is larger than the vocabulary ({vocab})")
        batch = fc.shape[0]
        seq = torch.zeros(batch, max_length, dtype=torch.long, device=fc.device)
        for k in range(batch):
            seq[k] = self._beam_one(fc[k:k + 1], None if att is None else att[k:k + 1],
                                    beam_size, max_length, generator)
        ended = torch.cumprod((seq > 0).long(), 1)  # 1 up to the first 0
        return seq * ended

    def _beam_one(self, fc, att, beam_size, max_length, generator):
        state, context = self._decode_start(fc, att)
        state = tuple(s.expand(beam_size, *s.shape[1:]) for s in state)
        context = tuple(None if c is None else c.expand(beam_size, *c.shape[1:])
                        for c in context)
        it = torch.zeros(beam_size, dtype=torch.long, device=fc.device)
        logprobs, state = self._decode_step(it, state, context, generator)
        beams = [[] for _ in range(beam_size)]
        sums = logprobs.new_zeros(beam_size)  # running log-probability sum of each beam
        done = []
        cols = min(beam_size, logprobs.shape[1])
        for t in range(1, max_length + 1):
            ys, ix = torch.sort(logprobs, 1, True)
            rows = 1 if t == 1 else beam_size  # at first only the first beam is distinct
            totals = (sums[:rows].unsqueeze(1) + ys[:rows, :cols]).tolist()
            words = ix[:rows, :cols].tolist()
            candidates = [(totals[q][c], words[q][c], q) for c in range(cols)
                          for q in range(rows)]
            candidates.sort(key=lambda v: -v[0])  # stable, as the branch's sorted()
            chosen = candidates[:beam_size]
            beams = [beams[q] + [word] for _, word, q in chosen]
            sums = sums.new_tensor([total for total, _, _ in chosen])
            for vix, (total, word, _) in enumerate(chosen):
                if word == 0 or t == max_length:
                    done.append((total, beams[vix]))
            source = torch.tensor([q for _, _, q in chosen], device=fc.device)
            state = tuple(s.index_select(0, source) for s in state)
            it = torch.tensor([word for _, word, _ in chosen], device=fc.device)
            logprobs, state = self._decode_step(it, state, context, generator)
        done.sort(key=lambda d: -d[0])
        best = done[0][1]
        return torch.tensor(best + [0] * (max_length - len(best)), device=fc.device)


class ShowTellModel(_CaptionModel):
    """Show and Tell (``show_tell``): the image embedding as step 0's input, then the words,
    through one ``HDetachLSTM(input_encoding_size, rnn_size, bias=False)``."""

    caption_model = "show_tell"

    def __init__(self, vocab_size, input_encoding_size=512, rnn_size=512, fc_feat_size=2048,
                 drop_prob_lm=0.5, detach="h", impl="fast", standardize_fc=False):
        super().__init__()
        self._check(detach, impl)
        self.vocab_size, self.rnn_size, self.detach = vocab_size, rnn_size, detach
        # built in the branch's order (its torch draws): img_embed, core, embed, logit
        self.img_embed = nn.Linear(fc_feat_size, input_encoding_size)
        self.lstm = HDetachLSTM(input_encoding_size, rnn_size, impl=impl, detach=detach,
                                bias=False)
        self.embed = nn.Embedding(vocab_size + 1, input_encoding_size)
        self.logit = nn.Linear(rnn_size, vocab_size + 1)
        self.dropout = nn.Dropout(drop_prob_lm)
        self.init_weights()
        self.model_config = {"caption_model": self.caption_model, "vocab_size": vocab_size,
                             "input_encoding_size": input_encoding_size, "rnn_size": rnn_size,
                             "fc_feat_size": fc_feat_size, "drop_prob_lm": drop_prob_lm,
                             "detach": detach}
        self._add_fc_norm(fc_feat_size, standardize_fc)

    def forward(self, fc, att, labels, masks=None, p=0.0, generator=None):
        """Teacher-forced log-probabilities (N, T, vocab + 1) (see the module's docstring).
        ``att`` and ``masks`` are not read (the branch's signature; the loss reads the masks).
        One draw per step run (T + 1: the image step and T word steps), before the forward."""
        steps = caption_steps(labels)
        draws = draw_uniforms(steps + 1, generator)
        x = torch.cat([self.img_embed(self._fc(fc)).unsqueeze(0),
                       self.embed(labels[:, :steps].t())], 0)
        # the layer cuts where draw <= p for p > 0, none for p <= 0: the branch's rule
        out, _ = self.lstm(x, p=p, generator=_Drawn(draws))
        # step 0's output is discarded; (N, T, H) in memory, as Show, Attend and Tell's, so that
        # both draw their dropout masks in the same layout
        return self._readout(out[1:].transpose(0, 1).contiguous())

    def _decode_start(self, fc, att):
        """The state after the image step."""
        _, state = self.lstm(self.img_embed(self._fc(fc)).unsqueeze(0))
        return state, ()

    def _decode_step(self, it, state, context, generator):
        out, state = self.lstm(self.embed(it).unsqueeze(0), state)  # no draws (see above)
        return self._readout(out[0]), state


class ShowAttendTellModel(_CaptionModel):
    """Show, Attend and Tell (``show_attend_tell``): h_0 = c_0 = linear(fc), then per word an
    attention over the att features queried with the un-detached h_{t-1}, and one step of
    ``HDetachLSTM(input_encoding_size + att_feat_size, rnn_size, bias=False)`` on [embedding,
    attended feature] from the (maybe cut) state."""

    caption_model = "show_attend_tell"

    def __init__(self, vocab_size, input_encoding_size=512, rnn_size=512, att_hid_size=512,
                 fc_feat_size=2048, att_feat_size=2048, drop_prob_lm=0.5, detach="h",
                 impl="fast", standardize_fc=False):
        super().__init__()
        self._check(detach, impl)
        if att_hid_size <= 0:  # the branch's other branch (att_hid_size 0) cannot run as written
            raise ValueError("att_hid_size must be positive (the attention MLP's hidden size)")
        self.vocab_size, self.rnn_size, self.detach = vocab_size, rnn_size, detach
        self.att_feat_size = att_feat_size
        # built in the branch's order: CaptionModel (linear, embed, logit, init_weights), then
        # ShowAttendTellCore (rnn, ctx2att, h2att, alpha_net)
        self.linear = nn.Linear(fc_feat_size, rnn_size)
        self.embed = nn.Embedding(vocab_size + 1, input_encoding_size)
        self.logit = nn.Linear(rnn_size, vocab_size + 1)
        self.dropout = nn.Dropout(drop_prob_lm)
        self.init_weights()
        # the layer runs one step at a time (p = 0: the cut is made here, after the attention)
        self.lstm = HDetachLSTM(input_encoding_size + att_feat_size, rnn_size, impl=impl,
                                detach=detach, bias=False)
        self.ctx2att = nn.Linear(att_feat_size, att_hid_size)
        self.h2att = nn.Linear(rnn_size, att_hid_size)
        self.alpha_net = nn.Linear(att_hid_size, 1)
        self.model_config = {"caption_model": self.caption_model, "vocab_size": vocab_size,
                             "input_encoding_size": input_encoding_size, "rnn_size": rnn_size,
                             "att_hid_size": att_hid_size, "fc_feat_size": fc_feat_size,
                             "att_feat_size": att_feat_size, "drop_prob_lm": drop_prob_lm,
                             "detach": detach}
        self._add_fc_norm(fc_feat_size, standardize_fc)

    def _context(self, att):
        """The att features as (N, locations, att_feat_size) and their ctx2att projection."""
        att = att.reshape(att.shape[0], -1, self.att_feat_size)
        return att, self.ctx2att(att)

    def attend(self, h, att, p_att):
        """The attended feature (N, att_feat_size) for the query ``h`` (N, rnn_size)."""
        dot = self.alpha_net(torch.tanh(p_att + self.h2att(h).unsqueeze(1))).squeeze(2)
        weight = F.softmax(dot, dim=1)  # over the locations
        return torch.bmm(weight.unsqueeze(1), att).squeeze(1)

    def _step(self, xt, h, c, att, p_att, cut):
        """One core step: attention with the un-detached h, then the cut, then the LSTM."""
        att_res = self.attend(h, att, p_att)
        if cut:
            if self.detach == "h":
                h = h.detach()
            else:
                c = c.detach()
        _, (h, c) = self.lstm(torch.cat([xt, att_res], 1).unsqueeze(0), (h, c))
        return h, c

    def forward(self, fc, att, labels, masks=None, p=0.0, generator=None):
        """Teacher-forced log-probabilities (N, T, vocab + 1) (see the module's docstring);
        ``masks`` is not read. One draw per step run (T), before the forward."""
        steps = caption_steps(labels)
        cut = cut_steps(draw_uniforms(steps, generator), p)
        att, p_att = self._context(att)
        h = c = self.linear(self._fc(fc))
        words = self.embed(labels[:, :steps])
        outs = []
        for t in range(steps):
            h, c = self._step(words[:, t], h, c, att, p_att, cut[t])
            outs.append(h)
        return self._readout(torch.stack(outs, 1))

    def _decode_start(self, fc, att):
        h = self.linear(self._fc(fc))
        return (h, h), self._context(att)

    def _decode_step(self, it, state, context, generator):
        cut = False
        if generator is not None:  # the branch's core draws on every call (value unused)
            draw_uniforms(1, generator)
        h, c = self._step(self.embed(it), *state, *context, cut)
        return self._readout(h), (h, c)


MODELS = {"show_tell": ShowTellModel, "show_attend_tell": ShowAttendTellModel}
_ATTENTION_ONLY = ("att_hid_size", "att_feat_size")


def build_model(caption_model, vocab_size, **opts):
    """The model the branch's ``--caption_model`` names, with the sizes of ``opts`` (opts.py's
    names and defaults: input_encoding_size 512, rnn_size 512, att_hid_size 512, fc_feat_size
    2048, att_feat_size 2048, drop_prob_lm 0.5; and detach "h", impl "fast", and the kit's
    standardize_fc False, see ``_CaptionModel._add_fc_norm``).
    ``build_model(**model.model_config)`` rebuilds a model as a checkpoint stored it (``impl``
    is not part of it: choose it when rebuilding).
    Show and Tell ignores the attention sizes (the branch's options hold them for every model).
    """
    if caption_model not in MODELS:
        raise ValueError(f"caption_model must be one of {CAPTION_MODELS}, "
                         f"not {caption_model!r}")
    if caption_model == "show_tell":
        opts = {k: v for k, v in opts.items() if k not in _ATTENTION_ONLY}
    return MODELS[caption_model](vocab_size, **opts)
