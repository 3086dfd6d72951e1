"""report.py's paired view (issue 21): h-detach against vanilla of the same seed, from
hand-made run folders. Only runs of the kit's streams are pairs; a seed is counted at epoch M
only where both of its runs have done M; ties are not 'ahead'."""
import shutil

from reporting.paired import compare_curves
from test_report import make_run, run_report
from test_report_convergence import row_of, section

KIT = ["--T", "100", "--rng", "kit"]
HEADING = "Copying: h-detach against vanilla of the same seed"


def curve_run(path, accuracies, seed=1, first=None, epochs=None, final=False):
    return {"path": path, "seed": seed, "curve": [[i + 1, a] for i, a in enumerate(accuracies)],
            "first_epoch_solved": first, "epochs": epochs or len(accuracies), "final": final,
            "state": "done" if final else "paused", "planned": 600}


def test_compare_curves_counts_strict_leads_and_the_epoch_it_held_from():
    h = curve_run("h", [10.0, 30.0, 20.0, 50.0, 60.0, 70.0])
    v = curve_run("v", [20.0, 30.0, 25.0, 40.0, 55.0])  # one epoch fewer
    pair = compare_curves(h, v, epochs=(2, 5, 6))
    # Epochs 1-5 in common; ahead at 4 and 5 only (epoch 2 is a tie, not a lead).
    assert pair["common_epochs"] == 5 and pair["last_common"] == 5
    assert pair["ahead_epochs"] == 2 and pair["ahead_from"] == 4
    assert pair["at"] == {"2": [30.0, 30.0], "5": [60.0, 55.0], "6": [70.0, None]}
    # Behind at the last epoch both did: no 'ahead from', whatever came before.
    pair = compare_curves(curve_run("h", [50.0, 60.0, 10.0]), curve_run("v", [1.0, 2.0, 30.0]))
    assert pair["ahead_epochs"] == 2 and pair["ahead_from"] is None


def test_paired_section_counts_seeds_where_both_runs_got_there(tmp_path):
    root = tmp_path / "runs"
    # Seed 1: h-detach ahead at epochs 1, 3 and 4 (level at 2); vanilla has 4 epochs so far.
    make_run(root / "v1", "copying", KIT + ["--seed", "1"], [20.0, 30.0, 40.0, 45.0],
             finished=False)
    make_run(root / "h1", "copying", KIT + ["--p-detach", "0.25", "--seed", "1"],
             [25.0, 30.0, 50.0, 99.5, 100.0, 100.0], finished=False)
    # Seed 2: vanilla solves at epoch 2; h-detach never ahead.
    make_run(root / "v2", "copying", KIT + ["--seed", "2"], [50.0, 99.0, 100.0, 100.0, 100.0],
             finished=False)
    make_run(root / "h2", "copying", KIT + ["--p-detach", "0.25", "--seed", "2"],
             [40.0, 60.0, 70.0, 80.0, 90.0], finished=False)
    # Seed 3 has no vanilla run; seed 4 is of the authors' streams (not a pair).
    make_run(root / "h3", "copying", KIT + ["--p-detach", "0.25", "--seed", "3"], [10.0],
             finished=False)
    make_run(root / "v4", "copying", ["--T", "100", "--rng", "authors", "--seed", "4"],
             [10.0], finished=False)
    make_run(root / "h4", "copying", ["--T", "100", "--rng", "authors", "--p-detach", "0.25",
                                      "--seed", "4"], [90.0], finished=False)
    data, text = run_report(root, tmp_path / "out")
    part = section(text, HEADING)
    assert "| copying T=100 | h-detach p=0.25 vs vanilla | 2 |" in part
    # Milestones 50 / 100 / 200: neither pair has got there (seed 1's vanilla has 4 epochs).
    assert "not known yet (seeds 1, 2 not at epoch 50 in both runs)" in part
    seed1 = row_of(part, "| copying T=100 | h-detach p=0.25 | 1 |")
    assert "| paused, 6/600; paused, 4/600 |" in seed1
    assert "| 3 of 4 | epoch 3 to 4 | epoch 4 / not by epoch 4 |" in seed1
    seed2 = row_of(part, "| copying T=100 | h-detach p=0.25 | 2 |")
    assert "| 0 of 5 | not ahead at epoch 5 | not by epoch 5 / epoch 2 |" in seed2
    assert "| 3 |" not in part.split("Per seed:")[1] and "| 4 |" not in part.split("Per seed:")[1]
    paired = data["paired"][0]
    assert [pair["seed"] for pair in paired["seeds"]] == [1, 2]
    assert paired["by_epoch"]["50"] == {"ahead": 0, "known": 0, "not_there_yet": [1, 2]}


def test_milestone_counts_and_no_section_without_a_kit_pair(tmp_path):
    root = tmp_path / "runs"
    for seed, (h, v) in {1: (60.0, 50.0), 2: (40.0, 50.0), 3: (70.0, 70.0)}.items():
        make_run(root / f"v{seed}", "copying", KIT + ["--seed", str(seed)], [v] * 50,
                 finished=False)
        make_run(root / f"h{seed}", "copying", KIT + ["--p-detach", "0.5", "--seed", str(seed)],
                 [h] * (50 if seed < 3 else 49), finished=False)
    _, text = run_report(root, tmp_path / "out")
    row = row_of(section(text, HEADING), "| copying T=100 | h-detach p=0.5 vs vanilla | 3 |")
    # At epoch 50: seed 1 ahead, seed 2 behind; seed 3's h-detach run has done 49 epochs.
    assert "| 1 of 2 seeds at epoch 50 (seed 3 not there yet) |" in row
    for seed in (1, 2, 3):
        shutil.rmtree(root / f"v{seed}")
    _, text = run_report(root, tmp_path / "out2")
    assert HEADING not in text
