"""Transfer copying (an analysis): which trained delays have transfer measurements, and at which
delays T' they are set side by side."""
from reporting.refs import TRANSFER_T
def transfer_groups(runs):
    """{trained T: [runs with transfer results]}, the paper's T = 100 always present."""
    groups = {100: []}
    for run in runs:
        if run.get("transfer"):
            trained = run["transfer"]["trained_T"] or run["args"].get("T")
            groups.setdefault(trained, []).append(run)
    return dict(sorted(groups.items()))


def transfer_delays(trained, members):
    delays = set(TRANSFER_T) if trained == 100 else set()
    for run in members:
        delays |= {int(d) for d in run["transfer"]["accuracy"]}
    return sorted(delays)
