"""Copying: h-detach against plain BPTT (vanilla) of the same seed, for the report.

Under the kit's streams (``--rng kit``) every setting of one seed sees the same data, initial
weights and batches; only the detach draws differ. Two such runs are a paired comparison, the
one thing a handful of seeds can show at all: per seed, both validation curves side by side at
fixed epochs, at how many of the epochs both runs have done h-detach was ahead, and from which
epoch on it stayed ahead; per setting, at epoch 50 / 100 / 200, in how many seeds h-detach was
ahead. Runs of the authors' streams are left out: there the detach draws come from the global
generators that also draw the batches, so two settings of one seed no longer see the same
batches and are not a pair.

An analysis: numbers only (they also go to report.json); ``markdown`` renders them. Nothing
here is averaged over seeds.
"""
from reporting.convergence import MILESTONES, is_copying
from reporting.runs import completeness

PAIR_EPOCHS = (25, 50, 100, 200)  # the epochs at which both curves are set side by side
# Arguments that do not change what a vanilla run (p <= 0) trains: with nothing detached, which
# state would be detached and how p would be annealed make no difference.
UNUSED_BY_VANILLA = ("p_detach", "detach", "anneal_p")


def _same_but_detach(a, b):
    keys = (set(a) | set(b)) - set(UNUSED_BY_VANILLA)
    return all(a.get(key) == b.get(key) for key in keys)


def paired_settings(settings):
    """[(h-detach setting, its vanilla setting)]: copying settings that differ only in p."""
    pairs = []
    for setting in settings:
        args = setting["args"]
        if not is_copying(setting) or args["p_detach"] <= 0 or args.get("detach") == "c":
            continue
        vanilla = next((s for s in settings if is_copying(s) and s["args"]["p_detach"] <= 0
                        and _same_but_detach(s["args"], args)), None)
        if vanilla is not None:
            pairs.append((setting, vanilla))
    return pairs


def compare_curves(hdetach, vanilla, epochs=PAIR_EPOCHS):
    """The two runs of one seed, epoch by epoch over the epochs both have done; both
    accuracies at each of ``epochs`` (None where a run has not done it)."""
    h, v = dict(hdetach["curve"]), dict(vanilla["curve"])
    common = sorted(set(h) & set(v))
    ahead = [epoch for epoch in common if h[epoch] > v[epoch]]
    # The first epoch from which h-detach was ahead at every later epoch both have done.
    ahead_from = None
    for epoch in reversed(common):
        if h[epoch] <= v[epoch]:
            break
        ahead_from = epoch
    return {"seed": hdetach["seed"], "hdetach": hdetach["path"], "vanilla": vanilla["path"],
            "hdetach_run": completeness(hdetach), "vanilla_run": completeness(vanilla),
            "common_epochs": len(common), "last_common": common[-1] if common else None,
            "ahead_epochs": len(ahead), "ahead_from": ahead_from,
            "at": {str(epoch): [h.get(epoch), v.get(epoch)] for epoch in epochs},
            "first_epoch": [hdetach["first_epoch_solved"], vanilla["first_epoch_solved"]],
            "epochs": [hdetach["epochs"], vanilla["epochs"]],
            "final": [hdetach["final"], vanilla["final"]]}


def paired_summary(hdetach_setting, vanilla_setting, milestones=MILESTONES):
    """Per seed of both settings (kit streams only): ``compare_curves``; per milestone M, the
    seeds where h-detach was ahead at epoch M among those whose two runs have both done M."""
    vanilla_by_seed = {run["seed"]: run for run in vanilla_setting["runs"]
                       if run["args"].get("rng") == "kit"}
    epochs = sorted(set(PAIR_EPOCHS) | set(milestones))
    seeds = [compare_curves(run, vanilla_by_seed[run["seed"]], epochs)
             for run in hdetach_setting["runs"]
             if run["args"].get("rng") == "kit" and run["seed"] in vanilla_by_seed]
    by_epoch = {}
    for milestone in milestones:
        at = [(pair["seed"], *pair["at"][str(milestone)]) for pair in seeds]
        known = [h > v for _, h, v in at if h is not None and v is not None]
        by_epoch[str(milestone)] = {
            "ahead": sum(known), "known": len(known),
            "not_there_yet": [seed for seed, h, v in at if h is None or v is None]}
    return {"hdetach": hdetach_setting["label"], "vanilla": vanilla_setting["label"],
            "experiment": hdetach_setting["experiment"], "seeds": seeds, "by_epoch": by_epoch}


def paired_summaries(settings):
    """Every h-detach copying setting with kit-stream seeds in common with its vanilla
    setting, in the report's order of ``settings``."""
    found = [paired_summary(h, v) for h, v in paired_settings(settings)]
    return [summary for summary in found if summary["seeds"]]
