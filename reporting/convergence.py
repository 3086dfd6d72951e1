"""Copying convergence across seeds (an analysis: numbers only, no markdown, no figure): per
seed, the first epoch at >= 99 % validation accuracy (or "not by epoch E", E the epochs its run
has done); per setting, how many seeds got there by epoch 50 / 100 / 200, counted only among the
seeds whose run has got that far; the c-detach run beside h-detach of the same seed; and the
fraction of seeds at 99 % against epoch. ``markdown`` and ``figures`` render them.
Nothing here averages over seeds: a seed that has not converged has no first epoch to average.
"""
from reporting.runs import SOLVED, seed_of

MILESTONES = (50, 100, 200)  # "seeds that reached 99 % by epoch M"
CDETACH_CROSS = 40.0  # the reproduction's c-detach statement: "did not cross 40 % in 200 epochs"


# ----------------------------------------------------------------------------- summarising

def is_copying(setting):
    return setting["task"] == "copying"


def reached_by(run, epoch):
    """True: the run reached 99 % at or before ``epoch``; False: it has done ``epoch`` epochs
    without; None: not known yet (its run has not got to ``epoch``)."""
    first = run.get("first_epoch_solved")
    if first is not None and first <= epoch:
        return True
    return False if run["epochs"] >= epoch else None


def censored_median(runs):
    """The median over all seeds of the first epoch at 99 %, or None where the seeds so far do
    not determine it. A seed that has not reached 99 % after E epochs will do so (if ever) after
    epoch E, so an order statistic is known only when every such seed has already run past it;
    seeds that never converge are never left out (that would flatter the setting)."""
    n = len(runs)
    if n == 0:
        return None
    known = sorted(run["first_epoch_solved"] for run in runs
                   if run["first_epoch_solved"] is not None)
    open_ = [run["epochs"] for run in runs if run["first_epoch_solved"] is None]

    def order_stat(i):  # the i-th smallest (1-based) first epoch over all n seeds
        if i > len(known):
            return None
        value = known[i - 1]
        return value if all(epochs >= value for epochs in open_) else None

    if n % 2:
        return order_stat((n + 1) // 2)
    low, high = order_stat(n // 2), order_stat(n // 2 + 1)
    return None if low is None or high is None else (low + high) / 2


def convergence_summary(setting, milestones=MILESTONES):
    """Per milestone M: the seeds that reached 99 % by epoch M, among the seeds known at M
    (reached it, or ran M epochs without), and the seeds not there yet; the median first
    epoch where the seeds determine it; per seed its first epoch or the epochs it has done."""
    runs = setting["runs"]
    by_epoch = {}
    for milestone in milestones:
        states = [(seed_of(run), reached_by(run, milestone)) for run in runs]
        by_epoch[str(milestone)] = {
            "reached": sum(state is True for _, state in states),
            "known": sum(state is not None for _, state in states),
            "not_there_yet": [seed for seed, state in states if state is None]}
    return {"threshold": SOLVED, "n_seeds": len(runs), "by_epoch": by_epoch,
            "reached_so_far": sum(run["first_epoch_solved"] is not None for run in runs),
            "median_first_epoch": censored_median(runs),
            "per_seed": [{"seed": run["seed"], "seed_label": seed_of(run), "path": run["path"],
                          "state": run["state"],
                          "epochs": run["epochs"], "planned": run["planned"],
                          "final": run["final"], "first_epoch": run["first_epoch_solved"],
                          "best": run["best_valid_accuracy"], "best_epoch": run["best_epoch"]}
                         for run in runs]}


def accuracy_at(run, epoch):
    """The run's validation accuracy at ``epoch`` (None if it has not done it)."""
    return next((accuracy for at, accuracy in run["curve"] if at == epoch), None)


def first_above(run, value):
    """The first epoch with validation accuracy above ``value`` (None: not yet)."""
    return next((at for at, accuracy in run["curve"] if accuracy > value), None)


def common_epoch(run, partner):
    """The epoch a c-detach run and its h-detach partner have both done (the run's own epochs
    without a partner): they are compared there, not at unequal lengths."""
    return min(run["epochs"], partner["epochs"]) if partner else run["epochs"]


def cdetach_pairs(settings):
    """[(c-detach setting, its run, the h-detach setting of the same arguments or None, that
    setting's run of the same seed or None)] for every c-detach copying run."""
    pairs = []
    for setting in settings:
        if not is_copying(setting) or setting["args"].get("detach") != "c" \
                or setting["args"]["p_detach"] <= 0:
            continue
        twin_args = dict(setting["args"], detach="h")
        twin = next((s for s in settings if is_copying(s) and s["args"] == twin_args), None)
        if twin is None:  # arguments the report does not know apart (a newer kit's): same T, p
            twin = next((s for s in settings if is_copying(s) and s["args"].get("detach") != "c"
                         and s["args"]["T"] == setting["args"]["T"]
                         and s["args"]["p_detach"] == setting["args"]["p_detach"]), None)
        for run in setting["runs"]:
            partner = next((r for r in twin["runs"] if r["seed"] == run["seed"]), None) \
                if twin else None
            pairs.append((setting, run, twin, partner))
    return pairs


def fraction_curve(runs, last):
    """[(epoch, reached, counted)] for epochs 0..last: the seeds that reached 99 % by that
    epoch, among the seeds whose run has done it (or converged by it)."""
    points = []
    for epoch in range(0, last + 1):
        states = [reached_by(run, epoch) for run in runs]
        points.append((epoch, sum(s is True for s in states),
                       sum(s is not None for s in states)))
    return points
