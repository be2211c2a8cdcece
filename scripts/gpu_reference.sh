#!/usr/bin/env bash
# The GPU reference pass: the default comparison, SmolLM2-135M-shaped full / LoRA / prompt runs, the
# harness-overhead ratio, and every shipped PEFT method file once (SST-2, MiniLM, seed 0), on one GPU.
#
#   BENCH_RESULTS_DIR=results bash scripts/gpu_reference.sh [python] [parts...]
#
# parts: compare overhead smollm2 methods (default: all four, in that order).
# Runs go to $BENCH_RESULTS_DIR/{compare-gpu,smollm2-gpu,methods-gpu}; the overhead tables are printed
# and saved as $BENCH_RESULTS_DIR/overhead-*.txt. `bench-report <folder>` makes the reports.
# smollm2-135m-random is SmolLM2-135M's architecture with random weights (same shapes, FLOPs and
# memory; use model=smollm2-135m where the packaged weights are installed): its accuracy means nothing.
set -u
py=${1:-python3}
shift || true
parts=${*:-compare overhead smollm2 methods}
want() { [[ " $parts " == *" $1 "* ]]; }
out=${BENCH_RESULTS_DIR:?set BENCH_RESULTS_DIR}
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
