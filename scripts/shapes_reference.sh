#!/usr/bin/env bash
# The task shapes on the shipped real models, one seed each, CPU budgets (results/reference/shapes-cpu/):
#   - COPA (multiple choice): full / LoRA / prefix / prompt on MiniLM and on SmolLM2-135M, plus SmolLM2's
#     zero-shot hard prompt; at least 100 optimizer steps (COPA has 400 train rows: 8 epochs of 32 on
#     MiniLM, 2 of 8 on SmolLM2), the whole 100-row validation split;
#   - E2E NLG (generation): full / LoRA / prefix / prompt / zero-shot hard prompt on SmolLM2-135M,
#     trainer=quick-generation (400 train rows, 50 steps of 8; 50 validation rows, greedy decoding);
#   - GSM8K (generation, exact match of the final number): the same five on SmolLM2-135M, the same preset
#     (544-token cap: nothing truncated) cut to 10 steps of 8 rows: a full fine-tuning step of 8 GSM8K rows
#     (~1,300 tokens) took 16.5 s on one CPU thread and greedy decoding of the 50 rows 3.6 min, so the preset's
#     50 steps would be ~18 min a run.
# Usage: bash scripts/shapes_reference.sh [RESULTS_DIR]   (default results/shapes-cpu; a re-run skips finished runs)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/shapes-cpu}
BENCH=${BENCH:-.venv/bin/bench}
common=(logger=none seed=0 sweep=shapes-cpu "paths.results_dir=$OUT")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$BENCH" -m task=copa model=minilm method=full,lora,prefix,prompt trainer=quick trainer.min_steps=100 "${common[@]}"
"$BENCH" -m task=copa model=smollm2-135m method=full,lora,prefix,prompt,hard_prompt trainer=quick-decoder \
    trainer.min_steps=100 "${common[@]}"
"$BENCH" -m task=e2e_nlg model=smollm2-135m method=full,lora,prefix,prompt,hard_prompt trainer=quick-generation \
    "${common[@]}"
"$BENCH" -m task=gsm8k model=smollm2-135m method=full,lora,prefix,prompt,hard_prompt trainer=quick-generation \
    trainer.max_steps=10 "${common[@]}"
"${BENCH%/bench}/bench-report" "$OUT/shapes-cpu" --out "$OUT/report"
