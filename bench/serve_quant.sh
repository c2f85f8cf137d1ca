#!/usr/bin/env bash
# Serving with and without in-situ quantization, side by side: runs the serve benchmark once per
# `--serve-quant` (a fresh process each, so memory figures do not mix) and prints decode tokens/s
# of the base and a fine-tuned model, the RSS one resident fine-tuned model adds, and the ratios
# to the unquantized run.
#
#   BENCH_MODEL=smollm2-135m-instruct FERROTUNE_HOME=target/ferrotune-home bash bench/serve_quant.sh
#
# QUANTS picks the quantizations (default "none q8_0 q4k"), CONCURRENCY the stream counts,
# BENCH_PROFILE=dev the test profile's build (dependencies optimised, our crate at opt-level 1;
# no release build needed) instead of the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${BENCH_PROFILE:-release}" == dev ]]; then
    cargo build --locked --example serve_bench
    bin=target/debug/examples/serve_bench
else
    cargo build --release --locked --example serve_bench
    bin=target/release/examples/serve_bench
fi
out=$(mktemp -d)
for q in ${QUANTS:-none q8_0 q4k}; do
    echo "== serve-quant $q" >&2
    SERVE_QUANT=$q "$bin" | tee "$out/$q.txt" >&2
done
field() { grep '^summary' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", (b == 0 ? 0 : a / b) }'; }
ref="$out/none.txt"
printf '\n%-6s %10s %10s %8s %12s %8s %22s\n' quant "base tok/s" "ft tok/s" "vs none" "resident MiB" "vs none" "HTTP/engine by streams"
for q in ${QUANTS:-none q8_0 q4k}; do
    f="$out/$q.txt"
    ft=$(field "$f" ft_tok_s); mib=$(field "$f" resident_mib)
    printf '%-6s %10s %10s %8.2f %12s %8.2f %22s\n' "$q" "$(field "$f" base_tok_s)" "$ft" \
        "$(ratio "$ft" "$(field "$ref" ft_tok_s)")" "$mib" \
        "$(ratio "$mib" "$(field "$ref" resident_mib)")" "$(field "$f" http_over_engine)"
done
