"""What a run's arguments mean across a resume: which keys may change, which a run that
predates a flag had in effect, and how a resumed command line merges with the stored run."""
import argparse

from running.errors import UsageError

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
                  "flush_denormal", "threads")
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
