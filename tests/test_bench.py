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
