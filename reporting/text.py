"""The words and markdown primitives every renderer of the report shares (the markdown
sections, the standing sentences, the figures' titles), so a percentage, a count of seeds or a
table cell reads the same wherever it appears. The bottom of the rendering layer: it reads the
analyses' numbers and renders nothing itself."""
from reporting.convergence import CDETACH_CROSS, accuracy_at, first_above
from reporting.runs import SOLVED, completeness, seed_of


def pct(value):
    """A percentage to two decimals, or an em dash where there is no number."""
    return "—" if value is None else f"{value:.2f}"


def table(header, rows):
    """A markdown table; a '|' inside a cell is escaped so it cannot split the cell."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |"
                    for row in rows]


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


def cdetach_sentence(setting, run, partner, common):
    """One factual sentence on a c-detach run so far, with its length, and never more than the
    run supports: the paper's statement is about 500 epochs."""
    best = run["best_valid_accuracy"]
    text = (f"{setting['label']}, seed {seed_of(run)} ({completeness(run)}): "
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


def ahead_text(entry, milestone):
    return count_text(entry["ahead"], entry, milestone, not_at="in both runs")


def ahead_from_text(pair):
    if not pair["common_epochs"]:
        return "no epoch in common yet"
    if pair["ahead_from"] is None:
        return f"not ahead at epoch {pair['last_common']}"
    return f"epoch {pair['ahead_from']} to {pair['last_common']}"


def solved_pair_text(pair):
    return " / ".join(f"epoch {first}" if first is not None else
                      f"not by epoch {epochs}" + (" (run done)" if final else "")
                      for first, epochs, final in zip(pair["first_epoch"], pair["epochs"],
                                                      pair["final"]))


def runs_text(runs):
    """Which seeds the numbers come from and how complete each run is."""
    if len(runs) > 4:
        unfinished = [run for run in runs if not run["final"]]
        if not unfinished:
            return f"{len(runs)} runs, all done"
        least = min(unfinished, key=lambda run: run["epochs"])
        return (f"{len(runs)} runs, {len(runs) - len(unfinished)} done; least complete: seed "
                f"{seed_of(least)}: {completeness(least)}")
    return "; ".join(f"seed {seed_of(run)}: {completeness(run)}" for run in runs)


def test_set_text(transfer):
    # rng: whose generator drew the sequences (transfer_copy.py --rng): the authors' test sets,
    # or the kit's torch-drawn ones (every measurement made before the flag).
    streams = {"authors": "the authors' streams", "kit": "the kit's streams"}
    rng = transfer.get("rng", "kit")
    return (f"{transfer['test_size']:,} sequences, seed {transfer['seed']}, "
            f"{streams.get(rng, rng)}")


def common_modifiers(settings):
    """The modifiers (what sets a setting apart from the protocol) that every one of
    ``settings`` has, in the first's order: said once above a table of two or more settings
    instead of in every label. Empty for fewer than two."""
    if len(settings) < 2:
        return []
    rest = [set(setting["modifiers"]) for setting in settings[1:]]
    return [m for m in settings[0]["modifiers"] if all(m in others for others in rest)]


def short_label(setting, common):
    """``setting``'s label without the ``common`` modifiers (what it adds stays, and so does a
    disambiguation suffix)."""
    if not common:
        return setting["label"]
    full = setting["base"] + (f" ({', '.join(setting['modifiers'])})"
                              if setting["modifiers"] else "")
    suffix = setting["label"][len(full):] if setting["label"].startswith(full) else ""
    rest = [m for m in setting["modifiers"] if m not in common]
    return setting["base"] + (f" ({', '.join(rest)})" if rest else "") + suffix
