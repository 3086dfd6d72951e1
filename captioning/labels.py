"""Karpathy's split JSON -> the vocabulary and the encoded captions, as the authors' branch
``captioning`` does it (``scripts/prepro_labels.py`` of ruotianluo's neuraltalk2.pytorch; the
branch holds its Flickr twin ``scripts/prepro_labels_flickr.py``, which differs only in the
file path and the id it copies).

Input: ``dataset_coco.json`` (or ``dataset_flickr30k.json``, or ``make_shapes.py``'s
``dataset_shapes.json``): ``images[]``, each with ``split`` (train, val, test, restval),
``filepath`` (optional) and ``filename``, an id (``cocoid``, else ``imgid``, else ``id``) and
``sentences[]``, each with ``tokens`` (already lower-cased and split: used as they are, as the
branch does) and ``raw`` (the caption as written).

What the branch does, and so what this does:

- A word is kept if it occurs MORE than ``word_count_threshold`` (5) times over all captions of
  all splits; the others become ``UNK``. ``UNK`` is added (last) only if some word was dropped.
- The vocabulary's order is the order in which ``counts.items()`` yields the words: the branch
  ran on Python 3.6 (its ``__pycache__`` holds cpython-36 files), whose dicts keep insertion
  order, so that is the order of first occurrence in the file. Word ids start at 1
  (``ix_to_word`` is 1-based); 0 is the start and end token and the padding.
- Captions are cut to ``max_length`` (16) words; ``label_length`` holds the length after the
  cut.
- ``label_start_ix`` / ``label_end_ix`` are 1-based and inclusive (Lua style): the captions of
  image ``i`` are rows ``label_start_ix[i] - 1 .. label_end_ix[i] - 1`` of ``labels``. Kept
  as the branch stores them, so its files and ours can be compared.
- ``restval`` is trained on (the branch's ``--train_only 0``, its default, the usual Karpathy
  setting). The branch keeps ``restval`` in the JSON and lets the loader decide; here the
  decision is made once, by ``restval_as`` (``train``, ``val``, or ``drop``: the branch's
  ``--train_only 1``), and ``split`` holds the split the image is used in, ``karpathy_split``
  the original one.

Output (``OUT`` is the ``--output`` prefix):

    OUT.json         {"format", "ix_to_word": {"1": word, ...}, "images": [{"id", "split",
                     "karpathy_split", "file_path", "references": [the raw captions]}, ...],
                     "prepro": {the settings, the input's SHA-256}, "labels_sha256"}
    OUT_labels.npz   labels (M, max_length) uint32, zero padded; label_start_ix,
                     label_end_ix (N,) uint32, 1-based inclusive; label_length (M,) uint32

The images keep the input's order (dropped ``restval`` images aside). ``references`` are the
reference captions the evaluator scores against: every caption of the image, as ``raw`` text
(the COCO annotation text), or the joined tokens where a sentence has no ``raw``. The branch
wrote HDF5 (``OUT_label.h5``); numpy's npz needs no h5py. Nothing here runs on import.
"""
import hashlib
import json
import os

import numpy as np

from running.errors import UsageError
from running.runfolder import atomic_write, check_writable

FORMAT = "h-detach-captions/1"
KARPATHY_SPLITS = ("train", "val", "test", "restval")
SPLITS = ("train", "val", "test")
RESTVAL_CHOICES = ("train", "val", "drop")
UNK = "UNK"
WORD_COUNT_THRESHOLD = 5
MAX_LENGTH = 16
ARRAYS = ("labels", "label_start_ix", "label_end_ix", "label_length")


# ----------------------------------------------------------------------------- reading the input

def output_paths(prefix):
    """``(OUT.json, OUT_labels.npz)`` for an ``--output`` prefix (a trailing ``.json`` is
    ignored, so ``--output data/cocotalk.json`` means the same as ``data/cocotalk``)."""
    if prefix.endswith(".json"):
        prefix = prefix[:-len(".json")]
    return prefix + ".json", prefix + "_labels.npz"


def read_json_file(path, what):
    """The parsed JSON at ``path``; a missing or unparsable file is a one-line UsageError."""
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path} does not exist")
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{what} {path} is not JSON ({err})") from None
    except OSError as err:
        raise UsageError(f"{what} {path} cannot be read: {err.strerror}") from None


def image_id(img):
    """The id the features are named by: ``cocoid`` (COCO), else ``imgid`` (Flickr, shapes),
    else ``id`` (our own OUT.json). None if the entry has none."""
    for key in ("cocoid", "imgid", "id"):
        if key in img and img[key] is not None:
            return img[key]
    return None


def image_file_path(img):
    """The image's path below the image root: ``filepath/filename`` (Karpathy's COCO file),
    ``filename`` (Flickr's has no ``filepath``), or ``file_path`` (our OUT.json)."""
    if "file_path" in img:
        return img["file_path"]
    if "filename" not in img:
        return None
    return os.path.join(img.get("filepath") or "", img["filename"])


def _describe(index, img):
    ident = image_id(img) if isinstance(img, dict) else None
    return f"image #{index}" + (f" (id {ident})" if ident is not None else "")


def read_karpathy(path):
    """The ``images`` of a Karpathy split file, checked: each has a known split, an id, a file
    name, and at least one sentence with at least one token. Every fault is a one-line
    UsageError naming the first image that has it."""
    data = read_json_file(path, "input JSON")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UsageError(f"{path} holds no 'images' list: not a Karpathy split file "
                         "(dataset_coco.json format)")
    if not images:
        raise UsageError(f"{path}: the 'images' list is empty")
    seen = {}
    for index, img in enumerate(images):
        where = f"{path}: {_describe(index, img)}"
        if not isinstance(img, dict):
            raise UsageError(f"{where} is not a JSON object")
        if "split" not in img:
            raise UsageError(f"{where} has no split")
        if img["split"] not in KARPATHY_SPLITS:
            raise UsageError(f"{where} has the unknown split {img['split']!r} (expected one of "
                             f"{', '.join(KARPATHY_SPLITS)})")
        ident = image_id(img)
        if ident is None:
            raise UsageError(f"{where} has no id (cocoid, imgid or id)")
        if not isinstance(ident, (int, str)) or isinstance(ident, bool) or str(ident) == "" \
                or os.sep in str(ident):
            raise UsageError(f"{where} has an id that cannot name a file: {ident!r}")
        if str(ident) in seen:
            raise UsageError(f"{where} has the same id as image #{seen[str(ident)]}: the "
                             "feature files are named by id")
        seen[str(ident)] = index
        if image_file_path(img) is None:
            raise UsageError(f"{where} has no filename")
        sentences = img.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise UsageError(f"{where} has no sentences")
        for number, sent in enumerate(sentences):
            tokens = sent.get("tokens") if isinstance(sent, dict) else None
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise UsageError(f"{where}: sentence {number} has no 'tokens' list of words")
            if not tokens:
                raise UsageError(f"{where}: sentence {number} has no words")
    return images


# ----------------------------------------------------------------------------- vocabulary

def count_words(images):
    """{word: occurrences} over every caption of every image, in order of first occurrence."""
    counts = {}
    for img in images:
        for sent in img["sentences"]:
            for word in sent["tokens"]:
                counts[word] = counts.get(word, 0) + 1
    return counts


def build_vocab(counts, threshold=WORD_COUNT_THRESHOLD):
    """The branch's vocabulary: the words seen more than ``threshold`` times, in ``counts``'
    order, then ``UNK`` if any word was left out. Word ``vocab[i]`` gets id ``i + 1``."""
    vocab = [word for word, n in counts.items() if n > threshold]
    if len(vocab) < len(counts):
        vocab.append(UNK)
    return vocab


def encode_captions(images, counts, wtoi, threshold=WORD_COUNT_THRESHOLD,
                    max_length=MAX_LENGTH):
    """The branch's ``encode_captions``: every caption of every image, rare words as ``UNK``,
    cut to ``max_length``, in one zero-padded array; returns the four arrays (``ARRAYS``) and
    the number of captions that were cut."""
    n_captions = sum(len(img["sentences"]) for img in images)
    labels = np.zeros((n_captions, max_length), dtype=np.uint32)
    start = np.zeros(len(images), dtype=np.uint32)
    end = np.zeros(len(images), dtype=np.uint32)
    length = np.zeros(n_captions, dtype=np.uint32)
    row, cut = 0, 0
    for i, img in enumerate(images):
        start[i] = row + 1  # 1-based, inclusive
        for sent in img["sentences"]:
            words = [w if counts.get(w, 0) > threshold else UNK for w in sent["tokens"]]
            cut += len(words) > max_length
            words = words[:max_length]
            labels[row, :len(words)] = [wtoi[w] for w in words]
            length[row] = len(words)
            row += 1
        end[i] = row
    arrays = {"labels": labels, "label_start_ix": start, "label_end_ix": end,
              "label_length": length}
    return arrays, cut


def labels_digest(arrays):
    """SHA-256 of the four arrays (as little-endian uint32, in ``ARRAYS`` order, shapes
    included): stored in OUT.json, so that a JSON and an npz of two different runs are never
    used together."""
    digest = hashlib.sha256()
    for name in ARRAYS:
        array = np.ascontiguousarray(arrays[name], dtype="<u4")
        digest.update(f"{name}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def references_of(img):
    """The reference captions of an input image, as strings: ``raw`` where present, else the
    tokens joined by spaces."""
    refs = []
    for sent in img["sentences"]:
        raw = sent.get("raw")
        refs.append(raw if isinstance(raw, str) and raw.strip() else " ".join(sent["tokens"]))
    return refs


# ----------------------------------------------------------------------------- the whole step

def prepare_labels(input_json, output, word_count_threshold=WORD_COUNT_THRESHOLD,
                   max_length=MAX_LENGTH, restval_as="train"):
    """Read ``input_json``, write ``OUT.json`` and ``OUT_labels.npz`` (``output_paths``) and
    return a summary (``summary_line`` prints it). Every input is checked before anything is
    written; the two files are each written atomically, the npz first."""
    if restval_as not in RESTVAL_CHOICES:
        raise UsageError(f"restval_as must be one of {', '.join(RESTVAL_CHOICES)}, "
                         f"got {restval_as!r}")
    if max_length < 1:
        raise UsageError(f"--max-length must be at least 1, got {max_length}")
    json_path, npz_path = output_paths(output)
    images = read_karpathy(input_json)
    folder = os.path.dirname(os.path.abspath(json_path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"--output {output}: {folder} is not a folder")
    check_writable(folder, "--output")

    # The vocabulary counts every split, restval included even when it is dropped later:
    # the branch counts the whole file.
    counts = count_words(images)
    vocab = build_vocab(counts, word_count_threshold)
    wtoi = {word: i + 1 for i, word in enumerate(vocab)}
    used = []
    for img in images:
        split = img["split"]
        if split == "restval":
            if restval_as == "drop":
                continue
            split = restval_as
        used.append((img, split))
    if not used:
        raise UsageError(f"{input_json}: no image is left once restval is dropped")
    kept = [img for img, _ in used]
    arrays, cut = encode_captions(kept, counts, wtoi, word_count_threshold, max_length)

    total_words = sum(counts.values())
    unk_words = sum(n for n in counts.values() if n <= word_count_threshold)
    split_counts = {split: 0 for split in SPLITS}
    for _, split in used:
        split_counts[split] += 1
    n_restval = sum(img["split"] == "restval" for img in images)
    with open(input_json, "rb") as handle:
        input_sha = hashlib.sha256(handle.read()).hexdigest()

    info = {
        "format": FORMAT,
        "ix_to_word": {str(i + 1): word for i, word in enumerate(vocab)},
        "images": [{"id": image_id(img), "split": split, "karpathy_split": img["split"],
                    "file_path": image_file_path(img), "references": references_of(img)}
                   for img, split in used],
        "prepro": {"input_json": os.path.abspath(input_json), "input_sha256": input_sha,
                   "word_count_threshold": word_count_threshold, "max_length": max_length,
                   "restval_as": restval_as},
        "labels_sha256": labels_digest(arrays),
    }
    os.makedirs(folder, exist_ok=True)
    atomic_write(npz_path, lambda handle: np.savez_compressed(handle, **arrays))
    atomic_write(json_path, lambda handle: handle.write(json.dumps(info).encode("utf-8")))
    return {"json": json_path, "npz": npz_path, "images": len(used), "splits": split_counts,
            "restval": n_restval, "restval_as": restval_as, "vocab_size": len(vocab),
            "unk_in_vocab": UNK in wtoi, "words": total_words, "unk_words": unk_words,
            "captions": int(arrays["labels"].shape[0]), "captions_cut": cut,
            "max_length": max_length}


def summary_line(summary):
    """The one line ``prepro_captions.py labels`` prints."""
    splits = ", ".join(f"{name} {n}" for name, n in summary["splits"].items())
    restval = ""
    if summary["restval"]:
        restval = (f"; {summary['restval']} restval " +
                   ("dropped" if summary["restval_as"] == "drop"
                    else f"as {summary['restval_as']}"))
    share = 100.0 * summary["unk_words"] / max(summary["words"], 1)
    unk = " incl. UNK" if summary["unk_in_vocab"] else " (no UNK needed)"
    return (f"{summary['images']} images ({splits}{restval}), vocabulary {summary['vocab_size']}"
            f" words{unk}, UNK {share:.2f}% of {summary['words']} words, "
            f"{summary['captions_cut']} of {summary['captions']} captions cut to "
            f"{summary['max_length']} words -> {summary['json']}, {summary['npz']}")


# ----------------------------------------------------------------------------- reading the output

def read_labels(json_path, npz_path=None):
    """``(info, arrays)`` of a prepared pair, checked against each other: the image count, the
    caption count and pointers, the vocabulary (every id in 1..V, ``ix_to_word`` keys 1..V) and
    the digest OUT.json records. A mismatch is a one-line UsageError."""
    if npz_path is None:
        npz_path = output_paths(json_path)[1]
    info = read_json_file(json_path, "labels JSON")
    if not isinstance(info, dict) or not isinstance(info.get("images"), list) or \
            not isinstance(info.get("ix_to_word"), dict):
        raise UsageError(f"{json_path} is not a prepared labels JSON (run prepro_captions.py "
                         "labels): it lacks 'images' or 'ix_to_word'")
    if not os.path.isfile(npz_path):
        raise UsageError(f"labels file {npz_path} does not exist")
    try:
        with np.load(npz_path) as data:
            missing = [name for name in ARRAYS if name not in data.files]
            if missing:
                raise UsageError(f"{npz_path} is not a labels file of prepro_captions.py: it "
                                 f"has no array {', '.join(repr(name) for name in missing)}")
            arrays = {name: data[name] for name in ARRAYS}
    except UsageError:
        raise
    except Exception:  # zipfile / numpy raise several types (and misleading hints) for these
        raise UsageError(f"{npz_path} is not a readable labels npz (make it with "
                         "prepro_captions.py labels)") from None

    def mismatch(what):
        return UsageError(f"{npz_path} does not match {json_path}: {what}")

    n_images, vocab_size = len(info["images"]), len(info["ix_to_word"])
    labels, start, end = arrays["labels"], arrays["label_start_ix"], arrays["label_end_ix"]
    if labels.ndim != 2 or start.shape != (n_images,) or end.shape != (n_images,):
        raise mismatch(f"the JSON has {n_images} images, the npz "
                       f"{start.shape[0] if start.ndim else '?'}")
    if arrays["label_length"].shape != (labels.shape[0],):
        raise mismatch("label_length and labels disagree on the caption count")
    if n_images and (start[0] != 1 or end[-1] != labels.shape[0] or np.any(start > end) or
                     np.any(start[1:] != end[:-1] + 1)):
        raise mismatch(f"the caption pointers do not cover the {labels.shape[0]} captions")
    if sorted(info["ix_to_word"], key=lambda k: int(k) if k.isdigit() else -1) != \
            [str(i) for i in range(1, vocab_size + 1)]:
        raise UsageError(f"{json_path}: ix_to_word keys are not 1..{vocab_size}")
    if labels.size and int(labels.max()) > vocab_size:
        raise mismatch(f"word id {int(labels.max())} is beyond the JSON's vocabulary of "
                       f"{vocab_size} words")
    digest = info.get("labels_sha256")
    if digest is not None and digest != labels_digest(arrays):
        raise mismatch("the npz is not the one written with this JSON (labels_sha256 differs)")
    return info, arrays


def decode(ix_to_word, seq):
    """Word ids -> a caption string, stopping at the first 0 (the end token), as the branch's
    ``misc.utils.decode_sequence`` does for one sequence."""
    words = []
    for ix in seq:
        ix = int(ix)
        if ix == 0:
            break
        words.append(ix_to_word[str(ix)])
    return " ".join(words)
