"""What the experiment scripts share: errors, flags, seeding, devices, the copying data, RNG
states and clean stops. Everything about a run folder (its files, lock, checkpoints, metrics,
event log and state) is in ``runfolder.py``.

Nothing here runs on import; every function takes what it needs as arguments.
"""
import argparse
import os
import random
import signal
import sys

import numpy as np
import torch

from numerics import add_numerics_flag, configure_cuda


class UsageError(Exception):
    """A user mistake: reported as one line on stderr, exit status 2, no traceback."""
    exit_code = 2


class RunStopped(Exception):
    """A run that cannot go on (say, a non-finite loss): one line on stderr, exit status 1."""
    exit_code = 1


class NothingToDo(Exception):
    """Not an error (say, ``--resume`` of a finished run): the message goes to stdout, status 0."""


def report_errors(run):
    """Call ``run()``; turn our errors into one line on stderr and a ``SystemExit``."""
    try:
        code = run()
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not at interpreter exit
        return code
    except NothingToDo as note:
        print(note)
        return 0
    except (UsageError, RunStopped) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except BrokenPipeError:
        # The reader went away (``sweep.py status | head``): stop quietly with status 1, as
        # Python's own docs advise, instead of a traceback. stdout now points at /dev/null so
        # that the interpreter's last flush of the unwritten rest cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


# ----------------------------------------------------------------------------- flags

class ArgParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``flag`` accepts both spellings of a name (``--batch-size`` and
    the original ``--batch_size``), so the authors' command lines keep working. A bad
    argument is reported on one line, like every other user mistake."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def flag(self, name, *aliases, **kwargs):
        names = [name]
        for spelling in (name, *aliases):
            variants = [spelling]
            if spelling.startswith("--"):  # short options (-j) have no twins
                variants += ["--" + spelling[2:].replace("-", "_"),
                             "--" + spelling[2:].replace("_", "-")]
            for variant in variants:
                if variant not in names:
                    names.append(variant)
        kwargs.setdefault("dest", name[2:].replace("-", "_"))
        return self.add_argument(*names, **kwargs)


def _whole_number(text, low, high=None, rule=""):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
    return value


def positive_int(text):
    return _whole_number(text, 1, rule="at least 1")


def non_negative_int(text):
    return _whole_number(text, 0, rule="0 or more")


def seed_value(text):
    """A seed numpy and torch both take: a whole number in 0 .. 2**32 - 1."""
    return _whole_number(text, 0, 2 ** 32 - 1, rule=f"in 0..{2 ** 32 - 1}")


def positive_float(text):
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def detach_probability(text):
    """h-detach's p: the probability of blocking; <= 0 means plain BPTT, above 1 is an error."""
    value = finite_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"is a probability and must be at most 1, got {text}")
    return value


def add_run_flags(parser, seed, lr, epochs, anneal_p):
    """The flags every training script has, with the task's original defaults."""
    parser.flag("--p-detach", type=detach_probability, default=-1.0,
                help="probability of blocking the --detach state at each step; <= 0 is plain "
                     "BPTT (default -1)")
    parser.flag("--detach", choices=("h", "c"), default="h",
                help="the state a drawn step cuts from the backward pass: h (h-detach, the "
                     "method) or c (c-detach, the paper's ablation) (default h)")
    parser.flag("--save-dir", required=True, help="the run folder to create (or resume)")
    parser.flag("--seed", type=seed_value, default=seed, help=f"random seed (default {seed})")
    parser.flag("--rng", choices=RNG_MODES, default="authors",
                help="where the randomness comes from. authors (default): numpy's and torch's "
                     "global generators drawn in the authors' scripts' order, so --seed N is "
                     "the authors' seed N (their data, initial weights, batches and detach "
                     "draws). kit: the kit's own seeded streams, which give every setting of "
                     "one seed the same data, initial weights and batches (only the detach "
                     "draws differ), a paired comparison between settings; every run made "
                     "before this flag existed is kit, and resumes as kit")
    parser.flag("--lr", type=positive_float, default=lr, help=f"Adam learning rate (default {lr})")
    parser.flag("--batch-size", type=positive_int, default=100, help="batch size (default 100)")
    parser.flag("--n-epochs", type=positive_int, default=epochs,
                help=f"epochs (default {epochs})")
    # A negative value would read as "anneal later than the end", which is 0: never off.
    parser.flag("--anneal-p", type=non_negative_int, default=anneal_p,
                help="h-detach is off for epochs e > n_epochs - anneal_p, 0-based; 0: never "
                     f"(default {anneal_p})")
    parser.flag("--device", choices=("auto", "cpu", "cuda"), default="auto",
                help="auto: CUDA when present, else CPU")
    parser.flag("--impl", choices=("fast", "reference"), default="fast",
                help="LSTM implementation; both give the same gradients (default fast)")
    parser.flag("--overwrite", action="store_true",
                help="replace the run already in --save-dir")
    parser.flag("--resume", action="store_true",
                help="continue the run in --save-dir from its last.pt")
    parser.flag("--checkpoint-every", type=non_negative_int, default=0,
                help="also write last.pt every N iterations (default 0: after every epoch only)")
    parser.flag("--until-epoch", type=positive_int, default=None, metavar="E",
                help="stop cleanly once epoch E of the planned --n-epochs is done (last.pt "
                     "saved; --resume continues to the end exactly as one uninterrupted run)")
    add_numerics_flag(parser)


# Where the randomness comes from (--rng): the authors' global streams, or the kit's own.
RNG_MODES = ("authors", "kit")
# The value a stored run that predates a flag had in effect: such a run resumes with it (not
# with today's default). Runs made before --rng drew from the kit's streams.
PREDATED_VALUES = {"rng": "kit"}

# Keys that may differ between a run and its resumption.
# A change of --device, --numerics or --flush-denormal is allowed, and said
# (runfolder.TrainingRun.open): the continuation is then not bit-identical to an uninterrupted run.
RESUMABLE_KEYS = ("device", "impl", "overwrite", "resume", "checkpoint_every", "save_dir",
                  "num_workers", "data_dir", "download", "until_epoch", "numerics",
                  "flush_denormal")
# Keys that hold for one process only: always taken from its command line.
PER_PROCESS_KEYS = ("resume", "overwrite", "save_dir", "until_epoch")


def explicit_keys(parser, argv):
    """The ``dest`` of every flag given explicitly in ``argv``."""
    saved = [(action, action.default, action.required) for action in parser._actions]
    try:
        for action, _, _ in saved:
            action.default = argparse.SUPPRESS
            action.required = False
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default, required in saved:
            action.default, action.required = default, required


def merge_resume_args(args, given, stored):
    """Arguments for a resumed run: the stored ones, with the keys that may change taken from
    the command line. A flag given explicitly that contradicts the stored run is refused."""
    differing = sorted(key for key in given - set(RESUMABLE_KEYS)
                       if key in stored and getattr(args, key) != stored[key])
    unknown = sorted(key for key in given - set(RESUMABLE_KEYS) if key not in stored)
    if differing or unknown:
        parts = [f"{key} (run: {stored[key]!r}, given: {getattr(args, key)!r})"
                 for key in differing] + [f"{key} (not in the run)" for key in unknown]
        raise UsageError("--resume with arguments that contradict the stored run: "
                         + ", ".join(parts) + "; drop them or start a new --save-dir")
    merged = dict(stored)
    # A key that may change keeps its stored value unless given again (say, --data-dir), so
    # that the plain `--save-dir X --resume` a stop message suggests continues the same run.
    merged.update({key: getattr(args, key) for key in RESUMABLE_KEYS
                   if hasattr(args, key) and (key in given or key not in stored
                                              or key in PER_PROCESS_KEYS)})
    return argparse.Namespace(**merged)


# ----------------------------------------------------------------------------- seeds, devices

def set_seed(seed):
    """Seed python's, numpy's and torch's global generators (CUDA included)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def resolve_device(name):
    """``auto`` -> CUDA when present else CPU; ``cuda`` when absent is a usage error. On CUDA
    the settings that decide GPU arithmetic are made explicit (``numerics.configure_cuda``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available "
                         "(use --device cpu or auto)")
    device = torch.device(name)
    if device.type == "cuda":
        configure_cuda()
    return device


def epochs_without_detach(n_epochs, anneal_p):
    """How many of ``n_epochs`` train with full gradients because of annealing."""
    return sum(p_in_force(1.0, epoch, n_epochs, anneal_p) == 0 for epoch in range(n_epochs))


def warn_if_annealing_dominates(args, stream=None):
    """One warning line when annealing leaves h-detach off for more than half of the run: with
    the authors' ``--anneal-p 40`` a 20-epoch run never detaches, and nothing else would say so.
    Returns whether it warned."""
    if args.p_detach <= 0:
        return False
    off = epochs_without_detach(args.n_epochs, args.anneal_p)
    if 2 * off <= args.n_epochs:
        return False
    print(f"warning: {getattr(args, 'detach', 'h')}-detach (--p-detach {args.p_detach}) is off "
          f"for {off} of the {args.n_epochs} epochs, since --anneal-p {args.anneal_p} switches "
          "it off for every epoch e > n_epochs - anneal_p; lower --anneal-p to detach for longer",
          file=stream or sys.stderr, flush=True)
    return True


def p_in_force(p_detach, epoch, n_epochs, anneal_p):
    """The detach probability used in 0-based ``epoch``: h-detach is switched off (plain BPTT)
    for every epoch with ``epoch > n_epochs - anneal_p``, as in the authors' scripts."""
    if p_detach <= 0 or epoch > n_epochs - anneal_p:
        return 0.0
    return float(p_detach)


# ----------------------------------------------------------------------------- copying data

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


# ----------------------------------------------------------------------------- RNG states

def rng_states(generators):
    """Every random state a run depends on: python, numpy, torch (CPU and CUDA) and the
    run's own ``torch.Generator`` objects, as tensors and plain values ``weights_only`` loads."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "generators": {name: gen.get_state() for name, gen in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state, generators):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np_state["key"].numpy().astype(np.uint32),
                                   "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    for name, gen in generators.items():
        gen.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available() and \
            len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- clean stops

class StopSignals:
    """While active, SIGTERM and SIGINT (what schedulers send before preemption) only set
    ``requested``; the training loop checks it after each iteration, saves and exits. A second
    SIGINT interrupts at once."""

    def __init__(self):
        self.requested = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
