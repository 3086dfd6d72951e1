"""The report's figures (PNG through matplotlib's Agg backend: no display needed)."""
import math
import textwrap

from reporting.convergence import fraction_curve, is_copying
from reporting.refs import AUTHORS, PAPER, REPRO, references
from reporting.runs import SOLVED, completeness, experiment_order, seed_of, setting_order
from reporting.text import common_modifiers, runs_text, short_label, test_set_text
from reporting.transfer import transfer_delays, transfer_groups
from running.runfolder import atomic_write

# ----------------------------------------------------------------------------- figures

CANONICAL_COLOURS = {"vanilla": "black", "h-detach p=0.25": "tab:blue",
                     "h-detach p=0.5": "tab:orange", "c-detach p=0.25": "tab:red",
                     "c-detach p=0.5": "tab:purple"}
PALETTE = ("tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray",
           "tab:purple", "tab:red", "tab:orange", "tab:blue")


# Flat reference lines: the line style tells the source.
SOURCE_STYLES = {PAPER: ":", AUTHORS: "-.", REPRO: "--"}
# Reference points: the marker tells the source (filled: reached ~100 %; open: a reading).
SOURCE_MARKERS = {PAPER: "*", AUTHORS: "s", REPRO: "D"}


def colours_for(labels, bases):
    """A colour per setting label: the base setting's usual colour (vanilla black, p = 0.25
    blue, ...) for the first of its settings in the panel, the next free one otherwise."""
    colours, used = {}, set()
    for label, base in zip(labels, bases):
        colour = CANONICAL_COLOURS.get(base)
        if colour is None or colour in used:
            colour = next((c for c in PALETTE if c not in used), "tab:gray")
        colours[label] = colour
        used.add(colour)
    return colours


def save_png(fig, path):
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))


# "Reached ~100 % at epoch E" references are drawn in a strip above the 100 % line, where no
# curve can hide them (on the line they sat on top of every solved run's curve).
SOLVED_MARK_Y = 106
LEGEND_FONT = 9
LEGEND_WIDTH = 90  # characters of a legend line at LEGEND_FONT under a 7.5-inch panel


def curves_figure(settings, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    experiments = sorted({s["experiment"] for s in settings}, key=experiment_order)
    # One panel per experiment; an experiment with reported test accuracies (MNIST) gets a
    # second panel beside it that zooms on them (an inset covered part of its panel).
    panels = []
    for experiment in experiments:
        present = [s for s in settings if s["experiment"] == experiment]
        zoom = zoom_range(experiment, present)
        if zoom and len(panels) % 2:
            panels.append(None)  # a panel and its zoom share a row: left, then right
        panels.append((experiment, None))
        if zoom:
            panels.append((experiment, zoom))
    # Legends go under their panel (they would hide the curves): room for the longest.
    entries = max(legend_size(settings, experiment) for experiment in experiments)
    fig, cols, placed = panel_grid(plt, panels, 4.4 + 0.2 * entries)
    for ax, (experiment, zoom) in placed:
        present = [s for s in settings if s["experiment"] == experiment]
        colours = colours_for([s["label"] for s in present], [s["base"] for s in present])
        right = 1
        for setting in present:
            colour = colours[setting["label"]]
            runs = setting["runs"]
            shades = seed_shades(matplotlib, colour, len(runs))
            for run, shade in zip(runs, shades):
                if not run["curve"]:
                    continue
                epochs, accuracy = zip(*run["curve"])
                # One legend line per seed where a setting has several (one colour family, a
                # shade per seed, so the seeds can be told apart); one line per setting else.
                label = wrap(f"{setting['label']}: {runs_text(runs)}") if len(runs) == 1 \
                    else wrap(f"{setting['label']}, seed {seed_of(run)}: {completeness(run)}")
                ax.plot(epochs, accuracy, color=shade, lw=1.2, alpha=0.9, label=label)
                if not run["final"]:
                    # An open circle where an unfinished run stands now.
                    ax.plot(epochs[-1], accuracy[-1], "o", mfc="white", color=shade, ms=5)
                right = max(right, epochs[-1])
            if not any(run["curve"] for run in runs):
                ax.plot([], [], color=colour, label=f"{setting['label']}: no epoch yet")
        if experiment.startswith("copying"):
            ax.axhline(SOLVED, color="0.35", ls=(0, (1, 2)), lw=0.9,
                       label=f"{SOLVED:g} % (the report's 'reached' threshold)")
        ours = right
        right = draw_references(ax, experiment, present, colours, right, labels=zoom is None)
        if 2 * ours < right:
            # References far past our runs (a short run beside readings at epoch 150) would
            # squeeze our curves against the y axis: the axis ends at our runs, and says where
            # the references went (their legend lines give their epochs).
            ax.set_xlim(0, ours * 1.04 + 1)
            ax.annotate(f"references up to epoch {right:g}: off this axis, see the legend",
                        xy=(0.99, 0.02), xycoords="axes fraction", ha="right", fontsize=8,
                        color="0.3")
        else:
            ax.set_xlim(0, right * 1.04 + 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        if zoom:
            # The reported test accuracies lie within a point of each other: a zoom shows them.
            ax.set_ylim(*zoom)
            ax.set_title(f"{experiment}: zoom on the reported test accuracies")
            continue
        ax.set_ylim(0, SOLVED_MARK_Y + 4)
        ax.set_yticks(range(0, 101, 20))
        ax.set_title(f"{experiment}: validation accuracy by epoch")
        ax.legend(fontsize=LEGEND_FONT, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                  frameon=False)
    fig.suptitle(textwrap.fill("Lines: our runs, coloured by setting, a shade per seed (open "
                               "circle: where a run that has not finished stands). Markers and "
                               "flat lines: the "
                               "references; markers above 100 %: where a reference reached "
                               "~100 %", 100 * cols), fontsize=10)
    save_png(fig, path)
    plt.close(fig)


def panel_grid(plt, panels, row_height):
    """A figure with a panel for each entry of ``panels``, two to a row (one column for a
    single panel), rows ``row_height`` inches tall; a None entry leaves its place empty.
    Returns (figure, columns, [(axes, panel)]), the unused axes hidden."""
    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, row_height * rows),
                             squeeze=False, layout="constrained")
    placed = []
    for ax, panel in zip(axes.flat, list(panels) + [None] * (rows * cols - len(panels))):
        if panel is None:
            ax.set_visible(False)
        else:
            placed.append((ax, panel))
    return fig, cols, placed


def wrap(label):
    """A legend entry on lines that fit under a panel (a long setting label ran off the
    figure's sides)."""
    return textwrap.fill(label, LEGEND_WIDTH, subsequent_indent="  ")


def legend_size(settings, experiment):
    return (sum(len(s["runs"]) or 1 for s in settings if s["experiment"] == experiment)
            + experiment.startswith("copying")
            + sum(ref.value is not None for ref in references(experiment)))


def seed_shades(matplotlib, colour, n):
    """``n`` colours for the seeds of a setting drawn in ``colour``: its colour family, dark
    to light (``colour`` itself for one seed)."""
    if n <= 1:
        return [colour]
    if colour in FAMILIES:
        shades = matplotlib.colormaps[FAMILIES[colour]]
        return [shades(0.95 - 0.45 * i / (n - 1)) for i in range(n)]
    # a colour without a colormap of its own (pink, olive, ...: a panel's fifth setting and
    # on): the colour itself, darkened to lightened; never another setting's family
    red, green, blue = matplotlib.colors.to_rgb(colour)
    shades = []
    for i in range(n):
        t = i / (n - 1)  # 0: 30 % darker, 1: 45 % of the way to white
        shades.append(tuple(0.7 * c + t * (0.3 * c + 0.45 * (1 - c)) for c in (red, green, blue)))
    return shades


def zoom_range(experiment, present):
    """The accuracy range of an inset for the reported test accuracies (None: no inset)."""
    values = [ref.value for ref in references(experiment, kind="test_accuracy")]
    if not values:
        return None
    tops = [accuracy for s in present for run in s["runs"] for _, accuracy in run["curve"]]
    low = min(values) - 2
    high = max(values + tops) + 0.5 if tops else max(values) + 1
    return low, min(high, 100.5)


def draw_references(ax, experiment, present, colours, right, labels=True):
    """The references of an experiment: reported test accuracies, bests and upper bounds as
    flat lines (style by source), curve readings as open markers, 'reached ~100 % at' as
    filled markers with the epoch range (marker by source)."""
    by_base = {s["base"]: colours[s["label"]] for s in present if s["protocol"]}
    used = set(colours.values())
    for ref in references(experiment):
        if ref.value is None:
            continue
        colour = by_base.get(ref.setting)
        if colour is None:
            # A setting no run of ours has: its usual colour if free, grey otherwise.
            usual = CANONICAL_COLOURS.get(ref.setting)
            colour = usual if usual and usual not in used else "tab:gray"
        label = f"{ref.source}: {ref.setting or experiment} {ref.text}" if labels else None
        if ref.kind in ("test_accuracy", "valid_max") and ref.at is None:
            style = SOURCE_STYLES[ref.source]
            if ref.kind == "test_accuracy" and labels:
                label = f"{ref.source}: {ref.setting} test acc. {ref.text}"
            ax.axhline(ref.value, color=colour, ls=style, lw=1, alpha=0.8, label=label)
        elif ref.kind == "valid_max":
            ax.plot([0, ref.at], [ref.value, ref.value], color=colour,
                    ls=SOURCE_STYLES[ref.source], lw=1, label=label)
            right = max(right, ref.at)
        elif ref.kind == "valid_at":
            ax.plot(ref.at, ref.value, SOURCE_MARKERS[ref.source], color=colour, mfc="none",
                    ms=7, mew=1.5, label=label)
            right = max(right, ref.at)
        elif ref.kind == "solved_at":
            low, high = ref.at if isinstance(ref.at, tuple) else (ref.at, ref.at)
            ax.errorbar((low + high) / 2, SOLVED_MARK_Y, xerr=(high - low) / 2 or None,
                        fmt=SOURCE_MARKERS[ref.source],
                        color=colour, ms=9, mec="black", mew=0.5, capsize=3, label=label)
            right = max(right, high)
    return right


def transfer_figure(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = {t: m for t, m in transfer_groups(runs).items() if m}
    # The legend goes under the panel: room for one line per run and paper row.
    entries = max(len(m) + (3 if t == 100 else 0) for t, m in groups.items())
    fig, axes = plt.subplots(1, len(groups), figsize=(7.5 * len(groups), 4.4 + 0.2 * entries),
                             squeeze=False, layout="constrained")
    for ax, (trained, members) in zip(axes.flat, groups.items()):
        labels = list(dict.fromkeys(run["setting"] for run in sorted(members,
                                                                     key=setting_order)))
        bases = [next(r["base"] for r in members if r["setting"] == label) for label in labels]
        paper_bases = ["vanilla", "h-detach p=0.5", "h-detach p=0.25"] if trained == 100 else []
        colours = colours_for(labels, bases)
        protocol = {r["base"]: colours[r["setting"]] for r in members
                    if r["setting"] == r["base"]}
        for base in paper_bases:
            refs = references("transfer T=100", base, "transfer")
            colour = protocol.get(base, CANONICAL_COLOURS.get(base, "tab:gray"))
            ax.plot([r.at for r in refs], [r.value for r in refs], "s--", color=colour,
                    alpha=0.6, lw=1, ms=4, label=f"paper: {base}")
        test_sets = {test_set_text(run["transfer"]) for run in members}
        ordered = sorted(members, key=lambda r: (setting_order(r), r["seed"] or 0))
        # The seeds of a setting in shades of its colour, as in the other figures.
        shade = {}
        for label in labels:
            of_setting = [r["path"] for r in ordered if r["setting"] == label]
            shade.update(zip(of_setting, seed_shades(matplotlib, colours[label],
                                                     len(of_setting))))
        for run in ordered:
            transfer = run["transfer"]
            delays = [int(d) for d in transfer["accuracy"]]
            note = "" if run["final"] else f"; run {completeness(run)}"
            stale = "" if transfer["current"] else ", out of date"
            # The test set is in the title when every run shares it, else in each label.
            test_set = "" if len(test_sets) == 1 else f"; {test_set_text(transfer)}"
            ax.plot(delays, list(transfer["accuracy"].values()), "o-",
                    color=shade[run["path"]], lw=1.6,
                    label=wrap(f"ours: {run['setting']}, seed {seed_of(run)} "
                               f"({transfer['checkpoint']} of epoch "
                               f"{transfer['checkpoint_epoch']}{note}{stale}{test_set})"))
        ax.set_xscale("log")
        delays = transfer_delays(trained, members)
        ax.set_xticks(delays)
        ax.set_xticklabels([str(d) for d in delays])
        ax.minorticks_off()
        ax.set_ylim(0, 102)
        ax.set_xlabel("delay T' at test (time steps, log scale)")
        ax.set_ylabel("accuracy on the last 10 steps (%)")
        # Wrapped to the panel's width: one line of it ran off both sides of the figure.
        ax.set_title(textwrap.fill(f"Transfer copying: trained at T = {trained}, tested at T'"
                                   + (f" on {next(iter(test_sets))}" if len(test_sets) == 1
                                      else " (test sets: see the legend)"), 70), fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=LEGEND_FONT, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                  frameon=False)
    save_png(fig, path)
    plt.close(fig)


FAMILIES = {"black": "Greys", "tab:blue": "Blues", "tab:orange": "Oranges", "tab:red": "Reds",
            "tab:purple": "Purples", "tab:green": "Greens", "tab:brown": "YlOrBr"}


def convergence_figure(settings, path):
    """Per copying delay T: beside each other, the fraction of seeds at 99 % against epoch (a
    step curve per setting, with the count k/n written where it changes) and one panel of
    per-seed validation curves per setting (seeds in the setting's colour family). Returns
    False, writing nothing, when there is no copying run."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.transforms import offset_copy

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
        # Under the panel: inside it would hide a step of some curve. Its offset is in points,
        # below the tick labels and "epoch": a fraction of the axes put it over the label when
        # a delay's group was one row high.
        below = offset_copy(ax.transAxes, fig=fig, y=-38, units="points")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below,
                  frameon=False)
        for i, setting in enumerate(members):
            panel = fig.add_subplot(grid[row0 + i // cols, 1 + i % cols])
            shades = seed_shades(matplotlib, colours[setting["label"]], len(setting["runs"]))
            draw_seeds(panel, setting, shades, last)
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
            label=textwrap.fill(f"{setting['label']}: {reached} of {n} seed"
                                f"{'' if n == 1 else 's'} so far (epochs done: "
                                f"{', '.join(str(run['epochs']) for run in runs)})", 70,
                                subsequent_indent="  "))


def draw_seeds(ax, setting, shades, last):
    runs = setting["runs"]
    for run, colour in zip(runs, shades):  # a shade per seed of the setting's colour family
        solved = run["first_epoch_solved"]
        label = (f"seed {seed_of(run)} ({completeness(run)}): "
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
    # Wrapped to the panel: a long label (a smoke grid's) ran into its neighbour's title.
    ax.set_title(textwrap.fill(f"{setting['label']}: {n} seed{'' if n == 1 else 's'} (dotted: "
                               f"{SOLVED:g} %)", 55), fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")  # a flat c-detach curve runs along the bottom


def captioning_figure(settings, path):
    """Image captioning: validation CIDEr (x 100, as the tables print it) against iteration,
    one panel per model and data set, a colour per setting and a shade per seed (an open
    circle where a run that has not finished stands). Returns False (and draws nothing) when
    no captioning run has a validation CIDEr yet."""
    present_all = [s for s in settings if s["task"] == "captioning"
                   and any(run["cider_curve"] for run in s["runs"])]
    if not present_all:
        return False
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    experiments = sorted({s["experiment"] for s in present_all})
    entries = max(sum(1 for s in present_all if s["experiment"] == e) for e in experiments)
    fig, cols, placed = panel_grid(plt, experiments, 4.0 + 0.45 * entries)
    for ax, experiment in placed:
        present = [s for s in present_all if s["experiment"] == experiment]
        present.sort(key=setting_order)
        common = common_modifiers(present)  # said once, as the legend's title
        colours = colours_for([s["label"] for s in present], [s["base"] for s in present])
        for setting in present:
            runs = [run for run in setting["runs"] if run["cider_curve"]]
            shades = seed_shades(matplotlib, colours[setting["label"]], len(runs))
            for i, (run, shade) in enumerate(zip(runs, shades)):
                iterations, cider = zip(*run["cider_curve"])
                cider = [100 * value for value in cider]
                # one legend line per setting (its seeds are the shades of its colour)
                label = wrap(f"{short_label(setting, common)}: {runs_text(setting['runs'])}") \
                    if i == 0 else None
                ax.plot(iterations, cider, color=shade, lw=1.2, alpha=0.9, marker=".",
                        label=label)
                if not run["final"]:
                    ax.plot(iterations[-1], cider[-1], "o", mfc="white", color=shade, ms=5)
        ax.set_xlabel("iteration")
        ax.set_ylabel("validation CIDEr (x 100)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.set_title(textwrap.fill(experiment, 70))
        ax.legend(fontsize=LEGEND_FONT, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                  frameon=False, title_fontsize=LEGEND_FONT,
                  title=wrap("every setting here: " + ", ".join(common)) if common else None)
    fig.suptitle(textwrap.fill("Validation CIDEr of each run at each evaluation (the best model "
                               "is the highest point); a colour per setting, a shade per seed",
                               100 * cols), fontsize=10)
    save_png(fig, path)
    plt.close(fig)
    return True
