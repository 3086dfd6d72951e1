"""The run folder: the one concept the training scripts, ``sweep.py`` and ``report.py`` share.

A run folder (``--save-dir``) holds:

    config.json        the exact arguments, command line, device, versions, numerics
                       fingerprint (running/numerics.py), every resume (with its own fingerprint)
    metrics.csv        one row per finished epoch, always in step with last.pt (captioning: one
                       row per evaluation, keyed by iteration: ``CAPTION_COLUMNS``)
    last.pt            everything an exact resume needs (written after every epoch)
    best_model.pt      the best-validation weights (never the same file as last.pt)
    results.json       only once the run has finished all its epochs
    state.json         what the run is doing or why it ended (running, paused, stopped, failed,
                       done), for tools that read the folder while no process holds it
    events.out.tfevents.*   TensorBoard scalars
    .lock              the writer's lock: one process at a time trains in a folder

The write side (atomic files, checkpoints, the event log, the lock, ``TrainingRun``) is used by
the training scripts; the read side (``RunFolder``) by the tools that look at runs. Nothing here
runs on import.
"""
import csv
import datetime
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

from running.annealing import warn_if_annealing_dominates
from running.devices import resolve_device
from running.errors import NothingToDo, RunStopped, UsageError, report_errors
from running.numerics import arithmetic_changes, denormals_flushed, fingerprint, warn_in_process
from running.numerics import describe as describe_numerics
from running.resume import PREDATED_VALUES, explicit_keys, merge_resume_args
from running.seeding import restore_rng_states, rng_states

CHECKPOINT_FORMAT = "h-detach-checkpoint/1"
# Files a run folder may hold; their presence marks a folder as holding a run.
RUN_FILES = ("config.json", "last.pt", "best_model.pt", "results.json", "transfer.json",
             "permutation.json", "metrics.csv", "state.json", "data.json")
EVENTS_PREFIX = "events.out.tfevents."
LOCK_NAME = ".lock"
# metrics.csv's columns, and the history keys (last.pt) they come from.
METRICS_COLUMNS = ("epoch", "p_detach", "train_loss", "valid_loss", "valid_accuracy",
                   "test_accuracy", "iteration", "elapsed_s")
_HISTORY_KEYS = {"epoch": "epoch", "p_detach": "p_detach", "train_loss": "train/epoch_loss",
                 "valid_loss": "valid/loss", "valid_accuracy": "valid/accuracy",
                 "test_accuracy": "test/accuracy", "iteration": "iteration",
                 "elapsed_s": "elapsed_s"}
# Captioning (caption_train.py) evaluates every N iterations, not after every epoch: its
# metrics.csv has a row per evaluation, keyed by ``iteration`` (``epoch`` is the epochs done at
# that moment, so several rows may share one), with the coco-caption metrics. {column: history
# key}, in column order; a header with ``iteration`` and ``val_loss`` and no ``valid_accuracy``
# marks such a table (``evaluation_table``).
CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
CAPTION_COLUMNS = {"epoch": "epoch", "iteration": "iteration", "p_detach": "p_detach",
                   "train_loss": "train/mean_loss", "val_loss": "val/loss",
                   **{name: f"val/{name}" for name in CAPTION_METRICS},
                   "elapsed_s": "elapsed_s"}


# ----------------------------------------------------------------------------- files

def run_files_in(folder):
    """Names of the run files already in ``folder`` (empty if it does not exist)."""
    if not os.path.isdir(folder):
        return []
    # eval_<split>.json: caption_eval.py's measurements of the run's model go with the run
    return sorted(name for name in os.listdir(folder)
                  if name in RUN_FILES or name.startswith(EVENTS_PREFIX)
                  or (name.startswith("eval_") and name.endswith(".json")))


def check_writable(folder, what):
    """Refuse, before any work is done, a destination that cannot be written (a read-only
    mount, an immutable folder, no permission): a ``UsageError`` naming ``what`` (the flag or
    file the user gave). ``folder`` need not exist: then the nearest folder above it that does,
    where it would be created, is checked; nothing is created. The check writes and removes a
    real file, since permission bits do not tell (root ignores them; a read-only mount or the
    immutable flag refuses even root)."""
    probe = os.path.abspath(folder)
    while not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if os.path.exists(probe) or parent == probe:
            return  # a file in the way: the caller's own check says so
        probe = parent
    try:
        fd, path = tempfile.mkstemp(prefix=".write-check.", dir=probe)
        os.close(fd)
        os.remove(path)
    except OSError as err:
        where = folder if probe == os.path.abspath(folder) else f"{folder} (in {probe})"
        raise UsageError(f"{what} {where} cannot be written: {err.strerror}") from None


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


def atomic_write(path, write):
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
    atomic_write(path, lambda handle: handle.write(
        (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def file_sha256(path):
    """The SHA-256 of a file: ties a result (transfer.json) to the exact checkpoint it used."""

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# transfer.json: every measurement is kept. One measurement is the accuracy at each delay of
# one checkpoint on one test set; these fields say which (a new field that changes the test set,
# such as a random-stream choice, belongs here too).
TRANSFER_KEY = ("checkpoint", "checkpoint_sha256", "seed", "test_size")


def transfer_measurements(data, path="transfer.json"):
    """The measurements a transfer.json holds (dicts with the ``TRANSFER_KEY`` fields,
    ``checkpoint_epoch``, ``trained_T`` and ``results``, rows of T / accuracy / loss), oldest
    first. A file of the first format (one measurement at the top level) gives that one.
    Anything else raises ``DamagedFile``."""
    if not isinstance(data, dict):
        raise DamagedFile(f"{path}: not a transfer_copy.py result")
    found = data.get("measurements")
    if found is None:
        found = [{key: value for key, value in data.items()}] if "results" in data else []
    try:
        for item in found:
            if not all(key in item for key in TRANSFER_KEY):
                raise KeyError
            for row in item["results"]:
                int(row["T"]), float(row["accuracy"])
    except (KeyError, TypeError, ValueError):
        raise DamagedFile(f"{path}: not a transfer_copy.py result") from None
    return list(found)


def transfer_key(measurement):
    """Which checkpoint and test set a measurement is of; the test set's random streams
    (``rng``) count too, a measurement from before ``--rng`` being of the kit's."""
    return tuple(measurement.get(key) for key in TRANSFER_KEY) + (
        measurement.get("rng", "kit"),)


def record_transfer(path, measurement):
    """Add ``measurement`` to the transfer.json at ``path``, keeping every earlier one: rows of
    the same checkpoint and test set (``TRANSFER_KEY``) are merged by delay (the new rows win),
    any other measurement stays as it was. The top-level fields repeat the measurement just
    made, as the first format of the file had them. Returns the merged measurement."""
    previous = []
    if os.path.exists(path):
        try:
            previous = transfer_measurements(read_json(path), path)
        except (OSError, ValueError, DamagedFile):
            raise UsageError(f"{path} exists but is not a readable transfer_copy.py result; it "
                             "is left as it is: move it away to measure again") from None
    kept = []
    for item in previous:
        if transfer_key(item) == transfer_key(measurement):
            rows = {row["T"]: row for row in item["results"]}
            rows.update({row["T"]: row for row in measurement["results"]})
            measurement = dict(measurement, results=[rows[t] for t in sorted(rows)])
        else:
            kept.append(item)
    kept.append(measurement)
    write_json(path, dict(measurement, measurements=kept))
    return measurement


def now_iso():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def write_config(folder, task, args, argv, device, numerics=None):
    """``config.json``: the exact arguments, the command line, versions, the numerics
    fingerprint (``numerics.fingerprint``) and start time."""
    import tensorboardX
    write_json(os.path.join(folder, "config.json"), {
        "task": task,
        "args": vars(args),
        "argv": list(argv),
        "device": str(device),
        "numerics": numerics,
        "started": now_iso(),
        "resumed": [],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "tensorboardX": tensorboardX.__version__},
    })


def note_resume(folder, argv, device, numerics=None, changes=(), position=None):
    """Add a ``resumed`` entry to config.json: when, the command line, the device and numerics
    fingerprint of this process, where in the run it took over (``position``: ``epoch`` done,
    ``epoch_iteration`` into the next, global ``iteration``), so that a reader can tell which
    epochs each machine computed, and what changed in the arithmetic, if anything."""
    path = os.path.join(folder, "config.json")
    config = read_json(path) if os.path.exists(path) else {}
    entry = {"at": now_iso(), "argv": list(argv), "device": str(device), "numerics": numerics,
             **(position or {})}
    if changes:
        entry["arithmetic_changed"] = list(changes)
    config.setdefault("resumed", []).append(entry)
    write_json(path, config)


def last_segment(config):
    """The device and numerics fingerprint of the latest process that trained in a run, from
    its config.json (the last ``resumed`` entry, else the start)."""
    entries = [config] + list(config.get("resumed") or [])
    last = entries[-1]
    return last.get("device"), last.get("numerics")


def write_state(folder, state, **fields):
    """``state.json``: what the run is doing (``running``) or how it ended (``paused``,
    ``stopped``, ``failed``, ``done``), with the epoch it is at and a message."""
    write_json(os.path.join(folder, "state.json"),
               dict(fields, state=state, pid=os.getpid(), at=now_iso()))


# ----------------------------------------------------------------------------- metrics.csv

def metrics_rows(history, columns=None):
    """metrics.csv's rows (dicts over ``METRICS_COLUMNS``, '' where not measured) from a run's
    per-epoch history (as kept in last.pt). ``columns``: another table's {column: history key}
    (``CAPTION_COLUMNS``); None is the epoch table of copying and pixel MNIST."""
    keys = _HISTORY_KEYS if columns is None else columns
    rows = []
    for record in history:
        row = {}
        for column in keys:
            value = record.get(keys[column], "")
            row[column] = value if isinstance(value, (int, str)) else repr(float(value))
        rows.append(row)
    return rows


def write_metrics(folder, history, columns=None):
    """Rewrite metrics.csv from the whole history: it always equals what last.pt holds (a
    resume rewrites it from the restored history, so a row written after the last checkpoint
    disappears with the epoch it belonged to). ``columns`` as in ``metrics_rows``."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRICS_COLUMNS if columns is None else
                            tuple(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(metrics_rows(history, columns))
    atomic_write(os.path.join(folder, "metrics.csv"),
                 lambda handle: handle.write(text.getvalue().encode()))


class DamagedFile(Exception):
    """A run file that exists but cannot be read as what it should be."""


def evaluation_table(fieldnames):
    """Whether a metrics.csv header is that of an iteration-keyed table (captioning's
    ``CAPTION_COLUMNS``: a row per evaluation) rather than the epoch table."""
    fields = set(fieldnames or ())
    return {"epoch", "iteration", "val_loss"} <= fields and "valid_accuracy" not in fields


def read_metrics(path):
    """metrics.csv as a list of dicts of numbers (None where a cell is empty). A file that is
    not such a table raises ``DamagedFile`` naming the file and the line.

    The epoch table (copying, pixel MNIST) must have ``epoch`` and ``valid_accuracy`` and one
    row per epoch, 1, 2, 3...; an iteration-keyed table (``evaluation_table``: captioning) must
    have whole, strictly increasing iterations and whole epochs that never go back."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            keyed = evaluation_table(reader.fieldnames)
            if reader.fieldnames is None or not (keyed or {"epoch", "valid_accuracy"} <= set(
                    reader.fieldnames)):
                raise DamagedFile(f"{path}: no epoch / valid_accuracy header")
            rows = []
            for line, raw in enumerate(reader, start=2):
                row = {}
                for key, value in raw.items():
                    if key is None or value is None:
                        raise DamagedFile(f"{path}, line {line}: wrong number of fields")
                    try:
                        row[key] = float(value) if value != "" else None
                    except ValueError:
                        raise DamagedFile(f"{path}, line {line}: {key} is {value!r}, "
                                          "not a number") from None
                if row.get("epoch") is None or row["epoch"] != int(row["epoch"]):
                    raise DamagedFile(f"{path}, line {line}: no epoch number")
                row["epoch"] = int(row["epoch"])
                if keyed:
                    _check_evaluation_row(path, line, row, rows[-1] if rows else None)
                    rows.append(row)
                    continue
                if rows and row["epoch"] != rows[-1]["epoch"] + 1:
                    raise DamagedFile(f"{path}, line {line}: epoch {row['epoch']} follows "
                                      f"epoch {rows[-1]['epoch']}")
                rows.append(row)
            return rows
    except (UnicodeDecodeError, csv.Error) as err:
        raise DamagedFile(f"{path}: not a CSV table ({err})") from None


def _check_evaluation_row(path, line, row, previous):
    """An iteration-keyed row (``read_metrics``): a whole iteration after the previous row's,
    an epoch count that does not go back."""
    iteration = row.get("iteration")
    if iteration is None or iteration != int(iteration):
        raise DamagedFile(f"{path}, line {line}: no iteration number")
    row["iteration"] = int(iteration)
    if previous is not None:
        if row["iteration"] <= previous["iteration"]:
            raise DamagedFile(f"{path}, line {line}: iteration {row['iteration']} follows "
                              f"iteration {previous['iteration']}")
        if row["epoch"] < previous["epoch"]:
            raise DamagedFile(f"{path}, line {line}: epoch {row['epoch']} follows epoch "
                              f"{previous['epoch']}")


def evaluation_epoch_seconds(rows, last=10):
    """The pace of a run with an iteration-keyed metrics.csv, in seconds per epoch, roughly:
    the median seconds per iteration over its ``last`` evaluation intervals, times the
    iterations an epoch takes as the latest row that has finished an epoch suggests (its
    iteration / its epochs: an evaluation made within the next epoch overstates it by at most
    that part of an epoch). None before an epoch and two points are known."""
    points = [(0, 0.0)] + [(row["iteration"], row.get("elapsed_s")) for row in rows]
    spans = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(points[:-1], points[1:])
             if a[1] is not None and b[1] is not None and b[0] > a[0]][-last:]
    done = [row for row in rows if row["epoch"] >= 1]
    if not spans or not done:
        return None
    return float(np.median(spans)) * done[-1]["iteration"] / done[-1]["epoch"]


def epoch_seconds(rows, last=10):
    """A run's pace: the median training seconds per epoch over its ``last`` finished epochs
    (``metrics.csv`` rows; ``elapsed_s`` counts training time only, across resumes), or None
    before the first epoch. A median, so one epoch slowed by a busy machine moves it little."""
    times = [row.get("elapsed_s") for row in rows]
    spans = [b - a for a, b in zip([0.0] + times[:-1], times)
             if a is not None and b is not None][-last:]
    return float(np.median(spans)) if spans else None


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, payload):
    """``torch.save`` a dict of tensors and plain values atomically (temp file, then
    ``os.replace``), tagged with our format so that loading can tell it from other files."""
    payload = dict(payload, format=CHECKPOINT_FORMAT)
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path, task=None):
    """Load one of our checkpoints with ``weights_only=True`` on the CPU.

    A missing file, a file that is not a checkpoint (or is truncated), one of another format or
    of another ``task``: each is a ``UsageError`` with one clear line.
    """
    return read_checkpoint(path, task)[0]


def model_path(model_dir, written_when):
    """The checkpoint ``--model-dir`` names: the file itself, or a run folder's best_model.pt
    (``written_when`` says when a run writes it, for the one-line error where it has not)."""
    if os.path.isdir(model_dir):
        path = os.path.join(model_dir, "best_model.pt")
        if not os.path.isfile(path):
            raise UsageError(f"{model_dir} holds no best_model.pt ({written_when})")
        return path
    if not os.path.exists(model_dir):
        raise UsageError(f"--model-dir {model_dir} does not exist")
    return model_dir


def read_checkpoint(path, task=None):
    """``(checkpoint, sha256)``: a checkpoint as ``load_checkpoint`` loads it, and the SHA-256 of
    the very bytes it was loaded from. The file is read once: a run training in the folder may
    replace ``best_model.pt`` at any moment, and hashing the file again later would tie a result
    to a checkpoint it never measured."""
    if not os.path.isfile(path):
        raise UsageError(f"no checkpoint at {path}")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for foreign or truncated files
        raise UsageError(f"{path} is not a readable h-detach checkpoint (a truncated file, or "
                         "another kind of file)") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path} is not an h-detach checkpoint of this kit")
    if task is not None and payload.get("task") != task:
        raise UsageError(f"{path} is a checkpoint of the {payload.get('task')!r} task, "
                         f"not of {task!r}")
    return payload, hashlib.sha256(data).hexdigest()


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


# ----------------------------------------------------------------------------- the lock

class FolderLock:
    """An exclusive ``flock`` on ``FOLDER/.lock``, held by the one process that trains in the
    folder for its whole life. The kernel releases it when the process ends, however it ends
    (kill -9 included), so a stale lock file never blocks anyone. The holder writes its pid
    into the file so that a refused process can name it."""

    def __init__(self, folder):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd = None
        self._made_folder = self._made_file = self._claimed = False

    def acquire(self, retries=10):
        try:
            self._made_folder = not os.path.isdir(self.folder)
            self._made_file = not os.path.exists(self.path)
            os.makedirs(self.folder, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UsageError(f"cannot use --save-dir {self.folder}: {err.strerror}") from None
        # A few short retries: a tool that only looks (holder_pid) holds a shared lock for an
        # instant, and must not make a starting run fail.
        for attempt in range(retries + 1):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES) or attempt == retries:
                    os.close(fd)
                    if err.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    pid = _read_pid(self.path)
                    holder = f"pid {pid}" if pid and _alive(pid) else "another process"
                    raise UsageError(f"{self.folder} is in use by {holder}, which is training "
                                     "in it; wait for it to end or stop it first") from None
                time.sleep(0.05)
        self._fd = fd
        return self

    def claim(self):
        """Write our pid into the lock file, once the run really starts (so that a process
        refused on a user mistake leaves even the lock file as it was)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        self._claimed = True

    def release(self):
        if self._fd is None:
            return
        if self._made_file and not self._claimed:
            # The run stopped (on a user mistake) before it started: leave no trace, not even
            # the lock file or a folder made for it.
            os.remove(self.path)
            if self._made_folder and not os.listdir(self.folder):
                os.rmdir(self.folder)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None and not issubclass(
                    exc_type, (UsageError, NothingToDo, KeyboardInterrupt, SystemExit)):
                self._record_crash(exc)
        finally:
            self.release()
        return False

    def _record_crash(self, exc):
        """A run that ended on an unexpected exception is marked ``failed`` with its last line,
        so that a tool reading the folder later can say why."""
        path = os.path.join(self.folder, "state.json")
        try:
            saved = read_json(path)
        except (OSError, ValueError):
            return
        if saved.get("state") == "running" and saved.get("pid") == os.getpid():
            lines = str(exc).strip().splitlines()
            message = f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
            write_json(path, dict(saved, state="failed", message=message, at=now_iso()))


def _read_pid(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_pid(folder):
    """The pid of the process training in ``folder`` now, or None when none is."""
    path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        pid = _read_pid(path)
        return pid if pid and _alive(pid) else -1
    finally:
        os.close(fd)  # also drops the shared lock if it was taken
    return None


# ----------------------------------------------------------------------------- a training run

def _flag_name(parser, dest):
    """The script's own first name for the flag that sets ``dest`` (caption_train.py's epochs
    are --max-epochs, copying.py's --n-epochs), for messages."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return action.option_strings[0]
    return f"--{dest.replace('_', '-')}"


def parse_run_args(parser, argv, task):
    """Parse a training script's arguments and take the run folder's lock.

    Returns ``(args, last, lock)``: with ``--resume`` the stored run's arguments are the base
    (flags left out keep their stored values; flags the run predates take the value it had in
    effect, ``PREDATED_VALUES``, or else their defaults) and
    ``last`` is its ``last.pt``. The caller keeps ``lock`` for as long as it trains."""
    args = parser.parse_args(argv)
    if os.path.exists(args.save_dir) and not os.path.isdir(args.save_dir):
        raise UsageError(f"--save-dir {args.save_dir} exists and is not a folder")
    # Take the lock before looking at the folder: a second process aimed at a folder another
    # one trains in is told who holds it, and touches nothing.
    lock = FolderLock(args.save_dir).acquire()
    try:
        check_run_dir(args.save_dir, overwrite=args.overwrite, resume=args.resume)
        last = None
        if args.resume:
            last = load_checkpoint(os.path.join(args.save_dir, "last.pt"), task=task)
            defaults = {key: parser.get_default(key) for key in vars(args)}
            stored = {**defaults, **PREDATED_VALUES, **last["config"]}
            args = merge_resume_args(args, explicit_keys(parser, argv), stored)
            if last["epoch"] >= args.n_epochs and \
                    os.path.exists(os.path.join(args.save_dir, "results.json")):
                raise NothingToDo(f"the run in {args.save_dir} is complete ({last['epoch']} "
                                  f"epoch{'' if last['epoch'] == 1 else 's'}); nothing to resume")
            if args.until_epoch is not None and last["epoch"] >= args.until_epoch and \
                    last["epoch"] < args.n_epochs:
                raise NothingToDo(f"the run in {args.save_dir} is at epoch {last['epoch']} of "
                                  f"{args.n_epochs}, already at or past --until-epoch "
                                  f"{args.until_epoch}; nothing to do")
        if args.until_epoch is not None and args.until_epoch > args.n_epochs:
            raise UsageError(f"--until-epoch {args.until_epoch} is past the run's last epoch "
                             f"({_flag_name(parser, 'n_epochs')} {args.n_epochs}); give at most "
                             f"{args.n_epochs}, or leave it out to train to the end")
        warn_if_annealing_dominates(args)
    except BaseException:
        lock.release()
        raise
    return args, last, lock


def set_threads(threads):
    """``--threads N``: torch's CPU threads for this process, before anything is computed (and
    before the numerics fingerprint records the count). None leaves torch's default."""
    if threads:
        torch.set_num_threads(threads)


def training_main(parser, argv, task, run):
    """A training script's ``main``: parse ``argv`` and take the run folder's lock
    (``parse_run_args``), resolve ``--device`` once, and call ``run(args, argv, last, device,
    lock)`` with denormals as ``--flush-denormal`` asks; a user's mistake is one line."""
    def start():
        args, last, lock = parse_run_args(parser, argv, task)
        with lock:
            set_threads(getattr(args, "threads", None))
            device = resolve_device(args.device)
            with denormals_flushed(args.flush_denormal, device):
                return run(args, argv, last, device, lock)
    return report_errors(start)


class TrainingRun:
    """The bookkeeping of one training run, shared by the scripts: run folder, config.json,
    metrics.csv, state.json, TensorBoard log, ``last.pt`` / ``best_model.pt``, exact resume and
    clean stops.

    The script owns its data, loss and evaluation; it advances ``epoch``,
    ``epoch_iteration`` (iterations done in the current epoch), ``iteration`` (global, the
    TensorBoard step of per-iteration scalars) and ``epoch_loss_sum``, and stores any extra
    state it needs to resume (a permutation, an epoch's order) in ``extra``.

    What copying and pixel MNIST use: ``end_epoch`` after every epoch (a metrics row, the best
    by accuracy, last.pt) and ``step`` with gradient-norm clipping at ``args.clip``. For a
    task that evaluates every N iterations instead (captioning), all optional and without
    effect on the others' files: ``clip`` (a callable ``clip(net)`` applied between backward
    and the optimiser step in place of the norm clipping), ``columns`` (metrics.csv's
    {column: history key}, ``CAPTION_COLUMNS``), ``on_save`` (a callable run before every
    last.pt is written, to put state the script keeps elsewhere, a data loader's position,
    into ``extra``), ``step(..., save=False)`` with ``checkpoint_due``, ``advance_epoch`` (an
    epoch ended, no row) and ``evaluation`` (a metrics row at any iteration, the best by a
    score).
    """

    def __init__(self, task, args, net, optimizer, generators, model_config, extra=None,
                 lock=None, clip=None, columns=None, on_save=None):
        self.task, self.args, self.folder = task, args, args.save_dir
        self.lock = lock
        self.net, self.optimizer, self.generators = net, optimizer, generators
        self.model_config = model_config
        self.extra = dict(extra or {})
        self.clip, self.columns, self.on_save = clip, columns, on_save
        self.epoch = self.epoch_iteration = self.iteration = 0
        self.epoch_loss_sum = 0.0
        self.best = {"accuracy": None, "epoch": None}
        self.history = []
        self.wall_time = 0.0
        self.log = None
        self._clock = None

    def open(self, argv, device, last=None):
        """Start the run (clear the folder, write config.json) or restore it from ``last``."""
        self.numerics = fingerprint(getattr(self.args, "numerics", "portable"), device)
        warn_in_process(self.numerics)
        if last is None:
            clear_run_dir(self.folder)
            write_config(self.folder, self.task, self.args, argv, device, self.numerics)
        else:
            self.net.load_state_dict(last["model"])
            self.optimizer.load_state_dict(last["optimizer"])
            restore_rng_states(last["rng"], self.generators)
            for key in ("epoch", "epoch_iteration", "iteration", "epoch_loss_sum", "best",
                        "history", "wall_time", "extra"):
                setattr(self, key, last[key])
            rewind_event_log(self.folder, last["events"])
            changes = self.arithmetic_changes(last, device)
            if changes:
                print(f"warning: resuming {self.folder} on other arithmetic ("
                      + "; ".join(changes) + "): the continuation is not bit-identical to an "
                      "uninterrupted run", file=sys.stderr, flush=True)
            note_resume(self.folder, argv, device, self.numerics, changes,
                        {"epoch": self.epoch, "epoch_iteration": self.epoch_iteration,
                         "iteration": self.iteration})
        if self.lock is not None:
            self.lock.claim()
        write_metrics(self.folder, self.history, self.columns)
        self.log = EventLog(self.folder)
        self._clock = time.perf_counter()
        self.set_state("running")
        return self

    @property
    def target_epoch(self):
        """The epoch count this process trains to: ``--until-epoch`` when it comes first."""
        until = getattr(self.args, "until_epoch", None)
        return self.args.n_epochs if until is None else min(until, self.args.n_epochs)

    def elapsed(self):
        return self.wall_time + time.perf_counter() - self._clock

    def set_state(self, state, message=None):
        fields = {"epoch": self.epoch, "n_epochs": self.args.n_epochs,
                  "iteration": self.iteration}
        if message:
            fields["message"] = message
        write_state(self.folder, state, **fields)

    def arithmetic_changes(self, last, device):
        """What differs between the arithmetic that wrote ``last`` and this process's. The
        checkpoint's fingerprint says it; a run made before fingerprints existed can still
        tell its device (config.json), and is otherwise resumed quietly (nothing to compare)."""
        before = last.get("numerics")
        if before:
            return arithmetic_changes(before, self.numerics)
        config_path = os.path.join(self.folder, "config.json")
        old_device = last_segment(read_json(config_path))[0] if os.path.exists(config_path) \
            else None
        if old_device and torch.device(old_device).type != torch.device(device).type:
            return [f"device_type: {torch.device(old_device).type} -> "
                    f"{torch.device(device).type}"]
        return []

    def checkpoint_fields(self):
        return {"task": self.task, "config": vars(self.args), "model_config": self.model_config,
                "model": self.net.state_dict(), "numerics": self.numerics}

    def save_last(self):
        """``last.pt``: everything an exact resume needs, at the current iteration (``on_save``
        first brings ``extra`` up to date)."""
        if self.on_save is not None:
            self.on_save()
        save_checkpoint(os.path.join(self.folder, "last.pt"), dict(
            self.checkpoint_fields(), kind="last", optimizer=self.optimizer.state_dict(),
            epoch=self.epoch, epoch_iteration=self.epoch_iteration, iteration=self.iteration,
            epoch_loss_sum=self.epoch_loss_sum, best=self.best, history=self.history,
            wall_time=self.elapsed(), extra=self.extra, rng=rng_states(self.generators),
            events=self.log.position()))

    def end_epoch(self, record, accuracy, best_fields=None, strict=False):
        """Close the epoch: log ``record`` (a dict of scalars, TensorBoard step = epochs done),
        keep the best model when ``accuracy`` is at least the best so far (``best_fields`` go
        into ``best_model.pt`` and ``best``), add the epoch to metrics.csv, then write
        ``last.pt``. Returns whether it was a new best. ``strict``: only a strictly higher
        accuracy is a new best (pixel MNIST's rule; the copying task keeps the first, at-least
        rule)."""
        done = self.epoch + 1
        for tag, value in record.items():
            self.log.scalar(tag, value, done)
        best = self.best["accuracy"]
        improved = best is None or (accuracy > best if strict else accuracy >= best)
        if improved:
            self.best = dict(best_fields or {}, accuracy=accuracy, epoch=done)
            save_checkpoint(os.path.join(self.folder, "best_model.pt"), dict(
                self.checkpoint_fields(), kind="best", **self.best))
        self.history.append(dict(record, epoch=done, iteration=self.iteration,
                                 elapsed_s=round(self.elapsed(), 1)))
        self.epoch, self.epoch_iteration, self.epoch_loss_sum = done, 0, 0.0
        write_metrics(self.folder, self.history, self.columns)
        self.save_last()
        return improved

    def advance_epoch(self):
        """Count an epoch that ended without a metrics row (captioning: the loader's batch
        wrapped the training split; its evaluations come every N iterations instead). Nothing
        is written: the caller saves last.pt once the iteration's work is done."""
        self.epoch, self.epoch_iteration, self.epoch_loss_sum = self.epoch + 1, 0, 0.0

    def evaluation(self, record, score, best_fields=None, strict=True):
        """A metrics row at the current iteration (captioning: every ``--save-checkpoint-every``
        iterations): log ``record`` (TensorBoard step = ``iteration``), keep the model in
        best_model.pt when ``score`` beats the best so far (strictly, the branch's
        ``current_score > best_val_score``; ``strict=False``: at least as good; a non-finite
        score never), add the row (with ``epoch`` = epochs done, ``iteration``, ``elapsed_s``)
        to metrics.csv, then write last.pt. ``best`` becomes ``best_fields`` with ``score``,
        ``epoch`` and ``iteration``. Returns whether it was a new best."""
        for tag, value in record.items():
            self.log.scalar(tag, value, self.iteration)
        best = self.best.get("score")
        improved = math.isfinite(score) and (
            best is None or (score > best if strict else score >= best))
        if improved:
            self.best = dict(best_fields or {}, score=score, epoch=self.epoch,
                             iteration=self.iteration)
            save_checkpoint(os.path.join(self.folder, "best_model.pt"), dict(
                self.checkpoint_fields(), kind="best", **self.best))
        self.history.append(dict(record, epoch=self.epoch, iteration=self.iteration,
                                 elapsed_s=round(self.elapsed(), 1)))
        write_metrics(self.folder, self.history, self.columns)
        self.save_last()
        return improved

    def checkpoint_due(self, stop):
        """Whether last.pt is due now: a stop signal came, or ``--checkpoint-every`` says so."""
        every = self.args.checkpoint_every
        return bool(stop.requested or (every and self.iteration % every == 0))

    def step(self, loss, stop, save=True):
        """One optimiser step on the batch ``loss``, as the authors' scripts take it: stop on a
        non-finite loss, backward, clip (``args.clip`` <= 0: no clipping; or the run's ``clip``
        callable), Adam; then count, log ``train/loss`` and write ``last.pt`` when
        ``checkpoint_due``. ``save=False`` leaves that to the caller (who has more to do at this
        iteration first, and then asks ``checkpoint_due``). Returns the loss value."""
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            message = (f"training loss became {loss_value} at epoch {self.epoch + 1}, iteration "
                       f"{self.iteration + 1}; the run is stopped and last.pt holds the last "
                       "good state (try a lower --lr or gradient clipping)")
            self.set_state("failed", message)
            raise RunStopped(message)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip is not None:
            self.clip(self.net)
        elif self.args.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.args.clip)
        self.optimizer.step()
        self.iteration += 1
        self.epoch_iteration += 1
        self.epoch_loss_sum += loss_value
        self.log.scalar("train/loss", loss_value, self.iteration)
        if save and self.checkpoint_due(stop):
            self.save_last()
        return loss_value

    def stop(self, signame, command):
        """After a stop signal (last.pt already saved by ``step``): record it and say how to
        resume."""
        self.set_state("stopped", f"{signame} at epoch {self.epoch + 1}, iteration "
                                  f"{self.iteration}")
        self.log.close()
        return (f"{signame} received: stopped at epoch {self.epoch + 1}, iteration "
                f"{self.iteration}; last.pt saved in {self.folder}. Resume with:\n"
                f"  {command} --save-dir {self.folder} --resume")

    def pause(self, command):
        """Reached ``--until-epoch`` before the planned end: last.pt is saved at the epoch's end,
        so resuming trains the remaining epochs exactly as one uninterrupted run would."""
        self.set_state("paused", f"--until-epoch {self.epoch}")
        self.log.close()
        return (f"paused at epoch {self.epoch} of {self.args.n_epochs} (--until-epoch); last.pt "
                f"saved in {self.folder}. Continue with:\n"
                f"  {command} --save-dir {self.folder} --resume")

    def finish(self, results):
        """Write ``results.json`` (with final epoch and wall time) and close the log."""
        results = dict(results, final_epoch=self.epoch, wall_time_s=round(self.elapsed(), 1),
                       numerics=self.numerics)
        write_json(os.path.join(self.folder, "results.json"), results)
        self.set_state("done")
        self.log.close()
        return results


# ----------------------------------------------------------------------------- reading runs

class RunFolder:
    """A run folder as the tools that read runs see it (``sweep.py``, ``report.py``): its
    config, metrics, results and state, without loading a checkpoint or taking the lock."""

    def __init__(self, path):
        self.path = path

    def _json(self, name):
        path = os.path.join(self.path, name)
        if not os.path.isfile(path):
            return None
        try:
            return read_json(path)
        except (OSError, ValueError) as err:
            raise DamagedFile(f"{path}: not readable JSON ({err})") from None

    def has(self, name):
        return os.path.isfile(os.path.join(self.path, name))

    def config(self):
        return self._json("config.json")

    def results(self):
        return self._json("results.json")

    def transfer(self):
        return self._json("transfer.json")

    def data_check(self):
        """data.json (pixel MNIST): whether the run's data is the official MNIST."""
        return self._json("data.json")

    def state_file(self):
        return self._json("state.json")

    def metrics(self):
        path = os.path.join(self.path, "metrics.csv")
        return read_metrics(path) if os.path.isfile(path) else []

    def holder_pid(self):
        return holder_pid(self.path)

    def numerics(self, config=None):
        """The numerics fingerprints of every process that trained in the run (config.json:
        the start, then each resume), ``None`` for a process that predates fingerprints."""
        config = self.config() if config is None else config
        if not config:
            return []
        return [entry.get("numerics") for entry in [config] + list(config.get("resumed") or [])]

    def numerics_label(self, config=None):
        """How the run's arithmetic reads in a table: ``portable (AVX2)``; ``unrecorded`` for a
        run older than fingerprints (``unrecorded, then portable (AVX2)`` once resumed with
        one); ``mixed: a, b`` when its processes differed in it."""
        labels = []
        for record in self.numerics(config):
            label = describe_numerics(record)
            if label not in labels:
                labels.append(label)
        if len(labels) <= 1:
            return labels[0] if labels else "unrecorded"
        if len(labels) == 2 and labels[0] == "unrecorded":
            return f"unrecorded, then {labels[1]}"
        return "mixed: " + ", ".join(labels)

    def numerics_by_epoch(self, epochs, config=None):
        """Which arithmetic computed which epochs, where the run's processes differed in it and
        every resume recorded where it took over: ``epochs 1-6: unrecorded; 7-100: portable
        (AVX2, AMD); 101-123: portable (AVX2, Intel)`` (an epoch a stop split between two
        processes counts for both: ``101 (from iteration 521)``). None where the label alone
        says it all (one arithmetic) or where a resume predates the record."""
        config = self.config() if config is None else config
        if not config or len(set(map(describe_numerics, self.numerics(config)))) <= 1:
            return None
        entries = [config] + list(config.get("resumed") or [])
        if any(entry.get("epoch") is None for entry in entries[1:]):
            return None
        spans = []  # [first epoch, its iteration or 0, label]
        for entry, label in zip(entries, map(describe_numerics, self.numerics(config))):
            first = (entry.get("epoch") or 0) + 1
            part = entry.get("epoch_iteration") or 0
            if spans and spans[-1][2] == label:
                continue
            spans.append([first, part, label])
        texts = []
        for i, (first, part, label) in enumerate(spans):
            last = spans[i + 1][0] - (0 if spans[i + 1][1] else 1) if i + 1 < len(spans) \
                else epochs
            start = f"{first} (from iteration {part})" if part else f"{first}"
            texts.append(f"{start}-{last}: {label}" if last > first else f"{start}: {label}")
        return "epochs " + "; ".join(texts)

    def status(self):
        """A dict: ``state`` (one of not started, running, paused, stopped, interrupted,
        failed, done), ``epochs`` done, ``planned`` epochs, ``best_valid`` accuracy so far
        (None before the first epoch), ``epoch_s`` (its pace, see ``epoch_seconds``) and
        ``message``.

        A run with an iteration-keyed metrics.csv (captioning, ``evaluation_table``): its
        ``best_valid`` is the best validation CIDEr (None without language evaluation), its
        ``epochs`` the later of the last row's and state.json's count (epochs end between
        evaluations), its ``epoch_s`` ``evaluation_epoch_seconds``."""
        config = self.config() if self.has("config.json") else None
        planned = (config or {}).get("args", {}).get("n_epochs")
        rows = self.metrics()
        saved = self.state_file() or {}
        if rows and evaluation_table(rows[0]):
            scores = [row.get("CIDEr") for row in rows if row.get("CIDEr") is not None]
            epochs = max(rows[-1]["epoch"], int(saved.get("epoch") or 0))
            info = {"epochs": epochs, "planned": planned,
                    "best_valid": max(scores) if scores else None, "best_kind": "CIDEr",
                    "epoch_s": evaluation_epoch_seconds(rows), "message": None}
        else:
            epochs = rows[-1]["epoch"] if rows else 0
            if not rows and (config or {}).get("task") == "captioning":
                epochs = int(saved.get("epoch") or 0)  # epochs done before a first evaluation
            accuracies = [row["valid_accuracy"] for row in rows
                          if row["valid_accuracy"] is not None]
            info = {"epochs": epochs, "planned": planned,
                    "best_valid": max(accuracies) if accuracies else None,
                    "best_kind": "accuracy", "epoch_s": epoch_seconds(rows), "message": None}
        pid = self.holder_pid()
        if pid is not None:
            state = "running"
            info["message"] = f"pid {pid}" if pid > 0 else None
        elif self.has("results.json"):
            state = "done"
        elif saved.get("state") == "failed":
            state = "failed"
            info["message"] = saved.get("message")
        elif self.has("last.pt"):
            # A process that died without saying so (kill -9, a crash, a power cut) left
            # state.json at "running": its last.pt is from the last checkpoint.
            state = saved.get("state") if saved.get("state") in ("paused", "stopped") \
                else "interrupted"
            info["message"] = saved.get("message")
        elif config is not None:
            state = "interrupted"
            info["message"] = "no checkpoint yet"
        else:
            state = "not started"
        info["state"] = state
        return info
