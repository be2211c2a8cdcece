"""Train-phase memory and step time of full fine-tuning with and without gradient checkpointing, in fp32 and bf16
weights, measured by bench itself: each variant is one `bench` run (its own process) whose result.json figures are
printed side by side.

The model is SmolLM2-135M's architecture (model=smollm2-135m-random: the same shapes and FLOPs, random weights; pass
--model smollm2-135m for the real ones), the task SST-2's format with long synthetic rows written to a temporary
data folder, so that every batch is --batch rows of exactly --length tokens (decoder prompts are cut from the left
to trainer.max_length). Memory is bench's PeakMemory (CPU: what the train phase added to the process's anonymous
RSS; CUDA: allocated bytes); the step time is a timed step (trainer.throughput_warmup_steps=1 leaves the first out).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_memory_options.py                 # 4 runs, ~5-10 min on 2 cores
    .venv/bin/python scripts/bench_memory_options.py --steps 3 --variants fp32,fp32+gc

On shared cores the times are noisy; the memory figures are what the comparison is for.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 2 ** 20
VARIANTS = {"fp32": ("fp32", False), "fp32+gc": ("fp32", True), "bf16": ("bf16", False), "bf16+gc": ("bf16", True)}
WORDS = "the film was a long slow study of grief and memory with fine acting and a score that never lets go".split()


def write_rows(folder: Path, rows: int) -> None:
    """SST-2-shaped rows of ~1,000 words: far more than --length tokens, so every row is cut to exactly the length."""
    (folder / "sst2").mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        with open(folder / "sst2" / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(rows):
                words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1000)]
                fh.write(json.dumps({"idx": i, "sentence": " ".join(words), "label": i % 2}) + "\n")


def run(variant: str, args, data: Path, results: Path) -> dict:
    dtype, checkpointing = VARIANTS[variant]
    overrides = [
        "task=sst2", f"model={args.model}", "method=full", "logger=none", "trainer=quick", "force=true",
        f"paths.data_dir={data}", f"paths.results_dir={results}", f"sweep=memory-options-{variant}",
        f"model.dtype={dtype}", f"trainer.gradient_checkpointing={str(checkpointing).lower()}",
        f"trainer.batch_size={args.batch}", f"trainer.max_length={args.length}", f"trainer.max_steps={args.steps}",
        f"trainer.train_samples={args.batch * args.steps}", f"trainer.eval_samples={args.batch}",
        f"trainer.eval_batch_size={args.batch}", "trainer.throughput_warmup_steps=1", "trainer.log_every=1",
        "trainer.group_by_length=false", f"trainer.device={args.device}", "trainer.keep_weights=none",
    ]
    started = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "bench"), *overrides], cwd=ROOT, text=True,
                          capture_output=True)
    wall = time.perf_counter() - started
    found = sorted((results / f"memory-options-{variant}").glob("*/result.json"), key=lambda p: p.stat().st_mtime)
    if done.returncode != 0 or not found:
        sys.exit(f"{variant}: bench failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(found[-1].read_text())
    result["_wall_s"] = wall
    return result


def row(variant: str, r: dict, batch: int) -> list[str]:
    mem, tput, params = r["memory"], r["throughput"], r["params"]
    step_s = batch / tput["train_samples_per_s"] if tput["train_samples_per_s"] else None
    fmt = lambda v, scale=MiB, digits=0: "-" if v is None else f"{v / scale:,.{digits}f}"  # noqa: E731
    return [variant, fmt(mem["train_added_bytes"]), fmt(mem["train_peak_bytes"]), fmt(r["storage"]["bytes"]),
            fmt(step_s, 1, 2), fmt(tput["first_step_s"], 1, 2), fmt(tput["train_tokens_per_s"], 1, 0),
            f"{r['train_loss_curve']['loss'][0]:.4f}", f"{params['total'] / 1e6:.1f}M", f"{r['_wall_s']:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-random")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=384)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per run; the first is warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-memory-options-") as tmp:
        data, results = Path(tmp) / "data", Path(tmp) / "results"
        write_rows(data, args.batch * args.steps)
        measured = {}
        for variant in variants:
            print(f"running {variant} ...", flush=True)
            measured[variant] = run(variant, args, data, results)
    first = next(iter(measured.values()))
    cond = first["conditions"]
    print(f"\n{args.model}, full fine-tuning, batch {args.batch} x {args.length} tokens, {args.steps} steps "
          f"(1 warm-up); device {cond['device']} ({cond['device_name']}), torch threads {cond['torch_threads']}, "
          f"cpu_count {first['env']['cpu_count']}, precision {cond['precision']}, torch {first['env']['torch']}")
    headers = ["variant", "train added MiB", "train peak MiB", "weights stored MiB", "step s", "first step s",
               "tokens/s", "loss step 1", "params", "run wall s"]
    rows = [headers] + [row(v, r, args.batch) for v, r in measured.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    for dtype in ("fp32", "bf16"):
        off, on = measured.get(dtype), measured.get(f"{dtype}+gc")
        if off and on and off["memory"]["train_added_bytes"] and on["throughput"]["train_samples_per_s"]:
            saved = 1 - on["memory"]["train_added_bytes"] / off["memory"]["train_added_bytes"]
            slower = off["throughput"]["train_samples_per_s"] / on["throughput"]["train_samples_per_s"] - 1
            print(f"{dtype}: gradient checkpointing cuts train added memory by {saved:.0%}, step time {slower:+.0%}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
