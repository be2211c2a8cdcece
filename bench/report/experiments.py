"""The named experiments' sections (conf/experiment/*.yaml that set `experiment_name`): each gathers the finished
runs of its experiment into plot data (series of points: x, mean over seeds, 95 % t-interval) and tables.

- scale: the metric against the base model's parameter count (log x), one line per method (Lester et al. 2021,
  Figure 1);
- prompt_length: the metric against the number of virtual tokens (log x), one line per initialisation (Figure 3);
- hard_vs_soft: the metric against the tokens the model processes per prediction (log x): hard prompts (no
  training) and trained soft prompts;
- domain_shift: in-domain and out-of-domain (result.json `shift`) metric per method.

A section appears only when runs of its experiment exist. Everything is computed from result.json alone, sorted,
so the same files give the same sections.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.report import stats
from bench.report.fmt import DASH, dig, fmt_count, fmt_interval, fmt_metric, fmt_seconds, fmt_signed, num, text
from bench.report.model import Run, Table, cells, seed_key


@dataclass
class Point:
    x: float
    mean: float
    interval: tuple[float, float] | None     # 95 % t-interval of the mean over seeds (None for one seed)
    n: int
    label: str                               # what the point is, e.g. "minilm (encoder)", "4-shot"
    hollow: bool = False                     # drawn hollow: e.g. nothing was trained
    values: list[float] = field(default_factory=list)


@dataclass
class Series:
    name: str
    points: list[Point]                      # sorted by x


@dataclass
class Plot:
    id: str                                  # html anchor / data-plot, e.g. "experiment-scale-0"
    title: str
    x_title: str
    y_title: str
    series: list[Series]
    x_format: Callable[[float], str] = fmt_count
    log_x: bool = True
    kind: str = "lines"                      # lines | dumbbell (domain shift: one row per method, in vs out)
    key: tuple = ()                          # what the plot is of, e.g. (task, model, primary metric)
    x_labels: dict = field(default_factory=dict)  # x -> a second tick line (scale: the model at that size)
    note: str = ""                           # what the intervals leave out (evaluation_note)
    baseline: float | None = None            # the majority class's metric on the evaluated rows (a dashed line)
    shifted_baseline: float | None = None    # dumbbell: the trained task's majority class on the shifted rows


@dataclass
class ExperimentSection:
    name: str                                # experiment_name
    title: str
    intro: str
    parts: list[tuple[Plot | None, list]]    # per (task, model...): its plot and its blocks (tables, notes)


# metrics that cannot leave [0, 1]: a t-interval over 2-3 seeds often does, so plots draw it clipped there
UNIT_METRICS = {"accuracy", "accuracy_sum", "accuracy_mean", "accuracy_per_token", "acc_norm", "f1", "exact_match",
                "bleu", "rouge_l"}


def drawn_interval(plot: "Plot", p: Point) -> tuple[float, float] | None:
    """The interval as a plot draws it: clipped to [0, 1] for a metric bounded there (tables keep it whole)."""
    if p.interval is None or plot.y_title not in UNIT_METRICS:
        return p.interval
    return max(0.0, p.interval[0]), min(1.0, p.interval[1])


def shown_variant(run: Run) -> str:
    """The run's variant without the experiment= override every run of the experiment shares."""
    return ",".join(v for v in run.variant.split(",") if v and not v.startswith("experiment="))


def experiment_of(run: Run) -> str:
    return text(dig(run.data, "config", "experiment_name"))


def _runs(runs: list[Run], name: str) -> list[Run]:
    return [r for r in runs if r.status == "finished" and r.value is not None and experiment_of(r) == name]


def _point(x: float, label: str, runs: list[Run], hollow: bool = False) -> Point:
    values = [r.value for r in sorted(runs, key=lambda r: (seed_key(r.seed), r.path))]
    return Point(x, statistics.fmean(values), stats.t_interval(values), len(values), label, hollow, values)


def _config(run: Run, *keys: str) -> Any:
    return dig(run.data, "config", *keys)


def _by(runs: list[Run], key: Callable[[Run], Any]) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: tuple(text(k) for k in (kv[0] if isinstance(kv[0], tuple)
                                                                             else (kv[0],)))))


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def ci_text(p: Point) -> str:
    """The seed interval as a cell; a zero-width one (every seed gave the same value, e.g. a zero-shot prompt) says
    so rather than print a point interval that reads as certainty."""
    if p.interval and p.n > 1 and len(set(p.values)) == 1:
        return f"none: {p.n} seeds identical"
    return fmt_interval(p.interval) if p.interval else ("n/a" if p.n == 1 else DASH)


def majority_value(runs: list[Run]) -> float | None:
    """The majority-class baseline's primary metric on the runs' evaluated rows (mean over runs: the same rows
    give the same value), the floor a trained run has to clear."""
    return _mean([num(dig(r.majority or {}, "metrics", r.primary)) for r in runs])


def _rows_text(label: str, rows: list[int], primary: str) -> tuple[str, str]:
    """e.g. "sst2 validation: 500 rows" and, for accuracy, the binomial 95 % half-width at 0.5 on the fewest rows."""
    said = f"{label}: {' / '.join(f'{n:,}' for n in rows)} rows"
    half = f", example-level 95 % half-width at 0.5: ±{1.96 * (0.25 / rows[0]) ** 0.5:.3f}"
    return said, (half if primary == "accuracy" else "")


def evaluation_note(runs: list[Run], extra: tuple[str, ...] = ()) -> str:
    """What the seed intervals leave out: every seed is scored on the same rows, so the rows' own sampling error
    is not in them. Says how many rows (and the majority class's score there, the floor a run must clear) and, for
    accuracy, the example-level 95 % half-width at 0.5 (binomial), so a reader can weigh a gap."""
    def rows_of(r: Run) -> Any:
        return dig(r.data, "data", "splits", text(r.data.get("eval_split")) or "validation")

    parts = []
    for (task, split, primary), members in _by(runs, lambda r: (r.task, text(r.data.get("eval_split")) or
                                                                "validation", r.primary)).items():
        rows = sorted({int(n) for n in (num(rows_of(r)) for r in members) if n})
        if not rows:
            continue
        majority = majority_value(members)
        said, half = _rows_text(f"{task} {split}", rows, primary)
        parts.append(said + (f", majority class {fmt_metric(majority)}" if majority is not None else "") + half)
    if not parts:
        return ""
    return ("Intervals are over seeds, each seed scored on the same rows, so they leave out the rows' own sampling "
            "error (" + "; ".join(parts + list(extra)) + ").")


# ---------------------------------------------------------------------------- scale

def base_params(run: Run) -> float | None:
    """The base model's parameters with its task head (params.base; older runs: params.total)."""
    return run.get("params", "base") if run.get("params", "base") is not None else run.get("params", "total")


def model_label(run: Run) -> str:
    kind = text(_config(run, "model", "kind"))
    return f"{run.model} ({kind})" if kind else run.model


def scale_plots(runs: list[Run]) -> list[Plot]:
    """Per (task, primary metric): one series per method, one point per model at its base parameter count."""
    plots = []
    for (task, primary), members in _by(_runs(runs, "scale"), lambda r: (r.task, r.primary)).items():
        series = []
        for method, of_method in _by(members, lambda r: r.method).items():
            points = []
            for model, of_model in _by(of_method, lambda r: r.model).items():
                x = _mean([base_params(r) for r in of_model])
                if x is not None and x > 0:
                    points.append(_point(x, model_label(of_model[0]), of_model))
            if points:
                series.append(Series(method, sorted(points, key=lambda p: (p.x, p.label))))
        if series:
            names: dict[float, set] = {}
            for p in (p for s in series for p in s.points):
                names.setdefault(p.x, set()).add(p.label)
            plots.append(Plot(f"experiment-scale-{len(plots)}", f"{task}: {primary} vs base model parameters",
                              "base model parameters", primary, series, key=(task, primary),
                              x_labels={x: ", ".join(sorted(v)) for x, v in names.items()},
                              note=evaluation_note(members), baseline=majority_value(members)))
    return plots


def scale_table(plot: Plot) -> Table:
    rows = [cells(s.name, p.label, fmt_count(p.x), fmt_metric(p.mean), ci_text(p), str(p.n))
            for s in plot.series for p in s.points]
    return Table(["method", "model (kind)", "base parameters", f"{plot.y_title} (mean)", "95% CI (seeds)", "n"],
                 rows, {2, 3, 5})


# ---------------------------------------------------------------------------- prompt length

def virtual_tokens(run: Run) -> float | None:
    """method.peft.num_virtual_tokens (null with init text: the text's length, as the run recorded it)."""
    n = num(_config(run, "method", "peft", "num_virtual_tokens"))
    return n if n is not None else run.get("adaptation", "num_virtual_tokens")


def init_mode(run: Run) -> str:
    return text(_config(run, "method", "init", "mode")) or "random (PEFT default)"


def prompt_length_plots(runs: list[Run]) -> list[Plot]:
    """Per (task, model, primary metric): one series per initialisation, one point per prompt length."""
    plots = []
    for (task, model, primary), members in _by(_runs(runs, "prompt_length"),
                                               lambda r: (r.task, r.model, r.primary)).items():
        series = []
        for mode, of_mode in _by(members, init_mode).items():
            points = [_point(n, f"{n:g} tokens", of_n) for n, of_n in _by(of_mode, virtual_tokens).items()
                      if n is not None and n > 0]
            if points:
                series.append(Series(mode, sorted(points, key=lambda p: p.x)))
        if series:
            plots.append(Plot(f"experiment-prompt-length-{len(plots)}", f"{task} · {model}: {primary} vs prompt "
                              "length", "virtual tokens", primary, series, lambda v: f"{v:g}",
                              note=evaluation_note(members), baseline=majority_value(members)))
    return plots


def prompt_length_table(plot: Plot) -> Table:
    rows = [cells(s.name, f"{p.x:g}", fmt_metric(p.mean), ci_text(p), str(p.n)) for s in plot.series for p in s.points]
    return Table(["initialisation", "virtual tokens", f"{plot.y_title} (mean)", "95% CI (seeds)", "n"], rows,
                 {1, 2, 4})


# ---------------------------------------------------------------------------- hard vs soft

HARD = "hard prompt (no training)"


def tokens_per_prediction(run: Run) -> float | None:
    """Input tokens the model reads per evaluated row: real tokens (throughput.eval_tokens / eval_samples: a hard
    prompt's instruction and demonstrations included, after truncation) + the virtual positions a soft prompt adds,
    once per sequence the row costs (multiple choice: one per choice)."""
    tokens, samples = run.get("throughput", "eval_tokens"), run.get("throughput", "eval_samples")
    if tokens is None or not samples:
        return None
    return tokens / samples + virtual_per_prediction(run)


def virtual_per_prediction(run: Run) -> float:
    return (run.get("throughput", "virtual_positions") or 0.0) * (run.get("throughput", "eval_sequences_per_sample") or 1.0)


def trains(run: Run) -> bool:
    return (run.get("params", "trainable") or 0) > 0


def _arm(run: Run) -> tuple[str, str, float]:
    """(series, point label, sort key) of a run in the hard-vs-soft plot."""
    if run.method == "hard_prompt":
        shots = num(_config(run, "method", "shots")) or 0
        return HARD, f"{shots:g}-shot", shots
    if run.method == "prompt":
        n = virtual_tokens(run) or 0
        return "soft prompt (trained)", f"{n:g} virtual", n
    return f"{run.method} (trained)", shown_variant(run) or run.method, 0.0


def hard_vs_soft_plots(runs: list[Run]) -> list[Plot]:
    """Per (task, model, primary metric): hard prompts by shots, soft prompts by length, at their tokens per
    prediction (mean over the point's runs); hollow marks: nothing trained."""
    plots = []
    for (task, model, primary), members in _by(_runs(runs, "hard_vs_soft"),
                                               lambda r: (r.task, r.model, r.primary)).items():
        series = []
        for name, of_series in _by(members, lambda r: _arm(r)[0]).items():
            points = []
            for (label, _), of_point in _by(of_series, lambda r: _arm(r)[1:]).items():
                x = _mean([tokens_per_prediction(r) for r in of_point])
                if x is not None and x > 0:
                    points.append(_point(x, label, of_point, hollow=not any(trains(r) for r in of_point)))
            if points:
                series.append(Series(name, sorted(points, key=lambda p: (p.x, p.label))))
        if series:
            plots.append(Plot(f"experiment-hard-vs-soft-{len(plots)}", f"{task} · {model}: {primary} vs tokens "
                              "processed per prediction", "tokens per prediction", primary, series,
                              lambda v: f"{v:,.0f}", key=(task, model, primary), note=evaluation_note(members),
                              baseline=majority_value(members)))
    return plots


def hard_vs_soft_table(plot: Plot, runs: list[Run]) -> Table:
    rows = []
    for s in plot.series:
        for p in s.points:
            of_point = [r for r in runs if _arm(r)[:2] == (s.name, p.label) and (r.task, r.model, r.primary) == plot.key]
            virtual = _mean([virtual_per_prediction(r) for r in of_point])
            rows.append(cells(s.name, p.label, f"{p.x:,.1f}", f"{virtual or 0:g}", "no" if p.hollow else "yes",
                              fmt_count(_mean([r.get("throughput", "train_tokens") for r in of_point])),
                              fmt_seconds(_mean([r.get("time", "train_s") for r in of_point])),
                              fmt_metric(p.mean), ci_text(p), str(p.n)))
    return Table(["series", "point", "tokens per prediction", "of which virtual", "trained", "train tokens",
                  "train time", f"{plot.y_title} (mean)", "95% CI (seeds)", "n"], rows, {2, 3, 5, 6, 7, 9})


# ---------------------------------------------------------------------------- domain shift

@dataclass
class ShiftRow:
    label: str                   # method (and variant)
    method: str
    in_domain: Point
    shifted: Point
    majority: float | None       # the trained task's majority class on the shifted rows
    runs: list[Run] = field(default_factory=list)


def shift_value(run: Run) -> float | None:
    return num(dig(run.data, "shift", "metrics", run.primary))


def shift_rows(runs: list[Run]) -> dict[tuple, list[ShiftRow]]:
    """(task, shift task, model, primary) -> one row per (method, variant): in-domain and out-of-domain means."""
    found = [r for r in _runs(runs, "domain_shift") if shift_value(r) is not None]
    out = {}
    for key, members in _by(found, lambda r: (r.task, text(dig(r.data, "shift", "task")), r.model,
                                              r.primary)).items():
        rows = []
        for (method, variant), of_row in _by(members, lambda r: (r.method, shown_variant(r))).items():
            ordered = sorted(of_row, key=lambda r: (seed_key(r.seed), r.path))
            shifted = [shift_value(r) for r in ordered]
            label = f"{method} · {variant}" if variant else method
            rows.append(ShiftRow(label, method, _point(0.0, "in-domain", ordered),
                                 Point(0.0, statistics.fmean(shifted), stats.t_interval(shifted), len(shifted),
                                       "out-of-domain", True, shifted),
                                 _mean([num(dig(r.data, "shift", "majority_metrics", r.primary)) for r in ordered]),
                                 ordered))
        out[key] = rows
    return out


def shift_plot(index: int, key: tuple, rows: list[ShiftRow]) -> Plot:
    task, other, model, primary = key
    series = [Series(r.label, [r.in_domain, r.shifted]) for r in rows]
    in_domain = [r for row in rows for r in row.runs]
    shifted = sorted({int(n) for n in (num(dig(r.data, "shift", "rows")) for r in in_domain) if n})
    note = evaluation_note(in_domain, ("".join(_rows_text(f"{other} validation, shifted", shifted, primary)),)
                           if shifted else ())
    return Plot(f"experiment-domain-shift-{index}", f"{task} → {other} · {model}: {primary} in and out of domain",
                primary, primary, series, fmt_metric, log_x=False, kind="dumbbell", note=note,
                baseline=majority_value(in_domain), shifted_baseline=_mean([r.majority for r in rows]))


def shift_table(key: tuple, rows: list[ShiftRow]) -> Table:
    task, other, model, primary = key
    table_rows = []
    for row in rows:
        labels: dict[str, list[float]] = {}
        for r in row.runs:
            for name, block in (dig(r.data, "shift", "by_label") or {}).items():
                if isinstance(block, dict) and num(block.get("accuracy")) is not None:
                    labels.setdefault(text(name), []).append(block["accuracy"])
        by_label = ", ".join(f"{name} {fmt_metric(statistics.fmean(v))}" for name, v in sorted(labels.items()))
        table_rows.append(cells(row.label, fmt_metric(row.in_domain.mean), ci_text(row.in_domain),
                                fmt_metric(row.shifted.mean), ci_text(row.shifted),
                                fmt_signed(row.shifted.mean - row.in_domain.mean), fmt_metric(row.majority),
                                by_label or DASH, str(row.in_domain.n)))
    return Table(["method", f"{task} {primary} (in-domain)", "95% CI (seeds)", f"{other} {primary} (shifted)",
                  "95% CI (seeds)", "shifted − in-domain", f"{other}: majority class of {task}",
                  f"{other} rows predicted as mapped, by {other} label", "n"], rows=table_rows,
                 numeric={1, 3, 5, 6, 8})


def _label_map_text(rows: list[ShiftRow]) -> str:
    maps = {text(dig(r.data, "shift", "label_map")) for row in rows for r in row.runs}
    return "; ".join(sorted(maps))


# ---------------------------------------------------------------------------- sections

TITLES = {
    "scale": ("Experiment: scale", "Primary metric against the base model's parameter count (log scale; the base "
              "model with its task head, before the method adds anything), one line per method, with the 95 % "
              "t-interval over seeds (Lester et al. 2021, Figure 1). The shipped models differ in kind as well as "
              "size (an encoder with a classification head, a decoder scoring verbalizer words): each point names "
              "its model and kind."),
    "prompt_length": ("Experiment: prompt length × initialisation", "Soft prompt tuning: primary metric against the "
                      "number of virtual tokens (log scale), one line per initialisation of the prompt "
                      "(method.init.mode), with the 95 % t-interval over seeds (Lester et al. 2021, Figure 3)."),
    "hard_vs_soft": ("Experiment: hard vs soft prompts", "Primary metric against the input tokens the model "
                     "processes per prediction (log scale): real tokens per evaluated row (result.json "
                     "throughput.eval_tokens / eval_samples, a hard prompt's instruction and demonstrations "
                     "included) plus the virtual positions of a soft prompt. Hollow marks needed no training "
                     "(hard prompts); the table gives what training the others cost."),
    "domain_shift": ("Experiment: domain shift", "Each trained module evaluated in-domain (its task's validation "
                     "split) and out of domain (another task's validation split, its labels mapped onto the "
                     "trained task's: result.json `shift`), per method: mean over seeds with the 95 % t-interval. "
                     "Hollow marks: out of domain."),
}


def experiment_sections(runs: list[Run]) -> list:
    """The sections of the experiments that have finished runs, in a fixed order."""
    sections = []
    plots = {"scale": (scale_plots, lambda p: scale_table(p)),
             "prompt_length": (prompt_length_plots, prompt_length_table),
             "hard_vs_soft": (hard_vs_soft_plots, lambda p: hard_vs_soft_table(p, _runs(runs, "hard_vs_soft")))}
    for name, (make, table) in plots.items():
        made = make(runs)
        if made:
            parts = [(p, [("h3", p.title), ("table", table(p))] + ([("p", p.note)] if p.note else [])) for p in made]
            sections.append(ExperimentSection(name, *TITLES[name], parts))
    shifted = shift_rows(runs)
    if shifted:
        parts = []
        for i, (key, rows) in enumerate(shifted.items()):
            plot = shift_plot(i, key, rows)
            blocks = [("h3", plot.title), ("table", shift_table(key, rows))] + ([("p", plot.note)] if plot.note else [])
            mapping = _label_map_text(rows)
            blocks += [("p", f"Label map ({key[1]} → {key[0]}): {mapping}.")] if mapping else []
            parts.append((plot, blocks))
        sections.append(ExperimentSection("domain_shift", *TITLES["domain_shift"], parts))
    return sections
