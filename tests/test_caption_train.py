"""caption_train.py: the captioning training script on a tiny data set made here (13 images,
8-d features, 2 x 2 att maps, a 10-word vocabulary, models of 16 units), with a stand-in for
``captioning.evaluation.evaluate_split`` whose metrics are computed from the model (so the best
and last logic is exercised without the coco-caption code): the run folder, TensorBoard,
metrics.csv per evaluation, the best model by CIDEr (strictly), checkpoints, exact resume after
--until-epoch and after a SIGTERM at any iteration, both models, h/c-detach, element-wise
clipping, one-line refusals of bad input, and report.py / sweep status on a captioning run."""
import json
import os
import random
import shutil
import signal
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import caption_train
import captioning
import copying
import report
import sweep
from captioning import labels as labels_mod
from captioning.evaluation import evaluate_split as REAL_EVALUATE_SPLIT
from captioning.loader import CaptionLoader
from captioning.models import LanguageModelCriterion, build_model
from running import runfolder
from test_copying import expect_error, raw_steps

WORDS = ["red", "blue", "green", "circle", "square", "left", "right", "on", "the", "a"]
SPLITS = ["train"] * 10 + ["val"] * 3 + ["test"] * 2  # image 1 is restval, trained on
FC = 8
# 10 train images in batches of 3: epochs end at iterations 4, 7 and 10 (a batch straddles
# two epochs); evaluations every 3 iterations and at the end: 3, 6, 9, 10.
ITERATIONS, EVALUATIONS, EPOCH_ENDS = 10, [3, 6, 9, 10], [4, 7, 10]


# ----------------------------------------------------------------------------- data

def sentence(rng):
    tokens = [rng.choice(WORDS) for _ in range(rng.randint(1, 7))]
    return {"tokens": tokens, "raw": " ".join(tokens)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A Karpathy file, its labels (prepro_captions.py's), fc and att feature folders with a
    features.json that says 8-d features. Images 500..509 train, 510..512 val, 513..514 test."""
    root = tmp_path_factory.mktemp("capdata")
    rng = random.Random(3)
    images = [{"imgid": 500 + i, "split": split, "filename": f"{i}.png",
               # fewer than 5 captions (drawn with replacement) for every third image
               "sentences": [sentence(rng) for _ in range(4 if i % 3 == 0 else 6)]}
              for i, split in enumerate(SPLITS)]
    images[1]["split"] = "restval"
    (root / "dataset.json").write_text(json.dumps({"images": images}))
    labels_mod.prepare_labels(str(root / "dataset.json"), str(root / "talk"),
                              word_count_threshold=0)
    values = np.random.RandomState(0)
    for kind in ("fc", "att"):
        (root / kind).mkdir()
        (root / kind / "features.json").write_text(json.dumps({"feature_size": FC,
                                                               "att_size": 2}))
    for img in images:
        np.save(root / "fc" / f"{img['imgid']}.npy", values.randn(FC).astype(np.float32))
        np.savez_compressed(root / "att" / f"{img['imgid']}.npz",
                            feat=values.randn(2, 2, FC).astype(np.float32))
    return root


def argv(data, save_dir, *extra, model="show_tell"):
    base = ["--input-json", str(data / "talk.json"), "--input-fc-dir", str(data / "fc"),
            "--save-dir", str(save_dir), "--caption-model", model, "--rnn-size", "16",
            "--input-encoding-size", "12", "--att-hid-size", "6", "--batch-size", "3",
            "--max-epochs", "3", "--save-checkpoint-every", "3", "--val-images-use", "3",
            "--device", "cpu", "--p-detach", "0.5", "--lr", "0.01"]
    if model == "show_attend_tell":
        base += ["--input-att-dir", str(data / "att")]
    return base + list(extra)


# ----------------------------------------------------------------------------- the stand-in

def parameter_total(model):
    return sum(float(p.detach().double().sum()) for p in model.parameters())


def stand_in_evaluate_split(model, loader, split, device, num_images=-1, beam_size=1,
                            language_eval=True, cider=None):
    """What captioning.evaluation.evaluate_split returns, computed from the model: the loss on
    the first ``num_images`` images of the split (drawing their captions from the loader, as
    the real one does), greedy captions, and metrics that follow the weights (CIDEr: 1 / loss,
    or ``cider(model, loss)``)."""
    model.eval()
    loader.reset_iterator(split)
    count = len(loader.split_ix[split]) if num_images == -1 else \
        min(num_images, len(loader.split_ix[split]))
    batch = loader.get_batch(split, batch_size=count)
    fc = torch.from_numpy(batch.fc).to(device)
    att = None if batch.att is None else torch.from_numpy(batch.att).to(device)
    labels = torch.from_numpy(batch.labels).to(device)
    masks = torch.from_numpy(batch.masks).to(device)
    per = batch.seq_per_img
    with torch.no_grad():
        logprobs = model(fc.repeat_interleave(per, 0),
                         None if att is None else att.repeat_interleave(per, 0), labels, masks,
                         p=0.0, generator=np.random.RandomState(0))  # no global stream moved
        loss = float(LanguageModelCriterion()(logprobs, labels[:, 1:], masks[:, 1:]))
        seq = model.sample(fc, att, beam_size=beam_size)
    model.train()
    metrics = {"loss": loss}
    if language_eval:
        total = parameter_total(model)
        metrics.update({name: (total * (i + 1)) % 1.0 for i, name in
                        enumerate(("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR",
                                   "ROUGE_L"))})
        metrics["CIDEr"] = cider(model, loss) if cider else 1.0 / loss
    predictions = [{"image_id": ident, "caption": labels_mod.decode(loader.ix_to_word, row)}
                   for ident, row in zip(batch.ids, seq.tolist())]
    return metrics, predictions


def install(monkeypatch, function=stand_in_evaluate_split):
    """Make ``captioning.evaluation.evaluate_split`` the stand-in (the module itself is written
    elsewhere; where it is not importable yet, a module holding only the stand-in)."""
    try:
        from captioning import evaluation
    except ImportError:
        evaluation = types.ModuleType("captioning.evaluation")
        monkeypatch.setitem(sys.modules, "captioning.evaluation", evaluation)
        monkeypatch.setattr(captioning, "evaluation", evaluation, raising=False)
    monkeypatch.setattr(evaluation, "evaluate_split", function, raising=False)


@pytest.fixture(autouse=True)
def stand_in(monkeypatch):
    install(monkeypatch)


# ----------------------------------------------------------------------------- helpers

def train(data, folder, *extra, model="show_tell"):
    return caption_train.main(argv(data, folder, *extra, model=model))


@pytest.fixture(scope="module")
def tiny_run(data, tmp_path_factory):
    """One finished show_tell h-detach run (3 epochs, 10 iterations)."""
    folder = tmp_path_factory.mktemp("runs") / "st"
    with pytest.MonkeyPatch.context() as patch:
        install(patch)
        assert train(data, folder) == 0
    return folder


def untimed_metrics(folder):
    return [{k: v for k, v in row.items() if k != "elapsed_s"}
            for row in runfolder.read_metrics(str(Path(folder) / "metrics.csv"))]


def assert_same_run(a, b):
    """Two runs bit for bit: weights, optimiser, metrics rows, results and events."""
    la = torch.load(a / "last.pt", weights_only=True)
    lb = torch.load(b / "last.pt", weights_only=True)
    for key in la["model"]:
        assert torch.equal(la["model"][key], lb["model"][key]), key
    for sa, sb in zip(la["optimizer"]["state"].values(), lb["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert la["iteration"] == lb["iteration"] and la["epoch"] == lb["epoch"]
    assert la["extra"]["loader"] == lb["extra"]["loader"]
    assert untimed_metrics(a) == untimed_metrics(b)
    ra, rb = (json.loads((f / "results.json").read_text()) for f in (a, b))
    ra.pop("wall_time_s"), rb.pop("wall_time_s")
    assert ra == rb
    best_a = torch.load(a / "best_model.pt", weights_only=True)
    best_b = torch.load(b / "best_model.pt", weights_only=True)
    assert best_a["iteration"] == best_b["iteration"]
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])
    for tag in ("train/loss", "val/CIDEr", "val/loss", "train/mean_loss"):
        assert raw_steps(b, tag) == raw_steps(a, tag), tag  # none duplicated, none missing


def snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()} if Path(folder).exists() \
        else None


# ----------------------------------------------------------------------------- the run folder

def test_the_run_folder_metrics_and_events(tiny_run):
    names = set(os.listdir(tiny_run))
    assert {"config.json", "metrics.csv", "last.pt", "best_model.pt", "results.json",
            "state.json"} <= names
    assert any(n.startswith(runfolder.EVENTS_PREFIX) for n in names)
    assert not [n for n in names if n.endswith(".tmp")]
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["task"] == "captioning" and config["args"]["fc_feat_size"] == FC  # features.json
    assert config["args"]["n_epochs"] == 3 and config["args"]["anneal_p"] == 0
    header = (tiny_run / "metrics.csv").read_text().splitlines()[0]
    assert header == ",".join(runfolder.CAPTION_COLUMNS) == (
        "epoch,iteration,p_detach,train_loss,val_loss,Bleu_1,Bleu_2,Bleu_3,Bleu_4,METEOR,"
        "ROUGE_L,CIDEr,elapsed_s")
    rows = runfolder.read_metrics(str(tiny_run / "metrics.csv"))
    assert [row["iteration"] for row in rows] == EVALUATIONS
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]  # epochs done at each evaluation
    assert all(row["p_detach"] == 0.5 for row in rows)
    losses = [v for _, v in raw_steps(tiny_run, "train/loss")]
    assert len(losses) == ITERATIONS
    # train_loss: the mean since the previous evaluation
    bounds = [0] + EVALUATIONS
    for row, start, end in zip(rows, bounds, bounds[1:]):
        assert row["train_loss"] == pytest.approx(np.mean(losses[start:end]), rel=1e-6)
    acc = EventAccumulator(str(tiny_run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/mean_loss", "val/loss", "val/CIDEr", "val/Bleu_4", "val/METEOR",
            "val/ROUGE_L", "p_detach"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, ITERATIONS + 1))
    assert [e.step for e in acc.Scalars("val/CIDEr")] == EVALUATIONS
    assert [e.value for e in acc.Scalars("val/CIDEr")] == pytest.approx(
        [row["CIDEr"] for row in rows])
    state = json.loads((tiny_run / "state.json").read_text())
    assert state["state"] == "done" and state["epoch"] == 3 and state["iteration"] == ITERATIONS


def test_best_model_by_cider_checkpoints_and_results(tiny_run, data):
    rows = runfolder.read_metrics(str(tiny_run / "metrics.csv"))
    best_cider = max(row["CIDEr"] for row in rows)
    first_best = next(row for row in rows if row["CIDEr"] == best_cider)
    best = torch.load(tiny_run / "best_model.pt", weights_only=True)
    last = torch.load(tiny_run / "last.pt", weights_only=True)
    assert best["kind"] == "best" and last["kind"] == "last"
    assert best["iteration"] == first_best["iteration"] and best["score"] == best_cider
    assert best["metrics"]["CIDEr"] == best_cider and best["epoch"] == first_best["epoch"]
    assert {"model", "optimizer", "rng", "extra", "iteration", "epoch", "events"} <= set(last)
    assert last["iteration"] == ITERATIONS and last["epoch"] == 3
    # the checkpoint rebuilds its model, and the model gives about the loss it was kept for
    # (the validation captions are other draws of the loader's windows now)
    net = build_model(**best["model_config"])
    net.load_state_dict(best["model"])
    loader = CaptionLoader(str(data / "talk.json"), str(data / "fc"), rng=0)
    loader.load_state_dict(last["extra"]["loader"])
    metrics, predictions = stand_in_evaluate_split(net, loader, "val", "cpu", num_images=3)
    assert metrics["loss"] == pytest.approx(best["metrics"]["loss"], rel=0.1)
    assert len(predictions) == 3 and all(isinstance(p["caption"], str) for p in predictions)
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["best_by"] == "CIDEr" and results["best_score"] == best_cider
    assert results["best_iteration"] == best["iteration"] and results["iterations"] == 10
    assert results["best_val"]["CIDEr"] == best_cider and results["final_epoch"] == 3
    assert results["final_val"]["CIDEr"] == rows[-1]["CIDEr"] and "wall_time_s" in results
    assert results["grad_clip"] == 0.1 and results["caption_model"] == "show_tell"


def test_the_best_is_only_replaced_when_strictly_beaten(data, tmp_path, monkeypatch):
    # every evaluation scores the same: the first one stays the best (current > best)
    install(monkeypatch, lambda *a, **k: stand_in_evaluate_split(
        *a, **k, cider=lambda model, loss: 0.5))
    assert train(data, tmp_path / "tie") == 0
    best = torch.load(tmp_path / "tie" / "best_model.pt", weights_only=True)
    assert best["iteration"] == EVALUATIONS[0]
    # without language evaluation the best is by -loss, and no CIDEr column is filled
    install(monkeypatch)
    assert train(data, tmp_path / "loss", "--language-eval", "0") == 0
    rows = runfolder.read_metrics(str(tmp_path / "loss" / "metrics.csv"))
    assert all(row["CIDEr"] is None for row in rows)
    best = torch.load(tmp_path / "loss" / "best_model.pt", weights_only=True)
    lowest = min(row["val_loss"] for row in rows)
    assert best["score"] == -lowest
    assert best["iteration"] == next(r["iteration"] for r in rows if r["val_loss"] == lowest)


# ----------------------------------------------------------------------------- exact resume

def test_until_epoch_then_resume_equals_the_straight_run(tiny_run, data, tmp_path, capsys):
    folder = tmp_path / "staged"
    assert train(data, folder, "--until-epoch", "1") == 0
    assert "paused at epoch 1 of 3" in capsys.readouterr().out
    last = torch.load(folder / "last.pt", weights_only=True)
    assert last["iteration"] == EPOCH_ENDS[0] and last["epoch"] == 1
    status = runfolder.RunFolder(str(folder)).status()
    assert status["state"] == "paused" and status["epochs"] == 1 and status["planned"] == 3
    assert train(data, folder, "--resume", "--until-epoch", "2") == 0
    assert caption_train.main(["--save-dir", str(folder), "--resume"]) == 0
    assert_same_run(tiny_run, folder)
    config = json.loads((folder / "config.json").read_text())
    assert [(r["epoch"], r["iteration"]) for r in config["resumed"]] == [(1, 4), (2, 7)]


@pytest.mark.parametrize("at", [2, 6, 7])
def test_sigterm_at_any_iteration_then_resume_is_exact(tiny_run, data, tmp_path, capsys,
                                                       monkeypatch, at):
    """A SIGTERM during the batch of iteration ``at`` (2: before any evaluation; 6: an
    evaluation's; 7: an epoch's end) stops the run after that iteration's work, with last.pt
    saved; --resume then gives the uninterrupted run bit for bit."""
    folder = tmp_path / "stopped"
    real = CaptionLoader.get_batch
    count = {"train": 0}

    def signalling(self, split, *args, **kwargs):
        if split == "train":
            count["train"] += 1
            if count["train"] == at:
                os.kill(os.getpid(), signal.SIGTERM)
        return real(self, split, *args, **kwargs)

    monkeypatch.setattr(CaptionLoader, "get_batch", signalling)
    assert train(data, folder) == 0
    out = capsys.readouterr().out
    assert "SIGTERM received" in out and "--resume" in out
    last = torch.load(folder / "last.pt", weights_only=True)
    assert last["iteration"] == at and not (folder / "results.json").exists()
    assert json.loads((folder / "state.json").read_text())["state"] == "stopped"
    assert [s for s, _ in raw_steps(folder, "train/loss")] == list(range(1, at + 1))
    monkeypatch.setattr(CaptionLoader, "get_batch", real)
    assert caption_train.main(["--save-dir", str(folder), "--resume"]) == 0
    assert_same_run(tiny_run, folder)


@pytest.mark.parametrize("model, rng", [("show_attend_tell", "authors"),
                                        ("show_tell", "kit")])
def test_checkpoint_every_resume_is_exact_for_the_other_model_and_streams(
        data, tmp_path, monkeypatch, model, rng):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train(data, straight, "--rng", rng, model=model) == 0
    # the same run saving last.pt every 5 iterations, cut back to its state at iteration 5
    original = runfolder.TrainingRun.save_last
    kept = {}

    def save_and_copy(self):
        original(self)
        if self.iteration == 5 and not kept:
            kept.update({p.name: p.read_bytes() for p in stopped.iterdir()})

    monkeypatch.setattr(runfolder.TrainingRun, "save_last", save_and_copy)
    assert train(data, stopped, "--rng", rng, "--checkpoint-every", "5", model=model) == 0
    monkeypatch.setattr(runfolder.TrainingRun, "save_last", original)
    for p in stopped.iterdir():
        p.unlink()
    for name, content in kept.items():
        (stopped / name).write_bytes(content)
    assert caption_train.main(["--save-dir", str(stopped), "--resume"]) == 0
    assert_same_run(straight, stopped)


def test_with_the_real_evaluation_a_paused_and_resumed_run_equals_the_straight_one(
        data, tmp_path, monkeypatch):
    """captioning.evaluation.evaluate_split itself (the loss only: --language-eval 0 needs no
    Java), Show, Attend and Tell: the rows, and exact resume across its evaluations."""
    install(monkeypatch, REAL_EVALUATE_SPLIT)
    straight, staged = tmp_path / "straight", tmp_path / "staged"
    flags = ["--language-eval", "0", "--val-images-use", "-1"]
    assert train(data, straight, *flags, model="show_attend_tell") == 0
    rows = runfolder.read_metrics(str(straight / "metrics.csv"))
    assert [row["iteration"] for row in rows] == EVALUATIONS
    assert all(row["CIDEr"] is None and np.isfinite(row["val_loss"]) for row in rows)
    results = json.loads((straight / "results.json").read_text())
    assert results["best_by"] == "-val_loss" and results["best_val"]["loss"] == min(
        row["val_loss"] for row in rows)
    assert train(data, staged, *flags, "--until-epoch", "2", model="show_attend_tell") == 0
    assert caption_train.main(["--save-dir", str(staged), "--resume"]) == 0
    assert_same_run(straight, staged)


# ----------------------------------------------------------------------------- detach, clipping

def first_losses(folder):
    return [v for _, v in raw_steps(folder, "train/loss")]


@pytest.mark.parametrize("model", ["show_tell", "show_attend_tell"])
def test_vanilla_h_and_c_detach_share_the_forward_and_differ_after(data, tmp_path, model):
    runs = {}
    for name, flags in (("vanilla", ["--p-detach", "-1"]), ("h", ["--p-detach", "0.5"]),
                        ("c", ["--p-detach", "0.5", "--detach", "c"])):
        folder = tmp_path / name
        assert train(data, folder, "--max-epochs", "1", *flags, model=model) == 0
        runs[name] = first_losses(folder)
        best = torch.load(folder / "best_model.pt", weights_only=True)
        assert best["model_config"]["caption_model"] == model
        assert best["model_config"]["detach"] == ("c" if name == "c" else "h")
        results = json.loads((folder / "results.json").read_text())
        assert results["p_detach"] == (-1.0 if name == "vanilla" else 0.5)
        rows = runfolder.read_metrics(str(folder / "metrics.csv"))
        assert rows[-1]["p_detach"] == (0.0 if name == "vanilla" else 0.5)
    # the same seed: the same weights, batches, dropout and draws; only the gradients differ
    assert runs["vanilla"][0] == runs["h"][0] == runs["c"][0]
    assert runs["vanilla"][1:] != runs["h"][1:] and runs["h"][1:] != runs["c"][1:]


def test_gradients_are_clamped_element_wise_unless_noclip(data, tmp_path, monkeypatch):
    seen = []
    real = torch.optim.Adam.step

    def record(self, *args, **kwargs):
        seen.append(max(float(p.grad.abs().max()) for group in self.param_groups
                        for p in group["params"] if p.grad is not None))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", record)
    assert train(data, tmp_path / "clip", "--max-epochs", "1") == 0
    assert seen and max(seen) == pytest.approx(0.1)  # entries above 0.1 were clamped to it
    assert all(value <= 0.1 + 1e-7 for value in seen)
    seen.clear()
    assert train(data, tmp_path / "noclip", "--max-epochs", "1", "--noclip") == 0
    assert max(seen) > 0.1
    # the clamp itself: every entry into [-limit, limit], the rest untouched, no norm rescale
    net = torch.nn.Linear(2, 2)
    net.weight.grad = torch.tensor([[0.5, -0.05], [-3.0, 0.1]])
    net.bias.grad = None
    caption_train.clip_elementwise(0.1)(net)
    assert net.weight.grad.tolist() == [[pytest.approx(0.1), pytest.approx(-0.05)],
                                        [pytest.approx(-0.1), pytest.approx(0.1)]]


def test_standardize_fc_takes_the_training_splits_statistics_and_resumes_exactly(
        data, tmp_path, capsys):
    work = tmp_path / "data"
    shutil.copytree(data, work)
    info = json.loads((work / "talk.json").read_text())
    rng = np.random.RandomState(5)
    for img in info["images"]:  # features with a large common part, one dimension constant
        fc = (5.0 + 0.1 * rng.randn(FC)).astype(np.float32)
        fc[0] = 2.0
        np.save(work / "fc" / f"{img['id']}.npy", fc)
    trained_on = [img["id"] for img in info["images"] if img["split"] in ("train", "restval")]
    assert len(trained_on) == 10  # the 9 train images and the restval one
    stack = np.stack([np.load(work / "fc" / f"{ident}.npy").astype(np.float64)
                      for ident in trained_on])
    straight = tmp_path / "straight"
    assert train(work, straight, "--standardize-fc") == 0
    assert "standardized with the mean and sd of the 10 training images" in \
        capsys.readouterr().out
    for name in ("best_model.pt", "last.pt"):
        saved = torch.load(straight / name, weights_only=True)
        assert saved["model_config"]["standardize_fc"] is True
        np.testing.assert_allclose(saved["model"]["fc_mean"].numpy(), stack.mean(0), rtol=1e-6)
        np.testing.assert_allclose(saved["model"]["fc_std"].numpy()[1:], stack.std(0)[1:],
                                   rtol=1e-4)
        assert saved["model"]["fc_std"][0] == 1.0  # a constant dimension is left at 0
    # paused and resumed (the statistics come back from last.pt, not computed again)
    staged = tmp_path / "staged"
    assert train(work, staged, "--standardize-fc", "--until-epoch", "1") == 0
    assert caption_train.main(["--save-dir", str(staged), "--resume"]) == 0
    assert "standardized" not in capsys.readouterr().out.split("paused")[-1]
    assert_same_run(straight, staged)
    # and it is another run than the branch's model on the same data
    plain = tmp_path / "plain"
    assert train(work, plain) == 0
    assert untimed_metrics(plain) != untimed_metrics(straight)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("case, contains", [
    ("no json", "does not exist"),
    ("no labels", "does not exist"),
    ("no fc dir", "feature folder"),
    ("fc missing", "have no features"),
    ("att missing", "have no features"),
    ("no att dir", "show_attend_tell needs att features"),
    ("other labels", "does not match"),
    ("fc size", "--fc-feat-size 16"),
    ("flag", "--beam-size"),
    ("until past the end", "past the run's last epoch (--max-epochs 3)"),  # its own flag name
])
def test_bad_input_is_one_line_and_touches_nothing(data, tmp_path, capsys, case, contains):
    work = tmp_path / "data"
    shutil.copytree(data, work)
    model, extra = "show_tell", []
    if case == "no json":
        (work / "talk.json").unlink()
    elif case == "no labels":
        (work / "talk_labels.npz").unlink()
    elif case == "no fc dir":
        shutil.rmtree(work / "fc")
    elif case == "fc missing":
        (work / "fc" / "510.npy").unlink()  # a val image
    elif case == "att missing":
        (work / "att" / "502.npz").unlink()
        model = "show_attend_tell"
    elif case == "no att dir":
        model = "show_attend_tell"
    elif case == "other labels":
        # the labels of another prepro run (captions cut to 3 words) beside this JSON
        labels_mod.prepare_labels(str(work / "dataset.json"), str(work / "short"),
                                  word_count_threshold=0, max_length=3)
        extra = ["--input-labels", str(work / "short_labels.npz")]
    elif case == "fc size":
        extra = ["--fc-feat-size", "16"]
    elif case == "flag":
        extra = ["--beam-size", "0"]
    elif case == "until past the end":
        extra = ["--max-epochs", "3", "--until-epoch", "5"]
    folder = tmp_path / "run"
    args = argv(work, folder, *extra, model=model)
    if case == "no att dir":
        args = args[:args.index("--input-att-dir")]
    expect_error(capsys, lambda: caption_train.main(args), contains=contains)
    assert not folder.exists()


@pytest.mark.parametrize("flags, says", [
    (["--checkpoint_path", "save"], "--checkpoint_path is not a flag here: each run is one "
                                    "folder: give --save-dir DIR"),
    (["--start-from=save"], "--start-from is not a flag here: continue a run with --save-dir "
                            "DIR --resume"),
    (["--id", "st"], "--id is not a flag here"),
    (["--learning_rate_decay_start", "3"], "no learning-rate decay"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_the_branchs_other_flags_say_what_to_give(data, tmp_path, capsys, flags, says):
    folder = tmp_path / "run"
    expect_error(capsys, lambda: caption_train.main(argv(data, folder, *flags)), contains=says)
    assert not folder.exists()


def test_resume_with_contradicting_flags_is_refused(data, tmp_path, capsys):
    folder = tmp_path / "run"
    assert train(data, folder, "--until-epoch", "1") == 0
    capsys.readouterr()  # what the run said
    before = snapshot(folder)
    err = expect_error(capsys, lambda: caption_train.main(
        ["--save-dir", str(folder), "--resume", "--p-detach", "0.1", "--lr", "0.05"]),
        contains="contradict")
    assert "p_detach (run: 0.5, given: 0.1)" in err and "lr" in err
    expect_error(capsys, lambda: caption_train.main(
        ["--save-dir", str(folder), "--resume", "--caption-model", "show_attend_tell"]),
        contains="caption_model")
    assert snapshot(folder) == before
    expect_error(capsys, lambda: train(data, folder), contains="already holds a run")
    assert snapshot(folder) == before


def test_help_reads_and_takes_the_branchs_names():
    text = caption_train.build_parser().format_help()
    for flag in ("--caption-model", "--p-detach", "--grad-clip", "--noclip", "--learning-rate",
                 "--max-epochs", "--save-checkpoint-every", "--val-images-use",
                 "--language-eval", "--beam-size", "--rng", "--until-epoch", "4e-4"):
        assert flag in text
    args = caption_train.build_parser().parse_args(
        ["--caption_model", "show_attend_tell", "--p_detach", "0.4", "--input_json", "j",
         "--input_fc_dir", "f", "--input_att_dir", "a", "--input_label_h5", "l",
         "--learning_rate", "4e-4", "--max_epochs", "2", "--save_dir", "s", "--batch_size", "16",
         "--val_images_use", "-1", "--language_eval", "0", "--grad_clip", "0.2"])
    assert (args.caption_model, args.p_detach, args.input_labels, args.lr, args.n_epochs,
            args.batch_size, args.val_images_use, args.language_eval, args.grad_clip) == (
        "show_attend_tell", 0.4, "l", 4e-4, 2, 16, -1, 0, 0.2)
    defaults = caption_train.build_parser().parse_args(["--input-json", "j", "--input-fc-dir",
                                                        "f", "--save-dir", "s"])
    assert (defaults.lr, defaults.batch_size, defaults.seq_per_img, defaults.n_epochs,
            defaults.grad_clip, defaults.save_checkpoint_every, defaults.val_images_use,
            defaults.language_eval, defaults.beam_size, defaults.p_detach) == (
        1e-4, 10, 5, 30, 0.1, 6000, 5000, 1, 1, -1.0)


# ---------------------------------------------------------------------------- tools that read runs

def test_report_and_status_on_a_root_with_a_captioning_run(tiny_run, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(tiny_run, root / "captioning" / "st")
    assert copying.main(["--T", "6", "--train-size", "60", "--test-size", "40", "--batch_size",
                         "20", "--lstm-size", "8", "--n_epochs", "2", "--device", "cpu",
                         "--save-dir", str(root / "copying" / "run")]) == 0
    capsys.readouterr()
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    paths = sorted(run["path"] for run in data["runs"])
    assert paths == [os.path.join("captioning", "st"), os.path.join("copying", "run")]
    assert data["skipped"] == [] and "## Image captioning" in \
        (tmp_path / "out" / "report.md").read_text()
    # sweep.py status reads a captioning run like any other: best CIDEr, epochs, a pace
    status = runfolder.RunFolder(str(root / "captioning" / "st")).status()
    rows = runfolder.read_metrics(str(tiny_run / "metrics.csv"))
    assert status["state"] == "done" and status["epochs"] == 3 and status["planned"] == 3
    assert status["best_valid"] == max(row["CIDEr"] for row in rows)
    assert status["best_kind"] == "CIDEr"
    assert status["epoch_s"] is not None and status["epoch_s"] >= 0
    # ... and its table names each cell's unit where CIDEr and accuracies share a column
    grids = tmp_path / "mixed_grids.py"
    grids.write_text(
        "from running.grids import Grid, Run\n"
        "GRIDS = {'mixed': lambda: Grid('mixed', 'both kinds', (\n"
        "    Run('captioning/st', 'caption_train.py', ()),\n"
        "    Run('copying/run', 'copying.py', ())))}\n")
    assert sweep.main(["status", "mixed", "--root", str(root), "--grids", str(grids)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "best valid %" not in table[0] and "best valid" in table[0]
    copying_best = runfolder.RunFolder(str(root / "copying" / "run")).status()["best_valid"]
    assert f"CIDEr {status['best_valid']:.3f}" in table[1]
    assert f"{copying_best:.2f} %" in table[2]
    # a root of captioning runs only gets its captioning report
    only = tmp_path / "only"
    shutil.copytree(tiny_run, only / "st")
    assert report.main([str(only), "--out", str(tmp_path / "o2")]) == 0
    assert "## Image captioning" in (tmp_path / "o2" / "report.md").read_text()


def test_captioning_metrics_keep_their_damage_checks(tmp_path):
    path = tmp_path / "metrics.csv"
    header = ",".join(runfolder.CAPTION_COLUMNS)
    path.write_text(f"{header}\n0,3,0.5,1,1,,,,,,,,1.0\n1,6,0.5,1,1,,,,,,,,2.0\n")
    rows = runfolder.read_metrics(str(path))
    assert [(r["epoch"], r["iteration"]) for r in rows] == [(0, 3), (1, 6)]
    path.write_text(f"{header}\n0,6,0.5,1,1,,,,,,,,1.0\n1,6,0.5,1,1,,,,,,,,2.0\n")
    with pytest.raises(runfolder.DamagedFile, match="iteration 6 follows iteration 6"):
        runfolder.read_metrics(str(path))
    path.write_text(f"{header}\n2,3,0.5,1,1,,,,,,,,1.0\n1,6,0.5,1,1,,,,,,,,2.0\n")
    with pytest.raises(runfolder.DamagedFile, match="epoch 1 follows epoch 2"):
        runfolder.read_metrics(str(path))
    path.write_text(f"{header}\n0,x,0.5,1,1,,,,,,,,1.0\n")
    with pytest.raises(runfolder.DamagedFile, match="iteration is 'x'"):
        runfolder.read_metrics(str(path))
