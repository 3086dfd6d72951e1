"""Reading run folders and summarising them into settings for the report (no markdown, no
figures): what defines a setting, each run's numbers, and each setting's summary."""
import functools
import json
import math
import os
import statistics
import sys

from running.annealing import epochs_without_detach
from running.errors import UsageError
from running.resume import PREDATED_VALUES, RESUMABLE_KEYS
from running.runfolder import RUN_FILES, DamagedFile, RunFolder, file_sha256, transfer_measurements

TASKS = ("copying", "pixelmnist")
# Tasks whose runs the report does not show yet: their folders are left out with one warning.
NOT_REPORTED = ("captioning",)
# Arguments that say where or how one process ran, not what was trained: never part of a
# setting (a run resumed on another device, or moved, is the same run).
# These are exactly the keys a resume may change.
PROCESS_KEYS = frozenset(RESUMABLE_KEYS)
# Which random draws a run made (its seed, and whose streams, --rng), not what was trained:
# runs that differ only there are seeds of one setting.
STREAM_KEYS = frozenset({"seed", "rng"})
# Arguments shown by the setting's own label or its experiment, never as a modifier.
LABEL_KEYS = frozenset({"seed", "p_detach", "detach", "T", "permute"})
SOLVED = 99.0  # "solved" copying: the first epoch with validation accuracy >= this (%)


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
    they had in effect (``PREDATED_VALUES``: ``rng`` kit) or today's defaults; a missing ``detach`` is h-detach (the only kind before the flag); p <= 0 is
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


# What pixelmnist.py's data.json says of the files a run read (see official_mnist there); a
# run from before data.json existed could not be checked.
DATA_WORDS = {"not official": "not the official MNIST files",
              "unverified": "data not verified as the official MNIST"}


def experiment_name(task, args, data="official"):
    """The experiment (a panel of the figure): task and delay or permutation, plus the
    ablation a setting belongs to (c-detach; no clipping, with its learning rate). A pixel
    MNIST run on data that is not the official MNIST (``data``, from its data.json) is an
    experiment of its own: it never sits beside the paper's numbers."""
    name = f"copying T={args['T']}" if task == "copying" else \
        ("pMNIST" if args.get("permute") else "MNIST")
    if args.get("detach") == "c" and args["p_detach"] > 0:
        name += ", c-detach"
    if args.get("clip", 1.0) <= 0:
        name += f", no clipping, lr={fmt_lr(args['lr'])}"
    if task == "pixelmnist" and data != "official":
        name += f" [{DATA_WORDS.get(data, DATA_WORDS['unverified'])}]"
    return name


def data_status(folder):
    """official / not official / unverified: what data.json says of a pixel-MNIST run."""
    check = folder.data_check()
    status = check.get("mnist") if isinstance(check, dict) else None
    return status if status in ("official", "not official") else "unverified"


def is_ablation(experiment):
    return "," in experiment


def modifier(task, key, value):
    names = {"lr": lambda v: f"lr={fmt_lr(v)}",
             "clip": lambda v: "no clipping" if v <= 0 else f"clip {v:g}",
             "lstm_size": lambda v: f"hidden {v}", "batch_size": lambda v: f"batch {v}",
             "n_epochs": lambda v: f"{v} epoch{'' if v == 1 else 's'} planned",
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


def annealed_off(args):
    """'annealed off for all 3 epochs' (or 'for 39 of 50 epochs'): a detach setting whose
    annealing leaves it off for more than half of its planned epochs, the scripts' warning
    threshold, so that a label never claims h-detach for a run that (mostly) did not detach;
    None otherwise (the protocol's 39 of 600 epochs are not worth a word)."""
    p, planned, anneal = args.get("p_detach"), args.get("n_epochs"), args.get("anneal_p")
    if p is None or p <= 0 or planned is None or anneal is None:
        return None
    off = epochs_without_detach(planned, anneal)
    if 2 * off <= planned:
        return None
    return f"annealed off for all {planned} epochs" if off == planned else \
        f"annealed off for {off} of {planned} epochs"


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
    data = data_status(folder) if task == "pixelmnist" else None
    run = {
        "path": os.path.relpath(path, root), "task": task, "seed": args.get("seed"),
        "key": json.dumps([setting_key(task, args), data]), "args": args, "data": data,
        "experiment": experiment_name(task, args, data), "base": base_label(args),
        "device": config.get("device"), "numerics": folder.numerics_label(config),
        "numerics_by_epoch": folder.numerics_by_epoch(status["epochs"], config),
        "state": status["state"],
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


PROTOCOL_TRANSFER = {"checkpoint": "best_model.pt", "seed": 555, "test_size": 5000}


def read_transfer(folder, path):
    """The run's transfer measurement the report shows, and every other one it holds.

    transfer.json keeps every measurement (of best_model.pt as it was at several epochs, of
    last.pt, on other test sets). Shown is the protocol's if there is one (best_model.pt, 5,000
    sequences, seed 555), preferring one of the best_model.pt there now, then the latest; else
    the latest measurement of the file there now, else the latest. Each says which checkpoint
    and test set its numbers come from."""
    data = folder.transfer()
    if data is None:
        return None
    measured = transfer_measurements(data, os.path.join(path, "transfer.json"))
    if not measured:
        return None
    hashes = {}

    def current(item):
        # transfer.json names the checkpoint it measured and its hash: if that file has changed
        # since (the run went on and found a better model), the numbers are of an older model.
        name = item["checkpoint"]
        if name not in hashes:
            model = os.path.join(path, name)
            hashes[name] = file_sha256(model) if os.path.isfile(model) else None
        return hashes[name] == item["checkpoint_sha256"]

    def protocol(item):
        return all(item.get(key) == value for key, value in PROTOCOL_TRANSFER.items())

    order = list(enumerate(measured))
    _, chosen = max(order, key=lambda pair: (protocol(pair[1]), current(pair[1]), pair[0]))
    shown = transfer_summary(chosen, current(chosen), protocol(chosen))
    shown["others"] = [transfer_summary(item, current(item), protocol(item))
                       for item in measured if item is not chosen]
    return shown


def transfer_summary(item, current, protocol):
    rows = {int(row["T"]): float(row["accuracy"]) for row in item["results"]}
    return {"checkpoint": item["checkpoint"], "checkpoint_epoch": item.get("checkpoint_epoch"),
            "trained_T": item.get("trained_T"), "seed": item["seed"],
            "test_size": item["test_size"], "rng": item.get("rng", "kit"),  # before --rng: kit
            "current": current, "protocol": protocol,
            "accuracy": {str(delay): rows[delay] for delay in sorted(rows)}}


def task_of(path):
    """The task config.json names, or None where it cannot be read (``read_run`` then says
    what is wrong with it)."""
    try:
        config = RunFolder(path).config()
    except DamagedFile:
        return None
    return config.get("task") if isinstance(config, dict) else None


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
    not_reported = []
    for path in paths:
        task = task_of(path)
        if task in NOT_REPORTED:
            not_reported.append(path)
            skipped.append({"path": os.path.relpath(path, root),
                            "reason": f"a {task} run: not in the report yet"})
            continue
        try:
            runs.append(read_run(path, root))
        except DamagedFile as err:
            warn(f"{err}; the run is left out of the report")
            skipped.append({"path": os.path.relpath(path, root), "reason": str(err)})
    if not runs and len(not_reported) == len(paths):
        raise UsageError(f"{root} holds only captioning runs, which are not in the report yet")
    if not_reported:
        warn(f"captioning runs are not in the report yet: {len(not_reported)} skipped")
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
        off = annealed_off(first["args"])
        if off:
            shown.append(off)
        label = first["base"] + (" (" + ", ".join(shown) + ")" if shown else "")
        members.sort(key=lambda run: (run["seed"] is None, run["seed"], run["path"]))
        members, repeats = one_per_seed(members)
        # Seed 3 of the authors' streams and seed 3 of the kit's are two different samples:
        # where a setting holds both kinds, every seed it shows says whose streams it drew.
        mixed = len({run["args"].get("rng") for run in members + repeats}) > 1
        for run in members + repeats:
            run["seed_label"] = f"{run['seed']} ({run['args'].get('rng')})" if mixed \
                else f"{run['seed']}"
        setting = {"experiment": first["experiment"], "task": first["task"],
                   "base": first["base"], "label": label, "modifiers": shown,
                   # The paper's numbers apply only to its protocol on the official data.
                   "protocol": not shown and first["data"] in (None, "official"),
                   "args": {k: v for k, v in first["args"].items()
                            if k not in PROCESS_KEYS and k not in STREAM_KEYS},
                   "runs": members, "repeats": repeats}
        settings.append(setting)
    disambiguate(settings)
    for setting in settings:
        for run in setting["runs"] + setting["repeats"]:
            run["setting"] = setting["label"]
    settings.sort(key=lambda s: (experiment_order(s["experiment"]), setting_order(s)))
    return settings


def one_per_seed(members):
    """(samples, repeats): folders of one setting and one seed are one sample, not several.
    The most complete of them (finished, then most epochs, then the first folder) is the
    sample; the others are repeats, each marked with the folder it repeats (``repeat_of``)."""
    by_seed = {}
    for run in members:
        # A seed's draws depend on --rng too: seed 3 of the authors' streams and seed 3 of
        # the kit's are two samples, not a repeat.
        by_seed.setdefault((run["seed"], run["args"].get("rng")), []).append(run)
    samples, repeats = [], []
    for (seed, _), group in by_seed.items():
        if seed is None:  # no seed to tell them apart: each run stands alone
            samples += group
            continue
        kept = max(group, key=lambda run: (run["final"], run["epochs"], -group.index(run)))
        samples.append(kept)
        for run in group:
            if run is not kept:
                run["repeat_of"] = kept["path"]
                repeats.append(run)
    return samples, repeats


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
    main = name.split(" [")[0].split(",")[0]
    if main.startswith("copying T="):
        rank = (0, int(main.split("=")[1]))
    else:
        rank = (1, 0 if main == "MNIST" else 1)
    # Ablations by learning rate as the paper orders them: the largest first.
    lr = -float(name.split("lr=")[1].split(" [")[0]) if "lr=" in name else 0.0
    return (is_ablation(name), rank, "c-detach" not in name, lr, name)


def setting_order(setting):
    """Vanilla first, then h-detach by p, then c-detach; a setting or a run (its setting's)."""
    args = setting["args"]
    label = setting["label"] if "label" in setting else setting["setting"]
    return (args["p_detach"] > 0, args.get("detach") == "c", args["p_detach"], label)


def seed_of(run):
    """A run's seed as the report shows it: with its streams (``seed 3 (kit)``) where its
    setting mixes the authors' and the kit's (``reporting.runs.group_settings``)."""
    label = run.get("seed_label")
    return run["seed"] if label is None or label == f"{run['seed']}" else label


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
               "all_final": all(run["final"] for run in runs),
               # which arithmetic its runs ran with (runfolder.RunFolder.numerics_label)
               "numerics": sorted({run.get("numerics") or "unrecorded" for run in runs})}
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
