"""Image captioning with h-detach (Kanuparthi et al., ICLR 2019), faithful to the authors' branch
``captioning`` of bhargav104/h-detach (its train.py and opts.py; ruotianluo's neuraltalk2.pytorch).

    python caption_train.py --caption-model show_tell --p-detach 0.25 \\
        --input-json data/coco.json --input-labels data/coco_labels.npz \\
        --input-fc-dir data/coco_fc --save-dir runs/cap_st_p0.25
    python caption_train.py --caption-model show_attend_tell --p-detach 0.4 \\
        --input-json data/coco.json --input-fc-dir data/coco_fc --input-att-dir data/coco_att \\
        --save-dir runs/cap_sat_p0.4

The data come from ``prepro_captions.py`` (labels: OUT.json and OUT_labels.npz; features:
FC_DIR/<id>.npy, ATT_DIR/<id>.npz). What the branch's train.py does, and so what this does: batches
of --batch-size images with --seq-per-img captions each (captioning/loader.py), the model's
teacher-forced log-probabilities, the masked NLL of ``labels[:, 1:]`` under ``masks[:, 1:]``
(``LanguageModelCriterion``), backward, every gradient entry clamped to [-grad_clip, grad_clip]
(``utils.clip_gradient``; none with --noclip), Adam (betas 0.9, 0.999, eps 1e-8, no weight
decay), no learning-rate decay, no scheduled sampling, p constant (no annealing). An epoch ends
with the batch that wraps the training split (a batch may straddle two epochs). Every
--save-checkpoint-every iterations the model is evaluated on --val-images-use validation images
(greedy decoding with --beam-size 1, the coco-caption metrics with --language-eval 1:
``captioning.evaluation.evaluate_split``), and the best model by validation CIDEr (by -loss
without language evaluation) is kept, replaced only when strictly beaten. Unlike the branch, the
model is also evaluated once at the end of training, when the last iteration was not an
evaluation's (the branch stops without one).

The run folder, as copying.py's (running/runfolder.py): config.json; TensorBoard events
(train/loss per iteration; per evaluation, at step = iteration: val/loss, val/Bleu_1..4,
val/METEOR, val/ROUGE_L, val/CIDEr, train/mean_loss since the previous evaluation, p_detach);
metrics.csv (one row per evaluation: epoch, iteration, p_detach, train_loss, val_loss, Bleu_1..4,
METEOR, ROUGE_L, CIDEr, elapsed_s); best_model.pt (with its validation metrics); last.pt (after
every evaluation, at every epoch's end, every --checkpoint-every iterations and on SIGTERM /
SIGINT; it holds the loader's position, order and caption draws, every random state, the
optimiser and the iteration, so --resume continues bit for bit); state.json; results.json at the
end (the best validation metrics, their iteration and epoch, wall time). --until-epoch E pauses
once epoch E is done.

--rng authors (default): the streams the branch draws from, seeded: python's ``random`` for the
caption windows (a ``random.Random(seed)``, the same stream as the global one seeded, which
nothing else draws from), numpy's global generator for the detach draws (one
``np.random.random()`` per step), torch's global generator for the initial weights and dropout.
The branch itself never seeds, so no seed of it can be matched. --rng kit: the loader's and the
detach draws from their own generators, seeded from --seed (initial weights and dropout as
above).
"""
import argparse
import functools
import json
import math
import os
import random
import sys

if __name__ == "__main__":
    # Before torch loads: it picks its CPU kernels once, at import (running/numerics.py,
    # --numerics).
    from running import numerics
    numerics.pin_before_torch(sys.argv[1:])

import numpy as np
import torch
from tqdm import tqdm

from captioning.features import FEATURES_JSON, feature_paths
from captioning.loader import CaptionLoader
from captioning.metrics import SPICE_NOTE
from captioning.models import CAPTION_MODELS, LanguageModelCriterion, build_model
from running.annealing import p_in_force
from running.errors import RunStopped, UsageError
from running.numerics import add_numerics_flag
from running.resume import RNG_MODES
from running.runfolder import CAPTION_COLUMNS, CAPTION_METRICS, TrainingRun, training_main
from running.seeding import set_seed
from utils import (ArgParser, StopSignals, add_threads_flag, detach_probability, finite_float,
                   image_count, non_negative_int, positive_float, positive_int, seed_value)

TASK = "captioning"
COMMAND = "python caption_train.py"
OPTS_FEATURE_SIZE = 2048  # opts.py's fc_feat_size and att_feat_size (ResNet-152)


# ----------------------------------------------------------------------------- flags

def dropout_probability(text):
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def flag_group(parser, title):
    """An argument group of ``parser`` whose ``flag`` takes both spellings of every name, as
    ``ArgParser.flag`` (so that --help shows the flags by subject)."""
    group = parser.add_argument_group(title)
    group.flag = functools.partial(ArgParser.flag, group)
    return group


def build_parser():
    parser = ArgParser(
        prog="caption_train.py",
        description="Train an image captioning model (Show and Tell, or Show, Attend and Tell) "
                    "with h-detach, as the authors' branch 'captioning' does. Every flag also "
                    "takes the branch's spelling (--caption_model, --p_detach, ...). Defaults "
                    "are the authors' README commands; where opts.py's own default differs, the "
                    "help says so.")
    parser.set_defaults(anneal_p=0)  # no annealing in captioning: p is the same every epoch

    data = flag_group(parser, "data (from prepro_captions.py)")
    data.flag("--input-json", default=None, metavar="JSON",
          help="required (a resume takes the run's): the labels JSON of 'prepro_captions.py "
               "labels' (OUT.json: vocabulary, images, splits, reference captions)")
    data.flag("--input-labels", "--input-label-h5", dest="input_labels", default=None,
          metavar="NPZ", help="the encoded captions (OUT_labels.npz; the branch's HDF5 "
          "--input_label_h5 is this npz here) (default: the JSON's twin, OUT_labels.npz)")
    data.flag("--input-fc-dir", default=None, metavar="DIR",
          help="required (a resume takes the run's): folder of fc features, <id>.npy "
               "(prepro_captions.py features)")
    data.flag("--input-att-dir", default=None, metavar="DIR",
          help="folder of att features, <id>.npz: needed by show_attend_tell; show_tell does "
               "not read it")

    model = flag_group(parser, "model")
    model.flag("--caption-model", choices=CAPTION_MODELS, default="show_tell",
          help="show_tell (Show and Tell) or show_attend_tell (Show, Attend and Tell) "
               "(default show_tell)")
    model.flag("--p-detach", type=detach_probability, default=-1.0, metavar="P",
          help="probability of cutting h_{t-1} (--detach) from the backward pass before each "
               "step, one draw per step for the whole batch; <= 0 is plain BPTT (default -1; "
               "the authors' commands: 0.25 for show_tell, 0.4 for show_attend_tell; opts.py's "
               "default 0 is also plain BPTT)")
    model.flag("--detach", choices=("h", "c"), default="h",
          help="the state a drawn step cuts: h (h-detach) or c (c-detach, the paper's "
               "ablation) (default h)")
    model.flag("--input-encoding-size", type=positive_int, metavar="N", default=512,
          help="word (and, for show_tell, image) embedding size (default 512)")
    model.flag("--rnn-size", type=positive_int, metavar="N", default=512,
          help="LSTM hidden size (default 512)")
    model.flag("--att-hid-size", type=positive_int, metavar="N", default=512,
          help="hidden size of the attention MLP, show_attend_tell only (default 512)")
    model.flag("--drop-prob-lm", type=dropout_probability, metavar="P", default=0.5,
          help="dropout on the LSTM output before the readout (default 0.5)")
    model.flag("--fc-feat-size", type=positive_int, metavar="N", default=None,
          help="fc feature size (default: what the fc folder's features.json says, e.g. 2048 "
               "for ResNet-152, 512 for the small ResNets of tests; else the first file's "
               "length)")
    model.flag("--att-feat-size", type=positive_int, metavar="N", default=None,
          help="att feature size, show_attend_tell only (default: from the att folder's "
               "features.json, as --fc-feat-size)")
    model.flag("--impl", choices=("fast", "reference"), default="fast",
          help="LSTM implementation; both give the same gradients (default fast)")
    model.flag("--standardize-fc", action="store_true",
          help="not in the branch: the model reads the fc features standardized per "
               "dimension with the training split's mean and sd (taken once at the start, kept "
               "in the model's checkpoints), for features with a large part common to every "
               "image such as a random ResNet's (the synthetic shapes set); off by default")

    optim = flag_group(parser, "optimisation")
    optim.flag("--batch-size", type=positive_int, metavar="N", default=10,
          help="images per batch, each with --seq-per-img captions (default 10; opts.py: 16)")
    optim.flag("--seq-per-img", type=positive_int, metavar="N", default=5,
          help="captions per image in a batch (default 5)")
    optim.flag("--learning-rate", "--lr", dest="lr", type=positive_float, default=1e-4,
          help="Adam learning rate, constant (default 1e-4 as the authors' README commands; "
               "opts.py's default is 4e-4)")
    optim.flag("--max-epochs", "--n-epochs", dest="n_epochs", type=positive_int, default=30,
               metavar="E",
          help="epochs: passes over the training split (default 30; opts.py: -1, no end)")
    optim.flag("--grad-clip", type=positive_float, metavar="G", default=0.1,
          help="clamp every gradient entry to [-grad_clip, grad_clip] (element-wise, the "
               "branch's clip_gradient; not a norm) (default 0.1)")
    optim.flag("--noclip", action="store_true",
          help="no gradient clipping (the paper's ablation)")

    evaluation = flag_group(parser, "evaluation")
    evaluation.flag("--save-checkpoint-every", type=positive_int, default=6000, metavar="N",
          help="evaluate on the validation split every N iterations (and at the end), keep "
               "the best model and write last.pt (default 6000; opts.py: 2500)")
    evaluation.flag("--val-images-use", type=image_count, metavar="N", default=5000,
          help="validation images per evaluation; -1: all (default 5000; opts.py: 3200)")
    evaluation.flag("--language-eval", type=int, choices=(0, 1), default=1,
          help="1: BLEU 1-4, METEOR, ROUGE-L and CIDEr (coco-caption), best model by CIDEr; "
               "0: validation loss only, best model by -loss (default 1; opts.py: 0)")
    evaluation.flag("--beam-size", type=positive_int, metavar="N", default=1,
          help="1: greedy decoding; more: beam search (default 1)")

    runs = flag_group(parser, "the run")
    runs.flag("--save-dir", required=True, metavar="DIR",
              help="the run folder to create (or resume)")
    runs.flag("--seed", type=seed_value, metavar="N", default=0,
          help="random seed (default 0; the branch never seeds)")
    runs.flag("--rng", choices=RNG_MODES, default="authors",
          help="authors (default): the branch's streams, seeded: python random for the "
               "caption windows, numpy's global generator for the detach draws, torch's for "
               "the initial weights and dropout. kit: the caption windows and the detach draws "
               "from their own generators seeded from --seed")
    runs.flag("--device", choices=("auto", "cpu", "cuda"), default="auto",
          help="auto: CUDA when present, else CPU")
    runs.flag("--overwrite", action="store_true",
          help="replace the run already in --save-dir")
    runs.flag("--resume", action="store_true",
          help="continue the run in --save-dir from its last.pt, bit for bit")
    runs.flag("--checkpoint-every", type=non_negative_int, metavar="N", default=0,
          help="also write last.pt every N iterations (default 0: at evaluations, epoch ends "
               "and stops only)")
    runs.flag("--until-epoch", type=positive_int, default=None, metavar="E",
          help="stop cleanly once epoch E of the planned --max-epochs is done (last.pt saved; "
               "--resume continues to the end exactly as one uninterrupted run)")
    add_threads_flag(runs)
    add_numerics_flag(runs)
    # The branch's opts.py flags this script does not take: what to give instead.
    parser.hint("each run is one folder: give --save-dir DIR (models, last.pt, logs and "
                "TensorBoard go there)", "--checkpoint_path", "--id")
    parser.hint("continue a run with --save-dir DIR --resume (from its last.pt, bit for bit)",
                "--start_from")
    parser.hint("--resume always keeps the run's best score", "--load_best_score")
    parser.hint("the model is the branch's one-layer LSTM", "--num_layers", "--rnn_type")
    parser.hint("the authors' commands train with Adam (betas 0.9/0.999, eps 1e-8), no weight "
                "decay, no learning-rate decay and no scheduled sampling: not offered",
                "--optim", "--optim_alpha", "--optim_beta", "--optim_epsilon", "--weight_decay",
                "--param_l2", "--learning_rate_decay_start", "--learning_rate_decay_every",
                "--learning_rate_decay_rate", "--scheduled_sampling_start",
                "--scheduled_sampling_increase_every", "--scheduled_sampling_increase_prob",
                "--scheduled_sampling_max_prob")
    parser.hint("train/loss goes to TensorBoard at every iteration", "--losses_log_every")
    parser.hint("restval always trains (Karpathy's split, as the authors' runs)",
                "--train_only")
    return parser


# ----------------------------------------------------------------------------- the data

def _declared_size(folder):
    """The feature size features.json in ``folder`` declares, or None."""
    path = os.path.join(folder, FEATURES_JSON)
    try:
        with open(path) as handle:
            size = json.load(handle).get("feature_size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and size > 0 else None


def _file_size(loader, attention):
    """The fc (and att) feature size of the first training image's files."""
    ident = loader.image(loader.split_ix["train"][0])["id"]
    fc_path, att_path = feature_paths(ident, loader.fc_dir, loader.att_dir if attention else None)
    try:
        fc = np.load(fc_path, mmap_mode="r")
        att = None
        if att_path is not None:
            with np.load(att_path) as data:
                att = data["feat"].shape
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"cannot read the features of image id {ident} ({err})") from None
    if fc.ndim != 1:
        raise UsageError(f"{fc_path} holds an array of shape {fc.shape}, not an fc vector")
    return int(fc.shape[0]), (None if att is None else int(att[-1]))


def resolve_feature_sizes(args, loader, attention):
    """Fill ``--fc-feat-size`` / ``--att-feat-size`` left out (features.json, else the files) and
    check them against the first training image's files: a mismatch is one line now, not a
    shape error in the first batch."""
    fc_file, att_file = _file_size(loader, attention)
    if args.fc_feat_size is None:
        args.fc_feat_size = _declared_size(args.input_fc_dir) or fc_file
    if args.fc_feat_size != fc_file:
        raise UsageError(f"--fc-feat-size {args.fc_feat_size}, but the features in "
                         f"{args.input_fc_dir} have {fc_file} values")
    if attention:
        if args.att_feat_size is None:
            args.att_feat_size = _declared_size(args.input_att_dir) or att_file
        if args.att_feat_size != att_file:
            raise UsageError(f"--att-feat-size {args.att_feat_size}, but the features in "
                             f"{args.input_att_dir} have {att_file} channels")
    elif args.att_feat_size is None:
        args.att_feat_size = OPTS_FEATURE_SIZE  # not used by show_tell; opts.py's value


def open_loader(args, attention, rng):
    """The loader, every input checked first (one line each): the files, att features for
    show_attend_tell, the vocabulary against the labels, features for every train and val
    image, non-empty splits."""
    for flag, value in (("--input-json", args.input_json), ("--input-fc-dir", args.input_fc_dir)):
        if not value:
            raise UsageError(f"{flag} is required: the data prepro_captions.py prepared")
    if attention and not args.input_att_dir:
        raise UsageError("show_attend_tell needs att features: give --input-att-dir "
                         "(prepro_captions.py features writes them)")
    loader = CaptionLoader(args.input_json, args.input_fc_dir,
                           args.input_att_dir if attention else None,
                           labels_npz=args.input_labels, batch_size=args.batch_size,
                           seq_per_img=args.seq_per_img, rng=rng, splits=("train", "val"))
    for split in ("train", "val"):
        if not loader.split_ix[split]:
            raise UsageError(f"{args.input_json} has no {split} images")
    return loader


def clip_elementwise(limit):
    """The branch's ``utils.clip_gradient``: every gradient entry clamped to [-limit, limit]."""
    def clip(net):
        for param in net.parameters():
            if param.grad is not None:
                param.grad.clamp_(-limit, limit)
    return clip


def no_clip(net):
    """--noclip."""


def evaluate(model, loader, device, args):
    """The validation metrics of ``captioning.evaluation.evaluate_split`` (imported here, when
    first needed) and its predictions; the model is back in training mode after."""
    from captioning import evaluation
    metrics, predictions = evaluation.evaluate_split(
        model, loader, "val", device, num_images=args.val_images_use, beam_size=args.beam_size,
        language_eval=bool(args.language_eval))
    model.train()
    numbers = {name: float(value) for name, value in metrics.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    if "loss" not in numbers or (args.language_eval and "CIDEr" not in numbers):
        raise RunStopped(f"the evaluation returned {sorted(metrics)}: no "
                         f"{'CIDEr' if 'loss' in numbers else 'loss'}")
    return numbers, predictions


# ----------------------------------------------------------------------------- training

def run(args, argv, last, device, lock=None):
    attention = args.caption_model == "show_attend_tell"
    authors = args.rng == "authors"
    set_seed(args.seed)
    if authors:
        loader_rng, detach_gen, generators = random.Random(args.seed), np.random, {}
    else:
        seeds = np.random.SeedSequence(args.seed).generate_state(2, dtype=np.uint64)
        loader_rng = random.Random(int(seeds[0]))
        detach_gen = torch.Generator().manual_seed(int(seeds[1]))
        generators = {"detach": detach_gen}
    # Every input is checked before TrainingRun.open clears or touches the run folder.
    loader = open_loader(args, attention, loader_rng)
    resolve_feature_sizes(args, loader, attention)
    model = build_model(args.caption_model, loader.vocab_size,
                        input_encoding_size=args.input_encoding_size, rnn_size=args.rnn_size,
                        att_hid_size=args.att_hid_size, fc_feat_size=args.fc_feat_size,
                        att_feat_size=args.att_feat_size, drop_prob_lm=args.drop_prob_lm,
                        detach=args.detach, impl=args.impl,
                        standardize_fc=args.standardize_fc).to(device)
    model_config = model.model_config  # build_model(**model_config) rebuilds it as trained
    if last is not None:
        if last["model_config"] != model_config:
            raise UsageError(f"the data of {args.input_json} do not fit the run in "
                             f"{args.save_dir} (its model: {last['model_config']}; these data "
                             f"give {model_config})")
        loader.load_state_dict(last["extra"]["loader"])  # refuses other data, in one line
    elif args.standardize_fc:  # a resumed model has its statistics in its state dict
        model.set_fc_statistics(*loader.fc_statistics("train"))
        print(f"fc features standardized with the mean and sd of the "
              f"{len(loader.split_ix['train'])} training images", flush=True)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0)
    crit = LanguageModelCriterion()
    run = TrainingRun(TASK, args, model, optimizer, generators, model_config,
                      extra={"loss_sum": 0.0, "loss_count": 0}, lock=lock,
                      clip=no_clip if args.noclip else clip_elementwise(args.grad_clip),
                      columns=CAPTION_COLUMNS,
                      on_save=lambda: run.extra.update(loader=loader.state_dict()))
    p = p_in_force(args.p_detach, 0, args.n_epochs, args.anneal_p)  # constant: anneal_p 0
    per_image = args.seq_per_img
    n_train = len(loader.split_ix["train"])

    def on_device(batch):
        """The batch on the model's device, moved once; features repeated per caption there."""
        fc = torch.from_numpy(batch.fc).to(device).repeat_interleave(per_image, 0)
        att = None if batch.att is None else \
            torch.from_numpy(batch.att).to(device).repeat_interleave(per_image, 0)
        return (fc, att, torch.from_numpy(batch.labels).to(device),
                torch.from_numpy(batch.masks).to(device))

    def evaluation():
        metrics, predictions = evaluate(model, loader, device, args)
        count = run.extra["loss_count"]
        record = {"p_detach": p, "train/mean_loss": run.extra["loss_sum"] / count
                  if count else float("nan")}
        record.update({f"val/{name}": value for name, value in metrics.items()})
        score = metrics["CIDEr"] if args.language_eval else -metrics["loss"]
        run.extra.update(loss_sum=0.0, loss_count=0)
        run.evaluation(record, score, {"metrics": metrics})
        shown = f"CIDEr {metrics['CIDEr']:.4f}  " if args.language_eval else ""
        best = run.best
        # without language evaluation the best model is the lowest loss (kept as -loss)
        best_text = "none yet" if best.get("score") is None else \
            f"{best['score'] if args.language_eval else -best['score']:.4f} " \
            f"(iter {best['iteration']})"
        print(f"iter {run.iteration} (epoch {run.epoch}/{args.n_epochs})  train loss "
              f"{record['train/mean_loss']:.4f}  val loss {metrics['loss']:.4f}  {shown}best "
              f"{'CIDEr' if args.language_eval else 'val loss'} {best_text}  "
              f"{run.elapsed():.0f}s", flush=True)
        if predictions and isinstance(predictions[0], dict) and "caption" in predictions[0]:
            print(f"  image {predictions[0].get('image_id')}: "
                  f"{predictions[0]['caption'] or '(no words)'}", flush=True)

    # Signals are caught before the run says it is running: a SIGTERM from then on always ends
    # in a saved last.pt (after the current iteration), never in a killed process.
    with StopSignals() as stop:
        run.open(argv, device, last)
        if args.language_eval:
            print(SPICE_NOTE, file=sys.stderr, flush=True)
        bar = tqdm(total=math.ceil(args.n_epochs * n_train / args.batch_size),
                   initial=run.iteration, leave=False, disable=None, desc="iterations")
        while run.epoch < run.target_epoch:
            batch = loader.get_batch("train")
            fc, att, labels, masks = on_device(batch)
            logprobs = model(fc, att, labels, masks, p=p, generator=detach_gen)
            loss = crit(logprobs, labels[:, 1:], masks[:, 1:])
            # last.pt waits until this iteration's epoch count and evaluation are done, so
            # that a resume from it never repeats nor skips them
            loss_value = run.step(loss, stop, save=False)
            run.extra["loss_sum"] += loss_value
            run.extra["loss_count"] += 1
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.3f}", epoch=run.epoch, refresh=False)
            if batch.wrapped:
                run.advance_epoch()
            if run.iteration % args.save_checkpoint_every == 0 or run.epoch >= args.n_epochs:
                bar.clear()
                evaluation()  # writes last.pt
            elif batch.wrapped or run.checkpoint_due(stop):
                run.save_last()
            if stop.requested:
                bar.close()
                print(run.stop(stop.requested, COMMAND), flush=True)
                return 0
        bar.close()
        # Still inside: a SIGTERM while state.json or results.json is written only sets
        # ``stop.requested`` (the run is ending anyway), never kills the write.
        if run.epoch < args.n_epochs:
            print(run.pause(COMMAND), flush=True)
            return 0
        if not run.history or run.history[-1]["iteration"] != run.iteration:
            evaluation()  # a run stopped between its last iteration and that evaluation
        best, final = run.best, run.history[-1]
        results = run.finish({
            "best_by": "CIDEr" if args.language_eval else "-val_loss",
            "best_score": best.get("score"), "best_iteration": best.get("iteration"),
            "best_epoch": best.get("epoch"), "best_val": best.get("metrics"),
            "final_val": {key[len("val/"):]: value for key, value in final.items()
                          if key.startswith("val/")},
            "iterations": run.iteration, "caption_model": args.caption_model,
            "p_detach": args.p_detach, "detach": args.detach, "seed": args.seed,
            "rng": args.rng, "lr": args.lr, "grad_clip": None if args.noclip else args.grad_clip,
            "batch_size": args.batch_size, "seq_per_img": args.seq_per_img,
            "n_epochs": args.n_epochs, "val_images_use": args.val_images_use,
            "language_eval": args.language_eval, "beam_size": args.beam_size,
            "vocab_size": loader.vocab_size, "train_images": n_train,
            "val_images": len(loader.split_ix["val"]),
            "metrics": list(CAPTION_METRICS) if args.language_eval else []})
        if results["best_score"] is None:
            what = "none (no finite validation score)"
        else:
            what = (f"CIDEr {results['best_score']:.4f}" if args.language_eval else
                    f"loss {-results['best_score']:.4f}") + \
                f" at iteration {results['best_iteration']} (epoch {results['best_epoch']})"
        print(f"done: best validation {what}; results in "
              f"{os.path.join(args.save_dir, 'results.json')}")
        return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return training_main(build_parser(), argv, TASK, run)


if __name__ == "__main__":
    sys.exit(main())
