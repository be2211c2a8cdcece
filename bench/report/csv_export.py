"""results.csv: one row per result file read (unreadable ones excepted), every recorded figure a column."""
from __future__ import annotations

import csv
import io
import math
from typing import Any

from bench.report.fmt import DASH, command_text, dig, text
from bench.report.model import Report

FIELDS = [
    ("run", lambda r: r.data.get("run")), ("sweep", lambda r: r.data.get("sweep")),
    ("status", lambda r: r.status), ("task", lambda r: r.task), ("model", lambda r: r.model),
    ("method", lambda r: r.method), ("variant", lambda r: r.variant), ("seed", lambda r: r.data.get("seed")),
    ("primary_metric", lambda r: r.primary if r.primary != DASH else None), ("primary_value", lambda r: r.value),
    ("dev_primary_value", lambda r: r.dev_value), ("eval_split", lambda r: r.data.get("eval_split")),
    ("selection_biased", lambda r: r.data.get("selection_biased")),
    ("majority_primary_value", lambda r: dig(r.majority, "metrics", r.primary)),
]
SECTION_COLUMNS = {
    "params": ["total", "trainable", "trainable_percent", "stored"],
    "storage": ["bytes", "kept"],
    "throughput": ["train_tokens_per_s", "train_samples_per_s", "eval_tokens_per_s", "eval_samples_per_s",
                   "real_token_fraction", "virtual_tokens", "virtual_tokens_counted", "train_steps",
                   "train_samples", "train_tokens", "eval_samples", "eval_tokens", "mfu"],
    "memory": ["added_bytes", "peak_bytes", "train_added_bytes", "train_peak_bytes", "eval_added_bytes",
               "eval_peak_bytes", "method"],
    "time": ["train_s", "eval_s", "total_s"],
    "energy": ["source", "train_j", "eval_j", "j_per_1k_train_tokens", "j_per_1k_eval_examples"],
}
CONDITIONS = ["device", "device_name", "torch_threads", "launcher", "processes", "precision", "options"]
ENV = ["git_sha", "git_dirty", "torch", "transformers", "peft"]


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value).lower()
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return " ".join(text(v) for v in value)
    return text(value)


def render_csv(report: Report) -> str:
    metric_names = sorted({text(k) for r in report.runs if isinstance(r.data.get("metrics"), dict)
                           for k in r.data["metrics"]})
    columns = [name for name, _ in FIELDS] + [f"metrics.{m}" for m in metric_names]
    columns += [f"{sec}.{key}" for sec, keys in SECTION_COLUMNS.items() for key in keys]
    columns += [f"conditions.{k}" for k in CONDITIONS] + [f"env.{k}" for k in ENV]
    columns += ["error", "diverged_step", "command", "overrides", "identity", "path"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in report.runs:
        row = [read(r) for _, read in FIELDS]
        metrics = r.data.get("metrics") if isinstance(r.data.get("metrics"), dict) else {}
        row += [metrics.get(m) for m in metric_names]
        for sec, keys in SECTION_COLUMNS.items():
            block = r.data.get(sec) if isinstance(r.data.get(sec), dict) else {}
            row += [block.get(k) for k in keys]
        row += [getattr(r.conditions, k) or None for k in CONDITIONS]
        env = r.data.get("env") if isinstance(r.data.get("env"), dict) else {}
        row += [env.get(k) for k in ENV]
        row += [r.data.get("error"), r.data.get("diverged_step"), command_text(r.data.get("command")),
                command_text(r.data.get("overrides")), r.data.get("identity"), r.path]
        writer.writerow([_csv_value(v) for v in row])
    return buf.getvalue()


VERDICT_COLUMNS = ["task", "metric", "family", "family_size", "row", "compared_with", "difference", "per_seed_differences",
                   "seeds", "example_ids", "seed_ci_low", "seed_ci_high", "seed_p", "example_ci_low",
                   "example_ci_high", "example_p", "p", "p_holm", "test", "verdict", "seeds_needed", "note"]
TEST_NAME = ("paired t over per-seed differences and cluster bootstrap over example ids; "
             "p = max of the two, Holm within the family")


def render_verdicts(report: Report) -> str:
    """verdicts.csv: every test of every section (both families), one row each, for notebooks and CI jobs.
    per_seed_differences are in seed order, separated by spaces; empty cells: not computed."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(VERDICT_COLUMNS)
    for section in report.sections:
        for g, c in section.tests:
            seed_ci, example_ci = c.seed_interval or (None, None), c.interval or (None, None)
            row = [section.task, section.primary, c.family, c.family_size or None, g.label, c.other, c.diff,
                   list(c.per_seed), c.seeds, c.examples, *seed_ci, c.seed_p, *example_ci, c.example_p, c.p,
                   c.adjusted_p, TEST_NAME if c.diff is not None else None, c.verdict, c.seeds_needed,
                   c.reason or None]
            writer.writerow([_csv_value(v) for v in row])
    return buf.getvalue()
