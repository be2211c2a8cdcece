"""`bench-report`: turn every result.json under a results folder into report.md, index.html, results.csv.

The report is a pure function of the result files: runs are sorted, floats have fixed precision,
paths are relative to the results folder and nothing reads the clock, so the same files always
give byte-identical output. Only runs with status "finished" are averaged; failed and diverged runs
are listed on their own, running/interrupted ones as incomplete, unparsable files as unreadable.
"""
from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import os
import shlex
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
REPORT_FILES = {"markdown": "report.md", "html": "index.html", "csv": "results.csv"}
SKIP_DIRS = {"_hydra", "wandb"}  # Hydra's own logs and offline W&B runs hold no results of ours
FAILED = ("failed", "diverged")
DASH = "–"
# metrics where a smaller value is better; every primary metric the shipped tasks use is "higher"
LOWER_IS_BETTER = {"loss", "eval_loss", "mse", "mae", "rmse", "perplexity"}
# override keys that say which group a run belongs to (or where it is written), not how it differs
_IDENTITY_KEYS = {"task", "model", "method", "seed", "sweep", "force", "logger"}
_IDENTITY_PREFIXES = ("paths.", "logger.", "hydra.")


# ---------------------------------------------------------------------------- reading

@dataclass
class Run:
    path: str                # result.json's path relative to the results folder (posix)
    data: dict
    status: str
    task: str
    model: str
    method: str
    variant: str
    seed: Any
    primary: str             # primary metric name, DASH when unknown
    value: float | None      # primary metric value

    def get(self, section: str, key: str) -> float | None:
        block = self.data.get(section)
        return _num(block.get(key)) if isinstance(block, dict) else None

    def sort_key(self) -> tuple:
        return (self.task, self.model, self.method, self.variant, _seed_key(self.seed), self.path)


@dataclass
class Unreadable:
    path: str
    reason: str


def _num(value: Any) -> float | None:
    """A finite number or None: strings, bools, NaN and inf are 'missing' for averaging."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _seed_key(seed: Any) -> tuple:
    if isinstance(seed, int) and not isinstance(seed, bool):
        return (0, seed, "")
    return (1, 0, _text(seed))


def variant_of(overrides: Any) -> str:
    """Short label for how a run's config differs within its (task, model, method): the overrides
    that are not the group keys, seeds or output locations, e.g. "method.lr=0.001"."""
    if not isinstance(overrides, list):
        return ""
    kept = []
    for item in overrides:
        text = _text(item).strip()
        key = text.split("=", 1)[0].lstrip("+~").strip()
        if not key or key in _IDENTITY_KEYS or key.endswith("seed") or key.startswith(_IDENTITY_PREFIXES):
            continue
        kept.append(text)
    return ",".join(sorted(kept))


def _primary(data: dict) -> tuple[str, float | None]:
    metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    name = data.get("primary_metric")
    if not isinstance(name, str) or not name:
        task_cfg = ((data.get("config") or {}).get("task") or {}) if isinstance(data.get("config"), dict) else {}
        name = task_cfg.get("primary_metric") if isinstance(task_cfg, dict) else None
    if (not isinstance(name, str) or not name) and len(metrics) == 1:
        name = next(iter(metrics))
    if not isinstance(name, str) or not name:
        return DASH, None
    return name, _num(metrics.get(name))


def _find_files(results_dir: Path, names) -> list[Path]:
    """Files with one of `names` below results_dir, sorted by relative path."""
    found = []
    for root, dirs, files in os.walk(results_dir):
        # prune in place so os.walk never descends into Hydra logs, W&B runs or hidden folders
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        found += [Path(root, f) for f in files if f in names]
    return sorted(found, key=lambda p: p.relative_to(results_dir).as_posix())


def _read_json_object(path: Path, what: str) -> tuple[dict | None, str]:
    """(data, "") or (None, why it is unreadable); messages carry no absolute path (reproducible)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        return None, f"invalid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except OSError as err:  # strerror only: the message with the absolute path would differ per machine
        return None, f"cannot read: {err.strerror or type(err).__name__}"
    if not isinstance(data, dict):
        return None, f"not a {what} object (top level is {type(data).__name__})"
    return data, ""


def find_result_files(results_dir: Path) -> list[Path]:
    return _find_files(results_dir, {RESULT_FILE})


def load_runs(results_dir: Path) -> tuple[list[Run], list[Unreadable]]:
    runs, unreadable = [], []
    for path in find_result_files(results_dir):
        rel = path.relative_to(results_dir).as_posix()
        data, reason = _read_json_object(path, "result")
        if data is None:
            unreadable.append(Unreadable(rel, reason))
            continue
        primary, value = _primary(data)
        runs.append(Run(
            path=rel, data=data, status=_text(data.get("status")) or "unknown",
            task=_text(data.get("task")) or DASH, model=_text(data.get("model")) or DASH,
            method=_text(data.get("method")) or DASH, variant=variant_of(data.get("overrides")),
            seed=data.get("seed"), primary=primary, value=value,
        ))
    runs.sort(key=Run.sort_key)
    return runs, unreadable


# ---------------------------------------------------------------------------- aggregation

@dataclass
class Group:
    task: str
    primary: str
    model: str
    method: str
    variant: str
    runs: list[Run] = field(default_factory=list)       # finished: the only ones averaged
    excluded: list[Run] = field(default_factory=list)   # failed / diverged in the same group
    values: dict[str, float | None] = field(default_factory=dict)
    pareto: dict[str, bool | None] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len([r for r in self.runs if r.value is not None])

    @property
    def label(self) -> str:
        return " · ".join(p for p in (self.model, self.method, self.variant) if p)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


# group columns: key -> (header, how to read one run, direction for "best": +1 max, -1 min)
MEASURES = {
    "trainable": ("trainable params", lambda r: r.get("params", "trainable"), -1),
    "total": ("total params", lambda r: r.get("params", "total"), 0),
    "trainable_pct": ("trainable %", lambda r: _trainable_pct(r), -1),
    "stored_bytes": ("stored", lambda r: r.get("storage", "bytes"), -1),
    "tokens_per_s": ("train tokens/s", lambda r: r.get("throughput", "train_tokens_per_s"), +1),
    "peak_bytes": ("peak memory", lambda r: r.get("memory", "peak_bytes"), -1),
    "train_s": ("train time", lambda r: r.get("time", "train_s"), -1),
    "mfu": ("MFU", lambda r: r.get("throughput", "mfu"), +1),
}
PARETO_COSTS = {"params": "trainable", "bytes": "stored_bytes"}


def _trainable_pct(run: Run) -> float | None:
    pct = run.get("params", "trainable_percent")
    if pct is None:
        trainable, total = run.get("params", "trainable"), run.get("params", "total")
        pct = 100.0 * trainable / total if trainable is not None and total else None
    return pct


def higher_is_better(metric: str) -> bool:
    return metric.lower() not in LOWER_IS_BETTER


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


@dataclass
class Section:
    task: str
    primary: str
    groups: list[Group]
    notes: list[str]

    @property
    def maximise(self) -> bool:
        return higher_is_better(self.primary)


def aggregate(runs: list[Run]) -> list[Section]:
    # a failed run that does not name its primary metric joins the task's usual one
    counts = Counter((r.task, r.primary) for r in runs if r.primary != DASH)
    usual: dict[str, str] = {}
    for (task, primary), _ in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
        usual.setdefault(task, primary)  # most common first, ties by name: deterministic
    groups: dict[tuple, Group] = {}
    for run in runs:
        if run.status != "finished" and run.status not in FAILED:
            continue
        primary = usual.get(run.task, DASH) if run.primary == DASH and run.status in FAILED else run.primary
        key = (run.task, primary, run.model, run.method, run.variant)
        group = groups.setdefault(key, Group(*key))
        (group.runs if run.status == "finished" else group.excluded).append(run)

    by_section: dict[tuple[str, str], list[Group]] = {}
    for key in sorted(groups):
        by_section.setdefault(key[:2], []).append(groups[key])

    sections = []
    for (task, primary), members in by_section.items():
        notes = []
        for g in members:
            values = [r.value for r in g.runs if r.value is not None]
            g.values["mean"] = statistics.fmean(values) if values else None
            g.values["std"] = statistics.stdev(values) if len(values) >= 2 else None  # sample std, ddof=1
            for key, (_, read, _) in MEASURES.items():
                g.values[key] = _mean([read(r) for r in g.runs])
            seeds = Counter(_text(r.seed) for r in g.runs)
            dupes = sorted(s for s, c in seeds.items() if c > 1)
            if dupes:
                notes.append(f"{g.label}: seed {', '.join(dupes)} appears more than once among finished runs "
                             "(all are averaged; check for re-runs in several sweeps)")
            missing = len(g.runs) - len(values)
            if missing:
                notes.append(f"{g.label}: {missing} finished run(s) without a value for {primary}")
        section = Section(task, primary, members, notes)
        for name, cost_key in PARETO_COSTS.items():
            eligible = [g for g in members if g.values["mean"] is not None and g.values[cost_key] is not None]
            front = pareto_front([(g.values["mean"], g.values[cost_key]) for g in eligible], section.maximise)
            for g in members:
                g.pareto[name] = None
            for g, on in zip(eligible, front):
                g.pareto[name] = on
        sections.append(section)
    return sections


# ---------------------------------------------------------------------------- formatting

def fmt_metric(v: float | None) -> str:
    return DASH if v is None else f"{v:.4f}"


def fmt_count(v: float | None) -> str:
    return DASH if v is None else f"{round(v):,}"


def fmt_pct(v: float | None) -> str:
    if v is None:
        return DASH
    if 0 < v < 0.001:
        return "<0.001%"
    return f"{v:.2f}%" if v >= 1 else f"{v:.3f}%"


def fmt_bytes(v: float | None) -> str:
    if v is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return DASH  # unreachable


def fmt_rate(v: float | None) -> str:
    return DASH if v is None else f"{v:,.0f}"


def fmt_seconds(v: float | None) -> str:
    return DASH if v is None else f"{v:.1f} s"


def fmt_plain(v: float | None) -> str:
    return DASH if v is None else f"{v:.3g}"


FORMATS = {"trainable": fmt_count, "total": fmt_count, "trainable_pct": fmt_pct, "stored_bytes": fmt_bytes,
           "tokens_per_s": fmt_rate, "peak_bytes": fmt_bytes, "train_s": fmt_seconds, "mfu": fmt_plain}


def command_text(command: Any) -> str:
    if isinstance(command, list):
        return shlex.join(_text(c) for c in command)
    return _text(command)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------- tables (shared by md and html)

@dataclass
class Cell:
    text: str
    best: bool = False


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    numeric: set[int] = field(default_factory=set)  # column indexes to right-align


def _cells(*texts: str) -> list[Cell]:
    return [Cell(t) for t in texts]


def section_table(section: Section) -> Table:
    groups = section.groups
    show_variant = any(g.variant for g in groups)
    show_mfu = any(g.values.get("mfu") is not None for g in groups)
    measure_keys = ["trainable", "trainable_pct", "stored_bytes", "tokens_per_s", "peak_bytes", "train_s"]
    if show_mfu:
        measure_keys.append("mfu")
    headers = ["model", "method"] + (["variant"] if show_variant else [])
    headers += [f"{section.primary} (mean ± std)", "n", "failed/diverged"]
    headers += [MEASURES[k][0] for k in measure_keys] + ["Pareto (params)", "Pareto (bytes)"]

    # best per column: only among groups with a value, and only when there is something to compare
    def best_set(key: str, direction: int) -> set[int]:
        vals = [(i, g.values.get(key)) for i, g in enumerate(groups) if g.values.get(key) is not None]
        if len(vals) < 2 or direction == 0:
            return set()
        target = max(v for _, v in vals) if direction > 0 else min(v for _, v in vals)
        return {i for i, v in vals if v == target}

    best_metric = best_set("mean", 1 if section.maximise else -1)
    best = {k: best_set(k, MEASURES[k][2]) for k in measure_keys}
    rows = []
    for i, g in enumerate(groups):
        mean, std = g.values["mean"], g.values["std"]
        metric = DASH if mean is None else f"{fmt_metric(mean)} ± {DASH if std is None else fmt_metric(std)}"
        row = _cells(g.model, g.method) + (_cells(g.variant or DASH) if show_variant else [])
        row += [Cell(metric, i in best_metric), Cell(str(g.n)), Cell(str(len(g.excluded)))]
        row += [Cell(FORMATS[k](g.values.get(k)), i in best[k]) for k in measure_keys]
        row += [Cell(DASH if g.pareto[p] is None else ("yes" if g.pareto[p] else "no")) for p in PARETO_COSTS]
        rows.append(row)
    first_num = 3 if show_variant else 2
    return Table(headers, rows, set(range(first_num, len(headers))))


def failed_table(runs: list[Run]) -> Table:
    rows = []
    for r in runs:
        step = r.data.get("diverged_step")
        rows.append(_cells(r.task, r.model, r.method, r.variant or DASH, _text(r.seed) or DASH, r.status,
                           _text(step) if step is not None else DASH,
                           one_line(_text(r.data.get("error"))) or DASH, r.path))
    return Table(["task", "model", "method", "variant", "seed", "status", "step", "error", "result file"], rows)


def incomplete_table(runs: list[Run]) -> Table:
    rows = [_cells(r.task, r.model, r.method, r.variant or DASH, _text(r.seed) or DASH, r.status, r.path)
            for r in runs]
    return Table(["task", "model", "method", "variant", "seed", "status", "result file"], rows)


def unreadable_table(items: list[Unreadable]) -> Table:
    return Table(["result file", "problem"], [_cells(u.path, u.reason) for u in items])


def runs_table(runs: list[Run]) -> Table:
    rows = []
    for r in runs:
        overrides = command_text(r.data.get("overrides"))
        rows.append(_cells(r.task, r.model, r.method, r.variant or DASH, _text(r.seed) or DASH, r.status,
                           f"{r.primary}={fmt_metric(r.value)}" if r.value is not None else DASH,
                           overrides or DASH, r.path))
    return Table(["task", "model", "method", "variant", "seed", "status", "primary metric", "overrides",
                  "result file"], rows)


def env_table(runs: list[Run]) -> Table:
    """Every env key with each distinct value and how many runs reported it: mixed versions show up."""
    seen: dict[str, Counter] = {}
    for r in runs:
        env = r.data.get("env")
        if isinstance(env, dict):
            for key, value in env.items():
                seen.setdefault(_text(key), Counter())[_text(value)] += 1
    rows = []
    for key in sorted(seen):
        for value, count in sorted(seen[key].items()):
            rows.append(_cells(key, value or DASH, str(count)))
    return Table(["key", "value", "runs"], rows, {2})


def commands_table(runs: list[Run]) -> Table:
    counts = Counter(command_text(r.data.get("command")) for r in runs)
    rows = [_cells(cmd or "(not recorded)", str(n)) for cmd, n in sorted(counts.items())]
    return Table(["command", "runs"], rows, {1})


# ---------------------------------------------------------------------------- serving (bench-serve-eval output)

SERVE_METHODS = ("prompt", "prefix", "lora")  # as bench.serve.PEFT_METHODS (not imported: it needs torch)
SERVE_FILES = {f"serve-{m}.json" for m in SERVE_METHODS}
SERVING_TITLE = "Serving: one base, many adapters"
SERVING_LEGEND = ("From bench-serve-eval: every kept adapter of one method loaded into one base model and "
                  "served by switching among them. Metrics: recorded at training time vs re-evaluated after "
                  "switching (equal: every metric identical). Latencies are medians over the repeats. N models: "
                  "N full fine-tuned copies on disk, N x the base's parameters in memory; their RSS is an "
                  "estimate (N x the base's growth), not a measurement.")


@dataclass
class ServeFile:
    path: str                # relative to the results folder (posix)
    data: dict | None        # None when unreadable
    reason: str = ""         # why it is unreadable


def find_serve_files(results_dir: Path) -> list[Path]:
    return _find_files(results_dir, SERVE_FILES)


def load_serve_files(results_dir: Path) -> list[ServeFile]:
    out = []
    for path in find_serve_files(results_dir):
        data, reason = _read_json_object(path, "serve-eval")
        out.append(ServeFile(path.relative_to(results_dir).as_posix(), data, reason))
    return out


def _dig(data: Any, *keys: str) -> Any:
    """data[k1][k2]...; None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def fmt_ms(v: float | None) -> str:
    return DASH if v is None else f"{v:,.3f} ms"


def fmt_ratio(v: float | None) -> str:
    if v is None:
        return DASH
    return f"{v:,.0f}x" if abs(v) >= 100 else f"{v:.2f}x"


def fmt_yes(value: Any) -> str:
    return DASH if not isinstance(value, bool) else ("yes" if value else "NO")


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def _out_of(part: float | None, whole: float | None) -> str:
    return f"{fmt_count(part)}/{fmt_count(whole)}"


def serve_accuracy_table(data: dict) -> Table:
    rows = []
    for r in _dicts(data.get("runs")):
        recorded = r.get("recorded_metrics") if isinstance(r.get("recorded_metrics"), dict) else {}
        served = r.get("served_metrics") if isinstance(r.get("served_metrics"), dict) else {}
        name = r.get("primary_metric")
        if not isinstance(name, str) or not name:
            names = set(recorded) | set(served)
            name = _text(next(iter(names))) if len(names) == 1 else None
        rows.append(_cells(
            _text(r.get("task")) or DASH, _text(r.get("adapter")) or DASH, _text(r.get("seed")) or DASH,
            name or DASH, fmt_metric(_num(recorded.get(name))) if name else DASH,
            fmt_metric(_num(served.get(name))) if name else DASH, fmt_yes(r.get("equal")),
            fmt_plain(_num(r.get("max_abs_diff"))), fmt_count(_num(r.get("eval_samples"))),
            fmt_bytes(_num(r.get("adapter_bytes"))), fmt_ms(_num(r.get("first_load_ms"))),
            _text(r.get("run")) or DASH))
    return Table(["task", "adapter", "seed", "metric", "at training", "served", "equal", "max abs diff",
                  "eval rows", "adapter size", "first load", "run"], rows, set(range(4, 11)) - {6})


def serve_latency_table(data: dict) -> Table:
    rows = []
    for g in _dicts(data.get("groups")):
        lat = g.get("latency") if isinstance(g.get("latency"), dict) else {}
        model = " · ".join(p for p in (_text(g.get("model")), _text(g.get("kind"))) if p) or DASH
        rows.append(_cells(model, fmt_count(_num(g.get("head_outputs"))), fmt_count(_num(g.get("adapters"))),
                           _text(g.get("device")) or DASH, fmt_ms(_num(lat.get("switch_ms_median"))),
                           fmt_ms(_num(lat.get("switch_ms_max"))), fmt_ms(_num(lat.get("load_ms_median"))),
                           fmt_count(_num(lat.get("switch_repeats") if "switch_repeats" in lat
                                          else lat.get("load_repeats")))))
    if not rows:  # no per-group figures: the file's overall (slowest group's) medians
        lat = data.get("latency") if isinstance(data.get("latency"), dict) else {}
        rows.append(_cells("all groups", DASH, fmt_count(_num(_dig(data, "storage", "adapters"))), DASH,
                           fmt_ms(_num(lat.get("switch_ms_median"))), DASH, fmt_ms(_num(lat.get("load_ms_median"))),
                           fmt_count(_num(lat.get("repeats")))))
    return Table(["base model", "head outputs", "adapters", "device", "switch (median)", "switch (max)",
                  "load (median)", "repeats"], rows, {1, 2, 4, 5, 6, 7})


def serve_cost_table(data: dict) -> Table:
    n = _num(_dig(data, "storage", "adapters"))
    if n is None:
        n = float(len(_dicts(data.get("runs")))) or None
    label = fmt_count(n) if n is not None else "N"
    adapters = _num(_dig(data, "storage", "adapters_bytes"))
    copies = _num(_dig(data, "storage", "full_copies_bytes"))
    stored_ratio = _num(_dig(data, "storage", "ratio"))
    if stored_ratio is None:
        stored_ratio = _ratio(copies, adapters)
    rows = [_cells(f"stored bytes ({label} adapters vs {label} full copies)", fmt_bytes(adapters), fmt_bytes(copies),
                   fmt_ratio(stored_ratio))]
    for what, served_key, separate_key in (
            ("memory: parameter bytes", "served_param_bytes", "separate_models_param_bytes"),
            ("memory: RSS growth (N models estimated)", "served_rss_bytes", "separate_models_rss_bytes_estimate")):
        served = _num(_dig(data, "memory", served_key))
        separate = _num(_dig(data, "memory", separate_key))
        rows.append(_cells(what.replace("N models", f"{label} models"), fmt_bytes(served), fmt_bytes(separate),
                           fmt_ratio(_ratio(separate, served))))
    bases = fmt_count(_num(_dig(data, "memory", "bases")))
    headers = ["measure", f"{bases} base(s) + {label} adapters", f"{label} models", "models / served"]
    return Table(headers, rows, {1, 2, 3})


_MIXED_ORDERS = (("mixed, length-sorted", "mixed_length_sorted"), ("mixed, arrival order", "mixed_arrival_order"),
                 ("task by task", "task_by_task"))


def _metrics_text(metrics: Any) -> str:
    if not isinstance(metrics, dict) or not metrics:
        return DASH
    items = sorted(metrics.items(), key=lambda kv: _text(kv[0]))
    return ", ".join(f"{_text(k)}={fmt_metric(_num(v))}" for k, v in items)


def serve_mixed_blocks(mixed: dict, title: str) -> list[tuple[str, Any]]:
    blocks: list[tuple[str, Any]] = [("h4", title)]
    if "skipped" in mixed:
        return blocks + [("p", f"Skipped: {_text(mixed.get('skipped')) or DASH}.")]
    per_task = mixed.get("per_task") if isinstance(mixed.get("per_task"), dict) else {}
    tasks = [(k, v) for k, v in sorted(per_task.items(), key=lambda kv: _text(kv[0])) if isinstance(v, dict)]
    rows = _num(mixed.get("rows"))

    def total(key: str) -> float | None:
        values = [_num(v.get(key)) for _, v in tasks]
        return sum(values) if values and None not in values else None

    sps = mixed.get("samples_per_s") if isinstance(mixed.get("samples_per_s"), dict) else {}
    mixed_sps, task_sps = _num(sps.get("mixed_length_sorted")), _num(sps.get("task_by_task"))
    blocks.append(("p", f"Predictions equal to the per-task passes: {_out_of(total('same_predictions'), rows)} rows "
                        f"(length-sorted), {_out_of(total('same_predictions_arrival_order'), rows)} (arrival order); "
                        f"all equal: {fmt_yes(mixed.get('all_predictions_equal'))}. Throughput mixed vs per task: "
                        f"{fmt_rate1(mixed_sps)} vs {fmt_rate1(task_sps)} samples/s "
                        f"({fmt_ratio(_ratio(mixed_sps, task_sps))}). Batch size "
                        f"{fmt_count(_num(mixed.get('batch_size')))}; prompt lengths "
                        f"{_list_text(mixed.get('prompt_lengths'))}."))
    table_rows = []
    for label, key in _MIXED_ORDERS:
        table_rows.append(_cells(label, fmt_rate1(_num(sps.get(key))),
                                 fmt_seconds(_num(_dig(mixed, "seconds", key))),
                                 fmt_count(_num(_dig(mixed, "batches", key))),
                                 fmt_fraction(_num(_dig(mixed, "tasks_per_batch_mean", key)), 2),
                                 fmt_fraction(_num(_dig(mixed, "real_token_fraction", key)), 3)))
    blocks.append(("table", Table(["batches", "samples/s", "time", "batches run", "tasks per batch (mean)",
                                   "real-token fraction"], table_rows, {1, 2, 3, 4, 5})))
    if tasks:
        blocks.append(("table", Table(
            ["task", "rows", "same predictions", "same (arrival order)", "max abs logit diff", "metrics (mixed)"],
            [_cells(_text(v.get("task")) or _text(k), fmt_count(_num(v.get("rows"))),
                    fmt_count(_num(v.get("same_predictions"))),
                    fmt_count(_num(v.get("same_predictions_arrival_order"))),
                    fmt_plain(_num(v.get("max_abs_logit_diff"))), _metrics_text(v.get("metrics")))
             for k, v in tasks], {1, 2, 3, 4})))
    return blocks


def _list_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or DASH
    return _text(value) or DASH


def fmt_rate1(v: float | None) -> str:
    return DASH if v is None else f"{v:,.1f}"


def fmt_fraction(v: float | None, digits: int) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def serving_blocks(item: ServeFile) -> list[tuple[str, Any]]:
    """One serve-<method>.json as blocks ("h3"/"h4"/"p", text) and ("table", Table), shared by md and html."""
    if item.data is None:
        return [("h3", item.path), ("p", f"Unreadable: {item.reason}.")]
    data = item.data
    groups = _dicts(data.get("groups"))
    models = sorted({_text(g.get("model")) for g in groups if g.get("model") is not None})
    devices = sorted({_text(g.get("device")) for g in groups if g.get("device") is not None})
    n = _num(_dig(data, "storage", "adapters"))
    if n is None:
        n = float(len(_dicts(data.get("runs")))) or None
    blocks: list[tuple[str, Any]] = [("h3", item.path), ("p", (
        f"Method {_text(data.get('method')) or DASH}: {fmt_count(n)} adapters on "
        f"{fmt_count(_num(_dig(data, 'memory', 'bases')))} base(s) ({', '.join(models) or DASH}; "
        f"device {', '.join(devices) or DASH}). All served metrics equal those at training: "
        f"{fmt_yes(data.get('all_equal'))}."))]
    blocks += [("h4", "Metrics at training vs served"),
               ("table", serve_accuracy_table(data)) if _dicts(data.get("runs")) else ("p", "No runs recorded.")]
    skipped = _dicts(data.get("skipped_runs"))
    if skipped:
        blocks.append(("p", "Runs left out: " + "; ".join(
            f"{_text(s.get('run')) or DASH} ({_text(s.get('reason')) or DASH})" for s in skipped) + "."))
    blocks += [("h4", "Adapter switch and load latency"), ("table", serve_latency_table(data)),
               ("h4", "Storage and memory: one base + N adapters vs N models"), ("table", serve_cost_table(data))]
    mixed = data.get("mixed_batch")
    if isinstance(mixed, dict):
        if isinstance(mixed.get("per_group"), list):
            for i, sub in enumerate(mixed["per_group"], 1):
                title = f"Mixed-task batches, group {i}"
                blocks += serve_mixed_blocks(sub, title) if isinstance(sub, dict) else [("h4", title), ("p", DASH)]
            if mixed.get("note"):
                blocks.append(("p", f"note: {_text(mixed['note'])}"))
        else:
            blocks += serve_mixed_blocks(mixed, "Mixed-task batches")
    elif "mixed_batch" in data:
        blocks += [("h4", "Mixed-task batches"), ("p", DASH)]
    return blocks


# ---------------------------------------------------------------------------- the report model

@dataclass
class Report:
    runs: list[Run]
    unreadable: list[Unreadable]
    sections: list[Section]
    serving: list[ServeFile] = field(default_factory=list)  # bench-serve-eval files, sorted by path

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.status in FAILED]

    @property
    def incomplete(self) -> list[Run]:
        return [r for r in self.runs if r.status != "finished" and r.status not in FAILED]

    def summary(self) -> str:
        counts = Counter(r.status for r in self.runs)
        parts = [f"{len(self.runs) + len(self.unreadable)} result files", f"{counts.get('finished', 0)} finished"]
        parts += [f"{counts.get(s, 0)} {s}" for s in FAILED]
        parts += [f"{len(self.incomplete)} incomplete", f"{len(self.unreadable)} unreadable"]
        return ", ".join(parts)


def collect(results_dir: Path) -> Report:
    runs, unreadable = load_runs(Path(results_dir))
    return Report(runs, unreadable, aggregate(runs), load_serve_files(Path(results_dir)))


LEGEND = ("Metric: mean ± sample standard deviation (ddof=1) over finished runs; n counts them. "
          "Other columns are means over the same runs. **Bold**: best in its column (metric and throughput "
          "highest, parameters, bytes, memory and time lowest). Pareto: no other row is at least as good on the "
          "metric and at most as costly (trainable parameters, or stored bytes), with one of the two strictly "
          "better. Failed and diverged runs are never averaged; they are listed below.")


# ---------------------------------------------------------------------------- markdown

def md_escape(text: str) -> str:
    """Cells are HTML-escaped (Markdown renderers pass raw HTML through) and kept on one line."""
    text = html.escape(" ".join(text.split()) if "\n" in text or "\r" in text else text, quote=False)
    return text.replace("|", "\\|")


def md_table(table: Table) -> str:
    def cell(c: Cell) -> str:
        text = md_escape(c.text)
        return f"**{text}**" if c.best and text != DASH else text

    align = ["---:" if i in table.numeric else "---" for i in range(len(table.headers))]
    lines = ["| " + " | ".join(md_escape(h) for h in table.headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    out = ["# Benchmark report", "", md_escape(report.summary()) + ".", ""]
    if not report.sections:
        out += ["No finished, failed or diverged runs found.", ""]
    else:
        out += [LEGEND, ""]
    for s in report.sections:
        direction = "higher is better" if s.maximise else "lower is better"
        out += [f"## {md_escape(s.task)}: {md_escape(s.primary)} ({direction})", "", md_table(section_table(s)), ""]
        out += [f"- note: {md_escape(n)}" for n in s.notes] + ([""] if s.notes else [])
    if report.serving:
        out += [f"## {SERVING_TITLE}", "", SERVING_LEGEND, ""]
        for item in report.serving:
            for kind, payload in serving_blocks(item):
                if kind == "table":
                    out += [md_table(payload), ""]
                elif kind == "p":
                    out += [md_escape(payload), ""]
                else:
                    out += [f"{'###' if kind == 'h3' else '####'} {md_escape(payload)}", ""]
    for title, table, items in (("Failed and diverged runs", failed_table, report.failed),
                                ("Incomplete runs", incomplete_table, report.incomplete),
                                ("Unreadable result files", unreadable_table, report.unreadable)):
        out += [f"## {title}", "", md_table(table(items)) if items else "None.", ""]
    out += ["## Runs", "", md_table(runs_table(report.runs)) if report.runs else "None.", ""]
    out += ["## Environment", "", "### Packages, code and device", "",
            md_table(env_table(report.runs)) if any(isinstance(r.data.get("env"), dict) for r in report.runs)
            else "Not recorded.", "",
            "### Commands", "", md_table(commands_table(report.runs)) if report.runs else "None.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------- csv

CSV_FIELDS = [
    ("run", lambda r: r.data.get("run")), ("sweep", lambda r: r.data.get("sweep")),
    ("status", lambda r: r.status), ("task", lambda r: r.task), ("model", lambda r: r.model),
    ("method", lambda r: r.method), ("variant", lambda r: r.variant), ("seed", lambda r: r.data.get("seed")),
    ("primary_metric", lambda r: r.primary if r.primary != DASH else None), ("primary_value", lambda r: r.value),
]
_SECTION_COLUMNS = {
    "params": ["total", "trainable", "trainable_percent", "stored"],
    "storage": ["bytes", "kept"],
    "throughput": ["train_tokens_per_s", "train_samples_per_s", "eval_tokens_per_s", "eval_samples_per_s",
                   "real_token_fraction", "virtual_tokens", "virtual_tokens_counted", "train_steps",
                   "train_samples", "train_tokens", "eval_samples", "eval_tokens", "mfu"],
    "memory": ["peak_bytes", "train_peak_bytes", "eval_peak_bytes", "method"],
    "time": ["train_s", "eval_s", "total_s"],
}


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value).lower()
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return " ".join(_text(v) for v in value)
    return _text(value)


def render_csv(report: Report) -> str:
    metric_names = sorted({_text(k) for r in report.runs if isinstance(r.data.get("metrics"), dict)
                           for k in r.data["metrics"]})
    columns = [name for name, _ in CSV_FIELDS] + [f"metrics.{m}" for m in metric_names]
    columns += [f"{sec}.{key}" for sec, keys in _SECTION_COLUMNS.items() for key in keys]
    columns += ["env.git_sha", "env.device", "env.device_name", "env.torch", "env.transformers", "env.peft",
                "error", "diverged_step", "command", "overrides", "identity", "path"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in report.runs:
        row = [read(r) for _, read in CSV_FIELDS]
        metrics = r.data.get("metrics") if isinstance(r.data.get("metrics"), dict) else {}
        row += [metrics.get(m) for m in metric_names]
        for sec, keys in _SECTION_COLUMNS.items():
            block = r.data.get(sec) if isinstance(r.data.get(sec), dict) else {}
            row += [block.get(k) for k in keys]
        env = r.data.get("env") if isinstance(r.data.get("env"), dict) else {}
        row += [env.get(k) for k in ("git_sha", "device", "device_name", "torch", "transformers", "peft")]
        row += [r.data.get("error"), r.data.get("diverged_step"), command_text(r.data.get("command")),
                command_text(r.data.get("overrides")), r.data.get("identity"), r.path]
        writer.writerow([_csv_value(v) for v in row])
    return buf.getvalue()


# ---------------------------------------------------------------------------- entry points

def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def build_report(results_dir: Path, out_dir: Path) -> dict:
    """Read every result.json under results_dir, write report.md, index.html and results.csv to out_dir.
    Returns {"markdown": path, "html": path, "csv": path, "summary": text}."""
    from bench.report_html import render_html

    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder not found: {results_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = collect(results_dir)  # the report folder may sit inside results_dir: it holds no result.json
    paths = {kind: out_dir / name for kind, name in REPORT_FILES.items()}
    _write(paths["markdown"], render_markdown(report))
    _write(paths["html"], render_html(report))
    _write(paths["csv"], render_csv(report))
    return {**paths, "summary": report.summary()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="folder holding <sweep>/<run>/result.json files")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default: RESULTS_DIR/report)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.results_dir / "report"
    try:
        written = build_report(args.results_dir, out)
    except (FileNotFoundError, OSError) as err:
        print(f"bench-report: {err}", file=sys.stderr)
        return 2
    print(f"bench-report: {written['summary']}")
    for kind in REPORT_FILES:
        print(f"bench-report: {kind:8s} {written[kind]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
