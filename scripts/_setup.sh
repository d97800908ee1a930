# Sourced by scripts/demo and scripts/test: one virtual environment in .venv with what the
# given extra needs, saying what it does before each step (the llama.cpp compile is long and
# silent). torch is pinned to 2.13.0 so pip takes the CPU wheel instead of pulling the CUDA
# build; llama-cpp-python compiles llama.cpp from source the first time (about 13 min on
# 2 cores) and pip caches the wheel for every later install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EXTRA="${1:-dev}"
PY="${PYTHON:-python3}"
LOG="${TMPDIR:-/tmp}/minicpmv-edge-setup.$$.log"

say() { printf '[setup] %s\n' "$*" >&2; }

# pip quietly, setuptools' deprecation notices hidden (they are for us, not for someone
# installing); on failure the log's tail is shown and the script stops.
pip_install() {
  if ! PYTHONWARNINGS=ignore python -m pip install -q "$@" >"$LOG" 2>&1; then
    grep -v "^WARNING: Location" "$LOG" | tail -n 40 >&2
    say "pip install $* failed (full log: $LOG)"
    exit 1
  fi
  rm -f "$LOG"
}

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true

if [ "$EXTRA" = dev ] || [ "$EXTRA" = fixtures ]; then
  if ! python -c "import torch" >/dev/null 2>&1; then
    say "installing torch 2.13.0 (CPU build, ~200 MB)"
    pip_install "torch==2.13.0"
  fi
fi

if ! python -c "import llama_cpp" >/dev/null 2>&1; then
  if [ -n "$(python -m pip cache list llama_cpp_python --format=abspath 2>/dev/null)" ]; then
    say "installing llama-cpp-python 0.3.36 from pip's wheel cache"
  else
    say "installing llama-cpp-python 0.3.36: pip compiles llama.cpp from source now, about 13 minutes"
    say "on 2 cores with no output until it is done (pip caches the wheel: later installs take seconds)"
  fi
fi
say "installing minicpmv-edge[$EXTRA] into .venv (editable)"
pip_install -e ".[${EXTRA}]"
python -c "import llama_cpp, gguf" >/dev/null
say "ready: $(minicpmv-edge --version)"
