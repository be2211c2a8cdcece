#!/usr/bin/env bash
# The soft-prompt experiments on the shipped models at CPU budgets (results/reference/experiments-cpu/):
#   - scale: conf/experiment/scale.yaml as it is (MiniLM and SmolLM2-135M x full / LoRA / prompt x seeds 0-2);
#   - domain_shift: conf/experiment/domain_shift.yaml as it is (MiniLM, RTE -> CB, 4 methods x seeds 0-2);
#   - prompt_length: the file's grid (4 initialisations x lengths 1, 5, 20, 50, 100) x seeds 0-2, 500 validation
#     rows;
#   - hard_vs_soft: the file's 7 points x seeds 0-2, 200 validation rows;
#   - a prompt ensemble: MiniLM on SST-2, full fine-tuning and soft prompts x seeds 0-2 at 200 steps of 32 (the
#     default comparison's preset cut from 625 steps), then `bench-serve-eval ensemble` over the 3 prompts.
# Usage: bash scripts/experiments_reference.sh [RESULTS_DIR] [PART ...]   (default results/experiments-cpu, every
# part; parts: scale domain_shift prompt_length hard_vs_soft ensemble report; a re-run skips finished runs)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/experiments-cpu}
shift || true
PARTS=${*:-scale ensemble domain_shift prompt_length hard_vs_soft report}
BENCH=${BENCH:-.venv/bin/bench}
BIN=${BENCH%/bench}
common=(logger=none "paths.results_dir=$OUT")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
for part in $PARTS; do
  echo "== $part $(date -u +%FT%TZ)"
  case $part in
    scale) "$BENCH" -m experiment=scale "${common[@]}" ;;
    domain_shift) "$BENCH" -m experiment=domain_shift "${common[@]}" ;;
    prompt_length) "$BENCH" -m experiment=prompt_length method.peft.num_virtual_tokens=1,5,20,50,100 seed=0,1,2 \
        trainer.eval_samples=500 "${common[@]}" ;;
    hard_vs_soft) "$BENCH" -m experiment=hard_vs_soft seed=0,1,2 trainer.eval_samples=200 "${common[@]}" ;;
    ensemble)
      "$BENCH" -m task=sst2 model=minilm method=full,prompt seed=0,1,2 trainer=quick trainer.max_steps=200 \
          sweep=ensemble-sst2 "${common[@]}"
      "$BIN/bench-serve-eval" ensemble "$OUT/ensemble-sst2" --task sst2 ;;
    report)  # one report per experiment, so that no per-task table mixes two experiments' budgets
      for sweep in "$OUT"/*/; do
        [ "$(basename "$sweep")" = _hydra ] || "$BIN/bench-report" "$sweep" --out "${sweep%/}/report"
      done ;;
    *) echo "unknown part: $part (scale domain_shift prompt_length hard_vs_soft ensemble report)" >&2; exit 2 ;;
  esac
done
echo "== done $(date -u +%FT%TZ)"
