"""The stability section under a results table: per model, each row's spread over seeds and the probability that
one seed's run of a row beats one seed's run of another (stats.probability_of_improvement). Shown only where a
model has two or more rows with at least MIN_SEEDS seeds each."""
from __future__ import annotations

from bench.report import stats
from bench.report.fmt import DASH, fmt_metric
from bench.report.model import Group, Section, Table, cells

MIN_SEEDS = 3
STABILITY_NOTE = ("sd: the sample standard deviation of the primary metric over seeds. P(beats X): the chance that "
                  "one seed's run of the row ends above one seed's run of X (below, where lower is better), over "
                  "every pair of their seeds, ties counting 1/2; in brackets a 95 % bootstrap interval that "
                  "resamples each row's seeds. Where every pair goes one way no resample can differ, so the count of "
                  "pairs is shown instead of an interval: with this many seeds that is all the seeds can say. Seeds "
                  "are not paired here; the paired tests are above.")


def _values(g: Group) -> list[float]:
    return [r.value for r in g.runs if r.value is not None]


def stability_table(section: Section, groups: list[Group]) -> Table:
    headers = ["row", "seeds", "sd"] + [f"P(beats {g.short or g.label})" for g in groups]
    rows = []
    for g in groups:
        values = _values(g)
        row = cells(g.short or g.label, str(len(values)), fmt_metric(stats.seed_spread(values)))
        for other in groups:
            if other is g:
                row += cells(DASH)
                continue
            p, (lo, hi) = stats.probability_of_improvement(values, _values(other), section.maximise)
            pairs = len(values) * len(_values(other))
            # every pair one way: each resample keeps it, so a [1, 1] interval would claim certainty it has not got
            row += cells(f"{p:.2f} [{lo:.2f}, {hi:.2f}]" if lo < hi else f"{p:.2f} ({ {1.0: 'all', 0.0: 'none'}.get(p, 'ties in all') } of {pairs} pairs)")
        rows.append(row)
    return Table(headers, rows, set(range(1, len(headers))))


def stability_blocks(section: Section) -> list:
    """("h3", title), ("table", ...), ("p", note) per model with two or more rows of MIN_SEEDS seeds or more."""
    by_model: dict[str, list[Group]] = {}
    for g in section.groups:
        if len(_values(g)) >= MIN_SEEDS:
            by_model.setdefault(g.model, []).append(g)
    blocks: list = []
    for model, groups in by_model.items():
        if len(groups) >= 2:
            blocks += [("h3", f"Stability over seeds: {model}"), ("table", stability_table(section, groups))]
    return blocks + [("p", STABILITY_NOTE)] if blocks else []
