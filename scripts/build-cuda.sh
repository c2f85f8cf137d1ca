#!/usr/bin/env bash
# Builds the CUDA binary: `cargo build --release --features cuda`.
#
# On a machine with a CUDA toolkit (nvcc on PATH, or CUDA_HOME set, or /usr/local/cuda) that
# toolkit is used. Otherwise the CUDA 13.0 toolkit is installed from PyPI wheels into a cache
# folder and a CUDA_HOME is assembled from it, with a link-only stub of the driver library
# (never shipped: the real libcuda.so.1 comes with the GPU machine's driver).
#
# Output: dist/cuda/ferrotune (stripped, RUNPATH $ORIGIN:/usr/local/cuda/lib64:/usr/local/nvidia/lib64)
# and dist/cuda/ferrotune.xz. Build outputs go to target-cuda/ so the CPU build's target/ stays warm.
#
# Environment: CUDA_COMPUTE_CAP (default 90 = Hopper), FERROTUNE_CUDA_CACHE (default
# ~/.cache/ferrotune-cuda), CARGO_BUILD_JOBS as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
cache="${FERROTUNE_CUDA_CACHE:-$HOME/.cache/ferrotune-cuda}"
out=dist/cuda
started=$(date +%s)

# Wheels matching the CUDA 13.0 driver of the GPU machines (a newer nvcc emits PTX that driver
# cannot load).
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
)

have_toolkit() {
  if [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then return 0; fi
  if command -v nvcc >/dev/null 2>&1; then
    CUDA_HOME="$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)"
    return 0
  fi
  if [[ -x /usr/local/cuda/bin/nvcc ]]; then CUDA_HOME=/usr/local/cuda; return 0; fi
  return 1
}

# Writes a shared library exporting every cu* driver function that the cudarc versions in the
# dependency graph declare, with soname libcuda.so.1, so the binary links without a driver.
make_driver_stub() {
  local dir="$1" src="$cache/libcuda_stub.c"
  mkdir -p "$dir"
  local registry
  registry="$(cargo metadata --format-version 1 --features cuda 2>/dev/null |
    python3 -c 'import json,sys; print("\n".join(p["manifest_path"].rsplit("/",1)[0] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')"
  [[ -n "$registry" ]] || { echo "cudarc not found in the dependency graph" >&2; exit 1; }
  # shellcheck disable=SC2086
  grep -rhoE 'fn cu[A-Z][A-Za-z0-9_]*' $(printf '%s/src/driver/sys ' $registry) |
    sed 's/^fn //' | sort -u | sed 's/.*/void &(void) {}/' > "$src"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so" "$src"
  echo "driver stub: $(wc -l < "$src") symbols"
}

assemble_cuda_home() {
  local venv="$cache/venv" home="$cache/cuda-13.0"
  if [[ ! -x "$home/bin/nvcc" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --no-deps "${wheels[@]}"
    local cu13
    cu13="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
    rm -rf "$home" && mkdir -p "$home/lib64"
    ln -s "$cu13/bin" "$home/bin"
    ln -s "$cu13/include" "$home/include"
    ln -s "$cu13/nvvm" "$home/nvvm"
    for lib in "$cu13"/lib/*.so*; do
      ln -s "$lib" "$home/lib64/"
      local base="${lib##*/}"
      # The wheels ship only lib*.so.N; the linker looks for lib*.so.
      [[ "$base" =~ ^(lib[A-Za-z0-9_-]+)\.so\.[0-9.]+$ ]] &&
        ln -sf "$lib" "$home/lib64/${BASH_REMATCH[1]}.so"
    done
  fi
  [[ -f "$home/lib64/stubs/libcuda.so" ]] || make_driver_stub "$home/lib64/stubs"
  CUDA_HOME="$home"
}

if have_toolkit; then
  echo "using the CUDA toolkit at $CUDA_HOME"
else
  echo "no CUDA toolkit: installing CUDA 13.0 from PyPI wheels into $cache"
  mkdir -p "$cache"
  assemble_cuda_home
fi
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
export LIBRARY_PATH="$CUDA_HOME/lib64:$CUDA_HOME/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
nvcc --version | tail -2

cargo build --release --locked --features cuda --target-dir target-cuda --bin ferrotune "$@"

mkdir -p "$out"
cp target-cuda/release/ferrotune "$out/ferrotune"
strip "$out/ferrotune"
xz -T0 -9 -k -f "$out/ferrotune"
echo "built $out/ferrotune ($(du -h "$out/ferrotune" | cut -f1), xz $(du -h "$out/ferrotune.xz" | cut -f1))" \
  "for compute capability $CUDA_COMPUTE_CAP in $(( $(date +%s) - started )) s"
