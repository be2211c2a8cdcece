#!/usr/bin/env bash
# Sets up .venv (idempotent) and runs the default comparison: full FT, LoRA, prefix and soft
# prompt tuning on SST-2 with MiniLM-L6, same data, batches and seed. Extra args go to `bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/bench -m method=full,lora,prefix,prompt "$@"
