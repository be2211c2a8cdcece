#!/usr/bin/env bash
# Sets up .venv (idempotent), runs the default comparison - full FT, LoRA, prefix and soft prompt
# tuning on SST-2 with MiniLM-L6, same data, batches and seed - then builds the report.
# Extra args go to `bench` (e.g. seed=0,1,2 or hydra/launcher=parallel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/bench -m method=full,lora,prefix,prompt sweep=compare "$@"
.venv/bin/bench-report results/compare --out results/compare/report
