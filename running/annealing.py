"""The protocol's annealing: h-detach is switched off for the last ``anneal_p`` epochs."""
import sys


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
