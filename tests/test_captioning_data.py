"""The captioning data side (captioning/labels.py, features.py, shapes.py, loader.py and the
commands prepro_captions.py, make_shapes.py), on small data made here: the branch's vocabulary
and encoding rules, features recomputed through torchvision, resumable and atomic feature
files, the synthetic set, and the loader's batches, draws and exact resume."""
import json
import math
import os
import random
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import make_shapes
import prepro_captions
from captioning import features, labels, loader, shapes
from running.errors import UsageError


# ----------------------------------------------------------------------------- helpers

def sentence(words):
    tokens = words.split()
    return {"tokens": tokens, "raw": " ".join(tokens).capitalize() + "."}


def karpathy(images):
    return {"dataset": "test", "images": images}


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def run(capsys, *argv):
    """``prepro_captions.main(argv)`` in-process: (exit status, stdout, stderr)."""
    try:
        code = prepro_captions.main(list(argv))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def vocab_images():
    """'six' occurs 6 times, 'five' 5 times, 'once' once; the split of each image differs."""
    return [
        {"cocoid": 10, "split": "train", "filepath": "train2014", "filename": "a.jpg",
         "sentences": [sentence("a six five"), sentence("a six five once")]},
        {"cocoid": 11, "split": "restval", "filepath": "val2014", "filename": "b.jpg",
         "sentences": [sentence("six five a"), sentence("six five")]},
        {"cocoid": 12, "split": "val", "filepath": "val2014", "filename": "c.jpg",
         "sentences": [sentence("six five")]},
        {"cocoid": 13, "split": "test", "filepath": "val2014", "filename": "d.jpg",
         "sentences": [sentence("six a " + " ".join(f"w{i % 3}" for i in range(20)))]},
    ]


@pytest.fixture
def prepared(tmp_path, capsys):
    src = write_json(tmp_path / "dataset.json", karpathy(vocab_images()))
    code, out, err = run(capsys, "labels", "--input-json", src, "--output",
                         str(tmp_path / "talk"), "--word-count-threshold", "5")
    assert code == 0, err
    return tmp_path, out


# ----------------------------------------------------------------------------- labels

def test_vocabulary_threshold_order_and_ids(prepared):
    folder, out = prepared
    info = json.loads((folder / "talk.json").read_text())
    vocab = [info["ix_to_word"][str(i)] for i in range(1, len(info["ix_to_word"]) + 1)]
    # 'six' 6 times: kept; 'five' exactly 5 times: UNK; 'a' 4 times, 'once' once: UNK;
    # w0, w1, w2 (7, 7, 6 times): kept
    counts = labels.count_words(vocab_images())
    assert counts["six"] == 6 and counts["five"] == 5
    assert "six" in vocab and "five" not in vocab and "once" not in vocab
    # first-occurrence order of the kept words, then UNK last; ids start at 1
    assert vocab == [w for w in counts if counts[w] > 5] + ["UNK"]
    assert set(info["ix_to_word"]) == {str(i) for i in range(1, len(vocab) + 1)}
    assert "UNK" in out and "vocabulary" in out


def test_encoding_unk_truncation_pointers_and_round_trip(prepared):
    folder, out = prepared
    info, arrays = labels.read_labels(str(folder / "talk.json"))
    lab, start, end, length = (arrays[k] for k in labels.ARRAYS)
    assert lab.shape == (6, 16) and lab.dtype == np.uint32
    # 1-based inclusive pointers: image i's captions are rows start-1 .. end-1
    assert start.tolist() == [1, 3, 5, 6] and end.tolist() == [2, 4, 5, 6]
    assert length.tolist() == [3, 4, 3, 2, 2, 16]
    assert lab.min() == 0 and lab[lab > 0].min() >= 1
    wtoi = {w: int(i) for i, w in info["ix_to_word"].items()}
    # 'a' (4 times) and 'five' (5) and 'once' become UNK; 'six' stays
    assert labels.decode(info["ix_to_word"], lab[0]) == "UNK six UNK"
    assert labels.decode(info["ix_to_word"], lab[1]) == "UNK six UNK UNK"
    assert lab[0, :3].tolist() == [wtoi["UNK"], wtoi["six"], wtoi["UNK"]]
    # cut to 16 words: the 22-word caption keeps its first 16
    long_caption = ("six UNK " + " ".join(f"w{i % 3}" for i in range(14)))
    assert labels.decode(info["ix_to_word"], lab[5]) == long_caption
    assert "1 of 6 captions cut to 16 words" in out


def test_splits_restval_trained_and_references(prepared, tmp_path, capsys):
    folder, out = prepared
    info = json.loads((folder / "talk.json").read_text())
    assert [img["split"] for img in info["images"]] == ["train", "train", "val", "test"]
    assert info["images"][1]["karpathy_split"] == "restval"
    assert info["images"][0]["file_path"] == os.path.join("train2014", "a.jpg")
    assert info["images"][0]["id"] == 10
    assert info["images"][0]["references"] == ["A six five.", "A six five once."]
    assert "4 images (train 2, val 1, test 1; 1 restval as train)" in out
    src = str(folder / "dataset.json")
    code, out, _ = run(capsys, "labels", "--input-json", src, "--output",
                       str(tmp_path / "dropped"), "--restval-as", "drop")
    assert code == 0 and "3 images (train 1, val 1, test 1; 1 restval dropped)" in out
    code, out, _ = run(capsys, "labels", "--input_json", src, "--output", str(tmp_path / "v"),
                       "--restval_as", "val")
    assert code == 0 and "(train 1, val 2, test 1" in out


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    (json.dumps({"pictures": []}), "no 'images' list"),
    (json.dumps(karpathy([{"cocoid": 1, "split": "train", "filename": "x.jpg",
                           "sentences": []}])), "has no sentences"),
    (json.dumps(karpathy([{"cocoid": 1, "filename": "x.jpg",
                           "sentences": [sentence("a b")]}])), "has no split"),
    (json.dumps(karpathy([{"cocoid": 1, "split": "holdout", "filename": "x.jpg",
                           "sentences": [sentence("a b")]}])), "unknown split 'holdout'"),
])
def test_labels_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, content, message):
    src = tmp_path / "in.json"
    if content is not None:
        src.write_text(content)
    code, out, err = run(capsys, "labels", "--input-json", str(src), "--output",
                         str(tmp_path / "out"))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == (["in.json"] if content is not None else [])


# ----------------------------------------------------------------------------- features

SMALL = {"img0": (40, 56), "img1": (72, 40), "img2": (48, 48)}


def make_images(folder):
    """Three small images of different sizes (one grey), listed in a Karpathy file."""
    rng = np.random.default_rng(0)
    (folder / "pics").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (name, (w, h)) in enumerate(SMALL.items()):
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if i == 2:
            image = image.convert("L")
        image.save(folder / "pics" / f"{name}.png")
        entries.append({"imgid": i, "split": "train", "filepath": "pics",
                        "filename": f"{name}.png", "sentences": [sentence("a b")]})
    return write_json(folder / "dataset.json", karpathy(entries)), entries


def feature_args(src, folder, *extra):
    return ["features", "--input-json", src, "--images-dir", str(folder), "--fc-dir",
            str(folder / "fc"), "--att-dir", str(folder / "att"), "--cnn-weights", "random",
            "--seed", "0", "--arch", "resnet18", "--att-size", "3", "--device", "cpu", *extra]


def reference_map(path):
    """The last conv map of torchvision's resnet18 (random init from seed 0), computed here
    without the kit's code."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None).eval()
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    x = torchvision.transforms.functional.normalize(x, [0.485, 0.456, 0.406],
                                                    [0.229, 0.224, 0.225])
    body = torch.nn.Sequential(*list(net.children())[:-2])
    with torch.no_grad():
        return body(x[None])


def branch_pool(x, size):
    """The branch's spatialAdaAvgPool (misc/resnet_utils.py), cell by cell."""
    _, channels, height, width = x.shape
    out = torch.zeros(channels, size, size)
    for oh in range(size):
        for ow in range(size):
            i1, i2 = oh * height // size, math.ceil((oh + 1) * height / size)
            j1, j2 = ow * width // size, math.ceil((ow + 1) * width / size)
            out[:, oh, ow] = x[0, :, i1:i2, j1:j2].mean(1).mean(1)
    return out.permute(1, 2, 0)


def test_features_match_torchvision_and_resume(tmp_path, capsys):
    src, entries = make_images(tmp_path)
    code, out, err = run(capsys, *feature_args(src, tmp_path))
    assert code == 0, err
    assert "3 computed, 0 already there" in out
    for entry in entries:
        ident = entry["imgid"]
        fc = np.load(tmp_path / "fc" / f"{ident}.npy")
        with np.load(tmp_path / "att" / f"{ident}.npz") as data:
            att = data["feat"]
        assert fc.shape == (512,) and fc.dtype == np.float32
        assert att.shape == (3, 3, 512) and att.dtype == np.float32
        x = reference_map(tmp_path / "pics" / entry["filename"])
        np.testing.assert_allclose(fc, x.mean(dim=(2, 3))[0].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(att, F.adaptive_avg_pool2d(x, 3)[0].permute(1, 2, 0).numpy(),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(att, branch_pool(x, 3).numpy(), rtol=1e-4, atol=1e-5)
    meta = json.loads((tmp_path / "fc" / "features.json").read_text())
    assert meta["weights"] == "random seed 0" and "NOT ImageNet" in meta["weights_source"]
    assert meta["att_size"] == 3 and meta["images_done"] == 3 and meta["complete"]
    assert meta["torch"] == torch.__version__
    assert json.loads((tmp_path / "att" / "features.json").read_text())["weights"] == \
        "random seed 0"

    # a second call computes nothing and touches no feature file
    stamps = {p: os.stat(p).st_mtime_ns for p in (tmp_path / "fc").glob("*.np*")}
    code, out, err = run(capsys, *feature_args(src, tmp_path))
    assert code == 0 and "0 computed, 3 already there" in out
    assert stamps == {p: os.stat(p).st_mtime_ns for p in (tmp_path / "fc").glob("*.np*")}
    # ... and refuses to add features of another network to the folder
    code, out, err = run(capsys, *feature_args(src, tmp_path)[:-8], "--seed", "1", "--arch",
                         "resnet18", "--att-size", "3", "--device", "cpu")
    assert code == 2 and "another network" in err and err.count("\n") == 1


def test_fc_only_and_the_extractor_on_a_users_image(tmp_path, capsys):
    src, _ = make_images(tmp_path)
    args = feature_args(src, tmp_path)
    at = args.index("--att-dir")
    code, out, err = run(capsys, *args[:at], *args[at + 2:], "--fc-only")
    assert code == 0, err
    assert not (tmp_path / "att").exists() and len(list((tmp_path / "fc").glob("*.npy"))) == 3
    extractor = features.FeatureExtractor("random", "resnet18", seed=0, att_size=2)
    fc, att = extractor(Image.open(tmp_path / "pics" / "img1.png"))
    assert fc.shape == (512,) and att.shape == (2, 2, 512)
    np.testing.assert_allclose(fc, np.load(tmp_path / "fc" / "1.npy"), rtol=1e-5, atol=1e-6)


def test_missing_and_unreadable_images_stop_or_skip(tmp_path, capsys):
    src, entries = make_images(tmp_path)
    (tmp_path / "pics" / "img1.png").write_bytes(b"not a png at all")  # corrupt
    entries.append({"imgid": 3, "split": "train", "filepath": "pics", "filename": "gone.png",
                    "sentences": [sentence("a b")]})
    write_json(tmp_path / "dataset.json", karpathy(entries))
    # stop: the missing file is found before any work; nothing is written
    code, out, err = run(capsys, *feature_args(src, tmp_path))
    assert code == 2 and err.count("\n") == 1 and "gone.png" in err and "missing" in err
    assert not (tmp_path / "fc").exists()
    # stop, without the missing one: the corrupt image ends the run, in one line
    write_json(tmp_path / "dataset.json", karpathy(entries[:3]))
    code, out, err = run(capsys, *feature_args(src, tmp_path))
    assert code == 2 and err.count("\n") == 1 and "img1.png" in err and "cannot be read" in err
    # skip: both are named on stderr and recorded; the others are done
    write_json(tmp_path / "dataset.json", karpathy(entries))
    code, out, err = run(capsys, *feature_args(src, tmp_path, "--missing", "skip"))
    assert code == 0 and "2 skipped" in out
    assert "img1.png" in err and "gone.png" in err
    meta = json.loads((tmp_path / "fc" / "features.json").read_text())
    assert sorted(s["id"] for s in meta["skipped"]) == [1, 3] and not meta["complete"]
    assert sorted(os.listdir(tmp_path / "fc")) == ["0.npy", "2.npy", "features.json"]


def test_weights_that_are_not_a_resnet152_are_refused_in_one_line(tmp_path, capsys):
    src, _ = make_images(tmp_path)
    small = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), small)
    base = ["features", "--input-json", src, "--images-dir", str(tmp_path), "--output-dir",
            str(tmp_path / "talk"), "--device", "cpu"]
    code, out, err = run(capsys, *base, "--cnn-weights", str(small))
    assert code == 2 and err.count("\n") == 1
    assert "is not a ResNet-152 state dict" in err and "looks like a ResNet-18" in err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is no state dict")
    code, out, err = run(capsys, *base, "--cnn-weights", str(junk))
    assert code == 2 and err.count("\n") == 1 and "weights_only=True" in err
    code, out, err = run(capsys, *base, "--cnn-weights", str(tmp_path / "nowhere.pth"))
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "talk_fc").exists()


def test_a_failed_download_says_to_pass_a_file(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    src, _ = make_images(tmp_path)
    args = feature_args(src, tmp_path)
    args[args.index("random")] = "imagenet"
    args.remove("--seed")
    args.remove("0")
    code, out, err = run(capsys, *args)
    assert code == 2 and err.count("\n") == 1
    assert "could not get the ImageNet ResNet-18 weights" in err and "--cnn-weights PATH" in err


def test_an_interruption_leaves_only_whole_files(tmp_path, capsys, monkeypatch):
    src, entries = make_images(tmp_path)
    real = np.savez_compressed
    calls = []

    def dies_on_the_second(handle, **arrays):
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"PK\x03\x04 half an archive")
            raise KeyboardInterrupt  # a kill in the middle of the second image's att file
        return real(handle, **arrays)
    monkeypatch.setattr(np, "savez_compressed", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        prepro_captions.main(feature_args(src, tmp_path))
    monkeypatch.setattr(np, "savez_compressed", real)
    assert sorted(os.listdir(tmp_path / "fc")) == ["0.npy", "features.json"]
    assert sorted(os.listdir(tmp_path / "att")) == ["0.npz", "features.json"]
    assert np.load(tmp_path / "fc" / "0.npy").shape == (512,)
    assert not json.loads((tmp_path / "fc" / "features.json").read_text())["complete"]
    capsys.readouterr()
    code, out, err = run(capsys, *feature_args(src, tmp_path))
    assert code == 0 and "2 computed, 1 already there" in out
    assert json.loads((tmp_path / "fc" / "features.json").read_text())["complete"]


def test_the_caffe_layout_moves_the_stride():
    net = features.to_caffe_layout(torchvision.models.resnet50(weights=None))
    block = net.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert net.maxpool.padding == 0 and net.maxpool.ceil_mode
    assert features.guess_arch(net.state_dict()) == "resnet50"


# ----------------------------------------------------------------------------- shapes

def test_shapes_are_deterministic_and_captions_name_what_is_drawn():
    first, pictures = shapes.make_dataset(60, seed=3, size=64)
    again, pictures_again = shapes.make_dataset(60, seed=3, size=64)
    other, _ = shapes.make_dataset(60, seed=4, size=64)
    assert first == again and first != other
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(pictures, pictures_again))
    assert "NOT MS COCO" in first["note"]
    for img in first["images"]:
        assert len(img["sentences"]) == 5
        raws = [s["raw"] for s in img["sentences"]]
        assert len(set(raws)) == 5
        for sent in img["sentences"]:
            assert 1 <= len(sent["tokens"]) <= 16
            for obj in img["scene"]["objects"]:
                assert obj["colour"] in sent["tokens"]
                assert obj["shape"] in sent["tokens"] or obj["shape"] + "s" in sent["tokens"]
    splits = [img["split"] for img in shapes.make_dataset(100, seed=0, size=32)[0]["images"]]
    assert {s: splits.count(s) for s in set(splits)} == \
        {"train": 75, "restval": 5, "val": 10, "test": 10}


def test_make_shapes_output_passes_labels_prepro(tmp_path, capsys):
    out_dir = tmp_path / "shapes"
    assert make_shapes.main([str(out_dir), "--images", "40", "--seed", "1", "--size", "48"]) == 0
    out = capsys.readouterr().out
    assert "40 synthetic images" in out and "NOT MS COCO" in out
    data = json.loads((out_dir / "dataset_shapes.json").read_text())
    first = data["images"][0]
    with Image.open(out_dir / first["filepath"] / first["filename"]) as image:
        assert image.size == (48, 48) and image.mode == "RGB"
    code, out, err = run(capsys, "labels", "--input-json", str(out_dir / "dataset_shapes.json"),
                         "--output", str(out_dir / "talk"))
    assert code == 0 and "40 images" in out
    code, out, err = run(capsys, "labels", "--input-json", str(out_dir / "nothing.json"),
                         "--output", str(out_dir / "talk"))
    assert code == 2
    try:
        make_shapes.main([str(out_dir), "--images", "3"])
    except SystemExit as stop:
        assert stop.code == 2
    assert "at least 10" in capsys.readouterr().err
    # the same set again: written again, the same bytes; another set: refused, nothing touched
    before = (out_dir / "dataset_shapes.json").read_bytes()
    assert make_shapes.main([str(out_dir), "--images", "40", "--seed", "1", "--size",
                             "48"]) == 0
    assert (out_dir / "dataset_shapes.json").read_bytes() == before
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        make_shapes.main([str(out_dir), "--images", "40", "--seed", "2", "--size", "48"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a shapes set (seed 1, 40 images of 48 px)" \
        in err and "--overwrite" in err
    assert (out_dir / "dataset_shapes.json").read_bytes() == before
    assert make_shapes.main([str(out_dir), "--images", "40", "--seed", "2", "--size", "48",
                             "--overwrite"]) == 0
    assert json.loads((out_dir / "dataset_shapes.json").read_text())["seed"] == 2


# ----------------------------------------------------------------------------- loader

N_CAPTIONS = [7, 3, 5, 6, 2, 5, 5]  # train images 0..4, val 5, test 6


@pytest.fixture
def small_set(tmp_path, capsys):
    """7 images, captions of 1..8 words from a 6-word vocabulary, features 8-d, att 2x2."""
    rng = random.Random(5)
    words = ["red", "blue", "circle", "square", "on", "left"]
    images = []
    for i, n in enumerate(N_CAPTIONS):
        split = "train" if i < 5 else ("val" if i == 5 else "test")
        images.append({"imgid": 100 + i, "split": split, "filename": f"{i}.png",
                       "sentences": [sentence(" ".join(rng.choice(words)
                                                       for _ in range(rng.randint(1, 8))))
                                     for _ in range(n)]})
    images[1]["split"] = "restval"
    src = write_json(tmp_path / "data.json", karpathy(images))
    code, _, err = run(capsys, "labels", "--input-json", src, "--output", str(tmp_path / "talk"),
                       "--word-count-threshold", "0")
    assert code == 0, err
    (tmp_path / "fc").mkdir()
    (tmp_path / "att").mkdir()
    for i in range(len(N_CAPTIONS)):
        np.save(tmp_path / "fc" / f"{100 + i}.npy", np.full(8, i, dtype=np.float32))
        np.savez_compressed(tmp_path / "att" / f"{100 + i}.npz",
                            feat=np.arange(32, dtype=np.float32).reshape(2, 2, 8) + 100 * i)
    return tmp_path


def make_loader(folder, **kwargs):
    kwargs.setdefault("batch_size", 2)
    return loader.CaptionLoader(str(folder / "talk.json"), str(folder / "fc"),
                                str(folder / "att"), **kwargs)


def test_batch_shapes_masks_and_features(small_set):
    data = make_loader(small_set, rng=0)
    assert data.split_ix == {"train": [0, 1, 2, 3, 4], "val": [5], "test": [6]}
    batch = data.get_batch("train")
    assert batch.fc.shape == (2, 8) and batch.att.shape == (2, 4, 8)
    assert batch.labels.shape == (10, 18) and batch.masks.shape == (10, 18)
    assert batch.labels.dtype == np.int64 and batch.masks.dtype == np.float32
    assert batch.ids == [100, 101] and batch.indices == [0, 1] and not batch.wrapped
    assert batch.fc[1].tolist() == [1.0] * 8
    np.testing.assert_array_equal(batch.att[1], np.arange(32).reshape(4, 8) + 100)
    for row, mask in zip(batch.labels, batch.masks):
        n = int((row != 0).sum())
        assert row[0] == 0 and np.all(row[1:n + 1] > 0) and np.all(row[n + 1:] == 0)
        assert mask.tolist() == [1.0] * (n + 2) + [0.0] * (16 - n)  # start, words, end
    no_att = loader.CaptionLoader(str(small_set / "talk.json"), str(small_set / "fc"))
    assert no_att.get_batch("val", batch_size=1).att is None


def test_captions_are_drawn_as_the_branch_draws_them(small_set):
    data = make_loader(small_set, rng=42, batch_size=5)
    info, arrays = labels.read_labels(str(small_set / "talk.json"))
    batch = data.get_batch("train")
    twin = random.Random(42)  # the branch's python random, with the same calls
    for i, ix in enumerate(batch.indices):
        if ix == 4:  # the split's last image: the order is reshuffled before its captions
            order = [0, 1, 2, 3, 4]
            twin.shuffle(order)
            assert data.split_ix["train"] == order
        first, last = arrays["label_start_ix"][ix] - 1, arrays["label_end_ix"][ix] - 1
        if last - first + 1 < 5:
            rows = [twin.randint(first, last) for _ in range(5)]  # with replacement
        else:
            start = twin.randint(first, last - 4)  # 5 consecutive
            rows = list(range(start, start + 5))
        expected = np.zeros((5, 16), dtype=np.int64)
        expected[:] = arrays["labels"][rows]
        np.testing.assert_array_equal(batch.labels[i * 5:(i + 1) * 5, 1:17], expected)
    assert batch.wrapped and batch.wrap_at == 5 and batch.position == 0
    # image 0 has 7 captions: a run of 5 consecutive ones
    got = [tuple(r) for r in batch.labels[0:5, 1:17]]
    all_rows = [tuple(r) for r in arrays["labels"][0:7]]
    start = all_rows.index(got[0])
    assert got == all_rows[start:start + 5]


def test_epoch_wrap_shuffles_train_only(small_set):
    data = make_loader(small_set, rng=1, batch_size=3)
    first, second = data.get_batch("train"), data.get_batch("train")
    assert first.indices == [0, 1, 2] and not first.wrapped  # the first epoch in file order
    assert second.indices[:2] == [3, 4] and second.wrapped and second.wrap_at == 2
    assert second.indices[2] == data.split_ix["train"][0]  # the next epoch's first image
    assert sorted(data.split_ix["train"]) == [0, 1, 2, 3, 4]
    val = [data.get_batch("val", batch_size=1) for _ in range(2)]
    assert [b.indices for b in val] == [[5], [5]] and all(b.wrapped for b in val)
    data.reset_iterator("train")
    assert data.iterators["train"] == 0


def test_exact_resume_from_state_dict(small_set, tmp_path):
    def signature(batch):
        return (batch.indices, batch.labels.tolist(), batch.wrapped, batch.fc.tolist())

    data = make_loader(small_set, rng=7)
    for _ in range(3):
        data.get_batch("train")
    state = data.state_dict()
    torch.save(state, tmp_path / "state.pt")
    expected = [signature(data.get_batch("train")) for _ in range(6)]

    for restored in (torch.load(tmp_path / "state.pt", weights_only=True),
                     json.loads(json.dumps(state))):
        fresh = make_loader(small_set, rng=999)
        fresh.load_state_dict(restored)
        assert [signature(fresh.get_batch("train")) for _ in range(6)] == expected
    bad = dict(state, n_images=3)
    with pytest.raises(UsageError, match="other data"):
        make_loader(small_set).load_state_dict(bad)


def test_loader_refuses_missing_features_and_mismatched_labels(small_set, tmp_path, capsys):
    os.remove(small_set / "att" / "102.npz")
    os.remove(small_set / "att" / "104.npz")
    with pytest.raises(UsageError) as err:
        make_loader(small_set)
    message = str(err.value)
    assert "2 of the 5 train images have no features" in message and "id 102" in message
    assert "\n" not in message
    # val and test alone are fine; train is checked when first read
    data = make_loader(small_set, splits=("val", "test"))
    with pytest.raises(UsageError, match="no features"):
        data.get_batch("train")
    # a labels npz of another prepro run does not match the JSON: other counts, other labels
    for name, option, value, says in (("fewer", "--restval-as", "drop", "has 7 images, the npz 6"),
                                      ("shorter", "--max-length", "8", "labels_sha256")):
        code, _, _ = run(capsys, "labels", "--input-json", str(small_set / "data.json"),
                         "--output", str(tmp_path / name), "--word-count-threshold", "0",
                         option, value)
        assert code == 0
        with pytest.raises(UsageError, match="does not match") as err:
            loader.CaptionLoader(str(small_set / "talk.json"), str(small_set / "fc"),
                                 labels_npz=str(tmp_path / f"{name}_labels.npz"))
        assert says in str(err.value)


def test_feature_files_are_parsed_on_the_calling_thread_only(small_set, monkeypatch):
    # numpy parses a .npy header with ast.literal_eval, which CPython 3.11 cannot run on two
    # threads at once (a rare "AST constructor recursion depth mismatch" SystemError): the
    # reading threads may only read bytes; every np.load happens on the thread asking for
    # the batch, and the batches are those of a loader without threads.
    callers, real_load = [], np.load

    def recording_load(*args, **kwargs):
        callers.append(threading.get_ident())
        return real_load(*args, **kwargs)

    plain = make_loader(small_set, rng=3, batch_size=5, workers=1)
    serial = [plain.get_batch("train") for _ in range(3)]
    threaded = make_loader(small_set, rng=3, batch_size=5, workers=8)
    monkeypatch.setattr(np, "load", recording_load)
    for expected in serial:
        batch = threaded.get_batch("train")
        assert batch.indices == expected.indices
        np.testing.assert_array_equal(batch.fc, expected.fc)
        np.testing.assert_array_equal(batch.att, expected.att)
        np.testing.assert_array_equal(batch.labels, expected.labels)
    assert len(callers) == 3 * 5 * 2 and set(callers) == {threading.get_ident()}


@pytest.mark.parametrize("name, content, says", [
    ("fc/102.npy", b"\x93NUMPY not a header", "fc/102.npy"),
    ("att/103.npz", b"PK\x03\x04 truncated", "att/103.npz"),
    ("att/104.npz", None, "att/104.npz"),  # a valid npz without the "feat" array
])
def test_an_unreadable_feature_file_is_one_line_naming_it(small_set, name, content, says):
    path = small_set / name
    if content is None:
        np.savez(path, other=np.zeros(3))
    else:
        path.write_bytes(content)
    data = make_loader(small_set, rng=0, batch_size=5, workers=4)
    with pytest.raises(UsageError, match="cannot read the features") as err:
        data.get_batch("train")
    assert says in str(err.value) and "\n" not in str(err.value)
