#!/usr/bin/env bash
# Fuzz the HTTP API with schemathesis (pinned, seeded, time-bounded, every check) against a real
# `ferrotune serve` (embedded PostgreSQL, the tiny model, no worker), failing on any finding.
#   FERROTUNE_BIN=target/debug/ferrotune bash tests/schemathesis/run.sh
# ST_SECONDS (default 150) bounds the run; ST_SEED (default 1) fixes the generated cases;
# ST_CONFIG names another schemathesis config (default tests/schemathesis/schemathesis.toml).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${FERROTUNE_BIN:-target/debug/ferrotune}
VENV=${ST_VENV:-target/st-venv}
if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r tests/schemathesis/requirements.txt
fi
WORK=$(mktemp -d /tmp/ferrotune-st-XXXXXX)
chmod 755 "$WORK" # the embedded cluster's unprivileged user must reach it when run as root
mkdir -p "$WORK/adapters"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" serve --base-model ferrotune-tiny --port "$PORT" --data-dir "$WORK/data" --no-worker \
    --adapter-root "$WORK/adapters" \
    > "$WORK/server.log" 2>&1 &
SERVER=$!
cleanup() {
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
python3 - "$PORT" <<'PY'
import sys, time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2)
        sys.exit(0)
    except Exception:
        time.sleep(0.5)
sys.exit("ferrotune serve never became healthy")
PY
"$VENV/bin/schemathesis" --config-file "${ST_CONFIG:-tests/schemathesis/schemathesis.toml}" run openapi/openapi.json \
    --url "http://127.0.0.1:$PORT" --checks all --seed "${ST_SEED:-1}" --max-examples 25 \
    --max-time "${ST_SECONDS:-150}" --workers 1 --no-color \
    --report junit --report-dir target/schemathesis-report
