#!/usr/bin/env bash
# The GPU reference pass, on one GPU: the default comparison, SmolLM2-135M-shaped full / LoRA / prompt runs, the
# harness-overhead ratio, every shipped PEFT method file once (SST-2, MiniLM, seed 0), and the trainer=gpu matrix.
#
#   BENCH_RESULTS_DIR=results bash scripts/gpu_reference.sh [python] [parts...]
#
# parts: compare overhead smollm2 methods gpu (default: all five, in that order).
# Runs go to $BENCH_RESULTS_DIR/{compare-gpu,smollm2-gpu,methods-gpu,gpu-preset}; the overhead tables are printed
# and saved as $BENCH_RESULTS_DIR/overhead-*.txt; the gpu part's table as $BENCH_RESULTS_DIR/gpu-preset.txt.
# `bench-report <folder>` makes the reports.
# smollm2-135m-random is SmolLM2-135M's architecture with random weights (same shapes, FLOPs and
# memory; use model=smollm2-135m where the packaged weights are installed): its accuracy means nothing.
# gpu: trainer=gpu (bf16, 16 x 1,024 tokens) on task=synthetic_lm (throughput only: every row is 1,024 tokens,
# scores mean nothing): full / LoRA / prompt / QLoRA (LoRA on an nf4 base) x compile on/off x gradient
# checkpointing on/off; prints tokens/s, MFU and peak allocated / reserved memory per run, then harness / bare
# (scripts/bench_overhead.py) on the same task, length and options, for each of those combinations
# ($BENCH_RESULTS_DIR/overhead-gpu-preset.txt).
set -u
py=${1:-python3}
shift || true
parts=${*:-compare overhead smollm2 methods gpu}
want() { [[ " $parts " == *" $1 "* ]]; }
out=${BENCH_RESULTS_DIR:?set BENCH_RESULTS_DIR}
# fail in seconds, not after loading models: every part needs a CUDA device
if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_reference.sh: no CUDA device visible to $py (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
mkdir -p "$out"
bench() { "$py" -m bench.cli "$@" logger=none trainer.device=cuda; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$out/gpu.txt"

# 1. the default comparison (4 methods x 3 seeds, SST-2, MiniLM, trainer=quick)
want compare && bench -m experiment=compare sweep=compare-gpu
# 2. harness / bare tokens/s (median of interleaved rounds; bar: >= 0.97)
want overhead && "$py" scripts/bench_overhead.py --device cuda --rounds 6 --steps 40 | tee "$out/overhead-minilm.txt"
want overhead && "$py" scripts/bench_overhead.py --device cuda --model smollm2-135m-random --methods full,lora,prompt \
    --batch-size 8 --rounds 6 --steps 20 | tee "$out/overhead-smollm2.txt"
# 3. SmolLM2-135M-shaped decoder: full, LoRA, prompt (verbalizer classification on SST-2)
want smollm2 && bench -m model=smollm2-135m-random task=sst2 trainer=quick-decoder method=full,lora,prompt sweep=smollm2-gpu
# 4. every other shipped PEFT method file once
want methods && bench -m task=sst2 model=minilm trainer=quick sweep=methods-gpu seed=0 \
    method=ia3,dora,adalora,vera,loha,lokr,ptuning,oft,hra,fourierft,ln_tuning
# 5. trainer=gpu on the throughput-only synthetic task: methods x compile x gradient checkpointing
gpu_sweep=gpu-preset
want gpu && bench -m task=synthetic_lm model=smollm2-135m-random trainer=gpu sweep=$gpu_sweep \
    method=full,lora,prompt trainer.compile=true,false trainer.gradient_checkpointing=false,true
want gpu && bench -m task=synthetic_lm model=smollm2-135m-random trainer=gpu sweep=$gpu_sweep \
    method=lora model.quantization=nf4 model.dtype=bf16 trainer.compile=true,false trainer.gradient_checkpointing=false,true
want gpu && "$py" - "$out/$gpu_sweep" <<'PY' | tee "$out/gpu-preset.txt"
import json, sys
from pathlib import Path

rows = []
for path in sorted(Path(sys.argv[1]).glob("*/result.json")):
    r = json.loads(path.read_text())
    tr, m, th, mem = r["config"]["trainer"], r["config"]["model"], r.get("throughput") or {}, r.get("memory") or {}
    gib = lambda b: "-" if b is None else f"{b / 2**30:.2f}"  # noqa: E731
    mfu = th.get("mfu")
    rows.append((r["method"] + ("+" + m["quantization"] if m.get("quantization") else ""),
                 "on" if tr["compile"] else "off", "on" if tr["gradient_checkpointing"] else "off", r["status"],
                 "-" if th.get("train_tokens_per_s") is None else f"{th['train_tokens_per_s']:,.0f}",
                 "-" if mfu is None else f"{100 * mfu:.1f}", gib(mem.get("train_peak_bytes")),
                 gib(mem.get("train_peak_reserved_bytes"))))
head = ("method", "compile", "ckpt", "status", "train tok/s", "MFU %", "peak alloc GiB", "peak reserved GiB")
print("trainer=gpu, task=synthetic_lm (16 x 1,024 tokens), smollm2-135m-random, one GPU")
for row in [head, *sorted(rows)]:
    print("  ".join(f"{c:>{len(h) + 2}}" for c, h in zip(row, head)))
PY
# harness / bare on the same load and options as each run above (median of interleaved rounds; bar: >= 0.97):
# trainer=gpu's batch, length, fused AdamW and log_every (its bf16 autocast is what trainer.mixed_precision=auto
# picks on CUDA, printed as autocast=), for every method x compile x checkpointing; QLoRA loads its nf4 base
# through bench's own prepare(), as the bench run does
overhead() { "$py" scripts/bench_overhead.py --device cuda --model smollm2-135m-random --task synthetic_lm \
    --batch-size 16 --max-length 1024 --optimizer-impl fused --log-every 20 --rounds 4 --steps 20 "$@"; }
if want gpu; then
    : > "$out/overhead-gpu-preset.txt"
    for compile in --no-compile --compile; do
        for ckpt in --no-gradient-checkpointing --gradient-checkpointing; do
            overhead --methods full,lora,prompt $compile $ckpt | tee -a "$out/overhead-gpu-preset.txt"
            overhead --methods lora --quantization nf4 --dtype bf16 $compile $ckpt | tee -a "$out/overhead-gpu-preset.txt"
        done
    done
fi
