"""Runs -> sections of groups: means over seeds, intervals, the majority baseline, paired comparisons, flags,
Pareto fronts. A group is one (task, model, method, variant); a section is one (task, primary metric).

Order of work in a section: each row against the majority baseline (a row not significantly better is flagged
and left out of the best-row choice, bold and the fronts), then the best row, then every row against it,
then the fronts and which off-front rows are not distinguishable from a front row.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from bench.report import stats
from bench.report.fmt import DASH, dig, num, text
from bench.report.model import FAILED, Baseline, Comparison, Group, Run, Section, seed_key

MAJORITY = "majority baseline"
BELOW_MAJORITY = "≤ majority"
BIASED = "selected on validation (biased)"
MIXED_CONDITIONS = "mixed conditions"
DIRTY = "dirty tree"


@dataclass(frozen=True)
class Measure:
    header: str
    read: Callable[[Run], float | None]
    direction: int        # +1: highest is best, -1: lowest is best, 0: no best
    conditional: bool     # depends on device, threads, launcher...: compared only under equal conditions


def _trainable_pct(run: Run) -> float | None:
    pct = run.get("params", "trainable_percent")
    if pct is None:
        trainable, total = run.get("params", "trainable"), run.get("params", "total")
        pct = 100.0 * trainable / total if trainable is not None and total else None
    return pct


MEASURES = {
    "trainable": Measure("trainable params", lambda r: r.get("params", "trainable"), -1, False),
    "total": Measure("total params", lambda r: r.get("params", "total"), 0, False),
    "trainable_pct": Measure("trainable %", _trainable_pct, -1, False),
    "stored_bytes": Measure("stored", lambda r: r.get("storage", "bytes"), -1, False),
    "tokens_per_s": Measure("train tokens/s", lambda r: r.get("throughput", "train_tokens_per_s"), +1, True),
    "memory": Measure("memory (added)", lambda r: r.get("memory", "added_bytes"), -1, True),
    "train_s": Measure("train time", lambda r: r.get("time", "train_s"), -1, True),
    "mfu": Measure("MFU", lambda r: r.get("throughput", "mfu"), +1, True),
}
PARETO_COSTS = {"params": "trainable", "bytes": "stored_bytes"}


def pareto_front(points: list[tuple[float, float]], maximise: bool = True) -> list[bool]:
    """points are (metric, cost). A point is on the front when no other point is at least as good
    on the metric and at most as costly, and strictly better on one of the two."""
    sign = 1.0 if maximise else -1.0
    front = []
    for i, (m_i, c_i) in enumerate(points):
        dominated = any(sign * m_j >= sign * m_i and c_j <= c_i and (sign * m_j > sign * m_i or c_j < c_i)
                        for j, (m_j, c_j) in enumerate(points) if j != i)
        front.append(not dominated)
    return front


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def short_sha(sha: str) -> str:
    return sha[:7]


# ---------------------------------------------------------------------------- paired comparisons

@dataclass
class _Side:
    """One side of a comparison: a row's validation examples (or the majority baseline's constant on them),
    keyed by (seed, example id) and pooled over seeds."""
    examples: dict[tuple[str, str], tuple]   # (seed, id) -> (reference, prediction, per-example score or None)
    seeds: set[str]
    problems: list[tuple[str, str]]          # (seed, why it was left out)


def _side(g: Group, majority: bool = False) -> _Side:
    examples: dict[tuple[str, str], tuple] = {}
    seeds, problems = set(), []
    runs: dict[str, Run] = {}
    for run in sorted(g.runs, key=lambda r: (seed_key(r.seed), r.path)):
        runs.setdefault(text(run.seed), run)  # a re-run of a seed: the first by path is paired
    for seed, run in runs.items():
        p = run.predictions
        if p is None or (majority and run.majority is None):
            problems.append((seed, "no majority baseline recorded" if p is not None
                                else run.predictions_problem or "no predictions file recorded"))
            continue
        preds = [run.majority["prediction"]] * len(p.ids) if majority else p.predictions
        scores = p.scores.get(g.primary) if not majority else None
        scores = scores if scores is not None else [None] * len(p.ids)
        examples.update(((seed, ident), example) for ident, example in zip(p.ids, zip(p.references, preds, scores)))
        seeds.add(seed)
    return _Side(examples, seeds, problems)


def _comparisons(section: Section, requests: list[tuple[Group, Group | None]]) -> list[Comparison]:
    """Each (a, b): row a minus row b (b None: the majority baseline) over validation examples, runs paired
    by seed, examples by id, every seed's pairs pooled. Requests with the same example pairs share one
    bootstrap (stats.paired_differences), which gives each the interval it would get alone."""
    sides: dict[tuple[int, bool], _Side] = {}

    def side(g: Group, majority: bool = False) -> _Side:
        if (id(g), majority) not in sides:
            sides[(id(g), majority)] = _side(g, majority)
        return sides[(id(g), majority)]

    results: list[Comparison | None] = [None] * len(requests)
    frames: dict[tuple, list[tuple[int, _Side, _Side, str]]] = {}
    for n, (a, b) in enumerate(requests):
        other = MAJORITY if b is None else b.label
        mine, theirs = side(a), side(a, True) if b is None else side(b)
        common = mine.seeds & theirs.seeds
        keys = tuple(k for k, v in mine.examples.items() if k[0] in common and k in theirs.examples
                     and theirs.examples[k][0] == v[0])
        if not keys:
            problems = sorted({why for _, why in mine.problems + theirs.problems})
            reason = problems[0] if problems and not common else "no seed in common" if not common \
                else "no example ids in common"
            results[n] = Comparison(other, reason=reason)
            continue
        missing = {seed for seed, _ in mine.problems + theirs.problems}
        left_out = [f"{len(missing)} seed(s) without predictions"] if missing else []
        skipped = sum(1 for k in mine.examples if k[0] in common) - len(keys)
        left_out += [f"{skipped} examples without a matching id and reference"] if skipped else []
        frames.setdefault(keys, []).append((n, mine, theirs, " and ".join(left_out) + " left out" if left_out
                                            else ""))
    for keys, members in frames.items():
        order: dict[int, _Side] = {}
        for _, mine, theirs, _ in members:
            order.setdefault(id(mine), mine)
            order.setdefault(id(theirs), theirs)
        position = {key: i for i, key in enumerate(order)}
        first = members[0][1]
        refs = [first.examples[k][0] for k in keys]
        sources = [[s.examples[k][1] for k in keys] for s in order.values()]
        scores = None
        if not stats.has_closed_form(section.primary):
            scores = [[s.examples[k][2] for k in keys] for s in order.values()]
            if any(v is None for row in scores for v in row):
                for n, *_ in members:
                    results[n] = Comparison(MAJORITY if requests[n][1] is None else requests[n][1].label,
                                            reason=f"{section.primary} is a corpus metric and the predictions "
                                                   "files carry no per-example scores")
                continue
        pairs = [(position[id(mine)], position[id(theirs)]) for _, mine, theirs, _ in members]
        seeds = len({k[0] for k in keys})
        try:
            found = stats.paired_differences(section.primary, refs, sources, pairs,
                                             requests[members[0][0]][0].runs[0].metric_args, scores)
        except ValueError as err:
            found = [str(err)] * len(members)
        for (n, _, _, note), value in zip(members, found):
            other = MAJORITY if requests[n][1] is None else requests[n][1].label
            if isinstance(value, str):
                results[n] = Comparison(other, seeds=seeds, examples=len(keys), reason=value)
            else:
                diff, interval = value
                results[n] = Comparison(other, diff, interval, seeds, len(keys),
                                        stats.verdict(interval, section.maximise), note)
    return results


# ---------------------------------------------------------------------------- aggregation

def _usual_primary(runs: list[Run]) -> dict[str, str]:
    counts = Counter((r.task, r.primary) for r in runs if r.primary != DASH)
    usual: dict[str, str] = {}
    for (task, primary), _ in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
        usual.setdefault(task, primary)  # most common first, ties by name: deterministic
    return usual


def _group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Group]]:
    usual = _usual_primary(runs)  # a failed run that does not name its primary metric joins the task's usual one
    groups: dict[tuple, Group] = {}
    for run in runs:
        if (run.status != "finished" and run.status not in FAILED) or run.dev_only:
            continue
        primary = usual.get(run.task, DASH) if run.primary == DASH and run.status in FAILED else run.primary
        key = (run.task, primary, run.model, run.method, run.variant)
        group = groups.setdefault(key, Group(*key))
        (group.runs if run.status == "finished" else group.excluded).append(run)
    by_section: dict[tuple[str, str], list[Group]] = {}
    for key in sorted(groups):
        by_section.setdefault(key[:2], []).append(groups[key])
    return by_section


def _describe(g: Group, notes: list[str]) -> None:
    """Means, interval, conditions, memory figure and code versions of one group."""
    values = [r.value for r in g.runs if r.value is not None]
    g.values["mean"] = statistics.fmean(values) if values else None
    g.values["std"] = statistics.stdev(values) if len(values) >= 2 else None  # sample std, ddof=1
    g.interval = stats.t_interval(values)
    for key, measure in MEASURES.items():
        g.values[key] = _mean([measure.read(r) for r in g.runs])
    if g.values["memory"] is None or any(r.get("memory", "added_bytes") is None for r in g.runs
                                         if r.get("memory", "peak_bytes") is not None):
        peak = _mean([r.get("memory", "peak_bytes") for r in g.runs])  # older files: the absolute peak only
        g.values["memory"], g.memory_kind = peak, "peak" if peak is not None else ""
    else:
        g.memory_kind = "added"
    g.conditions = sorted({r.conditions for r in g.runs})
    g.shas = sorted({r.git_sha for r in g.runs if r.git_sha})
    g.dirty = any(r.git_dirty for r in g.runs)
    seeds = Counter(text(r.seed) for r in g.runs)
    dupes = sorted(s for s, c in seeds.items() if c > 1)
    if dupes:
        notes.append(f"{g.label}: seed {', '.join(dupes)} appears more than once among finished runs "
                     "(all are averaged; check for re-runs in several sweeps)")
    missing = len(g.runs) - len(values)
    if missing:
        notes.append(f"{g.label}: {missing} finished run(s) without a value for {g.primary}")
    for r in g.runs:
        p = r.predictions
        if p is None or r.value is None:
            continue
        try:
            again = stats.metric_value(g.primary, p.references, p.predictions, r.metric_args,
                                       p.scores.get(g.primary))
        except ValueError:
            continue
        if abs(again - r.value) > 1e-6:
            notes.append(f"{r.path}: {g.primary} recomputed from its predictions file is {again:.6f}, "
                         f"recorded {r.value:.6f}")


def _baseline(section: Section) -> Baseline | None:
    recorded = [r.majority for g in section.groups for r in g.runs if r.majority is not None]
    values = [num(dig(m, "metrics", section.primary)) for m in recorded]
    return Baseline("majority", [v for v in values if v is not None]) if recorded else None


def _below_majority(section: Section, g: Group) -> bool:
    """Not significantly better than the majority baseline; without predictions to test, not above its value."""
    if g.vs_majority is not None and g.vs_majority.verdict != stats.NA:
        return g.vs_majority.verdict != stats.BETTER
    base, mean = section.baseline.value if section.baseline else None, g.values["mean"]
    return base is not None and mean is not None and (mean <= base if section.maximise else mean >= base)


def _choose_best(section: Section) -> Group | None:
    sign = 1 if section.maximise else -1
    ranked = [g for g in section.groups if g.values["mean"] is not None]
    eligible = [g for g in ranked if not g.below_majority] or ranked
    return max(eligible, key=lambda g: sign * g.values["mean"]) if eligible else None  # ties: first row


def _fronts(section: Section) -> list[tuple[str, Group, Group]]:
    """Mark Pareto fronts (rows below the majority baseline take no part); return (front name, off-front row,
    front row) pairs whose comparison says whether the row is distinguishable from that front point."""
    candidates = []
    for name, cost_key in PARETO_COSTS.items():
        eligible = [g for g in section.groups if g.values["mean"] is not None and g.values[cost_key] is not None
                    and not g.below_majority]
        front = pareto_front([(g.values["mean"], g.values[cost_key]) for g in eligible], section.maximise)
        for g in section.groups:
            g.pareto[name] = None
        for g, on in zip(eligible, front):
            g.pareto[name] = on
        on_front = [g for g, on in zip(eligible, front) if on]
        candidates += [(name, g, f) for g, on in zip(eligible, front) if not on for f in on_front]
    return candidates


def _flags(section: Section) -> None:
    all_shas = sorted({sha for g in section.groups for sha in g.shas})
    if len(all_shas) > 1:
        section.notes.append(f"the runs in this table come from {len(all_shas)} code versions "
                             f"({', '.join(map(short_sha, all_shas))}): rows may differ by more than the method")
    for g in section.groups:
        if any(r.data.get("selection_biased") is True for r in g.runs):
            g.flags.append(BIASED)
        if len(all_shas) > 1 or len(g.shas) > 1:
            g.flags.append("code " + ", ".join(map(short_sha, g.shas)) if g.shas else "code not recorded")
        if g.dirty:
            g.flags.append(DIRTY)
        if len(g.conditions) > 1:
            g.flags.append(MIXED_CONDITIONS)
    keys = sorted({c for g in section.groups for c in g.conditions})
    if len(keys) > 1:
        section.condition_keys = {c: chr(ord("A") + i) if i < 26 else f"C{i + 1}" for i, c in enumerate(keys)}


def aggregate(runs: list[Run]) -> list[Section]:
    sections = []
    for (task, primary), members in _group_runs(runs).items():
        section = Section(task, primary, members, [])
        for g in members:
            _describe(g, section.notes)
        section.baseline = _baseline(section)
        measured = [g for g in members if g.values["mean"] is not None]
        if section.baseline is not None:  # first every row against the baseline: it decides the flags
            for g, c in zip(measured, _comparisons(section, [(g, None) for g in measured])):
                g.vs_majority = c
                section.comparisons.append((g, c))
                if _below_majority(section, g):
                    g.flags.append(BELOW_MAJORITY)
        section.best = _choose_best(section)
        against_best = [g for g in measured if g is not section.best] if len(measured) > 1 else []
        near = _fronts(section)
        found = _comparisons(section, [(g, section.best) for g in against_best] + [(g, f) for _, g, f in near])
        for g, c in zip(against_best, found):
            g.vs_best = c
            section.comparisons.append((g, c))
        shown = {(id(g), id(section.best)) for g in against_best}
        for (name, g, f), c in zip(near, found[len(against_best):]):
            if (id(g), id(f)) not in shown:  # the same pair can come up for both fronts and as the best
                shown.add((id(g), id(f)))
                section.comparisons.append((g, c))
            if c.verdict == stats.SAME and name not in g.near_front:
                g.near_front[name] = f.label
        _flags(section)
        sections.append(section)
    return sections
