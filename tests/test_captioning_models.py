"""Tests of captioning/models.py: both models' gradients against hand-written loops of
``nn.LSTMCell`` steps written the way the authors' branch runs them (its early stop, one draw per
step, ``h.detach()`` on the drawn steps), the attention's un-detached query, c-detach, the draws,
decoding, the criterion, the factory, and device placement on fake CUDA tensors."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model
from captioning import models
from captioning.models import (LanguageModelCriterion, ShowAttendTellModel, ShowTellModel,
                               build_model, caption_steps)

V, E, H, FC, ATT, A_HID = 7, 6, 8, 5, 4, 3  # vocab, embedding, hidden, fc, att feature, att MLP
N, L = 4, 6                                 # captions, words at most (labels are N x (L + 2))
SIZES = {"input_encoding_size": E, "rnn_size": H, "att_hid_size": A_HID, "fc_feat_size": FC,
         "att_feat_size": ATT}
# Captions of 5, 2, 3 and 1 words: every caption has ended at column 6, so the branch's loop
# stops there; the full labels are 8 columns wide.
LABELS = torch.tensor([[0, 3, 1, 4, 1, 5, 0, 0],
                       [0, 2, 6, 0, 0, 0, 0, 0],
                       [0, 7, 7, 2, 0, 0, 0, 0],
                       [0, 5, 0, 0, 0, 0, 0, 0]])
OUTPUTS = 6  # outputs the branch produces for LABELS: columns 1 .. 6 predicted


def masks_of(labels):
    """The loader's masks: 1 over the start token, the words and the end token."""
    length = (labels != 0).sum(1, keepdim=True) + 2
    return (torch.arange(labels.shape[1]) < length).double()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    fc = torch.randn(N, FC, generator=g, dtype=torch.float64)
    att = torch.randn(N, 2, 2, ATT, generator=g, dtype=torch.float64)
    return fc, att


def make(name, impl="fast", detach="h", seed=1, drop=0.5):
    torch.manual_seed(seed)
    net = build_model(name, V, **SIZES, drop_prob_lm=drop, detach=detach, impl=impl).double()
    with torch.no_grad():  # larger LSTM weights than the init, so that the cuts show
        net.lstm.weight_ih.mul_(3.0)
        net.lstm.weight_hh.mul_(3.0)
    return net


def generator(kind, seed):
    return torch.Generator().manual_seed(seed) if kind == "torch" else \
        np.random.RandomState(seed)


def one_draw(gen):
    """One draw, as the branch makes it before a step (np.random.random() for numpy)."""
    if isinstance(gen, torch.Generator):
        return torch.rand(1, generator=gen, dtype=torch.float64).item()
    return gen.random()


def same_stream(a, b):
    """Whether two generators are at the same point of their stream."""
    return one_draw(a) == one_draw(b)


def model_loss(net, labels, p, gen, seed=5):
    """The training loss as the branch's train.py takes it; dropout from torch's global
    generator, seeded."""
    fc, att = inputs()
    torch.manual_seed(seed)
    logprobs = net(fc, att, labels, masks_of(labels), p=p, generator=gen)
    loss = LanguageModelCriterion()(logprobs, labels[:, 1:], masks_of(labels)[:, 1:])
    net.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: q.grad for n, q in net.named_parameters()}


def hand_cell(net):
    """An nn.LSTMCell(bias=False) with the model's LSTM weights (its own copies)."""
    cell = nn.LSTMCell(net.lstm.input_size, H, bias=False).double()
    with torch.no_grad():
        cell.weight_ih.copy_(net.lstm.weight_ih)
        cell.weight_hh.copy_(net.lstm.weight_hh)
    return cell


def hand_loss(net, labels, p, gen, seed=5, detach="h", query_detached=False):
    """The branch's loops, written out: ShowTellModel.forward or CaptionModel.forward with
    ShowAttendTellCore, step by step through nn.LSTMCell, one draw before each step, the cut
    ``if p != 0 and u <= p``. Returns the loss, the gradients under the model's parameter
    names, and the number of steps run. ``query_detached``: the attention reads the detached
    h (wrong: the tests show it gives other gradients)."""
    ref = copy.deepcopy(net)
    cell = hand_cell(net)
    fc, att = inputs()
    torch.manual_seed(seed)
    outputs, steps = [], 0

    def cut(h, c):
        if p != 0 and one_draw(gen) <= p:
            if detach == "h":
                h = h.detach()
            else:
                c = c.detach()
        return h, c

    if isinstance(net, ShowTellModel):
        h = c = torch.zeros(N, H, dtype=torch.float64)
        for i in range(labels.shape[1]):
            if i == 0:
                xt = ref.img_embed(fc)
            else:
                if i >= 2 and labels[:, i - 1].sum() == 0:
                    break
                xt = ref.embed(labels[:, i - 1])
            h, c = cut(h, c)
            h, c = cell(xt, (h, c))
            steps += 1
            outputs.append(h)
        outputs = outputs[1:]
    else:
        h = c = ref.linear(fc)  # one map for both
        att_flat = att.reshape(N, -1, ATT)
        for i in range(labels.shape[1] - 1):
            if i >= 1 and labels[:, i].sum() == 0:
                break
            xt = ref.embed(labels[:, i])
            query = h.detach() if query_detached else h
            p_att = ref.ctx2att(att_flat)  # per step, as the branch
            dot = ref.alpha_net(torch.tanh(p_att + ref.h2att(query).unsqueeze(1))).squeeze(2)
            weight = F.softmax(dot, dim=1)
            att_res = torch.bmm(weight.unsqueeze(1), att_flat).squeeze(1)
            h, c = cut(h, c)
            h, c = cell(torch.cat([xt, att_res], 1), (h, c))
            steps += 1
            outputs.append(h)
    out = torch.stack(outputs, 1)
    logprobs = F.log_softmax(ref.logit(ref.dropout(out)), dim=-1)
    # the criterion written out: -log p(target) over the mask, divided by the mask's sum
    target = labels[:, 1:1 + out.shape[1]]
    mask = masks_of(labels)[:, 1:1 + out.shape[1]]
    loss = -(logprobs.gather(2, target.unsqueeze(2)).squeeze(2) * mask).sum() / mask.sum()
    loss.backward()
    grads = {n: q.grad for n, q in ref.named_parameters()}
    grads["lstm.weight_ih"], grads["lstm.weight_hh"] = cell.weight_ih.grad, cell.weight_hh.grad
    return loss.detach(), grads, steps


def assert_grads_close(actual, expected, rtol=1e-10):
    """Relative error in norm per parameter; a gradient that is zero but for rounding (the
    alpha_net bias: softmax ignores a shift) only has to be as small."""
    assert actual.keys() == expected.keys()
    for name in expected:
        a, e = actual[name], expected[name]
        a = torch.zeros_like(e) if a is None else a
        err = (a - e).norm().item()
        assert err <= rtol * max(e.norm().item(), 1e-6), (name, err, e.norm().item())


def grads_differ(a, b, name):
    return (a[name] - b[name]).norm() > 1e-4 * b[name].norm()


NAMES = ("show_tell", "show_attend_tell")


# --- gradients against the branch's loops ------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("impl", model.IMPLS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_hdetach_gradients_match_the_branch_loop(name, impl, kind):
    """p = 0.4: the same loss and the same gradient of every parameter as the loop that draws
    before each step and detaches h on the drawn ones (dropout on, the same masks); the same
    number of draws; and different from plain BPTT. p = 0: plain BPTT."""
    net = make(name, impl)
    gen, hand_gen = generator(kind, 3), generator(kind, 3)
    loss, grads = model_loss(net, LABELS, 0.4, gen)
    hand, expected, steps = hand_loss(net, LABELS, 0.4, hand_gen)
    assert steps == OUTPUTS + (name == "show_tell")
    assert same_stream(gen, hand_gen)  # one draw per step run, none beyond
    torch.testing.assert_close(loss, hand, rtol=1e-12, atol=0)
    assert_grads_close(grads, expected)
    _, plain = model_loss(net, LABELS, 0.0, generator(kind, 3))
    _, plain_hand, _ = hand_loss(net, LABELS, 0.0, generator(kind, 3))
    assert_grads_close(plain, plain_hand)
    assert grads_differ(grads, plain, "lstm.weight_hh")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("impl", model.IMPLS)
def test_cdetach_cuts_c(name, impl):
    net = make(name, impl, detach="c")
    loss, grads = model_loss(net, LABELS, 0.4, generator("numpy", 3))
    hand, expected, _ = hand_loss(net, LABELS, 0.4, generator("numpy", 3), detach="c")
    torch.testing.assert_close(loss, hand, rtol=1e-12, atol=0)
    assert_grads_close(grads, expected)
    # neither plain BPTT nor h-detach on the same steps
    _, hcut, _ = hand_loss(net, LABELS, 0.4, generator("numpy", 3))
    _, plain, _ = hand_loss(net, LABELS, 0.0, generator("numpy", 3))
    assert grads_differ(grads, hcut, "lstm.weight_hh")
    assert grads_differ(grads, plain, "lstm.weight_hh")


@pytest.mark.parametrize("impl", model.IMPLS)
def test_attention_reads_the_undetached_h(impl):
    """The attention query is h_{t-1} before the cut: a loop that queries with the detached h
    gives other gradients (so the test above would catch that mistake), at every p > 0."""
    net = make("show_attend_tell", impl)
    _, grads = model_loss(net, LABELS, 0.4, generator("numpy", 3))
    _, wrong, _ = hand_loss(net, LABELS, 0.4, generator("numpy", 3), query_detached=True)
    assert grads_differ(grads, wrong, "h2att.weight")
    assert grads_differ(grads, wrong, "linear.weight")


def test_draws_cut_some_steps_and_p1_cuts_all():
    """Seed 3's draws at p = 0.4 cut some steps and not others (so the tests above compare
    something); p = 1 cuts every step, as the loop that detaches h before each one."""
    draws = np.random.RandomState(3).random(OUTPUTS + 1)
    assert 0 < (draws <= 0.4).sum() < OUTPUTS
    for name in NAMES:
        net = make(name)
        loss, grads = model_loss(net, LABELS, 1.0, generator("numpy", 0))
        hand, expected, _ = hand_loss(net, LABELS, 1.0, generator("numpy", 0))
        assert_grads_close(grads, expected)
        _, some = model_loss(net, LABELS, 0.4, generator("numpy", 3))
        assert grads_differ(grads, some, "lstm.weight_hh")


# --- draws and the early stop --------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("p", [0.0, 0.4])
def test_one_draw_per_step_and_the_early_stop(monkeypatch, name, kind, p):
    """Shorter captions stop the batch early: fewer steps and draws, the same loss and
    gradients as running all columns. Draws are made at p = 0 too (the branch drew always)
    and under no_grad."""
    short = LABELS.clone()
    short[:, 3:] = 0  # at most 2 words: every caption has ended at column 3
    assert caption_steps(short) == 3 and caption_steps(LABELS) == OUTPUTS
    full_width = short.shape[1] - 1
    net = make(name).eval()  # no dropout: its masks depend on the number of steps
    gen = generator(kind, 7)
    loss, grads = model_loss(net, short, p, gen)
    expected_draws = 3 + (name == "show_tell")
    reference = generator(kind, 7)
    for _ in range(expected_draws):
        one_draw(reference)
    assert same_stream(gen, reference)
    _, _, steps = hand_loss(net, short, p, generator(kind, 7))
    assert steps == expected_draws
    # all columns: more steps (and draws), but the first draws are the same ones
    monkeypatch.setattr(models, "caption_steps", lambda labels: full_width)
    gen_full = generator(kind, 7)
    loss_full, grads_full = model_loss(net, short, p, gen_full)
    torch.testing.assert_close(loss_full, loss, rtol=1e-12, atol=0)
    assert_grads_close(grads_full, grads)
    reference = generator(kind, 7)
    for _ in range(full_width + (name == "show_tell")):
        one_draw(reference)
    assert same_stream(gen_full, reference)
    monkeypatch.undo()
    gen = generator(kind, 7)
    with torch.no_grad():
        out = net(*inputs(), short, p=p, generator=gen)
    assert out.shape == (N, 3, V + 1)
    reference = generator(kind, 7)
    for _ in range(expected_draws):
        one_draw(reference)
    assert same_stream(gen, reference)


def test_caption_steps_follows_the_branch_break():
    """The first column j >= 1 where all captions have ended, at most W - 1."""
    assert caption_steps(torch.tensor([[0, 1, 2, 0], [0, 3, 0, 0]])) == 3
    assert caption_steps(torch.tensor([[0, 1, 2, 3], [0, 3, 0, 0]])) == 3  # no end: W - 1
    assert caption_steps(torch.tensor([[0, 1, 0, 0, 0], [0, 3, 0, 0, 0]])) == 2
    assert caption_steps(torch.tensor([[0, 0, 0, 0]])) == 1  # an empty caption: the end token
    assert caption_steps(torch.tensor([[0, 4]])) == 1


# --- decoding ---------------------------------------------------------------------------------

def hand_greedy(net, fc, att, max_length):
    """Greedy decoding written out with the hand cell: the argmax tokens of each caption up to
    its first end token, and the number of LSTM steps the branch's loop runs."""
    cell = hand_cell(net)
    with torch.no_grad():
        if isinstance(net, ShowTellModel):
            h, c = cell(net.img_embed(fc), (fc.new_zeros(len(fc), H),) * 2)
        else:
            h = c = net.linear(fc)
        captions = [[] for _ in fc]
        done = [False] * len(fc)
        it = torch.zeros(len(fc), dtype=torch.long)
        steps = 0
        for t in range(max_length + 1):
            xt = net.embed(it)
            if isinstance(net, ShowAttendTellModel):
                xt = torch.cat([xt, net.attend(h, *net._context(att))], 1)
            h, c = cell(xt, (h, c))
            steps += 1
            it = net.logit(h).argmax(1)  # log_softmax keeps the argmax
            for k, word in enumerate(it.tolist()):
                done[k] = done[k] or word == 0 or t == max_length
                if not done[k]:
                    captions[k].append(word)
            if all(done):
                break
    seq = torch.zeros(len(fc), max_length, dtype=torch.long)
    for k, words in enumerate(captions):
        seq[k, :len(words)] = torch.tensor(words, dtype=torch.long)
    return seq, steps


@pytest.mark.parametrize("name", NAMES)
def test_greedy_sample_is_the_argmax_and_stops_at_the_end_token(name):
    net = make(name).eval()
    fc, att = inputs(1)
    # an end-token bias at which some captions end early and some run to max_length
    for bias in np.linspace(0.0, 3.0, 31):
        with torch.no_grad():
            net.logit.bias[0] = bias
        expected, steps = hand_greedy(net, fc, att, 9)
        lengths = (expected > 0).sum(1)
        if 0 < lengths.min() < 9 and lengths.max() > lengths.min():
            break
    else:
        pytest.fail("no bias gives captions of different lengths")
    gen = np.random.RandomState(0)
    seq = net.sample(fc, att, max_length=9, generator=gen)
    assert seq.shape == (N, 9) and seq.dtype == torch.long
    assert torch.equal(seq, expected)
    # 0s after the end: each row is its words, then only 0s
    assert torch.equal(seq, seq * torch.cumprod((seq > 0).long(), 1))
    # Show, Attend and Tell draws one per core call of the branch's loop (the start token's,
    # one after each step that still had an unfinished caption); Show and Tell none
    reference = np.random.RandomState(0)
    reference.random(steps if name == "show_attend_tell" else 0)
    assert same_stream(gen, reference)
    assert steps == 1 + int(lengths.max())


@pytest.mark.parametrize("name", NAMES)
def test_beam_search(name):
    net = make(name).eval()
    fc, att = inputs(2)
    greedy = net.sample(fc, att, max_length=8)
    assert torch.equal(net.beam_search(fc, att, 1, max_length=8), greedy)
    beams = net.sample(fc, att, max_length=8, beam_size=2)
    assert beams.shape == (N, 8) and beams.dtype == torch.long
    assert torch.equal(beams, beams * torch.cumprod((beams > 0).long(), 1))
    assert beams.min() >= 0 and beams.max() <= V
    # Show, Attend and Tell: max_length + 1 draws per image when given a generator
    gen = np.random.RandomState(0)
    net.sample(fc, att, max_length=8, beam_size=2, generator=gen)
    reference = np.random.RandomState(0)
    reference.random(N * 9 if name == "show_attend_tell" else 0)
    assert same_stream(gen, reference)
    with pytest.raises(ValueError, match="beam_size"):
        net.sample(fc, att, beam_size=V + 2)


@pytest.mark.parametrize("end_bias,winner", [(0.0, ()), (-5.0, (1, 1))])
def test_beam_search_keeps_the_most_likely_caption(end_bias, winner):
    """2 words and the end token, beam_size 3, at most 2 words: the branch's beam search then
    scores every caption (its ended beams stay among the beams, but score below their own done
    entry), so it must return the most likely one, scored as the branch scores it: the sum of
    the log-probabilities of its words, and of its end token unless cut at max_length. At end
    bias 0 that is the empty caption, where greedy decoding says two words."""
    torch.manual_seed(0)
    net = build_model("show_tell", 2, **SIZES).double().eval()
    with torch.no_grad():
        net.logit.weight.mul_(20)
        net.logit.bias[0] = end_bias
    fc = inputs(3)[0][:1]
    scores = {}
    for words in ([], [1], [2], [1, 1], [1, 2], [2, 1], [2, 2]):
        labels = torch.tensor([[0] + words + [0] * (4 - len(words))])
        with torch.no_grad():
            logprobs = net(fc, None, labels, generator=torch.Generator())
        targets = words + ([0] if len(words) < 2 else [])
        scores[tuple(words)] = sum(logprobs[0, t, w].item() for t, w in enumerate(targets))
    ordered = sorted(scores, key=scores.get)
    assert ordered[-1] == winner and scores[winner] - scores[ordered[-2]] > 1e-3
    best = net.beam_search(fc, None, 3, max_length=2)[0].tolist()
    assert best == list(winner) + [0] * (2 - len(winner))
    if not winner:
        assert net.sample(fc, None, max_length=2)[0].tolist() == [1, 1]


# --- the criterion -----------------------------------------------------------------------------

def test_language_model_criterion_by_hand():
    """Two captions, three outputs: target and mask are cut to three columns; the loss is
    -(sum of the masked target log-probabilities) / (sum of the mask)."""
    logprobs = torch.tensor([[[-0.1, -0.2, -0.3], [-1.0, -2.0, -3.0], [-5.0, -6.0, -7.0]],
                             [[-0.5, -0.6, -0.7], [-1.5, -2.5, -3.5], [-9.0, -9.0, -9.0]]],
                            dtype=torch.float64)
    target = torch.tensor([[1, 2, 0, 0], [2, 0, 0, 0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # caption 1: -0.2, -3.0, -5.0; caption 2: -0.7, -1.5 (its third output masked out)
    expected = (0.2 + 3.0 + 5.0 + 0.7 + 1.5) / 5
    loss = LanguageModelCriterion()(logprobs, target, mask)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - expected) < 1e-15


# --- construction -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_factory_config_and_init(name):
    torch.manual_seed(0)
    net = build_model(name, V, **SIZES, detach="c")
    assert net.model_config["caption_model"] == name and net.model_config["detach"] == "c"
    assert net.lstm.detach == "c" and net.lstm.bias_ih is None and net.lstm.impl == "fast"
    assert net.lstm.hidden_size == H
    assert net.lstm.input_size == E + (ATT if name == "show_attend_tell" else 0)
    again = build_model(**net.model_config, impl="reference")
    assert again.lstm.impl == "reference"
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}
    again.load_state_dict(net.state_dict())
    assert "lstm.weight_ih" in net.state_dict() and "lstm.bias_ih" not in net.state_dict()
    assert net.embed.weight.shape == (V + 1, E) and net.logit.out_features == V + 1
    for weight in (net.embed.weight, net.logit.weight):
        assert weight.abs().max() <= 0.1 and weight.abs().max() > 0.08
    assert net.logit.bias.abs().max() == 0
    assert net.dropout.p == 0.5
    with pytest.raises(ValueError, match="caption_model"):
        build_model("fc", V)
    with pytest.raises(TypeError):
        build_model(name, V, rnn_sise=8)


def test_default_sizes_are_the_branch_options():
    st = build_model("show_tell", 10)
    assert st.img_embed.in_features == 2048 and st.lstm.input_size == 512
    assert st.lstm.hidden_size == 512 and not hasattr(st, "ctx2att")
    sat = ShowAttendTellModel(10)
    assert sat.linear.out_features == 512 and sat.lstm.input_size == 512 + 2048
    assert sat.ctx2att.in_features == 2048 and sat.ctx2att.out_features == 512
    assert sat.h2att.in_features == 512 and sat.alpha_net.out_features == 1


# --- device placement on fake CUDA ---------------------------------------------------------------

fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor")
CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("detach, standardize", [("h", False), ("c", False), ("h", True)])
def test_training_step_stays_on_cuda(monkeypatch, name, detach, standardize):
    """Fake CUDA tensors (see tests/test_fake_cuda.py): two training steps (forward, criterion,
    backward by the stand-in engine, clipping, Adam); every output, parameter, gradient and
    optimiser state on the device, and the second step copies nothing from the host (but
    c-detach's mask, non-blocking). With --standardize-fc, the statistics (numpy arrays, as
    caption_train computes them) go to the device once, before training."""
    from test_fake_cuda import HostToDevice, backward
    steps = caption_steps(LABELS)  # real labels: fake ones hold no values
    draw = models.draw_uniforms

    def real_draws(*args, **kwargs):
        with fake_tensor.unset_fake_temporarily():
            return draw(*args, **kwargs)
    monkeypatch.setattr(models, "caption_steps", lambda labels: steps)
    monkeypatch.setattr(models, "draw_uniforms", real_draws)
    rows = LABELS.tolist()
    gen = torch.Generator().manual_seed(0)
    with fake_tensor.FakeTensorMode():
        with torch.device("cuda"):
            net = build_model(name, V, **SIZES, detach=detach, standardize_fc=standardize)
        if standardize:
            net.set_fc_statistics(np.full(FC, 2.0, np.float32), np.full(FC, 0.5, np.float32))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        crit = LanguageModelCriterion()
        for step in range(2):
            labels = torch.tensor(rows).to("cuda")  # the batch, copied to the device
            masks = torch.ones(labels.shape).to("cuda")
            fc = torch.randn(N, FC).to("cuda")
            att = torch.randn(N, 2, 2, ATT).to("cuda")
            optimizer.zero_grad(set_to_none=True)
            with HostToDevice() as copies:
                logprobs = net(fc, att, labels, masks, p=0.4, generator=gen)
                loss = crit(logprobs, labels[:, 1:], masks[:, 1:])
                backward(loss)
            for q in net.parameters():
                q.grad.clamp_(-0.1, 0.1)  # the branch's element-wise clipping
            optimizer.step()
            assert logprobs.device == CUDA and logprobs.shape == (N, OUTPUTS, V + 1)
        tensors = [logprobs, loss] + list(net.parameters()) + [q.grad for q in net.parameters()]
        tensors += list(net.buffers())
        tensors += [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
        for t in tensors:
            assert fake_tensor.is_fake(t) and t.device == CUDA, (t.device, type(t))
    cut = detach == "c" and name == "show_tell"  # the fast layer copies c-detach's mask
    assert copies.copies == ([((OUTPUTS + 1,), True)] if cut else [])


@pytest.mark.parametrize("name", NAMES)
def test_standardize_fc_feeds_the_model_standardized_features(name):
    """--standardize-fc: the model with buffers (mean, sd) computes exactly what the branch's
    model (the same weights) computes on (fc - mean) / sd, teacher-forced and decoding; off,
    the model is the branch's (no buffers, the model_config older runs stored)."""
    plain = make(name, drop=0.0)
    assert "standardize_fc" not in plain.model_config
    assert not any("fc_mean" in key or "fc_std" in key for key in plain.state_dict())
    torch.manual_seed(1)
    standard = build_model(name, V, **SIZES, drop_prob_lm=0.0, standardize_fc=True).double()
    assert standard.model_config["standardize_fc"] is True
    standard.load_state_dict({**plain.state_dict(), "fc_mean": standard.fc_mean,
                              "fc_std": standard.fc_std})
    mean = torch.linspace(3.0, 5.0, FC, dtype=torch.float64)
    std = torch.linspace(0.1, 0.5, FC, dtype=torch.float64)
    standard.set_fc_statistics(mean, std)
    fc, att = inputs()
    raw = fc * std + mean  # what the standardized model reads as fc
    masks = masks_of(LABELS)
    got = standard(raw, att, LABELS, masks)
    want = plain(fc, att, LABELS, masks)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(plain(raw, att, LABELS, masks), want)  # it does make a difference
    assert torch.equal(standard.sample(raw, att), plain.sample(fc, att))
    # rebuilt from its checkpoint, it keeps its statistics
    again = build_model(**standard.model_config).double()
    again.load_state_dict(standard.state_dict())
    assert torch.equal(again.fc_mean, mean) and torch.equal(again.fc_std, std)
    with pytest.raises(ValueError, match="without standardize_fc"):
        plain.set_fc_statistics(mean, std)
