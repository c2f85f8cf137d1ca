#!/usr/bin/env bash
# Builds the serving peer, llama.cpp's `llama-server`, from the llama.cpp source that the
# `llama-cpp-python` sdist (Python package index) vendors, and caches it under target/.
# Prints the binary's path. Needs cmake and a C++ compiler (`.ci/run` installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${LLAMA_CPP_PYTHON:-0.3.36}
ROOT=target/llama-server
BIN=$ROOT/build-$VERSION/bin/llama-server
if [ -x "$BIN" ] && [ -z "${REBUILD:-}" ]; then
    echo "$PWD/$BIN"
    exit 0
fi
mkdir -p "$ROOT"
SDIST=$ROOT/llama_cpp_python-$VERSION.tar.gz
if [ ! -f "$SDIST" ]; then
    python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT" >&2
fi
SRC=$ROOT/src-$VERSION
if [ ! -d "$SRC" ]; then
    mkdir -p "$SRC.tmp"
    tar -xzf "$SDIST" -C "$SRC.tmp" --strip-components=1
    mv "$SRC.tmp" "$SRC"
fi
# This CPU's instruction sets, as ferrotune's own llama.cpp build gets them (not AMX: see there).
mapfile -t isa < <(bash scripts/llama_isa.sh | sed 's/^/-D/')
cmake -S "$SRC/vendor/llama.cpp" -B "$ROOT/build-$VERSION" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF "${isa[@]}" -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$ROOT/build-$VERSION" --target llama-server -j "$(nproc)" >&2
echo "$PWD/$BIN"
