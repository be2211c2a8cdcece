"""How long bench-report takes over N synthetic result files (default 200; the target is under 5 s).

Usage: .venv/bin/python scripts/bench_report_speed.py [--runs 200] [--repeat 1] [--no-predictions]
The files mimic real ones, resolved config included (a few KB each), with some failed and diverged runs,
a W&B folder per run and Hydra logs, so the walk and the parsing cost what they would in practice. Each
finished run also has a gzip predictions file over its task's real validation size and a majority baseline,
so the paired tests (every row vs the majority baseline and every pair of rows: per-seed t and two-level bootstrap) are timed too;
--no-predictions writes older-style files without them.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import tempfile
import time
from pathlib import Path

from bench.report.build import build_report
from bench.report.stats import metric_value

TASKS = ["sst2", "cola", "mrpc", "rte", "stsb"]
# validation rows, primary metric, majority (constant) prediction, as the real tasks
VALIDATION = {"sst2": (872, "accuracy", 1), "cola": (1043, "matthews_correlation", 1), "mrpc": (408, "f1", 1),
              "rte": (277, "accuracy", 0), "stsb": (1500, "pearsonr", 2.7)}
SKILL = {"full": 0.85, "lora": 0.8, "prefix": 0.75, "prompt": 0.7}  # chance of a right prediction
METHODS = {"full": (22713986, 90868632), "lora": (74498, 307961), "prefix": (100000, 420000),
           "prompt": (8450, 39000)}


def references(task: str) -> list:
    rows, metric, majority = VALIDATION[task]
    rng = random.Random(task)
    if metric == "pearsonr":
        return [round(rng.uniform(0, 5), 2) for _ in range(rows)]
    ones = 0.45 if majority == 0 else 0.55
    return [int(rng.random() < ones) for _ in range(rows)]


def synthetic_predictions(rng: random.Random, task: str, method: str) -> list:
    refs, skill = references(task), SKILL[method]
    if VALIDATION[task][1] == "pearsonr":
        return [round(r + rng.gauss(0, 3 * (1 - skill)), 3) for r in refs]
    return [r if rng.random() < skill else 1 - r for r in refs]


def synthetic_result(rng: random.Random, task: str, method: str, seed: int, sweep: str) -> dict:
    trainable, stored = METHODS[method]
    rows, metric, majority = VALIDATION[task]
    name = f"{task}-minilm-{method}-s{seed}-{rng.getrandbits(32):08x}"
    result = {
        "schema_version": 2, "status": "finished", "run": name, "identity": f"{rng.getrandbits(128):032x}",
        "task": task, "model": "minilm", "method": method, "seed": seed, "sweep": sweep,
        "primary_metric": metric, "metrics": {metric: rng.uniform(0.5, 0.9)}, "eval_split": "validation",
        "baselines": {"majority": {"prediction": majority, "metrics": {metric: 0.5}}},
        "params": {"total": 22788484, "trainable": trainable, "trainable_percent": 100 * trainable / 22788484,
                   "stored": trainable},
        "storage": {"bytes": stored, "files": {"adapter_model.safetensors": stored - 6000, "README.md": 5000,
                                               "adapter_config.json": 1000}, "kept": True},
        "throughput": {"train_tokens_per_s": rng.uniform(400, 3000), "train_samples_per_s": rng.uniform(30, 200),
                       "eval_tokens_per_s": rng.uniform(7000, 9000), "eval_samples_per_s": 330.0,
                       "real_token_fraction": 0.95, "virtual_tokens": 0, "virtual_tokens_counted": False,
                       "train_steps": 188, "train_samples": 6000, "train_tokens": 80000, "eval_samples": 872,
                       "eval_tokens": 21943},
        "memory": {"peak_bytes": rng.randint(1_400_000_000, 1_900_000_000),
                   "added_bytes": rng.randint(100_000_000, 900_000_000), "method": "process RSS above phase start"},
        "conditions": {"device": "cpu", "device_name": "AMD EPYC", "torch_threads": 1, "launcher": "basic",
                       "processes": 1, "precision": "fp32"},
        "time": {"train_s": rng.uniform(30, 600), "eval_s": 2.8, "total_s": rng.uniform(40, 620)},
        # a resolved config of realistic size: it is parsed even though the report does not show it
        "config": {"task": {"name": task, "primary_metric": metric, "metrics": [metric],
                            "description": "x" * 200, "prompt": {"template": "y" * 300}},
                   "method": {"name": method, "lr": 5e-4, "peft": {"r": 8, "target_modules": ["query", "value"]}},
                   "model": {"name": "minilm", "description": "z" * 200},
                   "trainer": {f"option_{i}": i for i in range(40)}, "paths": {"root": "/work/main"}},
        "env": {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "4.57.6", "peft": "0.21.2",
                "git_sha": "1ebc066e1448c93fbdd1df4840871e782c7af809", "git_dirty": False, "device": "cpu",
                "device_name": "AMD EPYC"},
        "seeds": {"python": seed, "torch": seed}, "data": {"files": {"train": {"sha256": "0" * 64, "rows": 67349}}},
        "command": ["bench", "-m", "method=full,lora,prefix,prompt", f"task={','.join(TASKS)}",
                    "seed=0,1,2,3,4,5,6,7,8,9"],
        "overrides": [f"method={method}", f"task={task}", f"seed={seed}"],
    }
    roll = rng.random()
    if roll < 0.05:
        for key in ("metrics", "params", "storage", "throughput", "memory"):
            result.pop(key)
        result.update(status="failed", error="RuntimeError: <synthetic> failure", traceback="Traceback...\n" * 20)
    elif roll < 0.08:
        result.pop("metrics")
        result.update(status="diverged", error="loss became nan at step 12", diverged_step=12)
    return result


def make_results(root: Path, runs: int, predictions: bool = True) -> None:
    rng = random.Random(0)
    combos = [(t, m) for t in TASKS for m in METHODS]
    for i in range(runs):
        task, method = combos[i % len(combos)]
        seed = i // len(combos)
        result = synthetic_result(rng, task, method, seed, "speed")
        run_dir = root / "speed" / result["run"]
        (run_dir / "wandb" / "offline-run-1").mkdir(parents=True)
        (run_dir / "wandb" / "offline-run-1" / "run.wandb").write_bytes(b"\0" * 1024)
        if predictions and result["status"] == "finished":
            refs = references(task)
            preds = synthetic_predictions(random.Random(f"{task}-{method}-{seed}"), task, method)
            metric = result["primary_metric"]
            result["metrics"][metric] = metric_value(metric, refs, preds)
            result["predictions"] = {"validation": "predictions-validation.json.gz"}
            payload = {"split": "validation", "ids": list(range(len(refs))), "predictions": preds,
                       "references": refs, "primary_metric": metric}
            (run_dir / "predictions-validation.json.gz").write_bytes(
                gzip.compress(json.dumps(payload).encode("utf-8"), mtime=0))
        elif not predictions:
            result.pop("baselines")
        (run_dir / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (root / "_hydra" / "2026-01-01").mkdir(parents=True)
    (root / "_hydra" / "2026-01-01" / "cli.log").write_text("log\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-predictions", action="store_true", help="older-style files: no predictions, "
                        "no baselines (no bootstrap)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-speed-") as tmp:
        root = Path(tmp)
        make_results(root / "results", args.runs, predictions=not args.no_predictions)
        times, cpu = [], []
        for i in range(args.repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            written = build_report(root / "results", root / f"report-{i}")
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    best = min(times)
    print(f"bench-report: {written['summary']}")
    print(f"bench-report over {args.runs} result files{'' if args.no_predictions else ' with predictions'}: "
          f"{best:.3f} s wall, {min(cpu):.3f} s CPU"
          + (f" (best of {args.repeat}: {', '.join(f'{t:.3f}' for t in times)})" if args.repeat > 1 else ""))


if __name__ == "__main__":
    main()
