"""Transfer copying: test a copying model, without training, at longer delays.

    python transfer_copy.py --model-dir=runs/copy_T100_p0.5 --T 200 400 500 1000 2000 5000

As in the paper: the best model of a copying run (trained at T = 100) is evaluated on 5,000
fresh sequences of each delay T', generated with seed 555, with the same accuracy definition
(the last 10 steps). Prints a table and adds it to transfer.json next to the model, which
keeps every measurement, each with the test set it was measured on (--rng, seed, size; see
runfolder.record_transfer).

--rng authors (default) draws every delay's sequences as the authors' transfer_copy.py does in
its own process per T' (numpy seeded with 555, one ``randint(8, size=10)`` per sequence), so
each test set is exactly theirs; --rng kit draws them from a torch generator seeded with 555
(the test sets of every transfer.json written before the flag existed).
"""
import os
import sys

if __name__ == "__main__":
    # Before torch loads: it picks its CPU kernels once, at import (running/numerics.py).
    from running import numerics
    numerics.pin_before_torch(sys.argv[1:])

import numpy as np
import torch
from tqdm import tqdm

from copying import NUM_CLASSES, TASK, authors_copying_symbols, copying_symbols, evaluate
from model import HDetachNet
from running.devices import resolve_device
from running.errors import UsageError, report_errors
from running.numerics import add_numerics_flag, denormals_flushed, fingerprint, warn_in_process
from running.resume import RNG_MODES
from running.runfolder import (check_writable, model_path, now_iso, read_checkpoint,
                               record_transfer, set_threads)
from utils import ArgParser, StopSignals, add_threads_flag, positive_int, seed_value


def build_parser():
    parser = ArgParser(description=__doc__.split("\n")[0])
    parser.flag("--model-dir", required=True,
                help="a copying run folder (its best_model.pt is used) or a checkpoint file")
    parser.flag("--T", type=positive_int, nargs="+", default=[200, 400, 500, 1000, 2000, 5000],
                help="one or more delays T' (default: the paper's 200 400 500 1000 2000 5000)")
    parser.flag("--seed", type=seed_value, default=555,
                help="seed of the test sequences (default 555)")
    parser.flag("--test-size", type=positive_int, default=5000,
                help="test sequences per delay (default 5000)")
    parser.flag("--rng", choices=RNG_MODES, default="authors",
                help="how the test sequences are drawn: authors (default): exactly the authors' "
                     "transfer_copy.py's for each T' (numpy seeded with --seed); kit: from a "
                     "torch generator seeded with --seed, as before this flag existed")
    parser.flag("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_threads_flag(parser, training=False)
    add_numerics_flag(parser)
    return parser


def test_symbols(rng, seed, size):
    """The symbols of one delay's test set (the same for every delay of one seed and size)."""
    if rng == "authors":
        # Their script seeds numpy (and torch, unused here) with 555 in a fresh process per T'
        # and draws nothing from numpy before the sequences.
        return authors_copying_symbols(size, np.random.RandomState(seed))
    return copying_symbols(size, torch.Generator().manual_seed(seed))


def load_model(model_dir, device):
    """The network of a copying checkpoint, rebuilt from the sizes stored in it, the
    checkpoint, its path and the SHA-256 of the bytes it was loaded from."""
    path = model_path(model_dir, "a copying run writes it at the end of its first epoch")
    checkpoint, digest = read_checkpoint(path, task=TASK)
    config = checkpoint["model_config"]
    if config.get("num_classes") != NUM_CLASSES:
        raise UsageError(f"{path} does not hold a copying model")
    net = HDetachNet(**config)
    net.load_state_dict(checkpoint["model"])
    return net.to(device), checkpoint, path, digest


def describe_checkpoint(checkpoint, path):
    """What the model is, in words: which file, trained at which T, at which epoch, and its
    validation accuracy (best_model.pt stores it; last.pt has it in its history)."""
    accuracy = checkpoint.get("accuracy")
    history = checkpoint.get("history") or []
    if accuracy is None and history:
        accuracy = history[-1].get("valid/accuracy")
    where = f"epoch {checkpoint.get('epoch')}"
    if checkpoint.get("epoch_iteration"):
        where += f" + {checkpoint['epoch_iteration']} iterations"
    shown = "no validation yet" if accuracy is None else \
        f"valid accuracy {accuracy:.2f}% at epoch {checkpoint.get('epoch')}"
    return (f"model: {path} ({checkpoint.get('kind') or 'checkpoint'}, trained at "
            f"T={checkpoint['config'].get('T')}, {where}, {shown})")


def run(args, device):
    numerics = fingerprint(args.numerics, device)
    warn_in_process(numerics)
    net, checkpoint, path, digest = load_model(args.model_dir, device)
    # transfer.json goes beside the checkpoint: refuse a folder that cannot take it before the
    # minutes of measuring, not after.
    check_writable(os.path.dirname(os.path.abspath(path)),
                   "the model's folder (for transfer.json)")
    trained_t = checkpoint["config"].get("T")
    print(describe_checkpoint(checkpoint, path))
    print(f"{'T':>6}  {'accuracy %':>10}  {'loss':>8}")
    rows = {}
    for delay in args.T:
        # The same 5,000 sequences for a given (rng, seed, T'), whatever else is asked.
        symbols = test_symbols(args.rng, args.seed, args.test_size)
        # A CPU takes minutes for the long delays (T' = 5000 most of them): a bar per delay on
        # stderr, gone once its row is printed, so the table on stdout stays as it was; on a
        # terminal only (disable=None), as training's: a sweep's transfer.log keeps the table.
        with tqdm(total=args.test_size, desc=f"T'={delay}", unit="seq", leave=False,
                  dynamic_ncols=True, mininterval=1.0, disable=None) as bar:
            loss, accuracy = evaluate(net, symbols, delay, device, progress=bar.update)
        rows[delay] = {"T": delay, "accuracy": accuracy, "loss": loss, "rng": args.rng}
        print(f"{delay:>6}  {accuracy:>10.2f}  {loss:>8.4f}", flush=True)
    out = os.path.join(os.path.dirname(os.path.abspath(path)), "transfer.json")
    # Every earlier measurement is kept: of another checkpoint (last.pt, an older best_model.pt
    # of a run still training), another test-set size or seed. Rows for other delays of this
    # same checkpoint and test set are merged with these.
    # A SIGTERM while measuring ends the process (nothing is written, nothing lost); one that
    # arrives while transfer.json is written waits for the write to finish.
    with StopSignals():
        record_transfer(out, {
            "checkpoint": os.path.basename(path), "trained_T": trained_t,
            "checkpoint_sha256": digest, "checkpoint_kind": checkpoint.get("kind"),
            "checkpoint_epoch": checkpoint.get("epoch"), "seed": args.seed,
            "test_size": args.test_size, "rng": args.rng, "measured": now_iso(),
            "numerics": numerics, "results": [rows[delay] for delay in sorted(rows)]})
    print(f"written: {out}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)

    def start():
        set_threads(args.threads)
        device = resolve_device(args.device)
        with denormals_flushed(args.flush_denormal, device):
            return run(args, device)
    return report_errors(start)


if __name__ == "__main__":
    sys.exit(main())
