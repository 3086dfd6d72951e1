"""Run the paper's grids: on this machine, N runs at a time, or as one SLURM job array.

    python sweep.py list   GRID [--root runs]                 # one command per line, nothing run
    python sweep.py run    GRID [--root runs] [--jobs N] [--time-limit 2h30m]
    python sweep.py status GRID [--root runs]
    python sweep.py slurm  GRID --root DIR [--partition P] [--time HH:MM:SS] [--dry-run] ...

The grids are in running/grids.py (``python sweep.py list`` without a grid names them). Each
run lives in ``ROOT/NAME``: a run whose folder holds results.json is done and skipped, one
holding last.pt is continued with --resume, the others start. Stopping is always clean: at
--time-limit, on Ctrl-C or SIGTERM every run gets SIGTERM, saves its last.pt and stops; the same
command later continues every run exactly where it stopped.
"""
import argparse
import dataclasses
import fnmatch
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from tqdm import tqdm

from running.errors import UsageError, report_errors
from running.grids import GRIDS, catalog, get_grid
from running.runfolder import (DamagedFile, RunFolder, atomic_write, check_writable,
                               file_sha256, read_json, transfer_measurements)
from utils import ArgParser, non_negative_int, positive_int

KIT_DIR = os.path.dirname(os.path.abspath(__file__))
SLURM_DIR = ".slurm"
# The SIGTERM a scheduler sends before its kill: how far ahead SLURM is asked to send it. A
# copying epoch ends within seconds of the signal (the run saves at the next iteration); an
# MNIST iteration takes well under a second on a GPU.
SLURM_SIGNAL_LEAD_S = 120


# ----------------------------------------------------------------------------- flags

def time_limit(text):
    """``2h30m``, ``90m``, ``45s``, ``1h``, ``1d2h`` or plain seconds -> seconds (> 0)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
        if not parts or not any(parts.groups()):
            raise argparse.ArgumentTypeError(
                f"expected a duration such as 2h30m, 90m, 45s or seconds, got {text!r}")
        d, h, m, s = (int(x or 0) for x in parts.groups())
        seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return seconds


def slurm_time(text):
    if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", text.strip()):
        raise argparse.ArgumentTypeError(f"expected HH:MM:SS or D-HH:MM:SS, got {text!r}")
    return text.strip()


def until_flag(parser):
    parser.flag("--until-epoch", type=positive_int, default=None, metavar="E",
                help="stop training runs after epoch E (default: the grid's own, if any)")


def flush_flag(parser, threads):
    parser.flag("--flush-denormal", action="store_true",
                help="CPU: pass --flush-denormal to every run (faster on CPUs that slow down on "
                     "denormal floats, but other numbers than without it: docs/speed.md, "
                     f"'Denormals'); {threads}")


def threads_per_run(args, flag, given, default):
    """The threads (or SLURM CPUs) each run gets: ``given``, else ``default``. torch flushes
    denormals on its main thread only, so with --flush-denormal it is 1, and another given
    count is refused here, before anything starts (each run would refuse it on its own)."""
    if not args.flush_denormal:
        return given or default
    if (given or 1) != 1:
        raise UsageError(f"--flush-denormal needs {flag} 1 (not {given}): torch flushes "
                         "denormals on its main thread only")
    return 1


def data_flags(parser):
    parser.flag("--data-dir", default=None, metavar="DIR",
                help="MNIST runs: the --data-dir each gets (made absolute, so it does not "
                     "depend on where the runs start; default: the script's ./MNIST)")
    parser.flag("--no-download", action="store_true",
                help="MNIST runs: never download (passed on as --no-download)")
    parser.flag("--caption-data", default=None, metavar="PREFIX",
                help="captioning runs: the data prepro_captions.py made with --output PREFIX / "
                     "--output-dir PREFIX (PREFIX.json, PREFIX_labels.npz, PREFIX_fc, PREFIX_att; "
                     "made absolute)")


def build_parser():
    parser = ArgParser(prog="sweep.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name, help_text, data=True):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("grid", metavar="GRID", help=f"one of: {', '.join(GRIDS)}")
        sub.flag("--root", default="runs", help="where the run folders go (default runs)")
        sub.flag("--grids", default=None, metavar="FILE",
                 help="a Python file whose GRIDS dict adds grids of your own (see "
                      "running/grids.py)")
        sub.flag("--only", action="append", default=None, metavar="PATTERN",
                 help="only the grid's runs whose name matches PATTERN (shell-style: "
                      "'copying/T300_p0.5_*'; a run's transfer or evaluation is named "
                      "'RUN:transfer' / 'RUN:eval-test'); repeat it for more")
        if data:
            data_flags(sub)
        return sub

    listing = command("list", "print one full command per unfinished run, nothing run")
    until_flag(listing)
    listing.flag("--all", action="store_true", help="also list the runs that are done")
    run = command("run", "run the grid on this machine, N runs at a time")
    run.flag("--jobs", "-j", type=positive_int, default=1, help="runs at a time (default 1)")
    run.flag("--threads", type=positive_int, default=None,
             help="torch threads per run (default: this machine's cores // --jobs)")
    run.flag("--time-limit", type=time_limit, default=None, metavar="DURATION",
             help="stop every run cleanly after this long (2h30m, 90m, 3600, ...)")
    until_flag(run)
    run.flag("--retry-failed", action="store_true",
             help="resume runs that failed before (default: report them and leave them)")
    flush_flag(run, "one torch thread per run, the default with it")
    command("status", "a table of every run of the grid: state, epochs, best accuracy",
            data=False)
    slurm = command("slurm", "submit one SLURM job array, one task per unfinished run")
    slurm.flag("--partition", default=None, help="SLURM partition")
    slurm.flag("--time", type=slurm_time, default="24:00:00",
               help="time limit of each task, HH:MM:SS (default 24:00:00); a task that "
                    "reaches it saves, is requeued and continues")
    slurm.flag("--gpus-per-task", type=non_negative_int, default=1, help="default 1")
    slurm.flag("--cpus-per-task", type=positive_int, default=None,
               help="default 4, or 1 with --flush-denormal")
    slurm.flag("--max-parallel", type=positive_int, default=None, metavar="K",
               help="tasks running at once (--array=...%%K)")
    until_flag(slurm)
    flush_flag(slurm, "one CPU per task, the default with it")
    slurm.flag("--dry-run", action="store_true",
               help="print the batch script and the tasks; submit nothing")
    return parser


def build_task_parser():
    """What the batch script runs in each array task: internal, so not a command that --help
    or a mistyped command's error names."""
    task = ArgParser(prog="sweep.py slurm-task")
    task.add_argument("grid")
    task.flag("--root", required=True)
    task.flag("--grids", default=None)
    task.flag("--tasks-file", required=True)
    task.flag("--index", type=int, required=True)
    task.flag("--until-epoch", type=positive_int, default=None)
    task.flag("--flush-denormal", action="store_true")
    data_flags(task)
    return task


# ----------------------------------------------------------------------------- run states

class Plan:
    """A grid under a root: what each run needs (``state``) and the command that does it."""

    def __init__(self, grid, root, until_epoch=None, known=None, data_args=(), run_args=()):
        self.grid, self.root = grid, root
        self.known = known or GRIDS
        self.data_args = list(data_args)  # the sweep's --data-dir, --no-download, --caption-data
        self.run_args = list(run_args)  # --flush-denormal: for every run, training or transfer
        self.until = until_epoch if until_epoch is not None else grid.until_epoch
        self.by_name = {run.name: run for run in grid.runs}

    def folder(self, run):
        return os.path.join(self.root, run.folder)

    def training_state(self, run):
        """(state, info): state is one of done, reached (paused at or past the --until-epoch
        in force), running, failed, resume, restart (a folder with no checkpoint), start."""
        folder = RunFolder(self.folder(run))
        info = folder.status()
        state = info["state"]
        if state == "done":
            return "done", info
        if state == "running":
            return "running", info
        if self.until is not None and info["epochs"] >= self.until and \
                state in ("paused", "stopped", "interrupted"):
            return "reached", info
        if state == "failed":
            return "failed", info
        if folder.has("last.pt"):
            return "resume", info
        if state == "interrupted":  # config.json but no checkpoint: nothing to keep
            return "restart", info
        return "start", info

    def model_ready(self, run):
        """Whether the model a transfer run tests is there to test (its training run done or
        paused at the --until-epoch in force), and the model run's state."""
        model = self.by_name.get(run.model) or self._run_named(run.model)
        state, _ = self.training_state(model)
        return state in ("done", "reached"), state

    def transfer_state(self, run):
        """done (transfer.json measured on the current best_model.pt at every delay asked),
        waiting (the model is not ready), or start."""
        ready, model_state = self.model_ready(run)
        folder = RunFolder(self.folder(run))
        if not ready:
            words = {"start": "not started", "resume": "not finished", "restart": "not finished"}
            return "waiting", {"message": f"model {run.model}: "
                                          f"{words.get(model_state, model_state)}"}
        if run.script == "caption_eval.py":
            return self.evaluation_state(run, folder)
        try:
            measured = transfer_measurements(folder.transfer() or {},
                                             os.path.join(folder.path, "transfer.json"))
        except DamagedFile:
            measured = []
        seed, size, rng = _transfer_test_set(run)
        ours = [item for item in measured if item["checkpoint"] == "best_model.pt"
                and item["seed"] == seed and item["test_size"] == size
                and item.get("rng", "kit") == rng]  # measured before --rng: the kit's
        if ours and folder.has("best_model.pt"):
            # Other measurements (last.pt, another test set) never count as this run's.
            current = file_sha256(os.path.join(folder.path, "best_model.pt"))
            asked = set(_transfer_delays(run))
            for item in ours:
                if item["checkpoint_sha256"] == current and \
                        asked <= {row["T"] for row in item["results"]}:
                    return "done", {"message": f"model of epoch {item.get('checkpoint_epoch')}"}
            return "start", {"message": "measured on an older best_model.pt (epoch "
                                        f"{ours[-1].get('checkpoint_epoch')}): to measure again"}
        return "start", {}

    def evaluation_state(self, run, folder):
        """A caption_eval.py run: done when its eval_<split>.json was measured on the
        best_model.pt the folder holds now, start otherwise."""
        split = _flag_text(run, "--split") or "test"
        path = os.path.join(folder.path, f"eval_{split}.json")
        if not folder.has("best_model.pt"):
            # a model paused before its first validation has nothing to evaluate yet
            return "waiting", {"message": f"model {run.model}: no best_model.pt yet"}
        if not os.path.isfile(path):
            return "start", {}
        try:
            measured = read_json(path)
            digest = measured["checkpoint"]["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return "start", {"message": f"eval_{split}.json is not readable: to measure again"}
        if folder.has("best_model.pt") and \
                file_sha256(os.path.join(folder.path, "best_model.pt")) == digest:
            cider = measured.get("metrics", {}).get("CIDEr")
            return "done", {"message": "" if cider is None else f"test CIDEr {cider:.3f}"}
        return "start", {"message": "measured on an older best_model.pt: to measure again"}

    def _run_named(self, name):
        for make in self.known.values():
            for run in make().runs:
                if run.name == name:
                    return run
        raise UsageError(f"transfer run of {name}: no grid defines that training run")

    def state(self, run):
        """(state, info) of any run; a run folder with a damaged file is ``damaged`` (left
        alone, its file named) rather than a reason to stop the whole sweep."""
        try:
            return self.transfer_state(run) if run.is_transfer else self.training_state(run)
        except DamagedFile as err:
            return "damaged", {"message": str(err)}

    def command(self, run, state, to_run=False):
        """The command that takes ``run`` on from ``state``, as a list of arguments: to show
        (``python copying.py ...``) or ``to_run`` (this interpreter, the script's full path)."""
        script = os.path.join(KIT_DIR, run.script)
        python = sys.executable if to_run else "python"
        if not to_run:
            script = os.path.relpath(script)
        folder = self.folder(run)
        if run.is_transfer:
            # --flush-denormal is for the copying scripts; caption_eval.py has no such flag.
            passed = self.run_args if run.script == "transfer_copy.py" else []
            return [python, script, "--model-dir", folder, *run.args, *passed]
        extra = {"resume": ["--resume"], "failed": ["--resume"],
                 "restart": ["--overwrite"]}.get(state, [])
        planned = _flag_value(run, "--n-epochs")
        # A run planned to end at or before --until-epoch simply trains to its end (the
        # scripts refuse an --until-epoch past --n-epochs).
        until = ["--until-epoch", str(self.until)] if self.until is not None and (
            planned is None or self.until < planned) else []
        return [python, script, *run.args, "--save-dir", folder, *extra, *until,
                *self.run_data(run), *self.run_args]

    def run_data(self, run):
        """The data flags a training run gets from the sweep's: MNIST's as they are, the
        captioning prefix as caption_train.py's four paths; copying runs need none."""
        given = self.data_args
        if run.script == "pixelmnist.py":
            return [flag for i, flag in enumerate(given) if flag != "--caption-data"
                    and (i == 0 or given[i - 1] != "--caption-data")]
        if run.script == "caption_train.py" and "--caption-data" in given:
            return caption_data_flags(given[given.index("--caption-data") + 1], run)
        return []


def _flag_value(run, flag):
    """The integer value a run's arguments give ``flag``, or None."""
    args = list(run.args)
    return int(args[args.index(flag) + 1]) if flag in args else None


def _flag_text(run, flag):
    args = list(run.args)
    return args[args.index(flag) + 1] if flag in args else None


def _transfer_test_set(run):
    """(seed, test size, rng) of a transfer run's test sequences: its flags, or the defaults
    of transfer_copy.py (the protocol's seed and size, the authors' streams)."""
    args = list(run.args)
    value = {flag: int(args[args.index(flag) + 1]) for flag in ("--seed", "--test-size")
             if flag in args}
    rng = args[args.index("--rng") + 1] if "--rng" in args else "authors"
    return value.get("--seed", 555), value.get("--test-size", 5000), rng


def _transfer_delays(run):
    args = list(run.args)
    start = args.index("--T") + 1
    delays = []
    for value in args[start:]:
        if value.startswith("--"):
            break
        delays.append(int(value))
    return delays


def open_plan(args):
    try:
        known = catalog(args.grids)
        grid = get_grid(args.grid, known)
    except (KeyError, ValueError) as err:
        raise UsageError(err.args[0]) from None
    if getattr(args, "only", None):
        picked = tuple(run for run in grid.runs
                       if any(fnmatch.fnmatchcase(run.name, pattern) for pattern in args.only))
        if not picked:
            raise UsageError(f"--only {' '.join(args.only)} matches no run of {grid.name} "
                             f"(its runs are named like {grid.runs[0].name}; sweep.py list "
                             f"{grid.name} --all shows them)")
        grid = dataclasses.replace(grid, runs=picked)
    if os.path.exists(args.root) and not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root} exists and is not a folder")
    run_args = ["--flush-denormal"] if getattr(args, "flush_denormal", False) else []
    if hasattr(args, "caption_data") and args.caption_data is None and \
            any(run.script == "caption_train.py" for run in grid.runs):
        raise UsageError(f"{grid.name}'s captioning runs need their data: --caption-data PREFIX "
                         "(PREFIX.json, PREFIX_labels.npz, PREFIX_fc, PREFIX_att, as "
                         "prepro_captions.py names them)")
    if getattr(args, "caption_data", None):
        check_caption_data(args.caption_data, grid)
    return Plan(grid, args.root, getattr(args, "until_epoch", None), known, data_args(args),
                run_args)


def data_args(args):
    """The sweep's data flags as given to it (paths made absolute): MNIST's and captioning's.
    ``Plan.run_data`` turns them into each script's own flags."""
    given = []
    if getattr(args, "data_dir", None):
        given += ["--data-dir", os.path.abspath(args.data_dir)]
    if getattr(args, "no_download", False):
        given.append("--no-download")
    if getattr(args, "caption_data", None):
        given += ["--caption-data", os.path.abspath(args.caption_data)]
    return given


def check_caption_data(prefix, grid):
    """Refuse, before any run starts, a --caption-data prefix that lacks what the grid's
    captioning runs read: the labels (PREFIX.json, PREFIX_labels.npz), the fc features and, for
    show_attend_tell, the att features."""
    if prefix.endswith(".json"):
        raise UsageError(f"--caption-data {prefix}: give the prefix without .json "
                         f"(--caption-data {prefix[:-len('.json')]})")
    needed = [(f"{prefix}.json", "prepro_captions.py labels --output PREFIX", os.path.isfile),
              (f"{prefix}_labels.npz", "prepro_captions.py labels --output PREFIX",
               os.path.isfile),
              (f"{prefix}_fc", "prepro_captions.py features --output-dir PREFIX", os.path.isdir)]
    if any(run.script == "caption_train.py" and "show_attend_tell" in run.args
           for run in grid.runs):
        needed.append((f"{prefix}_att", "prepro_captions.py features --output-dir PREFIX "
                                        "(without --fc-only)", os.path.isdir))
    for path, how, there in needed:
        if not there(os.path.abspath(path)):
            raise UsageError(f"--caption-data {prefix}: no {path} (make it with {how})")


def caption_data_flags(prefix, run):
    """caption_train.py's data flags for the prepared data at ``prefix`` (the names
    prepro_captions.py gives its outputs); att features only for the model that reads them."""
    flags = ["--input-json", f"{prefix}.json", "--input-labels", f"{prefix}_labels.npz",
             "--input-fc-dir", f"{prefix}_fc"]
    if "show_attend_tell" in run.args:
        flags += ["--input-att-dir", f"{prefix}_att"]
    return flags


def best_text(info, unit=False):
    """A run's best validation score as a table cell (``99.50``, with ``unit`` ``99.50%``) or,
    for a captioning run, its CIDEr (``CIDEr 0.667``); empty before the first evaluation."""
    best = info.get("best_valid")
    if best is None:
        return ""
    if info.get("best_kind") == "CIDEr":
        return f"CIDEr {best:.3f}"
    return f"{best:.2f}" + ("%" if unit else "")


def short_duration(seconds):
    """3725 -> '1h02m', 90 -> '1m30s', 2 days and more -> '2d5h': a status-table estimate."""
    if seconds < 0.5:
        return "<1s"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def duration_text(seconds):
    """Seconds as --time-limit takes them back: 9000 -> '2h30m', 45 -> '45s'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + \
        (f"{secs}s" if secs else "")
    return text or "1s"


def describe(info):
    if info.get("state") == "not started":
        return ""
    return f"{info.get('epochs')}/{info.get('planned') or '?'}"


# ----------------------------------------------------------------------------- list, status

def cmd_list(args):
    plan = open_plan(args)
    if not os.path.isdir(plan.root):
        # Listing a grid before its first run is what list is for; a typo in --root would list
        # every run as new all the same, so say which it is.
        print(f"# --root {args.root} does not exist yet: every run is listed as new "
              "(sweep.py run creates it)", file=sys.stderr)
    done = waiting = 0
    kinds = set()  # of the runs that wait: transfer, evaluation
    for run in plan.grid.runs:
        state, info = plan.state(run)
        if state == "damaged":
            print(f"# {run.name}: {info['message']}", file=sys.stderr)
            continue
        if state in ("done", "reached") and not args.all:
            done += 1
            continue
        if state == "waiting":
            # Not listed: a parallel runner would start it before its model exists. It is
            # listed by a later call, once its model is done or paused at --until-epoch.
            waiting += 1
            kinds.add("evaluation" if run.script == "caption_eval.py" else "transfer")
            print(f"# not listed: {run.name}, {info['message']}", file=sys.stderr)
            continue
        line = shlex.join(plan.command(run, state))
        # With --all, finished runs are shown commented out: the listing stays safe to pipe.
        print(f"# {state}: {line}" if state in ("done", "reached") else line)
    if done:
        print(f"# {done} run(s) done or paused at --until-epoch {plan.until}, not listed "
              "(--all lists them)" if plan.until else f"# {done} run(s) done, not listed "
              "(--all lists them)", file=sys.stderr)
    if waiting:
        print(f"# {waiting} {' and '.join(sorted(kinds))} run(s) wait for their model: run "
              "the listed commands to the end, then list again", file=sys.stderr)
    return 0


def cmd_status(args):
    plan = open_plan(args)
    if not os.path.isdir(plan.root):
        raise UsageError(f"--root {args.root} does not exist: no run of {plan.grid.name} has "
                         f"started there (a typo? sweep.py run {plan.grid.name} creates it)")
    rows, estimated = [], False
    for run in plan.grid.runs:
        state, info = plan.state(run)
        if state == "damaged":
            rows.append((run.name, "damaged", "", "", "", "", "", info["message"]))
            continue
        if run.is_transfer:
            shown = {"done": "done", "waiting": "waiting for its model",
                     "start": "out of date" if info.get("message") else "not started"}[state]
            rows.append((run.name, shown, "", "", "", "", "", info.get("message") or ""))
            continue
        folder = RunFolder(plan.folder(run))
        raw = folder.status()
        shown = {"not started": "not started", "running": "running", "done": "done",
                 "failed": "failed"}.get(raw["state"])
        if raw["state"] == "not started":
            # started, but refused before it wrote anything but its log (a bad flag in a grid
            # of one's own): its log's last line says why
            said = last_line(os.path.join(plan.folder(run), run.log_name))
            if said and not said.startswith("== "):
                shown, raw["message"] = "failed to start", said
        if shown is None:
            word = {"paused": "paused", "stopped": "stopped",
                    "interrupted": "interrupted"}[raw["state"]]
            shown = f"{word} at epoch {raw['epochs']} of {raw['planned'] or '?'}"
        best = best_text(raw)
        pace, to_go = raw["epoch_s"], ""
        target = min((t for t in (raw["planned"], plan.until) if t), default=None)
        if pace is not None and target is not None and raw["state"] not in ("done", "failed") \
                and raw["epochs"] < target:
            to_go = short_duration((target - raw["epochs"]) * pace)
            estimated = True
        rows.append((run.name, shown, describe(raw), best,
                     "" if pace is None else f"{pace:.0f}" if pace >= 10 else f"{pace:.1f}",
                     to_go, folder.numerics_label() if folder.has("config.json") else "",
                     raw.get("message") or ""))
    # A grid of accuracy runs reads "best valid %"; where captioning runs (CIDEr cells) stand
    # in it, the cells carry their own units.
    mixed = any(row[3].startswith("CIDEr") for row in rows)
    if mixed:
        rows = [row[:3] + ((f"{row[3]} %" if row[3] and not row[3].startswith("CIDEr")
                            else row[3]),) + row[4:] for row in rows]
    header = ("run", "state", "epochs", "best valid" if mixed else "best valid %", "s/epoch",
              "to go", "numerics", "note")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    if estimated:
        goal = f"epoch {plan.until} (--until-epoch)" if plan.until else "its last epoch"
        print(f"s/epoch: median of the last 10 epochs; to go: time to {goal} at that pace")
    counts = {}
    for row in rows:
        counts[row[1].split(" at ")[0]] = counts.get(row[1].split(" at ")[0], 0) + 1
    print(f"{len(rows)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


# ----------------------------------------------------------------------------- run locally

def last_line(path):
    """The last non-empty line of a log file (what a failed run said last)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            lines = [line.strip() for line in handle.read().decode(errors="replace")
                     .splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def start_child(plan, run, state, origin, threads, new_session=False):
    """Start the command that takes ``run`` on from ``state`` as a child process with
    ``threads`` torch threads, its output appended to the run's log after a header line naming
    ``origin`` (who started it). Returns (process, open log handle, command)."""
    folder = plan.folder(run)
    os.makedirs(folder, exist_ok=True)
    command = plan.command(run, state, to_run=True)
    log = open(os.path.join(folder, run.log_name), "a")
    log.write(f"== {time.strftime('%Y-%m-%dT%H:%M:%S')} {origin} {state}: "
              f"{shlex.join(command)}\n")
    log.flush()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=new_session,
                            cwd=os.getcwd())
    return proc, log, command


class LocalSweep:
    """Runs a plan's work as child processes, ``jobs`` at a time."""

    def __init__(self, plan, jobs, threads, time_limit_s, retry_failed):
        self.plan, self.jobs, self.threads = plan, jobs, threads
        self.deadline = time.monotonic() + time_limit_s if time_limit_s else None
        self.retry_failed = retry_failed
        self.running = {}       # name -> (Popen, run, log handle)
        self.failed, self.stopped, self.finished = [], [], []
        self.unsaved = []  # stopped before they had anything to save: they start again
        self.stop_reason = None
        self.done = self.total = 0  # runs this sweep has taken through, of how many

    def _handle(self, signum, frame):
        self.stop_reason = signal.Signals(signum).name

    def say(self, text):
        tqdm.write(f"[{self.done}/{self.total}] {text}" if self.total else text)
        sys.stdout.flush()

    def launch(self, run, state):
        # Its own session: a Ctrl-C at the terminal reaches the sweep alone, which then stops
        # every run the same clean way.
        proc, log, _ = start_child(self.plan, run, state, "sweep", self.threads,
                                   new_session=True)
        self.running[run.name] = (proc, run, log)
        verb = {"start": "start", "resume": "resume", "restart": "restart", "failed": "retry"}
        self.say(f"{verb.get(state, state):>7}  {run.name}  (log: "
                 f"{os.path.join(self.plan.folder(run), run.log_name)})")

    def reap(self, name, bar):
        proc, run, log = self.running.pop(name)
        log.close()
        self.advance(bar)
        folder = self.plan.folder(run)
        if proc.returncode == -signal.SIGTERM and self.stop_reason:
            # Our SIGTERM came before the run had set up its clean stop (while it was still
            # loading), or while a transfer measured: nothing of it was saved yet, and nothing
            # was lost.
            self.stopped.append(run.name)
            self.unsaved.append(run.name)
            what = ("before it wrote its measurement" if run.is_transfer else
                    "while it was starting, before it trained")
            self.say(f"stopped  {run.name} {what} (nothing lost)")
            return
        if proc.returncode != 0:
            line = last_line(os.path.join(folder, run.log_name))
            self.failed.append(run.name)
            self.say(f" FAILED  {run.name} (exit {proc.returncode}): {line}")
            return
        if run.is_transfer:
            self.finished.append(run.name)
            self.say(f"   done  {run.name}")
            return
        info = RunFolder(folder).status()
        if info["state"] == "done":
            self.finished.append(run.name)
            self.say(f"   done  {run.name}: {info['epochs']} epoch"
                     f"{'' if info['epochs'] == 1 else 's'}, best valid "
                     f"{best_text(info, unit=True)}")
        elif info["state"] == "paused":
            self.finished.append(run.name)
            self.say(f" paused  {run.name} at epoch {info['epochs']} of {info['planned']} "
                     f"(--until-epoch {self.plan.until})")
        else:
            self.stopped.append(run.name)
            self.say(f"stopped  {run.name} at epoch {info['epochs']} of {info['planned']}, "
                     "last.pt saved")

    def work(self):
        """The runs that need this sweep, in grid order, with their states now."""
        todo, notes = [], []
        for run in self.plan.grid.runs:
            state, info = self.plan.state(run)
            if state in ("done", "reached"):
                continue
            if state == "running":
                notes.append(f"   skip  {run.name}: running in another process "
                             f"({info.get('message')})")
            elif state == "damaged":
                self.failed.append(run.name)
                notes.append(f"   skip  {run.name}: {info['message']}")
            elif state == "failed" and not self.retry_failed:
                self.failed.append(run.name)
                notes.append(f"   skip  {run.name}: failed before ({info.get('message')}); "
                             "--retry-failed resumes it")
            else:
                todo.append(run)
        return todo, notes

    def go(self):
        todo, notes = self.work()
        for note in notes:
            self.say(note)
        if not todo:
            self.say("nothing to do: every run of the grid is done, paused at --until-epoch, "
                     "running elsewhere or failed")
            return
        previous = {sig: signal.signal(sig, self._handle)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        self.total = len(todo)
        # The bar shows on a terminal; in a log file the numbered lines carry the progress.
        bar = tqdm(total=len(todo), desc=f"{self.plan.grid.name}", unit="run", disable=None)
        try:
            self._loop(todo, bar)
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self, todo, bar):
        pending = list(todo)
        while pending or self.running:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.stop_reason = self.stop_reason or "time limit"
            if self.stop_reason:
                self._stop_all(bar)
                return
            # A free slot goes first to a transfer or evaluation whose model is ready (minutes),
            # then to training (hours): in grid order alone, a model paused at its stage waited
            # for its measurement until every later training run of the grid had stopped.
            for run in sorted(pending, key=lambda run: not run.is_transfer):
                if len(self.running) >= self.jobs:
                    break
                if run.is_transfer:
                    if run.model in self.running or any(
                            other.name == run.model for other in pending):
                        continue  # its model is still training in this sweep
                    state, info = self.plan.state(run)
                    if state == "waiting":
                        pending.remove(run)
                        self.advance(bar)
                        self.say(f"   skip  {run.name}: {info['message']} (not ready)")
                        continue
                    if state == "done":
                        pending.remove(run)
                        self.advance(bar)
                        continue
                else:
                    state, _ = self.plan.state(run)
                    if state in ("done", "reached", "running", "damaged"):
                        pending.remove(run)
                        self.advance(bar)
                        continue
                pending.remove(run)
                self.launch(run, state)
            for name, (proc, _, _) in list(self.running.items()):
                if proc.poll() is not None:
                    self.reap(name, bar)
            time.sleep(0.2)

    def advance(self, bar):
        self.done += 1
        bar.update()

    def _stop_all(self, bar):
        self.say(f"{self.stop_reason}: stopping {len(self.running)} run(s) cleanly (SIGTERM, "
                 "each saves its last.pt)")
        for proc, _, _ in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, (proc, _, _) in list(self.running.items()):
            proc.wait()
            self.reap(name, bar)


def cmd_run(args):
    plan = open_plan(args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    threads = threads_per_run(args, "--threads", args.threads, max(1, cores // args.jobs))
    check_writable(plan.root, "--root")
    os.makedirs(plan.root, exist_ok=True)
    sweep = LocalSweep(plan, args.jobs, threads, args.time_limit, args.retry_failed)
    print(f"{plan.grid.name}: {len(plan.grid.runs)} runs under {plan.root}, {args.jobs} at a "
          f"time, {threads} torch thread(s) each"
          + (f", training runs stop after epoch {plan.until}" if plan.until else ""),
          flush=True)
    sweep.go()
    # Every flag that decides what the runs compute or how fast (threads change CPU sums),
    # so the continued sweep is the same sweep.
    again = shlex.join(["python", "sweep.py", "run", plan.grid.name, "--root", plan.root,
                        "--jobs", str(args.jobs), "--threads", str(threads)]
                       + (["--grids", args.grids] if args.grids else [])
                       + (["--until-epoch", str(args.until_epoch)] if args.until_epoch else [])
                       + (["--time-limit", duration_text(args.time_limit)]
                          if args.time_limit else [])
                       + (["--retry-failed"] if args.retry_failed else [])
                       + plan.run_args + plan.data_args)
    if sweep.stop_reason:
        saved = [name for name in sweep.stopped if name not in sweep.unsaved]
        what = "every run saved its state" if not sweep.unsaved else (
            f"{len(saved)} run(s) saved their state; {len(sweep.unsaved)} stopped before their "
            f"first checkpoint and will start again: {', '.join(sweep.unsaved)}")
        print(f"stopped ({sweep.stop_reason}); {what}. Continue with:\n"
              f"  {again}", flush=True)
    summary = (f"{len(sweep.finished)} finished or paused, {len(sweep.stopped)} stopped, "
               f"{len(sweep.failed)} failed")
    print(summary + (f": {', '.join(sweep.failed)}" if sweep.failed else ""), flush=True)
    return 1 if sweep.failed else 0


# ----------------------------------------------------------------------------- SLURM
# The batch script is generated here rather than through submitit: submitit pickles a Python
# callable per task (our runs are plain commands with their own resume logic), signals USR2
# (our scripts save on SIGTERM, which is also what preemption sends), and its local executor
# has no concurrency cap. A job array with "%K", --signal, --requeue and --open-mode=append is
# all SLURM needs to run, stop, requeue and continue these runs.

def slurm_groups(plan):
    """The array's tasks: each unfinished training run with the transfer runs of its model
    (which run in the same task, after it), and transfer runs whose model is not in the
    grid. A group is left out when all of it is done."""
    groups, placed = [], set()
    for run in plan.grid.runs:
        if run.is_transfer and run.model in plan.by_name:
            continue
        group = [run] + [other for other in plan.grid.runs
                         if other.is_transfer and other.model == run.name]
        placed.update(member.name for member in group)
        states = [plan.state(member)[0] for member in group]
        if all(state in ("done", "reached") for state in states) or (
                not run.is_transfer and states[0] in ("running", "damaged")):
            continue
        groups.append([member.name for member in group])
    return groups


def batch_script(plan, args, tasks_file, count, cpus):
    root = os.path.abspath(plan.root)
    logs = os.path.join(root, SLURM_DIR)
    array = f"0-{count - 1}" + (f"%{args.max_parallel}" if args.max_parallel else "")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=hdetach-{plan.grid.name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --cpus-per-task={cpus}",
        "#SBATCH --ntasks=1",
        # SIGTERM to this script (B:) ahead of the time limit: the task stops its run cleanly
        # and requeues itself; preemption sends SIGTERM too.
        f"#SBATCH --signal=B:TERM@{SLURM_SIGNAL_LEAD_S}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={logs}/%A_%a.out",
    ]
    if args.gpus_per_task:
        lines.append(f"#SBATCH --gpus-per-task={args.gpus_per_task}")
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    until = ["--until-epoch", str(plan.until)] if plan.until else []
    grids = ["--grids", os.path.abspath(args.grids)] if args.grids else []
    task = [sys.executable, os.path.join(KIT_DIR, "sweep.py"), "slurm-task", plan.grid.name,
            "--root", root, "--tasks-file", tasks_file, *grids, *until, *plan.data_args,
            *plan.run_args]
    lines += [
        "",
        "# One task of the array: the runs on line SLURM_ARRAY_TASK_ID of the tasks file.",
        f"cd {shlex.quote(os.getcwd())}",
        'echo "== $(date -Is) task ${SLURM_ARRAY_TASK_ID} of job ${SLURM_ARRAY_JOB_ID} '
        '(restart ${SLURM_RESTART_COUNT:-0}) on $(hostname)"',
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        f"exec {shlex.join(task)} --index \"${{SLURM_ARRAY_TASK_ID}}\"",
        "",
    ]
    return "\n".join(lines)


def cmd_slurm(args):
    plan = open_plan(args)
    cpus = threads_per_run(args, "--cpus-per-task", args.cpus_per_task, 4)
    if args.flush_denormal and args.gpus_per_task:
        print(f"note: --flush-denormal changes only CPU runs, and each task gets "
              f"{args.gpus_per_task} GPU(s) (--gpus-per-task 0 for a CPU partition)",
              file=sys.stderr)
    groups = slurm_groups(plan)
    if not groups:
        print(f"nothing to submit: every run of {plan.grid.name} under {plan.root} is done"
              + (f" or paused at --until-epoch {plan.until}" if plan.until else "")
              + " (or running)")
        return 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tasks_file = os.path.join(os.path.abspath(plan.root), SLURM_DIR,
                              f"{plan.grid.name}-{stamp}.tasks")
    script = batch_script(plan, args, tasks_file, len(groups), cpus)
    tasks_text = "".join(" ".join(group) + "\n" for group in groups)
    if args.dry_run:
        print(script)
        print(f"# tasks ({tasks_file}, not written):")
        for index, group in enumerate(groups):
            print(f"#   {index}: {' '.join(group)}")
        return 0
    from shutil import which
    if which("sbatch") is None:
        raise UsageError("sbatch not found on PATH: run this on a SLURM login node "
                         "(--dry-run prints the batch script)")
    check_writable(plan.root, "--root")
    os.makedirs(os.path.dirname(tasks_file), exist_ok=True)
    atomic_write(tasks_file, lambda handle: handle.write(tasks_text.encode()))
    script_path = tasks_file[:-len(".tasks")] + ".sbatch"
    atomic_write(script_path, lambda handle: handle.write(script.encode()))
    done = subprocess.run(["sbatch", "--parsable", script_path], capture_output=True,
                          text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UsageError(f"sbatch refused the job: {reason} (script: {script_path})")
    job = done.stdout.strip().split(";")[0]
    print(f"submitted job {job}: {len(groups)} task(s) of {plan.grid.name}; script "
          f"{script_path}; logs in {os.path.dirname(tasks_file)}/{job}_*.out and each run's "
          f"folder. 'python sweep.py status {plan.grid.name} --root {plan.root}' shows them.")
    return 0


def cmd_slurm_task(args):
    """One array task: run its line's runs in order; on SIGTERM stop the current run cleanly
    and ask SLURM to requeue this task, which then continues where it stopped."""
    plan = open_plan(args)
    with open(args.tasks_file) as handle:
        lines = handle.read().splitlines()
    if not 0 <= args.index < len(lines):
        raise UsageError(f"task {args.index} is not in {args.tasks_file} ({len(lines)} tasks)")
    names = lines[args.index].split()
    received = {}

    def on_term(signum, frame):
        received["signal"] = signal.Signals(signum).name
        child = received.get("child")
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threads = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("OMP_NUM_THREADS") or "1"
    for name in names:
        run = plan.by_name[name]
        state, info = plan.state(run)
        if state in ("done", "reached", "waiting", "running", "damaged"):
            print(f"{name}: {state}" + (f" ({info.get('message')})"
                                        if info.get("message") else ""), flush=True)
            continue
        origin = f"slurm task {os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{args.index}"
        child, log, command = start_child(plan, run, state, origin, threads)
        print(f"{name}: {state}: {shlex.join(command)}", flush=True)
        with log:
            received["child"] = child
            if "signal" in received:  # arrived between runs
                child.send_signal(signal.SIGTERM)
            code = child.wait()
        if "signal" in received:
            # Stopped by our SIGTERM: a training run saved its last.pt (exit 0); a transfer run
            # or a run still loading was killed (-SIGTERM) and simply runs again.
            break
        if code != 0:
            print(f"{name}: failed (exit {code}): "
                  f"{last_line(os.path.join(plan.folder(run), run.log_name))}", flush=True)
            return 1
    if "signal" in received:
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        task_id = os.environ.get("SLURM_ARRAY_TASK_ID")
        target = f"{job}_{task_id}" if job and task_id else os.environ.get("SLURM_JOB_ID")
        print(f"{received['signal']}: runs saved; requeueing {target}", flush=True)
        if target:
            subprocess.run(["scontrol", "requeue", target], check=False)
        return 0
    return 0


def parse_args(argv):
    """The public commands, or the internal ``slurm-task`` that batch scripts run."""
    if argv[:1] == ["slurm-task"]:
        args = build_task_parser().parse_args(argv[1:])
        args.command = "slurm-task"
        return args
    return build_parser().parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    handlers = {"list": cmd_list, "run": cmd_run, "status": cmd_status, "slurm": cmd_slurm,
                "slurm-task": cmd_slurm_task}
    return report_errors(lambda: handlers[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
