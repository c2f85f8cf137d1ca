#!/usr/bin/env bash
# The ggml build options for the instruction sets this CPU has, one `GGML_X=ON` per line: what
# llama.cpp's GGML_NATIVE would pick, except AMX (on these machines the CPU reports AMX but
# llama.cpp's AMX matmul segfaults on the first decode: the kernel does not grant the tile state).
#
# The llama-cpp-sys-2 crate builds its bundled llama.cpp for AVX2 unless told more (it turns
# GGML_NATIVE off and honours GGML_* variables): `.ci/run` and bench/serving.sh export these,
#     set -a; eval "$(bash scripts/llama_isa.sh)"; set +a
# and bench/build_llama_server.sh passes them to cmake, so ferrotune and its peer use the same.
set -euo pipefail
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | tr ' ' '\n' || true)
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512vbmi:AVX512_VBMI \
    avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
    if grep -qx "${pair%%:*}" <<<"$flags"; then
        echo "GGML_${pair##*:}=ON"
    fi
done
