#!/usr/bin/env bash
# Assemble what a device call carries (run on the dev machine): this worktree's files, the trimmed
# llama-cpp-python sdist, pure-Python wheels the GPU machine lacks, the real-size model specs, and
# (optional) a build packed by an earlier call. Into DEST (default: the session checkout's .device/,
# which .gitignore ignores); name DEST in the run's `carry`.
#
#   bench/device/prepare.sh [DEST] [BUILD_PARTS_DIR]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DEST=${1:-/work/main/.device}
SDIST=${SDIST:-/work/sdist/llama_cpp_python-0.3.36}
mkdir -p "$DEST"
rm -rf "$DEST/latency" && mkdir -p "$DEST/latency"
git -C "$REPO" ls-files -co --exclude-standard -z | (cd "$REPO" && tar --null -cf - -T -) | tar -C "$DEST/latency" -xf -
if [ ! -f "$DEST/sdist.tgz" ]; then
  tmp=$(mktemp -d)
  cp -a "$SDIST" "$tmp/"
  s="$tmp/$(basename "$SDIST")"
  # what a CUDA build of the libraries, mtmd and the two anchor tools does not read
  rm -rf "$s/.git" "$s/examples" "$s/docker" "$s/docs" "$s/tests"
  v="$s/vendor/llama.cpp"
  rm -rf "$v/.git" "$v/.github" "$v/models" "$v/docs" "$v/media" "$v/benches" "$v/tests" "$v/examples" "$v/pocs" \
    "$v/scripts" "$v/conversion" "$v/skills" "$v/grammars" "$v/ci" "$v/.devops" "$v/app" "$v/tools/ui" "$v/tools/server" \
    "$v"/tools/mtmd/*.mp4 "$v"/tools/mtmd/*.jpg "$v"/tools/mtmd/*.png "$v"/tools/mtmd/*.mp3
  for b in sycl vulkan opencl hexagon cann webgpu et openvino metal virtgpu zdnn musa hip zendnn kompute; do
    rm -rf "$v/ggml/src/ggml-$b"
  done
  tar -C "$tmp" -czf "$DEST/sdist.tgz" "$(basename "$SDIST")"
  rm -rf "$tmp"
fi
mkdir -p "$DEST/whl"
ls "$DEST"/whl/gguf-*.whl >/dev/null 2>&1 || python -m pip download -q --no-deps --only-binary=:all: -d "$DEST/whl" gguf==0.19.0 diskcache==5.6.3
if [ ! -d "$DEST/spec/v45-full" ]; then
  python "$REPO/bench/device/realsize.py" spec "$DEST/spec" --real46 "${REAL46:-/work/shared/reference/real-checkpoints/minicpm-v-4.6/config.json}"
fi
rm -f "$DEST"/build.tar.xz.part*
if [ -n "${2:-}" ]; then cp "$2"/build.tar.xz.part* "$DEST/"; fi
du -sh "$DEST"/* | sort -h
du -sh "$DEST"
