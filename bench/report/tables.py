"""What the report shows, as renderer-neutral blocks: ("h3", text), ("p", text), ("note", text) and
("table", Table). Markdown and HTML render the same blocks, so both always say the same thing."""
from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from bench.report import aggregate as agg
from bench.report import stats
from bench.report.fmt import (DASH, command_text, fmt_bytes, fmt_count, fmt_interval, fmt_metric, fmt_pct,
                              fmt_plain, fmt_rate, fmt_seconds, fmt_signed, num, one_line, text)
from bench.report.model import Cell, Conditions, Group, Run, Section, Table, Unreadable, cells
from bench.report.samples import sample_blocks
from bench.report.soft_prompts import soft_prompt_blocks
from bench.report.stability import stability_blocks

Block = tuple[str, Any]

LEGEND = ("Metric: mean ± sample standard deviation (ddof=1) over finished runs, and the 95 % t-interval of the "
          "mean over seeds (n/a for one seed); n counts the runs. Vs best and vs majority: the verdict on the paired "
          "difference of the primary metric on validation (runs paired by seed, examples by id). Seeds are the unit "
          "of replication: better or worse needs both a paired t over the per-seed differences (n - 1 degrees of "
          "freedom; a spread below one example's worth counts as one example's worth) and a cluster bootstrap over "
          "example ids (all seeds of an id resampled together; the metric computed per seed, then averaged; 2000 "
          "resamples, fixed seed; p from its standard error) to reject 0, with the larger of their two p-values "
          "Holm-corrected over the table's family of tests (every row vs majority; every pair of rows); else not "
          "distinguishable. One seed gives no verdict. Details below each table and in verdicts.csv. The "
          "best row is the highest mean among rows that beat the majority baseline. Other columns are means over "
          "the same runs. "
          "**Bold**: best in its column (metric and throughput highest; parameters, bytes, memory and time "
          "lowest); throughput, memory and time are compared only between rows run under the same conditions. "
          "Memory (added): memory the run added above its level at the start of each phase (the largest over "
          "training and evaluation), not the process's absolute peak; \"(peak)\" marks older result files that "
          "recorded only the absolute peak. Pareto: no other row is at least as good on the metric and at most "
          "as costly (trainable parameters, or stored bytes), with one of the two strictly better; \"≈\" names "
          "a front row it is not distinguishable from. Failed and diverged runs are never averaged; they are "
          "listed below.")
FLAG_NOTES = {
    agg.BELOW_MAJORITY: "not significantly better than the majority baseline (without predictions to test: a "
                        "mean not above it); never ranked best or bold, not on the Pareto fronts",
    agg.BIASED: "its configuration was chosen on the validation split shown here (a search scored on it, or "
                "several configurations of the same model and method shown side by side without a dev selection "
                "record), so the best of them is an optimistic maximum",
    agg.DIRTY: "the code had uncommitted changes when a run started",
    agg.TRUNCATED: "more than 1 % of a split's rows lost tokens to trainer.max_length, or a k-shot prompt showed "
                   "fewer demonstrations than asked (result.json `truncation`): the figure is for cut inputs; raise "
                   "trainer.max_length",
    agg.MIXED_CONDITIONS: "its runs ran under different conditions; its throughput, memory and time are not "
                          "compared",
}
SHOWN = ["trainable", "trainable_pct", "stored_bytes", "tokens_per_s", "memory", "train_s"]
FORMATS = {"trainable": fmt_count, "total": fmt_count, "trainable_pct": fmt_pct, "stored_bytes": fmt_bytes,
           "tokens_per_s": fmt_rate, "memory": fmt_bytes, "train_s": fmt_seconds, "mfu": fmt_plain,
           "energy_train": fmt_plain, "energy_eval": fmt_plain}


def _best_rows(section: Section, key: str) -> set[int]:
    """Rows holding the best value of a column, among rows that may be compared: not below the majority
    baseline; conditions-dependent columns only within one set of conditions (and memory within one kind of
    figure); at least two rows to compare."""
    measure = agg.MEASURES[key]
    if measure.direction == 0:
        return set()
    classes: dict[tuple, list[tuple[int, float]]] = {}
    for i, g in enumerate(section.groups):
        value = g.values.get(key)
        if value is None or g.below_majority or (measure.conditional and len(g.conditions) != 1):
            continue
        klass = (g.conditions[0], g.memory_kind if key == "memory" else "") if measure.conditional else ()
        classes.setdefault(klass, []).append((i, value))
    best = set()
    for values in classes.values():
        if len(values) >= 2:
            pick = max if measure.direction > 0 else min
            target = pick(v for _, v in values)
            best |= {i for i, v in values if v == target}
    return best


def _best_metric_rows(section: Section) -> set[int]:
    """The best row (and rows tying with it) among rows not flagged below the majority baseline; bold only when
    there is more than one row to rank."""
    ranked = [g for g in section.groups if g.values["mean"] is not None]
    if len(ranked) < 2 or section.best is None:
        return set()
    target = section.best.values["mean"]
    return {i for i, g in enumerate(section.groups) if g.values["mean"] == target and not g.below_majority}


def _vs_best(section: Section, g: Group) -> str:
    if g is section.best and any(o.vs_best is not None for o in section.groups):
        return "best"
    return g.vs_best.verdict if g.vs_best is not None else DASH


def _pareto_text(g: Group, name: str) -> str:
    on = g.pareto.get(name)
    if on is None:
        return "no (≤ majority)" if g.below_majority and g.values[agg.PARETO_COSTS[name]] is not None else DASH
    if on:
        return "yes"
    return f"no, ≈ {g.near_front[name]}" if name in g.near_front else "no"


def section_table(section: Section) -> Table:
    groups = section.groups
    show_variant = any(g.short_variant for g in groups)
    keys = SHOWN + [k for k in ("mfu", "energy_train", "energy_eval")
                    if any(g.values.get(k) is not None for g in groups)]
    show_best = any(g.vs_best is not None for g in groups)
    show_majority = section.baseline is not None
    show_conditions = bool(section.condition_keys)
    show_flags = any(g.flags for g in groups)
    headers = ["model", "method"] + (["variant"] if show_variant else [])
    headers += [f"{section.primary} (mean ± std)", "95% CI (seeds)", "n", "failed/diverged"]
    headers += ["vs best"] * show_best + ["vs majority"] * show_majority
    headers += [agg.MEASURES[k].header for k in keys] + ["conditions"] * show_conditions
    headers += ["Pareto (params)", "Pareto (bytes)"] + ["flags"] * show_flags
    best_metric = _best_metric_rows(section)
    best = {k: _best_rows(section, k) for k in keys}
    rows = []
    for i, g in enumerate(groups):
        mean, std = g.values["mean"], g.values["std"]
        metric = DASH if mean is None else f"{fmt_metric(mean)} ± {fmt_metric(std)}"
        row = cells(g.model, g.method) + (cells(g.short_variant or DASH) if show_variant else [])
        row += [Cell(metric, i in best_metric),
                Cell(fmt_interval(g.interval) if g.interval else ("n/a" if g.n == 1 else DASH)),
                Cell(str(g.n)), Cell(str(len(g.excluded)))]
        row += cells(_vs_best(section, g)) if show_best else []
        if show_majority:
            verdict = g.vs_majority.verdict if g.vs_majority else DASH
            row += cells(agg.BELOW_MAJORITY if g.below_majority else verdict)
        for k in keys:
            value = FORMATS[k](g.values.get(k))
            if k == "memory" and g.memory_kind == "peak":
                value += " (peak)"
            if k.startswith("energy_") and g.values.get(k) is not None:
                value += f" ({agg.energy_sources(g)})"  # the counter it was read from
            row.append(Cell(value, i in best[k]))
        if show_conditions:
            row += cells(", ".join(section.condition_keys[c] for c in g.conditions) or DASH)
        row += [Cell(_pareto_text(g, p)) for p in agg.PARETO_COSTS]
        row += cells("; ".join(g.flags) or DASH) if show_flags else []
        rows.append(row)
    if section.baseline is not None:
        values = section.baseline.values
        spread = f" ± {fmt_metric(statistics.stdev(values))}" if len(set(values)) > 1 else ""
        rows.append(cells(DASH, agg.MAJORITY) + cells(DASH) * show_variant
                    + cells(fmt_metric(section.baseline.value) + spread)
                    + cells(DASH) * (len(headers) - 3 - show_variant))
    first_num = 3 if show_variant else 2
    return Table(headers, rows, {i for i, h in enumerate(headers) if i >= first_num and h not in (
        "vs best", "vs majority", "conditions", "Pareto (params)", "Pareto (bytes)", "flags")})


def _per_seed_text(c) -> str:
    # round first, then add 0.0: a tiny negative difference shows as +0.000, not -0.000
    return ", ".join(f"{round(d, 3) + 0.0:+.3f}" for d in c.per_seed) if c.per_seed else DASH


def _p_text(p: float | None) -> str:
    return DASH if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _verdict_text(c) -> str:
    if c.verdict == stats.SAME and c.seeds_needed is not None and c.seeds_needed > c.seeds:
        return f"{c.verdict} (≈ {c.seeds_needed} seeds would separate it)"
    if c.verdict == stats.SAME and c.seed_p is not None and c.seeds_needed is None and c.diff:
        return f"{c.verdict} (> {stats.MAX_SEEDS} seeds)"
    return c.verdict


def comparisons_table(section: Section) -> Table:
    rows = []
    for g, c in section.comparisons:
        rows.append(cells(g.short, section.short(c.other), fmt_signed(c.diff), _per_seed_text(c),
                          fmt_interval(c.seed_interval, signed=True), fmt_interval(c.interval, signed=True),
                          fmt_count(c.examples), _p_text(c.adjusted_p), _verdict_text(c), c.reason or DASH))
    return Table(["row", "compared with", f"difference in {section.primary}", "per seed",
                  "95% CI over seeds (t)", "95% CI over examples (bootstrap)", "example ids", "p (Holm)", "verdict",
                  "note"], rows, {2, 4, 5, 6, 7})


def families_text(section: Section) -> str:
    """Which tests were corrected together, and how."""
    sizes: dict[str, int] = {}
    for _, c in section.tests:
        if c.family:
            sizes[c.family] = c.family_size
    if not sizes:
        return ""
    names = {agg.FAMILY_MAJORITY: "every row against the majority baseline",
             agg.FAMILY_PAIRS: "every pair of rows (the vs-best and Pareto comparisons shown are among them)"}
    parts = [f"{names.get(f, f)} ({n} test{'s' if n != 1 else ''})" for f, n in sorted(sizes.items())]
    return ("Families of tests, each Holm-corrected at 5 %: " + "; ".join(parts) + ". p (Holm) is the adjusted "
            "larger p-value of the paired t over seeds and the bootstrap over examples. The two families together "
            "allow about a 10 % chance of any false verdict in a table. \"≈ N seeds\": how many seeds the test over "
            "seeds would need at the family's strictest threshold (5 % / tests) if the observed mean difference "
            "and spread held (about even odds, not a guarantee); the test over examples may still decide.")


def conditions_blocks(section: Section) -> list[Block]:
    if section.condition_keys:
        with_options = any(c.options for c in section.condition_keys)  # (the column only where a row has one)
        rows = [cells(key, c.device or DASH, c.device_name or DASH, c.torch_threads or DASH, c.launcher or DASH,
                      c.processes or DASH, c.precision or DASH) + cells(c.options or DASH) * with_options
                for c, key in section.condition_keys.items()]
        return [("p", "Conditions differ between rows (column \"conditions\"): throughput, memory and time are "
                      "compared only between rows with the same conditions."),
                ("table", Table(["conditions", "device", "device name", "torch threads", "launcher", "processes",
                                 "precision"] + ["options"] * with_options, rows))]
    found = sorted({c for g in section.groups for c in g.conditions} - {Conditions()})
    return [("p", f"Conditions (every row): {found[0].label()}.")] if found else []


def _values_text(values: Any) -> str:
    if isinstance(values, dict):
        return ", ".join(f"{text(k)}={text(v)}" for k, v in sorted(values.items(), key=lambda kv: text(kv[0])))
    return text(values) or DASH


def _search_space(sel: dict) -> Any:
    search = sel.get("search")  # bench-protocol writes search.space; older hand-written files: space
    return search.get("space") if isinstance(search, dict) else sel.get("space", sel.get("search_space"))


def _winning_values(sel: dict) -> Any:
    winner = sel.get("winner", sel.get("best"))  # bench-protocol: winner.values (+ dev_score, run, identity)
    return winner["values"] if isinstance(winner, dict) and isinstance(winner.get("values"), dict) else winner


def grid_edges(space: Any, values: Any) -> list[str]:
    """The names whose winning value is the smallest or largest point of a grid of three or more: the best
    value may lie outside the grid, so the selection says less than it seems to."""
    if not isinstance(space, dict) or not isinstance(values, dict):
        return []
    edges = []
    for name, grid in space.items():
        points = grid if isinstance(grid, list) and len(grid) >= 3 else []
        if points and all(isinstance(p, (int, float)) for p in points) and values.get(name) in (min(points),
                                                                                               max(points)):
            edges.append(name)
    return sorted(edges)


def selection_table(section: Section) -> Table | None:
    """Protocol finals carry `selection`: the search space, the trials with their dev scores, the winner."""
    rows = []
    for g in section.groups:
        chosen = [r.data["selection"] for r in g.runs if isinstance(r.data.get("selection"), dict)]
        if not chosen:
            continue
        sel = chosen[0]
        trials = [t for t in sel["trials"] if isinstance(t, dict)] if isinstance(sel.get("trials"), list) else []
        scores = "; ".join(f"{_values_text(t.get('values', t.get('params')))}: "
                           f"{fmt_metric(num(t.get('dev_score', t.get('score'))))}" for t in trials)
        differ = " (runs differ: selections not identical)" if any(c != sel for c in chosen) else ""
        space, values = _search_space(sel), _winning_values(sel)
        edges = grid_edges(space, values)
        edge = f" (at the edge of the grid: {', '.join(edges)}; the best value may lie outside it)" if edges else ""
        rows.append(cells(g.short, text(sel.get("split")) or "dev", text(sel.get("metric")) or DASH,
                          _values_text(space), str(len(trials)) if trials else DASH, one_line(scores, 400) or DASH,
                          _values_text(values) + edge + differ))
    if not rows:
        return None
    return Table(["row", "selected on", "metric", "search space", "trials", "dev scores", "winner"], rows, {4})


def section_blocks(section: Section) -> list[Block]:
    """Everything under a section heading: the table, conditions, flags, notes, comparisons, selection."""
    blocks: list[Block] = [("table", section_table(section))]
    blocks += conditions_blocks(section)
    flags = sorted({f for g in section.groups for f in g.flags if f in FLAG_NOTES})
    if flags:
        blocks.append(("p", "Flags: " + "; ".join(f"{f}: {FLAG_NOTES[f]}" for f in flags) + "."))
    blocks += [("note", n) for n in section.notes]
    reasons = {c.reason for _, c in section.comparisons if c.verdict == "n/a"}
    if section.comparisons and len(reasons) == 1 and all(c.verdict == "n/a" for _, c in section.comparisons):
        blocks.append(("note", f"no paired comparison could be made: {reasons.pop()}"))
    elif section.comparisons:
        blocks += [("h3", "Paired differences on validation (seeds and examples)"), ("table", comparisons_table(section))]
        blocks += [("p", families_text(section))] if families_text(section) else []
    selection = selection_table(section)
    if selection is not None:
        blocks += [("h3", "How each row was selected"), ("table", selection)]
    return blocks + stability_blocks(section) + soft_prompt_blocks(section) + sample_blocks(section)


# ---------------------------------------------------------------------------- run lists

def failed_table(runs: list[Run]) -> Table:
    rows = []
    for r in runs:
        step = r.data.get("diverged_step")
        rows.append(cells(r.task, r.model, r.method, r.variant or DASH, text(r.seed) or DASH, r.status,
                          text(step) if step is not None else DASH,
                          one_line(text(r.data.get("error"))) or DASH, r.path))
    return Table(["task", "model", "method", "variant", "seed", "status", "step", "error", "result file"], rows)


def incomplete_table(runs: list[Run]) -> Table:
    rows = [cells(r.task, r.model, r.method, r.variant or DASH, text(r.seed) or DASH, r.status, r.path)
            for r in runs]
    return Table(["task", "model", "method", "variant", "seed", "status", "result file"], rows)


def unreadable_table(items: list[Unreadable]) -> Table:
    return Table(["result file", "problem"], [cells(u.path, u.reason) for u in items])


def _primary_text(r: Run) -> str:
    if r.value is not None:
        return f"{r.primary}={fmt_metric(r.value)}"
    return f"dev {r.primary}={fmt_metric(r.dev_value)}" if r.dev_value is not None else DASH


def runs_table(runs: list[Run]) -> Table:
    rows = []
    for r in runs:
        overrides = command_text(r.data.get("overrides"))
        rows.append(cells(r.task, r.model, r.method, r.variant or DASH, text(r.seed) or DASH, r.status,
                          _primary_text(r), overrides or DASH, r.path))
    return Table(["task", "model", "method", "variant", "seed", "status", "primary metric", "overrides",
                  "result file"], rows)


def env_table(runs: list[Run]) -> Table:
    """Every env key with each distinct value and how many runs reported it: mixed versions show up."""
    seen: dict[str, Counter] = {}
    for r in runs:
        env = r.data.get("env")
        if isinstance(env, dict):
            for key, value in env.items():
                seen.setdefault(text(key), Counter())[text(value)] += 1
    rows = []
    for key in sorted(seen):
        for value, count in sorted(seen[key].items()):
            rows.append(cells(key, value or DASH, str(count)))
    return Table(["key", "value", "runs"], rows, {2})


def commands_table(runs: list[Run]) -> Table:
    counts = Counter(command_text(r.data.get("command")) for r in runs)
    rows = [cells(cmd or "(not recorded)", str(n)) for cmd, n in sorted(counts.items())]
    return Table(["command", "runs"], rows, {1})
