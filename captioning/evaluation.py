"""Evaluation of a captioning model on one split, as the authors' branch does it
(``eval_utils.eval_split``, read in ``bhargav104/h-detach``, commit 84cab51): the validation
loss, greedy (or beam) decoding of every image, and the coco-caption metrics of the decoded
captions (``captioning.metrics.score``, the branch's ``language_eval``).

What it takes from the branch:

- the split is walked from its first image (``reset_iterator``) in batches of the loader's size
  until ``num_images`` images (-1: the whole split) are done; images past the split's end
  (``wrap_at``: a batch that wrapped around) are dropped, as the branch pops them;
- the loss of a batch is ``LanguageModelCriterion`` of the teacher-forced forward with each
  image's features repeated for its ``seq_per_img`` captions (``crit(model(fc, att, labels),
  labels[:, 1:], masks[:, 1:])``), and the loss reported is the mean of the batches' losses
  (the branch's ``loss_sum / loss_evals``), over the images kept;
- decoding reads each image's features once and turns the word ids into strings
  (``labels.decode``, the branch's ``decode_sequence``).

What it does not take, so that evaluating in the middle of a training run changes none of the
run's later numbers (the branch's evaluation drew from the global streams the training used):

- the loader: its positions, its split orders and its generator are restored afterwards, and
  the captions of each evaluated image are drawn (where an image has more than 5) from a
  generator of its own seeded with ``CAPTION_SEED``: the same captions at every evaluation, so
  that the loss of two checkpoints is measured on the same sentences;
- torch's global generator: the forward makes one detach draw per step whatever p (the
  branch's rule, see models.py); at p = 0 nothing is cut, and the draws come from a private
  ``torch.Generator`` (or from ``generator`` when one is given: the branch's core drew from the
  training stream when decoding, pass it to stay in step with the branch). Dropout is off in
  eval mode, which is what the model is put in (its mode is restored afterwards).

Nothing here runs on import.
"""
import math
import os
import random
import sys

import torch

from captioning import labels as labels_mod
from captioning import metrics as metrics_mod
from captioning.models import MAX_LENGTH, LanguageModelCriterion
from running.errors import UsageError
from running.runfolder import now_iso, write_json

CAPTION_SEED = 0  # the evaluation's own caption draws (see the module docstring)
PREDICTIONS_FORMAT = "h-detach-caption-eval/1"


class _LoaderState:
    """Save a loader's positions, split orders and generator, give it an evaluation generator,
    and put everything back on the way out."""

    def __init__(self, loader):
        self.loader = loader

    def __enter__(self):
        loader = self.loader
        self.iterators = dict(loader.iterators)
        self.orders = {split: list(order) for split, order in loader.split_ix.items()}
        self.rng = loader.rng
        loader.rng = random.Random(CAPTION_SEED)
        return loader

    def __exit__(self, *exc):
        loader = self.loader
        loader.rng = self.rng
        loader.iterators = self.iterators
        loader.split_ix = self.orders
        return False


def _model_dtype(model):
    for tensor in model.parameters():
        return tensor.dtype
    return torch.float32


def evaluate_split(model, loader, split, device, *, num_images=-1, beam_size=1,
                   max_length=MAX_LENGTH, language_eval=True, generator=None, progress=False):
    """Evaluate ``model`` on ``split`` of ``loader`` (a ``CaptionLoader``): ``(metrics,
    predictions)``.

    ``metrics``: {"loss": the mean masked NLL (see the module's docstring)} and, with
    ``language_eval``, the coco-caption metrics of ``metrics.score`` ("Bleu_1" .. "CIDEr").
    ``predictions``: [{"image_id": id, "caption": str}], one per image, in the split's order.
    ``num_images``: -1 for the whole split, else the first ``num_images`` images (at most the
    split). ``beam_size`` 1 is greedy decoding; ``max_length`` the most words of a caption.
    ``generator``: where the model's detach draws come from (None: a private generator, no
    stream of the caller moves). ``progress``: a bar on stderr.
    """
    if num_images == 0 or num_images < -1:
        raise UsageError(f"the number of images to evaluate must be -1 (the whole split) or at "
                         f"least 1, got {num_images}")
    if beam_size < 1:
        raise UsageError(f"the beam size must be at least 1, got {beam_size}")
    loader.check_features(split)  # an unknown split, missing features: one line, before work
    size = len(loader.split_ix[split])
    if size == 0:
        raise UsageError(f"the {split} split of {loader.labels_json} has no images")
    wanted = size if num_images == -1 else min(num_images, size)
    attention = getattr(model, "caption_model", None) == "show_attend_tell"
    if attention and loader.att_dir is None:
        raise UsageError("show_attend_tell needs att features: the loader has no att folder")

    crit = LanguageModelCriterion()
    dtype = _model_dtype(model)
    vocab = loader.get_vocab()
    draws = generator if generator is not None else torch.Generator()
    was_training = model.training
    losses, predictions, references = [], [], {}
    bar = None
    if progress:
        from tqdm import tqdm
        # disable=None: a bar on a terminal only, none in a log file (a sweep's eval.log)
        bar = tqdm(total=wanted, desc=f"evaluating {split}", unit="img", file=sys.stderr,
                   leave=False, dynamic_ncols=True, disable=None)
    model.eval()
    try:
        with _LoaderState(loader), torch.no_grad():
            loader.reset_iterator(split)
            while len(predictions) < wanted:
                # never more images than still wanted: no feature file is read in vain, and
                # the batch can only wrap at the split's very end
                batch = loader.get_batch(split, batch_size=min(loader.batch_size,
                                                               wanted - len(predictions)))
                keep = batch.wrap_at if batch.wrapped else len(batch.ids)
                keep = min(keep, wanted - len(predictions))
                per = batch.seq_per_img
                fc = torch.from_numpy(batch.fc[:keep]).to(device=device, dtype=dtype)
                att = None
                if attention:
                    att = torch.from_numpy(batch.att[:keep]).to(device=device, dtype=dtype)
                labels = torch.from_numpy(batch.labels[:keep * per]).to(device)
                masks = torch.from_numpy(batch.masks[:keep * per]).to(device=device,
                                                                       dtype=dtype)
                # the features one row per caption, as the model's forward reads them
                logprobs = model(fc.repeat_interleave(per, 0),
                                 None if att is None else att.repeat_interleave(per, 0),
                                 labels, masks, p=0.0, generator=draws)
                losses.append(float(crit(logprobs, labels[:, 1:], masks[:, 1:])))
                seq = model.sample(fc, att, max_length=max_length, beam_size=beam_size,
                                   generator=generator)
                for k, row in enumerate(seq.cpu().tolist()):
                    ident = batch.ids[k]
                    predictions.append({"image_id": ident,
                                        "caption": labels_mod.decode(vocab, row)})
                    references[ident] = loader.references(batch.indices[k])
                if bar is not None:
                    bar.update(keep)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()

    loss = sum(losses) / len(losses)
    if not math.isfinite(loss):
        print(f"warning: the {split} loss is {loss}", file=sys.stderr)
    result = {"loss": loss}
    if language_eval:
        candidates = {p["image_id"]: p["caption"] for p in predictions}
        if progress:  # the bar is gone, and METEOR's Java takes ~10 s to start
            print(f"scoring {len(candidates)} captions with coco-caption (Java)...",
                  file=sys.stderr, flush=True)
        result.update(metrics_mod.score(references, candidates))
    return result, predictions


def write_predictions(path, split, metrics, predictions, checkpoint_info):
    """One JSON file, written atomically: the split, the number of images, the metrics, the
    checkpoint they came from (``checkpoint_info``: a dict, say its path and SHA-256) and every
    image's caption."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    write_json(path, {"format": PREDICTIONS_FORMAT, "split": split,
                      "images": len(predictions),
                      "metrics": {name: float(value) for name, value in metrics.items()},
                      "spice": "not computed",
                      "checkpoint": checkpoint_info, "written": now_iso(),
                      "predictions": [{"image_id": p["image_id"], "caption": p["caption"]}
                                      for p in predictions]})
    return path
