"""The paper's tables and figures, from run folders: our numbers beside the paper's.

    python report.py results                    # writes results/report.md, report.json, *.png
    python report.py runs --out /tmp/report     # somewhere else
    python report.py results --readme README.md # also regenerate README.md's standing block

Reads every run folder under ROOT (a folder with a config.json, at any depth; hidden folders
such as .slurm are skipped): config.json, metrics.csv, results.json once finished,
transfer.json if any, and the run's state. Runs are grouped into settings by everything that
defines a run except the seed; runs of different settings are never averaged together. Every
number says how complete its run is ("epochs done / planned"); a run that has not finished is
never presented as final.

Writes into --out (default ROOT): report.md (the tables), report.json (the same numbers for
programs), valid_accuracy.png (validation accuracy against epoch, one panel per experiment)
and transfer.png (transfer copying accuracy against T', when any run has a transfer.json);
convergence.png (copying: seeds at 99 % against epoch, and every seed's curve, when any copying
run is there); captioning.png (validation CIDEr against iteration, one panel per model and data
set, when any captioning run has been evaluated).

Captioning runs (caption_train.py) get a section of their own, only where there are any: per
setting, each seed's test-split metrics (caption_eval.py's eval_test.json, marked out of date
when it is not of the best_model.pt the folder holds now), their mean and sd, and the
best-validation seed's; the authors' README numbers only beside the authors' commands on COCO's
Karpathy split (the data set is told by the run's labels JSON); on the synthetic shapes set, the
caption-blind baseline instead (the most frequent training caption, scored once per data set;
it needs Java, as the caption metrics do).

With --readme PATH, PATH's marked blocks are regenerated, whichever it has (at least one): the
lines between ``<!-- report:begin -->`` and ``<!-- report:end -->`` are replaced by the tables,
those between ``<!-- standing:begin -->`` and ``<!-- standing:end -->`` by the copying runs in
sentences (reporting/standing.py: the sample, the counts at 99 %, the paired comparison,
c-detach); nothing else in the file changes. This kit's README has the sentences only.
"""
import json
import math
import os
import sys

from reporting.captioning import caption_summary, captioning_summary
from reporting.convergence import convergence_summary
from reporting.figures import (captioning_figure, convergence_figure, curves_figure,
                               transfer_figure)
from reporting.markdown import (BEGIN, CAPTION_BEGIN, CAPTION_END, END, captioning_section,
                                markdown_body, readme_block_lines, write_readme)
from reporting.paired import paired_summaries
from reporting.refs import CAPTION_REFERENCE
from reporting.refs import REFERENCE, SOURCES, TRANSFER_T  # noqa: F401 (part of report's API)
from reporting.runs import (SOLVED, base_label, best_of, experiment_name,  # noqa: F401
                            group_settings, load_runs, normalise_args, summarise)
from reporting.standing import BEGIN as STANDING_BEGIN, END as STANDING_END, readme_paragraphs
from running.errors import UsageError, report_errors
from running.runfolder import (CAPTION_COLUMNS, EventLog, RunFolder, atomic_write,
                               check_writable)
from utils import ArgParser

# The report's layers, each importing only those below it (reporting/):
#   refs (reference numbers, as data)  ->  runs (reading and summarising run folders)
#   ->  analyses: convergence (copying seeds at 99 %), paired (h-detach vs vanilla per seed),
#       transfer (which delays to set side by side), captioning (its settings' numbers and the
#       caption-blind baseline)
#   ->  rendering: text (shared words and tables) -> standing (the copying runs in sentences)
#       -> markdown (tables, README block); figures (PNGs)  ->  this command line.


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


# metrics.csv's columns and the TensorBoard tags the training scripts log them under.
EPOCH_TAGS = {"valid_accuracy": "valid/accuracy", "valid_loss": "valid/loss",
              "train_loss": "train/epoch_loss", "p_detach": "p_detach",
              "test_accuracy": "test/accuracy"}
CAPTION_TAGS = {column: key for column, key in CAPTION_COLUMNS.items()
                if column not in ("epoch", "iteration", "elapsed_s")}


def write_tensorboard(root, runs, out):
    """Per-epoch event files rebuilt from each run's metrics.csv, one folder per run under
    ``out`` (step = epochs done, as the scripts log them; per-iteration losses are not in
    metrics.csv)."""
    for run in runs:
        folder = os.path.join(out, run["path"])
        os.makedirs(folder, exist_ok=True)
        log = EventLog(folder)
        for row in RunFolder(os.path.join(root, run["path"])).metrics():
            # captioning: a row per evaluation, at step = iteration, as caption_train.py logs
            tags, step = (CAPTION_TAGS, row["iteration"]) if run["task"] == "captioning" \
                else (EPOCH_TAGS, row["epoch"])
            for column, tag in tags.items():
                if row.get(column) is not None and math.isfinite(row[column]):
                    log.scalar(tag, row[column], step)
        log.close()


def build_parser():
    parser = ArgParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", metavar="ROOT", help="a folder of run folders (at any depth)")
    parser.flag("--out", default=None, metavar="DIR",
                help="where report.md, report.json and the figures go (default ROOT)")
    parser.flag("--tensorboard", default=None, metavar="DIR",
                help="also write TensorBoard event files rebuilt from each run's metrics.csv "
                     "(per-epoch scalars) into DIR, a new or empty folder: for runs whose "
                     "own event files are not there (results/ does not commit them)")
    parser.flag("--readme", default=None, metavar="PATH",
                help=f"also regenerate PATH's marked blocks, whichever it has (at least one): "
                     f"the lines between {BEGIN} and {END} become the report's tables, "
                     f"those between {STANDING_BEGIN} and {STANDING_END} the copying runs in "
                     f"sentences, those between {CAPTION_BEGIN} and {CAPTION_END} the "
                     "captioning tables")
    return parser


def run(args):
    root = args.root
    if not os.path.isdir(root):
        raise UsageError(f"ROOT {root} is not a folder" if os.path.exists(root)
                         else f"ROOT {root} does not exist")
    out = args.out or root
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a folder")
    try:
        check_writable(out, "--out" if args.out else "ROOT")
    except UsageError as err:
        if args.out:
            raise
        raise UsageError(f"{err} (the report goes into ROOT unless --out DIR says where)") \
            from None
    if args.readme:
        readme_block_lines(args.readme, [(BEGIN, END), (STANDING_BEGIN, STANDING_END),
                                         (CAPTION_BEGIN, CAPTION_END)])
        check_writable(os.path.dirname(os.path.abspath(args.readme)), "--readme's folder")
    if args.tensorboard and os.path.exists(args.tensorboard) and (
            not os.path.isdir(args.tensorboard) or os.listdir(args.tensorboard)):
        raise UsageError(f"--tensorboard {args.tensorboard} must be a new or empty folder (its "
                         "event files would mix with those already there)")
    if args.tensorboard:
        check_writable(args.tensorboard, "--tensorboard")
    runs, skipped = load_runs(root)
    settings = group_settings(runs)
    for setting in settings:
        if setting["task"] == "captioning":
            setting["summary"] = caption_summary(setting)
            continue
        setting["summary"] = summarise(setting)
        if setting["task"] == "copying":
            setting["convergence"] = convergence_summary(setting)
    # Captioning: its own section and numbers (a baseline is scored once per data set).
    captioning = captioning_summary(settings) \
        if any(s["task"] == "captioning" for s in settings) else None
    os.makedirs(out, exist_ok=True)

    figures = []
    by_epoch = [s for s in settings if s["task"] != "captioning"]
    if by_epoch:
        figures.append(("valid_accuracy.png", "Validation accuracy against epoch, one panel per "
                                              "experiment"))
        curves_figure(by_epoch, os.path.join(out, figures[-1][0]))
    if any(run.get("transfer") for run in runs):
        figures.append(("transfer.png", "Transfer copying accuracy against T'"))
        transfer_figure(runs, os.path.join(out, figures[-1][0]))
    if convergence_figure(settings, os.path.join(out, "convergence.png")):
        figures.append(("convergence.png", "Copying: seeds at 99 % against epoch, and every "
                                           "seed's validation curve"))
    if captioning_figure(settings, os.path.join(out, "captioning.png")):
        figures.append(("captioning.png", "Image captioning: validation CIDEr against "
                                          "iteration, one panel per model and data set"))

    data = {"settings_full": settings, "runs_full": runs, "skipped": skipped,
            "paired": paired_summaries(settings), "captioning": captioning}
    report = "# h-detach: the paper's results beside ours\n\n" + markdown_body(
        data, figures, "##", "", args.root)
    atomic_write(os.path.join(out, "report.md"), lambda handle: handle.write(report.encode()))
    public = {
        # As given (results), never absolute: the committed file is the same from any clone.
        "root": os.path.normpath(root),
        "solved_threshold": SOLVED,
        "settings": [dict({k: v for k, v in s.items() if k not in ("runs", "repeats")},
                          runs=[run["path"] for run in s["runs"]],
                          repeats=[run["path"] for run in s["repeats"]]) for s in settings],
        # (a captioning run's labels_file: a path of this machine)
        "runs": [{k: v for k, v in run.items() if k not in ("key", "labels_file")}
                 for run in runs],
        "skipped": skipped,
        "paired": data["paired"],
        "references": [dict(ref._asdict(), source_detail=SOURCES[ref.source])
                       for ref in REFERENCE],
        "figures": [name for name, _ in figures],
    }
    if captioning is not None:
        public["captioning"] = dict(captioning, references=[
            dict(ref._asdict(), source_detail=SOURCES[ref.source]) for ref in CAPTION_REFERENCE])
    text = json.dumps(clean(public), indent=1, sort_keys=True) + "\n"
    atomic_write(os.path.join(out, "report.json"), lambda handle: handle.write(text.encode()))
    written = [os.path.join(out, name) for name in ("report.md", "report.json")] + \
        [os.path.join(out, name) for name, _ in figures]
    if args.tensorboard:
        write_tensorboard(root, runs, args.tensorboard)
        written.append(f"{args.tensorboard} (view: tensorboard --logdir {args.tensorboard})")
    if args.readme:
        figure_dir = os.path.relpath(out, os.path.dirname(os.path.abspath(args.readme)))
        body = markdown_body(data, figures, "###", figure_dir, args.root, standing=False)
        standing = readme_paragraphs(settings, data["paired"], args.root)
        # The captioning tables alone (the README's results keep to a few things a reader
        # checks first); without captioning runs, a line that says so.
        caption_lines = captioning_section(captioning, settings, "###")
        caption_text = "\n".join([f"Generated by `python report.py {args.root}`; do not edit by "
                                  "hand.", ""] + (caption_lines or ["No captioning run yet."]))
        blocks = write_readme(args.readme, [(BEGIN, END, body),
                                            (STANDING_BEGIN, STANDING_END, standing),
                                            (CAPTION_BEGIN, CAPTION_END, caption_text)])
        names = {BEGIN: "tables", STANDING_BEGIN: "sentences", CAPTION_BEGIN: "captioning"}
        written.append(f"{args.readme} (its marked blocks: "
                       + ", ".join(names[begin] for begin in blocks) + ")")
    print(f"{len(runs)} run{'' if len(runs) == 1 else 's'} in {len(settings)} "
          f"setting{'' if len(settings) == 1 else 's'}; written: {', '.join(written)}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return report_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
