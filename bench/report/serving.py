"""The serving section: bench-serve-eval's serve-<method>.json files as blocks (see tables.Block)."""
from __future__ import annotations

from typing import Any

from bench.report.fmt import (DASH, dicts, dig, fmt_bytes, fmt_count, fmt_fraction, fmt_metric, fmt_ms, fmt_plain,
                              fmt_interval, fmt_rate1, fmt_ratio, fmt_seconds, fmt_signed, fmt_yes, num,
                              text)
from bench.report.model import ServeFile, Table, cells

SERVING_TITLE = "Serving: one base, many adapters"
SERVING_LEGEND = ("From bench-serve-eval: every kept adapter of one method loaded into one base model and "
                  "served by switching among them. Metrics: recorded at training time vs re-evaluated after "
                  "switching (equal: every metric identical). Latencies are medians over the repeats. N models: "
                  "N full fine-tuned copies on disk, N x the base's parameters in memory; their RSS is an "
                  "estimate (N x the base's growth), not a measurement.")
MIXED_ORDERS = (("mixed, length-sorted", "mixed_length_sorted"), ("mixed, arrival order", "mixed_arrival_order"),
                ("task by task", "task_by_task"))


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def _out_of(part: float | None, whole: float | None) -> str:
    return f"{fmt_count(part)}/{fmt_count(whole)}"


def _adapters(data: dict) -> float | None:
    n = num(dig(data, "storage", "adapters"))
    return n if n is not None else (float(len(dicts(data.get("runs")))) or None)


def accuracy_table(data: dict) -> Table:
    rows = []
    for r in dicts(data.get("runs")):
        recorded = r.get("recorded_metrics") if isinstance(r.get("recorded_metrics"), dict) else {}
        served = r.get("served_metrics") if isinstance(r.get("served_metrics"), dict) else {}
        name = r.get("primary_metric")
        if not isinstance(name, str) or not name:
            names = set(recorded) | set(served)
            name = text(next(iter(names))) if len(names) == 1 else None
        rows.append(cells(
            text(r.get("task")) or DASH, text(r.get("adapter")) or DASH, text(r.get("seed")) or DASH,
            name or DASH, fmt_metric(num(recorded.get(name))) if name else DASH,
            fmt_metric(num(served.get(name))) if name else DASH, fmt_yes(r.get("equal")),
            fmt_plain(num(r.get("max_abs_diff"))), fmt_count(num(r.get("eval_samples"))),
            fmt_bytes(num(r.get("adapter_bytes"))), fmt_ms(num(r.get("first_load_ms"))),
            text(r.get("run")) or DASH))
    return Table(["task", "adapter", "seed", "metric", "at training", "served", "equal", "max abs diff",
                  "eval rows", "adapter size", "first load", "run"], rows, set(range(4, 11)) - {6})


def latency_table(data: dict) -> Table:
    rows = []
    for g in dicts(data.get("groups")):
        lat = g.get("latency") if isinstance(g.get("latency"), dict) else {}
        model = " · ".join(p for p in (text(g.get("model")), text(g.get("kind"))) if p) or DASH
        rows.append(cells(model, fmt_count(num(g.get("head_outputs"))), fmt_count(num(g.get("adapters"))),
                          text(g.get("device")) or DASH, fmt_ms(num(lat.get("switch_ms_median"))),
                          fmt_ms(num(lat.get("switch_ms_max"))), fmt_ms(num(lat.get("load_ms_median"))),
                          fmt_count(num(lat.get("switch_repeats") if "switch_repeats" in lat
                                        else lat.get("load_repeats")))))
    if not rows:  # no per-group figures: the file's overall (slowest group's) medians
        lat = data.get("latency") if isinstance(data.get("latency"), dict) else {}
        rows.append(cells("all groups", DASH, fmt_count(num(dig(data, "storage", "adapters"))), DASH,
                          fmt_ms(num(lat.get("switch_ms_median"))), DASH, fmt_ms(num(lat.get("load_ms_median"))),
                          fmt_count(num(lat.get("repeats")))))
    return Table(["base model", "head outputs", "adapters", "device", "switch (median)", "switch (max)",
                  "load (median)", "repeats"], rows, {1, 2, 4, 5, 6, 7})


def cost_table(data: dict) -> Table:
    n = _adapters(data)
    label = fmt_count(n) if n is not None else "N"
    adapters = num(dig(data, "storage", "adapters_bytes"))
    copies = num(dig(data, "storage", "full_copies_bytes"))
    stored_ratio = num(dig(data, "storage", "ratio"))
    if stored_ratio is None:
        stored_ratio = _ratio(copies, adapters)
    rows = [cells(f"stored bytes ({label} adapters vs {label} full copies)", fmt_bytes(adapters), fmt_bytes(copies),
                  fmt_ratio(stored_ratio))]
    for what, served_key, separate_key in (
            ("memory: parameter bytes", "served_param_bytes", "separate_models_param_bytes"),
            ("memory: RSS growth (N models estimated)", "served_rss_bytes", "separate_models_rss_bytes_estimate")):
        served = num(dig(data, "memory", served_key))
        separate = num(dig(data, "memory", separate_key))
        rows.append(cells(what.replace("N models", f"{label} models"), fmt_bytes(served), fmt_bytes(separate),
                          fmt_ratio(_ratio(separate, served))))
    bases = fmt_count(num(dig(data, "memory", "bases")))
    headers = ["measure", f"{bases} base(s) + {label} adapters", f"{label} models", "models / served"]
    return Table(headers, rows, {1, 2, 3})


def _metrics_text(metrics: Any) -> str:
    if not isinstance(metrics, dict) or not metrics:
        return DASH
    items = sorted(metrics.items(), key=lambda kv: text(kv[0]))
    return ", ".join(f"{text(k)}={fmt_metric(num(v))}" for k, v in items)


def _list_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(text(v) for v in value) or DASH
    return text(value) or DASH


def mixed_blocks(mixed: dict, title: str) -> list[tuple[str, Any]]:
    blocks: list[tuple[str, Any]] = [("h4", title)]
    if "skipped" in mixed:
        return blocks + [("p", f"Skipped: {text(mixed.get('skipped')) or DASH}.")]
    per_task = mixed.get("per_task") if isinstance(mixed.get("per_task"), dict) else {}
    tasks = [(k, v) for k, v in sorted(per_task.items(), key=lambda kv: text(kv[0])) if isinstance(v, dict)]
    rows = num(mixed.get("rows"))

    def total(key: str) -> float | None:
        values = [num(v.get(key)) for _, v in tasks]
        return sum(values) if values and None not in values else None

    sps = mixed.get("samples_per_s") if isinstance(mixed.get("samples_per_s"), dict) else {}
    mixed_sps, task_sps = num(sps.get("mixed_length_sorted")), num(sps.get("task_by_task"))
    blocks.append(("p", f"Predictions equal to the per-task passes: {_out_of(total('same_predictions'), rows)} rows "
                        f"(length-sorted), {_out_of(total('same_predictions_arrival_order'), rows)} (arrival order); "
                        f"all equal: {fmt_yes(mixed.get('all_predictions_equal'))}. Throughput mixed vs per task: "
                        f"{fmt_rate1(mixed_sps)} vs {fmt_rate1(task_sps)} samples/s "
                        f"({fmt_ratio(_ratio(mixed_sps, task_sps))}). Batch size "
                        f"{fmt_count(num(mixed.get('batch_size')))}; prompt lengths "
                        f"{_list_text(mixed.get('prompt_lengths'))}."))
    table_rows = []
    for label, key in MIXED_ORDERS:
        table_rows.append(cells(label, fmt_rate1(num(sps.get(key))), fmt_seconds(num(dig(mixed, "seconds", key))),
                                fmt_count(num(dig(mixed, "batches", key))),
                                fmt_fraction(num(dig(mixed, "tasks_per_batch_mean", key)), 2),
                                fmt_fraction(num(dig(mixed, "real_token_fraction", key)), 3)))
    blocks.append(("table", Table(["batches", "samples/s", "time", "batches run", "tasks per batch (mean)",
                                   "real-token fraction"], table_rows, {1, 2, 3, 4, 5})))
    if tasks:
        blocks.append(("table", Table(
            ["task", "rows", "same predictions", "same (arrival order)", "max abs logit diff", "metrics (mixed)"],
            [cells(text(v.get("task")) or text(k), fmt_count(num(v.get("rows"))),
                   fmt_count(num(v.get("same_predictions"))), fmt_count(num(v.get("same_predictions_arrival_order"))),
                   fmt_plain(num(v.get("max_abs_logit_diff"))), _metrics_text(v.get("metrics")))
             for k, v in tasks], {1, 2, 3, 4})))
    return blocks


def _interval_text(block: dict) -> str:
    interval = block.get("interval")
    if not isinstance(interval, list) or len(interval) != 2:
        return DASH
    return f"[{fmt_metric(num(interval[0]))}, {fmt_metric(num(interval[1]))}]"


def ensemble_blocks(item: ServeFile) -> list[tuple[str, Any]]:
    """A serve-ensemble-<method>-<task>.json (bench-serve-eval ensemble): the prompts' vote against single prompts
    and full fine-tuning, and what serving N prompts costs."""
    data = item.data
    cost = data.get("cost") if isinstance(data.get("cost"), dict) else {}
    n = fmt_count(num(cost.get("prompts")))
    primary = text(data.get("primary_metric")) or "metric"
    blocks: list[tuple[str, Any]] = [("h3", item.path), ("p", (
        f"Prompt ensemble: {n} soft prompts of method {text(data.get('method')) or DASH} on task "
        f"{text(data.get('task')) or DASH} served together on {fmt_count(num(cost.get('bases')))} base(s) "
        f"({text(data.get('model')) or DASH}; device {text(data.get('device')) or DASH}), "
        f"{fmt_count(num(data.get('rows')))} {text(data.get('split')) or DASH} rows. Majority vote: each prompt's "
        f"label one vote, ties to the higher mean probability ({fmt_count(num(dig(data, 'ensemble', 'tied_votes')))} "
        "tied rows); mean probability: the label of the prompts' mean probabilities."))]
    rows = [cells(f"prompt, seed {text(p.get('seed')) or DASH}", fmt_metric(num(p.get("served_metric"))), DASH,
                  DASH) for p in dicts(data.get("prompts"))]
    examples = "examples (bootstrap)"
    for label, block, over in (("single prompts (mean)", data.get("single_prompts"), "seeds (t)"),
                               ("ensemble: majority vote", dig(data, "ensemble", "majority_vote"), examples),
                               ("ensemble: mean probability", dig(data, "ensemble", "mean_probability"), examples),
                               ("full fine-tuning (mean)", data.get("full_finetuning"), "seeds (t)")):
        if isinstance(block, dict):
            value = num(block.get("mean", block.get("metric")))
            runs = f", {fmt_count(num(block.get('n')))} runs" if "n" in block else ""
            rows.append(cells(label, fmt_metric(value), _interval_text(block), over + runs))
        elif label.startswith("full"):
            rows.append(cells(label, DASH, DASH, "no finished run of the task in this folder"))
    blocks += [("h4", "Ensemble vs single prompts vs full fine-tuning"),
               ("table", Table(["predictor", primary, "95% CI", "interval over"], rows, {1}))]
    gain_rows = [cells(how, f"seed {text(d.get('seed')) or DASH}", fmt_signed(num(d.get("diff"))),
                       fmt_interval(tuple(d["interval"]), signed=True) if isinstance(d.get("interval"), list)
                       and len(d["interval"]) == 2 else DASH)
                 for how, key in (("majority vote", "majority_vote"), ("mean probability", "mean_probability"))
                 for d in dicts(dig(data, "ensemble", key, "minus_single_prompts", "per_prompt"))]
    if gain_rows:
        blocks += [("h4", "Ensemble minus each single prompt, paired on the same rows"),
                   ("table", Table(["ensemble", "single prompt", f"{primary} difference", "95% CI (examples)"],
                                   gain_rows, {2})),
                   ("p", "One ensemble of these seeds: its members are the seeds, so the gain has no seed-level "
                         "replicate; each interval is a paired bootstrap over the rows.")]
    one = cost.get("ensemble_one_batch") if isinstance(cost.get("ensemble_one_batch"), dict) else None
    single_bytes, full_bytes = num(cost.get("adapter_bytes_mean")), num(cost.get("full_checkpoint_bytes"))
    cost_rows = [cells(f"stored bytes ({n} adapters vs 1 full checkpoint)", fmt_bytes(num(cost.get("adapters_bytes"))),
                       fmt_bytes(single_bytes), fmt_bytes(full_bytes)),
                 cells("samples/s, N passes (one per prompt)",
                       fmt_rate1(num(cost.get("ensemble_n_passes_samples_per_s"))),
                       fmt_rate1(num(cost.get("single_prompt_samples_per_s_mean"))), DASH),
                 cells("samples/s, one batch (rows repeated per prompt)",
                       fmt_rate1(num(one.get("samples_per_s"))) if one else DASH, DASH, DASH)]
    blocks += [("h4", "Serving cost: N prompts vs one prompt vs a full model"),
               ("table", Table(["measure", f"ensemble ({n} prompts)", "one prompt", "full fine-tuned model"],
                               cost_rows, {1, 2, 3}))]
    if one:
        blocks.append(("p", f"One batch: predictions equal to the per-prompt passes "
                            f"{_out_of(num(one.get('same_predictions')), num(one.get('predictions')))}."))
    elif cost.get("ensemble_one_batch_skipped"):
        blocks.append(("p", f"One batch skipped: {text(cost.get('ensemble_one_batch_skipped'))}."))
    return blocks


def serving_blocks(item: ServeFile) -> list[tuple[str, Any]]:
    """One serve-<method>.json as blocks: ("h3"/"h4"/"p", text) and ("table", Table)."""
    if item.data is None:
        return [("h3", item.path), ("p", f"Unreadable: {item.reason}.")]
    if item.data.get("kind") == "ensemble":
        return ensemble_blocks(item)
    data = item.data
    groups = dicts(data.get("groups"))
    models = sorted({text(g.get("model")) for g in groups if g.get("model") is not None})
    devices = sorted({text(g.get("device")) for g in groups if g.get("device") is not None})
    blocks: list[tuple[str, Any]] = [("h3", item.path), ("p", (
        f"Method {text(data.get('method')) or DASH}: {fmt_count(_adapters(data))} adapters on "
        f"{fmt_count(num(dig(data, 'memory', 'bases')))} base(s) ({', '.join(models) or DASH}; "
        f"device {', '.join(devices) or DASH}). All served metrics equal those at training: "
        f"{fmt_yes(data.get('all_equal'))}."))]
    blocks += [("h4", "Metrics at training vs served"),
               ("table", accuracy_table(data)) if dicts(data.get("runs")) else ("p", "No runs recorded.")]
    skipped = dicts(data.get("skipped_runs"))
    if skipped:
        blocks.append(("p", "Runs left out: " + "; ".join(
            f"{text(s.get('run')) or DASH} ({text(s.get('reason')) or DASH})" for s in skipped) + "."))
    blocks += [("h4", "Adapter switch and load latency"), ("table", latency_table(data)),
               ("h4", "Storage and memory: one base + N adapters vs N models"), ("table", cost_table(data))]
    mixed = data.get("mixed_batch")
    if isinstance(mixed, dict):
        if isinstance(mixed.get("per_group"), list):
            for i, sub in enumerate(mixed["per_group"], 1):
                title = f"Mixed-task batches, group {i}"
                blocks += mixed_blocks(sub, title) if isinstance(sub, dict) else [("h4", title), ("p", DASH)]
            if mixed.get("note"):
                blocks.append(("p", f"note: {text(mixed['note'])}"))
        else:
            blocks += mixed_blocks(mixed, "Mixed-task batches")
    elif "mixed_batch" in data:
        blocks += [("h4", "Mixed-task batches"), ("p", DASH)]
    return blocks
