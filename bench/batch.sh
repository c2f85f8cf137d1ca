#!/usr/bin/env bash
# The Batch API on SmolLM2-135M-Instruct (release build, llama.cpp engine): a batch of N chat
# requests against the same requests sent one by one, and interactive first-token latency while
# the batch runs (bench/batch_load.py).
#
#   bash bench/batch.sh            # N=1000 TOKENS=16; BENCH_PROFILE=dev for the test build
set -euo pipefail
cd "$(dirname "$0")/.."
export FERROTUNE_HOME=${FERROTUNE_HOME:-$PWD/target/ferrotune-home}
bin=$(bash bench/ferrotune_bin.sh)
work=$(mktemp -d)
chmod 755 "$work" # run as root, the embedded PostgreSQL drops to another user
"$bin" serve --port 18186 --data-dir "$work/data" --base-model smollm2-135m-instruct \
    >"$work/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do
    curl -fs http://127.0.0.1:18186/v1/models >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { tail -20 "$work/server.log" >&2; exit 1; }
    sleep 0.5
done
python3 bench/batch_load.py --url http://127.0.0.1:18186 --model smollm2-135m-instruct \
    --n "${N:-1000}" --tokens "${TOKENS:-16}"
