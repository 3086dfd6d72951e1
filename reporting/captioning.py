"""Image captioning (an analysis, numbers only): per setting, each seed's test-split metrics
(caption_eval.py's eval_test.json of its best_model.pt), their mean and sample standard deviation
over seeds, and the test metrics of the best-validation seed (the paper's rule, as elsewhere in
the report: the seed with the highest best validation CIDEr); the reference numbers that apply
(only to the authors' command on COCO's Karpathy split); and, for the synthetic shapes set, the
caption-blind baseline: the most frequent training caption given to every test image, scored
with the coco-caption metrics once per data set.

Numbers stay as coco-caption gives them (CIDEr 0.98); the renderers show them x 100, as the
papers and the references do (98.0)."""
import os

from reporting.refs import (CAPTION_MODELS, CAPTION_PAPER_ROW, COCO, NOT_AVAILABLE,
                            caption_experiment, caption_references)
from reporting.runs import experiment_order, mean_sd, seed_of, setting_order
from running.runfolder import CAPTION_METRICS, read_json

SCALE = "coco-caption's values (CIDEr 0.98); report.md shows them x 100, as the papers do (98.0)"


# ----------------------------------------------------------------------------- one setting

def greedy_eval(run):
    """The run's greedy test evaluation (eval_test.json, the protocol's decoding), or None."""
    return next((item for item in run["evaluations"] if item["beam_size"] == 1), None)


def eval_problem(run, item):
    """Why a test evaluation does not count in a mean over seeds (None: it does)."""
    if item is None:
        return "not evaluated on the test split"
    if not item["current"]:
        return ("its eval_test.json is out of date (not of the best_model.pt there now)"
                if item["best_model"] else "no best_model.pt to check its eval_test.json against")
    if item["split_images"] is not None and item["images"] != item["split_images"]:
        return f"evaluated on {item['images']} of the {item['split_images']} test images"
    return None


def selection_score(run):
    """What the best-validation seed is chosen by: its best validation CIDEr (the loss, lower
    first, for a run without language evaluation); None before its first evaluation."""
    best = run["best_val"] or {}
    if best.get("CIDEr") is not None:
        return (1, best["CIDEr"])
    if best.get("loss") is not None:
        return (0, -best["loss"])
    return None


def caption_summary(setting):
    """A captioning setting's numbers: per seed, the mean and sd over the seeds whose test
    evaluation counts (of the best_model.pt there now, on the whole test split), and the
    best-validation seed with its test metrics."""
    runs = setting["runs"]
    summary = {"n_runs": len(runs), "n_done": sum(run["final"] for run in runs),
               "seeds": [run["seed"] for run in runs],
               "all_final": all(run["final"] for run in runs),
               "numerics": sorted({run.get("numerics") or "unrecorded" for run in runs})}
    counted, not_counted = [], []
    for run in runs:
        problem = eval_problem(run, greedy_eval(run))
        if problem is None:
            counted.append(run)
        else:
            not_counted.append({"seed": seed_of(run), "path": run["path"], "why": problem})
    summary["test"] = {}
    for name in CAPTION_METRICS:
        mean, sd, n = mean_sd([greedy_eval(run)["metrics"][name] for run in counted])
        summary["test"][name] = {"mean": mean, "sd": sd, "n": n}
    summary["test_counted"] = [seed_of(run) for run in counted]
    summary["test_not_counted"] = not_counted
    summary["test_so_far"] = any(not run["final"] for run in counted)
    measured = [run for run in runs if selection_score(run) is not None]
    # The best-validation run: highest best validation CIDEr, ties to the lower seed.
    chosen = max(measured, key=lambda run: (selection_score(run), -(run["seed"] or 0)),
                 default=None)
    summary["best_valid_run"] = chosen["path"] if chosen else None
    summary["best_valid_seed"] = seed_of(chosen) if chosen else None
    summary["best_valid"] = chosen["best_val"] if chosen else None
    evaluation = greedy_eval(chosen) if chosen else None
    summary["test_of_best_valid_run"] = evaluation["metrics"] if evaluation else None
    summary["best_valid_test_problem"] = eval_problem(chosen, evaluation) if chosen else None
    summary["references"] = [dict(ref._asdict()) for ref in
                             caption_references(setting["experiment"], setting["base"])] \
        if setting["protocol"] else []
    return summary


# ----------------------------------------------------------------------------- the baseline

def normalised(caption):
    """A caption as the most-frequent count compares them: lower case, words only."""
    return " ".join("".join(c if c.isalnum() else " " for c in caption.lower()).split())


def caption_blind_baseline(labels_json, found):
    """The caption-blind baseline of a data set: its most frequent training caption (compared
    in lower case without punctuation; ties to the first seen), given to every test image and
    scored against the test references with ``captioning.metrics.score`` (one call: Java runs
    the PTB tokenizer and METEOR). {"caption", "count", "train_captions", "test_images",
    "metrics"}, or {"error"} where it cannot be computed (the report goes on). ``labels_json``:
    the path as the run's config gives it; ``found``: where it is (None: not found)."""
    record = {"labels_json": labels_json}
    if found is None or not os.path.isfile(found):
        return dict(record, error="labels JSON not found")
    try:
        info = read_json(found)
        images = [img for img in info["images"] if isinstance(img, dict)]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return dict(record, error=f"labels JSON unreadable ({err})")
    counts, first = {}, {}
    test = {}
    for img in images:
        refs = [ref for ref in img.get("references") or [] if isinstance(ref, str)]
        if img.get("split") == "train":
            for ref in refs:
                key = normalised(ref)
                if key:
                    counts[key] = counts.get(key, 0) + 1
                    first.setdefault(key, len(first))
        elif img.get("split") == "test" and refs:
            test[img.get("id")] = refs
    if not counts or not test:
        return dict(record, error="the labels JSON has no training captions or no test "
                                  "images with references")
    caption = max(counts, key=lambda key: (counts[key], -first[key]))
    record.update(caption=caption, count=counts[caption], train_captions=sum(counts.values()),
                  test_images=len(test))
    try:
        from captioning import metrics
        record["metrics"] = metrics.score(test, {ident: caption for ident in test})
    except Exception as err:  # Java missing, pycocoevalcap broken: the report still completes
        text = str(err).strip().splitlines()
        record["error"] = (f"could not be computed: {type(err).__name__}"
                           + (f": {text[0]}" if text else ""))
    return record


# ----------------------------------------------------------------------------- the section

def captioning_summary(settings):
    """The captioning section's numbers: per experiment (model and data set; COCO's two, with
    the references, always), its settings (each with ``caption_summary`` as its summary), the
    references that apply, the paper's table (not available) and, on the synthetic shapes set,
    the caption-blind baseline (one score per data set, however many runs use it)."""
    captioning = [s for s in settings if s["task"] == "captioning"]
    names = {caption_experiment(model, COCO) for model in CAPTION_MODELS} | \
        {s["experiment"] for s in captioning}
    baselines = {}
    experiments = []
    coco_names = [caption_experiment(model, COCO) for model in CAPTION_MODELS]

    def order(name):  # COCO's experiments first (the paper's), then by model and data set
        model = name.split()[1]
        return (name not in coco_names,
                CAPTION_MODELS.index(model) if model in CAPTION_MODELS else len(CAPTION_MODELS),
                experiment_order(name))

    for name in sorted(names, key=order):
        present = sorted((s for s in captioning if s["experiment"] == name), key=setting_order)
        data = present[0]["runs"][0]["caption_data"] if present and present[0]["runs"] \
            else None
        coco = name in coco_names
        entry = {"experiment": name, "coco": coco,
                 "data": data["kind"] if data else "coco",
                 "data_words": data["words"] if data else COCO,
                 "settings": [s["label"] for s in present],
                 "references": [dict(ref._asdict()) for ref in caption_references(name)]
                 if coco else [],
                 "not_measured": [ref.setting for ref in caption_references(name)
                                  if ref.setting is not None and not any(
                                      s["base"] == ref.setting and s["protocol"]
                                      for s in present)] if coco else []}
        if coco:
            entry["paper"] = {"row": CAPTION_PAPER_ROW, "text": NOT_AVAILABLE}
        if entry["data"] == "shapes":
            # One baseline per data set (its labels' digest), for every experiment on it.
            sets = {}
            for setting in present:
                for run in setting["runs"] + setting["repeats"]:
                    sets.setdefault(run["caption_data"]["identity"],
                                    (run["caption_data"]["labels_json"], run["labels_file"]))
            entry["baselines"] = []
            for identity, (configured, found) in sorted(sets.items()):
                if identity not in baselines:
                    baselines[identity] = caption_blind_baseline(configured, found)
                entry["baselines"].append(baselines[identity])
        experiments.append(entry)
    return {"metric_scale": SCALE, "experiments": experiments,
            "settings": {s["experiment"] + " / " + s["label"]: s["summary"] for s in captioning}}
