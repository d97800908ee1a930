#!/usr/bin/env bash
# One device call on the lent GPU machine (H200 + 16 cores, no network). Idempotent: a later call on
# the same (still warm) machine continues where this one stopped. Steps, while time is left:
#   1. the CUDA build (bench/device/build.sh), detached so that it outlives this call if it must;
#      or unpack a build carried back from an earlier machine (../build.tar.xz.part*)
#   2. meanwhile: real-size checkpoints -> F16 GGUF (bench/device/realsize.py make --stage convert)
#   3. once built: Q4_K_M text models, the import-order crash probe (pip wheel and CMake-tree
#      library copies), the measurements (bench/device/realsize.py measure)
# Everything worth keeping goes to $OUT (logs, JSON, the packed build for a later machine).
#
#   bench/device/run.sh      (env: LIMIT seconds, MODELS, THREADS, SIZES, LLAMA_FIRST=1, STEPS)
set -u
T0=$(date +%s)
LIMIT=${LIMIT:-560}
OUT=${OUT:-/tmp/device-out}; mkdir -p "$OUT"
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CARRY=$(cd "$REPO/.." && pwd)
B=${B:-/tmp/skb}; SITE=${SITE:-/tmp/site}; TOOLS=${TOOLS:-/tmp/tools}; WORK=${WORK:-/tmp/rs}
MODELS=${MODELS:-v46-full,v45-full}
STEPS=${STEPS:-build,convert,quantize,probe,measure,pack}
export PYTHONUNBUFFERED=1
# the package layout pyproject.toml's package-dir gives (minicpmv_edge.convert = convert/, ...), for a source tree
for d in convert quantize edge_runtime; do [ -e "$REPO/minicpmv_edge/$d" ] || ln -s "../$d" "$REPO/minicpmv_edge/$d"; done
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$OUT/run.log"; }
left() { echo $(( LIMIT - $(elapsed) )); }
has() { [[ ",$STEPS," == *",$1,"* ]]; }
finish() {
  cp /tmp/build.log "$OUT/" 2>/dev/null; tail -c 20000 /tmp/build.log > "$OUT/build-tail.log" 2>/dev/null
  if has pack && [ -e /tmp/pack/done ] && [ ! -e /tmp/pack/sent ]; then cp /tmp/pack/build.tar.xz.part* "$OUT/" && touch /tmp/pack/sent; fi
  log "done; left in this call: $(left) s"
}
trap finish EXIT

log "machine: $(nproc) cores, $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null); $(python3 -V 2>&1)"
mkdir -p "$SITE"
python3 -m pip install -q --no-index --no-deps --target "$SITE" "$CARRY"/whl/*.whl 2>&1 | grep -v WARNING | tail -2
export PYTHONPATH="$SITE:$REPO:$REPO/bench"
export LD_LIBRARY_PATH="$SITE/llama_cpp/lib:${LD_LIBRARY_PATH:-}"

if has build && [ ! -e /tmp/build.done ]; then
  if ls "$CARRY"/build.tar.xz.part* >/dev/null 2>&1; then
    log "unpacking the build carried from an earlier machine"
    cat "$CARRY"/build.tar.xz.part* | xz -d | tar -x -C / && touch /tmp/build.done /tmp/pack/sent 2>/dev/null
    mkdir -p /tmp/pack && touch /tmp/pack/sent
  elif [ ! -e /tmp/build.start ] && [ ! -e /tmp/build.failed ]; then
    log "starting the CUDA build (detached; log in build.log)"
    setsid nohup bash "$REPO/bench/device/build.sh" "$CARRY" "$B" "$SITE" "$TOOLS" > /tmp/build.log 2>&1 < /dev/null &
    sleep 2
  fi
fi

if has convert; then
  log "real-size checkpoints -> F16 GGUF ($MODELS)"
  python3 "$REPO/bench/device/realsize.py" make "$CARRY/spec" "$WORK" --models "$MODELS" --stage convert 2>&1 \
    | grep -v "^ *$" | tail -12 | tee -a "$OUT/run.log"
fi

while [ ! -e /tmp/build.done ] && [ ! -e /tmp/build.failed ] && [ -e /tmp/build.start ] && [ "$(left)" -gt 30 ]; do
  sleep 5
done
if [ -e /tmp/build.failed ]; then log "BUILD FAILED"; tail -30 /tmp/build.log; exit 1; fi
if [ ! -e /tmp/build.done ]; then log "the build is still running ($(( $(date +%s) - $(cat /tmp/build.start) )) s); call again"; exit 0; fi
log "built in $(cat /tmp/build.seconds 2>/dev/null || echo '?') s: $(ls "$SITE/llama_cpp/lib" | tr '\n' ' ')"
export MINICPMV_EDGE_LLAMA_SRC=/tmp/src/llama_cpp_python-0.3.36/vendor/llama.cpp

if has quantize && [ "$(left)" -gt 60 ]; then
  python3 "$REPO/bench/device/realsize.py" make "$CARRY/spec" "$WORK" --models "$MODELS" --stage quantize 2>&1 \
    | grep -v "^ *$" | tail -12 | tee -a "$OUT/run.log"
fi

if has probe && [ "$(left)" -gt 90 ] && [ ! -e "/tmp/probe.done" ]; then
  M=$(python3 -c "import json;print(json.load(open('$WORK/v46-full/done.json'))['text'])" 2>/dev/null || ls "$WORK"/*/text-*.gguf 2>/dev/null | head -1)
  log "crash probe on $M: the pip wheel's libraries"
  timeout $(( $(left) - 30 )) python3 "$REPO/bench/device/crash_probe.py" "$M" "$OUT" pip 2>&1 | tee -a "$OUT/run.log"
  LIBDIR="$B/bin"  # the CMake tree's own copies (what LLAMA_CPP_LIB_PATH users point at)
  if [ -e "$LIBDIR/libllama.so" ] && [ "$(left)" -gt 90 ]; then
    log "crash probe: the same libraries from the CMake build tree (LLAMA_CPP_LIB_PATH=$LIBDIR)"
    LLAMA_CPP_LIB_PATH="$LIBDIR" timeout $(( $(left) - 30 )) python3 "$REPO/bench/device/crash_probe.py" "$M" "$OUT" \
      cmake 2>&1 | tee -a "$OUT/run.log"
  fi
  touch /tmp/probe.done
fi

if has measure && [ "$(left)" -gt 90 ]; then
  PRE=""
  if [ "${LLAMA_FIRST:-0}" = 1 ]; then  # the import-order workaround, for runs before the fix
    mkdir -p /tmp/llama_first && echo "import llama_cpp" > /tmp/llama_first/sitecustomize.py && PRE=/tmp/llama_first:
    log "measuring with llama_cpp imported first in every process (LLAMA_FIRST=1)"
  fi
  log "measuring $MODELS (no new step after $(( LIMIT - 60 )) s)"
  PYTHONPATH="$PRE$PYTHONPATH" python3 "$REPO/bench/device/realsize.py" measure "$WORK" --tools "$TOOLS" --out "$OUT" \
    --models "$MODELS" --threads "${THREADS:-16}" --sizes "${SIZES:-448,1344}" \
    $([ "${GPU:-1}" = 1 ] && echo --gpu) --seconds $(( $(left) - 60 )) 2>&1 | tee -a "$OUT/run.log"
fi
