#!/usr/bin/env bash
# The serving engine's memory under distinct chat requests on the CPU with mistral.rs's prefix
# cache on (mistral.rs's default) and off (what ferrotune runs on the CPU), side by side: one
# process each (memory figures do not mix), the same requests, then growth and tokens/s ratios.
#
#   FERROTUNE_HOME=target/ferrotune-home bash bench/prefix_cache.sh
#
# ROUNDS sets the rounds of 48 requests (default 5); BASE_DIR another model directory.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --example prefix_cache_bench
bin=target/release/examples/prefix_cache_bench
out=$(mktemp -d)
for setting in on off; do
    echo "== prefix cache $setting" >&2
    PREFIX_CACHE=$setting "$bin" | tee "$out/$setting.txt" >&2
done
field() { grep '^summary' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b == 0 ? 0 : a / b) }'; }
printf '\n%-13s %9s %14s %14s %11s %8s %12s\n' "prefix cache" requests "start RSS MiB" "end RSS MiB" "growth MiB" "tok/s" "tok/s vs on"
for setting in on off; do
    f="$out/$setting.txt"
    printf '%-13s %9s %14s %14s %11s %8s %12s\n' "$setting" "$(field "$f" requests)" \
        "$(field "$f" start_rss_mib)" "$(field "$f" end_rss_mib)" "$(field "$f" growth_mib)" \
        "$(field "$f" tok_s)" "$(ratio "$(field "$f" tok_s)" "$(field "$out/on.txt" tok_s)")"
done
