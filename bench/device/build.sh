#!/usr/bin/env bash
# Detached by run.sh (setsid): build llama-cpp-python 0.3.36 with CUDA (sm_90) as a pip wheel; llama.cpp's
# own tools/ (mtmd, llama-mtmd-cli, llama-bench) configured in the same tree (LLAVA_BUILD=OFF replaces
# llama-cpp-python's copy of tools/mtmd). Installs the wheel into $SITE, copies the two anchors into
# $TOOLS, then packs the result into /tmp/pack/ for a later call. Marks /tmp/build.done or /tmp/build.failed.
set -u
CARRY=$1; B=$2; SITE=$3; TOOLS=$4
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
mkdir -p /tmp/src && tar -xzf "$CARRY/sdist.tgz" -C /tmp/src
SRC=/tmp/src/llama_cpp_python-0.3.36
date +%s > /tmp/build.start
if ! CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    python3 -m pip wheel -v --no-build-isolation --no-deps -C build-dir="$B" -w /tmp/wheels "$SRC"; then
  touch /tmp/build.failed; exit 1
fi
python3 -m pip install -q --no-index --no-deps --target "$SITE" /tmp/wheels/llama_cpp_python-*.whl || { touch /tmp/build.failed; exit 1; }
mkdir -p "$TOOLS"
for t in llama-mtmd-cli llama-bench; do cp "$(find "$B" -name "$t" -type f -perm -u+x | head -1)" "$TOOLS/"; done
# built by llama.cpp's tools/ here (not installed by the wheel): beside the wheel's libraries
cp -a $(find "$B" -name 'libmtmd.so*') $(find "$B" -name 'libllama-common*.so*') "$SITE/llama_cpp/lib/"
echo $(( $(date +%s) - $(cat /tmp/build.start) )) > /tmp/build.seconds
touch /tmp/build.done
mkdir -p /tmp/pack
V=/tmp/src/llama_cpp_python-0.3.36/vendor/llama.cpp
tar -cf - "$SITE/llama_cpp" "$TOOLS" "$V/include" "$V/ggml/include" "$V/tools/mtmd" 2>/dev/null \
  | nice -n 19 xz -T4 -6 | split -b 15M -d - /tmp/pack/build.tar.xz.part && touch /tmp/pack/done
