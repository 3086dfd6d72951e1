"""bench.py's launch counts and its flush comparison (not their timings: speed is read from
bench.py, never asserted)."""
import pytest
import torch

import bench

TINY = dict(batch=4, hidden=8, steps=24, classes=3, p=0.5, last_only=False)


@pytest.fixture(scope="module")
def launches():
    cpu = torch.device("cpu")
    return {name: bench.count_launches(name, TINY, cpu)
            for name in ("reference", "fast", "fast_cudapath", "fast_c", "fast_c_cudapath")}


def test_cuda_path_launches_fewer_ops_per_backward_step(launches):
    """The per-chunk weight gradient saves about one launch per backward step (of ~4.5) on
    the code CUDA runs; the forward is the same code on both."""
    for per_step, cuda_path in (("fast", "fast_cudapath"), ("fast_c", "fast_c_cudapath")):
        saved = launches[per_step]["backward_per_step"] - launches[cuda_path]["backward_per_step"]
        assert 0.5 < saved < 1.5, (per_step, launches)
        assert launches[per_step]["forward_per_step"] == launches[cuda_path]["forward_per_step"]
    # Adam's foreach form (CUDA's default) is fewer ops than the CPU's loop
    assert launches["fast_cudapath"]["optimizer"] < launches["fast"]["optimizer"]


def test_counts_tell_the_per_step_loop_from_the_fast_path(launches):
    # the forward: one fused-gates matmul and six elementwise ops a step, plus a fixed set-up
    assert 7 <= launches["fast"]["forward_per_step"] < 9
    assert launches["reference"]["forward_per_step"] > launches["fast"]["forward_per_step"] + 4
    assert launches["reference"]["backward_per_step"] > 2 * launches["fast"]["backward_per_step"]


def test_compare_flush_times_a_trained_runs_step_both_ways_and_restores_ieee(tmp_path, capsys):
    import copying
    from running import numerics
    folder = tmp_path / "run"
    assert copying.main(["--T", "6", "--train-size", "40", "--test-size", "20", "--batch_size",
                         "20", "--lstm-size", "8", "--n_epochs", "1", "--device", "cpu",
                         "--save-dir", str(folder)]) == 0
    threads = torch.get_num_threads()
    result = bench.main(["--compare-flush", str(folder), "--reps", "2"])["flush"]
    assert result["ieee_ms"] > 0 and result["flushed_ms"] > 0
    # (the ratio is of the unrounded medians; the ms are rounded to 0.01)
    assert result["flushed_over_ieee"] == pytest.approx(result["flushed_ms"] / result["ieee_ms"],
                                                        rel=1e-2)
    assert 0 <= result["gradients_apart"] < 1e-3  # one batch of a tiny net: no denormals
    assert "flushed/IEEE" in capsys.readouterr().out
    assert torch.get_num_threads() == threads and not numerics.flushes_denormals(torch)
    # A folder without last.pt: one line, exit status 2.
    assert bench.main(["--compare-flush", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint at" in err[0]


def test_the_captioning_row_compares_like_for_like(capsys):
    """bench.py --captioning: the branch-style per-step nn.LSTM model holds our weights and, with
    nothing detached and no dropout, computes our loss and gradients; the row prints both."""
    import random

    import torch

    from captioning.models import LanguageModelCriterion, build_model
    torch.manual_seed(0)
    ours = build_model("show_tell", 11, input_encoding_size=6, rnn_size=6, fc_feat_size=5,
                       drop_prob_lm=0.0).double()
    branch = bench.BranchShowTell(ours).double()
    fc = torch.randn(4, 5, dtype=torch.float64)
    labels = torch.tensor([[0, 3, 4, 0, 0], [0, 1, 2, 5, 0], [0, 7, 0, 0, 0], [0, 9, 9, 9, 0]])
    masks = (labels > 0).double()
    masks[:, 0] = 1
    masks[torch.arange(4), (labels > 0).sum(1) + 1] = 1
    criterion = LanguageModelCriterion()
    losses, grads = [], []
    for model, run in ((ours, lambda: ours(fc, None, labels, p=0.0)),
                       (branch, lambda: branch(fc, labels, 0.0, random.Random(0)))):
        ours.zero_grad(set_to_none=True)
        branch.zero_grad(set_to_none=True)
        loss = criterion(run(), labels[:, 1:], masks[:, 1:])
        loss.backward()
        losses.append(loss.item())
        lstm_grad = ours.lstm.weight_hh.grad if model is ours else branch.core.weight_hh_l0.grad
        grads.append((ours.logit.weight.grad.clone(), lstm_grad.clone()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    result = bench.compare_captioning(1, vocab=11, hidden=6, fc_size=5, length=4)
    assert result["ours"] > 0 and result["branch"] > 0
    out = capsys.readouterr().out
    assert "ours / branch:" in out
    # launches per training step (what a GPU pays), for both models, by phase
    ours, branch = result["launches"]["ours"], result["launches"]["branch"]
    assert all(counts[phase] > 0 for counts in (ours, branch)
               for phase in ("forward", "backward", "optimizer"))
    assert ours["optimizer"] == branch["optimizer"]  # the same parameters, the same Adam
    assert "operator launches per training step, ours: forward" in out
