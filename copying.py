"""The copying task with h-detach (Kanuparthi et al., ICLR 2019), faithful to the authors' script.

    python copying.py --T=100 --p-detach=0.5 --seed=3 --save-dir=runs/copy_T100_p0.5

A sequence has T + 20 steps of one scalar each: 10 symbols from 1..8, T - 1 blanks, the
delimiter 9, 10 blanks; the network must output blanks and then the 10 symbols in order.
100,000 training and 5,000 validation sequences are generated once per run; each iteration
draws its batch with replacement; the loss is the cross-entropy at every step. Validation
accuracy counts the last 10 steps. The run folder gets TensorBoard events, config.json,
metrics.csv (one row per epoch), state.json, best_model.pt, last.pt (resumable with --resume;
--until-epoch E pauses there) and, at the end, results.json (see running/runfolder.py).

--rng authors (default) draws everything as the authors' copying.py does, so --seed N is their
seed N; --rng kit (every run before the flag) gives every setting of a seed the same data,
initial weights and batches (see docs/experiments.md, Seeds).
"""
import os
import sys

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
from running.runfolder import TrainingRun, training_main
from running.seeding import set_seed
from utils import ArgParser, StopSignals, add_run_flags, authors_net, finite_float, positive_int

TASK = "copying"
NUM_CLASSES = 9
COMMAND = "python copying.py"


# ----------------------------------------------------------------------------- the data

COPY_BLANK, COPY_DELIMITER, COPY_LENGTH = 0, 9, 10


def copying_symbols(n, generator):
    """The 10 data symbols of ``n`` copying sequences, uniform over 1..8: (n, 10) uint8."""
    return torch.randint(1, 9, (n, COPY_LENGTH), generator=generator, dtype=torch.uint8)


def copying_batch(symbols, delay):
    """Time-major inputs and targets of the copying task for a (B, 10) block of symbols.

    Inputs (T+20, B, 1) float, one scalar per step: the 10 symbols, T-1 blanks, the delimiter
    (9), 10 blanks. Targets (T+20, B) long: T+10 blanks (class 0), then the 10 symbols.
    """
    batch = symbols.shape[0]
    steps = delay + 2 * COPY_LENGTH
    sym = symbols.t().to(torch.long)
    x = torch.zeros(steps, batch, dtype=torch.long, device=symbols.device)
    x[:COPY_LENGTH] = sym
    x[delay + COPY_LENGTH - 1] = COPY_DELIMITER
    y = torch.zeros(steps, batch, dtype=torch.long, device=symbols.device)
    y[-COPY_LENGTH:] = sym
    return x.unsqueeze(-1).float(), y


def authors_copying_symbols(n, source=np.random):
    """The 10 data symbols of ``n`` copying sequences as the authors' ``generator.py`` draws
    them from numpy's global generator (or ``source``, a ``RandomState``): per sequence
    ``randint(8, size=10)``, an index into the symbols 1..8. One call for all ``n`` sequences
    is the same stream as their ``n`` calls. (n, 10) uint8."""
    return torch.from_numpy((source.randint(8, size=(n, COPY_LENGTH)) + 1).astype(np.uint8))


def make_copying_data(n, delay, generator):
    """``n`` whole copying sequences: inputs (T+20, n, 1) float and targets (T+20, n) long."""
    return copying_batch(copying_symbols(n, generator), delay)


def build_parser():
    parser = ArgParser(description=__doc__.split("\n")[0])
    add_run_flags(parser, seed=3, lr=1e-3, epochs=600, anneal_p=40)
    parser.flag("--T", type=positive_int, default=300, help="the delay T (default 300)")
    parser.flag("--lstm-size", type=positive_int, default=128, help="hidden size (default 128)")
    parser.flag("--clip", "--clipval", type=finite_float, default=1.0,
                help="gradient-norm clipping; <= 0 turns it off (default 1.0)")
    parser.flag("--train-size", type=positive_int, default=100000,
                help="training sequences (default 100000)")
    # --valid-size is the clear name; --test-size is the authors' (it counts validation
    # sequences) and stays the stored key, so runs made before either name resume and compare.
    parser.flag("--valid-size", "--test-size", dest="test_size", type=positive_int,
                default=5000, help="validation sequences (default 5000; also --test-size, "
                "the authors' name)")
    return parser


def eval_chunk(steps, hidden):
    """Sequences per evaluation chunk: bounded so that hidden states stay near 100 MB."""
    return int(max(1, min(1000, 25_000_000 // (steps * hidden))))


@torch.no_grad()
def evaluate(net, symbols, delay, device, progress=None):
    """Mean cross-entropy over every step and sequence, and the accuracy (%) over the last 10
    steps, from a zero state, on the sequences whose symbols are given. ``progress``, if
    given, is called with the number of sequences each chunk has done (a progress bar)."""
    net.eval()
    loss_sum, correct = 0.0, 0
    steps = delay + 20
    # the CPU chunks as they always were; on CUDA as many sequences as fit (all 5,000 on a GPU)
    chunk = eval_chunk_size(device, symbols.shape[0], steps, net.lstm.hidden_size, NUM_CLASSES,
                            eval_chunk(steps, net.lstm.hidden_size))
    for start in range(0, symbols.shape[0], chunk):
        x, y = copying_batch(symbols[start:start + chunk], delay)
        x, y = x.to(device), y.to(device)
        logits = net(x)
        loss_sum += nn.functional.cross_entropy(
            logits.reshape(-1, NUM_CLASSES), y.reshape(-1), reduction="sum").item()
        correct += (logits[-10:].argmax(-1) == y[-10:]).sum().item()
        if progress is not None:
            progress(x.shape[1])
    net.train()
    count = symbols.shape[0]
    return loss_sum / (count * steps), 100.0 * correct / (count * 10)


def run(args, argv, last, device, lock=None):
    if args.train_size < args.batch_size:
        raise UsageError(f"--train-size ({args.train_size}) must be at least --batch-size "
                         f"({args.batch_size})")
    set_seed(args.seed)
    # detach is part of what the network is: HDetachNet(**model_config) rebuilds it as trained
    model_config = {"input_size": 1, "hidden_size": args.lstm_size, "num_classes": NUM_CLASSES,
                    "detach": args.detach}
    authors = args.rng == "authors"
    if authors:
        # The authors' copying.py, in its order: the network (torch's global generator), then
        # the training and the validation sequences (numpy's); per iteration, numpy's batch
        # indices, one unused draw, and the detach draws. last.pt keeps the global states.
        net = authors_net(HDetachNet, **model_config, impl=args.impl).to(device)
        train_symbols = authors_copying_symbols(args.train_size)
        valid_symbols = authors_copying_symbols(args.test_size)
        generators = {}
        detach_gen = np.random
    else:
        # Separate streams for data, batch indices and h-detach draws, all from the one seed.
        seeds = np.random.SeedSequence(args.seed).generate_state(3, dtype=np.uint64)
        data_gen, batch_gen, detach_gen = (torch.Generator().manual_seed(int(s)) for s in seeds)
        train_symbols = copying_symbols(args.train_size, data_gen)
        valid_symbols = copying_symbols(args.test_size, data_gen)
        net = HDetachNet(**model_config, impl=args.impl).to(device)
        generators = {"batches": batch_gen, "detach": detach_gen}
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    run = TrainingRun(TASK, args, net, optimizer, generators, model_config, lock=lock)
    iters = args.train_size // args.batch_size
    # Signals are caught before the run says it is running: a SIGTERM from then on always ends
    # in a saved last.pt (after the current iteration), never in a killed process.
    with StopSignals() as stop:
        run.open(argv, device, last)
        while run.epoch < run.target_epoch:
            p = p_in_force(args.p_detach, run.epoch, args.n_epochs, args.anneal_p)
            bar = tqdm(total=iters, initial=run.epoch_iteration, leave=False, disable=None,
                       desc=f"epoch {run.epoch + 1}/{args.n_epochs}")
            while run.epoch_iteration < iters:
                if authors:
                    index = torch.from_numpy(np.random.choice(args.train_size, args.batch_size))
                    np.random.random(size=1)  # drawn by the authors' loop and never used
                else:
                    index = torch.randint(args.train_size, (args.batch_size,),
                                          generator=batch_gen)
                x, y = copying_batch(train_symbols[index], args.T)
                x, y = x.to(device), y.to(device)
                logits = net(x, p=p, generator=detach_gen)
                loss = nn.functional.cross_entropy(logits.reshape(-1, NUM_CLASSES), y.reshape(-1))
                loss_value = run.step(loss, stop)
                bar.update()
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
                if stop.requested:
                    bar.close()
                    print(run.stop(stop.requested, COMMAND), flush=True)
                    return 0
            bar.close()
            val_loss, val_acc = evaluate(net, valid_symbols, args.T, device)
            train_loss = run.epoch_loss_sum / iters
            run.end_epoch({"train/epoch_loss": train_loss, "valid/loss": val_loss,
                           "valid/accuracy": val_acc, "p_detach": p}, val_acc,
                          {"loss": val_loss})
            print(f"epoch {run.epoch}/{args.n_epochs}  p {p:.2f}  train loss {train_loss:.4f}  "
                  f"valid loss {val_loss:.4f}  valid acc {val_acc:6.2f}%  best "
                  f"{run.best['accuracy']:6.2f}% (epoch {run.best['epoch']})  "
                  f"{run.elapsed():.0f}s", flush=True)
        # Still inside: a SIGTERM while state.json or results.json is written only sets
        # ``stop.requested`` (the run is ending anyway), never kills the write.
        if run.epoch < args.n_epochs:
            print(run.pause(COMMAND), flush=True)
            return 0
        results = run.finish({"best_valid_accuracy": run.best["accuracy"],
                              "best_epoch": run.best["epoch"],
                              "final_valid_accuracy": run.history[-1]["valid/accuracy"],
                              "T": args.T, "p_detach": args.p_detach, "detach": args.detach,
                              "seed": args.seed, "lstm_size": args.lstm_size, "lr": args.lr,
                              "clip": args.clip, "batch_size": args.batch_size,
                              "n_epochs": args.n_epochs, "anneal_p": args.anneal_p,
                              "train_size": args.train_size, "valid_size": args.test_size})
        print(f"done: best valid accuracy {results['best_valid_accuracy']:.2f}% at epoch "
              f"{results['best_epoch']}; results in {os.path.join(args.save_dir, 'results.json')}")
        return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return training_main(build_parser(), argv, TASK, run)


if __name__ == "__main__":
    sys.exit(main())
