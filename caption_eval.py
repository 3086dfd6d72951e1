"""Evaluate a trained captioning model: the coco-caption metrics of a split, or captions of one's
own images.

    python caption_eval.py --model-dir runs/show_tell_p0.25 --split test
    python caption_eval.py --model-dir runs/show_tell_p0.25 --split test --beam-size 3
    python caption_eval.py --model-dir runs/show_tell_p0.25 --images my_photos/

The model is the run folder's ``best_model.pt`` (the best validation CIDEr, as the branch's
``model-best.pth``), or a checkpoint file given as --model-dir. A split is evaluated as the
authors' branch evaluates it (``captioning/evaluation.py``): validation loss, greedy decoding
(beam search with --beam-size), and BLEU 1-4, METEOR, ROUGE-L and CIDEr-D with the coco-caption
code (``captioning/metrics.py``; SPICE is not computed). The metrics table is printed, and
RUN/eval_<split>[_beamN].json written with every image's caption. The data default to the
paths the run was trained with (its checkpoint's config); the --input-* flags override them.

--images DIR captions every image file of DIR with the CNN the run's features came from (its
features.json: network, weights, att size), computing the features on the fly; it prints
``file<TAB>caption`` per image and writes nothing.
"""
import os
import sys

import torch

from captioning import features as features_mod
from captioning import labels as labels_mod
from captioning.evaluation import evaluate_split, write_predictions
from captioning.loader import CaptionLoader
from captioning.metrics import SPICE_NOTE, table
from captioning.models import MAX_LENGTH, build_model
from running.devices import resolve_device
from running.errors import UsageError, report_errors
from running.runfolder import (check_writable, file_sha256, holder_pid, model_path,
                               read_checkpoint, read_json, set_threads)
from utils import ArgParser, add_threads_flag, image_count, positive_int

TASK = "captioning"
SPLITS = ("test", "val")
# The data flags and the keys a captioning checkpoint's config may hold them under (the
# branch's option names; its input_label_h5 is our input_labels, an npz).
DATA_FLAGS = {"input_json": ("input_json",), "input_labels": ("input_labels", "input_label_h5"),
              "input_fc_dir": ("input_fc_dir",), "input_att_dir": ("input_att_dir",)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def build_parser():
    parser = ArgParser(prog="caption_eval.py", description=(
        "Evaluate a captioning run: the coco-caption metrics (BLEU 1-4, METEOR, ROUGE-L, "
        "CIDEr-D) of a split, written to RUN/eval_<split>[_beamN].json, or (--images) "
        "captions of a folder of one's own images."))
    parser.flag("--model-dir", required=True, metavar="RUN",
                help="a captioning run folder (its best_model.pt is used) or a checkpoint file")
    parser.flag("--split", choices=SPLITS, default=None,
                help="the split to evaluate (default test)")
    parser.flag("--beam-size", type=positive_int, default=1, metavar="N",
                help="1: greedy decoding, as the branch's evaluation (default); more: beam "
                     "search with N beams")
    parser.flag("--num-images", type=image_count, default=-1, metavar="N",
                help="evaluate the split's first N images (default -1: all of them)")
    parser.flag("--max-length", type=positive_int, default=MAX_LENGTH, metavar="N",
                help=f"the most words of a decoded caption (default {MAX_LENGTH}, the branch's)")
    parser.flag("--batch-size", type=positive_int, default=10, metavar="N",
                help="images per batch (default 10, the branch's; the loss is the mean of the "
                     "batches' losses, as the branch reports it)")
    parser.flag("--device", choices=("auto", "cpu", "cuda"), default="auto",
                help="auto (default): CUDA when present, else the CPU")
    add_threads_flag(parser, training=False)
    parser.flag("--input-json", default=None, metavar="PATH",
                help="the prepared labels JSON (prepro_captions.py labels; default: the run's)")
    parser.flag("--input-labels", "--input-label-h5", default=None, metavar="PATH",
                help="its labels npz (default: the run's, else the JSON's twin OUT_labels.npz)")
    parser.flag("--input-fc-dir", default=None, metavar="DIR",
                help="the fc feature folder (default: the run's)")
    parser.flag("--input-att-dir", default=None, metavar="DIR",
                help="the att feature folder, show_attend_tell only (default: the run's)")
    parser.flag("--images", default=None, metavar="DIR",
                help="caption the image files of DIR instead (features computed on the fly "
                     "with the CNN of the run's features.json); prints file<TAB>caption")
    parser.flag("--cnn-weights", default=None, metavar="PATH",
                help="--images: the CNN's weights file, where the one the features were made "
                     "with is not found (it must be the same file: its SHA-256 is checked)")
    return parser


# ----------------------------------------------------------------------------- the model

def load_model(model_dir, device):
    """``(model, checkpoint, path, sha256)`` of a captioning checkpoint or run folder."""
    path = model_path(model_dir, "a captioning run writes it at its first validation")
    checkpoint, digest = read_checkpoint(path, task=TASK)
    config = checkpoint.get("model_config")
    if not isinstance(config, dict) or "caption_model" not in config or \
            not isinstance(checkpoint.get("model"), dict):
        raise UsageError(f"{path} does not hold a captioning model (no model_config / model)")
    try:
        model = build_model(**config)
        model.load_state_dict(checkpoint["model"])
    except (TypeError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path}: the model cannot be rebuilt from its model_config "
                         f"({first[:200]})") from None
    return model.to(device).eval(), checkpoint, path, digest


def checkpoint_info(checkpoint, path, digest):
    """What write_predictions records about the checkpoint."""
    info = {"path": os.path.abspath(path), "sha256": digest}
    for key in ("kind", "epoch", "iteration", "epoch_iteration", "metrics"):
        if checkpoint.get(key) is not None:
            info[key] = checkpoint[key]
    info["model_config"] = checkpoint["model_config"]
    return info


def describe(checkpoint, path):
    config = checkpoint["model_config"]
    where = ", ".join(f"{key} {checkpoint[key]}" for key in ("epoch", "iteration")
                      if checkpoint.get(key) is not None)
    val = checkpoint.get("metrics")  # best_model.pt of caption_train.py: its validation
    if isinstance(val, dict) and isinstance(val.get("CIDEr"), (int, float)):
        where += f"{', ' if where else ''}val CIDEr {val['CIDEr']:.4f}"
    return (f"model: {path} ({config['caption_model']}, vocabulary {config['vocab_size']}"
            f"{', ' + where if where else ''})")


def data_paths(args, checkpoint):
    """The four data paths: the flags, else the checkpoint's config (by the branch's names)."""
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    paths = {}
    for flag, keys in DATA_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            value = next((config[key] for key in keys if config.get(key)), None)
        paths[flag] = value
    return paths


def need(paths, flag, why):
    if not paths[flag]:
        raise UsageError(f"no {flag} given and the checkpoint's config names none: pass "
                         f"--{flag.replace('_', '-')} ({why})")
    return paths[flag]


def check_vocab(model, ix_to_word, source):
    vocab_size = model.model_config["vocab_size"]
    if len(ix_to_word) != vocab_size:
        raise UsageError(f"{source} has a vocabulary of {len(ix_to_word)} words, the model "
                         f"{vocab_size}: not the data the model was trained on")


# ----------------------------------------------------------------------------- a split

def evaluate(args, device):
    split = args.split or "test"
    model, checkpoint, path, digest = load_model(args.model_dir, device)
    suffix = f"_beam{args.beam_size}" if args.beam_size > 1 else ""
    out = os.path.join(os.path.dirname(os.path.abspath(path)), f"eval_{split}{suffix}.json")
    # refused before minutes of decoding and scoring, not after
    check_writable(os.path.dirname(out), f"the model's folder (for {os.path.basename(out)})")

    paths = data_paths(args, checkpoint)
    labels_json = need(paths, "input_json", "the prepared labels JSON")
    fc_dir = need(paths, "input_fc_dir", "the fc feature folder")
    attention = model.caption_model == "show_attend_tell"
    att_dir = need(paths, "input_att_dir", "show_attend_tell reads att features") \
        if attention else None
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    # only the evaluated split is checked for its feature files; the captions drawn where an
    # image has more than seq_per_img come from the evaluation's own generator
    data = CaptionLoader(labels_json, fc_dir, att_dir, labels_npz=paths["input_labels"],
                         batch_size=args.batch_size,
                         seq_per_img=int(config.get("seq_per_img") or 5), splits=())
    check_vocab(model, data.get_vocab(), labels_json)
    if not data.split_ix[split]:
        raise UsageError(f"{labels_json} has no {split} images")
    print(describe(checkpoint, path))
    folder = os.path.dirname(os.path.abspath(path))
    if holder_pid(folder) is not None:
        # a run still training replaces best_model.pt whenever it improves: the result is of the
        # best model so far (its SHA-256 goes into the file, so the report can tell)
        print(f"note: {folder} is still training: this measures its best model so far",
              file=sys.stderr, flush=True)
    print(SPICE_NOTE, file=sys.stderr, flush=True)
    metrics, predictions = evaluate_split(
        model, data, split, device, num_images=args.num_images, beam_size=args.beam_size,
        max_length=args.max_length, language_eval=True, progress=True)
    print(f"{split}: {len(predictions)} images"
          f"{f', beam size {args.beam_size}' if args.beam_size > 1 else ', greedy'}")
    print(table(metrics))
    write_predictions(out, split, metrics, predictions, checkpoint_info(checkpoint, path, digest))
    print(f"written: {out}")
    return 0


# ----------------------------------------------------------------------------- own images

def features_record(paths, model):
    """The features.json of the run's feature folder(s): the CNN to rebuild."""
    folder = need(paths, "input_fc_dir", "--images rebuilds the CNN its features.json names")
    meta = os.path.join(folder, features_mod.FEATURES_JSON)
    if not os.path.isfile(meta):
        raise UsageError(f"{meta} does not exist: --images needs the features.json that "
                         "prepro_captions.py features writes, to rebuild the same CNN")
    try:
        record = read_json(meta)
    except (OSError, ValueError):
        raise UsageError(f"{meta} is not readable JSON") from None
    if model.caption_model == "show_attend_tell" and not record.get("att_size"):
        att_dir = paths["input_att_dir"]
        other = os.path.join(att_dir, features_mod.FEATURES_JSON) if att_dir else None
        if other and os.path.isfile(other):
            record = dict(record, att_size=read_json(other).get("att_size"))
        if not record.get("att_size"):
            raise UsageError(f"{meta} records no att size, and show_attend_tell needs att "
                             "features: pass --input-att-dir (its features.json has it)")
    return record, meta


def cnn_weights(record, given, meta):
    """What ``FeatureExtractor`` is given to rebuild the CNN of ``record``: ``("random",
    seed)`` or ``(a weights file or "imagenet", None)``, checked against the recorded SHA-256;
    what cannot be reproduced is a one-line UsageError saying what to pass."""
    weights = str(record.get("weights", ""))
    source = str(record.get("weights_source", ""))
    if weights.startswith("random seed "):
        if given is not None:
            raise UsageError(f"the run's features were made with random CNN weights "
                             f"({weights}, {meta}): --cnn-weights does not apply")
        return "random", int(weights[len("random seed "):])
    if weights.startswith("sha256:"):
        wanted = weights[len("sha256:"):]
        if given is not None:
            if not os.path.isfile(given):
                raise UsageError(f"--cnn-weights {given} does not exist")
            if file_sha256(given) != wanted:
                raise UsageError(f"--cnn-weights {given} is not the file the run's features "
                                 f"were made with (sha256 {wanted}, {source})")
            return given, None
        candidates = []
        if source.startswith("file "):
            candidates.append(source[len("file "):])
        if source.startswith("torchvision "):  # torchvision's download, in torch's hub cache
            url = source.rsplit(", ", 1)[-1]
            candidates.append(os.path.join(torch.hub.get_dir(), "checkpoints",
                                           os.path.basename(url)))
        for path in candidates:
            if os.path.isfile(path) and file_sha256(path) == wanted:
                return path, None
        raise UsageError(f"the CNN weights of the run's features ({source or weights}) are not "
                         f"here: pass --cnn-weights PATH, the file with sha256 {wanted}")
    if weights.startswith("torchvision "):  # downloaded, the cache file not hashed then
        if given is not None:
            return given, None
        return "imagenet", None
    raise UsageError(f"{meta} records CNN weights that cannot be rebuilt ({weights or 'none'}); "
                     "pass --cnn-weights PATH, the weights file the features were made with")


def image_files(folder):
    if not os.path.isdir(folder):
        raise UsageError(f"--images {folder} is not a folder")
    names = sorted(name for name in os.listdir(folder)
                   if name.lower().endswith(IMAGE_SUFFIXES) and
                   os.path.isfile(os.path.join(folder, name)))
    if not names:
        raise UsageError(f"--images {folder} holds no image files "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    return names


def caption_images(args, device):
    if args.split is not None or args.num_images != -1:
        raise UsageError("--images captions a folder: --split and --num-images do not apply")
    names = image_files(args.images)
    model, checkpoint, path, _ = load_model(args.model_dir, device)
    paths = data_paths(args, checkpoint)
    vocab = checkpoint.get("ix_to_word")
    if not isinstance(vocab, dict):
        labels_json = need(paths, "input_json", "its vocabulary turns word ids into words")
        info = labels_mod.read_json_file(labels_json, "labels JSON")
        vocab = info.get("ix_to_word") if isinstance(info, dict) else None
        if not isinstance(vocab, dict):
            raise UsageError(f"{labels_json} is not a prepared labels JSON (no ix_to_word)")
        check_vocab(model, vocab, labels_json)
    record, meta = features_record(paths, model)
    if record.get("feature_size") != model.model_config["fc_feat_size"]:
        raise UsageError(f"{meta} describes {record.get('feature_size')}-wide features, the "
                         f"model reads {model.model_config['fc_feat_size']}")
    weights, seed = cnn_weights(record, args.cnn_weights, meta)
    attention = model.caption_model == "show_attend_tell"
    extractor = features_mod.FeatureExtractor(
        weights, record.get("arch", features_mod.PROTOCOL_ARCH), seed=seed,
        layout=record.get("layout", "torchvision"),
        att_size=record.get("att_size") if attention else None, device=device)
    if extractor.record.get("weights") != record.get("weights") and \
            not str(record.get("weights")).startswith("torchvision "):
        raise UsageError(f"the CNN rebuilt here ({extractor.record.get('weights')}) is not the "
                         f"one of {meta} ({record.get('weights')})")
    print(describe(checkpoint, path), file=sys.stderr)
    dtype = next(model.parameters()).dtype
    captioned = 0
    for name in names:
        try:
            fc, att = extractor(os.path.join(args.images, name))
        except features_mod.ImageUnreadable as err:
            print(f"skipped: {err}", file=sys.stderr)
            continue
        fc = torch.from_numpy(fc).to(device=device, dtype=dtype).unsqueeze(0)
        if att is not None:
            att = torch.from_numpy(att).to(device=device, dtype=dtype).unsqueeze(0)
        seq = model.sample(fc, att, max_length=args.max_length, beam_size=args.beam_size)
        print(f"{name}\t{labels_mod.decode(vocab, seq[0].tolist())}", flush=True)
        captioned += 1
    if not captioned:
        raise UsageError(f"no image of --images {args.images} could be read")
    return 0


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))

    def run():
        set_threads(args.threads)
        device = resolve_device(args.device)
        if args.images is not None:
            return caption_images(args, device)
        if args.cnn_weights is not None:
            raise UsageError("--cnn-weights is for --images only")
        return evaluate(args, device)
    return report_errors(run)


if __name__ == "__main__":
    sys.exit(main())
