"""Batches for captioning: images with their ``seq_per_img`` captions, as the authors' branch
``captioning`` reads them (``dataloader.py`` of ruotianluo's neuraltalk2.pytorch, early 2018:
``DataLoader`` + ``BlobFetcher``; the branch's own file is not stored where we could read it,
so the order of draws below is that of ruotianluo's repository and its forks of the time,
which the branch's ``train.py`` and ``eval_utils.py`` match: ``get_batch``, ``reset_iterator``,
``iterators``, ``split_ix``, ``bounds``).

What the branch does, and so what this does:

- Splits: train, val, test as the labels JSON says (``restval`` was decided by
  ``prepro_captions.py labels``, ``--restval-as``). Each split walks its images in a fixed
  order, one image at a time; ``iterators[split]`` is the position. The order at the start is
  the JSON's; when the last image of the train split has been taken, the train order is
  shuffled in place (python ``random.shuffle``) and the batch goes on with the new epoch's
  first images (a batch may straddle two epochs; it is then ``wrapped``). val and test are
  never shuffled. So the first train epoch runs in file order (``shuffle_first_epoch=True``
  shuffles it too: not the branch).
- Captions: an image with at least ``seq_per_img`` (5) captions gets a run of 5 consecutive
  ones starting at ``random.randint(first, last - 4)``; with fewer, each of the 5 is
  ``random.randint(first, last)`` (with replacement). The draws for an image come right after
  the image is taken (after the shuffle when it ends the epoch), as in the branch.
- The branch draws from python's global ``random`` (never seeded in its ``train.py``); here
  from a ``random.Random`` given to the loader (or seeded from an int), the same generator
  with the same calls, so that ``state_dict()`` can hold it: position, order and generator
  state, for an exact resume.
- labels: (B * 5, 16 + 2) int64, column 0 and every column after the caption 0 (start / end /
  padding), the caption's word ids in columns 1..len. masks: (B * 5, 18) float32, 1 over the
  first ``len + 2`` columns: the start token, the words and the end token (training uses
  ``labels[:, 1:]`` with ``masks[:, 1:]``: the words and the end token).
- Features: ``fc`` (B, C) and ``att`` (B, att * att, C) (None when the loader has no att
  folder: show_tell needs fc only), ONE ROW PER IMAGE. The branch repeats each image's
  features ``seq_per_img`` times (``fc_feats`` (B * 5, C)); row ``i * 5 + j`` of ``labels``
  belongs to image ``i``, so ``np.repeat(fc, 5, axis=0)`` (or torch's ``repeat_interleave``)
  gives the branch's layout. att is the (att, att, C) file flattened row-major to (att * att,
  C), as the branch's attention models view it.

Nothing here runs on import.
"""
import concurrent.futures
import io
import os
import random
import zipfile
from dataclasses import dataclass, field

import numpy as np

from captioning import labels as labels_mod
from captioning.features import feature_paths
from running.errors import UsageError

STATE_FORMAT = "h-detach-caption-loader/1"
SPLITS = labels_mod.SPLITS
SEQ_PER_IMG = 5
BATCH_SIZE = 10


@dataclass
class Batch:
    """One batch. ``fc``/``att`` have one row per image; ``labels``/``masks`` one per caption
    (image ``i``'s captions are rows ``i * seq_per_img ..``). ``indices`` are positions in the
    labels JSON's ``images``; ``ids`` their ids. ``wrapped``: the split's last image was in
    this batch; then ``wrap_at`` images of the batch belong to the epoch that ended (the rest
    begin the next one: an evaluation drops them). ``position`` / ``split_size``: the
    branch's ``bounds`` (``it_pos_now`` after this batch, ``it_max``)."""
    fc: np.ndarray
    att: object
    labels: np.ndarray
    masks: np.ndarray
    ids: list
    indices: list
    wrapped: bool
    wrap_at: object
    position: int
    split_size: int
    seq_per_img: int = SEQ_PER_IMG
    file_paths: list = field(default_factory=list)


def masks_for(labels):
    """The branch's masks: 1 over the first (nonzero ids + 2) columns of each row."""
    lengths = (labels != 0).sum(axis=1) + 2
    return (np.arange(labels.shape[1])[None, :] < lengths[:, None]).astype(np.float32)


class CaptionLoader:
    """Batches from a prepared labels pair (``prepro_captions.py labels``) and feature folders
    (``prepro_captions.py features``).

    ``CaptionLoader("data/cocotalk.json", "data/cocotalk_fc", "data/cocotalk_att", rng=123)``;
    ``labels_npz`` defaults to the JSON's twin (``OUT_labels.npz``). ``rng``: a
    ``random.Random`` (used, and advanced, by the loader) or an int seed. ``splits``: the
    splits whose features are checked at once (every image of them must have its files; a
    split not named is checked when first read). ``workers``: threads that read a batch's
    feature files.
    """

    def __init__(self, labels_json, fc_dir, att_dir=None, *, labels_npz=None,
                 batch_size=BATCH_SIZE, seq_per_img=SEQ_PER_IMG, rng=0,
                 shuffle_first_epoch=False, splits=SPLITS, workers=4):
        if batch_size < 1 or seq_per_img < 1:
            raise UsageError(f"batch_size and seq_per_img must be at least 1, got "
                             f"{batch_size} and {seq_per_img}")
        self.info, arrays = labels_mod.read_labels(labels_json, labels_npz)
        self.labels_json = labels_json
        self.ix_to_word = self.info["ix_to_word"]
        self.vocab_size = len(self.ix_to_word)
        self.labels = arrays["labels"]
        self.seq_length = int(self.labels.shape[1])
        self.label_start_ix = arrays["label_start_ix"].astype(np.int64)
        self.label_end_ix = arrays["label_end_ix"].astype(np.int64)
        self.batch_size, self.seq_per_img = batch_size, seq_per_img
        self.fc_dir, self.att_dir = fc_dir, att_dir
        self.workers = workers
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng)

        self.split_ix = {split: [] for split in SPLITS}
        for ix, img in enumerate(self.info["images"]):
            if img.get("split") not in self.split_ix:
                raise UsageError(f"{labels_json}: image #{ix} has the split {img.get('split')!r}"
                                 f"; a prepared labels JSON has only {', '.join(SPLITS)}")
            self.split_ix[img["split"]].append(ix)
        self.iterators = {split: 0 for split in SPLITS}
        if shuffle_first_epoch:
            self.rng.shuffle(self.split_ix["train"])

        for folder, flag in ((fc_dir, "fc"), (att_dir, "att")):
            if folder is not None and not os.path.isdir(folder):
                raise UsageError(f"the {flag} feature folder {folder} does not exist")
        self._checked = set()
        for split in splits:
            self.check_features(split)

    # -------------------------------------------------------------------- what the model needs

    def get_vocab(self):
        return self.ix_to_word

    def get_vocab_size(self):
        return self.vocab_size

    def get_seq_length(self):
        return self.seq_length

    def image(self, ix):
        """The labels JSON's entry of image ``ix`` (id, split, file_path, references)."""
        return self.info["images"][ix]

    def references(self, ix):
        """The reference captions of image ``ix`` (strings), for scoring."""
        return self.info["images"][ix]["references"]

    # -------------------------------------------------------------------- features

    def check_features(self, split):
        """Every image of ``split`` has its feature files; else a one-line UsageError naming
        the first one missing and how many are."""
        if split in self._checked:
            return
        if split not in self.split_ix:
            raise UsageError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
        for folder, suffix in ((self.fc_dir, ".npy"), (self.att_dir, ".npz")):
            if folder is None:
                continue
            present = set(os.listdir(folder))
            absent = [ix for ix in self.split_ix[split]
                      if f"{self.info['images'][ix]['id']}{suffix}" not in present]
            if absent:
                first = self.info["images"][absent[0]]["id"]
                raise UsageError(
                    f"{len(absent)} of the {len(self.split_ix[split])} {split} images have no "
                    f"features in {folder}; the first is id {first} "
                    f"({os.path.join(folder, f'{first}{suffix}')}): run prepro_captions.py "
                    "features")
        self._checked.add(split)

    def _fetch(self, ix, att=True):
        """The bytes of image ``ix``'s feature files (fc, then att unless ``att`` is false or
        the loader has no att folder): file I/O only, so that it can run on the reading
        threads (reading releases the GIL; decoding does not)."""
        files = []
        ident = self.info["images"][ix]["id"]
        for path in feature_paths(ident, self.fc_dir, self.att_dir if att else None):
            if path is None:
                continue
            try:
                with open(path, "rb") as handle:
                    files.append((path, handle.read()))
            except OSError as err:
                raise UsageError(f"cannot read the features {path} ({err})") from None
        return files

    @staticmethod
    def _decode(files):
        """fc (C,) and att (att * att, C) or None as float32, from ``_fetch``'s bytes.

        Runs on the calling thread only: numpy parses a .npy header with
        ``ast.literal_eval``, and CPython 3.11 keeps the AST constructor's recursion count
        per interpreter, not per thread, so two threads parsing at once can fail with
        "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905)."""
        (fc_path, fc_raw), *att_file = files

        def load(path, raw, key=None):
            try:
                if key is None:
                    return np.load(io.BytesIO(raw))
                with np.load(io.BytesIO(raw)) as data:
                    return data[key]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                raise UsageError(f"cannot read the features {path} ({err})") from None

        fc = load(fc_path, fc_raw).astype(np.float32, copy=False)
        if not att_file:
            return fc, None
        att = load(*att_file[0], key="feat")
        return fc, att.reshape(-1, att.shape[-1]).astype(np.float32, copy=False)

    def fc_statistics(self, split="train"):
        """The per-dimension mean and standard deviation (population) of the fc features over
        the images of ``split`` (Karpathy's restval included in train), as float32 arrays.

        Read in the labels' image order (not the shuffled one: no random stream is read or
        moved), summed in float64: the same files give the same numbers. A dimension that does
        not vary (sd below 1e-6) gets sd 1, so that standardizing leaves it at 0."""
        self.check_features(split)
        picks = sorted(self.split_ix[split])
        if not picks:
            raise UsageError(f"the {split} split has no images to take fc statistics over")
        total = squares = None
        for ix in picks:
            fc = self._decode(self._fetch(ix, att=False))[0].astype(np.float64).reshape(-1)
            if total is None:
                total, squares = np.zeros_like(fc), np.zeros_like(fc)
            total += fc
            squares += fc * fc
        mean = total / len(picks)
        std = np.sqrt(np.maximum(squares / len(picks) - mean * mean, 0.0))
        std[std < 1e-6] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)

    def _read_all(self, picks):
        if self.workers > 1 and len(picks) > 1:
            with concurrent.futures.ThreadPoolExecutor(min(self.workers, len(picks))) as pool:
                fetched = list(pool.map(self._fetch, picks))
        else:
            fetched = [self._fetch(ix) for ix in picks]
        return [self._decode(files) for files in fetched]

    # -------------------------------------------------------------------- iteration

    def _next_index(self, split):
        """The branch's ``_get_next_minibatch_inds``: the next image of ``split``, and whether
        it was the split's last (then the train order is reshuffled for the next epoch)."""
        order = self.split_ix[split]
        if not order:
            raise UsageError(f"the {split} split has no images")
        position = self.iterators[split]
        ix = order[position]
        wrapped = position + 1 >= len(order)
        if wrapped:
            if split == "train":
                self.rng.shuffle(order)
        self.iterators[split] = 0 if wrapped else position + 1
        return ix, wrapped

    def _caption_rows(self, ix, seq_per_img):
        first = int(self.label_start_ix[ix]) - 1  # 1-based, inclusive
        last = int(self.label_end_ix[ix]) - 1
        if last - first + 1 < seq_per_img:
            return [self.rng.randint(first, last) for _ in range(seq_per_img)]
        start = self.rng.randint(first, last - seq_per_img + 1)
        return list(range(start, start + seq_per_img))

    def get_batch(self, split, batch_size=None, seq_per_img=None):
        """The next batch of ``split`` (a ``Batch``)."""
        batch_size = batch_size or self.batch_size
        seq_per_img = seq_per_img or self.seq_per_img
        self.check_features(split)
        length = self.seq_length
        labels = np.zeros((batch_size * seq_per_img, length + 2), dtype=np.int64)
        picks, wrap_at = [], None
        for i in range(batch_size):
            ix, wrapped = self._next_index(split)
            if wrapped and wrap_at is None:
                wrap_at = i + 1
            rows = self._caption_rows(ix, seq_per_img)
            labels[i * seq_per_img:(i + 1) * seq_per_img, 1:length + 1] = self.labels[rows]
            picks.append(ix)
        features = self._read_all(picks)
        fc = np.stack([f for f, _ in features])
        att = np.stack([a for _, a in features]) if self.att_dir else None
        images = self.info["images"]
        return Batch(fc=fc, att=att, labels=labels, masks=masks_for(labels),
                     ids=[images[ix]["id"] for ix in picks], indices=picks,
                     wrapped=wrap_at is not None, wrap_at=wrap_at,
                     position=self.iterators[split], split_size=len(self.split_ix[split]),
                     seq_per_img=seq_per_img,
                     file_paths=[images[ix]["file_path"] for ix in picks])

    def reset_iterator(self, split):
        """Back to the first image of ``split``'s current order (evaluation starts here)."""
        self.iterators[split] = 0

    # -------------------------------------------------------------------- exact resume

    def state_dict(self):
        """Where every split stands, its current order and the generator's state, as plain
        lists and ints (JSON and ``torch.load(weights_only=True)`` both read them)."""
        version, internal, gauss = self.rng.getstate()
        return {"format": STATE_FORMAT, "iterators": dict(self.iterators),
                "split_ix": {split: list(order) for split, order in self.split_ix.items()},
                "rng": [version, list(internal), gauss],
                "n_images": len(self.info["images"]),
                "labels_sha256": self.info.get("labels_sha256")}

    def load_state_dict(self, state):
        """Continue exactly where ``state`` (``state_dict()``) was taken. State of other data
        (another image count, other labels, orders that are not the splits' images) is a
        one-line UsageError."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UsageError("not a caption loader state (state_dict of CaptionLoader)")
        if state["n_images"] != len(self.info["images"]) or \
                state.get("labels_sha256") != self.info.get("labels_sha256"):
            raise UsageError(f"the loader state belongs to other data than {self.labels_json} "
                             "(image count or labels differ)")
        for split in SPLITS:
            order = [int(ix) for ix in state["split_ix"][split]]
            if sorted(order) != sorted(self.split_ix[split]):
                raise UsageError(f"the loader state's {split} order is not a permutation of "
                                 f"the {split} images of {self.labels_json}")
            position = int(state["iterators"][split])
            if not 0 <= position < max(len(order), 1):
                raise UsageError(f"the loader state's {split} position {position} is outside "
                                 f"the split's {len(order)} images")
        self.split_ix = {split: [int(ix) for ix in state["split_ix"][split]] for split in SPLITS}
        self.iterators = {split: int(state["iterators"][split]) for split in SPLITS}
        version, internal, gauss = state["rng"]
        self.rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
