"""pixelmnist.py on tiny synthetic MNIST-format files (random images, generated here in a
temporary folder; no real MNIST is used or shipped), on the CPU.

The sequences stay 784 steps long, so the runs use a tiny hidden size, a few dozen images and
one to three epochs. Everything runs on one intra-op thread: the per-step ops are tiny, and on a
loaded machine torch's thread pool makes them far slower, not faster.
"""
import gzip
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pixelmnist  # noqa: E402
from model import HDetachNet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
N_TRAIN_FILE, N_TEST_FILE = 300, 50
TINY = ["--no-download", "--lstm-size", "8", "--batch_size", "10"]
RESULT_KEYS = {"best_valid_accuracy", "best_valid_loss", "best_epoch", "test_accuracy",
               "test_loss", "final_valid_accuracy", "final_epoch", "wall_time_s", "p_detach",
               "detach", "permute", "seed", "lstm_size", "lr", "train_size", "valid_size",
               "test_size", "clip", "batch_size", "n_epochs", "anneal_p", "numerics"}
EPOCH_TAGS = {"train/loss", "train/epoch_loss", "valid/loss", "valid/accuracy", "p_detach",
              "test/accuracy", "test/loss", "best/valid_accuracy", "best/test_accuracy"}


# ----------------------------------------------------------------------------- helpers

def write_idx(path, array, gz=False):
    """An IDX file as MNIST's: magic 0x0000080N (unsigned bytes, N dims), big-endian sizes."""
    header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = str(path) + ".gz"
        data = gzip.compress(data)
    with open(path, "wb") as handle:
        handle.write(data)


def make_mnist(root, gz=False, seed=0):
    """Random 28x28 uint8 images with random labels, in torchvision's layout under root."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data = {}
    for prefix, n in (("train", N_TRAIN_FILE), ("t10k", N_TEST_FILE)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
        data[prefix] = (images, labels)
    return data


def read_events(folder):
    """{tag: sorted [(step, value)]} over every event file of a run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    scalars = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in scalars.items()}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def run_main(argv):
    assert pixelmnist.main([str(a) for a in argv]) == 0


class Recorder:
    """Replaces pixelmnist.HDetachNet: records every forward call (its inputs, whether autograd
    was on, last_only) and keeps the LSTM outputs of training calls with their gradient."""

    def __init__(self):
        self.calls, self.nets = [], []
        recorder = self

        class RecordingNet(HDetachNet):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                recorder.nets.append(self)
                self.lstm.register_forward_hook(self._keep_output)

            def _keep_output(self, module, inputs, output):
                recorder.calls[-1]["out"] = output[0].detach().clone()

            def forward(self, x, p=0.0, generator=None, last_only=False):
                recorder.calls.append({"x": x.detach().clone(), "train": torch.is_grad_enabled(),
                                       "last_only": last_only})
                logits = super().forward(x, p=p, generator=generator, last_only=last_only)
                with torch.no_grad():  # what a readout of every step would give
                    every_step = self.readout(recorder.calls[-1]["out"])
                recorder.calls[-1].update(logits=logits.detach().clone(), every_step=every_step)
                return logits
        self.net_class = RecordingNet


def sequence_index(images, order):
    """{bytes of an image's pixel sequence in ``order``: index} for a (N, 28, 28) uint8 array."""
    flat = images.reshape(len(images), -1)[:, order]
    return {row.tobytes(): i for i, row in enumerate(flat)}


def identify(x, index):
    """The image indices of the columns of a (784, B, 1) input, via ``index``."""
    pixels = (x[:, :, 0].t() * 255).round().to(torch.uint8).numpy()
    # ToTensor's values: the input must be exactly k / 255.
    assert torch.equal(x[:, :, 0].t(), torch.from_numpy(pixels).float() / 255)
    return [index[row.tobytes()] for row in pixels]


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    return root, make_mnist(root)


@pytest.fixture(scope="module")
def recorded(mnist, tmp_path_factory):
    """A permuted run of 2 epochs (40 training, 25 validation images: a partial last batch;
    h-detach in the first epoch, annealed off in the second), every forward call recorded."""
    root, data = mnist
    save = tmp_path_factory.mktemp("runs") / "recorded"
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pixelmnist, "HDetachNet", recorder.net_class)
        run_main([*TINY, "--data-dir", root, "--save-dir", save, "--permute", "--seed", 5,
                  "--train-size", 40, "--valid-size", 25, "--n_epochs", 2, "--p-detach", 0.25,
                  "--anneal-p", 2])
    return save, recorder.calls, data


# ----------------------------------------------------------------------------- flags and data

def test_original_flags_and_defaults():
    parser = pixelmnist.build_parser()
    args = parser.parse_args(["--save-dir", "x"])
    assert (args.p_detach, args.permute, args.lstm_size, args.seed, args.lr, args.clip,
            args.batch_size, args.n_epochs, args.anneal_p) == (-1.0, False, 100, 400, 1e-3, 1.0,
                                                                100, 200, 40)
    assert (args.data_dir, args.download, args.train_size, args.valid_size, args.detach) == \
        ("./MNIST", True, 50000, 10000, "h")
    original = parser.parse_args(
        "--p-detach 0.25 --permute --save-dir d --lstm-size 50 --seed 150 --lr 0.0005 "
        "--clipval 0.5 --batch_size 20 --n_epochs 3 --anneal-p 2".split())
    hyphens = parser.parse_args(
        "--p_detach 0.25 --permute --save_dir d --lstm_size 50 --seed 150 --lr 0.0005 "
        "--clip 0.5 --batch-size 20 --n-epochs 3 --anneal_p 2".split())
    assert vars(original) == vars(hyphens)
    assert (original.clip, original.batch_size, original.n_epochs) == (0.5, 20, 3)
    more = parser.parse_args("--save-dir d --data_dir /m --no-download --num_workers 0 "
                             "--train_size 7 --valid-size 3 --overwrite --device cpu".split())
    assert (more.data_dir, more.download, more.num_workers, more.train_size,
            more.valid_size, more.overwrite, more.device) == ("/m", False, 0, 7, 3, True, "cpu")


def test_pixels_are_totensor_values_row_major(mnist):
    """x / 255 on the uint8 data is bit for bit what torchvision's ToTensor gives, and the
    sequence of an image is its row-major flattening."""
    from torchvision.datasets import MNIST
    from torchvision.transforms import ToTensor
    root, data = mnist
    dataset = MNIST(str(root), train=True, download=False, transform=ToTensor())
    (train_images, _), _ = pixelmnist.load_mnist(str(root), download=False)
    assert torch.equal(train_images, torch.from_numpy(data["train"][0]))
    seqs = pixelmnist.pixel_sequences(train_images[:5].reshape(5, -1), torch.arange(784))
    for i in range(5):
        image, label = dataset[i]
        assert label == data["train"][1][i]
        assert torch.equal(seqs[:, i, 0], image.flatten())
        assert torch.equal(image.flatten(), dataset.data[i].float().flatten() / 255)


def test_gz_files_are_unpacked_and_read(tmp_path):
    data = make_mnist(tmp_path, gz=True, seed=1)
    (images, labels), (test_images, test_labels) = pixelmnist.load_mnist(str(tmp_path), False)
    assert torch.equal(images, torch.from_numpy(data["train"][0]))
    assert torch.equal(labels, torch.from_numpy(data["train"][1]).long())
    assert torch.equal(test_images, torch.from_numpy(data["t10k"][0]))
    assert torch.equal(test_labels, torch.from_numpy(data["t10k"][1]).long())


def one_line_error(capsys, argv, code=2):
    capsys.readouterr()  # what earlier calls printed (such as the data warning of a run)
    with pytest.raises(SystemExit) as exc:
        pixelmnist.main([str(a) for a in argv])
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    return err


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    save = tmp_path / "run"
    err = one_line_error(capsys, [*TINY, "--data-dir", tmp_path / "nowhere", "--save-dir", save])
    raw = str(tmp_path / "nowhere" / "MNIST" / "raw")
    assert raw in err
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", ".gz", "--no-download"):
        assert name in err
    assert not save.exists()  # checked before the run folder is created


@pytest.mark.parametrize("damage", ["truncated images", "bad labels magic", "bad label value"])
def test_corrupt_idx_file_is_one_clear_line(mnist, tmp_path, capsys, damage):
    root = tmp_path / "mnist"
    shutil.copytree(mnist[0], root)
    raw = root / "MNIST" / "raw"
    if damage == "truncated images":
        target = raw / "train-images-idx3-ubyte"
        os.truncate(target, os.path.getsize(target) - 100)
    elif damage == "bad labels magic":
        target = raw / "t10k-labels-idx1-ubyte"
        with open(target, "r+b") as handle:
            handle.write(b"\xff\xff\xff\xff")
    else:
        target = raw / "train-labels-idx1-ubyte"
        with open(target, "r+b") as handle:
            handle.seek(8 + 3)
            handle.write(b"\x0c")  # label 12
    save = tmp_path / "run"
    err = one_line_error(capsys, [*TINY, "--data-dir", root, "--save-dir", save])
    assert str(target) in err
    assert not save.exists()


def test_slices_larger_than_the_training_file(mnist, tmp_path, capsys):
    err = one_line_error(capsys, [*TINY, "--data-dir", mnist[0], "--save-dir", tmp_path / "r",
                                  "--train-size", 250, "--valid-size", 51])
    assert "301" in err and f"{N_TRAIN_FILE} images" in err
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- a recorded run

def test_split_order_and_partial_batches(recorded):
    save, calls, data = recorded
    order = json.loads((save / "permutation.json").read_text())["order"]
    train_index = sequence_index(data["train"][0], order)
    test_index = sequence_index(data["t10k"][0], order)
    # Per epoch: 4 training batches, then validation (10, 10, 5), then (epoch 1 always improves;
    # later only on improvement) the test file in batches of 10.
    history = json.loads((save / "results.json").read_text())
    last = load(save / "last.pt")
    position = 0
    seen_orders = []
    for epoch in range(2):
        train_calls = calls[position:position + 4]
        assert all(c["train"] and c["last_only"] for c in train_calls)
        seen = [i for c in train_calls for i in identify(c["x"], train_index)]
        assert sorted(seen) == list(range(40))  # the first 40 images, each once
        seen_orders.append(seen)
        position += 4
        valid_calls = calls[position:position + 3]
        assert [c["x"].shape[1] for c in valid_calls] == [10, 10, 5]
        assert not any(c["train"] for c in valid_calls)
        assert [i for c in valid_calls for i in identify(c["x"], train_index)] == \
            list(range(40, 65))  # the next 25 images, disjoint from training
        position += 3
        improved = last["history"][epoch].get("test/accuracy") is not None
        assert improved == (epoch == 0 or last["history"][epoch]["valid/accuracy"] >
                            last["history"][0]["valid/accuracy"])
        if improved:
            test_calls = calls[position:position + 5]
            assert not any(c["train"] for c in test_calls)
            assert [i for c in test_calls for i in identify(c["x"], test_index)] == \
                list(range(N_TEST_FILE))
            position += 5
    assert position == len(calls)
    assert seen_orders[0] != seen_orders[1]  # a fresh order each epoch
    assert history["valid_size"] == 25 and history["train_size"] == 40


def test_validation_counts_the_partial_batch(recorded):
    """The reported accuracies are over every image: recomputed in one batch from the saved
    best model they agree (25 validation images, 50 test images)."""
    save, _, data = recorded
    best = load(save / "best_model.pt")
    results = json.loads((save / "results.json").read_text())
    net = HDetachNet(**best["model_config"])
    net.load_state_dict(best["model"])
    order = best["pixel_order"]
    for images, labels, accuracy in (
            (data["train"][0][40:65], data["train"][1][40:65], results["best_valid_accuracy"]),
            (data["t10k"][0], data["t10k"][1], results["test_accuracy"])):
        x = pixelmnist.pixel_sequences(torch.from_numpy(images).reshape(len(images), -1), order)
        with torch.no_grad():
            predicted = net(x, last_only=True).argmax(-1)
        correct = (predicted == torch.from_numpy(labels).long()).sum().item()
        assert accuracy == pytest.approx(100.0 * correct / len(images))


def test_permutation_is_fixed_stored_and_seeded(recorded):
    save, calls, data = recorded
    stored = json.loads((save / "permutation.json").read_text())
    perm = torch.tensor(stored["order"])
    assert stored["permute"] is True and stored["seed"] == 5
    assert sorted(stored["order"]) == list(range(784)) and stored["order"] != list(range(784))
    # The authors' draw: numpy seeded with the seed, its first permutation of 784.
    assert stored["order"] == np.random.RandomState(5).permutation(784).tolist()
    assert torch.equal(load(save / "last.pt")["extra"]["permutation"], perm)
    assert torch.equal(load(save / "best_model.pt")["pixel_order"], perm)
    assert not torch.equal(pixelmnist.pixel_permutation(6), perm)
    # Every split was read in that one order: each recorded column is some image's pixels in
    # it (identify fails otherwise), and the reloaded model reproduces the test accuracy.
    test = pixelmnist.Split("test", torch.from_numpy(data["t10k"][0]).reshape(N_TEST_FILE, -1),
                            torch.from_numpy(data["t10k"][1]).long())
    best = load(save / "best_model.pt")
    net = HDetachNet(**best["model_config"])
    net.load_state_dict(best["model"])
    _, accuracy = pixelmnist.evaluate(net, test, best["pixel_order"], 10)
    assert accuracy == best["test_accuracy"]


def test_loss_reads_the_last_step_only(recorded):
    _, calls, _ = recorded
    training = [c for c in calls if c["train"]]
    assert training and all(c["last_only"] for c in training)
    for call in training:
        # One row of logits per image, the readout of the last step's output, and not of any
        # earlier step's: the cross-entropy the script takes of them sees the last step only.
        logits, every_step = call["logits"], call["every_step"]
        assert logits.shape == every_step.shape[1:]
        torch.testing.assert_close(logits, every_step[-1])
        assert not torch.allclose(logits, every_step[-2])


def test_a_run_says_whether_its_data_is_the_official_mnist(recorded, tmp_path, monkeypatch):
    # Issue 19: runs on home-made MNIST-format files sat in the report's MNIST rows beside the
    # paper's numbers. The run checks the files against torchvision's published checksums.
    import hashlib

    from torchvision.datasets import MNIST
    save, _, _ = recorded
    check = json.loads((save / "data.json").read_text())
    assert check["mnist"] == "unverified" and "-ubyte.gz" in check["detail"]
    raw = tmp_path / "MNIST" / "raw"
    make_mnist(tmp_path, gz=True)
    pixelmnist._unpack_placed_gz(str(raw))
    assert pixelmnist.official_mnist(str(raw))[0] == "not official"  # other MD5s
    # Were these the official .gz files (their MD5 what torchvision publishes), they pass...
    monkeypatch.setattr(MNIST, "resources", [
        (name, hashlib.md5((raw / name).read_bytes()).hexdigest())
        for name, _ in MNIST.resources])
    assert pixelmnist.official_mnist(str(raw))[0] == "official"
    # ... unless the unpacked file torchvision reads is not their content.
    data = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    data[-1] = (data[-1] + 1) % 10
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(data))
    status, detail = pixelmnist.official_mnist(str(raw))
    assert status == "not official" and "t10k-labels-idx1-ubyte differs" in detail
    # Without its .gz, that file cannot be checked at all.
    os.remove(raw / "t10k-labels-idx1-ubyte.gz")
    assert pixelmnist.official_mnist(str(raw))[0] == "unverified"


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    # Issue 19: a failed download left an empty ./MNIST/MNIST/raw tree behind.
    from torchvision.datasets import MNIST

    def offline(self):
        os.makedirs(self.raw_folder, exist_ok=True)  # what torchvision does before fetching
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")
    monkeypatch.setattr(MNIST, "download", offline)
    with pytest.raises(pixelmnist.UsageError, match="could not be downloaded"):
        pixelmnist.load_mnist(str(tmp_path / "new" / "MNIST"), True)
    assert not (tmp_path / "new" / "MNIST").exists() and (tmp_path / "new").exists() is False
    # A folder that was there before stays, and so does anything in it.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(pixelmnist.UsageError):
        pixelmnist.load_mnist(str(tmp_path / "mine"), True)
    assert sorted(os.listdir(tmp_path / "mine")) == ["notes.txt"]


def test_every_scripts_help_description_is_a_whole_sentence():
    import copying
    import report
    import sweep
    import transfer_copy
    for module in (pixelmnist, copying, transfer_copy, report, sweep):
        description = module.build_parser().description
        assert description.endswith("."), (module.__name__, description)
    assert pixelmnist.build_parser().description.endswith("faithful to the authors' script.")


def test_run_folder_events_checkpoints_results(recorded):
    save, _, _ = recorded
    results = json.loads((save / "results.json").read_text())
    assert set(results) == RESULT_KEYS
    assert results["final_epoch"] == 2 and results["permute"] is True
    assert results["detach"] == "h"
    last, best = load(save / "last.pt"), load(save / "best_model.pt")
    assert last["model_config"]["detach"] == best["model_config"]["detach"] == "h"
    assert last["epoch"] == 2 and best["epoch"] == results["best_epoch"]
    assert best["test_accuracy"] == results["test_accuracy"]
    assert best["accuracy"] == results["best_valid_accuracy"]
    config = json.loads((save / "config.json").read_text())
    assert config["task"] == "pixelmnist" and config["args"]["permute"] is True
    events = read_events(save)
    assert set(events) == EPOCH_TAGS
    assert len(events["train/loss"]) == 8
    assert [v for _, v in events["valid/accuracy"]] == pytest.approx(
        [h["valid/accuracy"] for h in last["history"]])
    assert [s for s, _ in events["valid/accuracy"]] == [1, 2]
    assert [v for _, v in events["p_detach"]] == [0.25, 0.0]  # off for epochs e > 2 - 2
    assert events["best/test_accuracy"][0][1] == pytest.approx(results["test_accuracy"])
    assert events["best/valid_accuracy"][0][1] == pytest.approx(results["best_valid_accuracy"])


def test_row_major_without_permute(mnist, tmp_path, capsys):
    root, data = mnist
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pixelmnist, "HDetachNet", recorder.net_class)
        run_main([*TINY, "--data-dir", root, "--save-dir", tmp_path / "r", "--train-size", 20,
                  "--valid-size", 10, "--n_epochs", 1])
    # Plain MNIST reads row-major: no permutation.json of the identity (issue 34, item 10).
    assert not (tmp_path / "r" / "permutation.json").exists()
    # Home-made files cannot be checked against the official checksums; the warning says so in
    # plain words (it read "is unverified as the official MNIST").
    err = capsys.readouterr().err
    assert f"warning: the data in {root} could not be verified as the official MNIST (" in err
    flat = torch.from_numpy(data["train"][0]).reshape(N_TRAIN_FILE, -1).float() / 255
    x = recorder.calls[0]["x"]
    for column in range(x.shape[1]):
        matches = [i for i in range(20) if torch.equal(x[:, column, 0], flat[i])]
        assert len(matches) == 1  # the image's pixels, row by row, as image.flatten()


def test_test_accuracy_is_the_one_at_the_best_validation_epoch(mnist, tmp_path, monkeypatch):
    """Validation accuracy 50, 70, 70, 60: the best epoch is 2 (a tie does not improve), the
    test set is measured at epochs 1 and 2 only, and the reported test accuracy is epoch 2's."""
    scripted_valid = iter([(1.0, 50.0), (0.9, 70.0), (0.8, 70.0), (0.7, 60.0)])
    measured = []
    real_evaluate = pixelmnist.evaluate

    def scripted(net, split, pixel_order, batch_size):
        if split.name == "valid":
            real_evaluate(net, split, pixel_order, batch_size)
            return next(scripted_valid)
        measured.append(len(measured) + 1)
        return 0.5, 11.0 * len(measured)  # 11 at the first measurement, 22 at the second
    monkeypatch.setattr(pixelmnist, "evaluate", scripted)
    save = tmp_path / "r"
    run_main([*TINY, "--data-dir", mnist[0], "--save-dir", save, "--train-size", 10,
              "--valid-size", 10, "--n_epochs", 4])
    results = json.loads((save / "results.json").read_text())
    assert measured == [1, 2]
    assert (results["best_epoch"], results["best_valid_accuracy"], results["test_accuracy"],
            results["final_valid_accuracy"]) == (2, 70.0, 22.0, 60.0)
    best = load(save / "best_model.pt")
    assert (best["epoch"], best["test_accuracy"]) == (2, 22.0)
    history = load(save / "last.pt")["history"]
    assert [h.get("test/accuracy") for h in history] == [11.0, 22.0, None, None]
    events = read_events(save)
    assert events["test/accuracy"] == [(1, 11.0), (2, 22.0)]
    assert events["best/test_accuracy"][0][1] == 22.0


def test_detach_c_reaches_the_network_and_the_run_files(mnist, tmp_path, capsys):
    recorder = Recorder()
    save = tmp_path / "c"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pixelmnist, "HDetachNet", recorder.net_class)
        run_main([*TINY, "--data-dir", mnist[0], "--save-dir", save, "--train-size", 10,
                  "--valid-size", 10, "--n_epochs", 1, "--p-detach", 0.5, "--anneal-p", 0,
                  "--detach", "c"])
    assert [net.lstm.detach for net in recorder.nets] == ["c"]
    assert json.loads((save / "config.json").read_text())["args"]["detach"] == "c"
    assert json.loads((save / "results.json").read_text())["detach"] == "c"
    for name in ("last.pt", "best_model.pt"):
        ckpt = load(save / name)
        assert ckpt["config"]["detach"] == ckpt["model_config"]["detach"] == "c"
        assert HDetachNet(**ckpt["model_config"]).lstm.detach == "c"
    err = one_line_error(capsys, ["--save-dir", save, "--resume", "--detach", "h"])
    assert "detach (run: 'c', given: 'h')" in err
    err = one_line_error(capsys, [*TINY, "--save-dir", tmp_path / "x", "--detach", "both"])
    assert "invalid choice: 'both'" in err and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- stop and resume

def start(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "pixelmnist.py"), *map(str, args)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_checkpoint(proc, path, newer_than=None, timeout=60):
    """Wait until ``path`` exists (and its mtime passes ``newer_than``); the run must be alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and (newer_than is None or os.stat(path).st_mtime_ns > newer_than):
            return os.stat(path).st_mtime_ns
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at {path} within {timeout}s")


def test_sigterm_then_sigkill_then_resume_is_exact(mnist, tmp_path, capsys):
    """SIGTERM mid-epoch: checkpoint at that iteration, exit 0, how to resume. Resume, SIGKILL
    after a later checkpoint, resume again: weights, history, results and the TensorBoard log
    are those of an uninterrupted run. A resume on other data is refused."""
    args = [*TINY, "--data-dir", mnist[0], "--train-size", 100, "--valid-size", 15,
            "--n_epochs", 3, "--permute", "--seed", 7, "--p-detach", 0.5, "--anneal-p", 2]
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    last = stopped / "last.pt"

    proc = start([*args, "--save-dir", stopped, "--checkpoint-every", 1], tmp_path)
    wait_for_checkpoint(proc, last)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM" in out and f"--save-dir {stopped} --resume" in out
    stop_iteration = int(re.search(r"iteration (\d+)", out).group(1))
    state = load(last)
    assert state["iteration"] == stop_iteration and state["epoch_iteration"] >= 1
    assert not (stopped / "results.json").exists()

    # No --data-dir / --no-download: the resume keeps the stored ones.
    proc = start(["--save-dir", stopped, "--resume", "--checkpoint-every", 4], tmp_path)
    mtime = os.stat(last).st_mtime_ns
    while True:
        mtime = wait_for_checkpoint(proc, last, newer_than=mtime)
        if load(last)["iteration"] > stop_iteration:
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load(last)["iteration"]
    assert stop_iteration < killed_at < 30 and not (stopped / "results.json").exists()

    make_mnist(tmp_path / "other", seed=1)
    err = one_line_error(capsys, ["--save-dir", stopped, "--resume", "--data-dir",
                                  tmp_path / "other"])
    assert "differ" in err and load(last)["iteration"] == killed_at
    run_main(["--save-dir", stopped, "--resume"])
    run_main([*args, "--save-dir", reference])

    got, want = (json.loads((d / "results.json").read_text()) for d in (stopped, reference))
    got.pop("wall_time_s"), want.pop("wall_time_s")
    assert got == want
    for name in ("last.pt", "best_model.pt"):
        a, b = load(stopped / name), load(reference / name)
        assert a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    a, b = load(stopped / "last.pt"), load(reference / "last.pt")
    untimed = [[{k: v for k, v in r.items() if k != "elapsed_s"} for r in x["history"]]
               for x in (a, b)]
    assert untimed[0] == untimed[1] and a["iteration"] == b["iteration"] == 30
    assert torch.equal(a["extra"]["permutation"], b["extra"]["permutation"])
    assert len(json.loads((stopped / "config.json").read_text())["resumed"]) == 2
    got_events, want_events = read_events(stopped), read_events(reference)
    assert got_events.keys() == want_events.keys()
    for tag in want_events:
        assert got_events[tag] == want_events[tag], tag  # each point once, with its value


def test_sigterm_while_the_run_writes_its_end_loses_nothing(mnist, tmp_path):
    """A SIGTERM that arrives while the run writes results.json and state.json at its end is
    caught like any other: the run finishes, with no half-written file left behind."""
    folder = tmp_path / "run"
    args = [*TINY, "--data-dir", mnist[0], "--train-size", 20, "--valid-size", 10,
            "--n_epochs", 1, "--save-dir", folder]
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "signal_at_end.py"),
                           "pixelmnist", *map(str, args)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not list(folder.glob(".*.tmp"))
    assert json.loads((folder / "state.json").read_text())["state"] == "done"
    assert json.loads((folder / "results.json").read_text())["final_epoch"] == 1
