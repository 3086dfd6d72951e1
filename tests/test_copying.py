"""The copying task, transfer copying and the run machinery they share (utils)."""
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import copying
import transfer_copy
from running import annealing, runfolder

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--T", "6", "--train-size", "60", "--test-size", "40", "--batch_size", "20",
        "--lstm-size", "8", "--n_epochs", "3", "--anneal-p", "2", "--p-detach", "0.5",
        "--device", "cpu"]


def run_copying(save_dir, *extra):
    return copying.main(TINY + ["--save-dir", str(save_dir), *extra])


def scalars(folder, tag):
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(event.step, event.value) for event in acc.Scalars(tag)]


def raw_steps(folder, tag):
    """Every (step, value) of a tag in the raw event files, duplicates included."""
    points = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(runfolder.EVENTS_PREFIX):
            for event in EventFileLoader(os.path.join(folder, name)).Load():
                for value in event.summary.value:
                    if value.tag == tag:
                        points.append((event.step, value.tensor.float_val[0]
                                       if value.HasField("tensor") else value.simple_value))
    return points


def untimed(history):
    """A run's history without its wall-clock column (the one thing two equal runs differ in)."""
    return [{k: v for k, v in record.items() if k != "elapsed_s"} for record in history]


def metrics_untimed(folder):
    return [{k: v for k, v in row.items() if k != "elapsed_s"}
            for row in runfolder.read_metrics(str(Path(folder) / "metrics.csv"))]


def snapshot(folder):
    folder = Path(folder)
    if not folder.exists():
        return None
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


# ----------------------------------------------------------------------------- data

def test_copying_data_layout():
    delay, n = 7, 50
    x, y = copying.make_copying_data(n, delay, torch.Generator().manual_seed(0))
    assert x.shape == (delay + 20, n, 1) and x.dtype == torch.float32
    assert y.shape == (delay + 20, n) and y.dtype == torch.long
    x = x[..., 0]
    data = x[:10]
    assert ((data >= 1) & (data <= 8)).all()
    assert len(torch.unique(data)) == 8  # all eight symbols occur in 500 draws
    assert (x[10:delay + 9] == 0).all()          # T - 1 blanks
    assert (x[delay + 9] == 9).all()             # the delimiter
    assert (x[delay + 10:] == 0).all()           # 10 blanks
    assert (y[:delay + 10] == 0).all()           # T + 10 blank targets
    assert torch.equal(y[-10:], data.long())     # then the first ten inputs, in order


def test_copying_data_is_seeded_and_vectorised():
    a = copying.copying_symbols(100_000, torch.Generator().manual_seed(1))
    b = copying.copying_symbols(100_000, torch.Generator().manual_seed(1))
    assert a.shape == (100_000, 10) and torch.equal(a, b)
    x, y = copying.copying_batch(a[:100], 300)
    assert x.shape == (320, 100, 1) and torch.equal(y[-10:].t(), a[:100].long())


@pytest.mark.parametrize("epoch, expected", [(0, 0.5), (560, 0.5), (561, 0.0), (599, 0.0)])
def test_annealing_switches_off_for_the_last_anneal_p_minus_one_epochs(epoch, expected):
    assert annealing.p_in_force(0.5, epoch, 600, 40) == expected


def test_annealing_counts_and_vanilla():
    off = [e for e in range(600) if annealing.p_in_force(0.25, e, 600, 40) == 0]
    assert off == list(range(561, 600)) and len(off) == 39
    assert all(annealing.p_in_force(-1, e, 600, 40) == 0 for e in range(600))
    assert annealing.p_in_force(0.25, 199, 200, 0) == 0.25  # anneal_p 0: never switched off


# ----------------------------------------------------------------------------- a tiny run

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("copy") / "run"
    assert run_copying(folder) == 0
    return folder


def test_run_folder_contents(tiny_run):
    names = set(os.listdir(tiny_run))
    assert {"config.json", "last.pt", "best_model.pt", "results.json"} <= names
    assert any(n.startswith(runfolder.EVENTS_PREFIX) for n in names)
    assert not [n for n in names if n.endswith(".tmp")]
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["task"] == "copying" and config["args"]["T"] == 6
    assert config["args"]["p_detach"] == 0.5 and config["argv"][:2] == ["--T", "6"]
    assert {"torch", "python", "numpy"} <= set(config["versions"]) and config["started"]
    results = json.loads((tiny_run / "results.json").read_text())
    assert {"best_valid_accuracy", "best_epoch", "final_epoch", "wall_time_s"} <= set(results)
    assert results["final_epoch"] == 3


def test_events_hold_the_expected_tags(tiny_run):
    acc = EventAccumulator(str(tiny_run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "valid/loss", "valid/accuracy", "p_detach"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 10))  # 3 x 60 // 20
    assert [e.step for e in acc.Scalars("valid/accuracy")] == [1, 2, 3]
    # anneal_p = 2, 3 epochs: h-detach on for epochs 0 and 1, off for epoch 2 (> 3 - 2).
    assert [e.value for e in acc.Scalars("p_detach")] == [0.5, 0.5, 0.0]


def test_checkpoints_load_with_weights_only_and_rebuild_the_model(tiny_run):
    best = torch.load(tiny_run / "best_model.pt", weights_only=True)
    last = torch.load(tiny_run / "last.pt", weights_only=True)
    history = last["history"]
    best_acc = max(h["valid/accuracy"] for h in history)
    assert best["accuracy"] == best_acc
    # ">= best so far": the latest epoch that reached the best accuracy is kept.
    assert best["epoch"] == max(h["epoch"] for h in history if h["valid/accuracy"] == best_acc)
    net = copying.HDetachNet(**best["model_config"])
    net.load_state_dict(best["model"])
    symbols = copying.copying_symbols(40, torch.Generator().manual_seed(0))
    loss, _ = copying.evaluate(net, symbols, best["config"]["T"], torch.device("cpu"))
    assert loss == pytest.approx(best["loss"], rel=0.5)
    assert {"model", "optimizer", "epoch", "iteration", "rng", "best", "events"} <= set(last)
    assert last["epoch"] == 3 and last["iteration"] == 9


def test_transfer_prints_table_and_writes_json(tiny_run, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # as on a terminal
    assert transfer_copy.main(["--model-dir", str(tiny_run), "--T", "6", "12",
                               "--test-size", "30", "--device", "cpu", "--rng", "kit"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "accuracy" in out and "\n    12" in out
    # Each delay shows its progress (sequences done of --test-size) on stderr, not in the table.
    assert "T'=6" in captured.err and "T'=12" in captured.err and "/30 " in captured.err
    assert "T'=" not in out
    data = json.loads((tiny_run / "transfer.json").read_text())
    assert [row["T"] for row in data["results"]] == [6, 12]
    assert data["seed"] == 555 and data["trained_T"] == 6
    # Evaluating at the trained delay reproduces evaluate() on the same seeded sequences.
    best = torch.load(tiny_run / "best_model.pt", weights_only=True)
    net = copying.HDetachNet(**best["model_config"])
    net.load_state_dict(best["model"])
    symbols = copying.copying_symbols(30, torch.Generator().manual_seed(555))
    _, acc = copying.evaluate(net, symbols, 6, torch.device("cpu"))
    assert data["results"][0]["accuracy"] == pytest.approx(acc)
    # A later call for another delay keeps the earlier rows.
    monkeypatch.undo()  # stderr to a file (a sweep's transfer.log): the table, no bars
    transfer_copy.main(["--model-dir", str(tiny_run / "best_model.pt"), "--T", "9",
                        "--test-size", "30", "--device", "cpu", "--rng", "kit"])
    data = json.loads((tiny_run / "transfer.json").read_text())
    assert [row["T"] for row in data["results"]] == [6, 9, 12]
    captured = capsys.readouterr()
    assert "\n     9" in captured.out and "T'=" not in captured.err and "\r" not in captured.err


def test_transfer_ties_its_rows_to_the_weights_it_measured(tiny_run, tmp_path, monkeypatch):
    # A run still training replaces best_model.pt at any moment, here in the middle of a
    # transfer call: transfer.json must name the checkpoint that was measured, and a later call
    # on the newer checkpoint must not keep rows measured on the older one.
    folder = tmp_path / "run"
    folder.mkdir()
    old = (tiny_run / "best_model.pt").read_bytes()
    (folder / "best_model.pt").write_bytes(old)
    newer = torch.load(tiny_run / "last.pt", weights_only=True)
    newer["epoch"] = 99
    newer_path = tmp_path / "newer.pt"
    torch.save(newer, newer_path)
    evaluate = transfer_copy.evaluate

    def evaluate_while_training(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        os.replace(newer_path, folder / "best_model.pt")  # what the training run does
        return result

    monkeypatch.setattr(transfer_copy, "evaluate", evaluate_while_training)
    assert transfer_copy.main(["--model-dir", str(folder), "--T", "6", "--test-size", "30",
                               "--device", "cpu"]) == 0
    data = json.loads((folder / "transfer.json").read_text())
    assert data["checkpoint_sha256"] == hashlib.sha256(old).hexdigest()
    assert data["checkpoint_epoch"] == torch.load(io.BytesIO(old), weights_only=True)["epoch"]
    monkeypatch.setattr(transfer_copy, "evaluate", evaluate)
    assert transfer_copy.main(["--model-dir", str(folder), "--T", "9", "--test-size", "30",
                               "--device", "cpu"]) == 0
    data = json.loads((folder / "transfer.json").read_text())
    assert data["checkpoint_epoch"] == 99 and [row["T"] for row in data["results"]] == [9]
    assert data["checkpoint_sha256"] == runfolder.file_sha256(str(folder / "best_model.pt"))


def test_transfer_of_another_checkpoint_or_test_set_keeps_earlier_measurements(
        tiny_run, tmp_path, capsys):
    # Issue 19: measuring last.pt on 50 sequences replaced the run's measurement of
    # best_model.pt, printed "valid accuracy nan%" and made the sweep call the transfer
    # "not started". Every measurement is now kept, keyed by checkpoint and test set.
    import sweep
    from running import grids
    root = tmp_path / "root"
    folder = root / "copying" / "run"
    shutil.copytree(tiny_run, folder)
    if (folder / "transfer.json").exists():
        os.remove(folder / "transfer.json")  # an earlier test's
    model = grids.Run("copying/run", "copying.py", ())
    run = grids.transfer_run(model, delays=(6, 9), test_size=30)
    plan = sweep.Plan(grids.Grid("g", "", (model, run)), str(root))
    plan.model_ready = lambda run: (True, "done")
    assert transfer_copy.main(["--model-dir", str(folder), "--T", "6", "9", "--test-size",
                               "30", "--device", "cpu"]) == 0
    first = json.loads((folder / "transfer.json").read_text())
    assert plan.transfer_state(run)[0] == "done"
    capsys.readouterr()
    assert transfer_copy.main(["--model-dir", str(folder / "last.pt"), "--T", "12",
                               "--test-size", "50", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    last = torch.load(folder / "last.pt", weights_only=True)
    assert "nan" not in out
    assert f"valid accuracy {last['history'][-1]['valid/accuracy']:.2f}%" in out
    data = json.loads((folder / "transfer.json").read_text())
    kept = data["measurements"]
    assert [(m["checkpoint"], m["test_size"]) for m in kept] == [
        ("best_model.pt", 30), ("last.pt", 50)]
    assert kept[0]["results"] == first["results"] and len(first["results"]) == 2
    assert kept[1]["checkpoint_kind"] == "last" and [r["T"] for r in kept[1]["results"]] == [12]
    assert plan.transfer_state(run)[0] == "done"  # last.pt's row is not the run's transfer
    # Another seed of best_model.pt, then the first test set again at another delay: the
    # latter merges into its own measurement, nothing else changes.
    assert transfer_copy.main(["--model-dir", str(folder), "--T", "6", "--test-size", "30",
                               "--seed", "1", "--device", "cpu"]) == 0
    assert transfer_copy.main(["--model-dir", str(folder), "--T", "20", "--test-size", "30",
                               "--device", "cpu"]) == 0
    kept = json.loads((folder / "transfer.json").read_text())["measurements"]
    assert [(m["checkpoint"], m["test_size"], m["seed"]) for m in kept] == [
        ("last.pt", 50, 555), ("best_model.pt", 30, 1), ("best_model.pt", 30, 555)]
    assert [r["T"] for r in kept[2]["results"]] == [6, 9, 20]
    assert kept[2]["results"][:2] == first["results"]


def test_transfer_reads_a_first_format_file_and_refuses_a_damaged_one(tiny_run, tmp_path,
                                                                     capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "best_model.pt").write_bytes((tiny_run / "best_model.pt").read_bytes())
    old = {"checkpoint": "last.pt", "checkpoint_sha256": "0" * 64, "checkpoint_epoch": 3,
           "trained_T": 6, "seed": 555, "test_size": 5000,
           "results": [{"T": 200, "accuracy": 50.0, "loss": 1.0}]}
    (folder / "transfer.json").write_text(json.dumps(old))
    assert transfer_copy.main(["--model-dir", str(folder), "--T", "6", "--test-size", "30",
                               "--device", "cpu"]) == 0
    kept = json.loads((folder / "transfer.json").read_text())["measurements"]
    assert kept[0] == old and kept[1]["checkpoint"] == "best_model.pt"
    (folder / "transfer.json").write_text("{not json")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        transfer_copy.main(["--model-dir", str(folder), "--T", "6", "--test-size", "30",
                            "--device", "cpu"])
    assert exc.value.code == 2 and "left as it is" in capsys.readouterr().err
    assert (folder / "transfer.json").read_text() == "{not json"


def test_valid_size_names_the_validation_set_and_results_hold_the_settings(tiny_run):
    # Issue 19: copying's validation size was only --test-size (MNIST's is --valid-size), and
    # its results.json lacked lr, clipping and sizes.
    parser = copying.build_parser()
    for flag in ("--valid-size", "--valid_size", "--test-size", "--test_size"):
        assert parser.parse_args([flag, "7", "--save-dir", "x"]).test_size == 7
    results = json.loads((tiny_run / "results.json").read_text())
    assert {key: results[key] for key in ("lstm_size", "lr", "clip", "batch_size", "n_epochs",
                                          "anneal_p", "train_size", "valid_size")} == {
        "lstm_size": 8, "lr": 1e-3, "clip": 1.0, "batch_size": 20, "n_epochs": 3,
        "anneal_p": 2, "train_size": 60, "valid_size": 40}


@pytest.mark.parametrize("argv, contains", [
    (["--anneal-p", "-3"], "--anneal-p"),
    (["--n_epochs", "1", "--until-epoch", "5"], "--until-epoch 5 is past the run's last epoch"),
])
def test_meaningless_anneal_p_and_until_epoch_are_refused(tmp_path, capsys, argv, contains):
    # Issue 19: both were accepted without a word.
    folder = tmp_path / "run"
    expect_error(capsys, lambda: copying.main(TINY + argv + ["--save-dir", str(folder)]),
                 contains=contains)
    assert not folder.exists() or not os.listdir(folder)


def test_same_seed_same_losses(tmp_path):
    run_copying(tmp_path / "a")
    run_copying(tmp_path / "b")
    run_copying(tmp_path / "c", "--seed", "4")
    a, b = scalars(tmp_path / "a", "train/loss"), scalars(tmp_path / "b", "train/loss")
    assert a == b
    assert a != scalars(tmp_path / "c", "train/loss")


def test_reference_impl_follows_the_same_trajectory(tmp_path):
    run_copying(tmp_path / "fast")
    run_copying(tmp_path / "ref", "--impl", "reference")
    fast = [v for _, v in scalars(tmp_path / "fast", "train/loss")]
    ref = [v for _, v in scalars(tmp_path / "ref", "train/loss")]
    assert fast == pytest.approx(ref, rel=1e-4)


# ----------------------------------------------------------------------------- bad input

def expect_error(capsys, call, code=2, contains=""):
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "Traceback" not in err and contains in err, err
    return err


@pytest.mark.parametrize("flags, contains", [
    (["--p-detach", "1.5"], "at most 1"),
    (["--batch-size", "0"], "at least 1"),
    (["--batch_size", "-3"], "at least 1"),
    (["--train-size", "0"], "at least 1"),
    (["--T", "0"], "at least 1"),
    (["--train-size", "10"], "at least --batch-size"),
    (["--lr", "nan"], "finite"),
    (["--seed", "-1"], "must be in 0.."),
    (["--detach", "x"], "invalid choice: 'x'"),
    (["--detach", "H"], "invalid choice: 'H'"),
])
def test_bad_training_flags(tmp_path, capsys, flags, contains):
    folder = tmp_path / "run"
    expect_error(capsys, lambda: run_copying(folder, *flags), contains=contains)
    assert not folder.exists()


def test_missing_cuda_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expect_error(capsys, lambda: copying.main(TINY[:-2] + ["--device", "cuda", "--save-dir",
                                                           str(tmp_path / "r")]),
                 contains="no CUDA device")
    assert not (tmp_path / "r").exists()


def test_existing_run_is_refused_and_untouched(tiny_run, capsys):
    before = snapshot(tiny_run)
    expect_error(capsys, lambda: run_copying(tiny_run), contains="already holds a run")
    assert snapshot(tiny_run) == before


def test_overwrite_replaces_only_run_files(tmp_path):
    folder = tmp_path / "run"
    run_copying(folder, "--n_epochs", "1")
    (folder / "notes.txt").write_text("mine")
    assert run_copying(folder, "--overwrite") == 0
    assert (folder / "notes.txt").read_text() == "mine"
    assert [s for s, _ in raw_steps(folder, "train/loss")] == list(range(1, 10))  # new run only
    assert json.loads((folder / "results.json").read_text())["final_epoch"] == 3


@pytest.mark.parametrize("target", ["missing", "folder-without-model", "not-a-checkpoint",
                                    "truncated", "other-task"])
def test_transfer_bad_model_dir(tiny_run, tmp_path, capsys, target):
    path = tmp_path / "x"
    if target == "folder-without-model":
        path.mkdir()
    elif target == "not-a-checkpoint":
        path.write_text("hello")
    elif target == "truncated":
        path.write_bytes((tiny_run / "best_model.pt").read_bytes()[:2000])
    elif target == "other-task":
        best = torch.load(tiny_run / "best_model.pt", weights_only=True)
        runfolder.save_checkpoint(str(path), dict(best, task="pixelmnist"))
    before = snapshot(tmp_path)
    expect_error(capsys, lambda: transfer_copy.main(["--model-dir", str(path), "--T", "8"]))
    assert snapshot(tmp_path) == before


def test_transfer_bad_delay(tiny_run, capsys):
    expect_error(capsys, lambda: transfer_copy.main(["--model-dir", str(tiny_run), "--T", "0"]),
                 contains="at least 1")


# ----------------------------------------------------------------------------- resume

def test_resume_refusals(tiny_run, tmp_path, capsys):
    expect_error(capsys, lambda: run_copying(tmp_path / "empty", "--resume"),
                 contains="nothing to resume")
    before = snapshot(tiny_run)
    err = expect_error(capsys, lambda: copying.main(["--save-dir", str(tiny_run), "--resume",
                                                     "--T", "9", "--seed", "5"]))
    assert "T (run: 6, given: 9)" in err and "seed" in err
    expect_error(capsys, lambda: run_copying(tiny_run, "--resume", "--overwrite"),
                 contains="contradict")
    assert snapshot(tiny_run) == before


@pytest.mark.parametrize("damage", ["truncated", "foreign", "other-task"])
def test_resume_from_damaged_or_foreign_last(tiny_run, tmp_path, capsys, damage):
    folder = tmp_path / "run"
    folder.mkdir()
    last = (tiny_run / "last.pt").read_bytes()
    if damage == "truncated":
        (folder / "last.pt").write_bytes(last[: len(last) // 2])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, folder / "last.pt")
    else:
        payload = torch.load(tiny_run / "last.pt", weights_only=True)
        runfolder.save_checkpoint(str(folder / "last.pt"), dict(payload, task="pixelmnist"))
    before = snapshot(folder)
    expect_error(capsys, lambda: copying.main(["--save-dir", str(folder), "--resume"]))
    assert snapshot(folder) == before


def test_resume_of_a_finished_run_does_nothing(tiny_run, capsys):
    before = snapshot(tiny_run)
    assert copying.main(["--save-dir", str(tiny_run), "--resume"]) == 0
    assert "complete" in capsys.readouterr().out
    assert snapshot(tiny_run) == before


def test_resume_after_the_last_epoch_but_before_results_finishes_the_run(tmp_path):
    folder = tmp_path / "run"
    run_copying(folder)
    expected = json.loads((folder / "results.json").read_text())
    (folder / "results.json").unlink()  # killed between the last last.pt and results.json
    assert copying.main(["--save-dir", str(folder), "--resume"]) == 0
    results = json.loads((folder / "results.json").read_text())
    expected.pop("wall_time_s"), results.pop("wall_time_s")
    assert results == expected


def test_interrupted_save_keeps_the_good_checkpoint(tiny_run, tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    path.write_bytes((tiny_run / "last.pt").read_bytes())
    good = path.read_bytes()

    def dies_half_way(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # what a kill during the write looks like from inside

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        runfolder.save_checkpoint(str(path), {"model": {}})
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["last.pt"]
    runfolder.load_checkpoint(str(path), task="copying")


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    calls = {"n": 0}
    original = copying.HDetachNet.forward

    def poisoned(self, x, *args, **kwargs):
        out = original(self, x, *args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:  # second epoch, second iteration
                out = out * float("nan")
        return out

    monkeypatch.setattr(copying.HDetachNet, "forward", poisoned)
    err = expect_error(capsys, lambda: run_copying(folder), code=1, contains="training loss")
    assert "nan" in err and "last.pt" in err
    last = runfolder.load_checkpoint(str(folder / "last.pt"), task="copying")
    assert last["epoch"] == 1 and last["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert not (folder / "results.json").exists()


def test_resume_after_checkpoint_every_is_exact(tmp_path):
    """In-process: stop after a mid-epoch checkpoint (by truncating the run there), resume."""
    straight = tmp_path / "straight"
    run_copying(straight)
    # A run that saves every 2 iterations; keep a copy of the folder as it was at iteration 4.
    stopped = tmp_path / "stopped"
    original = runfolder.TrainingRun.save_last
    kept = {}

    def save_and_copy(self):
        original(self)
        if self.iteration == 4 and not kept:
            kept.update({p.name: p.read_bytes() for p in stopped.iterdir()})

    runfolder.TrainingRun.save_last = save_and_copy
    try:
        run_copying(stopped, "--checkpoint-every", "2")
    finally:
        runfolder.TrainingRun.save_last = original
    for p in stopped.iterdir():
        p.unlink()
    for name, data in kept.items():
        (stopped / name).write_bytes(data)
    assert run_copying(stopped, "--resume") == 0
    assert_same_run(straight, stopped)


def assert_same_run(a, b):
    ra = json.loads((a / "results.json").read_text())
    rb = json.loads((b / "results.json").read_text())
    ra.pop("wall_time_s"), rb.pop("wall_time_s")
    assert ra == rb
    la = torch.load(a / "last.pt", weights_only=True)
    lb = torch.load(b / "last.pt", weights_only=True)
    assert untimed(la["history"]) == untimed(lb["history"])
    assert metrics_untimed(a) == metrics_untimed(b)  # metrics.csv in step with last.pt
    for key in la["model"]:
        assert torch.equal(la["model"][key], lb["model"][key]), key
    for tag in ("train/loss", "valid/accuracy", "valid/loss", "p_detach"):
        assert raw_steps(b, tag) == raw_steps(a, tag), tag  # no duplicated or missing point


def start_subprocess(folder, *extra):
    args = TINY + ["--save-dir", str(folder), *extra]
    return subprocess.Popen([sys.executable, str(ROOT / "copying.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.005)


BIG = ["--train-size", "2000", "--n_epochs", "2"]  # 100 iterations an epoch: time to signal


def test_sigkill_after_first_epoch_then_resume_is_exact(tmp_path):
    straight = tmp_path / "straight"
    run_copying(straight, *BIG)
    killed = tmp_path / "killed"
    proc = start_subprocess(killed, *BIG)
    wait_for(killed / "best_model.pt", proc)  # written just before the epoch's last.pt
    wait_for(killed / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    assert copying.main(TINY + BIG + ["--save-dir", str(killed), "--resume"]) == 0
    assert_same_run(straight, killed)


def test_sigterm_mid_epoch_saves_that_iteration_and_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    run_copying(straight, *BIG)
    stopped = tmp_path / "stopped"
    proc = start_subprocess(stopped, *BIG, "--checkpoint-every", "10")
    wait_for(stopped / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM" in out and "--resume" in out
    last = torch.load(stopped / "last.pt", weights_only=True)
    assert 0 < last["epoch_iteration"] < 100 and last["epoch"] == 0  # mid-epoch
    steps = [s for s, _ in raw_steps(stopped, "train/loss")]
    assert steps == list(range(1, last["iteration"] + 1))  # saved at the iteration it stopped
    assert copying.main(["--save-dir", str(stopped), "--resume"]) == 0
    assert_same_run(straight, stopped)


# ----------------------------------------------------------------------------- --detach

def strip_detach(path):
    """Make a checkpoint look like one written before --detach existed."""
    payload = torch.load(path, weights_only=True)
    assert payload["config"].pop("detach") and payload["model_config"].pop("detach")
    runfolder.save_checkpoint(str(path), payload)


def test_detach_is_stored_in_config_checkpoints_and_results(tiny_run, tmp_path):
    folder = tmp_path / "c"
    assert run_copying(folder, "--detach", "c") == 0
    for run_dir, detach in ((tiny_run, "h"), (folder, "c")):
        assert json.loads((run_dir / "config.json").read_text())["args"]["detach"] == detach
        assert json.loads((run_dir / "results.json").read_text())["detach"] == detach
        for name in ("last.pt", "best_model.pt"):
            ckpt = torch.load(run_dir / name, weights_only=True)
            assert ckpt["config"]["detach"] == ckpt["model_config"]["detach"] == detach
            assert copying.HDetachNet(**ckpt["model_config"]).lstm.detach == detach
    # The network trained with it: the same seed and draws, the same first loss (forward
    # values do not depend on what is detached), then other losses.
    h_loss = [v for _, v in scalars(tiny_run, "train/loss")]
    c_loss = [v for _, v in scalars(folder, "train/loss")]
    assert h_loss[0] == c_loss[0] and h_loss[1:] != c_loss[1:]


def test_resume_keeps_detach_and_refuses_another(tmp_path, capsys):
    folder = tmp_path / "run"
    assert run_copying(folder, "--detach", "c", "--until-epoch", "1") == 0
    before = snapshot(folder)
    err = expect_error(capsys, lambda: copying.main(["--save-dir", str(folder), "--resume",
                                                     "--detach", "h"]))
    assert "detach (run: 'c', given: 'h')" in err
    assert snapshot(folder) == before
    assert copying.main(["--save-dir", str(folder), "--resume", "--until-epoch", "2"]) == 0
    assert torch.load(folder / "last.pt", weights_only=True)["model_config"]["detach"] == "c"
    assert copying.main(["--save-dir", str(folder), "--resume", "--detach", "c"]) == 0
    assert json.loads((folder / "results.json").read_text())["detach"] == "c"


def test_a_run_from_before_detach_resumes_as_h(tiny_run, tmp_path, capsys):
    folder = tmp_path / "old"
    assert run_copying(folder, "--until-epoch", "1") == 0
    strip_detach(folder / "last.pt")
    before = snapshot(folder)
    err = expect_error(capsys, lambda: copying.main(["--save-dir", str(folder), "--resume",
                                                     "--detach", "c"]))
    assert "detach (run: 'h', given: 'c')" in err
    assert snapshot(folder) == before
    assert copying.main(["--save-dir", str(folder), "--resume"]) == 0
    assert json.loads((folder / "results.json").read_text())["detach"] == "h"
    assert_same_run(tiny_run, folder)  # exactly the h-detach run it was


def test_transfer_loads_a_checkpoint_from_before_detach(tiny_run, tmp_path):
    rows = []
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "best_model.pt"
        path.write_bytes((tiny_run / "best_model.pt").read_bytes())
        if name == "old":
            strip_detach(path)
        assert transfer_copy.main(["--model-dir", str(path), "--T", "6", "--test-size", "30",
                                   "--device", "cpu"]) == 0
        rows.append(json.loads((tmp_path / name / "transfer.json").read_text())["results"])
    assert rows[0] == rows[1] and len(rows[0]) == 1


@pytest.mark.parametrize("until", [None, 1])
def test_sigterm_while_the_run_writes_its_end_loses_nothing(tmp_path, until):
    """A SIGTERM that arrives while a run writes results.json and state.json at its end (done)
    or at --until-epoch (paused) is caught like any other: the run ends as it would have, with
    no half-written file left and state.json saying how it ended."""
    folder = tmp_path / "run"
    extra = ["--n_epochs", "2"] + (["--until-epoch", str(until)] if until else [])
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "signal_at_end.py"), "copying",
                           *TINY, "--save-dir", str(folder), *extra],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not list(folder.glob(".*.tmp")) and not list(folder.glob("*.tmp"))
    state = json.loads((folder / "state.json").read_text())
    assert state["state"] == ("paused" if until else "done")
    assert (folder / "results.json").exists() == (until is None)
    if until is None:
        assert json.loads((folder / "results.json").read_text())["final_epoch"] == 2


def test_sigterm_while_transfer_json_is_written_keeps_the_measurement(tiny_run, tmp_path):
    """transfer_copy.py: a SIGTERM during the write of transfer.json waits for the write; the
    measurement lands whole and nothing half-written stays beside it."""
    folder = tmp_path / "run"
    shutil.copytree(tiny_run, folder)
    (folder / "transfer.json").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "signal_at_end.py"),
                           "transfer_copy", "--model-dir", str(folder), "--T", "6", "8",
                           "--test-size", "20", "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not list(folder.glob(".*.tmp"))
    record = json.loads((folder / "transfer.json").read_text())
    assert [row["T"] for row in record["results"]] == [6, 8]


def test_threads_flag_sets_torch_threads_and_a_resume_keeps_them(tmp_path, capsys):
    """Issue 34, item 10: the scripts take --threads (the sweep had it, they did not); the count
    is recorded, and a resume without the flag keeps the run's."""
    before = torch.get_num_threads()
    folder = tmp_path / "run"
    try:
        assert run_copying(folder, "--threads", "2", "--until-epoch", "1") == 0
        config = json.loads((folder / "config.json").read_text())
        assert config["args"]["threads"] == 2 and config["numerics"]["threads"] == 2
        torch.set_num_threads(1)
        assert run_copying(folder, "--resume") == 0
        assert torch.get_num_threads() == 2
        assert json.loads((folder / "config.json").read_text())["resumed"][0]["numerics"][
            "threads"] == 2
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert "on other arithmetic" not in err
    expect_error(capsys, lambda: run_copying(tmp_path / "x", "--threads", "0"),
                 contains="--threads")
