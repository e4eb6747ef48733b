#!/bin/sh
# Build llama.cpp's own C++ tools (llama-bench, llama-batched-bench, llama-server) from the
# sources vendored in the pinned llama-cpp-python sdist, Release, native CPU flags, into the
# ignored cache folder .cache/llamacpp. About 10 minutes once on 2 cores; later runs reuse it.
#   tests/perf/build_llamacpp.sh            build (or reuse) and print the bin folder
# Environment: LLAMACPP_VERSION (default: the pin in tests/golden/requirements.txt),
#              LLAMACPP_CACHE (default .cache/llamacpp), JOBS (default nproc).
set -eu
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
VER=${LLAMACPP_VERSION:-$(sed -n 's/^llama-cpp-python==//p' tests/golden/requirements.txt)}
CACHE=${LLAMACPP_CACHE:-$ROOT/.cache/llamacpp}
JOBS=${JOBS:-$(nproc)}
BIN=$CACHE/build-$VER/bin
if [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-batched-bench" ] && [ -x "$BIN/llama-server" ]; then
    echo "$BIN"; exit 0
fi
command -v cmake >/dev/null || { echo "build_llamacpp: cmake is missing (make deps installs it)" >&2; exit 1; }
command -v g++ >/dev/null || { echo "build_llamacpp: g++ is missing (make deps installs build-essential)" >&2; exit 1; }
PY=${PY:-$ROOT/.pydeps/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p "$CACHE"
SRC=$CACHE/llama_cpp_python-$VER
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
    echo "build_llamacpp: downloading the llama-cpp-python $VER sdist (source only)" >&2
    "$PY" -m pip download -q --no-binary :all: --no-deps -d "$CACHE" "llama-cpp-python==$VER" >&2
    tar -xzf "$CACHE/llama_cpp_python-$VER.tar.gz" -C "$CACHE"
fi
[ -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ] || { echo "build_llamacpp: $SRC has no vendor/llama.cpp" >&2; exit 1; }
echo "build_llamacpp: building llama.cpp (Release, GGML_NATIVE) in $CACHE/build-$VER" >&2
cmake -S "$SRC/vendor/llama.cpp" -B "$CACHE/build-$VER" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF -DGGML_CUDA=OFF >&2
cmake --build "$CACHE/build-$VER" -j"$JOBS" --target llama-bench llama-batched-bench llama-server >&2
for t in llama-bench llama-batched-bench llama-server; do
    [ -x "$BIN/$t" ] || { echo "build_llamacpp: $t was not built" >&2; exit 1; }
done
echo "$BIN"
