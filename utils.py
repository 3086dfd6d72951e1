"""What the experiment scripts share: their flags (both spellings of every name), the
authors' initial weights (``--rng authors``) and clean stops on SIGTERM. The run machinery
below them (errors, arithmetic, devices, random state, annealing, run folders) is the
``running`` package; the model is ``model.py``.

Nothing here runs on import; every function takes what it needs as arguments.
"""
import argparse
import math
import signal

import numpy as np
import torch
from torch import nn

from model import HDetachNet
from running.numerics import add_numerics_flag
from running.resume import RNG_MODES

# ----------------------------------------------------------------------------- flags

class ArgParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``flag`` accepts both spellings of a name (``--batch-size`` and
    the original ``--batch_size``), so the authors' command lines keep working. A bad
    argument is reported on one line, like every other user mistake."""

    def error(self, message):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            for word in message[len(prefix):].split():
                hint = self.hints.get(_flag_key(word.split("=", 1)[0]))
                if hint:
                    message = f"{word.split('=', 1)[0]} is not a flag here: {hint}"
                    break
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    @property
    def hints(self):
        """{flag: what to use instead}: the original scripts' flags this one does not take,
        each named in the one-line error (``hint``)."""
        return self.__dict__.setdefault("_hints", {})

    def hint(self, text, *flags):
        """Say ``text`` when one of ``flags`` (either spelling) is given."""
        for flag in flags:
            self.hints[_flag_key(flag)] = text

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


def _flag_key(flag):
    """``--start_from`` and ``--start-from`` alike: ``start_from``."""
    return flag.lstrip("-").replace("-", "_") if flag.startswith("--") else None


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


def image_count(text):
    """A number of images: at least 1, or -1 for the whole split (the branch's convention)."""
    value = _whole_number(text, -1, rule="-1 (the whole split) or at least 1")
    if value == 0:
        raise argparse.ArgumentTypeError("must be -1 (the whole split) or at least 1, got 0")
    return value


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


def add_threads_flag(parser, training=True):
    """``--threads N``; ``training``: the script trains a run, which a resume continues."""
    more = (" The thread count is part of a CPU run's arithmetic: a resume keeps the run's "
            "unless given again, and says so when it changes" if training else
            " On a busy machine one thread can be many times faster than torch's default")
    parser.flag("--threads", type=positive_int, default=None, metavar="N",
                help="torch CPU threads of this process (default: torch's own, the machine's "
                     "cores or OMP_NUM_THREADS)." + more)


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
    add_threads_flag(parser)
    parser.flag("--until-epoch", type=positive_int, default=None, metavar="E",
                help="stop cleanly once epoch E of the planned --n-epochs is done (last.pt "
                     "saved; --resume continues to the end exactly as one uninterrupted run)")
    add_numerics_flag(parser)


# ------------------------------------------------------------------------- the authors' weights

def init_like_authors(net):
    """Give ``net`` (an ``HDetachNet``) the initial weights the authors' ``Net`` draws, from
    torch's global generator, consuming exactly the draws theirs does (``--rng authors``).

    Their LSTM (``lstm_cell.py``) holds two ``nn.Linear`` layers, input (I -> 4H) and recurrent
    (H -> 4H), built with torch's default init, then redraws all four tensors uniform in
    +-1/sqrt(H) in the order input weight, input bias, recurrent weight, recurrent bias; the
    readout ``nn.Linear(H, classes)`` is built after. Their gate rows are (i, f, o, g); ours
    follow ``nn.LSTM``'s (i, f, g, o), so the last two blocks are swapped on the way in.
    Building ``net`` itself drew from the global generator too: build it inside
    ``torch.random.fork_rng`` so that those draws do not count (see ``authors_net``).
    """
    lstm = net.lstm
    hidden, inputs = lstm.hidden_size, lstm.input_size
    with torch.no_grad():
        i2h = nn.Linear(inputs, 4 * hidden)
        h2h = nn.Linear(hidden, 4 * hidden)
        bound = 1.0 / math.sqrt(hidden)
        for tensor in (i2h.weight, i2h.bias, h2h.weight, h2h.bias):
            tensor.uniform_(-bound, bound)
        readout = nn.Linear(hidden, net.readout.out_features)

        def ifgo(rows):  # (i, f, o, g) -> (i, f, g, o)
            i, f, o, g = rows.split(hidden, 0)
            return torch.cat((i, f, g, o), 0)
        for ours, theirs in ((lstm.weight_ih, i2h.weight), (lstm.bias_ih, i2h.bias),
                             (lstm.weight_hh, h2h.weight), (lstm.bias_hh, h2h.bias)):
            ours.copy_(ifgo(theirs))
        net.readout.weight.copy_(readout.weight)
        net.readout.bias.copy_(readout.bias)
    return net


def authors_net(net_class=None, **config):
    """A ``net_class(**config)`` (default ``HDetachNet``) whose initial weights are the authors'
    (``init_like_authors``), having moved torch's global generator exactly as building their
    ``Net`` does."""
    with torch.random.fork_rng(devices=[]):
        net = (net_class or HDetachNet)(**config)
    return init_like_authors(net)


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
