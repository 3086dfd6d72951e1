"""Pixel MNIST and permuted MNIST with h-detach (Kanuparthi et al., ICLR 2019), faithful to the
authors' script.

    python pixelmnist.py --p-detach=0.25 --seed=250 --save-dir=runs/mnist_p0.25_s250
    python pixelmnist.py --p-detach=0.25 --seed=150 --permute --save-dir=runs/pmnist_p0.25_s150

Each image is read as 784 steps of one scalar (torchvision's MNIST with ToTensor's values in
[0, 1]), row-major, or, with --permute, in one fixed order of the pixel positions drawn from the
seed (numpy's ``RandomState(seed).permutation(784)``, the permutation the authors' script draws)
and used for every split for the whole run. Training images 0..49,999 train, in a fresh random
order each epoch; images 50,000..59,999 validate; the test file tests. The loss is the
cross-entropy of the readout at the last step only. After every epoch the validation accuracy is
measured; when it strictly improves, so is the test accuracy, and the number a run reports is the
test accuracy at its best-validation epoch.

Data: --data-dir (default ./MNIST, as the original) must hold, or will receive from torchvision's
download, MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (a file placed as .gz is
unpacked beside itself). --no-download never touches the network.

The run folder gets TensorBoard events (per iteration: train/loss; per epoch: train/epoch_loss,
valid/loss, valid/accuracy, p_detach, and test/accuracy, test/loss at the epochs where the
validation accuracy improved; at the end: best/valid_accuracy and best/test_accuracy), config.json,
metrics.csv (one row per epoch, test accuracy where measured), state.json,
permutation.json (with --permute: the pixel order the model reads), best_model.pt (at the
best-validation epoch, with its test accuracy and the pixel order), last.pt (resumable with
--resume) and, at the end, results.json: best_valid_accuracy, best_valid_loss, best_epoch,
test_accuracy and test_loss (at best_epoch), final_valid_accuracy, final_epoch, wall_time_s,
and the run's main settings.

--rng authors (default) draws everything as the authors' pixelmnist.py does (their DataLoaders'
draws included), so --seed N is their seed N; --rng kit (every run before the flag) gives every
setting of a seed the same initial weights and orders (see docs/experiments.md, Seeds).
"""
import argparse
import gzip
import hashlib
import math
import os
import sys
import zlib
from collections import namedtuple

if __name__ == "__main__":
    # Before torch loads: it picks its CPU kernels once, at import (running/numerics.py).
    from running import numerics
    numerics.pin_before_torch(sys.argv[1:])

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model import HDetachNet, eval_chunk_size
from running.annealing import p_in_force
from running.errors import UsageError
from running.runfolder import TrainingRun, training_main, write_json
from running.seeding import set_seed
from utils import (ArgParser, StopSignals, add_run_flags, authors_net, finite_float,
                   non_negative_int, positive_int)

TASK = "pixelmnist"
NUM_CLASSES = 10
PIXELS = 28 * 28
COMMAND = "python pixelmnist.py"
# The files torchvision 0.29's MNIST reads, under <data-dir>/MNIST/raw/.
MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

# A split: images (N, 784) uint8, labels (N,) long, both on the run's device.
Split = namedtuple("Split", "name images labels")


def build_parser():
    # The docstring's whole first sentence (it spans two lines): --help must not cut it off.
    parser = ArgParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    add_run_flags(parser, seed=400, lr=1e-3, epochs=200, anneal_p=40)
    parser.flag("--permute", action="store_true",
                help="permuted MNIST: one fixed permutation of the pixels, drawn from the seed")
    parser.flag("--lstm-size", type=positive_int, default=100, help="hidden size (default 100)")
    parser.flag("--clip", "--clipval", type=finite_float, default=1.0,
                help="gradient-norm clipping; <= 0 turns it off (default 1.0)")
    parser.flag("--data-dir", default="./MNIST",
                help="torchvision's MNIST root: the files go in DATA_DIR/MNIST/raw "
                     "(default ./MNIST, the original's)")
    parser.flag("--download", action=argparse.BooleanOptionalAction, default=True,
                help="let torchvision download MNIST when it is not in --data-dir (default); "
                     "--no-download never touches the network")
    parser.flag("--num-workers", type=non_negative_int, default=2,
                help="accepted for the authors' DataLoader-based command lines; the images are "
                     "held in memory as one tensor per split, so no loader workers run and it "
                     "has no effect")
    parser.flag("--train-size", type=positive_int, default=50000,
                help="training images: the first N of the training file (default 50000)")
    parser.flag("--valid-size", type=positive_int, default=10000,
                help="validation images: the N right after the training slice (default 10000)")
    return parser


# ----------------------------------------------------------------------------- data

def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unpack_placed_gz(raw):
    """Unpack ``NAME.gz`` into ``NAME`` for every MNIST file present only compressed.

    torchvision 0.29 reads only the unpacked files, and would unpack a .gz itself only while
    downloading and only if its checksum is the official one; a user who places the .gz files
    by hand (offline) expects them to be used."""
    for name in MNIST_FILES[True] + MNIST_FILES[False]:
        path = os.path.join(raw, name)
        if os.path.exists(path) or not os.path.isfile(path + ".gz"):
            continue
        try:
            with gzip.open(path + ".gz", "rb") as src:
                data = src.read()
        except (OSError, EOFError, zlib.error) as err:
            raise UsageError(f"{path}.gz is not a readable gzip file ({_first_line(err)}); "
                             "replace it or put the unpacked file there") from None
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as dst:
                dst.write(data)
            os.replace(tmp, path)
        except OSError as err:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise UsageError(f"cannot unpack {path}.gz: {err.strerror}") from None


def _diagnose(data_dir, train, download, err):
    """The one line that says why torchvision could not give us an MNIST split."""
    from torchvision.datasets.mnist import read_image_file, read_label_file
    raw = os.path.join(data_dir, "MNIST", "raw")
    every = MNIST_FILES[True] + MNIST_FILES[False]
    missing = [name for name in every if not os.path.isfile(os.path.join(raw, name))]
    if missing:
        where = (f"MNIST is not in {raw}" if len(missing) == len(every) else
                 f"MNIST in {raw} is incomplete (missing {', '.join(missing)})")
        if download:
            # torchvision's message has one line per mirror tried; the first names the file,
            # the last the network's answer.
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or \
                [type(err).__name__]
            reason = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"
            where += f" and could not be downloaded ({reason})"
        return (f"{where}; put {', '.join(every[:-1])} and {every[-1]} there (unpacked or "
                ".gz)" + ("" if download else ", or drop --no-download to let torchvision "
                          "fetch them"))
    # The files are there, so one of them is damaged: find which, to name it.
    images_name, labels_name = MNIST_FILES[train]
    for name, reader, dims in ((images_name, read_image_file, 3),
                               (labels_name, read_label_file, 1)):
        path = os.path.join(raw, name)
        try:
            reader(path)
            continue
        except Exception as file_err:  # torchvision raises assertion, type, value, runtime errors
            reason = _idx_problem(path, dims) or _first_line(file_err)
        return (f"{path} is not a valid MNIST IDX file ({reason}); replace it, or delete it "
                "and run without --no-download to fetch it again")
    return f"cannot read MNIST from {raw}: {_first_line(err)}"


def _idx_problem(path, dims):
    """What is wrong with an MNIST IDX file of unsigned bytes with ``dims`` dimensions, in
    words (torchvision's reader mostly fails with a bare assertion), or None."""
    with open(path, "rb") as handle:
        data = handle.read()
    magic = 0x800 + dims
    header = 4 + 4 * dims
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        return f"its header is not MNIST's: it should start with 0x{magic:08x}"
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    expected = header + math.prod(shape)
    if len(data) != expected:
        return (f"{len(data)} bytes where its header ({'x'.join(map(str, shape))}) implies "
                f"{expected}: truncated or damaged")
    return None


def load_mnist_file(data_dir, train, download):
    """One MNIST file pair through torchvision: images (N, 28, 28) uint8 and labels (N,) long.

    Every failure (missing files that cannot be downloaded, a damaged file) is a
    ``UsageError`` with one line naming the folder or the file."""
    from torchvision.datasets import MNIST
    try:
        dataset = MNIST(data_dir, train=train, download=download)
    except Exception as err:  # download errors, "Dataset not found", malformed IDX files
        raise UsageError(_diagnose(data_dir, train, download, err)) from None
    images, labels = dataset.data, dataset.targets
    images_path, labels_path = (os.path.join(dataset.raw_folder, name)
                                for name in MNIST_FILES[train])
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise UsageError(f"{images_path} does not hold 28x28 MNIST images "
                         f"(found {images.dtype} of shape {tuple(images.shape)})")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise UsageError(f"{labels_path} holds {labels.shape[0]} labels for the "
                         f"{images.shape[0]} images of {images_path}")
    if labels.numel() == 0:
        raise UsageError(f"{images_path} holds no images")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise UsageError(f"{labels_path} holds labels outside 0..9")
    return images, labels.long()


def load_mnist(data_dir, download):
    """The training and test files: ((images, labels), (images, labels)) on the CPU."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir} exists and is not a folder")
    raw = os.path.join(data_dir, "MNIST", "raw")
    if os.path.isdir(raw):
        _unpack_placed_gz(raw)
    # torchvision makes DATA_DIR/MNIST/raw before it downloads: a failed download must not
    # leave that empty tree behind (in the folder a sweep or a user happened to start in).
    made, folder = [], os.path.abspath(raw)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        made.append(folder)
        folder = os.path.dirname(folder)
    try:
        return (load_mnist_file(data_dir, True, download),
                load_mnist_file(data_dir, False, download))
    except BaseException:
        for folder in made:  # the deepest first; a folder that holds anything stays
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise


def official_mnist(raw):
    """(status, detail): whether the files in ``raw`` are the official MNIST, by the MD5
    checksums torchvision publishes for the official .gz files (``MNIST.resources``).

    ``official``: every .gz is there with its official MD5, and the unpacked file torchvision
    reads holds exactly its content. ``not official``: a .gz has another MD5, or an unpacked
    file differs from its .gz. ``unverified``: some .gz is missing, so the unpacked file alone
    cannot be checked (torchvision keeps the .gz files it downloads; copy them with the rest)."""
    from torchvision.datasets import MNIST
    missing = []
    for gz_name, md5 in MNIST.resources:
        gz_path = os.path.join(raw, gz_name)
        if not os.path.isfile(gz_path):
            missing.append(gz_name)
            continue
        with open(gz_path, "rb") as handle:
            packed = handle.read()
        if hashlib.md5(packed).hexdigest() != md5:
            return "not official", f"{gz_name} is not the official file (its MD5 differs)"
        name = gz_name[:-len(".gz")]
        try:
            content = gzip.decompress(packed)
        except (OSError, EOFError, zlib.error):
            return "not official", f"{gz_name} cannot be unpacked"
        with open(os.path.join(raw, name), "rb") as handle:
            if handle.read() != content:
                return "not official", f"{name} differs from the official {gz_name} beside it"
    if missing:
        return "unverified", (f"no {', '.join(missing)} in {raw} to check against "
                              "torchvision's checksums")
    return "official", "every file matches the MD5 torchvision publishes for it"


def data_fingerprint(train_file, test_file):
    """SHA-256 of the images and labels, so that a resume can refuse different data."""
    digest = hashlib.sha256()
    for tensor in (*train_file, *test_file):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def make_splits(train_file, test_file, train_size, valid_size, device):
    """The protocol's split: the first ``train_size`` training images train, the next
    ``valid_size`` validate, the test file tests. Images are kept as uint8 (N, 784)."""
    n = train_file[0].shape[0]
    if train_size + valid_size > n:
        raise UsageError(f"--train-size ({train_size}) + --valid-size ({valid_size}) = "
                         f"{train_size + valid_size} exceeds the {n} images of the training file")

    def split(name, images, labels):
        return Split(name, images.reshape(-1, PIXELS).to(device), labels.to(device))
    images, labels = train_file
    end = train_size + valid_size
    return (split("train", images[:train_size], labels[:train_size]),
            split("valid", images[train_size:end], labels[train_size:end]),
            split("test", *test_file))


def pixel_permutation(seed):
    """The permuted-MNIST pixel order of ``seed``: numpy's ``RandomState(seed).permutation(784)``,
    which is what the authors' script draws (numpy seeded with the seed, then its first draw)."""
    return torch.from_numpy(np.random.RandomState(seed).permutation(PIXELS)).long()


def loader_draws(size=None):
    """The draws one pass of the authors' ``DataLoader`` makes from torch's global generator on
    the pinned torch (2.14), and the order it yields (``--rng authors``).

    Every iterator draws its workers' base seed (``torch.empty((), dtype=torch.int64)
    .random_()``) when it is created; a ``SubsetRandomSampler`` over ``size`` indices then
    draws ``torch.randperm(size)`` (lazily, so after the base seed, with or without workers).
    Returns the positions in sampler order, or None for an unshuffled loader (``size=None``,
    their test loader). Their validation order is random too: its draws move the stream even
    though an accuracy does not depend on the order."""
    torch.empty((), dtype=torch.int64).random_()
    return None if size is None else torch.randperm(size)


def pixel_sequences(images, pixel_order):
    """(B, 784) uint8 images -> (784, B, 1) float inputs, time-major, read in ``pixel_order``.

    ``x / 255`` in float32 is exactly what ToTensor computes for a uint8 image."""
    return images[:, pixel_order].float().div_(255).t().contiguous().unsqueeze(-1)


# ----------------------------------------------------------------------------- training

@torch.no_grad()
def evaluate(net, split, pixel_order, batch_size):
    """Mean cross-entropy (per image) and accuracy (%) of the last step's readout on a whole
    split, in batches of ``batch_size``; the last batch may be smaller and counts fully."""
    net.eval()
    loss_sum, correct = 0.0, 0
    count = split.images.shape[0]
    # on the CPU in batches of batch_size as always; on CUDA as many images as fit (all 10,000)
    batch_size = eval_chunk_size(split.images.device, count, PIXELS, net.lstm.hidden_size,
                                 net.readout.out_features, batch_size)
    for start in range(0, count, batch_size):
        x = pixel_sequences(split.images[start:start + batch_size], pixel_order)
        y = split.labels[start:start + batch_size]
        logits = net(x, last_only=True)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    net.train()
    return loss_sum / count, 100.0 * correct / count


def run(args, argv, last, device, lock=None):
    # Every input is checked (data present, readable, large enough, the same as the stored
    # run's) before TrainingRun.open clears or touches the run folder.
    train_file, test_file = load_mnist(args.data_dir, args.download)
    fingerprint = data_fingerprint(train_file, test_file)
    if last is not None and last["extra"].get("data_sha256") != fingerprint:
        raise UsageError(f"the MNIST files in {args.data_dir} differ from those the run in "
                         f"{args.save_dir} was started with; resume with the same data")
    train, valid, test = make_splits(train_file, test_file, args.train_size, args.valid_size,
                                     device)
    del train_file, test_file
    set_seed(args.seed)
    # detach is part of what the network is: HDetachNet(**model_config) rebuilds it as trained
    model_config = {"input_size": 1, "hidden_size": args.lstm_size, "num_classes": NUM_CLASSES,
                    "detach": args.detach}
    authors = args.rng == "authors"
    if authors:
        # The authors' pixelmnist.py, in its order: the network (torch's global generator),
        # the permutation (numpy's), then per epoch the training loader's draws (torch's), per
        # step the detach draws (numpy's), and the validation (and, when it improved, test)
        # loader's draws. last.pt keeps the global states.
        net = authors_net(HDetachNet, **model_config, impl=args.impl).to(device)
        permutation = (torch.from_numpy(np.random.permutation(PIXELS)).long() if args.permute
                       else torch.arange(PIXELS))
        generators, order_gen, detach_gen = {}, None, np.random
    else:
        # Separate streams for the epochs' orders and the h-detach draws, from the one seed.
        seeds = np.random.SeedSequence(args.seed).generate_state(2, dtype=np.uint64)
        order_gen, detach_gen = (torch.Generator().manual_seed(int(s)) for s in seeds)
        permutation = pixel_permutation(args.seed) if args.permute else torch.arange(PIXELS)
        net = HDetachNet(**model_config, impl=args.impl).to(device)
        generators = {"order": order_gen, "detach": detach_gen}
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    run = TrainingRun(TASK, args, net, optimizer, generators, model_config,
                      extra={"permutation": permutation, "data_sha256": fingerprint}, lock=lock)
    # Signals are caught before the run says it is running: a SIGTERM from then on always ends
    # in a saved last.pt (after the current iteration), never in a killed process.
    with StopSignals() as stop:
        run.open(argv, device, last)
        if last is None and args.permute:
            # Only a permuted run has an order worth a file (plain MNIST reads row-major).
            write_json(os.path.join(args.save_dir, "permutation.json"), {
                "permute": True, "seed": args.seed,
                "rule": "numpy.random.RandomState(seed).permutation(784)",
                "order": permutation.tolist()})
        # What the data is: the report keeps runs on files that are not the official MNIST
        # (or cannot be checked) away from the paper's numbers.
        status, detail = official_mnist(os.path.join(args.data_dir, "MNIST", "raw"))
        write_json(os.path.join(args.save_dir, "data.json"), {
            "mnist": status, "detail": detail, "data_sha256": fingerprint,
            "checked_against": "torchvision's MNIST.resources (MD5 of the official .gz files)"})
        if status != "official":
            what = "is not the official MNIST" if status == "not official" else \
                "could not be verified as the official MNIST"
            print(f"warning: the data in {args.data_dir} {what} ({detail}); report.py shows "
                  "this run apart from the paper's numbers", file=sys.stderr, flush=True)
        # The stored order is the truth for a resumed run, whatever this code would draw.
        pixel_order = run.extra["permutation"].to(device)
        batch = args.batch_size
        # A last partial batch trains, as a DataLoader's would.
        iters = math.ceil(args.train_size / batch)
        while run.epoch < run.target_epoch:
            p = p_in_force(args.p_detach, run.epoch, args.n_epochs, args.anneal_p)
            if run.epoch_iteration == 0:
                # Drawn at the epoch's start and kept in last.pt, so a mid-epoch resume goes on
                # with the same order (and the generator's state with the next epoch's).
                run.extra["order"] = (loader_draws(args.train_size) if authors else
                                      torch.randperm(args.train_size, generator=order_gen))
            order = run.extra["order"]
            bar = tqdm(total=iters, initial=run.epoch_iteration, leave=False, disable=None,
                       desc=f"epoch {run.epoch + 1}/{args.n_epochs}")
            while run.epoch_iteration < iters:
                start = run.epoch_iteration * batch
                index = order[start:start + batch].to(device)
                x = pixel_sequences(train.images[index], pixel_order)
                y = train.labels[index]
                logits = net(x, p=p, generator=detach_gen, last_only=True)
                loss = nn.functional.cross_entropy(logits, y)
                loss_value = run.step(loss, stop)
                bar.update()
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
                if stop.requested:
                    bar.close()
                    print(run.stop(stop.requested, COMMAND), flush=True)
                    return 0
            bar.close()
            if authors:
                loader_draws(args.valid_size)
            val_loss, val_acc = evaluate(net, valid, pixel_order, batch)
            record = {"train/epoch_loss": run.epoch_loss_sum / iters, "valid/loss": val_loss,
                      "valid/accuracy": val_acc, "p_detach": p}
            # The protocol measures the test set only when validation strictly improves; the
            # same strict rule decides best_model.pt, so it always carries its test accuracy.
            best_fields = None
            if authors and val_acc > (run.best["accuracy"] or 0.0):
                loader_draws()  # their test pass, made when validation beat their best (from 0)
            if run.best["accuracy"] is None or val_acc > run.best["accuracy"]:
                test_loss, test_acc = evaluate(net, test, pixel_order, batch)
                record.update({"test/accuracy": test_acc, "test/loss": test_loss})
                best_fields = {"loss": val_loss, "test_accuracy": test_acc,
                               "test_loss": test_loss, "pixel_order": run.extra["permutation"]}
            run.end_epoch(record, val_acc, best_fields, strict=True)
            print(f"epoch {run.epoch}/{args.n_epochs}  p {p:.2f}  train loss "
                  f"{record['train/epoch_loss']:.4f}  valid loss {val_loss:.4f}  valid acc "
                  f"{val_acc:6.2f}%  best {run.best['accuracy']:6.2f}% (epoch "
                  f"{run.best['epoch']}, test {run.best['test_accuracy']:6.2f}%)  "
                  f"{run.elapsed():.0f}s", flush=True)
        # Still inside: a SIGTERM while state.json or results.json is written only sets
        # ``stop.requested`` (the run is ending anyway), never kills the write.
        if run.epoch < args.n_epochs:
            print(run.pause(COMMAND), flush=True)
            return 0
        best = run.best
        run.log.scalar("best/valid_accuracy", best["accuracy"], run.epoch)
        run.log.scalar("best/test_accuracy", best["test_accuracy"], run.epoch)
        results = run.finish({
            "best_valid_accuracy": best["accuracy"], "best_valid_loss": best["loss"],
            "best_epoch": best["epoch"], "test_accuracy": best["test_accuracy"],
            "test_loss": best["test_loss"],
            "final_valid_accuracy": run.history[-1]["valid/accuracy"],
            "p_detach": args.p_detach, "detach": args.detach, "permute": bool(args.permute),
            "seed": args.seed,
            "lstm_size": args.lstm_size, "lr": args.lr, "clip": args.clip,
            "batch_size": args.batch_size, "n_epochs": args.n_epochs, "anneal_p": args.anneal_p,
            "train_size": args.train_size,
            "valid_size": args.valid_size, "test_size": test.images.shape[0]})
        print(f"done: best valid accuracy {results['best_valid_accuracy']:.2f}% at epoch "
              f"{results['best_epoch']}, test accuracy there {results['test_accuracy']:.2f}%; "
              f"results in {os.path.join(args.save_dir, 'results.json')}")
        return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return training_main(build_parser(), argv, TASK, run)


if __name__ == "__main__":
    sys.exit(main())
