"""report.py: the paper's tables and figures from run folders.

Tiny real copying runs (a few seconds in all) give the report numbers that must equal those in
their files; hand-made run folders cover what tiny runs cannot reach quickly (seeds that solve
the task, the best-validation-seed rule, damaged files, pixel MNIST settings).
"""
import json
import os
import shutil
import statistics
from pathlib import Path

import matplotlib.image
import pytest

import copying
import pixelmnist
import report
import transfer_copy
from running import runfolder

TINY = ["--T", "6", "--train-size", "60", "--test-size", "40", "--batch_size", "20",
        "--lstm-size", "8", "--n_epochs", "3", "--anneal-p", "2", "--device", "cpu"]


def copy_run(folder, *extra):
    assert copying.main(TINY + ["--save-dir", str(folder), *extra]) == 0


def make_run(folder, task, argv, valid, test=None, finished=True, state="paused", edit=None,
             data="official"):
    """A hand-made run folder: config.json from the script's own parser, metrics.csv from the
    given validation (and test) accuracies, results.json by the script's rules when finished,
    otherwise a stand-in last.pt and state.json (status() calls a run paused only when it has a
    checkpoint to continue from)."""
    module = copying if task == "copying" else pixelmnist
    folder = Path(folder)
    folder.mkdir(parents=True)
    args = vars(module.build_parser().parse_args([*argv, "--save-dir", str(folder)]))
    if edit:
        edit(args)
    runfolder.write_json(folder / "config.json", {"task": task, "args": args, "device": "cpu"})
    if task == "pixelmnist" and data is not None:
        # What pixelmnist.py's check of the files said (a stand-in for a run on MNIST).
        runfolder.write_json(folder / "data.json", {"mnist": data})
    history = []
    for i, accuracy in enumerate(valid):
        record = {"epoch": i + 1, "p_detach": 0.0, "train/epoch_loss": 1.0, "valid/loss": 1.0,
                  "valid/accuracy": accuracy, "iteration": 10 * (i + 1), "elapsed_s": 2.0 * i}
        if test and test[i] is not None:
            record["test/accuracy"] = test[i]
        history.append(record)
    runfolder.write_metrics(folder, history)
    if finished:
        strict = task == "pixelmnist"
        best, epoch = report.best_of(runfolder.read_metrics(folder / "metrics.csv"), strict)
        results = {"best_valid_accuracy": best, "best_epoch": epoch, "final_epoch": len(valid),
                   "final_valid_accuracy": valid[-1], "seed": args["seed"]}
        if strict:
            results["test_accuracy"] = test[epoch - 1]
        runfolder.write_json(folder / "results.json", results)
        runfolder.write_state(str(folder), "done", epoch=len(valid), n_epochs=args["n_epochs"])
    else:
        (folder / "last.pt").write_bytes(b"")
        runfolder.write_state(str(folder), state, epoch=len(valid), n_epochs=args["n_epochs"])
    return folder


def run_report(root, out, *extra):
    assert report.main([str(root), "--out", str(out), *map(str, extra)]) == 0
    out = Path(out)
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def by_path(data):
    return {run["path"]: run for run in data["runs"]}


def one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        report.main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    return err


# ----------------------------------------------------------------------------- tiny real runs

@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    """Three seeds of p = 0.5 (one paused after epoch 1 of 3), one vanilla run, and a transfer
    test of one model at T' = 8 and 12."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (1, 2):
        copy_run(root / "copying" / f"T6_p0.5_s{seed}", "--p-detach", "0.5", "--seed", str(seed))
    copy_run(root / "copying" / "T6_p0.5_s3", "--p-detach", "0.5", "--seed", "3",
             "--until-epoch", "1")
    copy_run(root / "copying" / "T6_vanilla_s1", "--seed", "1")
    assert transfer_copy.main(["--model-dir", str(root / "copying" / "T6_p0.5_s1"), "--T", "8",
                               "12", "--test-size", "20", "--device", "cpu"]) == 0
    return root


@pytest.fixture(scope="module")
def real_report(real_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    data, text = run_report(real_root, out)
    return out, data, text


def test_numbers_equal_those_in_the_files(real_root, real_report):
    _, data, text = real_report
    runs = by_path(data)
    assert set(runs) == {f"copying/T6_p0.5_s{s}" for s in (1, 2, 3)} | {"copying/T6_vanilla_s1"}
    for path, run in runs.items():
        folder = real_root / path
        rows = runfolder.read_metrics(folder / "metrics.csv")
        assert run["curve"] == [[row["epoch"], row["valid_accuracy"]] for row in rows]
        assert run["epochs"] == rows[-1]["epoch"] and run["planned"] == 3
        assert run["seed"] == json.loads((folder / "config.json").read_text())["args"]["seed"]
        if (folder / "results.json").exists():
            results = json.loads((folder / "results.json").read_text())
            assert run["final"] and run["state"] == "done"
            assert run["best_valid_accuracy"] == results["best_valid_accuracy"]
            assert run["best_epoch"] == results["best_epoch"]
        solved = [row["epoch"] for row in rows if row["valid_accuracy"] >= 99]
        assert run["first_epoch_solved"] == (solved[0] if solved else None)
        assert f"{run['best_valid_accuracy']:.2f}" in text
    # The transfer results, with the model epoch they were measured on.
    transfer = json.loads((real_root / "copying" / "T6_p0.5_s1" / "transfer.json").read_text())
    got = runs["copying/T6_p0.5_s1"]["transfer"]
    assert got["accuracy"] == {str(row["T"]): row["accuracy"] for row in transfer["results"]}
    assert got["checkpoint_epoch"] == transfer["checkpoint_epoch"] and got["current"]
    assert got["trained_T"] == 6
    assert "Trained at T = 6" in text and "T'=8" in text and "T'=12" in text
    for row in transfer["results"]:
        assert f"{row['accuracy']:.2f}" in text


def test_seeds_of_one_setting_are_summarised_together_and_apart_from_others(real_report):
    _, data, text = real_report
    settings = {s["label"]: s for s in data["settings"]}
    p05 = [label for label in settings if label.startswith("h-detach p=0.5")]
    vanilla = [label for label in settings if label.startswith("vanilla")]
    assert len(p05) == 1 and len(vanilla) == 1 and len(settings) == 2
    assert settings[p05[0]]["runs"] == [f"copying/T6_p0.5_s{s}" for s in (1, 2, 3)]
    assert settings[vanilla[0]]["runs"] == ["copying/T6_vanilla_s1"]
    runs = by_path(data)
    values = [runs[f"copying/T6_p0.5_s{s}"]["best_valid_accuracy"] for s in (1, 2, 3)]
    summary = settings[p05[0]]["summary"]
    assert summary["best_valid_accuracy"]["mean"] == pytest.approx(statistics.fmean(values))
    assert summary["best_valid_accuracy"]["sd"] == pytest.approx(statistics.stdev(values))
    assert summary["n_runs"] == 3 and summary["n_done"] == 2 and not summary["all_final"]
    # The tiny runs differ from the authors' protocol: the label says how.
    assert "hidden 8" in p05[0] and "3 epochs planned" in p05[0]
    assert settings[p05[0]]["protocol"] is False


def test_unfinished_runs_are_labelled_as_such(real_report):
    _, data, text = real_report
    paused = by_path(data)["copying/T6_p0.5_s3"]
    assert paused["state"] == "paused" and paused["epochs"] == 1 and paused["planned"] == 3
    assert not paused["final"]
    assert "paused, 1/3" in text
    line = next(line for line in text.splitlines() if "| 3 | paused, 1/3 |" in line)
    assert "(so far)" in line and "not reached (1 epoch so far)" in line
    done = next(line for line in text.splitlines() if "| 1 | done, 3/3 |" in line)
    assert "(so far)" not in done and "not reached |" in done


def test_pngs_decode_with_the_expected_size(real_report):
    out, data, text = real_report
    assert data["figures"] == ["valid_accuracy.png", "transfer.png", "convergence.png"]
    # One panel each (one experiment, one trained delay): 7.5 inches at 100 dpi, and at least
    # 4.2 inches high plus the legend under the panel.
    curves = matplotlib.image.imread(out / "valid_accuracy.png")
    assert curves.shape[1] == 750 and 420 <= curves.shape[0] <= 600 and curves.shape[2] in (3, 4)
    transfer = matplotlib.image.imread(out / "transfer.png")
    assert transfer.shape[1] == 750 and 420 <= transfer.shape[0] <= 600
    assert curves.std() > 0.05 and transfer.std() > 0.05  # not blank
    assert "](valid_accuracy.png)" in text and "](transfer.png)" in text


def test_out_defaults_to_root_and_nothing_else_is_touched(real_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(real_root, root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert report.main([str(root)]) == 0
    new = {p for p in root.rglob("*")} - set(before)
    assert {p.name for p in new} == {"report.md", "report.json", "valid_accuracy.png",
                                     "transfer.png", "convergence.png"} and \
        all(p.parent == root for p in new)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())


def test_the_report_shows_the_protocols_transfer_and_names_every_measurements_source(
        real_root, tmp_path):
    # Issue 19: a later measurement of last.pt on 50 sequences took the place of the run's
    # best-model measurement in the report, without saying where it came from.
    root = tmp_path / "root"
    shutil.copytree(real_root / "copying" / "T6_p0.5_s1", root / "run")
    os.remove(root / "run" / "transfer.json")
    model = str(root / "run")
    assert transfer_copy.main(["--model-dir", model, "--T", "8", "--device", "cpu"]) == 0
    protocol = json.loads((root / "run" / "transfer.json").read_text())["results"]
    assert transfer_copy.main(["--model-dir", str(root / "run" / "last.pt"), "--T", "8", "12",
                               "--test-size", "20", "--device", "cpu"]) == 0
    data, text = run_report(root, tmp_path / "out")
    shown = by_path(data)["run"]["transfer"]
    assert (shown["checkpoint"], shown["test_size"], shown["seed"]) == ("best_model.pt", 5000, 555)
    assert shown["protocol"] and shown["accuracy"] == {"8": protocol[0]["accuracy"]}
    assert [(o["checkpoint"], o["test_size"]) for o in shown["others"]] == [("last.pt", 20)]
    row = next(line for line in text.splitlines() if "(ours) | 1 |" in line)
    assert "best_model.pt of epoch" in row and "5,000 sequences, seed 555" in row
    assert "also measured (not in the table): last.pt of epoch" in text
    assert "20 sequences, seed 555, the authors' streams (not the protocol's" in text
    # With only a measurement of last.pt, that one is shown, and says what it is.
    os.remove(root / "run" / "transfer.json")
    assert transfer_copy.main(["--model-dir", str(root / "run" / "last.pt"), "--T", "8",
                               "--test-size", "20", "--device", "cpu"]) == 0
    data, text = run_report(root, tmp_path / "out2")
    row = next(line for line in text.splitlines() if "(ours) | 1 |" in line)
    assert "last.pt of epoch 3; 20 sequences, seed 555, the authors' streams (not the " \
        "protocol's" in row


def test_a_transfer_of_a_model_that_changed_since_is_marked_out_of_date(real_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(real_root / "copying" / "T6_p0.5_s1", root / "run")
    with open(root / "run" / "best_model.pt", "ab") as handle:
        handle.write(b"more")
    data, text = run_report(root, tmp_path / "out")
    assert by_path(data)["run"]["transfer"]["current"] is False
    assert "out of date" in text


# ----------------------------------------------------------------------------- hand-made runs

def test_best_validation_seed_rule_and_mean_over_seeds(tmp_path):
    root = tmp_path / "runs"
    mnist = ["--p-detach", "0.25", "--n_epochs", "3"]
    # seed 1: best valid 97 (epoch 2), test 95 there.
    make_run(root / "s1", "pixelmnist", mnist + ["--seed", "1"], [90, 97, 96], [89, 95, None])
    # seed 2: best valid 98 at epoch 1 (strict rule: the tie at epoch 2 does not move it), test
    # 94 there: the lowest test accuracy, but the rule picks this seed.
    make_run(root / "s2", "pixelmnist", mnist + ["--seed", "2"], [98, 98, 97.5], [94, None, None])
    # seed 3: the highest test accuracy, not the best validation: not picked.
    make_run(root / "s3", "pixelmnist", mnist + ["--seed", "3"], [96, 95, 96], [99, None, None])
    data, text = run_report(root, tmp_path / "out")
    runs = by_path(data)
    assert runs["s2"]["best_epoch"] == 1 and runs["s2"]["test_accuracy"] == 94
    [setting] = data["settings"]
    assert setting["summary"]["best_valid_run"] == "s2"
    assert setting["summary"]["test_accuracy_of_best_valid_run"] == 94
    assert setting["summary"]["test_accuracy"]["mean"] == pytest.approx((95 + 94 + 99) / 3)
    assert setting["summary"]["test_accuracy"]["sd"] == pytest.approx(
        statistics.stdev([95, 94, 99]))
    assert setting["summary"]["test_accuracy"]["n"] == 3
    row = next(line for line in text.splitlines() if line.startswith("| MNIST | h-detach"))
    assert "| 94.00 |" in row and "seed 2: 98.00 at epoch 1 (done, 3/3)" in row
    assert "96.00 ± 2.65 (n = 3)" in row


def test_best_seed_ties_go_to_the_lower_seed_and_unfinished_picks_are_not_final(tmp_path):
    root = tmp_path / "runs"
    mnist = ["--p-detach", "0.25", "--permute"]  # the paper's protocol: 200 epochs planned
    make_run(root / "s7", "pixelmnist", mnist + ["--seed", "7"], [90, 92], [88, 91],
             finished=False)
    make_run(root / "s5", "pixelmnist", mnist + ["--seed", "5"], [92, 91], [90, None],
             finished=False, state="stopped")
    data, text = run_report(root, tmp_path / "out")
    [setting] = data["settings"]
    assert setting["protocol"] and setting["label"] == "h-detach p=0.25"
    assert setting["summary"]["best_valid_run"] == "s5"
    assert by_path(data)["s5"]["test_accuracy"] == 90
    row = next(line for line in text.splitlines() if line.startswith("| pMNIST | h-detach"))
    # The paper's number beside ours, which is labelled as not final.
    assert "| 92.9 |" in row and "90.00 (not final)" in row and "stopped, 2/200" in row
    assert "authors' README: 92.3 (seed 150)" in row


def test_copying_first_epoch_at_99_and_the_copying_best_rule(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "a", "copying", ["--T", "100", "--seed", "3"], [50, 99.0, 98, 100, 100])
    make_run(root / "b", "copying", ["--T", "100", "--seed", "4"], [50, 80, 80])
    data, text = run_report(root, tmp_path / "out")
    runs = by_path(data)
    assert runs["a"]["first_epoch_solved"] == 2
    # Copying keeps the model at an equal accuracy too: the last epoch with the best.
    assert runs["a"]["best_epoch"] == 5 and runs["b"]["best_epoch"] == 3
    assert runs["b"]["first_epoch_solved"] is None
    [setting] = data["settings"]
    assert setting["summary"]["solved"] == 1
    assert setting["summary"]["first_epoch_solved"] == {"3": 2, "4": None}
    row = next(line for line in text.splitlines() if line.startswith("| copying T=100 | vanilla"))
    assert "1 of 2" in row and "| 2 |" in row and "paper: ~100 % for most seeds" in row


def test_folders_of_one_seed_count_as_one_sample_and_are_named(tmp_path):
    # Issue 19: three folders of seed 3 read "mean 0.00 ± 0.00 (n = 3)" and "0 of 3 seeds".
    root = tmp_path / "runs"
    for name in ("a", "b", "c"):
        make_run(root / name, "copying", ["--T", "100", "--seed", "3"], [10, 12][:2],
                 finished=False)
    make_run(root / "d", "copying", ["--T", "100", "--seed", "3"], [10, 20, 30])  # finished
    make_run(root / "e", "copying", ["--T", "100", "--seed", "4"], [50, 99.5])
    data, text = run_report(root, tmp_path / "out")
    [setting] = data["settings"]
    # The finished folder is seed 3's sample; the three others are named repeats.
    assert setting["runs"] == ["d", "e"] and setting["repeats"] == ["a", "b", "c"]
    summary = setting["summary"]
    assert summary["seeds"] == [3, 4] and summary["best_valid_accuracy"]["n"] == 2
    assert summary["best_valid_accuracy"]["mean"] == pytest.approx((30 + 99.5) / 2)
    row = next(line for line in text.splitlines() if line.startswith("| copying T=100 | vanilla"))
    assert "1 of 2" in row and "(n = 2)" in row
    assert "repeats of a seed: a = seed 3, b = seed 3, c = seed 3" in row
    assert "| 3 (repeat of d: not counted) |" in text
    runs_table = [line for line in text.splitlines() if line.startswith("| a | ")]
    assert runs_table and "repeats seed 3 of d: not counted" in runs_table[0]


def test_mnist_runs_on_data_that_is_not_the_official_mnist_stand_apart(tmp_path):
    # Issue 19: runs on home-made MNIST-format files sat in the "MNIST" rows beside the paper.
    root = tmp_path / "runs"
    mnist = []  # the paper's protocol
    for name, seed, status in (("real", 1, "official"), ("home", 2, "unverified"),
                               ("fake", 3, "not official"), ("old", 4, None)):
        make_run(root / name, "pixelmnist", mnist + ["--seed", str(seed)], [90, 91], [89, 90],
                 data=status)
    data, text = run_report(root, tmp_path / "out")
    runs = by_path(data)
    assert runs["real"]["experiment"] == "MNIST"
    assert runs["home"]["experiment"] == runs["old"]["experiment"] == \
        "MNIST [data not verified as the official MNIST]"
    assert runs["fake"]["experiment"] == "MNIST [not the official MNIST files]"
    settings = {s["experiment"]: s for s in data["settings"]}
    assert settings["MNIST"]["runs"] == ["real"] and settings["MNIST"]["protocol"]
    assert not settings["MNIST [not the official MNIST files]"]["protocol"]
    lines = text.splitlines()
    [beside_paper] = [line for line in lines if line.startswith("| MNIST | vanilla |")]
    assert "| 98.6 |" in beside_paper and "seed 1" in beside_paper
    for marked in ("| MNIST [data not verified as the official MNIST] | vanilla | — |",
                   "| MNIST [not the official MNIST files] | vanilla | — |"):
        assert any(line.startswith(marked) for line in lines), marked


def test_the_generated_files_are_the_same_from_any_checkout(real_root, tmp_path, monkeypatch):
    # Issue 19: report.json held the absolute path of the clone it was made in.
    made = []
    for clone in ("one", "elsewhere/two"):
        shutil.copytree(real_root, tmp_path / clone / "results")
        monkeypatch.chdir(tmp_path / clone)
        assert report.main(["results"]) == 0
        made.append({name: (tmp_path / clone / "results" / name).read_bytes()
                     for name in ("report.md", "report.json")})
    assert made[0] == made[1]
    assert json.loads(made[0]["report.json"])["root"] == "results"


def test_one_epoch_is_one_epoch(tmp_path):
    # Issue 19: "not reached (1 epochs so far)".
    root = tmp_path / "runs"
    make_run(root / "a", "copying", ["--T", "100", "--seed", "3"], [50], finished=False)
    _, text = run_report(root, tmp_path / "out")
    assert "not reached (1 epoch so far)" in text and "1 epochs" not in text


def test_tensorboard_events_are_rebuilt_from_metrics_csv(real_root, tmp_path, capsys):
    # Issue 19: results/ commits no event files, so "tensorboard --logdir results" showed nothing.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    board = tmp_path / "board"
    run_report(real_root, tmp_path / "out", "--tensorboard", board)
    for path in ("copying/T6_p0.5_s1", "copying/T6_p0.5_s3"):
        rows = runfolder.read_metrics(real_root / path / "metrics.csv")
        events = EventAccumulator(str(board / path))
        events.Reload()
        for tag, column in (("valid/accuracy", "valid_accuracy"),
                            ("train/epoch_loss", "train_loss")):
            assert [(e.step, e.value) for e in events.Scalars(tag)] == [
                (row["epoch"], pytest.approx(row[column])) for row in rows]
    # A folder that already holds something is refused (its events would mix with ours).
    one_line_error(capsys, [real_root, "--out", tmp_path / "out", "--tensorboard", board])


def test_settings_are_kept_apart_and_labelled(tmp_path):
    root = tmp_path / "runs"
    base = ["--T", "100", "--p-detach", "0.25"]
    make_run(root / "deep" / "er" / "h", "copying", base, [20, 30])
    make_run(root / "lr", "copying", base + ["--lr", "5e-4"], [20, 40])
    make_run(root / "c", "copying", base, [10, 20], edit=lambda a: a.update(detach="c"))
    make_run(root / "noclip", "pixelmnist", ["--clip", "0", "--lr", "1e-4"], [10, 11],
             [9, 10])
    # A run made before --detach existed is h-detach: the same setting as an explicit "h".
    make_run(root / "old", "copying", base + ["--seed", "4"], [25, 35],
             edit=lambda a: a.pop("detach", None))
    make_run(root / "new", "copying", base + ["--seed", "5"], [25, 36],
             edit=lambda a: a.update(detach="h"))
    # p <= 0 is plain BPTT, whatever its value.
    make_run(root / "v0", "copying", ["--T", "100", "--p-detach", "0"], [20, 20])
    make_run(root / "v1", "copying", ["--T", "100", "--seed", "9"], [20, 21])
    # Every clip value <= 0 is no clipping: one setting.
    make_run(root / "noclip2", "pixelmnist", ["--clip", "-1", "--lr", "1e-4", "--seed", "2"],
             [10, 12], [9, 11])
    # An argument this kit does not know (a newer kit's run) sets its run apart, by name.
    make_run(root / "future", "copying", base, [25, 30], edit=lambda a: a.update(foo=1))
    # Hidden folders (a scheduler's logs) are not runs.
    make_run(root / ".slurm" / "x", "copying", base, [1, 2])
    data, text = run_report(root, tmp_path / "out")
    settings = {(s["experiment"], s["label"]): s["runs"] for s in data["settings"]}
    assert settings == {
        ("copying T=100", "vanilla"): ["v0", "v1"],
        ("copying T=100", "h-detach p=0.25"): ["deep/er/h", "old", "new"],
        ("copying T=100", "h-detach p=0.25 (lr=5e-4)"): ["lr"],
        ("copying T=100, c-detach", "c-detach p=0.25"): ["c"],
        ("copying T=100", "h-detach p=0.25 (foo=1)"): ["future"],
        ("MNIST, no clipping, lr=1e-4", "vanilla"): ["noclip2", "noclip"],  # by seed
    }
    assert "MNIST, no clipping, lr=1e-4" in text and "~71 % at epoch 200" in text
    assert ".slurm" not in json.dumps(data)


def test_a_damaged_metrics_file_is_named_and_the_rest_is_written(real_root, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(real_root, root)
    damaged = root / "copying" / "T6_p0.5_s2" / "metrics.csv"
    damaged.write_text("epoch,valid_accuracy\n1,abc\n")
    data, text = run_report(root, tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(damaged) in err[0] and err[0].startswith("warning: ")
    assert "copying/T6_p0.5_s2" not in by_path(data) and len(data["runs"]) == 3
    assert data["skipped"][0]["path"] == "copying/T6_p0.5_s2"
    assert "copying/T6_p0.5_s2" in text and "Left out" in text
    assert (tmp_path / "out" / "valid_accuracy.png").stat().st_size > 0


def test_a_damaged_config_is_named_and_the_rest_is_written(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root / "good", "copying", ["--T", "100"], [20, 30])
    bad = make_run(root / "bad", "copying", ["--T", "100"], [20, 30]) / "config.json"
    bad.write_text("{")
    data, text = run_report(root, tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    assert list(by_path(data)) == ["good"]


# ----------------------------------------------------------------------------- bad input

def test_an_empty_root_is_one_line_and_nothing_is_written(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, [tmp_path / "empty", "--out", tmp_path / "out"])
    assert "holds no files" in err
    assert not (tmp_path / "out").exists() and not list((tmp_path / "empty").iterdir())


def test_a_folder_of_foreign_files_is_one_line(tmp_path, capsys):
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "notes.txt").write_text("hello")
    (tmp_path / "root" / "sub" / "data.bin").write_bytes(b"\0")
    err = one_line_error(capsys, [tmp_path / "root"])
    assert "no run folder" in err
    assert sorted(p.name for p in (tmp_path / "root").rglob("*")) == ["data.bin", "notes.txt",
                                                                     "sub"]


def test_a_root_that_is_not_a_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in one_line_error(capsys, [tmp_path / "file"])
    assert "does not exist" in one_line_error(capsys, [tmp_path / "missing"])


def test_only_damaged_runs_is_one_line_after_the_warnings(tmp_path, capsys):
    bad = make_run(tmp_path / "runs" / "bad", "copying", ["--T", "100"], [20]) / "metrics.csv"
    bad.write_text("nonsense")
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and str(bad) in err[0] and err[1].startswith("error: ")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- --readme

README = ("# Title\n\nSome prose, kept as it is.\n\n" + report.BEGIN + "\nold numbers\n"
          + report.END + "\n\nMore prose \u2713 after the block.\n")


def test_readme_flag_replaces_only_the_marked_block(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "a", "copying", ["--T", "100", "--p-detach", "0.5"], [20, 99.5])
    readme = tmp_path / "README.md"
    readme.write_text(README)
    run_report(root, tmp_path / "results", "--readme", readme)
    text = readme.read_text()
    head, tail = README.split("old numbers\n")
    assert text.startswith(head) and text.endswith(tail)
    block = text[len(head):-len(tail)]
    assert "old numbers" not in block and "### Copying" in block
    assert "](results/valid_accuracy.png)" in block  # figure links relative to the README
    assert "| copying T=100 | h-detach p=0.5 |" in block
    # Regenerating from the same runs gives the same file.
    run_report(root, tmp_path / "results", "--readme", readme)
    assert readme.read_text() == text


@pytest.mark.parametrize("content", ["no markers\n", report.END + "\n" + report.BEGIN + "\n",
                                     report.BEGIN + "\n" + report.BEGIN + "\n" + report.END])
def test_readme_without_its_markers_is_one_line_and_nothing_is_written(tmp_path, capsys,
                                                                       content):
    root = tmp_path / "runs"
    make_run(root / "a", "copying", ["--T", "100"], [20])
    readme = tmp_path / "README.md"
    readme.write_text(content)
    err = one_line_error(capsys, [root, "--out", tmp_path / "out", "--readme", readme])
    assert "report:begin" in err
    assert readme.read_text() == content and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the references

def test_reference_table_is_consistent():
    experiments = {"copying T=100", "copying T=300", "MNIST", "pMNIST", "transfer T=100",
                   "copying T=100, c-detach", "MNIST, c-detach", "MNIST, no clipping, lr=5e-4",
                   "MNIST, no clipping, lr=1e-4"}
    labels = {"vanilla", "h-detach p=0.25", "h-detach p=0.5", "c-detach p=0.25", None}
    for ref in report.REFERENCE:
        assert ref.source in report.SOURCES and ref.experiment in experiments, ref
        assert ref.setting in labels, ref
        if ref.value is not None and ref.kind != "solved_at":
            assert f"{ref.value:g}" in ref.text, ref
    # The names the reference table uses are the ones the report gives runs.
    args = report.normalise_args("pixelmnist", {"clip": 0.0, "lr": 5e-4, "p_detach": 0.25})
    assert report.experiment_name("pixelmnist", args) == "MNIST, no clipping, lr=5e-4"
    assert report.base_label(args) == "h-detach p=0.25"
    args = report.normalise_args("copying", {"T": 100, "p_detach": 0.25, "detach": "c"})
    assert report.experiment_name("copying", args) == "copying T=100, c-detach"
    assert report.base_label(args) == "c-detach p=0.25"
    paper = [ref for ref in report.REFERENCE if ref.kind == "transfer"]
    assert len(paper) == 18 and {ref.at for ref in paper} == set(report.TRANSFER_T)


def test_runs_show_their_numerics_and_a_setting_of_mixed_arithmetic_is_flagged(tmp_path):
    # Issue 20: the report shows each run's numerics mode and flags a setting whose seeds ran
    # with different (or unrecorded) arithmetic.
    root = tmp_path / "runs"
    portable = {"mode": "portable", "aten_capability": "AVX2", "device_type": "cpu"}
    native = {"mode": "native", "aten_capability": "AVX512", "device_type": "cpu"}
    for name, seed, record in (("a", 1, portable), ("b", 2, native), ("c", 3, None)):
        folder = make_run(root / name, "copying", ["--T", "100", "--seed", str(seed)], [10, 20])
        if record:
            config = json.loads((folder / "config.json").read_text())
            runfolder.write_json(folder / "config.json", dict(config, numerics=record))
    make_run(root / "d", "copying", ["--T", "100", "--seed", "1", "--p-detach", "0.5"], [10])
    data, text = run_report(root, tmp_path / "out")
    runs = by_path(data)
    assert runs["a"]["numerics"] == "portable (AVX2)" and runs["c"]["numerics"] == "unrecorded"
    assert next(line for line in text.splitlines() if line.startswith("| b | ")).count(
        "native (AVX512)") == 1
    flagged = [line for line in text.splitlines() if line.startswith("- copying T=100, ")
               and "seed" in line and ": portable" in line]
    assert flagged == ["- copying T=100, vanilla: portable (AVX2): seed 1; native (AVX512): "
                       "seed 2; unrecorded: seed 3"]
    # p = 0.5 has one run: nothing to flag
    assert not any(line.startswith("- copying T=100, h-detach p=0.5:")
                   for line in text.split("\n"))


def test_no_mean_over_unfinished_runs_at_different_epochs(tmp_path):
    """Seed 1 at epoch 2 and seed 3 at epoch 4, both training: the setting's best accuracy is
    each seed's with its epochs, not a mean of two stages; at one stage the mean comes back."""
    root = tmp_path / "runs"
    make_run(root / "a", "copying", ["--T", "100", "--seed", "1"], [40, 60], finished=False)
    make_run(root / "b", "copying", ["--T", "100", "--seed", "3"], [50, 70, 90, 95],
             finished=False)
    _, text = run_report(root, tmp_path / "out")
    row = next(line for line in text.splitlines() if line.startswith("| copying T=100 | vanilla"))
    assert "seed 1: 60.00 (2 epochs); seed 3: 95.00 (4 epochs) (so far)" in row
    assert "mean" not in row
    shutil.rmtree(root / "a")
    make_run(root / "a", "copying", ["--T", "100", "--seed", "1"], [40, 60, 80, 85],
             finished=False)
    _, text = run_report(root, tmp_path / "out2")
    row = next(line for line in text.splitlines() if line.startswith("| copying T=100 | vanilla"))
    assert "mean 90.00 ± 7.07 (n = 2) (so far)" in row


# ----------------------------------------------------------------------------- seeds and streams

def test_a_setting_that_mixes_streams_names_each_seeds_streams(tmp_path):
    """Seed 3 of the authors' streams and seed 3 of the kit's are two samples: where one setting
    holds both, every place that names a seed says whose streams (issue 34, item 4); a setting
    of one kind of streams shows plain seeds."""
    root = tmp_path / "runs"
    for name, rng in (("authors", "authors"), ("kit", "kit")):
        make_run(root / name, "copying", ["--T", "100", "--p-detach", "0.5", "--rng", rng],
                 [20, 40], finished=False)
    make_run(root / "vanilla", "copying", ["--T", "100", "--rng", "kit"], [10, 30],
             finished=False)
    data, text = run_report(root, tmp_path / "out")
    assert "seed 3; seed 3" not in text and "seed 3: paused" not in text.split("h-detach p=0.5")[1]
    assert "seed 3 (authors): paused, 2/600" in text and "seed 3 (kit): paused, 2/600" in text
    assert "| copying T=100 | h-detach p=0.5 | 3 (authors) |" in text
    assert "| kit | copying T=100 | h-detach p=0.5 | 3 (kit) |" in text
    # The vanilla setting has one kind of streams: its seed is shown plainly.
    assert "| vanilla | copying T=100 | vanilla | 3 |" in text
    labels = {run["path"]: run["seed_label"] for run in data["runs"]}
    assert labels == {"authors": "3 (authors)", "kit": "3 (kit)", "vanilla": "3"}


def test_a_detach_setting_annealed_off_says_so(tmp_path):
    """copying.py --p-detach 0.5 --n-epochs 3 never detaches (--anneal-p 40): its label says so
    instead of claiming h-detach (issue 34, item 5); the protocol says nothing."""
    root = tmp_path / "runs"
    make_run(root / "short", "copying", ["--T", "100", "--p-detach", "0.5", "--n-epochs", "3"],
             [10, 20, 30])
    make_run(root / "half", "copying", ["--T", "100", "--p-detach", "0.25", "--n-epochs", "50"],
             [10, 20], finished=False)
    make_run(root / "protocol", "copying", ["--T", "100", "--p-detach", "0.25"], [10, 20],
             finished=False)
    data, text = run_report(root, tmp_path / "out")
    labels = {run["path"]: run["setting"] for run in data["runs"]}
    assert labels["short"] == "h-detach p=0.5 (3 epochs planned, annealed off for all 3 epochs)"
    assert labels["half"] == "h-detach p=0.25 (50 epochs planned, annealed off for 39 of 50 " \
                             "epochs)"
    assert labels["protocol"] == "h-detach p=0.25"
    assert "| short | copying T=100 | h-detach p=0.5 (3 epochs planned, annealed off for all " \
           "3 epochs) |" in text


# ------------------------------------------------------------------------- what the figures show

@pytest.fixture
def figures_drawn(monkeypatch):
    """Every figure the report draws, kept (drawn) before it is closed."""
    from reporting import figures
    kept = {}
    save = figures.save_png

    def keep(fig, path):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        canvas = FigureCanvasAgg(fig)  # the canvas the PNG is written through, at its dpi
        fig.set_dpi(100)
        canvas.draw()
        fig.kept_renderer = canvas.get_renderer()
        kept[Path(path).name] = fig
        save(fig, path)
    monkeypatch.setattr(figures, "save_png", keep)
    return kept


def write_transfer(folder, accuracy):
    """A transfer.json of the protocol's test set for a T = 100 run's best model of epoch 2:
    ``accuracy`` (%) per delay T'."""
    runfolder.write_json(folder / "transfer.json", {
        "format": "h-detach-transfer/2", "measurements": [{
            "checkpoint": "best_model.pt", "checkpoint_sha256": None, "trained_T": 100,
            "checkpoint_epoch": 2, "seed": 555, "test_size": 5000, "rng": "kit",
            "results": [{"T": t, "accuracy": a, "loss": 0.1} for t, a in accuracy.items()]}]})


def texts_of(fig):
    """Every visible piece of text: the figure's own, each panel's title, labels and legend."""
    texts = list(fig.texts)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        if ax.get_legend():
            texts += ax.get_legend().get_texts()
    return [t for t in texts if t.get_visible() and t.get_text()]


def test_no_figure_cuts_or_overlaps_its_text(tmp_path, figures_drawn):
    """Long labels (a smoke grid's, a transfer test set's) wrapped: every text lies inside its
    figure, no two panel titles overlap (issue 34, item 6) and no legend covers its panel's
    axis label."""
    root = tmp_path / "runs"
    long = ["--T", "1", "--lstm-size", "64", "--lr", "5e-3", "--batch_size", "20",
            "--train-size", "2000", "--test-size", "200", "--n-epochs", "12", "--anneal-p", "2"]
    for p in ("-1", "0.25", "0.5"):
        make_run(root / f"demo_{p}", "copying", [*long, "--p-detach", p], [12, 20, 33])
    folder = make_run(root / "t100", "copying", ["--T", "100", "--p-detach", "0.5"], [20, 60],
                      finished=False)
    write_transfer(folder, {200: 50.0, 400: 50.0, 5000: 50.0})
    run_report(root, tmp_path / "out")
    assert set(figures_drawn) == {"valid_accuracy.png", "transfer.png", "convergence.png"}
    for name, fig in figures_drawn.items():
        renderer = fig.kept_renderer
        width, height = fig.bbox.width, fig.bbox.height
        for text in texts_of(fig):
            box = text.get_window_extent(renderer)
            assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and \
                box.y1 <= height + 1, f"{name}: cut off: {text.get_text()[:60]!r}"
        titles = [ax.title.get_window_extent(renderer) for ax in fig.axes
                  if ax.get_visible() and ax.title.get_text()]
        for i, a in enumerate(titles):
            for b in titles[i + 1:]:
                assert not a.overlaps(b), f"{name}: two panel titles overlap"
        # A legend under its panel stays clear of that panel's axis label: in a one-row group
        # of convergence.png it was drawn over the word "epoch".
        for ax in fig.axes:
            legend = ax.get_legend()
            if ax.get_visible() and legend and ax.xaxis.label.get_text():
                assert not legend.get_window_extent(renderer).overlaps(
                    ax.xaxis.label.get_window_extent(renderer)), \
                    f"{name}: a legend covers its panel's {ax.xaxis.label.get_text()!r} label"


def test_short_runs_are_not_squeezed_and_seeds_are_told_apart(tmp_path, figures_drawn):
    """A 3-epoch run beside references at epoch 90-180: the axis ends near our runs and says
    where the references went; the seeds of one setting get a colour each (issue 34, item 6)."""
    root = tmp_path / "runs"
    make_run(root / "short", "copying", ["--T", "100", "--p-detach", "0.5", "--n-epochs", "3"],
             [10, 20, 30])
    run_report(root, tmp_path / "out")
    ax = figures_drawn["valid_accuracy.png"].axes[0]
    assert ax.get_xlim()[1] < 10
    assert any("off this axis" in text.get_text() for text in ax.texts)

    root = tmp_path / "seeds"
    for seed in (1, 2, 3):
        folder = make_run(root / f"s{seed}", "copying", ["--T", "100", "--seed", str(seed)],
                          [10 * seed, 20 * seed], finished=False)
        write_transfer(folder, {200: 20.0 + seed, 400: 20.0 + seed})
    figures_drawn.clear()
    run_report(root, tmp_path / "out2")

    def our_colours(ax):  # our runs' solid lines; the paper's rows are dashed
        return {tuple(line.get_color()) if not isinstance(line.get_color(), str)
                else line.get_color() for line in ax.get_lines() if len(line.get_xdata()) > 1
                and line.get_linestyle() == "-"}
    assert len(our_colours(figures_drawn["valid_accuracy.png"].axes[0])) == 3
    # The transfer figure too: three seeds of vanilla were three lines of one black.
    assert len(our_colours(figures_drawn["transfer.png"].axes[0])) == 3


def test_seed_shades_stay_in_their_settings_colour():
    """A setting drawn in a colour without a colormap of its own (the fifth of a panel and on:
    pink, olive, ...) got green shades, the colour of another setting (captioning.png had two
    green settings); its seeds now get shades of its own colour, distinct from each other."""
    import matplotlib
    from matplotlib.colors import rgb_to_hsv, to_rgb

    from reporting import figures
    bases = set(figures.PALETTE) | set(figures.CANONICAL_COLOURS.values())
    for colour in bases - set(figures.FAMILIES):
        shades = figures.seed_shades(matplotlib, colour, 3)
        assert len(set(shades)) == 3, colour
        hue = rgb_to_hsv(to_rgb(colour))[0]
        for shade in shades:  # darker or lighter, never another hue
            assert rgb_to_hsv(to_rgb(shade))[0] == pytest.approx(hue, abs=1e-6), (colour, shade)
