"""Copying convergence across seeds, for the report: per seed, the first epoch at >= 99 %
validation accuracy (or "not by epoch E", E the epochs its run has done); per setting, how many
seeds got there by epoch 50 / 100 / 200, counted only among the seeds whose run has got that far;
the c-detach run beside h-detach of the same seed; and the figure of both.

Kept apart from report_runs / report_markdown / report_figures (summarising, markdown and
drawing are still separate functions here) so the convergence view merges as one module.
Nothing here averages over seeds: a seed that has not converged has no first epoch to average.
"""
import textwrap

from report_refs import PAPER, REPRO, references
from report_runs import SOLVED, completeness, experiment_order, setting_order
from report_text import table

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
        states = [(run["seed"], reached_by(run, milestone)) for run in runs]
        by_epoch[str(milestone)] = {
            "reached": sum(state is True for _, state in states),
            "known": sum(state is not None for _, state in states),
            "not_there_yet": [seed for seed, state in states if state is None]}
    return {"threshold": SOLVED, "n_seeds": len(runs), "by_epoch": by_epoch,
            "reached_so_far": sum(run["first_epoch_solved"] is not None for run in runs),
            "median_first_epoch": censored_median(runs),
            "per_seed": [{"seed": run["seed"], "path": run["path"], "state": run["state"],
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


# ----------------------------------------------------------------------------- markdown

def seeds_text(seeds):
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def count_text(count, entry, milestone, not_at="yet"):
    """'2 of 3', or '1 of 1 seed at epoch 50 (seeds 1, 2 not there yet)': ``count`` of the
    seeds known at ``milestone``, naming those whose run(s) have not got there (``not_at``)."""
    known, waiting = entry["known"], entry["not_there_yet"]
    if not waiting:
        return f"{count} of {known}"
    if not known:
        return f"not known yet ({seeds_text(waiting)} not at epoch {milestone} {not_at})"
    return (f"{count} of {known} seed{'' if known == 1 else 's'} at epoch {milestone} "
            f"({seeds_text(waiting)} not there yet)")


def milestone_text(entry, milestone):
    return count_text(entry["reached"], entry, milestone)


def median_text(summary):
    median = summary["median_first_epoch"]
    n, reached = summary["n_seeds"], summary["reached_so_far"]
    if median is not None:
        return f"{median:g} " + ("(one seed only)" if n == 1 else f"(over all {n} seeds)")
    open_ = [seed for seed in summary["per_seed"] if seed["first_epoch"] is None]
    # Runs that are done will not converge any more: then the median is not defined at all.
    still = "" if all(seed["final"] for seed in open_) else " yet"
    return f"not defined{still} ({reached} of {n} reached {SOLVED:g} %)"


def first_epoch_text(seed):
    if seed["first_epoch"] is not None:
        return f"epoch {seed['first_epoch']}"
    return f"not by epoch {seed['epochs']}" + (" (run done)" if seed["final"] else "")


def best_text(seed):
    if seed["best"] is None:
        return "no epoch yet"
    return (f"{seed['best']:.2f} at epoch {seed['best_epoch']}"
            + ("" if seed["final"] else " (so far)"))


def convergence_section(settings, h, milestones=MILESTONES):
    """The per-setting counts table and the per-seed table (markdown lines ending with a blank
    one, heading level ``h``); empty when no copying run is there."""
    copying = sorted((s for s in settings if is_copying(s) and s.get("convergence")),
                     key=lambda s: (experiment_order(s["experiment"]), setting_order(s)))
    if not copying:
        return []
    rows, per_seed = [], []
    for setting in copying:
        summary = setting["convergence"]
        runs = "; ".join(f"seed {run['seed']}: {completeness(run)}" for run in setting["runs"])
        rows.append([setting["experiment"], setting["label"], summary["n_seeds"],
                     *(milestone_text(summary["by_epoch"][str(m)], m) for m in milestones),
                     median_text(summary), runs])
        for seed in summary["per_seed"]:
            per_seed.append([setting["experiment"], setting["label"], seed["seed"],
                             f"{seed['state']}, {seed['epochs']}/{seed['planned']}",
                             first_epoch_text(seed), best_text(seed)])
    lines = [f"{h} Copying: convergence across seeds", "",
             f"A seed has converged at the first epoch with validation accuracy >= {SOLVED:g} %. "
             f"'By epoch M' counts only the seeds whose run has done M epochs (or converged "
             f"before): a seed not there yet is named, never counted as failing. The median is "
             f"over all the setting's seeds, and only where they determine it (every seed that "
             f"has not converged has run past it); no mean is taken over seeds that have not "
             f"converged.", ""]
    lines += table(["experiment", "setting", "seeds",
                     *(f"reached {SOLVED:g} % by epoch {m}" for m in milestones),
                     "median first epoch", "runs (state, epochs done / planned)"], rows)
    lines += ["", "Per seed:", ""]
    lines += table(["experiment", "setting", "seed", "run (epochs done / planned)",
                     f"first epoch at >= {SOLVED:g} %", "best valid acc. (%) and its epoch"],
                    per_seed)
    return lines + [""]


def cdetach_section(settings, h):
    """c-detach beside h-detach of the same p and seed, with the paper's and the reproduction's
    statements (markdown lines ending with a blank one); empty when there is no c-detach
    copying run."""
    pairs = cdetach_pairs(settings)
    if not pairs:
        return []
    lines = [f"{h} Copying: c-detach beside h-detach of the same seed", ""]
    rows, ours = [], []
    for setting, run, twin, partner in pairs:
        common = common_epoch(run, partner)
        for member, label in ((run, setting["label"]), (partner, twin and twin["label"])):
            if member is None:
                rows.append([twin["label"] if twin else "h-detach, same p", run["seed"],
                             "no run of this seed", "", "", "", ""])
                continue
            cross = first_above(member, CDETACH_CROSS)
            rows.append([label, member["seed"], completeness(member),
                         "—" if accuracy_at(member, common) is None
                         else f"epoch {common}: {accuracy_at(member, common):.2f}",
                         best_text({"best": member["best_valid_accuracy"],
                                    "best_epoch": member["best_epoch"],
                                    "final": member["final"]}),
                         f"epoch {cross}" if cross else f"not by epoch {member['epochs']}",
                         first_epoch_text({"first_epoch": member["first_epoch_solved"],
                                           "epochs": member["epochs"],
                                           "final": member["final"]})])
        ours.append(cdetach_sentence(setting, run, partner, common))
    lines += table(["setting", "seed", "run (epochs done / planned)",
                     "valid acc. (%) at the epoch both runs have done", "best valid acc. (%)",
                     f"first epoch above {CDETACH_CROSS:g} %",
                     f"first epoch at >= {SOLVED:g} %"], rows)
    experiment = pairs[0][0]["experiment"]
    statements = [f"- {ref.source}: {ref.text}" for ref in references(experiment)
                  if ref.source in (PAPER, REPRO)]
    lines += ["", "What the paper and the reproduction state, and what our runs show so far:",
              ""] + statements + [f"- ours: {text}" for text in ours]
    return lines + [""]


def cdetach_sentence(setting, run, partner, common):
    """One factual sentence on a c-detach run so far, with its length, and never more than the
    run supports: the paper's statement is about 500 epochs."""
    best = run["best_valid_accuracy"]
    text = (f"{setting['label']}, seed {run['seed']} ({completeness(run)}): "
            + ("no epoch yet" if best is None else
               f"best {best:.2f} % (epoch {run['best_epoch']}), "
               + (f"{SOLVED:g} % first at epoch {run['first_epoch_solved']}"
                  if run["first_epoch_solved"] else f"not at {SOLVED:g} % by epoch "
                                                    f"{run['epochs']}")))
    cross = first_above(run, CDETACH_CROSS)  # the reproduction's line
    if best is not None:
        text += (f"; above {CDETACH_CROSS:g} % first at epoch {cross}" if cross else
                 f"; not above {CDETACH_CROSS:g} % by epoch {run['epochs']}")
    if partner is not None and accuracy_at(partner, common) is not None \
            and accuracy_at(run, common) is not None:
        text += (f"; at epoch {common}, c-detach {accuracy_at(run, common):.2f} % against "
                 f"h-detach {accuracy_at(partner, common):.2f} % (same seed)")
    elif partner is None:
        text += "; no h-detach run of the same seed and p to set beside it"
    if run["epochs"] < 500 and not run["final"]:
        text += (f". {run['epochs']} of the paper's 500 epochs: too early to confirm or refute "
                 "its statement")
    return text + "."


# ----------------------------------------------------------------------------- figure

FAMILIES = {"black": "Greys", "tab:blue": "Blues", "tab:orange": "Oranges", "tab:red": "Reds",
            "tab:purple": "Purples", "tab:green": "Greens", "tab:brown": "YlOrBr"}


def fraction_curve(runs, last):
    """[(epoch, reached, counted)] for epochs 0..last: the seeds that reached 99 % by that
    epoch, among the seeds whose run has done it (or converged by it)."""
    points = []
    for epoch in range(0, last + 1):
        states = [reached_by(run, epoch) for run in runs]
        points.append((epoch, sum(s is True for s in states),
                       sum(s is not None for s in states)))
    return points


def convergence_figure(settings, path):
    """Per copying delay T: beside each other, the fraction of seeds at 99 % against epoch (a
    step curve per setting, with the count k/n written where it changes) and one panel of
    per-seed validation curves per setting (seeds in the setting's colour family). Returns
    False, writing nothing, when there is no copying run."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from report_figures import colours_for, save_png

    copying = [s for s in settings if is_copying(s) and s["runs"]]
    groups = {}
    for setting in sorted(copying, key=lambda s: (experiment_order(s["experiment"]),
                                                  setting_order(s))):
        groups.setdefault(setting["args"]["T"], []).append(setting)
    if not groups:
        return False
    cols = 2  # per-setting panels in two columns, right of the fraction panel
    rows_per = {T: max(1, -(-len(members) // cols)) for T, members in groups.items()}
    fig = plt.figure(figsize=(16, 3.9 * sum(rows_per.values()) + 1.0), layout="constrained")
    grid = fig.add_gridspec(sum(rows_per.values()), 1 + cols, width_ratios=[1.35, 1, 1])
    row0 = 0
    for T, members in groups.items():
        colours = colours_for([s["label"] for s in members], [s["base"] for s in members])
        # One epoch axis for the whole row, so the panels compare at a glance.
        last = max(run["epochs"] for s in members for run in s["runs"])
        ax = fig.add_subplot(grid[row0:row0 + rows_per[T], 0])
        for i, setting in enumerate(members):
            # Curves at the same fraction would hide each other: each is lifted a little.
            lift = (i - (len(members) - 1) / 2) * 0.015
            draw_fraction(ax, setting, colours[setting["label"]], last, lift)
        ax.set_xlim(0, last * 1.08 + 1)
        ax.set_ylim(-0.06, 1.12)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"fraction of seeds at >= {SOLVED:g} % validation accuracy")
        ax.set_title(f"copying T={T}: fraction of seeds converged by epoch. k/n: k of the n "
                     "seeds\nwhose run got that far; solid: every seed counted, dashed: only "
                     "some", fontsize=10)
        ax.grid(alpha=0.3)
        # Under the panel: inside it would hide a step of some curve.
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
        for i, setting in enumerate(members):
            panel = fig.add_subplot(grid[row0 + i // cols, 1 + i % cols])
            family = FAMILIES.get(colours[setting["label"]], "Greens")
            draw_seeds(panel, setting, matplotlib.colormaps[family], last)
        row0 += rows_per[T]
    fig.suptitle(textwrap.fill(
        f"Copying: when each seed first reached {SOLVED:g} % validation accuracy (left) and "
        "every seed's validation curve (right; open circle: where an unfinished run stands, "
        f"triangle: its first epoch at {SOLVED:g} %). Unfinished runs are marked in the "
        "legends: nothing here is final.", 160), fontsize=10)
    save_png(fig, path)
    plt.close(fig)
    return True


def draw_fraction(ax, setting, colour, last, lift):
    runs = setting["runs"]
    n = len(runs)
    points = [p for p in fraction_curve(runs, last) if p[2]]  # epochs where a seed counts

    def draw(segment):
        full = segment[0][2] == n
        ax.step([p[0] for p in segment], [p[1] / p[2] + lift for p in segment], where="post",
                color=colour, lw=2 if full else 1.3, ls="-" if full else "--",
                alpha=1 if full else 0.75)

    segment = points[:1]
    for point in points[1:]:
        if point[2] != segment[-1][2]:  # fewer seeds counted from here on: a new style
            draw(segment + [(point[0], segment[-1][1], segment[-1][2])])
            segment = []
        segment.append(point)
    if segment:
        draw(segment + [segment[-1]])
    # The count, written where it changes (not at epoch 0, where every curve starts) and at
    # the end of the curve.
    marks = [b for a, b in zip(points, points[1:]) if a[1:] != b[1:]] + points[-1:]
    for epoch, reached, counted in dict.fromkeys(marks):
        ax.annotate(f"{reached}/{counted}", (epoch, reached / counted + lift),
                    textcoords="offset points", xytext=(3, 3), fontsize=8, color=colour)
    reached = sum(run["first_epoch_solved"] is not None for run in runs)
    ax.plot([], [], color=colour, lw=2,
            label=f"{setting['label']}: {reached} of {n} seed{'' if n == 1 else 's'} so far "
                  f"(epochs done: {', '.join(str(run['epochs']) for run in runs)})")


def draw_seeds(ax, setting, shades, last):
    runs = setting["runs"]
    for i, run in enumerate(runs):
        # One colour family per setting, a shade per seed (dark to light).
        colour = shades(0.95 - 0.4 * i / (len(runs) - 1)) if len(runs) > 1 else shades(0.85)
        solved = run["first_epoch_solved"]
        label = (f"seed {run['seed']} ({completeness(run)}): "
                 + (f"{SOLVED:g} % at epoch {solved}" if solved is not None else
                    f"not by epoch {run['epochs']}"))
        if not run["curve"]:
            ax.plot([], [], color=colour, label=label + ", no epoch yet")
            continue
        epochs, accuracy = zip(*run["curve"])
        ax.plot(epochs, accuracy, color=colour, lw=1.3, label=label)
        if not run["final"]:
            ax.plot(epochs[-1], accuracy[-1], "o", mfc="white", color=colour, ms=5)
        if solved is not None:
            ax.plot(solved, SOLVED, "v", color=colour, mec="black", mew=0.5, ms=7)
    ax.axhline(SOLVED, color="0.35", ls=(0, (1, 2)), lw=0.9)
    ax.set_xlim(0, last * 1.04 + 1)
    ax.set_ylim(0, 104)
    n = len(runs)
    ax.set_title(f"{setting['label']}: {n} seed{'' if n == 1 else 's'} (dotted: {SOLVED:g} %)",
                 fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")  # a flat c-detach curve runs along the bottom
