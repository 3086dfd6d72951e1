"""Reading run folders and summarising them into settings for the report (no markdown, no
figures): what defines a setting, each run's numbers, and each setting's summary."""
import functools
import json
import math
import os
import re
import statistics
import sys

from reporting.refs import COCO, caption_experiment
from running.annealing import epochs_without_detach
from running.errors import UsageError
from running.resume import PREDATED_VALUES, RESUMABLE_KEYS
from running.runfolder import (CAPTION_METRICS, RUN_FILES, DamagedFile, RunFolder, file_sha256,
                               read_json, transfer_measurements)

TASKS = ("copying", "pixelmnist", "captioning")
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
    elif task == "captioning":
        import caption_train as script
    else:
        import pixelmnist as script
    parser = script.build_parser()
    defaults = {action.dest: action.default for action in parser._actions
                if action.dest not in ("help", "save_dir")}
    if task == "captioning":
        defaults["anneal_p"] = parser.get_default("anneal_p")  # set_defaults: no flag
    return defaults


def normalise_args(task, args):
    """The run's arguments as its setting sees them: flags the run predates take the value
    they had in effect (``PREDATED_VALUES``: ``rng`` kit) or today's defaults; a missing
    ``detach`` is h-detach (the only kind before the flag); p <= 0 is plain BPTT whatever its
    value and whichever state it would detach, so all of it is one setting; so is every clip
    value <= 0 (no clipping)."""
    merged = {**task_defaults(task), **PREDATED_VALUES, **args}
    merged.setdefault("detach", "h")
    if merged.get("p_detach") is None or merged["p_detach"] <= 0:
        merged["p_detach"], merged["detach"] = -1.0, "h"
    if merged.get("clip") is not None and merged["clip"] <= 0:
        merged["clip"] = 0.0  # every clip value <= 0 means no clipping
    if task == "captioning" and merged.get("noclip"):
        merged["grad_clip"] = 0.0  # --noclip: whatever --grad-clip said, no clipping
    return merged


def setting_key(task, args):
    """Everything that defines what was trained, except the seed, as a canonical string (a
    captioning run's data are not their paths but the data set itself: ``caption_data``)."""
    return json.dumps([task, {key: value for key, value in sorted(args.items())
                              if key not in PROCESS_KEYS and key not in STREAM_KEYS
                              and key not in caption_unshown(task, args)}],
                      sort_keys=True)


# ----------------------------------------------------------------------------- captioning settings

# Where a captioning run's data were (the data set itself is told by its labels JSON,
# ``caption_data``), and what the data decide rather than the run (the features' sizes: shown
# only where they depart from the protocol's ResNet-152, ``CAPTION_FEATURE_SIZE``).
CAPTION_DATA_KEYS = frozenset({"input_json", "input_labels", "input_fc_dir", "input_att_dir"})
CAPTION_FEATURE_SIZE = 2048
# Arguments show_tell never reads: not part of its setting.
SHOW_TELL_UNUSED = frozenset({"att_feat_size", "att_hid_size"})


def caption_unshown(task, args):
    """A captioning run's arguments that are no part of its setting key: the data paths, and
    what its model does not read."""
    if task != "captioning":
        return frozenset()
    return CAPTION_DATA_KEYS | (SHOW_TELL_UNUSED if args.get("caption_model") == "show_tell"
                                else frozenset())


def caption_modifier(key, value):
    """A captioning argument as a label shows it, or None where it is not shown."""
    names = {"rnn_size": lambda v: f"hidden {v}",
             "input_encoding_size": lambda v: f"embedding {v}",
             "att_hid_size": lambda v: f"attention {v}",
             "drop_prob_lm": lambda v: f"dropout {v:g}",
             "seq_per_img": lambda v: f"{v} captions per image",
             "grad_clip": lambda v: f"clip {v:g} (element-wise)",
             "save_checkpoint_every": lambda v: f"evaluated every {v} iterations",
             "val_images_use": lambda v: "all validation images" if v == -1
             else f"{v} validation images",
             "language_eval": lambda v: "no language evaluation (best by loss)" if not v
             else f"language_eval={v}",
             "beam_size": lambda v: f"validation beam {v}",
             "standardize_fc": lambda v: "fc standardized" if v else None,
             "fc_feat_size": lambda v: f"fc features {v}",
             "att_feat_size": lambda v: f"att features {v}"}
    if key in ("fc_feat_size", "att_feat_size") and value in (None, CAPTION_FEATURE_SIZE):
        return None
    return names[key](value) if key in names else None


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
    experiment of its own: it never sits beside the paper's numbers. A captioning run's
    experiment is its model and its data set (``data``: ``caption_data``'s words), whatever its
    settings (c-detach and no clipping are in its setting's label)."""
    if task == "captioning":
        return caption_experiment(args["caption_model"], data)
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
    if task == "captioning":
        return caption_modifiers(args, defaults, varying)
    for key in sorted(args):
        if key in PROCESS_KEYS or key in LABEL_KEYS or key in STREAM_KEYS:
            continue
        if key in ("clip", "lr") and "no clipping" in experiment:
            continue
        if (key in defaults and args[key] != defaults[key]) or \
                (key not in defaults and key in varying and args[key] is not None):
            shown.append(modifier(task, key, args[key]))
    return shown


def caption_modifiers(args, defaults, varying):
    """``modifiers`` of a captioning setting: as the other tasks', with the model in the
    experiment, the data paths left out (the experiment names the data set) and the feature
    sizes shown only where they are not the protocol's ResNet-152."""
    shown = []
    if args.get("noclip"):
        shown.append("no clipping")
    for key in sorted(args):
        if key in PROCESS_KEYS or key in LABEL_KEYS or key in STREAM_KEYS or \
                key in caption_unshown("captioning", args) or \
                key in ("caption_model", "noclip", "anneal_p"):
            continue
        if key == "grad_clip" and args.get("noclip"):
            continue
        if key in ("fc_feat_size", "att_feat_size"):
            text = caption_modifier(key, args[key])
        elif (key in defaults and args[key] != defaults[key]) or \
                (key not in defaults and key in varying and args[key] is not None):
            text = caption_modifier(key, args[key]) or modifier("captioning", key, args[key])
        else:
            text = None
        if text:
            shown.append(text)
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
    if task == "captioning":
        return read_caption_run(path, root, folder, config, status, rows, results)
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
        **process_fields(folder, config, status, rows), "final": final,
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


# ----------------------------------------------------------------------------- captioning runs

KARPATHY_TEST_IMAGES = 5000  # COCO's Karpathy test split, on which the references are
SHAPES_FILE = re.compile(r"images/shape_\d+\.png")  # captioning/shapes.py's image names
COCO_FOLDERS = ("train2014/", "val2014/")
EVAL_FILE = re.compile(r"eval_test(?:_beam(\d+))?\.json")  # caption_eval.py --split test
# What a captioning run's data are, as an experiment's name says it (``caption_data``): only
# COCO's Karpathy split stands beside the COCO reference numbers.
CAPTION_DATA_WORDS = {
    "coco": COCO,
    "coco-other": "MS COCO but not the Karpathy 5000-image test split",
    "shapes": "synthetic shapes (not MS COCO)",
    "flickr30k": "Flickr30k (not MS COCO)",
    "other": "not recognised as MS COCO",
    "not found": "data not verified as MS COCO (labels JSON not found)",
    "unreadable": "data not verified as MS COCO (labels JSON unreadable)",
    "changed": "data not verified as MS COCO (its labels JSON has changed since the run)",
}


def run_file_path(value, run_path, args):
    """Where a path a run's config names is now, or None: as it is if absolute (or, if not
    there, at the same place relative to the run folder as it was from the absolute --save-dir
    the run was started with); else relative to the folder the run was started from (what the
    run folder's path says, given the relative --save-dir it was started with), then to this
    process's folder."""
    if not value:
        return None
    save_dir = args.get("save_dir")
    here = os.path.abspath(run_path)
    if os.path.isabs(value):
        if os.path.exists(value):
            return value
        if isinstance(save_dir, str) and os.path.isabs(save_dir):
            # the runs and their data moved together (another clone): where the path was
            # from the run folder, it still is
            moved = os.path.normpath(os.path.join(here, os.path.relpath(value, save_dir)))
            return moved if os.path.exists(moved) else None
        return None
    candidates = []
    if isinstance(save_dir, str) and save_dir and not os.path.isabs(save_dir):
        tail = os.path.normpath(save_dir)
        if not tail.startswith(os.pardir) and here.endswith(os.sep + tail):
            candidates.append(os.path.join(here[:-len(tail)], value))
    candidates.append(os.path.abspath(value))
    return next((os.path.normpath(c) for c in candidates if os.path.exists(c)), None)


@functools.lru_cache(maxsize=None)
def _labels_summary(path, mtime_ns, size):
    """What a labels JSON (``prepro_captions.py labels``) says of its data set, read once per
    file version in a process: kind (coco, coco-other, shapes, flickr30k, other; unreadable),
    the file it was made from, its digests, the size of its vocabulary and of its splits."""
    try:
        info = read_json(path)
    except (OSError, ValueError):
        return {"kind": "unreadable"}
    if not isinstance(info, dict) or not isinstance(info.get("images"), list) or \
            not isinstance(info.get("ix_to_word"), dict):
        return {"kind": "unreadable"}
    prepro = info.get("prepro") if isinstance(info.get("prepro"), dict) else {}
    source = os.path.basename(str(prepro.get("input_json") or ""))
    images = [img for img in info["images"] if isinstance(img, dict)]
    files = [str(img.get("file_path") or "") for img in images]
    splits = {}
    for img in images:
        splits[img.get("split")] = splits.get(img.get("split"), 0) + 1
    from captioning.shapes import JSON_NAME as SHAPES_JSON
    if source == SHAPES_JSON or (files and all(SHAPES_FILE.fullmatch(f) for f in files)):
        kind = "shapes"
    elif "flickr" in source.lower():
        kind = "flickr30k"
    elif files and all(f.startswith(COCO_FOLDERS) for f in files):
        kind = "coco" if splits.get("test") == KARPATHY_TEST_IMAGES else "coco-other"
    else:
        kind = "other"
    return {"kind": kind, "source": source or None, "input_sha256": prepro.get("input_sha256"),
            "labels_sha256": info.get("labels_sha256"), "vocab_size": len(info["ix_to_word"]),
            "splits": {str(k): v for k, v in splits.items()}}


def caption_data(path, args, results):
    """``(record, path)``: what a captioning run's data are, from its labels JSON
    (``input_json``, found as ``run_file_path`` finds it, ``path``; None if not), and whether
    it was found: ``kind`` (a key of ``CAPTION_DATA_WORDS``), ``words``, the configured path,
    the digests and split sizes where the file was read, and ``identity`` (the data set in a
    setting's key: its labels' digest, else its configured path). A labels JSON whose
    vocabulary is not the finished run's (results.json) has changed since. The record names no
    path of this machine (report.json is the same from any checkout)."""
    configured = args.get("input_json")
    found = run_file_path(configured, path, args)
    if found is not None and not os.path.isfile(found):
        found = None
    record = {"labels_json": configured, "found": found is not None}
    if found is None:
        # Without the file, only its name can tell: a shapes set is never COCO either way.
        shapes = "shape" in os.path.basename(str(configured or "")).lower()
        record["kind"] = "shapes" if shapes else "not found"
    else:
        stat = os.stat(found)
        record.update(_labels_summary(os.path.abspath(found), stat.st_mtime_ns, stat.st_size))
        vocab = (results or {}).get("vocab_size")
        if record["kind"] != "unreadable" and isinstance(vocab, int) and \
                vocab != record["vocab_size"]:
            record["kind"] = "changed"
    record["words"] = CAPTION_DATA_WORDS[record["kind"]]
    record["identity"] = f"{record['kind']}:" + str(record.get("labels_sha256") or configured)
    return record, found


def caption_best(rows, results, args):
    """The best validation evaluation: results.json's once the run is done (``results``),
    else the metrics.csv row the script keeps as best (the first with the highest CIDEr; by
    the lowest loss without language evaluation). {"metrics", "iteration", "epoch"}, metrics
    as coco-caption gives them ("loss" too), or None before an evaluation."""
    if results is not None:
        metrics = results.get("best_val")
        if not isinstance(metrics, dict):
            return None
        return {"metrics": metrics, "iteration": results.get("best_iteration"),
                "epoch": results.get("best_epoch")}
    by_cider = args.get("language_eval", 1) and any(row.get("CIDEr") is not None
                                                    for row in rows)
    best = None
    for row in rows:
        score = row.get("CIDEr") if by_cider else \
            (None if row.get("val_loss") is None else -row["val_loss"])
        if score is None or not math.isfinite(score):
            continue
        if best is None or score > best[0]:
            best = (score, row)
    if best is None:
        return None
    row = best[1]
    metrics = {name: row.get(name) for name in CAPTION_METRICS if row.get(name) is not None}
    metrics["loss"] = row.get("val_loss")
    return {"metrics": metrics, "iteration": row["iteration"], "epoch": row["epoch"]}


def read_caption_evals(path, data):
    """The run's test-split evaluations (caption_eval.py: eval_test.json greedy,
    eval_test_beamN.json beam search), greedy first: each with its metrics, the number of images
    (against the split's, where the labels JSON was read), how many different captions it gave,
    the checkpoint it evaluated and whether that is the best_model.pt the folder holds now
    (``current``). A file that cannot be read is named and left out."""
    best = os.path.join(path, "best_model.pt")
    digest = file_sha256(best) if os.path.isfile(best) else None
    found = []
    for name in sorted(os.listdir(path)):
        match = EVAL_FILE.fullmatch(name)
        if not match or not os.path.isfile(os.path.join(path, name)):
            continue
        where = os.path.join(path, name)
        try:
            item = read_json(where)
        except (OSError, ValueError) as err:
            warn(f"{where}: not readable JSON ({err}); left out of the report")
            continue
        checkpoint = item.get("checkpoint") if isinstance(item, dict) else None
        metrics = item.get("metrics") if isinstance(item, dict) else None
        if not isinstance(checkpoint, dict) or not isinstance(metrics, dict) or not all(
                isinstance(metrics.get(name), (int, float)) for name in CAPTION_METRICS):
            warn(f"{where}: no metrics or checkpoint in it (caption_eval.py writes both); left "
                 "out of the report")
            continue
        beam = int(match.group(1) or 1)
        predictions = item.get("predictions")
        captions = {p.get("caption") for p in predictions if isinstance(p, dict)} \
            if isinstance(predictions, list) and predictions else None
        found.append({
            "file": name, "beam_size": beam, "images": item.get("images"),
            "split_images": (data.get("splits") or {}).get("test"),
            "metrics": {key: float(value) for key, value in metrics.items()
                        if isinstance(value, (int, float))},
            # how many different captions the model gave (1: the same for every image)
            "distinct_captions": len(captions) if captions is not None else None,
            "checkpoint": os.path.basename(str(checkpoint.get("path") or "?")),
            "checkpoint_iteration": checkpoint.get("iteration"),
            "checkpoint_epoch": checkpoint.get("epoch"),
            "best_model": digest is not None,
            "current": digest is not None and checkpoint.get("sha256") == digest,
            "written": item.get("written")})
    return sorted(found, key=lambda item: item["beam_size"])


def process_fields(folder, config, status, rows):
    """What every run's entry says of how it ran and where it stands, whatever its task."""
    return {"device": config.get("device"), "numerics": folder.numerics_label(config),
            "numerics_by_epoch": folder.numerics_by_epoch(status["epochs"], config),
            "state": status["state"], "epochs": status["epochs"], "planned": status["planned"],
            "message": status["message"],
            "elapsed_s": rows[-1].get("elapsed_s") if rows else None}


def read_caption_run(path, root, folder, config, status, rows, results):
    """A captioning run's numbers (``read_run``): its setting, data set, best validation
    metrics (so far, while it trains) and test-split evaluations."""
    task = "captioning"
    args = normalise_args(task, config["args"])
    final = status["state"] == "done" and results is not None
    data, labels_file = caption_data(path, args, results)
    best = caption_best(rows, results if final else None, args)
    return {
        "path": os.path.relpath(path, root), "task": task, "seed": args.get("seed"),
        "key": json.dumps([setting_key(task, args), data["identity"]]), "args": args,
        "data": data["kind"], "caption_data": data,
        "labels_file": labels_file,  # where it is on this machine (not in report.json)
        "experiment": experiment_name(task, args, data["words"]), "base": base_label(args),
        "caption_model": args.get("caption_model"),
        **process_fields(folder, config, status, rows), "final": final,
        "best_val": best["metrics"] if best else None,
        "best_iteration": best["iteration"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "iterations": rows[-1]["iteration"] if rows else 0,
        "cider_curve": [[row["iteration"], row["CIDEr"]] for row in rows
                        if row.get("CIDEr") is not None and math.isfinite(row["CIDEr"])],
        "evaluations": read_caption_evals(path, data),
        "transfer": None,
    }


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
    for task in [task for task in TASKS if any(run["task"] == task for run in runs)]:
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
                   # The paper's numbers apply only to its protocol on the official data
                   # (captioning: COCO's Karpathy split).
                   "protocol": not shown and first["data"] in (None, "official", "coco"),
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
    elif main.startswith("captioning "):
        rank = (2, main)
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
