#!/usr/bin/env bash
# The seed's scenario in one command: start `ferrotune serve` on the embedded defaults (or use
# FERROTUNE_URL), fine-tune on examples/data/health_qa.json, compare fine-tuned and base answers.
# Extra arguments go to scripts/demo.py (e.g. --epochs 10).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${FERROTUNE_URL:-}" ]; then
    exec python3 scripts/demo.py --url "$FERROTUNE_URL" "$@"
fi
cargo build --release --quiet
PORT=${PORT:-8080}
DATA=${FERROTUNE_DATA_DIR:-./ferrotune-data}
target/release/ferrotune serve --port "$PORT" --data-dir "$DATA" > demo-server.log 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 $SERVER 2>/dev/null || { cat demo-server.log; exit 1; }
    sleep 0.5
done
python3 scripts/demo.py --url "http://127.0.0.1:$PORT" "$@"
