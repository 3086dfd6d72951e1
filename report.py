"""The paper's tables and figures, from run folders: our numbers beside the paper's.

    python report.py results                    # writes results/report.md, report.json, *.png
    python report.py runs --out /tmp/report     # somewhere else
    python report.py results --readme README.md # also regenerate README.md's marked block

Reads every run folder under ROOT (a folder with a config.json, at any depth; hidden folders
such as .slurm are skipped): config.json, metrics.csv, results.json once finished,
transfer.json if any, and the run's state. Runs are grouped into settings by everything that
defines a run except the seed; runs of different settings are never averaged together. Every
number says how complete its run is ("epochs done / planned"); a run that has not finished is
never presented as final.

Writes into --out (default ROOT): report.md (the tables), report.json (the same numbers for
programs), valid_accuracy.png (validation accuracy against epoch, one panel per experiment)
and transfer.png (transfer copying accuracy against T', when any run has a transfer.json).
With --readme PATH, the lines between ``<!-- report:begin -->`` and ``<!-- report:end -->`` in
PATH are replaced by the tables; nothing else in the file changes.
"""
import functools
import json
import math
import os
import statistics
import sys
import textwrap
from collections import namedtuple

from runfolder import RUN_FILES, DamagedFile, RunFolder, atomic_write, file_sha256
from utils import PREDATED_VALUES, RESUMABLE_KEYS, ArgParser, UsageError, report_errors

TASKS = ("copying", "pixelmnist")
# Arguments that say where or how one process ran, not what was trained: never part of a
# setting (a run resumed on another device, or moved, is the same run).
# These are exactly the keys a resume may change.
PROCESS_KEYS = frozenset(RESUMABLE_KEYS)
# Which random draws a run made (its seed, and whose streams, --rng), not what was trained:
# runs that differ only there are seeds of one setting.
STREAM_KEYS = frozenset({"seed", "rng"})
# Arguments shown by the setting's own label or its experiment, never as a modifier.
LABEL_KEYS = frozenset({"seed", "p_detach", "detach", "T", "permute"})
TRANSFER_T = (200, 400, 500, 1000, 2000, 5000)  # the paper's transfer table
SOLVED = 99.0  # "solved" copying: the first epoch with validation accuracy >= this (%)
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"

# ----------------------------------------------------------------------------- references

PAPER = "paper"
AUTHORS = "authors' README"
REPRO = "reproduction report"
SOURCES = {
    PAPER: "Kanuparthi et al., h-detach, ICLR 2019 (arXiv 1810.03023)",
    AUTHORS: "the README of the authors' public scripts",
    REPRO: "the ICLR 2019 reproducibility-challenge report by the reproduction fork's authors "
           "(GTX 1060 / K80, copying runs cut to 200-300 epochs, 2-3 seeds); curve readings "
           "are approximate",
}

# One reference number or observation. ``experiment`` and ``setting`` use this module's own
# names (see ``experiment_name`` and ``base_label``); ``setting`` None: about the whole
# experiment. ``kind``: test_accuracy (the reported number), transfer (accuracy at delay
# ``at``), valid_at (a curve reading: ``value`` % at epoch ``at``), valid_max (best or upper
# bound, ``at`` the epoch it holds to, if any), solved_at (~100 % first reached at epoch ``at``,
# a number or a (low, high) range), note (words only). ``text`` is what the source says.
Ref = namedtuple("Ref", "experiment setting kind value at source where text")

# Every reference number of the report, all from ../shared/reference/protocol.md, which
# restates the paper's tables and text, the authors' README and the reproduction report.
REFERENCE = (
    # The paper's MNIST / pMNIST table (h-detach: p = 0.25, the paper's choice for MNIST).
    Ref("MNIST", "vanilla", "test_accuracy", 98.6, None, PAPER, "MNIST / pMNIST table",
        "98.6"),
    Ref("MNIST", "h-detach p=0.25", "test_accuracy", 98.8, None, PAPER, "MNIST / pMNIST table",
        "98.8"),
    Ref("pMNIST", "vanilla", "test_accuracy", 90.9, None, PAPER, "MNIST / pMNIST table",
        "90.9"),
    Ref("pMNIST", "h-detach p=0.25", "test_accuracy", 92.9, None, PAPER, "MNIST / pMNIST table",
        "92.9"),
    Ref("MNIST", "h-detach p=0.25", "test_accuracy", 98.5, None, AUTHORS, "results",
        "98.5 (seed 250)"),
    Ref("pMNIST", "h-detach p=0.25", "test_accuracy", 92.3, None, AUTHORS, "results",
        "92.3 (seed 150)"),
    Ref("MNIST", "vanilla", "test_accuracy", 98.60, None, REPRO, "pixel MNIST", "98.60"),
    Ref("MNIST", "h-detach p=0.25", "test_accuracy", 98.62, None, REPRO, "pixel MNIST",
        "98.62 (seed 400)"),
    Ref("pMNIST", "h-detach p=0.25", "test_accuracy", 91.92, None, REPRO, "permuted MNIST",
        "91.92 (seed 400)"),
    Ref("pMNIST", "h-detach p=0.25", "test_accuracy", 91.96, None, REPRO, "permuted MNIST",
        "91.96 (best)"),
    Ref("MNIST", "h-detach p=0.25", "valid_at", 95, 50, REPRO, "pixel MNIST curves",
        "~95 % by epoch 50"),
    Ref("MNIST", "vanilla", "valid_at", 10, 50, REPRO, "pixel MNIST curves",
        "fell to ~10 % around epochs 40-60"),
    Ref("MNIST", "vanilla", "valid_at", 95, 100, REPRO, "pixel MNIST curves",
        "~95 % only around epoch 100; ~98 % by epoch 150"),
    Ref("pMNIST", "h-detach p=0.25", "valid_at", 87, 30, REPRO, "permuted MNIST curves",
        "~87 % at epoch 30, 89-90 % at 100-160, ~92 % after annealing switches h-detach off"),
    # Copying: the paper's text and the reproduction's curves.
    Ref("copying T=100", "vanilla", "solved_at", 100, 150, PAPER, "copying",
        "~100 % for most seeds, in around 150 epochs"),
    Ref("copying T=100", None, "note", None, None, PAPER, "copying",
        "h-detach reaches ~100 % faster than vanilla"),
    Ref("copying T=100", "vanilla", "solved_at", 100, (125, 130), REPRO, "copying T = 100",
        "one run ~100 % at about epoch 125-130"),
    Ref("copying T=100", "h-detach p=0.5", "solved_at", 100, (90, 100), REPRO, "copying T = 100",
        "one run ~100 % at about epoch 90-100"),
    Ref("copying T=100", "h-detach p=0.25", "solved_at", 100, (165, 180), REPRO,
        "copying T = 100", "one run ~100 % at about epoch 165-180"),
    Ref("copying T=100", None, "note", None, None, REPRO, "copying T = 100",
        "other seeds of every setting were still at 60-97 % at epoch 200"),
    Ref("copying T=300", "vanilla", "valid_max", 82, None, PAPER, "copying",
        "~82 % at best, many seeds much worse"),
    Ref("copying T=300", "h-detach p=0.25", "note", None, None, PAPER, "copying",
        "100 % quickly and robustly across seeds"),
    Ref("copying T=300", "h-detach p=0.5", "note", None, None, PAPER, "copying",
        "100 % quickly and robustly across seeds"),
    Ref("copying T=300", "vanilla", "valid_at", 80, 225, REPRO, "copying T = 300",
        "~80 % at epoch 225 (one seed)"),
    Ref("copying T=300", "vanilla", "valid_at", 39, 200, REPRO, "copying T = 300",
        "~39 % at epoch 200 (another seed)"),
    Ref("copying T=300", "h-detach p=0.5", "solved_at", 100, 230, REPRO, "copying T = 300",
        "one run ~100 % from about epoch 230"),
    Ref("copying T=300", None, "note", None, None, REPRO, "copying T = 300",
        "only h-detach runs crossed 80 %; p = 0.5 did best"),
    # The paper's transfer copying table (models trained at T = 100).
    *(Ref("transfer T=100", setting, "transfer", value, delay, PAPER, "transfer copying table",
          f"{value:.2f}")
      for setting, row in (("vanilla", (64.85, 48.17, 43.03, 28.82, 19.48, 14.58)),
                           ("h-detach p=0.5", (74.79, 54.91, 52.43, 43.54, 34.34, 24.55)),
                           ("h-detach p=0.25", (90.72, 77.76, 74.68, 63.19, 51.83, 42.35)))
      for delay, value in zip(TRANSFER_T, row)),
    # Ablations.
    Ref("copying T=100, c-detach", None, "note", None, None, PAPER, "ablations",
        "detaching c instead of h: copying T = 100 does not converge in 500 epochs"),
    Ref("copying T=100, c-detach", "c-detach p=0.25", "valid_max", 40, 200, REPRO, "ablations",
        "did not cross 40 % in 200 epochs"),
    Ref("MNIST, c-detach", None, "valid_max", 60, None, PAPER, "ablations",
        "detaching c instead of h: MNIST stays under 60 %"),
    Ref("MNIST, c-detach", "c-detach p=0.25", "valid_max", 89.65, None, REPRO, "ablations",
        "crossed 80 % but very unstable, best 89.65 %"),
    Ref("MNIST, no clipping, lr=5e-4", None, "note", None, None, PAPER, "ablations",
        "without clipping vanilla becomes unstable, h-detach stays stable across learning "
        "rates"),
    Ref("MNIST, no clipping, lr=5e-4", "vanilla", "valid_at", 10, 100, REPRO, "ablations",
        "near 10 % for ~100 epochs"),
    Ref("MNIST, no clipping, lr=5e-4", "vanilla", "valid_max", 47, None, REPRO, "ablations",
        "peaked at ~47 %"),
    Ref("MNIST, no clipping, lr=5e-4", "h-detach p=0.25", "valid_max", 97, None, REPRO,
        "ablations", "reached ~97 % (p as the paper's MNIST runs)"),
    Ref("MNIST, no clipping, lr=1e-4", "vanilla", "valid_at", 71, 200, REPRO, "ablations",
        "~71 % at epoch 200"),
    Ref("MNIST, no clipping, lr=1e-4", "h-detach p=0.25", "valid_at", 85, 200, REPRO,
        "ablations", "~85 % at epoch 200 (p as the paper's MNIST runs)"),
)
# The experiments with reference numbers, in the order the report shows them.
MAIN_EXPERIMENTS = ("copying T=100", "copying T=300", "MNIST", "pMNIST")


def reference_settings(experiment):
    """The settings an experiment's references are about: vanilla, then by p, c-detach last."""
    bases = {ref.setting for ref in references(experiment) if ref.setting is not None}
    return sorted(bases, key=lambda base: (base != "vanilla", base.startswith("c"), base))


def references(experiment, setting="any", kind=None, source=None):
    return [ref for ref in REFERENCE if ref.experiment == experiment
            and (setting == "any" or ref.setting == setting)
            and (kind is None or ref.kind == kind) and (source is None or ref.source == source)]


# ----------------------------------------------------------------------------- settings

@functools.lru_cache(maxsize=None)
def task_defaults(task):
    """The training script's current defaults (the authors' protocol): what a run made before
    a flag existed is taken to have used, as ``--resume`` does, and what labels compare to."""
    if task == "copying":
        import copying as script
    else:
        import pixelmnist as script
    parser = script.build_parser()
    return {action.dest: action.default for action in parser._actions
            if action.dest not in ("help", "save_dir")}


def normalise_args(task, args):
    """The run's arguments as its setting sees them: flags the run predates take the value
    they had in effect (``PREDATED_VALUES``: ``rng`` kit) or today's defaults; a missing
    ``detach`` is h-detach (the only kind before the flag); p <= 0 is
    plain BPTT whatever its value and whichever state it would detach, so all of it is one
    setting; so is every clip value <= 0 (no clipping)."""
    merged = {**task_defaults(task), **PREDATED_VALUES, **args}
    merged.setdefault("detach", "h")
    if merged.get("p_detach") is None or merged["p_detach"] <= 0:
        merged["p_detach"], merged["detach"] = -1.0, "h"
    if merged.get("clip") is not None and merged["clip"] <= 0:
        merged["clip"] = 0.0  # every clip value <= 0 means no clipping
    return merged


def setting_key(task, args):
    """Everything that defines what was trained, except the seed, as a canonical string."""
    return json.dumps([task, {key: value for key, value in sorted(args.items())
                              if key not in PROCESS_KEYS and key not in STREAM_KEYS}],
                      sort_keys=True)


def fmt_lr(value):
    """5e-4 rather than 0.0005: learning rates as papers write them."""
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def base_label(args):
    p = args["p_detach"]
    if p <= 0:
        return "vanilla"
    return f"{'c' if args.get('detach') == 'c' else 'h'}-detach p={p:g}"


def experiment_name(task, args):
    """The experiment (a panel of the figure): task and delay or permutation, plus the
    ablation a setting belongs to (c-detach; no clipping, with its learning rate)."""
    name = f"copying T={args['T']}" if task == "copying" else \
        ("pMNIST" if args.get("permute") else "MNIST")
    if args.get("detach") == "c" and args["p_detach"] > 0:
        name += ", c-detach"
    if args.get("clip", 1.0) <= 0:
        name += f", no clipping, lr={fmt_lr(args['lr'])}"
    return name


def is_ablation(experiment):
    return "," in experiment


def modifier(task, key, value):
    names = {"lr": lambda v: f"lr={fmt_lr(v)}",
             "clip": lambda v: "no clipping" if v <= 0 else f"clip {v:g}",
             "lstm_size": lambda v: f"hidden {v}", "batch_size": lambda v: f"batch {v}",
             "n_epochs": lambda v: f"{v} epochs planned",
             "anneal_p": lambda v: f"anneal-p {v}", "train_size": lambda v: f"train {v}",
             "valid_size": lambda v: f"valid {v}",
             # copying's --test-size is the number of validation sequences
             "test_size": lambda v: f"valid {v}" if task == "copying" else f"test {v}"}
    return names[key](value) if key in names else f"{key}={value}"


def modifiers(task, args, experiment, varying):
    """What sets a setting apart from the authors' protocol, beyond its label and experiment:
    each argument that differs from the script's default (and, for an argument the script no
    longer knows, each that differs between the task's runs)."""
    defaults = task_defaults(task)
    shown = []
    for key in sorted(args):
        if key in PROCESS_KEYS or key in LABEL_KEYS or key in STREAM_KEYS:
            continue
        if key in ("clip", "lr") and "no clipping" in experiment:
            continue
        if (key in defaults and args[key] != defaults[key]) or \
                (key not in defaults and key in varying and args[key] is not None):
            shown.append(modifier(task, key, args[key]))
    return shown


# ----------------------------------------------------------------------------- reading runs

def warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def find_run_folders(root):
    """(run folders, folders that hold run files but no config.json), sorted."""
    runs, orphans = [], []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        if "config.json" in files:
            runs.append(folder)
        elif any(name in RUN_FILES for name in files):
            orphans.append(folder)
    return runs, orphans


def best_of(rows, strict):
    """(best validation accuracy, its epoch) from metrics rows, by the script's own rule:
    copying keeps the model at every epoch at least as good (the last epoch with the best
    accuracy); pixel MNIST only at a strict improvement (the first)."""
    best, epoch = None, None
    for row in rows:
        accuracy = row["valid_accuracy"]
        if accuracy is None or not math.isfinite(accuracy):
            continue
        if best is None or accuracy > best or (accuracy == best and not strict):
            best, epoch = accuracy, row["epoch"]
    return best, epoch


def read_run(path, root):
    """One run's numbers, or raise ``DamagedFile`` naming the file that cannot be read."""
    folder = RunFolder(path)
    config = folder.config()
    config_path = os.path.join(path, "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("args"), dict):
        raise DamagedFile(f"{config_path}: no task and arguments in it")
    task = config.get("task")
    if task not in TASKS:
        raise DamagedFile(f"{config_path}: unknown task {task!r}")
    status = folder.status()
    rows = folder.metrics()
    results = folder.results()
    args = normalise_args(task, config["args"])
    final = status["state"] == "done" and results is not None
    strict = task == "pixelmnist"
    if final:
        best, best_epoch = results.get("best_valid_accuracy"), results.get("best_epoch")
    else:
        best, best_epoch = best_of(rows, strict)
    run = {
        "path": os.path.relpath(path, root), "task": task, "seed": args.get("seed"),
        "key": setting_key(task, args), "args": args,
        "experiment": experiment_name(task, args), "base": base_label(args),
        "device": config.get("device"), "state": status["state"],
        "epochs": status["epochs"], "planned": status["planned"],
        "message": status["message"], "final": final,
        "elapsed_s": rows[-1].get("elapsed_s") if rows else None,
        "best_valid_accuracy": best, "best_epoch": best_epoch,
        "curve": [[row["epoch"], row["valid_accuracy"]] for row in rows
                  if row["valid_accuracy"] is not None and math.isfinite(row["valid_accuracy"])],
    }
    if task == "copying":
        run["first_epoch_solved"] = next((row["epoch"] for row in rows
                                          if (row["valid_accuracy"] or 0) >= SOLVED), None)
    else:
        if final:
            run["test_accuracy"] = results.get("test_accuracy")
        else:
            at_best = [row for row in rows if row["epoch"] == best_epoch]
            run["test_accuracy"] = at_best[0].get("test_accuracy") if at_best else None
    try:
        run["transfer"] = read_transfer(folder, path)
    except DamagedFile as err:
        warn(f"{err}; the run's transfer results are left out")
        run["transfer"] = None
    return run


def read_transfer(folder, path):
    data = folder.transfer()
    if data is None:
        return None
    try:
        rows = {int(row["T"]): float(row["accuracy"]) for row in data["results"]}
        checkpoint = data["checkpoint"]
    except (KeyError, TypeError, ValueError):
        raise DamagedFile(f"{os.path.join(path, 'transfer.json')}: not a transfer_copy.py "
                          "result") from None
    # transfer.json names the checkpoint it measured and its hash: if that file has changed
    # since (the run went on and found a better model), the numbers are of an older model.
    model = os.path.join(path, checkpoint)
    current = os.path.isfile(model) and file_sha256(model) == data.get("checkpoint_sha256")
    return {"checkpoint": checkpoint, "checkpoint_epoch": data.get("checkpoint_epoch"),
            "trained_T": data.get("trained_T"), "seed": data.get("seed"),
            "test_size": data.get("test_size"), "current": current,
            "accuracy": {str(delay): rows[delay] for delay in sorted(rows)}}


def load_runs(root):
    paths, orphans = find_run_folders(root)
    if not paths:
        what = "no files" if not any(os.scandir(root)) else "no run folder (no config.json)"
        raise UsageError(f"{root} holds {what}; give the folder a sweep or training runs "
                         "wrote into (--root / --save-dir)")
    runs, skipped = [], []
    for folder in orphans:
        reason = "holds run files but no config.json"
        warn(f"{folder} {reason}; skipped")
        skipped.append({"path": os.path.relpath(folder, root), "reason": reason})
    for path in paths:
        try:
            runs.append(read_run(path, root))
        except DamagedFile as err:
            warn(f"{err}; the run is left out of the report")
            skipped.append({"path": os.path.relpath(path, root), "reason": str(err)})
    if not runs:
        raise UsageError(f"no readable run under {root}: every run folder has a damaged file "
                         "(see the warnings above)")
    return runs, skipped


# ----------------------------------------------------------------------------- settings

def group_settings(runs):
    """Settings (dicts) with their runs, in report order; each run gets its setting's label."""
    by_key = {}
    for run in runs:
        by_key.setdefault(run["key"], []).append(run)
    # Arguments the scripts do not know (from a newer or older kit) that differ between runs.
    varying = {}
    for task in TASKS:
        keys = {key for run in runs if run["task"] == task for key in run["args"]}
        varying[task] = {key for key in keys - set(task_defaults(task))
                         if len({json.dumps(run["args"].get(key)) for run in runs
                                 if run["task"] == task}) > 1}
    settings = []
    for key, members in by_key.items():
        first = members[0]
        shown = modifiers(first["task"], first["args"], first["experiment"],
                          varying[first["task"]])
        label = first["base"] + (" (" + ", ".join(shown) + ")" if shown else "")
        members.sort(key=lambda run: (run["seed"] is None, run["seed"], run["path"]))
        setting = {"experiment": first["experiment"], "task": first["task"],
                   "base": first["base"], "label": label, "modifiers": shown,
                   "protocol": not shown, "args": {k: v for k, v in first["args"].items()
                                                   if k not in PROCESS_KEYS
                                                   and k not in STREAM_KEYS},
                   "runs": members}
        settings.append(setting)
    disambiguate(settings)
    for setting in settings:
        for run in setting["runs"]:
            run["setting"] = setting["label"]
    settings.sort(key=lambda s: (experiment_order(s["experiment"]), setting_order(s)))
    return settings


def disambiguate(settings):
    """Two settings of one experiment must never share a label (it would read as one): where
    the modifiers do not tell them apart (values that print alike), add the arguments that
    differ."""
    seen = {}
    for setting in settings:
        seen.setdefault((setting["experiment"], setting["label"]), []).append(setting)
    for group in seen.values():
        if len(group) < 2:
            continue
        keys = sorted({key for s in group for key in s["args"]
                       if len({json.dumps(t["args"].get(key)) for t in group}) > 1})
        for setting in group:
            setting["label"] += " [" + ", ".join(f"{key}={setting['args'].get(key)!r}"
                                                 for key in keys) + "]"


def experiment_order(name):
    main = name.split(",")[0]
    if main.startswith("copying T="):
        rank = (0, int(main.split("=")[1]))
    else:
        rank = (1, 0 if main == "MNIST" else 1)
    # Ablations by learning rate as the paper orders them: the largest first.
    lr = -float(name.split("lr=")[1]) if "lr=" in name else 0.0
    return (is_ablation(name), rank, "c-detach" not in name, lr, name)


def setting_order(setting):
    """Vanilla first, then h-detach by p, then c-detach; a setting or a run (its setting's)."""
    args = setting["args"]
    label = setting["label"] if "label" in setting else setting["setting"]
    return (args["p_detach"] > 0, args.get("detach") == "c", args["p_detach"], label)


def completeness(run):
    planned = run["planned"] if run["planned"] is not None else "?"
    return f"{run['state']}, {run['epochs']}/{planned}"


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    sd = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), sd, len(values)


def summarise(setting):
    """The setting's numbers: the best-validation seed (the paper's rule), mean and sd over
    seeds, and for copying which seeds solved the task."""
    runs = setting["runs"]
    measured = [run for run in runs if run["best_valid_accuracy"] is not None]
    summary = {"n_runs": len(runs), "n_done": sum(run["final"] for run in runs),
               "seeds": [run["seed"] for run in runs],
               "all_final": all(run["final"] for run in runs)}
    mean, sd, n = mean_sd([run["best_valid_accuracy"] for run in runs])
    summary["best_valid_accuracy"] = {"mean": mean, "sd": sd, "n": n}
    # The best-validation run: highest best validation accuracy, ties to the lower seed.
    chosen = max(measured, key=lambda run: (run["best_valid_accuracy"], -(run["seed"] or 0)),
                 default=None)
    summary["best_valid_run"] = chosen["path"] if chosen else None
    if setting["task"] == "pixelmnist":
        mean, sd, n = mean_sd([run["test_accuracy"] for run in runs])
        summary["test_accuracy"] = {"mean": mean, "sd": sd, "n": n}
        summary["test_accuracy_of_best_valid_run"] = chosen["test_accuracy"] if chosen else None
    else:
        summary["solved"] = sum(run["first_epoch_solved"] is not None for run in runs)
        summary["first_epoch_solved"] = {str(run["seed"]): run["first_epoch_solved"]
                                         for run in runs}
    return summary


# ----------------------------------------------------------------------------- markdown

def pct(value):
    return "—" if value is None else f"{value:.2f}"


def stat_text(stat):
    if stat["n"] == 0:
        return "—"
    if stat["n"] == 1:
        return f"{stat['mean']:.2f} (n = 1)"
    return f"{stat['mean']:.2f} ± {stat['sd']:.2f} (n = {stat['n']})"


def runs_text(runs):
    """Which seeds the numbers come from and how complete each run is."""
    if len(runs) > 4:
        unfinished = [run for run in runs if not run["final"]]
        if not unfinished:
            return f"{len(runs)} runs, all done"
        least = min(unfinished, key=lambda run: run["epochs"])
        return (f"{len(runs)} runs, {len(runs) - len(unfinished)} done; least complete: seed "
                f"{least['seed']}: {completeness(least)}")
    return "; ".join(f"seed {run['seed']}: {completeness(run)}" for run in runs)


def ref_texts(experiment, setting):
    """Every reference of a setting, if it is the paper's protocol (else they do not apply)."""
    if not setting["protocol"]:
        return "—"
    return "; ".join(f"{ref.source}: {ref.text}"
                     for ref in references(experiment, setting["base"])) or "—"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |"
              for row in rows]
    return lines


def other_refs(experiment, base, curves):
    """The references of a setting other than the paper's reported number (which has its own
    column); the curve readings only where ``curves`` (the figure shows them anyway)."""
    texts = [f"{ref.source}: {ref.text}" for ref in references(experiment, base)
             if not (ref.source == PAPER and ref.kind == "test_accuracy")
             and (curves or ref.kind != "valid_at")]
    return "; ".join(texts) or "—"


def mnist_section(settings, experiments):
    rows = []
    for experiment in experiments:
        present = [s for s in settings if s["experiment"] == experiment]
        ablation = is_ablation(experiment)
        for setting in present:
            summary = setting["summary"]
            chosen = next((run for run in setting["runs"]
                           if run["path"] == summary["best_valid_run"]), None)
            paper = references(experiment, setting["base"], "test_accuracy", PAPER)
            # The paper's numbers stand beside a setting only if it is the paper's protocol.
            paper_text = paper[0].text if paper and setting["protocol"] else "—"
            others = other_refs(experiment, setting["base"], ablation) \
                if setting["protocol"] else "—"
            unfinished = summary["n_runs"] - summary["n_done"]
            if chosen is None:
                ours, chosen_text = "no epoch yet", ""
            else:
                ours = pct(chosen["test_accuracy"])
                if not chosen["final"]:
                    ours += " (not final)"
                elif unfinished:
                    # The run is done, but a seed still training may yet beat it.
                    ours += (f" (seed choice not final: {unfinished} of {summary['n_runs']} "
                             "runs unfinished)")
                chosen_text = (f"seed {chosen['seed']}: {pct(chosen['best_valid_accuracy'])} "
                               f"at epoch {chosen['best_epoch']} ({completeness(chosen)})")
            spread = stat_text(summary["test_accuracy"])
            rows.append([experiment, setting["label"], paper_text, ours, chosen_text,
                         spread + (" (so far)" if unfinished and spread != "—" else ""),
                         runs_text(setting["runs"]),
                         others])
        # The paper's settings that no run has measured yet keep their row.
        for base in reference_settings(experiment):
            if any(s["base"] == base and s["protocol"] for s in present):
                continue
            paper = references(experiment, base, "test_accuracy", PAPER)
            rows.append([experiment, base, paper[0].text if paper else "—", "not measured",
                         "", "", "", other_refs(experiment, base, ablation)])
    if not rows:
        return []
    lines = table(["task", "setting", "paper", "ours: test acc. (%) of the best-valid seed",
                   "that seed: best valid acc. (%), its epoch (run)",
                   "test acc. mean ± sd over seeds", "runs (epochs done / planned)",
                   "other references"], rows)
    notes = [f"- {experiment}, {ref.source}: {ref.text}" for experiment in experiments
             for ref in references(experiment, None)]
    return lines + ([""] + notes if notes else [])


def solved_text(run):
    if run["first_epoch_solved"] is not None:
        return f"epoch {run['first_epoch_solved']}"
    return "not reached" + ("" if run["final"] else f" ({run['epochs']} epochs so far)")


def copying_section(settings, experiments):
    """Per setting (with the references beside it), then per run."""
    rows, per_run = [], []
    for experiment in experiments:
        present = [s for s in settings if s["experiment"] == experiment]
        for setting in present:
            summary = setting["summary"]
            runs = setting["runs"]
            later = "" if summary["all_final"] else " (so far)"
            if summary["best_valid_accuracy"]["n"] == 0:
                best = "no epoch yet"
            elif len(runs) == 1:
                best = f"{pct(runs[0]['best_valid_accuracy'])}{later}"
            else:
                best = f"mean {stat_text(summary['best_valid_accuracy'])}{later}"
            first = [run["first_epoch_solved"] for run in runs
                     if run["first_epoch_solved"] is not None]
            rows.append([experiment, setting["label"], runs_text(runs), best,
                         f"{summary['solved']} of {len(runs)}{later}",
                         ", ".join(map(str, sorted(first))) or "—",
                         ref_texts(experiment, setting)])
            for run in runs:
                per_run.append([experiment, setting["label"], run["seed"], completeness(run),
                                pct(run["best_valid_accuracy"]) + ("" if run["final"] else
                                                                   " (so far)"),
                                run["best_epoch"] if run["best_epoch"] is not None else "—",
                                solved_text(run)])
        for base in reference_settings(experiment):
            if not any(s["base"] == base and s["protocol"] for s in present):
                rows.append([experiment, base, "not measured", "", "", "",
                             "; ".join(f"{ref.source}: {ref.text}"
                                       for ref in references(experiment, base))])
    if not rows:
        return []
    lines = table(["experiment", "setting", "runs (epochs done / planned)",
                   "best valid acc. (%)", f"seeds that reached {SOLVED:g} %",
                   f"their first epoch at >= {SOLVED:g} %", "references"], rows)
    notes = [f"- {experiment}, {ref.source}: {ref.text}" for experiment in experiments
             for ref in references(experiment, None)]
    lines += [""] + notes if notes else []
    if per_run:
        lines += ["", "Per run:", ""]
        lines += table(["experiment", "setting", "seed", "run (epochs done / planned)",
                        "best valid acc. (%)", "at epoch",
                        f"first epoch with valid acc. >= {SOLVED:g} %"], per_run)
    return lines


def transfer_groups(runs):
    """{trained T: [runs with transfer results]}, the paper's T = 100 always present."""
    groups = {100: []}
    for run in runs:
        if run.get("transfer"):
            trained = run["transfer"]["trained_T"] or run["args"].get("T")
            groups.setdefault(trained, []).append(run)
    return dict(sorted(groups.items()))


def transfer_delays(trained, members):
    delays = set(TRANSFER_T) if trained == 100 else set()
    for run in members:
        delays |= {int(d) for d in run["transfer"]["accuracy"]}
    return sorted(delays)


def transfer_section(runs):
    lines = []
    for trained, members in transfer_groups(runs).items():
        delays = transfer_delays(trained, members)
        rows = []
        if trained == 100:
            for base in ("vanilla", "h-detach p=0.5", "h-detach p=0.25"):
                values = {ref.at: ref.text for ref in references("transfer T=100", base)}
                rows.append([f"{base} (paper)", "", "", *(values.get(d, "") for d in delays),
                             ""])
        for run in sorted(members, key=lambda r: (setting_order(r), r["seed"] or 0)):
            transfer = run["transfer"]
            model = f"{transfer['checkpoint_epoch']}"
            if not transfer["current"]:
                model += f" ({transfer['checkpoint']} has changed since: out of date)"
            model += f" ({transfer['test_size']} sequences, seed {transfer['seed']})"
            rows.append([f"{run['setting']} (ours)", run["seed"], model,
                         *(pct(transfer["accuracy"].get(str(d))) if str(d) in
                           transfer["accuracy"] else "—" for d in delays),
                         completeness(run) + ("" if run["final"] else " (not final)")])
        if not members:
            rows.append(["ours", "", "", *("not measured" if i == 0 else "" for i in
                                           range(len(delays))), ""])
        lines += [f"Trained at T = {trained}, accuracy (%) on the last 10 steps at delay T':", ""]
        lines += table(["setting", "seed", "model epoch", *(f"T'={d}" for d in delays),
                        "training run"], rows)
        lines.append("")
    return lines[:-1]


def runs_section(runs):
    rows = []
    for run in sorted(runs, key=lambda r: (experiment_order(r["experiment"]),
                                           setting_order(r), r["seed"] or 0)):
        elapsed = "" if run["elapsed_s"] is None else f"{run['elapsed_s'] / 3600:.1f}"
        rows.append([run["path"], run["experiment"], run["setting"], run["seed"],
                     run["state"], f"{run['epochs']}/{run['planned']}", run["device"] or "?",
                     elapsed, run["message"] or ""])
    return table(["run folder", "experiment", "setting", "seed", "state", "epochs done / planned",
                  "device", "training time (h)", "note"], rows)


def markdown_body(data, figures, h, figure_dir, root):
    """The report's sections (headings at level ``h``), figures linked from ``figure_dir``."""
    settings, runs = data["settings_full"], data["runs_full"]
    experiments = sorted({s["experiment"] for s in settings} | set(MAIN_EXPERIMENTS) |
                         {ref.experiment for ref in REFERENCE
                          if not ref.experiment.startswith("transfer")},
                         key=experiment_order)
    done = sum(run["final"] for run in runs)
    lines = [f"Generated by `python report.py {root}` from {len(runs)} run folder"
             f"{'s' if len(runs) != 1 else ''} ({done} finished); do not edit by hand. Every "
             "number of ours says how complete its run is (state, epochs done / planned); "
             "numbers of runs that have not finished are not final. The references are the "
             "paper's numbers, the authors' README and an independent reproduction report "
             "(see below).", ""]
    mnist_main = [e for e in experiments if not is_ablation(e) and not e.startswith("copying")]
    copying_main = [e for e in experiments if not is_ablation(e) and e.startswith("copying")]
    lines += [f"{h} Pixel MNIST and permuted MNIST", "",
              "Test accuracy (%) at the best-validation epoch of the best-validation seed (the "
              "paper's rule); beside it the mean and sample standard deviation over seeds.", ""]
    lines += mnist_section(settings, mnist_main) + [""]
    lines += [f"{h} Copying", "",
              f"Best validation accuracy (%) and the first epoch at which validation accuracy "
              f"reached {SOLVED:g} %, per seed.", ""]
    lines += copying_section(settings, copying_main) + [""]
    lines += [f"{h} Transfer copying", "",
              "The best model of a copying run, tested without training on fresh sequences of "
              "a longer delay T' (the paper: 5,000 sequences, seed 555). 'model epoch': the "
              "epoch of the checkpoint measured, and the test set.", ""]
    lines += transfer_section(runs) + [""]
    ablations = [e for e in experiments if is_ablation(e)]
    lines += [f"{h} Ablations", "",
              "c-detach (the cell state c is detached instead of h, same p) and training "
              "without gradient clipping. Pixel-MNIST ablations: test accuracy as above.", ""]
    lines += mnist_section(settings, [e for e in ablations if not e.startswith("copying")])
    copying_ablations = [e for e in ablations if e.startswith("copying")]
    lines += [""] + copying_section(settings, copying_ablations) + [""]
    lines += [f"{h} Figures", ""]
    for name, caption in figures:
        link = os.path.join(figure_dir, name).replace(os.sep, "/") if figure_dir else name
        lines += [f"![{caption}]({link})", ""]
    lines += [f"{h} Runs", ""] + runs_section(runs) + [""]
    if data["skipped"]:
        lines += [f"{h} Left out", ""]
        lines += [f"- `{item['path']}`: {item['reason']}" for item in data["skipped"]] + [""]
    lines += [f"{h} Sources of the references", ""]
    lines += [f"- {name}: {text}." for name, text in SOURCES.items()]
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- figures

CANONICAL_COLOURS = {"vanilla": "black", "h-detach p=0.25": "tab:blue",
                     "h-detach p=0.5": "tab:orange", "c-detach p=0.25": "tab:red",
                     "c-detach p=0.5": "tab:purple"}
PALETTE = ("tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray",
           "tab:purple", "tab:red", "tab:orange", "tab:blue")


# Flat reference lines: the line style tells the source.
SOURCE_STYLES = {PAPER: ":", AUTHORS: "-.", REPRO: "--"}
# Reference points: the marker tells the source (filled: reached ~100 %; open: a reading).
SOURCE_MARKERS = {PAPER: "*", AUTHORS: "s", REPRO: "D"}


def colours_for(labels, bases):
    """A colour per setting label: the base setting's usual colour (vanilla black, p = 0.25
    blue, ...) for the first of its settings in the panel, the next free one otherwise."""
    colours, used = {}, set()
    for label, base in zip(labels, bases):
        colour = CANONICAL_COLOURS.get(base)
        if colour is None or colour in used:
            colour = next((c for c in PALETTE if c not in used), "tab:gray")
        colours[label] = colour
        used.add(colour)
    return colours


def save_png(fig, path):
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))


def curves_figure(settings, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    experiments = sorted({s["experiment"] for s in settings}, key=experiment_order)
    cols = 1 if len(experiments) == 1 else 2
    rows = math.ceil(len(experiments) / cols)
    # Legends go under their panel (they would hide the curves): room for the longest.
    entries = max(legend_size(settings, experiment) for experiment in experiments)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, (4.2 + 0.13 * entries) * rows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(experiments):]:
        ax.set_visible(False)
    for ax, experiment in zip(axes.flat, experiments):
        present = [s for s in settings if s["experiment"] == experiment]
        colours = colours_for([s["label"] for s in present], [s["base"] for s in present])
        zoom = zoom_range(experiment, present)
        inset = ax.inset_axes([0.4, 0.07, 0.57, 0.45]) if zoom else None
        right = 1
        for setting in present:
            colour = colours[setting["label"]]
            runs = setting["runs"]
            for i, run in enumerate(runs):
                if not run["curve"]:
                    continue
                epochs, accuracy = zip(*run["curve"])
                for target in (ax, inset) if inset else (ax,):
                    target.plot(epochs, accuracy, color=colour, lw=1.2, alpha=0.85,
                                label=f"{setting['label']}: {runs_text(runs)}"
                                if i == 0 and target is ax else None)
                    if not run["final"]:
                        # An open circle where an unfinished run stands now.
                        target.plot(epochs[-1], accuracy[-1], "o", mfc="white", color=colour,
                                    ms=5)
                right = max(right, epochs[-1])
            if not any(run["curve"] for run in runs):
                ax.plot([], [], color=colour, label=f"{setting['label']}: no epoch yet")
        right = draw_references(ax, experiment, present, colours, right)
        ax.set_xlim(0, right * 1.04 + 1)
        ax.set_ylim(0, 102)
        if inset:
            # The reported test accuracies lie within a point of each other: a zoom shows them.
            draw_references(inset, experiment, present, colours, right, labels=False)
            inset.set_xlim(0, right * 1.04 + 1)
            inset.set_ylim(*zoom)
            inset.set_title("zoom", fontsize=7, pad=2)
            inset.tick_params(labelsize=7)
            inset.grid(alpha=0.3)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"{experiment}: validation accuracy by epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.suptitle(textwrap.fill("Lines: our runs, coloured by setting (open circle: where a run "
                               "that has not finished stands). Markers and flat lines: the "
                               "references", 100 * cols), fontsize=9)
    save_png(fig, path)
    plt.close(fig)


def legend_size(settings, experiment):
    return (sum(s["experiment"] == experiment for s in settings)
            + sum(ref.value is not None for ref in references(experiment)))


def zoom_range(experiment, present):
    """The accuracy range of an inset for the reported test accuracies (None: no inset)."""
    values = [ref.value for ref in references(experiment, kind="test_accuracy")]
    if not values:
        return None
    tops = [accuracy for s in present for run in s["runs"] for _, accuracy in run["curve"]]
    low = min(values) - 2
    high = max(values + tops) + 0.5 if tops else max(values) + 1
    return low, min(high, 100.5)


def draw_references(ax, experiment, present, colours, right, labels=True):
    """The references of an experiment: reported test accuracies, bests and upper bounds as
    flat lines (style by source), curve readings as open markers, 'reached ~100 % at' as
    filled markers with the epoch range (marker by source)."""
    by_base = {s["base"]: colours[s["label"]] for s in present if s["protocol"]}
    used = set(colours.values())
    for ref in references(experiment):
        if ref.value is None:
            continue
        colour = by_base.get(ref.setting)
        if colour is None:
            # A setting no run of ours has: its usual colour if free, grey otherwise.
            usual = CANONICAL_COLOURS.get(ref.setting)
            colour = usual if usual and usual not in used else "tab:gray"
        label = f"{ref.source}: {ref.setting or experiment} {ref.text}" if labels else None
        if ref.kind in ("test_accuracy", "valid_max") and ref.at is None:
            style = SOURCE_STYLES[ref.source]
            if ref.kind == "test_accuracy" and labels:
                label = f"{ref.source}: {ref.setting} test acc. {ref.text}"
            ax.axhline(ref.value, color=colour, ls=style, lw=1, alpha=0.8, label=label)
        elif ref.kind == "valid_max":
            ax.plot([0, ref.at], [ref.value, ref.value], color=colour, ls=SOURCE_STYLES[ref.source],
                    lw=1,
                    label=label)
            right = max(right, ref.at)
        elif ref.kind == "valid_at":
            ax.plot(ref.at, ref.value, SOURCE_MARKERS[ref.source], color=colour, mfc="none",
                    ms=7, mew=1.5, label=label)
            right = max(right, ref.at)
        elif ref.kind == "solved_at":
            low, high = ref.at if isinstance(ref.at, tuple) else (ref.at, ref.at)
            ax.errorbar((low + high) / 2, ref.value, xerr=(high - low) / 2 or None,
                        fmt=SOURCE_MARKERS[ref.source],
                        color=colour, ms=9, mec="black", mew=0.5, capsize=3, label=label)
            right = max(right, high)
    return right


def transfer_figure(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = {t: m for t, m in transfer_groups(runs).items() if m}
    # The legend goes under the panel: room for one line per run and paper row.
    entries = max(len(m) + (3 if t == 100 else 0) for t, m in groups.items())
    fig, axes = plt.subplots(1, len(groups), figsize=(7.5 * len(groups), 4.2 + 0.13 * entries),
                             squeeze=False, layout="constrained")
    for ax, (trained, members) in zip(axes.flat, groups.items()):
        labels = list(dict.fromkeys(run["setting"] for run in sorted(members,
                                                                     key=setting_order)))
        bases = [next(r["base"] for r in members if r["setting"] == label) for label in labels]
        paper_bases = ["vanilla", "h-detach p=0.5", "h-detach p=0.25"] if trained == 100 else []
        colours = colours_for(labels, bases)
        protocol = {r["base"]: colours[r["setting"]] for r in members
                    if r["setting"] == r["base"]}
        for base in paper_bases:
            refs = references("transfer T=100", base, "transfer")
            colour = protocol.get(base, CANONICAL_COLOURS.get(base, "tab:gray"))
            ax.plot([r.at for r in refs], [r.value for r in refs], "s--", color=colour,
                    alpha=0.6, lw=1, ms=4, label=f"paper: {base}")
        for run in sorted(members, key=lambda r: (setting_order(r), r["seed"] or 0)):
            transfer = run["transfer"]
            delays = [int(d) for d in transfer["accuracy"]]
            note = "" if run["final"] else f", run {completeness(run)}"
            stale = "" if transfer["current"] else ", out of date"
            ax.plot(delays, list(transfer["accuracy"].values()), "o-",
                    color=colours[run["setting"]], lw=1.6,
                    label=f"ours: {run['setting']}, seed {run['seed']} (model of epoch "
                          f"{transfer['checkpoint_epoch']}{note}{stale})")
        ax.set_xscale("log")
        delays = transfer_delays(trained, members)
        ax.set_xticks(delays)
        ax.set_xticklabels([str(d) for d in delays])
        ax.minorticks_off()
        ax.set_ylim(0, 102)
        ax.set_xlabel("delay T' at test (time steps, log scale)")
        ax.set_ylabel("accuracy on the last 10 steps (%)")
        ax.set_title(f"Transfer copying: trained at T = {trained}, tested at T'")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    save_png(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- README block

def readme_block_lines(path):
    """The README's lines and the indices of its two marker lines; a ``UsageError`` when the
    markers are not there exactly once each, in order."""
    try:
        with open(path, newline="") as handle:
            lines = handle.read().splitlines(keepends=True)
    except OSError as err:
        raise UsageError(f"--readme {path}: {err.strerror}") from None
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise UsageError(f"--readme {path} needs one line {BEGIN} and, after it, one line "
                         f"{END} around the block to regenerate")
    return lines, begins[0], ends[0]


def write_readme(path, body):
    lines, begin, end = readme_block_lines(path)
    newline = "\r\n" if lines[begin].endswith("\r\n") else "\n"
    block = [line + newline for line in body.rstrip("\n").split("\n")]
    text = "".join(lines[:begin + 1] + block + lines[end:])
    atomic_write(path, lambda handle: handle.write(text.encode()))


# ----------------------------------------------------------------------------- main

def clean(value):
    """JSON without NaN or infinity (not JSON): such a number becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(item) for item in value]
    return value


def build_parser():
    parser = ArgParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", metavar="ROOT", help="a folder of run folders (at any depth)")
    parser.flag("--out", default=None, metavar="DIR",
                help="where report.md, report.json and the figures go (default ROOT)")
    parser.flag("--readme", default=None, metavar="PATH",
                help=f"also replace the lines between {BEGIN} and {END} in PATH with the "
                     "report's tables")
    return parser


def run(args):
    root = args.root
    if not os.path.isdir(root):
        raise UsageError(f"ROOT {root} is not a folder" if os.path.exists(root)
                         else f"ROOT {root} does not exist")
    out = args.out or root
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a folder")
    if args.readme:
        readme_block_lines(args.readme)  # refuse before writing anything
    runs, skipped = load_runs(root)
    settings = group_settings(runs)
    for setting in settings:
        setting["summary"] = summarise(setting)
    os.makedirs(out, exist_ok=True)

    figures = [("valid_accuracy.png", "Validation accuracy against epoch, one panel per "
                                      "experiment")]
    curves_figure(settings, os.path.join(out, figures[0][0]))
    if any(run.get("transfer") for run in runs):
        figures.append(("transfer.png", "Transfer copying accuracy against T'"))
        transfer_figure(runs, os.path.join(out, figures[1][0]))

    data = {"settings_full": settings, "runs_full": runs, "skipped": skipped}
    report = "# h-detach: the paper's results beside ours\n\n" + markdown_body(
        data, figures, "##", "", args.root)
    atomic_write(os.path.join(out, "report.md"), lambda handle: handle.write(report.encode()))
    public = {
        "root": os.path.abspath(root),
        "solved_threshold": SOLVED,
        "settings": [dict({k: v for k, v in s.items() if k != "runs"},
                          runs=[run["path"] for run in s["runs"]]) for s in settings],
        "runs": [{k: v for k, v in run.items() if k != "key"} for run in runs],
        "skipped": skipped,
        "references": [dict(ref._asdict(), source_detail=SOURCES[ref.source])
                       for ref in REFERENCE],
        "figures": [name for name, _ in figures],
    }
    text = json.dumps(clean(public), indent=1, sort_keys=True) + "\n"
    atomic_write(os.path.join(out, "report.json"), lambda handle: handle.write(text.encode()))
    written = [os.path.join(out, name) for name in ("report.md", "report.json")] + \
        [os.path.join(out, name) for name, _ in figures]
    if args.readme:
        figure_dir = os.path.relpath(out, os.path.dirname(os.path.abspath(args.readme)))
        write_readme(args.readme, markdown_body(data, figures, "###", figure_dir, args.root))
        written.append(args.readme)
    print(f"{len(runs)} runs in {len(settings)} settings; written: {', '.join(written)}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return report_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
