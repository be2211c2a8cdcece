"""How long bench-report takes over N synthetic result files (default 200; the target is under 5 s).

Usage: .venv/bin/python scripts/bench_report_speed.py [--runs 200] [--repeat 1]
The files mimic real ones, resolved config included (a few KB each), with some failed and diverged runs,
a W&B folder per run and Hydra logs, so the walk and the parsing cost what they would in practice.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from bench.report import build_report

TASKS = ["sst2", "cola", "mrpc", "rte", "stsb"]
METHODS = {"full": (22713986, 90868632), "lora": (74498, 307961), "prefix": (100000, 420000),
           "prompt": (8450, 39000)}


def synthetic_result(rng: random.Random, task: str, method: str, seed: int, sweep: str) -> dict:
    trainable, stored = METHODS[method]
    name = f"{task}-minilm-{method}-s{seed}-{rng.getrandbits(32):08x}"
    result = {
        "schema_version": 1, "status": "finished", "run": name, "identity": f"{rng.getrandbits(128):032x}",
        "task": task, "model": "minilm", "method": method, "seed": seed, "sweep": sweep,
        "primary_metric": "accuracy", "metrics": {"accuracy": rng.uniform(0.5, 0.9)},
        "params": {"total": 22788484, "trainable": trainable, "trainable_percent": 100 * trainable / 22788484,
                   "stored": trainable},
        "storage": {"bytes": stored, "files": {"adapter_model.safetensors": stored - 6000, "README.md": 5000,
                                               "adapter_config.json": 1000}, "kept": True},
        "throughput": {"train_tokens_per_s": rng.uniform(400, 3000), "train_samples_per_s": rng.uniform(30, 200),
                       "eval_tokens_per_s": rng.uniform(7000, 9000), "eval_samples_per_s": 330.0,
                       "real_token_fraction": 0.95, "virtual_tokens": 0, "virtual_tokens_counted": False,
                       "train_steps": 188, "train_samples": 6000, "train_tokens": 80000, "eval_samples": 872,
                       "eval_tokens": 21943},
        "memory": {"peak_bytes": rng.randint(1_400_000_000, 1_900_000_000), "method": "process peak RSS"},
        "time": {"train_s": rng.uniform(30, 600), "eval_s": 2.8, "total_s": rng.uniform(40, 620)},
        # a resolved config of realistic size: it is parsed even though the report does not show it
        "config": {"task": {"name": task, "primary_metric": "accuracy", "metrics": ["accuracy"],
                            "description": "x" * 200, "prompt": {"template": "y" * 300}},
                   "method": {"name": method, "lr": 5e-4, "peft": {"r": 8, "target_modules": ["query", "value"]}},
                   "model": {"name": "minilm", "description": "z" * 200},
                   "trainer": {f"option_{i}": i for i in range(40)}, "paths": {"root": "/work/main"}},
        "env": {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "4.57.6", "peft": "0.21.2",
                "git_sha": "1ebc066e1448c93fbdd1df4840871e782c7af809", "device": "cpu", "device_name": "AMD EPYC"},
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


def make_results(root: Path, runs: int) -> None:
    rng = random.Random(0)
    combos = [(t, m) for t in TASKS for m in METHODS]
    for i in range(runs):
        task, method = combos[i % len(combos)]
        seed = i // len(combos)
        result = synthetic_result(rng, task, method, seed, "speed")
        run_dir = root / "speed" / result["run"]
        (run_dir / "wandb" / "offline-run-1").mkdir(parents=True)
        (run_dir / "wandb" / "offline-run-1" / "run.wandb").write_bytes(b"\0" * 1024)
        (run_dir / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (root / "_hydra" / "2026-01-01").mkdir(parents=True)
    (root / "_hydra" / "2026-01-01" / "cli.log").write_text("log\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-speed-") as tmp:
        root = Path(tmp)
        make_results(root / "results", args.runs)
        times = []
        for i in range(args.repeat):
            started = time.perf_counter()
            written = build_report(root / "results", root / f"report-{i}")
            times.append(time.perf_counter() - started)
    best = min(times)
    print(f"bench-report: {written['summary']}")
    print(f"bench-report over {args.runs} result files: {best:.3f} s"
          + (f" (best of {args.repeat}: {', '.join(f'{t:.3f}' for t in times)})" if args.repeat > 1 else ""))


if __name__ == "__main__":
    main()
