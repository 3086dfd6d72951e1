"""Copying: where the seeds stand, in a few sentences, for the top of the report and for the
README's paragraph on "does h-detach converge faster" (``report.py --readme`` regenerates it
between ``<!-- standing:begin -->`` and ``<!-- standing:end -->``).

Nothing new is computed here: the sentences are the convergence counts (``convergence``), the
paired comparison (``paired``) and the c-detach sentence (``text``), with the sample size in the
same paragraph, so that no number of ours in the README's interpretation is typed by hand.
Counts say how many seeds they are over and name the seeds whose runs have not got there.
"""
from reporting.convergence import MILESTONES, cdetach_pairs, common_epoch, is_copying
from reporting.runs import SOLVED, experiment_order, is_ablation, seed_of, setting_order
from reporting.text import cdetach_sentence, median_text, seeds_text

BEGIN, END = "<!-- standing:begin -->", "<!-- standing:end -->"


def short_count(count, entry, noun=""):
    """'1 of 3', '0 of 2 seeds (seed 2 not there yet)' (``noun``: ' seeds') or 'not known
    yet (seeds 1, 2 not there)'."""
    known, waiting = entry["known"], entry["not_there_yet"]
    if not known:
        return f"not known yet ({seeds_text(waiting)} not there)"
    noun = noun.rstrip("s") if known == 1 else noun
    return f"{count} of {known}{noun}" + (f" ({seeds_text(waiting)} not there yet)" if waiting
                                          else "")


def sample_text(setting):
    """'vanilla, 3 seeds (seeds 1, 2 at epoch 100, seed 3 at epoch 200, of 600 planned)'."""
    runs = setting["runs"]
    groups = {}
    for run in sorted(runs, key=lambda r: (r["epochs"], r["seed"])):
        groups.setdefault((run["epochs"], run["final"]), []).append(seed_of(run))
    where = ", ".join(f"{seeds_text(seeds)} at epoch {epochs}" + (" (done)" if final else "")
                      for (epochs, final), seeds in groups.items())
    planned = sorted({run["planned"] for run in runs if run["planned"] is not None})
    of = f", of {'/'.join(map(str, planned))} planned" if planned else ""
    return f"{setting['label']}, {len(runs)} seed{'' if len(runs) == 1 else 's'} ({where}{of})"


def milestone_sentence(members, milestone):
    """'By epoch 100: vanilla 1 of 3, h-detach p=0.25 0 of 2 (seed 2 not there yet)', or None
    when no seed of any setting is known at that epoch yet."""
    entries = [(s["label"], s["convergence"]["by_epoch"][str(milestone)]) for s in members]
    if not any(entry["known"] for _, entry in entries):
        return None
    return f"by epoch {milestone}: " + ", ".join(
        f"{label} {short_count(entry['reached'], entry)}" for label, entry in entries)


def paired_sentence(summaries, milestones=MILESTONES):
    """'Paired by seed ..., h-detach was ahead of vanilla at epoch 50 in 1 of 2 seeds for
    p=0.25 ...', over the milestones where some pair has both runs there; None without pairs."""
    parts = []
    for milestone in milestones:
        entries = [(s["hdetach"], s["by_epoch"][str(milestone)]) for s in summaries]
        if not any(entry["known"] for _, entry in entries):
            continue
        parts.append(f"at epoch {milestone} in " + ", ".join(
            f"{short_count(entry['ahead'], entry, ' seeds')} for {label}"
            for label, entry in entries))
    if not parts:
        return None
    return ("- Paired by seed (same data, initial weights and batches; only the detach draws "
            "differ), h-detach was ahead of vanilla " + "; ".join(parts) + ".")


def standing_paragraphs(settings, paired):
    """Per copying delay T with runs, its lines (a bold lead, then a list): the sample,
    the counts at 99 % by epoch 50 / 100 / 200, the median first epoch where the seeds
    determine it, the paired comparison and each c-detach run beside h-detach of its seed."""
    main = [s for s in settings if is_copying(s) and s["runs"]
            and not is_ablation(s["experiment"])]
    cdetach = cdetach_pairs(settings)
    delays = sorted({s["args"]["T"] for s in main} | {c["args"]["T"] for c, *_ in cdetach})
    paragraphs = []
    for T in delays:
        members = sorted((s for s in main if s["args"]["T"] == T),
                         key=lambda s: (experiment_order(s["experiment"]), setting_order(s)))
        sentences = main_sentences(members, [s for s in paired if s["experiment"] in
                                             {m["experiment"] for m in members}]) \
            if members else [f"**copying T={T}: c-detach only.**", ""]
        for setting, run, _, partner in cdetach:
            if setting["args"]["T"] == T:
                sentences.append("- c-detach: " + cdetach_sentence(
                    setting, run, partner, common_epoch(run, partner)))
        paragraphs.append(sentences)
    return paragraphs


def main_sentences(members, paired):
    """The sentences on the h-detach and vanilla settings of one delay."""
    n_runs = sum(len(s["runs"]) for s in members)
    done = sum(run["final"] for s in members for run in s["runs"])
    sentences = [f"**copying T={members[0]['args']['T']}, {n_runs} run"
                 f"{'' if n_runs == 1 else 's'} ({done or 'none'} finished):**", "",
                 "- The sample: " + "; ".join(sample_text(s) for s in members) + "."]
    counts = [text for text in (milestone_sentence(members, m) for m in MILESTONES) if text]
    if counts:
        sentences.append(f"- Seeds at >= {SOLVED:g} % validation accuracy, counted only where "
                         "a seed's run has got there: " + "; ".join(counts) + ".")
    sentences.append(f"- Median first epoch at {SOLVED:g} %, over all seeds and only where they "
                     "determine it: " + ", ".join(f"{s['label']} {median_text(s['convergence'])}"
                                                  for s in members) + ".")
    pairs = paired_sentence(paired)
    if pairs:
        sentences.append(pairs)
    return sentences


def standing_section(settings, paired, h):
    """The report's section (heading level ``h``, ending with a blank line); empty without a
    copying run."""
    paragraphs = standing_paragraphs(settings, paired)
    if not paragraphs:
        return []
    return [f"{h} Copying so far, in words", "",
            "The tables below, in sentences: how many seeds each count is over, and how far "
            "each run has got. Nothing here is final until its runs are done.", ""] \
        + _joined(paragraphs)


def readme_paragraphs(settings, paired, root):
    """The README's generated block, with where it comes from."""
    paragraphs = standing_paragraphs(settings, paired)
    if not paragraphs:
        return f"(No copying run under {root} yet.)\n"
    return "\n".join([f"Generated by `python report.py {root}`; do not edit by hand.", ""]
                     + _joined(paragraphs))


def _joined(paragraphs):
    """The paragraphs' lines, each paragraph followed by a blank line."""
    return [line for paragraph in paragraphs for line in paragraph + [""]]
