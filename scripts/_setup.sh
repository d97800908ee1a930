# Sourced by scripts/demo and scripts/test: one virtual environment in .venv with
# what the given extra needs. torch is pinned to 2.13.0 so pip takes the CPU
# wheel on disk instead of pulling the CUDA build; llama-cpp-python compiles
# llama.cpp from source the first time (about 13 min on 2 cores; pip caches it).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-dev}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q -e ".[${EXTRA}]" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import llama_cpp, gguf, torch, transformers" 
