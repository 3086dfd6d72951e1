"""report.py's copying convergence across seeds (issue 21), from hand-made run folders
(config.json + metrics.csv, no training): per-seed first epochs, the honest counts by epoch
50 / 100 / 200 of runs at different stages, the median, the figure and the c-detach section."""
import shutil

import matplotlib.image
import pytest

from reporting.convergence import censored_median, convergence_summary
from test_report import make_run, run_report

T100 = ["--T", "100"]


def rising(solved_at, epochs, below=60.0):
    """Validation accuracies for ``epochs`` epochs, first >= 99 % at ``solved_at`` (None:
    never)."""
    return [100.0 if solved_at is not None and epoch >= solved_at else below
            for epoch in range(1, epochs + 1)]


def row_of(text, start):
    return next(line for line in text.splitlines() if line.startswith(start))


def section(text, heading):
    """The lines under ``## heading``, up to the next heading of that level."""
    return text.split(f"## {heading}\n")[1].split("\n## ")[0]


def counts_table(text):
    return section(text, "Copying: convergence across seeds").split("Per seed:")[0]


@pytest.fixture(scope="module")
def seeds_report(tmp_path_factory):
    """Vanilla T = 100: seed 1 converged at epoch 30 (paused at 60), seed 2 not converged after
    120 epochs, seed 3 only at epoch 10, plus a second, shorter folder of seed 3 (a repeat).
    h-detach p = 0.25: seed 2 converged at 80 (paused at 90); and, a setting of its own (200
    epochs planned), seed 1 done at 200 without converging."""
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "v1", "copying", T100 + ["--seed", "1"], rising(30, 60), finished=False)
    make_run(root / "v2", "copying", T100 + ["--seed", "2"], rising(None, 120), finished=False)
    make_run(root / "v3", "copying", T100 + ["--seed", "3"], rising(None, 10, 20.0),
             finished=False)
    make_run(root / "v3_again", "copying", T100 + ["--seed", "3"], rising(None, 4, 20.0),
             finished=False)
    make_run(root / "h1", "copying", T100 + ["--p-detach", "0.25", "--seed", "1",
                                             "--n-epochs", "200"], rising(None, 200, 90.0))
    make_run(root / "h2", "copying", T100 + ["--p-detach", "0.25", "--seed", "2"],
             rising(80, 90), finished=False)
    out = tmp_path_factory.mktemp("out")
    data, text = run_report(root, out)
    return out, data, text


def setting_of(data, label):
    return next(s for s in data["settings"] if s["label"] == label)


def test_counts_by_epoch_use_only_the_seeds_whose_run_got_there(seeds_report):
    _, data, text = seeds_report
    vanilla = setting_of(data, "vanilla")
    summary = vanilla["convergence"]
    # The repeat of seed 3 is not a fourth seed.
    assert summary["n_seeds"] == 3 and vanilla["repeats"] == ["v3_again"]
    assert summary["by_epoch"]["50"] == {"reached": 1, "known": 2, "not_there_yet": [3]}
    assert summary["by_epoch"]["100"] == {"reached": 1, "known": 2, "not_there_yet": [3]}
    # Seed 1 converged at 30, so it counts at 200 though its run is at 60; seed 2 (120 epochs,
    # not converged) is not counted as failing by 200.
    assert summary["by_epoch"]["200"] == {"reached": 1, "known": 1, "not_there_yet": [2, 3]}
    # One of three converged: no median, and no mean over the two that did not.
    assert summary["median_first_epoch"] is None
    row = row_of(counts_table(text), "| copying T=100 | vanilla | 3 |")
    assert "| 1 of 2 seeds at epoch 50 (seed 3 not there yet) |" in row
    assert "| 1 of 1 seed at epoch 200 (seeds 2, 3 not there yet) |" in row
    assert "not defined yet (1 of 3 reached 99 %)" in row
    # A seed converged at 80 counts by epoch 100 and 200 though its run is at epoch 90.
    hdetach = setting_of(data, "h-detach p=0.25")["convergence"]
    assert hdetach["by_epoch"] == {"50": {"reached": 0, "known": 1, "not_there_yet": []},
                                   "100": {"reached": 1, "known": 1, "not_there_yet": []},
                                   "200": {"reached": 1, "known": 1, "not_there_yet": []}}
    assert hdetach["median_first_epoch"] == 80
    # A run done at its planned 200 epochs without converging: a failure at every milestone.
    row = row_of(counts_table(text),
                 "| copying T=100 | h-detach p=0.25 (200 epochs planned) | 1 |")
    # Its run is done: the median is not defined, and will not be ('yet' would promise more).
    assert "| 0 of 1 | 0 of 1 | 0 of 1 | not defined (0 of 1 reached 99 %) |" in row
    row = row_of(counts_table(text), "| copying T=100 | h-detach p=0.25 | 1 |")
    assert "| 0 of 1 | 1 of 1 | 1 of 1 | 80 (one seed only) |" in row


def test_per_seed_rows_say_the_first_epoch_or_how_far_the_run_has_got(seeds_report):
    _, data, text = seeds_report
    per_seed = section(text, "Copying: convergence across seeds").split("Per seed:")[1]
    assert row_of(per_seed, "| copying T=100 | vanilla | 1 |").endswith(
        "| paused, 60/600 | epoch 30 | 100.00 at epoch 60 (so far) |")
    assert "| paused, 120/600 | not by epoch 120 | 60.00 at epoch 120 (so far) |" in \
        row_of(per_seed, "| copying T=100 | vanilla | 2 |")
    # A seed at epoch 10 is 'not by epoch 10', the epochs its run has done.
    assert "| paused, 10/600 | not by epoch 10 |" in row_of(per_seed,
                                                            "| copying T=100 | vanilla | 3 |")
    # A finished run that never converged says so, without '(so far)'.
    done = next(line for line in per_seed.splitlines() if "| done, 200/200 |" in line)
    assert "| not by epoch 200 (run done) | 90.00 at epoch 200 |" in done
    assert "v3_again" not in per_seed


def test_median_is_over_all_seeds_and_only_where_the_seeds_determine_it():
    def runs(*items):
        return [{"first_epoch_solved": first, "epochs": epochs} for first, epochs in items]

    # 30 and 50 reached; the third seed is past 50 without converging: the median is 50.
    assert censored_median(runs((30, 60), (50, 60), (None, 60))) == 50
    # The third seed stopped at 40: it may still converge before 50, so no median.
    assert censored_median(runs((30, 60), (50, 60), (None, 40))) is None
    # Even counts: the mean of the two middle first epochs, both known.
    assert censored_median(runs((10, 99), (20, 99), (30, 99), (None, 100))) == 25
    assert censored_median(runs((10, 99), (20, 99), (None, 100), (None, 100))) is None
    assert censored_median(runs((None, 600))) is None and censored_median([]) is None
    # Through the summary as the report builds it.
    setting = {"runs": [dict(seed=s, path=str(s), state="done", planned=600, final=True,
                             best_valid_accuracy=100.0, best_epoch=600, first_epoch_solved=f,
                             epochs=600) for s, f in ((1, 30), (2, 50), (3, None))]}
    summary = convergence_summary(setting)
    assert summary["median_first_epoch"] == 50
    assert summary["by_epoch"]["50"] == {"reached": 2, "known": 3, "not_there_yet": []}


def test_the_convergence_figure_is_written_and_readable(seeds_report):
    out, data, text = seeds_report
    assert "convergence.png" in data["figures"] and "](convergence.png)" in text
    image = matplotlib.image.imread(out / "convergence.png")
    # Two panel columns of settings beside the fraction panel, at 100 dpi.
    assert image.shape[1] == 1600 and image.shape[0] >= 400 and image.std() > 0.05


def test_c_detach_stands_beside_h_detach_of_its_seed_with_the_statements(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "h3", "copying", T100 + ["--p-detach", "0.25", "--seed", "3"],
             [20.0, 30.0, 45.0, 50.0, 60.0], finished=False)
    make_run(root / "c3", "copying", T100 + ["--p-detach", "0.25", "--detach", "c",
                                             "--seed", "3"], [15.0, 18.0, 22.0],
             finished=False)
    data, text = run_report(root, tmp_path / "out")
    part = section(text, "Copying: c-detach beside h-detach of the same seed")
    c_row = row_of(part, "| c-detach p=0.25 | 3 |")
    h_row = row_of(part, "| h-detach p=0.25 | 3 |")
    # Compared at the epoch both runs have done (3), not at their unequal lengths.
    assert "| epoch 3: 22.00 |" in c_row and "| epoch 3: 45.00 |" in h_row
    assert "| not by epoch 3 |" in c_row and "| epoch 3 |" in h_row  # above 40 %
    assert "paper: detaching c instead of h: copying T = 100 does not converge in 500 " \
           "epochs" in part
    assert "reproduction report: did not cross 40 % in 200 epochs" in part
    ours = row_of(part, "- ours:")
    assert "paused, 3/600" in ours and "too early" in ours
    assert "c-detach 22.00 % against h-detach 45.00 % (same seed)" in ours
    # Without a c-detach run there is no such section.
    shutil.rmtree(root / "c3")
    _, text = run_report(root, tmp_path / "out2")
    assert "c-detach beside h-detach" not in text
