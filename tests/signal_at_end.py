"""Run a training script with a SIGTERM delivered in the middle of its last writes.

``python tests/signal_at_end.py copying|pixelmnist|transfer_copy ARGS...`` runs
``SCRIPT.main(ARGS)`` with one change: once the run ends (``TrainingRun.pause`` or ``finish``,
``record_transfer``), every atomic write sends this process a SIGTERM after the temporary file
is written and before it replaces the real one, the moment a scheduler's preemption signal can
arrive. A script that ends outside its signal handling
dies there, leaving a ``.tmp`` behind and state.json saying "running"; a correct one finishes.
"""
import importlib
import os
import signal
import sys


def main():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from running import runfolder

    ending = []

    def marking(real):
        def ends(*args, **kwargs):
            ending.append(True)
            return real(*args, **kwargs)
        return ends
    for name in ("pause", "finish"):
        setattr(runfolder.TrainingRun, name, marking(getattr(runfolder.TrainingRun, name)))
    runfolder.record_transfer = marking(runfolder.record_transfer)  # before the script imports it

    atomic_write = runfolder.atomic_write

    def signalled_write(path, write):
        def write_then_signal(handle):
            write(handle)
            if ending:
                os.kill(os.getpid(), signal.SIGTERM)
        atomic_write(path, write_then_signal)
    runfolder.atomic_write = signalled_write

    script = importlib.import_module(sys.argv[1])
    return script.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
