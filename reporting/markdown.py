"""The report's markdown: its tables and sections, and the README block it regenerates."""
import os

from reporting.captioning import greedy_eval
from reporting.convergence import (CDETACH_CROSS, MILESTONES, accuracy_at, cdetach_pairs,
                                   common_epoch, first_above, is_copying)
from reporting.paired import PAIR_EPOCHS
from reporting.refs import (MAIN_EXPERIMENTS, PAPER, REFERENCE, REPRO, SOURCES,
                            caption_references, reference_settings, references)
from reporting.runs import (SOLVED, completeness, experiment_order, is_ablation, seed_of,
                            setting_order)
from reporting.standing import standing_section
from reporting.text import (ahead_from_text, ahead_text, best_text, cdetach_sentence,
                            common_modifiers, first_epoch_text, median_text, milestone_text,
                            pct, runs_text, short_label, solved_pair_text, table,
                            test_set_text)
from reporting.transfer import transfer_delays, transfer_groups
from running.errors import UsageError
from running.runfolder import CAPTION_METRICS, atomic_write

BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"
CAPTION_BEGIN, CAPTION_END = "<!-- captioning:begin -->", "<!-- captioning:end -->"


# ----------------------------------------------------------------------------- markdown

def stat_text(stat):
    if stat["n"] == 0:
        return "—"
    if stat["n"] == 1:
        return f"{stat['mean']:.2f} (n = 1)"
    return f"{stat['mean']:.2f} ± {stat['sd']:.2f} (n = {stat['n']})"


def repeats_text(setting):
    """The folders that repeat a seed of the setting: named, not counted as more seeds."""
    repeats = setting.get("repeats") or []
    if not repeats:
        return ""
    return (" (not counted, repeats of a seed: "
            + ", ".join(f"{run['path']} = seed {seed_of(run)}" for run in repeats) + ")")


def ref_texts(experiment, setting):
    """Every reference of a setting, if it is the paper's protocol (else they do not apply)."""
    if not setting["protocol"]:
        return "—"
    return "; ".join(f"{ref.source}: {ref.text}"
                     for ref in references(experiment, setting["base"])) or "—"


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
                chosen_text = (f"seed {seed_of(chosen)}: {pct(chosen['best_valid_accuracy'])} "
                               f"at epoch {chosen['best_epoch']} ({completeness(chosen)})")
            spread = stat_text(summary["test_accuracy"])
            rows.append([experiment, setting["label"], paper_text, ours, chosen_text,
                         spread + (" (so far)" if unfinished and spread != "—" else ""),
                         runs_text(setting["runs"]) + repeats_text(setting),
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
    return "not reached" + ("" if run["final"] else f" ({epochs_text(run['epochs'])} so far)")


def epochs_text(count):
    """'1 epoch', '2 epochs'."""
    return f"{count} epoch" + ("" if count == 1 else "s")


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
            elif not summary["all_final"] and len({run["epochs"] for run in runs}) > 1:
                # A mean over runs at different stages (epoch 49 and epoch 200) measures the
                # stages, not the setting: each seed with its epochs instead.
                best = "; ".join(
                    f"seed {seed_of(run)}: {pct(run['best_valid_accuracy'])} "
                    f"({epochs_text(run['epochs'])})" for run in runs
                    if run["best_valid_accuracy"] is not None) + " (so far)"
            else:
                best = f"mean {stat_text(summary['best_valid_accuracy'])}{later}"
            first = [run["first_epoch_solved"] for run in runs
                     if run["first_epoch_solved"] is not None]
            rows.append([experiment, setting["label"], runs_text(runs) + repeats_text(setting),
                         best,
                         f"{summary['solved']} of {len(runs)}{later}",
                         ", ".join(map(str, sorted(first))) or "—",
                         ref_texts(experiment, setting)])
            for run in runs:
                per_run.append([experiment, setting["label"], seed_of(run), completeness(run),
                                pct(run["best_valid_accuracy"]) + ("" if run["final"] else
                                                                   " (so far)"),
                                run["best_epoch"] if run["best_epoch"] is not None else "—",
                                solved_text(run)])
            for run in setting["repeats"]:
                per_run.append([experiment, setting["label"],
                                f"{seed_of(run)} (repeat of {run['repeat_of']}: not counted)",
                                completeness(run), pct(run["best_valid_accuracy"]),
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


def transfer_source(transfer):
    """Which checkpoint and test set a transfer number comes from, and how it departs from the
    protocol (best_model.pt as it is now; 5,000 sequences of seed 555)."""
    text = f"{transfer['checkpoint']} of epoch {transfer['checkpoint_epoch']}"
    if not transfer["current"]:
        text += f" ({transfer['checkpoint']} has changed since: out of date)"
    text += f"; {test_set_text(transfer)}"
    if not transfer["protocol"]:
        text += " (not the protocol's best model on 5,000 sequences of seed 555)"
    return text


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
        notes = []
        for run in sorted(members, key=lambda r: (setting_order(r), r["seed"] or 0)):
            transfer = run["transfer"]
            seed = seed_of(run) if not run.get("repeat_of") else \
                f"{seed_of(run)} (repeat of {run['repeat_of']})"
            rows.append([f"{run['setting']} (ours)", seed, transfer_source(transfer),
                         *(pct(transfer["accuracy"].get(str(d))) if str(d) in
                           transfer["accuracy"] else "—" for d in delays),
                         completeness(run) + ("" if run["final"] else " (not final)")])
            for other in transfer["others"]:
                values = ", ".join(f"T'={d}: {pct(a)}" for d, a in other["accuracy"].items())
                notes.append(f"- {run['setting']}, seed {seed_of(run)}, also measured (not in "
                             f"the table): {transfer_source(other)}: {values}")
        if not members:
            rows.append(["ours", "", "", *("not measured" if i == 0 else "" for i in
                                           range(len(delays))), ""])
        lines += [f"Trained at T = {trained}, accuracy (%) on the last 10 steps at delay T':", ""]
        lines += table(["setting", "seed", "model measured; test set",
                        *(f"T'={d}" for d in delays), "training run"], rows)
        lines += [""] + notes + [""] if notes else [""]
    return lines[:-1]


def runs_section(runs):
    rows = []
    for run in sorted(runs, key=lambda r: (experiment_order(r["experiment"]),
                                           setting_order(r), r["seed"] or 0)):
        elapsed = "" if run["elapsed_s"] is None else f"{run['elapsed_s'] / 3600:.1f}"
        rows.append([run["path"], run["experiment"], run["setting"], seed_of(run),
                     run["state"], f"{run['epochs']}/{run['planned']}", run["device"] or "?",
                     run.get("numerics_by_epoch") or run.get("numerics") or "unrecorded",
                     elapsed, "; ".join(filter(None, [
                         run["message"], run.get("repeat_of") and
                         f"repeats seed {seed_of(run)} of {run['repeat_of']}: not counted"]))])
    return table(["run folder", "experiment", "setting", "seed", "state", "epochs done / planned",
                  "device", "numerics", "training time (h)", "note"], rows)


def numerics_notes(settings):
    """One line per setting whose runs did not all record the same arithmetic (numerics mode
    and kernels, see running/numerics.py): their seeds are then not bit-for-bit comparable
    runs."""
    lines = []
    for setting in settings:
        labels = {}
        for run in setting["runs"]:
            labels.setdefault(run.get("numerics") or "unrecorded", []).append(seed_of(run))
        if len(labels) > 1:
            parts = "; ".join(f"{label}: seed{'s' if len(seeds) > 1 else ''} "
                              + ", ".join(map(str, seeds)) for label, seeds in labels.items())
            lines.append(f"- {setting['experiment']}, {setting['label']}: {parts}")
    if not lines:
        return []
    return (["Settings whose runs recorded different (or no) numerics fingerprints; "
             "`unrecorded` runs predate the fingerprint (see docs/reproducibility.md):", ""]
            + lines + [""])


def markdown_body(data, figures, h, figure_dir, root, standing=True):
    """The report's sections (headings at level ``h``), figures linked from ``figure_dir``;
    ``standing``: open with the copying runs in words (the README has its own block of it)."""
    settings, runs = data["settings_full"], data["runs_full"]
    experiments = sorted({s["experiment"] for s in settings if s["task"] != "captioning"} |
                         set(MAIN_EXPERIMENTS) |
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
    if standing:
        lines += standing_section(settings, data.get("paired", []), h)
    mnist_main = [e for e in experiments if not is_ablation(e) and not e.startswith("copying")]
    copying_main = [e for e in experiments if not is_ablation(e) and e.startswith("copying")]
    lines += [f"{h} Pixel MNIST and permuted MNIST", "",
              "Test accuracy (%) at the best-validation epoch of the best-validation seed (the "
              "paper's rule); beside it the mean and sample standard deviation over seeds. Runs "
              "on files that are not the official MNIST, or that could not be checked against "
              "torchvision's checksums (their data.json), are rows of their own, marked in "
              "brackets, without the paper's numbers.", ""]
    lines += mnist_section(settings, mnist_main) + [""]
    lines += [f"{h} Copying", "",
              f"Best validation accuracy (%) and the first epoch at which validation accuracy "
              f"reached {SOLVED:g} %, per seed.", ""]
    lines += copying_section(settings, copying_main) + [""]
    lines += convergence_section(settings, h)  # ends with a blank line; nothing if no copying
    lines += paired_section(data.get("paired", []), h)  # the same; nothing if no pair
    lines += [f"{h} Transfer copying", "",
              "The best model of a copying run, tested without training on fresh sequences of "
              "a longer delay T' (the paper: 5,000 sequences, seed 555). Each row names the "
              "checkpoint measured and the test set; where a run holds several measurements, "
              "the protocol's is shown (best model, 5,000 sequences, seed 555) and the others "
              "are listed below the table.", ""]
    lines += transfer_section(runs) + [""]
    lines += captioning_section(data.get("captioning"), settings, h)  # nothing without runs
    ablations = [e for e in experiments if is_ablation(e)]
    lines += [f"{h} Ablations", "",
              "c-detach (the cell state c is detached instead of h, same p) and training "
              "without gradient clipping. Pixel-MNIST ablations: test accuracy as above.", ""]
    lines += mnist_section(settings, [e for e in ablations if not e.startswith("copying")])
    copying_ablations = [e for e in ablations if e.startswith("copying")]
    lines += [""] + copying_section(settings, copying_ablations) + [""]
    lines += cdetach_section(settings, h)  # ends with a blank line; nothing if no c-detach run
    lines += [f"{h} Figures", ""]
    for name, caption in figures:
        link = os.path.join(figure_dir, name).replace(os.sep, "/") if figure_dir else name
        lines += [f"![{caption}]({link})", ""]
    lines += [f"{h} Runs", ""] + runs_section(runs) + [""] + numerics_notes(settings)
    if data["skipped"]:
        lines += [f"{h} Left out", ""]
        lines += [f"- `{item['path']}`: {item['reason']}" for item in data["skipped"]] + [""]
    lines += [f"{h} Sources of the references", ""]
    lines += [f"- {name}: {text}." for name, text in SOURCES.items()]
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- captioning

METRIC_NAMES = {"Bleu_1": "BLEU-1", "Bleu_2": "BLEU-2", "Bleu_3": "BLEU-3", "Bleu_4": "BLEU-4",
                "METEOR": "METEOR", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr"}


def x100(value):
    """A coco-caption number as the papers print it (CIDEr 0.98 -> 98.00), or an em dash."""
    return "—" if value is None else f"{100 * value:.2f}"


def metric_cells(metrics):
    return [x100((metrics or {}).get(name)) for name in CAPTION_METRICS]


def best_val_text(best, iteration, final):
    if not best or best.get("CIDEr") is None:
        return "no evaluation yet" if not best else \
            f"loss {best['loss']:.4f} (no CIDEr)" if best.get("loss") is not None else "—"
    return (f"{x100(best['CIDEr'])} (iteration {iteration})" + ("" if final else " (so far)"))


def caption_eval_text(run, item):
    """What a test evaluation is of, and whether it is up to date."""
    if item is None:
        return (f"not evaluated on the test split yet (caption_eval.py --model-dir {run['path']} "
                "--split test)")
    where = f"iteration {item['checkpoint_iteration']}" \
        if item["checkpoint_iteration"] is not None else item["checkpoint"]
    if not item["best_model"]:
        text = f"{item['file']} of {where}: no best_model.pt to check it against"
    elif not item["current"]:
        text = (f"{item['file']} of {where}: out of date (best_model.pt has changed since: "
                f"run caption_eval.py again)")
    else:
        text = f"{item['file']}: best_model.pt of {where}"
        text += "" if run["final"] else " (the best so far: run not finished)"
    if item["split_images"] is not None and item["images"] != item["split_images"]:
        text += f"; on {item['images']} of the {item['split_images']} test images"
    elif item["images"] is not None:
        text += f"; {item['images']} test images"
    if item["distinct_captions"] == 1 and (item["images"] or 0) > 1:
        text += f"; the same caption for all {item['images']} images"
    if item["beam_size"] > 1:
        text += (f"; beam search (beam {item['beam_size']}), not the protocol's greedy "
                 "decoding: not in the mean")
    return text


def caption_stat_cells(stats):
    cells = []
    for name in CAPTION_METRICS:
        stat = stats[name]
        if stat["n"] == 0:
            cells.append("—")
        elif stat["n"] == 1:
            cells.append(f"{x100(stat['mean'])} (n = 1)")
        else:
            cells.append(f"{x100(stat['mean'])} ± {100 * stat['sd']:.2f}")
    return cells


def caption_setting_rows(setting, label=None):
    summary = setting["summary"]
    label = label or setting["label"]
    rows = []
    for run in setting["runs"]:
        item = greedy_eval(run)
        rows.append([label, f"seed {seed_of(run)}", completeness(run),
                     best_val_text(run["best_val"], run["best_iteration"], run["final"]),
                     *metric_cells(item and item["metrics"]), caption_eval_text(run, item)])
        for beam in run["evaluations"]:
            if beam["beam_size"] > 1:
                rows.append([label, f"seed {seed_of(run)}, beam {beam['beam_size']}",
                             completeness(run), "", *metric_cells(beam["metrics"]),
                             caption_eval_text(run, beam)])
    for run in setting["repeats"]:
        rows.append([label, f"seed {seed_of(run)} (repeat of {run['repeat_of']}: not counted)",
                     completeness(run),
                     best_val_text(run["best_val"], run["best_iteration"], run["final"]),
                     *metric_cells(None), ""])
    stats = summary["test"]
    n = stats[CAPTION_METRICS[0]]["n"]
    note = (f"over seed{'s' if n != 1 else ''} {', '.join(map(str, summary['test_counted']))}"
            if n else "no seed's test evaluation counts yet")
    if summary["test_not_counted"]:
        note += "; not counted: " + "; ".join(f"seed {item['seed']}: {item['why']}"
                                             for item in summary["test_not_counted"])
    if summary["test_so_far"]:
        note += " (so far: not every run counted has finished)"
    rows.append([label, "mean ± sd over seeds", runs_text(setting["runs"]), "",
                 *caption_stat_cells(stats), note])
    chosen = next((run for run in setting["runs"] if run["path"] == summary["best_valid_run"]),
                  None)
    if chosen is None:
        rows.append([label, "best-validation seed", "no evaluation yet", "",
                     *metric_cells(None), ""])
    else:
        unfinished = summary["n_runs"] - summary["n_done"]
        note = summary["best_valid_test_problem"] or "its test evaluation"
        if not chosen["final"]:
            note += " (not final: the run has not finished)"
        elif unfinished:
            note += (f" (seed choice not final: {unfinished} of {summary['n_runs']} runs "
                     "unfinished)")
        rows.append([label, f"best-validation seed: {seed_of(chosen)}", completeness(chosen),
                     best_val_text(chosen["best_val"], chosen["best_iteration"],
                                   chosen["final"]),
                     *metric_cells(summary["test_of_best_valid_run"]), note])
    for ref in summary["references"]:
        rows.append([label, ref["source"], "", "", *reference_cells(ref),
                     f"{ref['where']}: {ref['text']}"])
    return rows


def reference_cells(ref):
    """A reference number in its metric's column (the papers' scale already)."""
    return [f"{ref['value']:.1f}" if name == ref["kind"] else "—" for name in CAPTION_METRICS]


def captioning_section(captioning, settings, h):
    """The captioning runs per experiment (model and data set), with the references beside
    the authors' commands on COCO only (markdown lines ending with a blank one); empty when
    there is no captioning run."""
    if not captioning:
        return []
    lines = [f"{h} Image captioning", "",
             "Test-split metrics (caption_eval.py --split test: greedy decoding, "
             "coco-caption's BLEU 1-4, METEOR, ROUGE-L and CIDEr-D; SPICE is not computed) of "
             "each seed's best_model.pt (its best validation CIDEr), their mean and sample "
             "standard deviation over the seeds whose evaluation is of the best_model.pt there "
             "now and of the whole test split, and the test metrics of the best-validation seed "
             "(the paper's rule: the seed with the highest best validation CIDEr). Every metric "
             "is coco-caption's number x 100, as the papers print them (a CIDEr of 0.98 reads "
             "98.00). The authors' README numbers (COCO, Karpathy test split) stand only beside "
             "the authors' commands on that split; runs on other data, such as the synthetic "
             "shapes set, are experiments of their own, without them.", ""]
    by_experiment = {}
    for setting in settings:
        if setting["task"] == "captioning":
            by_experiment.setdefault(setting["experiment"], []).append(setting)
    header = ["setting", "row", "runs (state, epochs done / planned)",
              "best valid CIDEr (iteration)", *(METRIC_NAMES[m] for m in CAPTION_METRICS),
              "test evaluation; note"]
    for entry in captioning["experiments"]:
        present = sorted(by_experiment.get(entry["experiment"], []), key=setting_order)
        # Beside the COCO references every label stays whole (a shortened one could read as
        # the authors' command); elsewhere what all settings share is said once.
        common = [] if entry["coco"] else common_modifiers(present)
        rows = []
        for setting in present:
            rows += caption_setting_rows(setting, short_label(setting, common))
        for base in entry["not_measured"]:
            for ref in caption_references(entry["experiment"], base):
                rows.append([base, ref.source, "not measured", "",
                             *reference_cells(ref._asdict()), f"{ref.where}: {ref.text}"])
        if "paper" in entry:
            rows.append(["vanilla and h-detach", entry["paper"]["row"], "", "",
                         entry["paper"]["text"], *[""] * (len(CAPTION_METRICS) - 1), ""])
        for baseline in entry.get("baselines", []):
            if "metrics" in baseline:
                rows.append(["caption-blind baseline",
                             f"the most frequent training caption (\"{baseline['caption']}\", "
                             f"{baseline['count']} of {baseline['train_captions']}) for every "
                             "test image", "", "", *metric_cells(baseline["metrics"]),
                             # the file's name only: a committed report names no machine's
                             # paths (the sweep stores its data paths absolute)
                             f"{baseline['test_images']} test images of "
                             f"{os.path.basename(baseline['labels_json'])}"])
        shared = [f"Every setting below also has: {', '.join(common)}.", ""] if common else []
        lines += [f"{entry['experiment']}:", ""] + shared + table(header, rows)
        notes = []
        for baseline in entry.get("baselines", []):
            if "metrics" not in baseline:
                error = baseline["error"]
                where = f" ({baseline['labels_json']})" if baseline["labels_json"] else ""
                notes.append(f"- the caption-blind baseline {error}{where}"
                             if error.startswith("could not") else f"- baseline: {error}{where}")
        if not entry["coco"]:
            notes.append(f"- {entry['data_words']}: the COCO reference numbers are not set "
                         "beside these runs.")
        lines += ([""] + notes if notes else []) + [""]
    return lines


# ------------------------------------------------------------------- convergence, c-detach, pairs

def convergence_section(settings, h, milestones=MILESTONES):
    """The per-setting counts table and the per-seed table (markdown lines ending with a blank
    one, heading level ``h``); empty when no copying run is there."""
    copying = sorted((s for s in settings if is_copying(s) and s.get("convergence")),
                     key=lambda s: (experiment_order(s["experiment"]), setting_order(s)))
    if not copying:
        return []
    rows, per_seed = [], []
    for setting in copying:
        summary = setting["convergence"]
        runs = "; ".join(f"seed {seed_of(run)}: {completeness(run)}" for run in setting["runs"])
        rows.append([setting["experiment"], setting["label"], summary["n_seeds"],
                     *(milestone_text(summary["by_epoch"][str(m)], m) for m in milestones),
                     median_text(summary), runs])
        for seed in summary["per_seed"]:
            per_seed.append([setting["experiment"], setting["label"], seed["seed_label"],
                             f"{seed['state']}, {seed['epochs']}/{seed['planned']}",
                             first_epoch_text(seed), best_text(seed)])
    lines = [f"{h} Copying: convergence across seeds", "",
             f"A seed has converged at the first epoch with validation accuracy >= {SOLVED:g} %. "
             f"'By epoch M' counts only the seeds whose run has done M epochs (or converged "
             f"before): a seed not there yet is named, never counted as failing. The median is "
             f"over all the setting's seeds, and only where they determine it (every seed that "
             f"has not converged has run past it); no mean is taken over seeds that have not "
             f"converged.", ""]
    lines += table(["experiment", "setting", "seeds",
                     *(f"reached {SOLVED:g} % by epoch {m}" for m in milestones),
                     "median first epoch", "runs (state, epochs done / planned)"], rows)
    lines += ["", "Per seed:", ""]
    lines += table(["experiment", "setting", "seed", "run (epochs done / planned)",
                     f"first epoch at >= {SOLVED:g} %", "best valid acc. (%) and its epoch"],
                    per_seed)
    return lines + [""]


def cdetach_section(settings, h):
    """c-detach beside h-detach of the same p and seed, with the paper's and the reproduction's
    statements (markdown lines ending with a blank one); empty when there is no c-detach
    copying run."""
    pairs = cdetach_pairs(settings)
    if not pairs:
        return []
    lines = [f"{h} Copying: c-detach beside h-detach of the same seed", ""]
    rows, ours = [], []
    for setting, run, twin, partner in pairs:
        common = common_epoch(run, partner)
        for member, label in ((run, setting["label"]), (partner, twin and twin["label"])):
            if member is None:
                rows.append([twin["label"] if twin else "h-detach, same p", seed_of(run),
                             "no run of this seed", "", "", "", ""])
                continue
            cross = first_above(member, CDETACH_CROSS)
            rows.append([label, seed_of(member), completeness(member),
                         "—" if accuracy_at(member, common) is None
                         else f"epoch {common}: {accuracy_at(member, common):.2f}",
                         best_text({"best": member["best_valid_accuracy"],
                                    "best_epoch": member["best_epoch"],
                                    "final": member["final"]}),
                         f"epoch {cross}" if cross else f"not by epoch {member['epochs']}",
                         first_epoch_text({"first_epoch": member["first_epoch_solved"],
                                           "epochs": member["epochs"],
                                           "final": member["final"]})])
        ours.append(cdetach_sentence(setting, run, partner, common))
    lines += table(["setting", "seed", "run (epochs done / planned)",
                     "valid acc. (%) at the epoch both runs have done", "best valid acc. (%)",
                     f"first epoch above {CDETACH_CROSS:g} %",
                     f"first epoch at >= {SOLVED:g} %"], rows)
    experiment = pairs[0][0]["experiment"]
    statements = [f"- {ref.source}: {ref.text}" for ref in references(experiment)
                  if ref.source in (PAPER, REPRO)]
    lines += ["", "What the paper and the reproduction state, and what our runs show so far:",
              ""] + statements + [f"- ours: {text}" for text in ours]
    return lines + [""]


def paired_section(summaries, h, milestones=MILESTONES):
    """Markdown lines (ending with a blank one, heading level ``h``); empty without pairs."""
    if not summaries:
        return []
    lines = [f"{h} Copying: h-detach against vanilla of the same seed", "",
             "Under the kit's streams (`--rng kit`) the runs of one seed see the same data, "
             "initial weights and batches; only the detach draws differ, so each seed is a "
             "paired comparison. 'Ahead' means a strictly higher validation accuracy at that "
             "epoch; seeds are counted at epoch M only where both runs have done M. "
             "Accuracies are 'h-detach / vanilla' (%). Nothing here is averaged over seeds.",
             ""]
    rows = []
    for summary in summaries:
        rows.append([summary["experiment"], f"{summary['hdetach']} vs {summary['vanilla']}",
                     len(summary["seeds"]),
                     *(ahead_text(summary["by_epoch"][str(m)], m) for m in milestones)])
    lines += table(["experiment", "settings", "seeds paired",
                     *(f"h-detach ahead at epoch {m}" for m in milestones)], rows)
    rows = []
    for summary in summaries:
        for pair in summary["seeds"]:
            rows.append([summary["experiment"], summary["hdetach"], pair["seed"],
                         f"{pair['hdetach_run']}; {pair['vanilla_run']}",
                         *(" / ".join(map(pct, pair["at"][str(e)])) for e in PAIR_EPOCHS),
                         f"{pair['ahead_epochs']} of {pair['common_epochs']}",
                         ahead_from_text(pair), solved_pair_text(pair)])
    lines += ["", "Per seed:", ""]
    lines += table(["experiment", "h-detach setting", "seed",
                     "runs (state, epochs done / planned): h-detach; vanilla",
                     *(f"epoch {e}" for e in PAIR_EPOCHS),
                     "epochs h-detach ahead, of those both did", "ahead at every epoch from",
                     f"first epoch at >= {SOLVED:g} %: h-detach / vanilla"], rows)
    return lines + [""]


# ----------------------------------------------------------------------------- README block

def _read_lines(path):
    try:
        with open(path, newline="") as handle:
            return handle.read().splitlines(keepends=True)
    except OSError as err:
        raise UsageError(f"--readme {path}: {err.strerror}") from None


def _marked(lines, path, begin, end, optional):
    """The indices of ``begin`` and ``end`` among ``lines``; None when ``optional`` and neither
    is there; a ``UsageError`` when they are not there exactly once each, in order."""
    begins = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if optional and not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise UsageError(f"--readme {path} needs one line {begin} and, after it, one line "
                         f"{end} around the block to regenerate")
    return begins[0], ends[0]


def readme_block_lines(path, blocks):
    """Check the README before anything is written: each (begin, end) pair of ``blocks`` may
    be absent, but if one of its markers is there, both must be, once, in order, outside the
    other blocks; and at least one block must be there. A ``UsageError`` otherwise."""
    lines = _read_lines(path)
    spans = [_marked(lines, path, begin, end, True) for begin, end in blocks]
    if not any(spans):
        raise UsageError(f"--readme {path} has no block to regenerate: it needs one line "
                         + " or ".join(f"{begin} and, after it, one line {end}"
                                       for begin, end in blocks))
    spans = sorted(span for span in spans if span)
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise UsageError(f"--readme {path}: its marked blocks overlap")
    return lines


def write_readme(path, blocks):
    """Replace the lines of each (begin, end, text) of ``blocks`` whose markers are there with
    ``text``, in one atomic write (checked beforehand: readme_block_lines). Returns the begin
    markers of the blocks written."""
    lines = _read_lines(path)
    written = []
    for begin, end, text in blocks:
        span = _marked(lines, path, begin, end, True)
        if span is None:
            continue
        newline = "\r\n" if lines[span[0]].endswith("\r\n") else "\n"
        block = [line + newline for line in text.rstrip("\n").split("\n")]
        lines = lines[:span[0] + 1] + block + lines[span[1]:]
        written.append(begin)
    content = "".join(lines)
    atomic_write(path, lambda handle: handle.write(content.encode()))
    return written
