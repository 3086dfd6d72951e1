"""What the experiment scripts share: flags, seeding, devices, data builders, run folders,
checkpoints, TensorBoard logging, RNG states and clean stops.

Nothing here runs on import; every function takes what it needs as arguments.
"""
import argparse
import datetime
import json
import os
import platform
import random
import signal
import sys
import time

import numpy as np
import torch

CHECKPOINT_FORMAT = "h-detach-checkpoint/1"
# Files a run folder may hold; their presence marks a folder as holding a run.
RUN_FILES = ("config.json", "last.pt", "best_model.pt", "results.json", "transfer.json",
             "permutation.json")
EVENTS_PREFIX = "events.out.tfevents."


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
        return run()
    except NothingToDo as note:
        print(note)
        return 0
    except (UsageError, RunStopped) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


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
            for variant in (spelling, "--" + spelling[2:].replace("-", "_"),
                            "--" + spelling[2:].replace("_", "-")):
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
                help="probability of blocking h at each step; <= 0 is plain BPTT (default -1)")
    parser.flag("--save-dir", required=True, help="the run folder to create (or resume)")
    parser.flag("--seed", type=seed_value, default=seed, help=f"random seed (default {seed})")
    parser.flag("--lr", type=positive_float, default=lr, help=f"Adam learning rate (default {lr})")
    parser.flag("--batch-size", type=positive_int, default=100, help="batch size (default 100)")
    parser.flag("--n-epochs", type=positive_int, default=epochs,
                help=f"epochs (default {epochs})")
    parser.flag("--anneal-p", type=int, default=anneal_p,
                help="h-detach is off for epochs e > n_epochs - anneal_p, 0-based "
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


# Keys that may differ between a run and its resumption.
RESUMABLE_KEYS = ("device", "impl", "overwrite", "resume", "checkpoint_every", "save_dir",
                  "num_workers", "data_dir", "download")


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
                                              or key in ("resume", "overwrite", "save_dir"))})
    return argparse.Namespace(**merged)


# ----------------------------------------------------------------------------- seeds, devices

def set_seed(seed):
    """Seed python's, numpy's and torch's global generators (CUDA included)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def resolve_device(name):
    """``auto`` -> CUDA when present else CPU; ``cuda`` when absent is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available "
                         "(use --device cpu or auto)")
    return torch.device(name)


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


def make_copying_data(n, delay, generator):
    """``n`` whole copying sequences: inputs (T+20, n, 1) float and targets (T+20, n) long."""
    return copying_batch(copying_symbols(n, generator), delay)


# ----------------------------------------------------------------------------- run folders

def run_files_in(folder):
    """Names of the run files already in ``folder`` (empty if it does not exist)."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder)
                  if name in RUN_FILES or name.startswith(EVENTS_PREFIX))


def check_run_dir(folder, overwrite=False, resume=False):
    """Refuse a ``--save-dir`` that cannot take this run, before anything is written.

    A folder holding a run is refused unless ``overwrite`` (its run files are removed later, by
    ``clear_run_dir``, once the new run's inputs have been checked) or ``resume`` (then it must
    hold a ``last.pt``).
    """
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other; choose one")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"--save-dir {folder} exists and is not a folder")
    existing = run_files_in(folder)
    if resume:
        if "last.pt" not in existing:
            raise UsageError(f"nothing to resume in {folder}: it holds no last.pt")
        return
    if existing and not overwrite:
        shown = [name for name in existing if name in RUN_FILES] or ["TensorBoard events"]
        raise UsageError(f"{folder} already holds a run ({', '.join(shown)}); use --resume to "
                         "continue it, --overwrite to replace it, or another --save-dir")


def clear_run_dir(folder):
    """Create ``folder``, removing the run files (and only those) of an earlier run."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create --save-dir {folder}: {err.strerror}") from None
    for name in run_files_in(folder):
        os.remove(os.path.join(folder, name))


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path, write):
    """Write ``path`` through a temporary file beside it and ``os.replace``: a reader, or a
    kill at any instant, sees the old file or the new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def write_json(path, obj):
    _atomic_write(path, lambda handle: handle.write(
        (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def now_iso():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def write_config(folder, task, args, argv, device):
    """``config.json``: the exact arguments, the command line, versions and start time."""
    import tensorboardX
    write_json(os.path.join(folder, "config.json"), {
        "task": task,
        "args": vars(args),
        "argv": list(argv),
        "device": str(device),
        "started": now_iso(),
        "resumed": [],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "tensorboardX": tensorboardX.__version__},
    })


def note_resume(folder, argv, device):
    path = os.path.join(folder, "config.json")
    config = read_json(path) if os.path.exists(path) else {}
    config.setdefault("resumed", []).append(
        {"at": now_iso(), "argv": list(argv), "device": str(device)})
    write_json(path, config)


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, payload):
    """``torch.save`` a dict of tensors and plain values atomically (temp file, then
    ``os.replace``), tagged with our format so that loading can tell it from other files."""
    payload = dict(payload, format=CHECKPOINT_FORMAT)
    _atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path, task=None):
    """Load one of our checkpoints with ``weights_only=True`` on the CPU.

    A missing file, a file that is not a checkpoint (or is truncated), one of another format or
    of another ``task``: each is a ``UsageError`` with one clear line.
    """
    if not os.path.isfile(path):
        raise UsageError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for foreign or truncated files
        raise UsageError(f"{path} is not a readable h-detach checkpoint (a truncated file, or "
                         "another kind of file)") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path} is not an h-detach checkpoint of this kit")
    if task is not None and payload.get("task") != task:
        raise UsageError(f"{path} is a checkpoint of the {payload.get('task')!r} task, "
                         f"not of {task!r}")
    return payload


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


# ----------------------------------------------------------------------------- TensorBoard

class EventLog:
    """Scalars to a TensorBoard event file (tensorboardX's record writer), written
    synchronously so that ``position()`` is exact: a checkpoint stores the position, and a
    resume cuts the log back to it (``rewind_event_log``), so no point is duplicated or lost.
    """

    def __init__(self, folder):
        from tensorboardX.event_file_writer import EventsWriter
        self.folder = folder
        # Readers take a folder's event files in name order. The name starts with the second
        # it was made; the session number after it keeps a resume made within the same second
        # after the file it continues.
        session = sum(name.startswith(EVENTS_PREFIX) for name in os.listdir(folder))
        suffix = f".{session:04d}"
        self._writer = EventsWriter(os.path.join(folder, "events"), suffix)
        self.path = self._writer._file_name

    def scalar(self, tag, value, step):
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar
        self._writer.write_event(Event(wall_time=time.time(), step=int(step),
                                       summary=scalar(tag, float(value))))

    def position(self):
        """Flush, and return the size of every event file in the folder."""
        self._writer.flush()
        return {name: os.path.getsize(os.path.join(self.folder, name))
                for name in sorted(os.listdir(self.folder)) if name.startswith(EVENTS_PREFIX)}

    def close(self):
        self._writer.close()


def rewind_event_log(folder, position):
    """Cut the run's event files back to a stored ``position``: files written after it are
    removed, files that grew are truncated to their stored size."""
    for name in os.listdir(folder):
        if not name.startswith(EVENTS_PREFIX):
            continue
        path = os.path.join(folder, name)
        if name not in position:
            os.remove(path)
        elif os.path.getsize(path) > position[name]:
            os.truncate(path, position[name])


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


def check_finite(loss_value, epoch, iteration):
    if not np.isfinite(loss_value):
        raise RunStopped(f"training loss became {loss_value} at epoch {epoch + 1}, iteration "
                         f"{iteration}; the run is stopped and last.pt holds the last good state "
                         "(try a lower --lr or gradient clipping)")


# ----------------------------------------------------------------------------- a training run

def parse_run_args(parser, argv, task):
    """Parse a training script's arguments. With ``--resume`` the stored run's arguments are
    the base (flags left out keep their stored values) and its ``last.pt`` is returned too."""
    args = parser.parse_args(argv)
    check_run_dir(args.save_dir, overwrite=args.overwrite, resume=args.resume)
    if not args.resume:
        return args, None
    last = load_checkpoint(os.path.join(args.save_dir, "last.pt"), task=task)
    args = merge_resume_args(args, explicit_keys(parser, argv), last["config"])
    if last["epoch"] >= args.n_epochs and \
            os.path.exists(os.path.join(args.save_dir, "results.json")):
        raise NothingToDo(f"the run in {args.save_dir} is complete ({last['epoch']} epochs); "
                          "nothing to resume")
    return args, last


class TrainingRun:
    """The bookkeeping of one training run, shared by the scripts: run folder, config.json,
    TensorBoard log, ``last.pt`` / ``best_model.pt``, exact resume and clean stops.

    The script owns its data, loss and evaluation; it advances ``epoch``,
    ``epoch_iteration`` (iterations done in the current epoch), ``iteration`` (global, the
    TensorBoard step of per-iteration scalars) and ``epoch_loss_sum``, and stores any extra
    state it needs to resume (a permutation, an epoch's order) in ``extra``.
    """

    def __init__(self, task, args, net, optimizer, generators, model_config, extra=None):
        self.task, self.args, self.folder = task, args, args.save_dir
        self.net, self.optimizer, self.generators = net, optimizer, generators
        self.model_config = model_config
        self.extra = dict(extra or {})
        self.epoch = self.epoch_iteration = self.iteration = 0
        self.epoch_loss_sum = 0.0
        self.best = {"accuracy": None, "epoch": None}
        self.history = []
        self.wall_time = 0.0
        self.log = None
        self._clock = None

    def open(self, argv, device, last=None):
        """Start the run (clear the folder, write config.json) or restore it from ``last``."""
        if last is None:
            clear_run_dir(self.folder)
            write_config(self.folder, self.task, self.args, argv, device)
        else:
            self.net.load_state_dict(last["model"])
            self.optimizer.load_state_dict(last["optimizer"])
            restore_rng_states(last["rng"], self.generators)
            for key in ("epoch", "epoch_iteration", "iteration", "epoch_loss_sum", "best",
                        "history", "wall_time", "extra"):
                setattr(self, key, last[key])
            rewind_event_log(self.folder, last["events"])
            note_resume(self.folder, argv, device)
        self.log = EventLog(self.folder)
        self._clock = time.perf_counter()
        return self

    def elapsed(self):
        return self.wall_time + time.perf_counter() - self._clock

    def checkpoint_fields(self):
        return {"task": self.task, "config": vars(self.args), "model_config": self.model_config,
                "model": self.net.state_dict()}

    def save_last(self):
        """``last.pt``: everything an exact resume needs, at the current iteration."""
        save_checkpoint(os.path.join(self.folder, "last.pt"), dict(
            self.checkpoint_fields(), kind="last", optimizer=self.optimizer.state_dict(),
            epoch=self.epoch, epoch_iteration=self.epoch_iteration, iteration=self.iteration,
            epoch_loss_sum=self.epoch_loss_sum, best=self.best, history=self.history,
            wall_time=self.elapsed(), extra=self.extra, rng=rng_states(self.generators),
            events=self.log.position()))

    def end_epoch(self, record, accuracy, best_fields=None, strict=False):
        """Close the epoch: log ``record`` (a dict of scalars, TensorBoard step = epochs done),
        keep the best model when ``accuracy`` is at least the best so far (``best_fields`` go
        into ``best_model.pt`` and ``best``), then write ``last.pt``. Returns whether it was a
        new best. ``strict``: only a strictly higher accuracy is a new best (pixel MNIST's
        rule; the copying task keeps the first, at-least rule)."""
        done = self.epoch + 1
        for tag, value in record.items():
            self.log.scalar(tag, value, done)
        best = self.best["accuracy"]
        improved = best is None or (accuracy > best if strict else accuracy >= best)
        if improved:
            self.best = dict(best_fields or {}, accuracy=accuracy, epoch=done)
            save_checkpoint(os.path.join(self.folder, "best_model.pt"), dict(
                self.checkpoint_fields(), kind="best", **self.best))
        self.history.append(dict(record, epoch=done))
        self.epoch, self.epoch_iteration, self.epoch_loss_sum = done, 0, 0.0
        self.save_last()
        return improved

    def step(self, loss, stop):
        """One optimiser step on the batch ``loss``, as the authors' scripts take it: stop on a
        non-finite loss, backward, clip (``args.clip`` <= 0: no clipping), Adam; then count,
        log ``train/loss`` and write ``last.pt`` when ``--checkpoint-every`` says so or a stop
        signal came. Returns the loss value."""
        loss_value = loss.item()
        check_finite(loss_value, self.epoch, self.iteration + 1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.args.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.args.clip)
        self.optimizer.step()
        self.iteration += 1
        self.epoch_iteration += 1
        self.epoch_loss_sum += loss_value
        self.log.scalar("train/loss", loss_value, self.iteration)
        every = self.args.checkpoint_every
        if stop.requested or (every and self.iteration % every == 0):
            self.save_last()
        return loss_value

    def stop_message(self, signame, command):
        return (f"{signame} received: stopped at epoch {self.epoch + 1}, iteration "
                f"{self.iteration}; last.pt saved in {self.folder}. Resume with:\n"
                f"  {command} --save-dir {self.folder} --resume")

    def finish(self, results):
        """Write ``results.json`` (with final epoch and wall time) and close the log."""
        results = dict(results, final_epoch=self.epoch, wall_time_s=round(self.elapsed(), 1))
        write_json(os.path.join(self.folder, "results.json"), results)
        self.log.close()
        return results
