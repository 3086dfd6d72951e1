"""The run folder (running/runfolder.py): one writer per folder, metrics.csv in step with last.pt,
--until-epoch, the state a folder reports, and the warning for runs annealing leaves vanilla."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import copying
from running import runfolder
from running.annealing import epochs_without_detach

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--T", "6", "--train-size", "60", "--test-size", "40", "--batch_size", "20",
        "--lstm-size", "8", "--n_epochs", "4", "--anneal-p", "2", "--p-detach", "0.5",
        "--device", "cpu"]
# 10,000 iterations an epoch, 15-20 s here: the holder must not end an epoch (and write
# best_model.pt) while a test checks what the refused starts left alone, even on a fast machine.
SLOW = ["--train-size", "200000"]


def run_copying(folder, *extra):
    return copying.main(TINY + ["--save-dir", str(folder), *extra])


def untimed_metrics(folder):
    return [{k: v for k, v in row.items() if k != "elapsed_s"}
            for row in runfolder.read_metrics(str(Path(folder) / "metrics.csv"))]


def snapshot(folder):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).iterdir()}


def start(folder, *extra):
    return subprocess.Popen([sys.executable, str(ROOT / "copying.py"), *TINY, *extra,
                             "--save-dir", str(folder)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until_training(folder, proc, timeout=120):
    deadline = time.time() + timeout
    state = Path(folder) / "state.json"
    while not (state.exists() and json.loads(state.read_text())["state"] == "running"):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.005)


# ----------------------------------------------------------------------------- the lock

def test_one_writer_per_folder_and_kill_9_releases_the_lock(tmp_path, capsys):
    folder = tmp_path / "run"
    holder = start(folder, *SLOW)
    try:
        wait_until_training(folder, holder)
        assert runfolder.RunFolder(str(folder)).status()["state"] == "running"
        before = snapshot(folder)
        for extra in ([], ["--resume"], ["--overwrite"]):
            with pytest.raises(SystemExit) as info:
                run_copying(folder, *SLOW, *extra)
            assert info.value.code == 2
            err = capsys.readouterr().err.strip()
            assert err == (f"error: {folder} is in use by pid {holder.pid}, which is training "
                           "in it; wait for it to end or stop it first")
        after = snapshot(folder)
        for name in (".lock", "config.json", "best_model.pt"):  # what the holder does not
            assert after.get(name) == before.get(name), name      # rewrite mid-epoch
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    # The kernel dropped the lock with the process: the folder reports the run interrupted
    # (it never said it stopped) and a new process takes it over.
    assert runfolder.holder_pid(str(folder)) is None
    status = runfolder.RunFolder(str(folder)).status()
    assert (status["state"], status["message"]) == ("interrupted", "no checkpoint yet")
    assert run_copying(folder, "--overwrite") == 0
    assert runfolder.RunFolder(str(folder)).status()["state"] == "done"


# ----------------------------------------------------------------------------- metrics.csv

def test_metrics_rows_equal_the_printed_epochs(tmp_path, capsys):
    folder = tmp_path / "run"
    assert run_copying(folder) == 0
    printed = re.findall(r"epoch (\d+)/4  p ([\d.]+)  train loss ([\d.]+)  valid loss ([\d.]+)  "
                         r"valid acc +([\d.]+)%", capsys.readouterr().out)
    rows = runfolder.read_metrics(str(folder / "metrics.csv"))
    assert len(rows) == len(printed) == 4
    last = runfolder.load_checkpoint(str(folder / "last.pt"))
    for row, (epoch, p, train, valid, acc), record in zip(rows, printed, last["history"]):
        assert row["epoch"] == int(epoch) == record["epoch"]
        assert f"{row['p_detach']:.2f}" == p and f"{row['train_loss']:.4f}" == train
        assert f"{row['valid_loss']:.4f}" == valid and f"{row['valid_accuracy']:.2f}" == acc
        assert row["valid_accuracy"] == record["valid/accuracy"]  # full precision
        assert row["iteration"] == 3 * row["epoch"] and row["test_accuracy"] is None
        assert row["elapsed_s"] >= 0
    assert [row["p_detach"] for row in rows] == [0.5, 0.5, 0.5, 0.0]  # off for e > 4 - 2
    header = (folder / "metrics.csv").read_text().splitlines()[0]
    assert header == ",".join(runfolder.METRICS_COLUMNS)


def test_until_epoch_pauses_and_resume_equals_the_full_run(tmp_path, capsys):
    straight, staged = tmp_path / "straight", tmp_path / "staged"
    assert run_copying(straight) == 0
    assert run_copying(staged, "--until-epoch", "2") == 0
    out = capsys.readouterr().out
    assert f"paused at epoch 2 of 4 (--until-epoch); last.pt saved in {staged}" in out
    assert not (staged / "results.json").exists()
    status = runfolder.RunFolder(str(staged)).status()
    assert (status["state"], status["epochs"], status["planned"]) == ("paused", 2, 4)
    assert untimed_metrics(staged) == untimed_metrics(straight)[:2]
    # Again with the same --until-epoch: nothing to do, nothing touched.
    before = snapshot(staged)
    assert run_copying(staged, "--resume", "--until-epoch", "2") == 0
    assert "already at or past --until-epoch 2" in capsys.readouterr().out
    assert snapshot(staged) == before
    # A row written after the last checkpoint (a kill between the two writes) is cut back on
    # resume, with the epoch it belonged to.
    with open(staged / "metrics.csv", "a") as handle:
        handle.write("3,0.5,9,9,9,,9,9\n")
    assert copying.main(["--save-dir", str(staged), "--resume"]) == 0
    assert untimed_metrics(staged) == untimed_metrics(straight)
    a, b = (json.loads((d / "results.json").read_text()) for d in (straight, staged))
    a.pop("wall_time_s"), b.pop("wall_time_s")
    assert a == b


def test_damaged_metrics_are_named(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,valid_accuracy\n1,50.0\n2,oops\n")
    with pytest.raises(runfolder.DamagedFile, match=r"line 3: valid_accuracy is 'oops'"):
        runfolder.read_metrics(str(path))
    path.write_text("epoch,valid_accuracy\n1,50.0\n3,60.0\n")
    with pytest.raises(runfolder.DamagedFile, match="epoch 3 follows epoch 1"):
        runfolder.read_metrics(str(path))
    path.write_text("hello\n")
    with pytest.raises(runfolder.DamagedFile, match="header"):
        runfolder.read_metrics(str(path))


# ----------------------------------------------------------------------------- states

def test_sigterm_marks_the_run_stopped(tmp_path):
    folder = tmp_path / "run"
    proc = start(folder, *SLOW)
    wait_until_training(folder, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    status = runfolder.RunFolder(str(folder)).status()
    assert status["state"] == "stopped" and status["message"].startswith("SIGTERM at epoch 1")
    assert runfolder.holder_pid(str(folder)) is None


def test_a_crash_marks_the_run_failed_with_its_last_line(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    original = copying.evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nTried to allocate 2.00 GiB")
    monkeypatch.setattr(copying, "evaluate", broken)
    with pytest.raises(RuntimeError):
        run_copying(folder)
    status = runfolder.RunFolder(str(folder)).status()
    assert status["state"] == "failed"
    assert status["message"] == "RuntimeError: Tried to allocate 2.00 GiB"
    assert runfolder.holder_pid(str(folder)) is None
    monkeypatch.setattr(copying, "evaluate", original)


def test_a_refused_start_leaves_no_trace(tmp_path, capsys):
    folder = tmp_path / "new"
    with pytest.raises(SystemExit):
        run_copying(folder, "--train-size", "10")  # fewer than one batch
    assert not folder.exists()


# ----------------------------------------------------------------------------- annealing

@pytest.mark.parametrize("flags, warns", [
    (["--n-epochs", "20", "--p-detach", "0.5", "--anneal-p", "40"], True),
    (["--n-epochs", "100", "--p-detach", "0.5", "--anneal-p", "40"], False),
    (["--n-epochs", "20", "--p-detach", "-1", "--anneal-p", "40"], False),  # vanilla
    (["--n-epochs", "4", "--p-detach", "0.5", "--anneal-p", "2"], False),
])
def test_warns_when_annealing_leaves_h_detach_off_most_of_the_run(tmp_path, capsys, flags,
                                                                   warns):
    argv = TINY + flags + ["--save-dir", str(tmp_path / "run"), "--until-epoch", "1"]
    assert copying.main(argv) == 0
    err = capsys.readouterr().err
    assert ("warning: h-detach" in err) == warns
    if warns:
        assert len(err.strip().splitlines()) == 1
        assert "off for 20 of the 20 epochs" in err and "--anneal-p" in err


def test_epochs_without_detach_follows_the_protocol():
    assert epochs_without_detach(600, 40) == 39
    assert epochs_without_detach(20, 40) == 20
    assert epochs_without_detach(200, 0) == 0


def test_an_evaluation_of_the_models_goes_with_the_run(tmp_path):
    """QA of issue 32: --overwrite left the old run's eval_test.json beside the new model. A
    caption_eval.py file is a run file: --overwrite removes it, a new run refuses the folder."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "eval_test.json").write_text("{}")
    (folder / "eval_test_beam3.json").write_text("{}")
    (folder / "notes.json").write_text("{}")
    assert runfolder.run_files_in(str(folder)) == ["eval_test.json", "eval_test_beam3.json"]
    runfolder.clear_run_dir(str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.json"]
