"""Transfer copying: test a copying model, without training, at longer delays.

    python transfer_copy.py --model-dir=runs/copy_T100_p0.5 --T 200 400 500 1000 2000 5000

As in the paper: the best model of a copying run (trained at T = 100) is evaluated on 5,000
fresh sequences of each delay T', generated with seed 555, with the same accuracy definition
(the last 10 steps). Prints a table and writes transfer.json next to the model; each row
records the test set it was measured on (--rng, seed, size).

--rng authors (default) draws every delay's sequences as the authors' transfer_copy.py does in
its own process per T' (numpy seeded with 555, one ``randint(8, size=10)`` per sequence), so
each test set is exactly theirs; --rng kit draws them from a torch generator seeded with 555
(the test sets of every transfer.json written before the flag existed).
"""
import os
import sys

if __name__ == "__main__":
    # Before torch loads: it picks its CPU kernels once, at import (numerics.py, --numerics).
    import numerics
    numerics.pin_before_torch(sys.argv[1:])

import numpy as np
import torch

from copying import NUM_CLASSES, TASK, evaluate
from model import HDetachNet
from numerics import add_numerics_flag, fingerprint, warn_in_process
from runfolder import read_checkpoint, read_json, write_json
from utils import (RNG_MODES, ArgParser, UsageError, authors_copying_symbols, copying_symbols,
                   positive_int, report_errors, resolve_device, seed_value)


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
    path = model_dir
    if os.path.isdir(model_dir):
        path = os.path.join(model_dir, "best_model.pt")
        if not os.path.isfile(path):
            raise UsageError(f"{model_dir} holds no best_model.pt (a copying run writes it at the "
                             "end of its first epoch)")
    elif not os.path.exists(model_dir):
        raise UsageError(f"--model-dir {model_dir} does not exist")
    checkpoint, digest = read_checkpoint(path, task=TASK)
    config = checkpoint["model_config"]
    if config.get("num_classes") != NUM_CLASSES:
        raise UsageError(f"{path} does not hold a copying model")
    net = HDetachNet(**config)
    net.load_state_dict(checkpoint["model"])
    return net.to(device), checkpoint, path, digest


def run(args):
    device = resolve_device(args.device)
    numerics = fingerprint(args.numerics, device)
    warn_in_process(numerics)
    net, checkpoint, path, digest = load_model(args.model_dir, device)
    trained_t = checkpoint["config"].get("T")
    print(f"model: {path} (trained at T={trained_t}, epoch {checkpoint.get('epoch')}, "
          f"valid accuracy {checkpoint.get('accuracy', float('nan')):.2f}%)")
    print(f"{'T':>6}  {'accuracy %':>10}  {'loss':>8}")
    rows = {}
    for delay in args.T:
        # The same 5,000 sequences for a given (rng, seed, T'), whatever else is asked.
        symbols = test_symbols(args.rng, args.seed, args.test_size)
        loss, accuracy = evaluate(net, symbols, delay, device)
        rows[delay] = {"T": delay, "accuracy": accuracy, "loss": loss, "rng": args.rng}
        print(f"{delay:>6}  {accuracy:>10.2f}  {loss:>8.4f}", flush=True)
    out = os.path.join(os.path.dirname(os.path.abspath(path)), "transfer.json")
    # Results of earlier calls for other delays are kept, if they measured these same weights
    # (a run still training replaces best_model.pt); those measured now are replaced.
    previous = read_json(out) if os.path.exists(out) else {}
    same_setup = (previous.get("checkpoint") == os.path.basename(path)
                  and previous.get("checkpoint_sha256") == digest
                  and previous.get("seed") == args.seed
                  and previous.get("test_size") == args.test_size
                  and all(row.get("rng", "kit") == args.rng  # rows before --rng: kit
                          for row in previous.get("results", [])))
    results = {row["T"]: row for row in previous.get("results", [])} if same_setup else {}
    results.update(rows)
    write_json(out, {"checkpoint": os.path.basename(path), "trained_T": trained_t,
                     "checkpoint_sha256": digest,
                     "checkpoint_epoch": checkpoint.get("epoch"), "seed": args.seed,
                     "test_size": args.test_size, "numerics": numerics,
                     "results": [results[delay] for delay in sorted(results)]})
    print(f"written: {out}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return report_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
