#!/usr/bin/env bash
# Peak memory of `ferrotune serve` under issue 34's export probe: three concurrent
# `GET /v1/models/smollm2-135m-instruct/export` requests (two `format=hf`, one `gguf&quant=f16`),
# sampled from /proc every 50 ms, once with the default `--max-concurrent-exports 1` (the GGUF
# request that would start a second build gets a 429) and once with 2 (both builds run at once).
# A second round of the same requests then streams the kept files.
#
#   FERROTUNE_HOME=target/ferrotune-home FERROTUNE_BIN=target/release/ferrotune bash bench/export_memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FERROTUNE_BIN:-target/release/ferrotune}
MODEL=${EXPORT_MODEL:-smollm2-135m-instruct}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

run() {
    local builds=$1 work port server sampler peak start
    work=$(mktemp -d /tmp/ferrotune-export-bench-XXXXXX)
    chmod 755 "$work"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$BIN" serve --port "$port" --data-dir "$work/data" --no-worker \
        --max-concurrent-exports "$builds" > "$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
        sleep 0.5
    done
    start=$(rss_kib "$server")
    : > "$work/rss"
    ( while kill -0 "$server" 2>/dev/null; do rss_kib "$server" >> "$work/rss"; sleep 0.05; done ) &
    sampler=$!
    for round in 1 2; do
        local t0 codes
        t0=$EPOCHREALTIME
        codes=$(
            for q in "format=hf" "format=hf" "format=gguf&quant=f16"; do
                curl -s -o "$work/out-$round-${q//[&=]/-}-$RANDOM" -w '%{http_code} ' \
                    "http://127.0.0.1:$port/v1/models/$MODEL/export?$q" &
            done
            wait
        )
        printf 'max-concurrent-exports %s, round %s: statuses %s in %.1f s\n' \
            "$builds" "$round" "$codes" "$(python3 -c "print($EPOCHREALTIME - $t0)")"
    done
    kill "$sampler" 2> /dev/null || true
    peak=$(sort -n "$work/rss" | tail -1)
    printf 'max-concurrent-exports %s: RSS at start %d MiB, peak %d MiB, growth %d MiB\n' \
        "$builds" $((start / 1024)) $((peak / 1024)) $(((peak - start) / 1024))
    kill -TERM "$server"
    wait "$server" 2> /dev/null || true
    rm -rf "$work"
}

run 1
run 2
