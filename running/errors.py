"""The kit's error types, and how a command line turns them into one line on stderr. Every
module may raise them, so this one imports nothing of the kit."""
import os
import sys


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
