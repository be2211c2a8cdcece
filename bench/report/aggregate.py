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
from bench.report.read import variant_overrides

MAJORITY = "majority baseline"
BELOW_MAJORITY = "≤ majority"
BIASED = "selected on validation (biased)"
MIXED_CONDITIONS = "mixed conditions"
DIRTY = "dirty tree"
TRUNCATED = "truncated > 1 %"
TRUNCATION_LIMIT = 0.01


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


MEASURED_ENERGY = ("nvml", "rapl")


def _measured_energy(run: Run, key: str) -> float | None:
    energy = run.data.get("energy")
    return run.get("energy", key) if isinstance(energy, dict) and energy.get("source") in MEASURED_ENERGY else None


def energy_sources(g: Group) -> str:
    return ", ".join(sorted({str(r.data["energy"].get("source")) for r in g.runs
                             if isinstance(r.data.get("energy"), dict) and r.data["energy"].get("source")}))


MEASURES = {
    "trainable": Measure("trainable params", lambda r: r.get("params", "trainable"), -1, False),
    "total": Measure("total params", lambda r: r.get("params", "total"), 0, False),
    "trainable_pct": Measure("trainable %", _trainable_pct, -1, False),
    "stored_bytes": Measure("stored", lambda r: r.get("storage", "bytes"), -1, False),
    "tokens_per_s": Measure("train tokens/s", lambda r: r.get("throughput", "train_tokens_per_s"), +1, True),
    "memory": Measure("memory (added)", lambda r: r.get("memory", "added_bytes"), -1, True),
    "train_s": Measure("train time", lambda r: r.get("time", "train_s"), -1, True),
    "mfu": Measure("MFU", lambda r: r.get("throughput", "mfu"), +1, True),
    # measured energy only (NVML or RAPL counters, result.json energy.source); never an estimate
    "energy_train": Measure("train J / 1k tokens", lambda r: _measured_energy(r, "j_per_1k_train_tokens"), -1, True),
    "energy_eval": Measure("eval J / 1k examples", lambda r: _measured_energy(r, "j_per_1k_eval_examples"), -1, True),
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

FAMILY_MAJORITY = "vs majority"
FAMILY_PAIRS = "pairs"
ONE_SEED = ("1 seed: training randomness is not measured, so no verdict (the example-level interval is shown); "
            "run 3 or more seeds")


@dataclass
class _Side:
    """One side of a comparison: a row's validation examples per seed (or the majority baseline's constant
    prediction on them)."""
    by_seed: dict[str, dict[str, tuple]]     # seed -> example id -> (reference, prediction, per-example score)
    problems: list[tuple[str, str]]          # (seed, why it was left out)


def _side(g: Group, majority: bool = False) -> _Side:
    by_seed: dict[str, dict[str, tuple]] = {}
    problems = []
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
        by_seed[seed] = dict(zip(p.ids, zip(p.references, preds, scores)))
    return _Side(by_seed, problems)


def _seed_order(seed: str) -> tuple:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def _shared(mine: _Side, theirs: _Side) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(seeds both sides have, example ids every one of those runs has with the same reference, what was left
    out): the ids are clusters, so an id counts only when every seed of both sides saw it."""
    seeds = tuple(s for s in mine.by_seed if s in theirs.by_seed)
    if not seeds:
        return (), (), ""
    first = mine.by_seed[seeds[0]]
    runs = [side.by_seed[s] for s in seeds for side in (mine, theirs)]
    ids = tuple(i for i, example in first.items()
                if all(i in run and run[i][0] == example[0] for run in runs))
    missing = {seed for seed, _ in mine.problems + theirs.problems}
    left_out = [f"{len(missing)} seed(s) without predictions"] if missing else []
    unpaired = sorted({s for s in [*mine.by_seed, *theirs.by_seed] if s not in seeds} - missing, key=_seed_order)
    left_out += [f"seed(s) {', '.join(unpaired)} without a partner (the table's means include them)"] if unpaired \
        else []
    skipped = len(first) - len(ids)
    left_out += [f"{skipped} examples without a matching id and reference in every run"] if skipped else []
    return seeds, ids, " and ".join(left_out) + " left out" if left_out else ""


def _comparisons(section: Section, requests: list[tuple[Group, Group | None]]) -> list[Comparison]:
    """Each (a, b): row a minus row b (b None: the majority baseline) on validation, runs paired by seed and
    examples by id: the per-seed differences, their paired t (stats.seed_test) and the cluster bootstrap over
    ids (stats.seed_paired_differences). Requests with the same seeds and ids share one bootstrap, which gives
    each the result it would get alone. Verdicts are set later, per family (_correct)."""
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
        seeds, ids, note = _shared(mine, theirs)
        if not ids:
            problems = sorted({why for _, why in mine.problems + theirs.problems})
            reason = problems[0] if problems and not seeds else "no seed in common" if not seeds \
                else "no example ids in common"
            results[n] = Comparison(other, reason=reason)
            continue
        frames.setdefault((seeds, ids), []).append((n, mine, theirs, note))
    for (seeds, ids), members in frames.items():
        order: dict[tuple[int, str], tuple[_Side, str]] = {}
        for _, mine, theirs, _ in members:
            for s in (mine, theirs):
                for seed in seeds:
                    order.setdefault((id(s), seed), (s, seed))
        position = {key: i for i, key in enumerate(order)}
        first = members[0][1].by_seed[seeds[0]]
        refs = [first[i][0] for i in ids]
        sources = [[s.by_seed[seed][i][1] for i in ids] for s, seed in order.values()]
        others = [MAJORITY if requests[n][1] is None else requests[n][1].label for n, *_ in members]
        scores = None
        if not stats.has_closed_form(section.primary):
            scores = [[s.by_seed[seed][i][2] for i in ids] for s, seed in order.values()]
            if any(v is None for row in scores for v in row):
                for (n, *_), other in zip(members, others):
                    results[n] = Comparison(other, reason=f"{section.primary} is a corpus metric and the predictions "
                                                          "files carry no per-example scores")
                continue
        pairs = [[(position[(id(mine), seed)], position[(id(theirs), seed)]) for seed in seeds]
                 for _, mine, theirs, _ in members]
        try:
            found = stats.seed_paired_differences(section.primary, refs, sources, pairs,
                                                  requests[members[0][0]][0].runs[0].metric_args, scores)
        except ValueError as err:
            found = [str(err)] * len(members)
        for (n, _, _, note), other, value in zip(members, others, found):
            if isinstance(value, str):
                results[n] = Comparison(other, seeds=len(seeds), examples=len(ids), reason=value)
                continue
            test = stats.seed_test(value.per_seed, resolution=1 / len(ids))
            results[n] = Comparison(
                other, value.diff, value.interval, len(seeds), len(ids), stats.NA, note if test else
                "; ".join(x for x in (ONE_SEED, note) if x), per_seed=value.per_seed, example_p=value.p,
                seed_interval=test.interval if test else None, seed_p=test.p if test else None,
                p=max(test.p, value.p) if test else value.p)
    return results


def _correct(section: Section, family: str, tests: list[Comparison]) -> None:
    """Holm over a family's p-values; a verdict needs 2 or more seeds (both tests agreeing: p is their maximum)."""
    tested = [c for c in tests if c.p is not None]
    for c, adjusted in zip(tested, stats.holm([c.p for c in tested])):
        c.family, c.family_size, c.adjusted_p = family, len(tested), adjusted
        if c.seed_p is not None:
            c.verdict = stats.decide(c.diff, adjusted, section.maximise)
            # planning figure at the family's strictest Holm threshold (alpha / m), about 50 % power
            spread = stats.seed_spread(c.per_seed, 1 / c.examples)
            c.seeds_needed = stats.seeds_needed(c.diff, spread, 1 - stats.ALPHA / len(tested))


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
    """Not significantly better than the majority baseline (family-corrected). With one seed there is no verdict,
    and the row is flagged unless the example-level test alone says better; without predictions to test, unless
    its mean is above the baseline's value."""
    c = g.vs_majority
    if c is not None and c.verdict != stats.NA:
        return c.verdict != stats.BETTER
    if c is not None and c.adjusted_p is not None and c.diff is not None:
        return stats.decide(c.diff, c.adjusted_p, section.maximise) != stats.BETTER
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


def _selected_on_dev(run: Run) -> bool:
    selection = run.data.get("selection")
    return isinstance(selection, dict) and selection.get("split", "dev") == "dev"


def truncated_splits(run: Run) -> list[str]:
    """The splits where more than 1 % of the rows lost tokens to trainer.max_length, or a k-shot prompt lost
    demonstrations (result.json `truncation`; older files record nothing)."""
    found = run.data.get("truncation")
    if not isinstance(found, dict):
        return []
    return sorted(split for split, counts in found.items() if isinstance(counts, dict) and (
        (num(counts.get("truncated_fraction")) or 0) > TRUNCATION_LIMIT or (num(counts.get("rows_with_fewer_shots")) or 0) > 0))


def _flags(section: Section) -> None:
    all_shas = sorted({sha for g in section.groups for sha in g.shas})
    if len(all_shas) > 1:
        section.notes.append(f"the runs in this table come from {len(all_shas)} code versions "
                             f"({', '.join(map(short_sha, all_shas))}): rows may differ by more than the method")
    variants = Counter((g.model, g.method) for g in section.groups)
    for g in section.groups:
        # several configurations of one (model, method) scored on the split shown, none chosen on dev: the best
        # of them is a maximum over noise (bench-protocol's finals carry their dev selection record)
        compared_here = variants[(g.model, g.method)] > 1 and not all(_selected_on_dev(r) for r in g.runs)
        if compared_here or any(r.data.get("selection_biased") is True for r in g.runs):
            g.flags.append(BIASED)
        if len(all_shas) > 1 or len(g.shas) > 1:
            g.flags.append("code " + ", ".join(map(short_sha, g.shas)) if g.shas else "code not recorded")
        if g.dirty:
            g.flags.append(DIRTY)
        if any(truncated_splits(r) for r in g.runs):
            g.flags.append(TRUNCATED)
        if len(g.conditions) > 1:
            g.flags.append(MIXED_CONDITIONS)
    keys = sorted({c for g in section.groups for c in g.conditions})
    if len(keys) > 1:
        section.condition_keys = {c: chr(ord("A") + i) if i < 26 else f"C{i + 1}" for i, c in enumerate(keys)}


def _variant_items(g: Group) -> dict[str, str]:
    """The group's variant as {override key: "key=value"} (all runs of a group share their variant)."""
    run = (g.runs or g.excluded)[0]
    return {entry.split("=", 1)[0]: entry for entry in variant_overrides(run.data.get("overrides"))}


def short_labels(groups: list[Group]) -> None:
    """Set each group's short label: only what differs between the rows of its section (the model when models
    differ, the method, the overrides whose values differ); the full variant stays in the runs table and CSV."""
    items = [_variant_items(g) for g in groups]
    keys = sorted({k for found in items for k in found})
    differing = [k for k in keys if len({found.get(k) for found in items}) > 1]
    several_models = len({g.model for g in groups}) > 1
    several_methods = len({g.method for g in groups}) > 1
    for g, found in zip(groups, items):
        g.short_variant = ",".join(found[k] for k in differing if k in found)
        parts = [g.model] if several_models else []
        parts += [g.method] if several_methods or not g.short_variant else []
        g.short = " · ".join(p for p in parts + [g.short_variant] if p) or g.method


def aggregate(runs: list[Run]) -> list[Section]:
    sections = []
    for (task, primary), members in _group_runs(runs).items():
        section = Section(task, primary, members, [])
        short_labels(members)
        for g in members:
            _describe(g, section.notes)
        section.baseline = _baseline(section)
        measured = [g for g in members if g.values["mean"] is not None]
        if section.baseline is not None:  # first every row against the baseline: it decides the flags
            found = _comparisons(section, [(g, None) for g in measured])
            _correct(section, FAMILY_MAJORITY, found)
            for g, c in zip(measured, found):
                g.vs_majority = c
                section.comparisons.append((g, c))
                section.tests.append((g, c))
                if _below_majority(section, g):
                    g.flags.append(BELOW_MAJORITY)
        section.best = _choose_best(section)
        # every pair of rows is one family: the best row is chosen on the same data, so any pair may be shown
        pairs = [(a, b) for i, a in enumerate(measured) for b in measured[i + 1:]]
        found = _comparisons(section, pairs)
        _correct(section, FAMILY_PAIRS, found)
        tested = {(id(a), id(b)): c for (a, b), c in zip(pairs, found)}
        section.tests += [(a, c) for (a, _), c in zip(pairs, found)]

        def between(g: Group, h: Group) -> Comparison:
            found = tested.get((id(g), id(h)))
            return found if found is not None else tested[(id(h), id(g))].reversed(h.label)

        against_best = [g for g in measured if g is not section.best] if len(measured) > 1 else []
        shown = set()
        for g in against_best:
            g.vs_best = between(g, section.best)
            section.comparisons.append((g, g.vs_best))
            shown.add((id(g), id(section.best)))
        for name, g, f in _fronts(section):
            c = between(g, f)
            if (id(g), id(f)) not in shown:  # the same pair can come up for both fronts and as the best
                shown.add((id(g), id(f)))
                section.comparisons.append((g, c))
            if c.verdict == stats.SAME and name not in g.near_front:
                g.near_front[name] = f.short
        _flags(section)
        sections.append(section)
    return sections
