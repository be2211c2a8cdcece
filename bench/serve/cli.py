"""serve_eval: every group served, the figures summed into serve-<method>.json; the table; the CLI."""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench import record
from bench.units import human_bytes


def _choose_method(found: dict, method: str, results_dir: Path, refused: list[dict]) -> str:
    """The method name as recorded (exact, else a unique case-insensitive match); ValueError listing the
    methods whose runs kept an adapter (and the result files the schema refused) when `method` is not one."""
    from bench.serve.runs import adapter_methods

    servable = adapter_methods(found)
    if method in servable:
        return method
    folded = [m for m in servable if m.lower() == method.lower()]
    if len(folded) == 1:
        return folded[0]
    left_out = f" ({len(found[method])} run(s) of method={method}, none with an adapter/ folder)" if method in found else ""
    if refused:
        left_out += f" ({len(refused)} result file(s) refused, e.g. {refused[0]['run']}: {refused[0]['reason']})"
    raise ValueError(f"{results_dir}: no run of method={method} kept a PEFT method's adapter/ folder{left_out}; "
                     f"serving adapters needs a PEFT method whose runs keep one (trainer.keep_weights=adapters "
                     f"or all). Methods with adapters here: {', '.join(servable) or 'none'}")


def serve_eval(results_dir, method: str, out=None, *, repeats: int = 20, mixed: bool = True) -> dict:
    """Serve every kept adapter of `method` under results_dir from one base per group; write serve-<method>.json."""
    from bench.serve.group import serve_group
    from bench.serve.runs import groups, scan, select

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"{results_dir}: no such folder")
    if repeats < 1:
        raise ValueError(f"--repeats: must be an integer >= 1, got {repeats}")
    found, refused = scan(results_dir)
    method = _choose_method(found, method, results_dir, refused)
    runs, skipped = select(found, method)
    skipped += refused  # unreadable by this bench: whatever their method, they were not served
    if not runs:
        raise ValueError(f"{results_dir}: no finished method={method} run with an adapter/ folder"
                         + (f" (left out: {skipped})" if skipped else ""))
    if len({s.cfg.model.name for s in runs}) > 1:
        print(f"bench-serve-eval: runs of several models ({sorted({s.cfg.model.name for s in runs})}); "
              "each is served from its own base")

    done = [serve_group(g, repeats, mixed) for g in groups(runs)]
    per_run = [r for d in done for r in d["runs"]]
    group_info = [d["group"] for d in done]
    n = len(per_run)
    storage = {
        "adapters": n,
        "adapters_bytes": sum(g["storage"]["adapters_bytes"] for g in group_info),
        "adapters_bytes_on_disk": sum(g["storage"]["adapters_bytes_on_disk"] for g in group_info),
        "full_copies_bytes": sum(g["storage"]["full_copies_bytes"] for g in group_info),
        "how": "adapters_bytes: sum of storage.bytes recorded in the runs' result.json (weights and adapter "
               "config PEFT save_pretrained wrote); adapters_bytes_on_disk: the same folders measured now; "
               "full_copies_bytes: N x the bytes save_pretrained writes for the base model with its head "
               "(safetensors + config)",
    }
    storage["ratio"] = storage["full_copies_bytes"] / storage["adapters_bytes"] if storage["adapters_bytes"] else None
    memory = {
        "served_param_bytes": sum(g["memory"]["served_param_bytes"] for g in group_info),
        "separate_models_param_bytes": sum(g["memory"]["separate_models_param_bytes"] for g in group_info),
        "served_rss_bytes": sum(g["memory"]["rss_served_bytes"] for g in group_info),
        "separate_models_rss_bytes_estimate": sum(g["memory"]["rss_separate_models_bytes_estimate"]
                                                  for g in group_info),
        "bases": len(group_info),
        "how": "param bytes: numel x element size of every distinct parameter of the PEFT model holding the base "
               "and all N adapters (the base's own unused head and N head copies included) vs N x the base "
               "model's parameter bytes; RSS: process resident set growth (every weight read once, since "
               "safetensors may be memory-mapped; after gc and malloc_trim) from just before the base is loaded "
               "to after all adapters are loaded, vs N x the growth for the base alone (an estimate: N models "
               "are not loaded); both before evaluation, on the CPU side",
    }
    result = {
        "method": method, "results_dir": str(results_dir), "created": datetime.now(timezone.utc).isoformat(),
        "model_kinds": sorted({g["kind"] for g in group_info}), "shapes": sorted({r["shape"] for r in per_run}),
        "runs": per_run, "skipped_runs": skipped,
        "all_equal": all(r["equal"] for r in per_run), "groups": group_info,
        "storage": storage, "memory": memory,
        "latency": {"switch_ms_median": max(g["latency"]["switch_ms_median"] for g in group_info),
                    "load_ms_median": max(g["latency"]["load_ms_median"] for g in group_info),
                    "repeats": repeats, "how": "the slowest group's medians; per group under groups[].latency"},
        "how": "each run's recorded splits re-evaluated by bench.evaluation.evaluate (the run's own code path: "
               "the task shape's pipeline, predictions and metrics) with its adapter switched in among the "
               "others; equal: every split's metrics identical to result.json's and its predictions identical "
               "to the run's predictions file",
    }
    if mixed:
        result["mixed_batch"] = group_info[0]["mixed_batch"] if len(group_info) == 1 else {
            "per_group": [g["mixed_batch"] for g in group_info],
            "note": "rows of groups with different heads cannot share a base, so each group mixes its own"}
    out = Path(out) if out else results_dir / f"serve-{method}.json"
    record.write_json_atomic(out, result)
    result["written_to"] = str(out)
    return result


# ---------------------------------------------------------------------------- printing and CLI

def _value(x) -> str:
    return f"{x:>9.4f}" if isinstance(x, (int, float)) else f"{'-':>9}"


def format_table(result: dict) -> str:
    models = ", ".join(sorted({g["model"] for g in result["groups"]}))
    lines = [f"serve-eval method={result['method']}: {len(result['runs'])} adapters on "
             f"{result['memory']['bases']} base(s) ({models}, {result['groups'][0]['device']})"]
    lines.append(f"{'task':<10} {'metric':<12} {'recorded':>9} {'served':>9} {'equal':>6} {'adapter':>11}")
    for r in result["runs"]:
        key = r["primary_metric"]
        lines.append(f"{r['task']:<10} {key:<12} {_value(r['recorded_metrics'].get(key))} "
                     f"{_value(r['served_metrics'].get(key))} {'yes' if r['equal'] else 'NO':>6} "
                     f"{human_bytes(r['adapter_bytes'], '-'):>11}")
    s, m, lat = result["storage"], result["memory"], result["latency"]
    ratio = f" ({s['ratio']:.0f}x)" if s["ratio"] else ""
    lines.append(f"storage: {s['adapters']} adapters {human_bytes(s['adapters_bytes'])} vs {s['adapters']} full "
                 f"copies {human_bytes(s['full_copies_bytes'])}{ratio}")
    lines.append(f"memory (param bytes): base + adapters {human_bytes(m['served_param_bytes'])} vs separate models "
                 f"{human_bytes(m['separate_models_param_bytes'])}; RSS growth {human_bytes(m['served_rss_bytes'])} "
                 f"vs ~{human_bytes(m['separate_models_rss_bytes_estimate'])}")
    lines.append(f"latency: switch {lat['switch_ms_median']:.3f} ms, load {lat['load_ms_median']:.1f} ms "
                 f"(medians of {lat['repeats']})")
    mb = result.get("mixed_batch")
    if mb and "samples_per_s" in mb:
        same = sum(r["same_predictions"] for r in mb["per_task"].values())
        sps = mb["samples_per_s"]
        lines.append(f"mixed batches: predictions equal {same}/{mb['rows']}; samples/s mixed "
                     f"{sps['mixed_length_sorted']:.1f} (arrival order {sps['mixed_arrival_order']:.1f}) vs "
                     f"task-by-task {sps['task_by_task']:.1f}")
    elif mb:
        lines.append(f"mixed batches: skipped: {mb['skipped']}" if "skipped" in mb
                     else "mixed batches: per group, see the JSON file")
    lines.append(f"written: {result.get('written_to')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # as bench.cli: nothing here needs the network (the hub only for a task without local files)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ensemble"]:  # bench-serve-eval ensemble RESULTS_DIR --task T: one task's prompts voting
        from bench.serve.ensemble import main as ensemble_main

        return ensemble_main(argv[1:])
    parser = argparse.ArgumentParser(prog="bench-serve-eval",
                                     description="Serve many trained adapters of one method from one base model, "
                                                 "and measure what that costs.",
                                     epilog="bench-serve-eval ensemble RESULTS_DIR --task TASK: the seeds' soft "
                                            "prompts of one task served together, voting (see --help there).")
    parser.add_argument("results_dir", help="a sweep's results folder, e.g. results/<sweep>")
    parser.add_argument("--method", required=True,
                        help="a PEFT method whose runs under results_dir kept an adapter/ folder (e.g. lora, prompt)")
    parser.add_argument("--out", default=None, help="JSON file (default <results_dir>/serve-<method>.json)")
    parser.add_argument("--repeats", type=int, default=20, help="swaps / loads timed (medians)")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed-task batch section")
    args = parser.parse_args(argv)
    try:
        result = serve_eval(args.results_dir, args.method, args.out, repeats=args.repeats, mixed=not args.no_mixed)
    except ValueError as err:
        print(f"bench-serve-eval: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if not result["all_equal"]:
        print("bench-serve-eval: served metrics or predictions differ from those recorded at training time",
              file=sys.stderr)
        return 1
    return 0
