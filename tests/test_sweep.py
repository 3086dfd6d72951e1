"""sweep.py and running/grids.py: the grids as data, list / run / status / slurm, for real on the
smoke grid (and on small grids of the test's own, given with --grids)."""
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import copying
import pixelmnist
import sweep
import transfer_copy
from running import grids, runfolder
from running.annealing import epochs_without_detach

ROOT = Path(__file__).resolve().parents[1]
SMOKE_MODELS = ["copying/T10_vanilla_s3", "copying/T10_p0.25_s3", "copying/T10_p0.5_s3"]


def run_sweep(*argv):
    return sweep.main([str(a) for a in argv])


def one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        run_sweep(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


def outcome(folder):
    """What must be equal between two runs of the same command: results (without wall time),
    metrics.csv (without elapsed seconds) and the transfer rows."""
    folder = Path(folder)
    results = json.loads((folder / "results.json").read_text())
    results.pop("wall_time_s")
    metrics = [{k: v for k, v in row.items() if k != "elapsed_s"}
               for row in runfolder.read_metrics(str(folder / "metrics.csv"))]
    transfer = json.loads((folder / "transfer.json").read_text())
    return results, metrics, transfer["results"], transfer["checkpoint_epoch"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke grid run once, uninterrupted, two at a time: the reference. Records how many
    runs were going each time one was launched."""
    root = tmp_path_factory.mktemp("smoke") / "runs"
    concurrent, launch = [], sweep.LocalSweep.launch

    def counting(self, run, state):
        launch(self, run, state)
        concurrent.append(len(self.running))
    sweep.LocalSweep.launch = counting
    try:
        assert run_sweep("run", "smoke", "--root", root, "--jobs", 2) == 0
    finally:
        sweep.LocalSweep.launch = launch
    return root, concurrent


@pytest.fixture(scope="module")
def smoke_root(smoke_run):
    return smoke_run[0]


# ----------------------------------------------------------------------------- the grids

def test_grids_are_the_papers():
    names = [run.name for make in grids.GRIDS.values() for run in make().runs]
    for name, make in grids.GRIDS.items():
        grid = make()
        assert grid.name == name and grid.runs
        assert len({run.name for run in grid.runs}) == len(grid.runs), name  # stable, unique
    assert all(":" not in n or n.endswith((":transfer", ":eval-test")) for n in names)
    copying_runs = grids.get_grid("paper-copying").runs
    settings = {(r.args[r.args.index("--T") + 1], "--p-detach" in r.args and
                 r.args[r.args.index("--p-detach") + 1]) for r in copying_runs}
    assert settings == {(T, p) for T in ("100", "300") for p in (False, "0.25", "0.5")}
    seeds = {r.args[r.args.index("--seed") + 1] for r in copying_runs}
    assert "3" in seeds and len(seeds) >= 5
    transfer = grids.get_grid("paper-transfer").runs
    assert sorted(r.model for r in transfer) == sorted(
        r.name for r in copying_runs if "/T100_" in r.name)
    assert all(sweep._transfer_delays(r) == [200, 400, 500, 1000, 2000, 5000]
               for r in transfer)
    mnist = grids.get_grid("paper-mnist").runs
    assert {"250", "150", "400"} <= {r.args[r.args.index("--seed") + 1] for r in mnist}
    assert sum("--permute" in r.args for r in mnist) == len(mnist) // 2 == 10
    paper = grids.get_grid("paper").runs
    for part in ("paper-copying", "paper-transfer", "paper-mnist", "paper-ablations"):
        assert set(grids.get_grid(part).runs) <= set(paper)


def test_every_grid_command_parses_with_its_script(tmp_path):
    import caption_eval
    import caption_train
    parsers = {"copying.py": copying.build_parser(), "pixelmnist.py": pixelmnist.build_parser(),
               "transfer_copy.py": transfer_copy.build_parser(),
               "caption_train.py": caption_train.build_parser(),
               "caption_eval.py": caption_eval.build_parser()}
    for make in grids.GRIDS.values():
        plan = sweep.Plan(make(), str(tmp_path), data_args=["--caption-data", "/d/coco"])
        for run in plan.grid.runs:
            command = plan.command(run, "start")
            assert command[0] == "python"
            parsers[os.path.basename(command[1])].parse_args(command[2:])


def test_smoke_and_campaign_settings():
    smoke = grids.get_grid("smoke").runs + grids.get_grid("smoke-learns").runs
    for run in smoke:
        if run.is_transfer:
            continue
        args = copying.build_parser().parse_args([*run.args, "--save-dir", "x"])
        # Its h-detach runs do detach: annealing is off for under half of the epochs.
        assert 2 * epochs_without_detach(args.n_epochs, args.anneal_p) <= args.n_epochs
    campaign = grids.get_grid("campaign-copying")
    assert campaign.until_epoch == 200
    trained = [copying.build_parser().parse_args([*r.args, "--save-dir", "x"])
               for r in campaign.runs if not r.is_transfer]
    assert sorted(a.p_detach for a in trained) == [-1, 0.25, 0.5]
    for a in trained:
        assert (a.T, a.seed, a.n_epochs, a.anneal_p, a.lstm_size, a.batch_size, a.lr, a.clip,
                a.impl, a.device) == (100, 3, 600, 40, 128, 100, 1e-3, 1.0, "fast", "cpu")
    assert sum(r.is_transfer for r in campaign.runs) == 3


def test_campaign_seeds_pairs_with_the_seed_3_campaign():
    """Issue 21's runs: the seed-3 campaign's flags and streams, only the seed (and, for the
    ablation, the detached state) changed, in the folders the paper's grids name."""
    parse = copying.build_parser().parse_args

    def flags(args):
        return {k: v for k, v in vars(args).items() if k not in ("seed", "detach", "p_detach")}

    seeds = grids.get_grid("campaign-seeds")
    trained = [r for r in seeds.runs if not r.is_transfer]
    assert len(trained) == 7
    # Issue 33: the transfer of seeds 1 and 2 (the protocol's test set, the kit's streams as
    # their training and as seed 3's transfer in campaign-copying).
    transfers = [r for r in seeds.runs if r.is_transfer]
    assert sorted(r.model for r in transfers) == sorted(r.name for r in trained
                                                        if not r.name.endswith("_s3"))
    seed3 = [r for r in grids.get_grid("campaign-copying").runs if r.is_transfer][0]
    assert all(r.args == seed3.args for r in transfers)
    assert seeds.until_epoch in (100, 200)  # stage 1, then stage 2 of 600 planned
    reference = flags(parse([*grids.get_grid("campaign-copying").runs[0].args, "--save-dir", "x"]))
    assert reference["rng"] == "kit" and reference["n_epochs"] == 600
    settings = set()
    for run in trained:
        args = parse([*run.args, "--save-dir", "x"])
        assert flags(args) == reference, run.name
        settings.add((args.detach, args.p_detach, args.seed))
    assert settings == {("h", p, s) for p in (-1, 0.25, 0.5) for s in (1, 2)} | {("c", 0.25, 3)}
    paper = {r.name for r in grids.get_grid("paper").runs}
    assert {r.name for r in trained} <= paper



def test_campaign_t300_is_the_protocol_at_t300_paired_with_the_t100_campaigns():
    """Issue 33: T = 300, seed 3, vanilla and p = 0.5 first, then p = 0.25, the campaigns'
    flags and streams (only T, p differ), staged, in the paper grid's folders; no transfer
    (trained at T = 100 only)."""
    parse = copying.build_parser().parse_args
    t300 = grids.get_grid("campaign-T300")
    assert t300.until_epoch == 250 and not any(r.is_transfer for r in t300.runs)
    reference = vars(parse([*grids.get_grid("campaign-copying").runs[0].args, "--save-dir", "x"]))
    settings = []
    for run in t300.runs:
        args = vars(parse([*run.args, "--save-dir", "x"]))
        assert {k: v for k, v in args.items() if k not in ("T", "p_detach")} == \
            {k: v for k, v in reference.items() if k not in ("T", "p_detach")}, run.name
        assert args["numerics"] == "portable" and not args["flush_denormal"]
        settings.append((args["T"], args["p_detach"], args["seed"]))
    # grid order is launch order: the pair before p = 0.25
    assert settings == [(300, -1, 3), (300, 0.5, 3), (300, 0.25, 3)]
    assert {r.name for r in t300.runs} <= {r.name for r in grids.get_grid("paper").runs}


# ----------------------------------------------------------------------------- list, status

def test_list_prints_one_command_per_unfinished_run(smoke_root, tmp_path, capsys):
    assert run_sweep("list", "smoke", "--root", tmp_path / "new") == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    # The three training runs; their transfers wait for the models (named on stderr only).
    assert len(lines) == 3 and not (tmp_path / "new").exists()  # nothing run or made
    assert captured.err.count("# not listed: ") == 3
    first = shlex.split(lines[0])
    assert first[:2] == ["python", os.path.relpath(ROOT / "copying.py")]
    assert first[-2:] == ["--save-dir", str(tmp_path / "new" / SMOKE_MODELS[0])]
    # Done runs are left out; --all lists them.
    assert run_sweep("list", "smoke", "--root", smoke_root) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "6 run(s) done" in captured.err
    assert run_sweep("list", "smoke", "--root", smoke_root, "--all") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6
    assert shlex.split(lines[3])[4:6] == ["--model-dir", str(smoke_root / SMOKE_MODELS[0])]


def test_status_of_a_finished_grid(smoke_root, capsys):
    assert run_sweep("status", "smoke", "--root", smoke_root) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["run", "state"]
    for model in SMOKE_MODELS:
        row = next(line for line in lines if line.startswith(model + " "))
        metrics = runfolder.read_metrics(str(smoke_root / model / "metrics.csv"))
        best = max(m["valid_accuracy"] for m in metrics)
        assert row.split()[1:4] == ["done", "4/4", f"{best:.2f}"]
    assert lines[-1] == "6 runs: 6 done"


def test_status_paused_then_continued(grid_file, tmp_path, capsys):
    root, model = tmp_path / "runs", "c/T6_p0.5_s5"
    pair = ["--root", root, "--grids", grid_file]
    assert run_sweep("run", "pair", *pair, "--until-epoch", 2) == 0
    assert f"paused  {model} at epoch 2 of 4 (--until-epoch 2)" in capsys.readouterr().out
    assert run_sweep("status", "pair", *pair) == 0
    out = capsys.readouterr().out
    assert f"{model}           paused at epoch 2 of 4  2/4" in out
    # Its pace and the time it still needs to its planned 4 epochs, from its own metrics.csv.
    rows = runfolder.read_metrics(str(root / model / "metrics.csv"))
    pace = float(np.median([rows[0]["elapsed_s"], rows[1]["elapsed_s"] - rows[0]["elapsed_s"]]))
    row = next(line for line in out.splitlines() if line.startswith(model + " "))
    shown = f"{pace:.0f}" if pace >= 10 else f"{pace:.1f}"
    assert row.split()[9:11] == [shown, sweep.short_duration(2 * pace)], row
    assert "to go: time to its last epoch at that pace" in out
    # The transfer run went after its model paused at --until-epoch, on that model.
    data = json.loads((root / model / "transfer.json").read_text())
    best = runfolder.load_checkpoint(str(root / model / "best_model.pt"))
    assert data["checkpoint_epoch"] == best["epoch"] <= 2
    # Without --until-epoch the run continues to the end; its transfer is measured again when
    # its best_model.pt changed, and only then.
    older = "of an older best_model.pt"
    (root / model / "transfer.json").write_text(json.dumps(dict(
        data, checkpoint_sha256=older,
        measurements=[dict(m, checkpoint_sha256=older) for m in data["measurements"]])))
    assert run_sweep("run", "pair", *pair) == 0
    out = capsys.readouterr().out
    assert f"resume  {model}" in out and f"start  {model}:transfer" in out
    assert runfolder.RunFolder(str(root / model)).status()["state"] == "done"
    data = json.loads((root / model / "transfer.json").read_text())
    assert data["checkpoint_sha256"] == runfolder.file_sha256(str(root / model / "best_model.pt"))
    assert run_sweep("status", "pair", *pair) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "2 runs: 2 done"


def test_pace_is_the_median_epoch_of_the_last_ten():
    # elapsed_s is training time summed over resumes: epoch k took elapsed[k] - elapsed[k-1].
    # Six slow epochs (a busy machine), then a faster pace: the last 10 hold four slow ones,
    # whose median (115) is neither the mean (223) nor the median of all twelve (265).
    spans = [400.0] * 6 + [100.0] * 5 + [130.0]
    rows = [{"epoch": k + 1, "elapsed_s": float(np.cumsum(spans)[k])} for k in range(12)]
    assert runfolder.epoch_seconds(rows) == pytest.approx(115.0)
    assert runfolder.epoch_seconds(rows[:1]) == pytest.approx(400.0)
    assert runfolder.epoch_seconds([]) is None
    assert [sweep.short_duration(s) for s in (0.4, 7, 90, 3725, 2 * 86400 + 5 * 3600 + 59)] \
        == ["<1s", "7s", "1m30s", "1h02m", "2d5h"]


def test_status_of_an_empty_root(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_sweep("status", "smoke", "--root", tmp_path / "empty") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        "6 runs: 3 not started, 3 waiting for its model"
    assert os.listdir(tmp_path / "empty") == []


def test_status_into_a_closed_pipe_stops_quietly(tmp_path):
    # `sweep.py status | head -3`: the reader leaves early. The reader's end is closed before
    # the child has imported torch, so its first write meets a closed pipe.
    (tmp_path / "empty").mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "status", "smoke",
                             "--root", str(tmp_path / "empty")], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert err == ""  # no traceback, no "Exception ignored ... BrokenPipeError"


# ----------------------------------------------------------------------------- run locally

def test_run_respects_jobs_and_skips_what_is_done(smoke_run, capsys, monkeypatch):
    root, concurrent = smoke_run
    assert len(concurrent) == 6 and max(concurrent) == 2
    assert (root / SMOKE_MODELS[0] / "train.log").read_text().startswith("== ")
    for model in SMOKE_MODELS:
        assert runfolder.RunFolder(str(root / model)).status()["state"] == "done"
    launched = []
    monkeypatch.setattr(sweep.LocalSweep, "launch", lambda self, run, state: launched.append(run))
    assert run_sweep("run", "smoke", "--root", root) == 0
    assert launched == [] and "nothing to do" in capsys.readouterr().out


def test_time_limit_then_sigint_then_finish_is_exact(smoke_root, tmp_path, capsys):
    root = tmp_path / "runs"
    assert run_sweep("run", "smoke", "--root", root, "--jobs", 2, "--time-limit", "4s") == 0
    out = capsys.readouterr().out
    assert "time limit: stopping" in out and "Continue with:" in out
    assert f"python sweep.py run smoke --root {root} --jobs 2" in out
    # Where the limit caught each run depends on the machine's speed (a smoke run trains in
    # under a second after a few seconds of start-up); that it stopped some is what matters.
    states = [runfolder.RunFolder(str(root / m)).status()["state"] for m in SMOKE_MODELS]
    assert states != ["done"] * len(SMOKE_MODELS)
    unfinished = [m for m, state in zip(SMOKE_MODELS, states) if state != "done"]

    def launches():
        logs = [root / m / "train.log" for m in unfinished]
        return sum(line.startswith("== ") for log in logs if log.exists()
                   for line in log.read_text().splitlines())
    before = launches()
    # A second call, stopped by Ctrl-C (SIGINT to the sweep) once it has launched a run: the
    # sweep stops it cleanly whether it is still loading or already training.
    proc = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "run", "smoke", "--root",
                             str(root), "--jobs", "2"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while launches() == before:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "SIGINT: stopping" in out and "Continue with:" in out
    assert not list(root.rglob("*.tmp"))
    # The third call finishes every run with the numbers of the uninterrupted reference.
    assert run_sweep("run", "smoke", "--root", root, "--jobs", 2) == 0
    for model in SMOKE_MODELS:
        assert outcome(root / model) == outcome(smoke_root / model), model


GRID_FILE = '''
from running.grids import Grid, copying_run, mnist_run, transfer_run

TINY = dict(train_size=60, test_size=40, batch_size=20, lstm_size=8, n_epochs=2, anneal_p=1,
            device="cpu")


def failing():
    good = copying_run("c", 6, 0.5, 3, **TINY)
    bad = copying_run("c", 6, 0.5, 4, **dict(TINY, train_size=5))  # fewer than a batch
    return Grid("failing", "one bad run", (bad, good, transfer_run(bad, delays=(8,))))


def pair():
    model = copying_run("c", 6, 0.5, 5, **dict(TINY, n_epochs=4, anneal_p=2))
    return Grid("pair", "a model and its transfer",
                (model, transfer_run(model, delays=(8,), test_size=40)))


def slow():
    model = copying_run("c", 30, 0.5, 3, **dict(TINY, train_size=4000, lstm_size=16))
    return Grid("slow", "a run long enough to be signalled",
                (model, transfer_run(model, delays=(40,), test_size=40)))


def mnist():
    return Grid("mnist", "an MNIST run", (mnist_run("m", 0.25, 1, n_epochs=1),))


def queue():
    first, second = (copying_run("c", 6, 0.5, seed, **TINY) for seed in (6, 7))
    return Grid("queue", "two models, the first one's transfer last",
                (first, second, transfer_run(first, delays=(8,), test_size=40)))


GRIDS = {"failing": failing, "pair": pair, "slow": slow, "mnist": mnist, "queue": queue}
'''


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "my_grids.py"
    path.write_text(GRID_FILE)
    return path


def test_a_ready_transfer_goes_before_the_next_training_run(grid_file, tmp_path, capsys,
                                                            monkeypatch):
    """One slot: when the first model is done, its transfer (minutes) starts before the second
    model's training (hours), though the grid lists it last: a sweep stopped by its time limit
    each session would otherwise leave every measurement to the session after all training."""
    launched, launch = [], sweep.LocalSweep.launch

    def recording(self, run, state):
        launched.append(run.name)
        launch(self, run, state)
    monkeypatch.setattr(sweep.LocalSweep, "launch", recording)
    root = tmp_path / "runs"
    assert run_sweep("run", "queue", "--root", root, "--grids", grid_file, "--jobs", 1) == 0
    assert launched == ["c/T6_p0.5_s6", "c/T6_p0.5_s6:transfer", "c/T6_p0.5_s7"]
    assert json.loads((root / "c/T6_p0.5_s6/transfer.json").read_text())["results"]


def test_a_failed_run_is_reported_and_the_others_finish(grid_file, tmp_path, capsys):
    root = tmp_path / "runs"
    assert run_sweep("run", "failing", "--root", root, "--grids", grid_file, "--jobs", 2) == 1
    out = capsys.readouterr().out
    assert "FAILED  c/T6_p0.5_s4 (exit 2): error: --train-size (5) must be at least " \
           "--batch-size (20)" in out
    assert "skip  c/T6_p0.5_s4:transfer: model c/T6_p0.5_s4: not started" in out
    assert "1 failed: c/T6_p0.5_s4" in out
    assert (root / "c/T6_p0.5_s3/results.json").exists()
    # status says so too, with the run's own words (not "not started")
    assert run_sweep("status", "failing", "--root", root, "--grids", grid_file) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("c/T6_p0.5_s4 "))
    assert "failed to start" in row and "--train-size (5) must be at least" in row
    # A run folder with a damaged file is named and left alone; the rest goes on.
    (root / "c/T6_p0.5_s3/metrics.csv").write_text("epoch,valid_accuracy\n1,lots\n")
    assert run_sweep("status", "failing", "--root", root, "--grids", grid_file) == 0
    assert "damaged" in capsys.readouterr().out
    assert run_sweep("run", "failing", "--root", root, "--grids", grid_file) == 1
    assert "skip  c/T6_p0.5_s3: " in capsys.readouterr().out



def test_a_grid_file_of_before_the_packages_still_loads(tmp_path, capsys):
    """Grid files written when grids.py was a top-level module say ``from grids import``; they
    load as they did, and the old name is visible only while the file runs."""
    path = tmp_path / "old_grids.py"
    path.write_text(GRID_FILE.replace("from running.grids import", "from grids import"))
    assert run_sweep("list", "pair", "--grids", path, "--root", tmp_path / "runs") == 0
    assert "c/T6_p0.5_s5" in capsys.readouterr().out
    assert "grids" not in sys.modules


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv, contains", [
    (["run", "nope"], "unknown grid 'nope'"),
    (["list", "nope"], "unknown grid"),
    (["run", "smoke", "--jobs", "0"], "at least 1"),
    (["run", "smoke", "--jobs", "two"], "whole number"),
    (["run", "smoke", "--time-limit", "soon"], "duration"),
    (["run", "smoke", "--time-limit", "0"], "above 0"),
    (["run", "smoke", "--partition", "gpu"], "unrecognized arguments: --partition"),
    (["run", "smoke", "--max-parallel", "2"], "unrecognized arguments"),
    (["slurm", "smoke", "--time", "2h"], "HH:MM:SS"),
    (["run", "smoke", "--grids", "missing.py"], "no such file"),
    (["run", "smoke", "--flush-denormal", "--threads", "2"], "needs --threads 1 (not 2)"),
    (["slurm", "smoke", "--flush-denormal", "--cpus-per-task", "2"],
     "needs --cpus-per-task 1 (not 2)"),
    (["list", "smoke", "--flush-denormal"], "unrecognized arguments: --flush-denormal"),
])
def test_bad_input_is_one_line_and_starts_nothing(tmp_path, capsys, monkeypatch, argv,
                                                  contains):
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, [*argv, "--root", tmp_path / "runs"])
    assert contains in err
    assert not (tmp_path / "runs").exists()


def test_a_root_that_does_not_exist(tmp_path, capsys):
    """A typo in --root: status says so in one line; list still lists (planning a new root is
    what it is for) but says the root is new (issue 34, item 7)."""
    missing = tmp_path / "nonexist_root"
    err = one_line_error(capsys, ["status", "smoke", "--root", missing])
    assert f"--root {missing} does not exist" in err
    assert run_sweep("list", "smoke", "--root", missing) == 0
    captured = capsys.readouterr()
    assert f"# --root {missing} does not exist yet" in captured.err
    assert "copying/T10_vanilla_s3" in captured.out and not missing.exists()


def test_the_internal_task_command_is_not_offered(capsys):
    err = one_line_error(capsys, ["nope"])
    assert "invalid choice: 'nope'" in err and "slurm-task" not in err
    with pytest.raises(SystemExit):
        run_sweep("--help")
    assert "slurm-task" not in capsys.readouterr().out


def test_root_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "runs"
    path.write_text("not a folder")
    for command in ("run", "list", "status", "slurm"):
        assert "is not a folder" in one_line_error(capsys, [command, "smoke", "--root", path])


# ----------------------------------------------------------------------------- SLURM

STAND_IN_SBATCH = '''#!{python}
"""Stand-in sbatch: records the script, starts every array task in the background with the
environment SLURM gives a task, prints the job id (--parsable)."""
import os, re, subprocess, sys
record = os.environ["SLURM_RECORD"]
script = sys.argv[-1]
text = open(script).read()
open(os.path.join(record, "script.sh"), "w").write(text)
first, last = map(int, re.search(r"#SBATCH --array=(\\d+)-(\\d+)", text).groups())
for task in range(first, last + 1):
    env = dict(os.environ, SLURM_JOB_ID=str(4243 + task), SLURM_ARRAY_JOB_ID="4242",
               SLURM_ARRAY_TASK_ID=str(task), SLURM_CPUS_PER_TASK="1")
    log = open(os.path.join(record, f"task{{task}}.out"), "a")
    proc = subprocess.Popen(["bash", script], env=env, stdout=log, stderr=subprocess.STDOUT)
    open(os.path.join(record, f"task{{task}}.pid"), "w").write(str(proc.pid))
print("4242")
'''
STAND_IN_SCONTROL = '''#!/bin/sh
echo "$@" >> "$SLURM_RECORD/scontrol.calls"
'''


def install_stand_ins(tmp_path, monkeypatch):
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    for name, text in (("sbatch", STAND_IN_SBATCH.format(python=sys.executable)),
                       ("scontrol", STAND_IN_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_RECORD", str(record))
    return record


def test_slurm_dry_run_prints_a_valid_script(smoke_root, tmp_path, capsys):
    root = tmp_path / "runs"
    assert run_sweep("slurm", "smoke", "--root", root, "--partition", "gpu", "--time",
                     "01:00:00", "--max-parallel", 2, "--gpus-per-task", 1, "--dry-run") == 0
    out = capsys.readouterr().out
    assert not root.exists()  # nothing written
    script = out.split("# tasks")[0]
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 "#SBATCH --signal=B:TERM@", "#SBATCH --partition=gpu",
                 "#SBATCH --time=01:00:00", "#SBATCH --gpus-per-task=1"):
        assert line in script
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    # One task per unfinished training run, with its transfer run in the same task.
    assert "#   0: copying/T10_vanilla_s3 copying/T10_vanilla_s3:transfer" in out
    assert run_sweep("slurm", "smoke", "--root", smoke_root, "--dry-run") == 0
    assert "nothing to submit" in capsys.readouterr().out


def test_slurm_flush_denormal_gives_one_cpu_and_reaches_every_run(tmp_path, capsys):
    root = tmp_path / "runs"
    assert run_sweep("slurm", "smoke", "--root", root, "--dry-run") == 0
    assert "#SBATCH --cpus-per-task=4\n" in capsys.readouterr().out  # without it: 4
    assert run_sweep("slurm", "smoke", "--root", root, "--gpus-per-task", 0,
                     "--flush-denormal", "--dry-run") == 0
    captured = capsys.readouterr()
    script = captured.out.split("# tasks")[0]
    assert "#SBATCH --cpus-per-task=1\n" in script and not root.exists()
    assert captured.err == ""
    # With GPUs asked for (the default), a one-line note: flushing changes only CPU runs.
    assert run_sweep("slurm", "smoke", "--root", root, "--flush-denormal", "--dry-run") == 0
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--gpus-per-task 0" in err
    # The task's own command (what each array task runs) gives every run --flush-denormal.
    task = shlex.split(next(line for line in script.splitlines() if line.startswith("exec ")))
    assert task[3] == "slurm-task" and "--flush-denormal" in task
    args = sweep.parse_args([*task[3:task.index("--index")], "--index", "0"])
    plan = sweep.open_plan(args)
    for run in plan.grid.runs:
        assert plan.command(run, "start")[-1] == "--flush-denormal", run.name


def test_slurm_without_sbatch_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "sbatch not found" in one_line_error(capsys, ["slurm", "smoke", "--root",
                                                         tmp_path / "runs"])


def test_slurm_task_stops_requeues_and_continues_exactly(grid_file, tmp_path, capsys,
                                                         monkeypatch):
    # The reference: the same two commands run uninterrupted, in this process (one thread,
    # as the tasks: SLURM_CPUS_PER_TASK=1).
    reference = tmp_path / "reference"
    plan = sweep.Plan(sweep.get_grid("slow", sweep.catalog(str(grid_file))), str(reference))
    model_run, transfer = plan.grid.runs
    assert copying.main(plan.command(model_run, "start")[2:]) == 0
    assert transfer_copy.main(plan.command(transfer, "start")[2:]) == 0
    record = install_stand_ins(tmp_path, monkeypatch)
    root = tmp_path / "runs"
    assert run_sweep("slurm", "slow", "--root", root, "--grids", grid_file,
                     "--max-parallel", 4) == 0
    assert "submitted job 4242: 1 task(s)" in capsys.readouterr().out
    assert subprocess.run(["bash", "-n", str(record / "script.sh")]).returncode == 0
    task_pid = int((record / "task0.pid").read_text())
    folder = root / "c/T30_p0.5_s3"
    deadline = time.time() + 120
    while True:  # SLURM's signal ahead of the time limit, once the run is training
        state = folder / "state.json"
        if state.exists() and json.loads(state.read_text())["state"] == "running":
            break
        assert time.time() < deadline, (record / "task0.out").read_text()
        time.sleep(0.005)
    os.kill(task_pid, signal.SIGTERM)
    deadline = time.time() + 120
    while _alive(task_pid):
        assert time.time() < deadline
        time.sleep(0.05)
    assert runfolder.RunFolder(str(folder)).status()["state"] == "stopped"
    assert runfolder.load_checkpoint(str(folder / "last.pt"))["epoch"] < 2
    assert (record / "scontrol.calls").read_text().split() == ["requeue", "4242_0"]
    assert not (folder / "results.json").exists()
    # SLURM runs the requeued task again, with the same environment.
    env = dict(os.environ, SLURM_JOB_ID="4243", SLURM_ARRAY_JOB_ID="4242",
               SLURM_ARRAY_TASK_ID="0", SLURM_CPUS_PER_TASK="1", SLURM_RESTART_COUNT="1")
    again = subprocess.run(["bash", str(record / "script.sh")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert outcome(folder) == outcome(reference / "c/T30_p0.5_s3")
    log = (folder / "train.log").read_text()
    assert log.count("== ") == 2 and "SIGTERM received" in log  # appended, not truncated
    assert run_sweep("slurm", "slow", "--root", root, "--grids", grid_file) == 0
    assert "nothing to submit" in capsys.readouterr().out


def _alive(pid):
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_list_leaves_out_transfers_whose_model_is_not_ready(grid_file, tmp_path, capsys):
    # Issue 19: "sweep.py list | xargs -P 6" started the transfers before their models existed.
    root = tmp_path / "runs"
    assert run_sweep("list", "pair", "--root", root, "--grids", grid_file) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1 and "copying.py" in lines[0] and "transfer_copy" not in captured.out
    assert "# not listed: c/T6_p0.5_s5:transfer" in captured.err and "list again" in captured.err
    # Once the model is done, the transfer is listed (and the model no longer).
    assert copying.main(shlex.split(lines[0])[2:]) == 0
    capsys.readouterr()
    assert run_sweep("list", "pair", "--root", root, "--grids", grid_file) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "transfer_copy.py" in lines[0]


def test_mnist_runs_get_the_sweeps_data_flags(grid_file, tmp_path, capsys, monkeypatch):
    # Issue 19: a sweep could not point MNIST runs at their data.
    monkeypatch.chdir(tmp_path)
    assert run_sweep("list", "mnist", "--root", "runs", "--grids", grid_file, "--data-dir",
                     "data", "--no-download") == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.endswith(f"--data-dir {tmp_path / 'data'} --no-download"), line
    assert run_sweep("list", "pair", "--root", "runs", "--grids", grid_file, "--data-dir",
                     "data") == 0
    assert "--data-dir" not in capsys.readouterr().out  # copying runs take no data flags
    assert run_sweep("slurm", "mnist", "--root", "runs", "--grids", grid_file, "--data-dir",
                     "data", "--no-download", "--dry-run") == 0
    script = capsys.readouterr().out
    assert f"--data-dir {tmp_path / 'data'} --no-download --index" in script
    args = sweep.parse_args(["slurm-task", "mnist", "--root", "r", "--tasks-file", "t",
                             "--index", "0", "--data-dir", "/d", "--no-download"])
    assert sweep.data_args(args) == ["--data-dir", "/d", "--no-download"]


def test_the_continue_line_repeats_every_flag_and_says_what_was_not_saved(
        grid_file, tmp_path, capsys, monkeypatch):
    # Issue 19: the "Continue with" line dropped --threads; the sweep said "every run saved its
    # state" even when a run stopped before its first checkpoint.
    def stopped_early(self):
        self.stop_reason = "time limit"
        self.stopped, self.unsaved = ["m/p0.25_s1"], ["m/p0.25_s1"]
    monkeypatch.setattr(sweep.LocalSweep, "go", stopped_early)
    monkeypatch.chdir(tmp_path)
    argv = ["run", "mnist", "--root", "runs", "--grids", str(grid_file), "--jobs", "2",
            "--threads", "1", "--until-epoch", "3", "--time-limit", "2h30m", "--retry-failed",
            "--flush-denormal", "--data-dir", str(tmp_path / "data"), "--no-download"]
    assert run_sweep(*argv) == 0
    out = capsys.readouterr().out
    again = out.split("Continue with:\n")[1].splitlines()[0].split()
    assert again[:3] == ["python", "sweep.py", "run"]
    given, repeated = sweep.build_parser().parse_args(argv), \
        sweep.build_parser().parse_args(again[2:])
    assert vars(given) == vars(repeated)
    assert "every run saved its state" not in out
    assert "0 run(s) saved their state; 1 stopped before their first checkpoint and will " \
           "start again: m/p0.25_s1" in out


def test_flush_denormal_reaches_every_run_with_one_thread_and_is_recorded(grid_file, tmp_path,
                                                                          capsys):
    root = tmp_path / "runs"
    # No --threads: one thread each, whatever the cores (torch flushes on one thread only).
    assert run_sweep("run", "pair", "--root", root, "--grids", grid_file, "--jobs", 2,
                     "--flush-denormal") == 0
    out = capsys.readouterr().out
    assert "2 at a time, 1 torch thread(s) each" in out
    folder = root / "c" / "T6_p0.5_s5"
    logs = (folder / "train.log").read_text() + (folder / "transfer.log").read_text()
    headers = [line for line in logs.splitlines() if line.startswith("== ")]
    assert len(headers) == 2 and all(line.endswith(" --flush-denormal") for line in headers)
    # What the runs did, not what they were told: read from the CPU by each script.
    config = json.loads((folder / "config.json").read_text())
    assert config["numerics"]["flush_denormal"] is True
    measured = json.loads((folder / "transfer.json").read_text())
    assert measured["numerics"]["flush_denormal"] is True


def test_until_epoch_past_a_runs_end_is_not_passed_to_it(tmp_path):
    # The scripts refuse --until-epoch past --n-epochs: a sweep's stage then means "to the end".
    plan = sweep.Plan(grids.get_grid("smoke"), str(tmp_path), until_epoch=10)
    commands = [plan.command(run, "start") for run in plan.grid.runs if not run.is_transfer]
    assert commands and all("--until-epoch" not in command for command in commands)
    plan = sweep.Plan(grids.get_grid("smoke"), str(tmp_path), until_epoch=2)
    assert all(plan.command(run, "start")[-2:] == ["--until-epoch", "2"]
               for run in plan.grid.runs if not run.is_transfer)


def test_status_shows_each_runs_numerics(smoke_root, capsys):
    # Issue 20: which arithmetic each training run recorded (numerics.py), beside its state.
    assert run_sweep("status", "smoke", "--root", smoke_root) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "numerics" in lines[0].split()
    for model in SMOKE_MODELS:
        row = next(line for line in lines if line.startswith(model + " "))
        assert "portable (" in row, row


# ----------------------------------------------------------------------------- captioning

def test_captioning_grids_take_their_data_and_test_each_best_model(tmp_path, capsys):
    """Issue 32: paper-captioning / smoke-captioning get the prepared data from --caption-data
    (refused in one line without it), and an evaluation run per model that is done only while
    its eval_test.json is of the best_model.pt the folder holds."""
    root = tmp_path / "runs"
    err = one_line_error(capsys, ["list", "smoke-captioning", "--root", root])
    assert "--caption-data PREFIX" in err
    err = one_line_error(capsys, ["list", "smoke-captioning", "--root", root,
                                  "--caption-data", tmp_path / "none"])
    assert "none.json" in err
    prefix = tmp_path / "data" / "shapes"
    prefix.parent.mkdir()
    (tmp_path / "data" / "shapes.json").write_text("{}")
    (tmp_path / "data" / "shapes_labels.npz").write_bytes(b"")
    (tmp_path / "data" / "shapes_fc").mkdir()
    (tmp_path / "data" / "shapes_att").mkdir()
    assert run_sweep("list", "smoke-captioning", "--root", root, "--caption-data",
                     tmp_path / "data" / "shapes") == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    evaluations = sum(run.script == "caption_eval.py"
                      for run in grids.get_grid("smoke-captioning").runs)
    assert f"# {evaluations} evaluation run(s) wait for their model" in err  # not "transfer"
    tell = next(line for line in lines if "show_tell_vanilla_s1" in line)
    attend = next(line for line in lines if "show_attend_tell_p0.4_s1" in line)
    assert f"--input-json {prefix}.json --input-labels {prefix}_labels.npz --input-fc-dir " \
           f"{prefix}_fc" in tell and "--input-att-dir" not in tell
    assert f"--input-att-dir {prefix}_att" in attend
    # The evaluation of a model: waiting, then to do, then done while best_model.pt is the same.
    plan = sweep.Plan(grids.get_grid("smoke-captioning"), str(root))
    model, evaluation = plan.grid.runs[0], plan.grid.runs[1]
    assert evaluation.script == "caption_eval.py" and evaluation.model == model.name
    assert evaluation.log_name == "eval.log"
    assert plan.state(evaluation)[0] == "waiting"
    folder = root / model.name
    folder.mkdir(parents=True)
    runfolder.write_json(folder / "config.json", {"task": "captioning", "args": {}})
    runfolder.write_json(folder / "results.json", {})
    (folder / "best_model.pt").write_bytes(b"best")
    assert plan.state(evaluation)[0] == "start"
    runfolder.write_json(folder / "eval_test.json", {
        "checkpoint": {"sha256": runfolder.file_sha256(folder / "best_model.pt")},
        "metrics": {"CIDEr": 0.5}})
    assert plan.state(evaluation) == ("done", {"message": "test CIDEr 0.500"})
    (folder / "best_model.pt").write_bytes(b"a newer best")
    assert plan.state(evaluation)[0] == "start"
    assert plan.command(evaluation, "start")[1:] == [
        os.path.relpath(ROOT / "caption_eval.py"), "--model-dir", str(folder), "--split", "test",
        "--device", "cpu"]


def test_caption_data_is_checked_whole_and_a_paused_model_without_best_waits(tmp_path, capsys):
    """QA of issue 32: a prefix with labels but no features started every run, each failing;
    an evaluation of a model paused before its first validation failed instead of waiting."""
    prefix = tmp_path / "data" / "shapes"
    prefix.parent.mkdir()
    (tmp_path / "data" / "shapes.json").write_text("{}")
    (tmp_path / "data" / "shapes_labels.npz").write_bytes(b"")
    root = tmp_path / "runs"
    err = one_line_error(capsys, ["run", "smoke-captioning", "--root", root,
                                  "--caption-data", prefix])
    assert f"no {prefix}_fc" in err and not root.exists()
    (tmp_path / "data" / "shapes_fc").mkdir()
    err = one_line_error(capsys, ["run", "smoke-captioning", "--root", root,
                                  "--caption-data", prefix])
    assert f"no {prefix}_att" in err and "without --fc-only" in err
    err = one_line_error(capsys, ["list", "smoke-captioning", "--root", root,
                                  "--caption-data", f"{prefix}.json"])
    assert "without .json" in err
    plan = sweep.Plan(grids.get_grid("smoke-captioning"), str(root), until_epoch=1)
    model, evaluation = plan.grid.runs[0], plan.grid.runs[1]
    folder = root / model.name
    folder.mkdir(parents=True)
    runfolder.write_json(folder / "config.json", {"task": "captioning", "args": {}})
    (folder / "last.pt").write_bytes(b"")
    runfolder.write_state(str(folder), "paused", epoch=1, n_epochs=30)
    state, info = plan.state(evaluation)
    assert state == "waiting" and "no best_model.pt yet" in info["message"]


def test_only_picks_runs_of_a_grid_by_name(tmp_path, capsys):
    """--only PATTERN (repeatable): a seed or a setting of a grid, for run, list and status;
    a pattern that matches nothing is one line naming how runs are called."""
    root = tmp_path / "runs"
    assert run_sweep("run", "smoke", "--root", root, "--only", "copying/T10_p0.25_s3",
                     "--only", "copying/T10_p0.25_s3:*", "--threads", 1) == 0
    assert (root / "copying/T10_p0.25_s3/results.json").exists()
    assert (root / "copying/T10_p0.25_s3/transfer.json").exists()
    assert not (root / "copying/T10_vanilla_s3").exists()
    assert not (root / "copying/T10_p0.5_s3").exists()
    capsys.readouterr()
    assert run_sweep("status", "smoke", "--root", root, "--only", "copying/T10_p0.[25]*") == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]
            if line.startswith("copying/")]
    assert sorted(rows) == ["copying/T10_p0.25_s3", "copying/T10_p0.25_s3:transfer",
                            "copying/T10_p0.5_s3", "copying/T10_p0.5_s3:transfer"]
    assert run_sweep("list", "smoke", "--root", root, "--only", "copying/T10_vanilla_s3") == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1 and "--save-dir" in listed[0] and "T10_vanilla_s3" in listed[0]
    err = one_line_error(capsys, ["list", "smoke", "--root", root, "--only", "T10*"])
    assert "matches no run of smoke" in err and "copying/T10_vanilla_s3" in err
