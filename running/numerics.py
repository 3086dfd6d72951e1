"""Which arithmetic a run uses, and its record: portable CPU kernels and the numerics fingerprint.

The copying task turns a last-bit difference into a different run within a few epochs, so a
seed only names a run if the arithmetic is pinned too. On x86-64, torch picks its vectorised
CPU kernels (ATen) at the first operator call by the best instruction set present: AVX-512
machines and AVX2 machines then sum in different orders and, from the same seed, train
different runs. Measured: ``copying.py --T 100 --seed 3`` gives 17.304 % after epoch 1 with
AVX2 kernels and 17.39 % with AVX-512 ones, and the runs part for good after that.

``--numerics portable`` (the default) pins ATen's kernels, MKL's code path and oneDNN's ISA to
AVX2 before torch is imported, so a CPU run is bit-identical on x86-64 machines of one CPU
vendor with AVX2 or AVX-512, the pinned torch and one thread count (and on the AVX2 machines
that made ``results/`` it changes nothing). Not across vendors: MKL's AVX2 branch sums in
another order on an Intel Xeon than on an AMD EPYC (measured, also with
``MKL_CBWR=AVX2,STRICT``), so the fingerprint records the vendor, and a resume on the other
vendor or with another thread count says it is not bit-identical.
``--numerics native`` keeps the machine's fastest kernels and the environment as the
user set it. The choice is read from the command line by ``pin_before_torch`` in a script's
``__main__`` block, before its first ``import torch``: torch reads these settings once, when it
loads, so a process that already runs torch (a test calling ``main(argv)``) keeps what it has,
and ``fingerprint`` records what actually runs, never what was asked for.

Nothing here runs on import, and this module never imports torch at module level.
"""
import argparse
import contextlib
import json
import os
import platform
import sys

MODES = ("portable", "native")
DEFAULT_MODE = "portable"
# The environment of a portable CPU run. ATen falls back to the best level the CPU has when it
# lacks AVX2, and the fingerprint then says so; MKL's conditional-numerical-reproducibility
# branch is only named where the CPU is known to have AVX2 (see ``portable_environment``).
ATEN_LEVEL = "avx2"
MKL_BRANCH = "AVX2"
ONEDNN_ISA = "AVX2"
# Where a portable pin notes the user's own values of the variables it set (JSON).
PINNED_VAR = "HDETACH_NUMERICS_PINNED"
# cuBLAS's reproducible-GEMM workspace, read when CUDA starts (harmless on a CPU machine).
CUBLAS_WORKSPACE = ":4096:8"
# What must agree for a resumed run to continue the same arithmetic; on the CPU also the vendor
# and the thread count (``arithmetic_changes``). The CPU model is recorded but not compared:
# pinned kernels give the same numbers on CPUs of one vendor with AVX2 at one thread count.
# MKL's AVX2 branch promises no more: on an Intel Xeon 1 and 2 threads sum in other orders
# (on an AMD EPYC they happened to agree); measured, tests/test_numerics.py.
ARITHMETIC_KEYS = ("mode", "device_type", "aten_capability", "mkl_cbwr", "torch", "gpu_name",
                   "tf32")
# /proc/cpuinfo's vendor_id, and the word a CPU's model name carries, per vendor.
VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}


def mode_from_argv(argv):
    """The ``--numerics`` value of a command line, without parsing anything else (the parser
    proper checks it later and reports a bad value in one line)."""
    mode = DEFAULT_MODE
    for index, word in enumerate(argv):
        if word == "--numerics" and index + 1 < len(argv):
            mode = argv[index + 1]
        elif word.startswith("--numerics="):
            mode = word.split("=", 1)[1]
    return mode


def _cpuinfo(*fields):
    """The value of the first /proc/cpuinfo line naming one of ``fields`` (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(fields):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags():
    """The CPU's feature flags where the system lists them (Linux), else an empty set."""
    return set((_cpuinfo("flags", "Features") or "").split())


def cpu_model():
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor_here():
    """This machine's CPU vendor (``Intel``, ``AMD``, another vendor_id as it is), or None."""
    vendor = _cpuinfo("vendor_id")
    return VENDORS.get(vendor, vendor) if vendor else cpu_vendor({"cpu": cpu_model()})


def cpu_vendor(record):
    """The CPU vendor a fingerprint names: its ``cpu_vendor``, or for a record written before
    that key existed the vendor its CPU model name carries; None when neither tells."""
    if not record:
        return None
    if record.get("cpu_vendor"):
        return record["cpu_vendor"]
    model = record.get("cpu") or ""
    return next((name for name in VENDORS.values() if name.lower() in model.lower()), None)


def is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def portable_environment():
    """The environment variables portable mode sets on this machine (empty off x86-64)."""
    if not is_x86_64():
        return {}
    env = {"ATEN_CPU_CAPABILITY": ATEN_LEVEL, "ONEDNN_MAX_CPU_ISA": ONEDNN_ISA}
    if "avx2" in cpu_flags():
        env["MKL_CBWR"] = MKL_BRANCH
    return env


def pin_before_torch(argv, environ=None):
    """Set the environment of ``--numerics`` (read from ``argv``) for the torch this process is
    about to import. Portable mode overrides a user's own ATen/MKL/oneDNN settings (they would
    make the run another run) and notes what they were in ``PINNED_VAR``; native mode leaves
    the user's settings alone, and undoes a pin it inherited from a portable parent process
    (``bench.py`` times both modes in child processes). Returns the mode."""
    environ = os.environ if environ is None else environ
    mode = mode_from_argv(argv)
    environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    inherited = json.loads(environ.pop(PINNED_VAR, "{}"))
    for name, value in inherited.items():  # the user's values before a parent's pin
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    if mode == "portable":
        pinned = portable_environment()
        environ[PINNED_VAR] = json.dumps({name: environ.get(name) for name in pinned})
        environ.update(pinned)
    return mode


def add_numerics_flag(parser):
    parser.flag("--numerics", choices=MODES, default=DEFAULT_MODE,
                help="portable (default): CPU kernels pinned to AVX2 on x86-64, so a seed gives "
                     "the same run bit for bit on x86-64 machines of one CPU vendor (Intel or "
                     "AMD) with AVX2 or AVX-512, at one thread count; "
                     "native: this machine's fastest kernels, whose numbers may differ from "
                     "another machine's after a few epochs (the same seed is then another run)")
    parser.flag("--flush-denormal", action=argparse.BooleanOptionalAction, default=False,
                help="CPU, one torch thread: treat denormal floats as zero (FTZ/DAZ); faster "
                     "where the LSTM's gradients vanish into denormals (up to 3-4x per step "
                     "on an Intel Xeon: trained copying, pixel MNIST), but other numbers "
                     "than the default, so another run of the same seed (default: off)")


@contextlib.contextmanager
def denormals_flushed(enabled, device):
    """Flush denormals to zero on this thread while the block runs (``--flush-denormal``),
    and restore IEEE denormals after it, so an in-process caller keeps its arithmetic. On a
    CUDA ``device`` it does nothing but say so (GPUs take denormals at full speed, and the
    flag cannot reach their kernels), so a CPU run resumed on a GPU needs no other flags.

    Why it exists: a trained copying LSTM's backward multiplies gradients that have vanished
    to 1e-38 and below, and Intel CPUs take a microcode assist on each denormal operand: the
    fast step of a copying T = 100 run at epoch 60 took twice as long as with flushing
    (measured on an Intel Xeon, AVX2 kernels; AMD EPYCs barely slow down). Why one thread:
    torch sets the flag on the calling thread only, and its OpenMP workers keep IEEE
    denormals (measured: with 2 threads only the main thread's half of an op was flushed),
    so a multi-threaded run would flush part of each op."""
    import torch

    from running.errors import UsageError
    if enabled and torch.device(device).type != "cpu":
        print(f"note: --flush-denormal is for CPU runs; this {torch.device(device).type} run "
              "keeps IEEE denormals", file=sys.stderr, flush=True)
        enabled = False
    if enabled:
        if torch.get_num_threads() != 1:
            raise UsageError(f"--flush-denormal needs one torch thread ({torch.get_num_threads()} "
                             "here; set OMP_NUM_THREADS=1): torch flushes denormals on its "
                             "main thread only, not in its worker threads")
        if not torch.set_flush_denormal(True):
            raise UsageError("--flush-denormal: this CPU cannot flush denormals (needs SSE3 "
                             "on x86-64)")
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(False)


def flushes_denormals(torch):
    """Whether this thread treats denormals as zero now: read from what the CPU does (torch
    has no getter), so the record says what ran, not what was asked for."""
    return bool(torch.tensor(1e-39, dtype=torch.float32).mul(1.0).item() == 0.0)


# ----------------------------------------------------------------------------- the record

def _mkl_version(torch):
    for line in torch.__config__.show().splitlines():
        if "Math Kernel Library" in line:
            return line.strip(" -").split(" for ")[0]
    return None


def fingerprint(mode, device):
    """What decided this process's arithmetic, as plain values for config.json, results.json
    and checkpoints. ``portable`` is whether portable mode's promise holds here (AVX2 kernels in
    force); ``note`` says why not, when it does not."""
    import numpy as np
    import torch
    device = torch.device(device)
    capability = torch.backends.cpu.get_cpu_capability()
    record = {
        "mode": mode,
        "device_type": device.type,
        "aten_capability": capability,
        "aten_requested": os.environ.get("ATEN_CPU_CAPABILITY"),
        "mkl": _mkl_version(torch) if torch.backends.mkl.is_available() else None,
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "threads": torch.get_num_threads(),
        "flush_denormal": flushes_denormals(torch),
        "cpu": cpu_model(),
        "cpu_vendor": cpu_vendor_here(),
        "machine": platform.machine(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "gpu_name": None,
        "tf32": None,
    }
    if mode == "portable":
        record["portable"] = capability == ATEN_LEVEL.upper()
        if not record["portable"]:
            record["note"] = (
                "no AVX2 kernels here (not an x86-64 CPU with AVX2): this run's CPU numbers "
                "match only machines of the same kind" if capability != "AVX512" and
                (not is_x86_64() or "avx2" not in cpu_flags()) else
                f"torch was loaded before the AVX2 pin ({capability} kernels in force): "
                "in-process use; start the script from the command line for portable numbers")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        record.update({
            "gpu_name": torch.cuda.get_device_name(index),
            "gpu_capability": f"{major}.{minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32": bool(torch.backends.cuda.matmul.allow_tf32
                         or torch.backends.cudnn.allow_tf32),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        })
    return record


def configure_cuda():
    """The settings that decide GPU arithmetic, made explicit: FP32 matmuls and convolutions
    (no TF32: the LSTM's recurrences are in FP32, and TF32 rounds its inputs to 10 bits),
    deterministic algorithms where torch has them (warn-only, so no run can crash on an op
    without one), cuDNN's autotuner off. CUBLAS_WORKSPACE_CONFIG is set before CUDA starts
    (``pin_before_torch``; here too, for in-process use before the first CUDA call)."""
    import torch
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def arithmetic_changes(before, after):
    """The arithmetic keys that differ between two fingerprints, as ``"key: a -> b"`` strings;
    empty when ``before`` is missing (a run made before fingerprints existed)."""
    if not before:
        return []
    changes = [f"{key}: {before.get(key)} -> {after.get(key)}" for key in ARITHMETIC_KEYS
               if before.get(key) != after.get(key)]
    if before.get("device_type") != "cpu" or after.get("device_type") != "cpu":
        return changes
    # MKL's pinned branch still sums in another order on another vendor's CPU, or with another
    # number of threads (measured).
    vendors = cpu_vendor(before), cpu_vendor(after)
    if None not in vendors and vendors[0] != vendors[1]:
        changes.append(f"cpu_vendor: {vendors[0]} -> {vendors[1]}")
    threads = before.get("threads"), after.get("threads")
    if None not in threads and threads[0] != threads[1]:
        changes.append(f"threads: {threads[0]} -> {threads[1]}")
    # Records from before the flag existed ran with IEEE denormals.
    flush = before.get("flush_denormal", False), after.get("flush_denormal", False)
    if flush[0] != flush[1]:
        changes.append(f"flush_denormal: {flush[0]} -> {flush[1]}")
    return changes


def describe(record):
    """A short label of a fingerprint for tables: ``portable (AVX2, AMD)``, ``native (AVX512,
    Intel)``; the vendor only where the record names it (CPU arithmetic is per vendor)."""
    if not record:
        return "unrecorded"
    vendor = cpu_vendor(record) if record.get("device_type") != "cuda" else None
    label = f"{record.get('mode')} ({record.get('aten_capability')}" \
            + (f", {vendor}" if vendor else "") \
            + (", flush denormals)" if record.get("flush_denormal") else ")")
    if record.get("device_type") == "cuda":
        label += f" {record.get('gpu_name')}"
    return label


def warn_in_process(record, stream=None):
    """One line when portable mode was asked for but torch already ran other kernels."""
    if record.get("mode") == "portable" and not record.get("portable"):
        print(f"note: --numerics portable: {record.get('note')}", file=stream or sys.stderr,
              flush=True)
