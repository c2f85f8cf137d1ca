#!/usr/bin/env bash
# The project's test command: formatting, every Rust test (unit + HTTP integration tests on a real
# embedded PostgreSQL, real candle training, real mistral.rs serving), then the conformance suite:
# the official OpenAI Python SDK against the `ferrotune serve` binary those tests built, and
# schemathesis over openapi/openapi.json against the same binary. The conformance suite includes
# the dashboard test, which drives Debian's Chromium (/usr/bin/chromium) with Playwright.
# Needs the PostgreSQL server binaries (initdb, pg_ctl), Python 3 with venv and Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo test --locked
# Tests that need root (a tmpfs to fill, the embedded cluster dropping to another user) are
# ignored by default, so a run as another user says it skipped them; as root they run here.
if [ "$(id -u)" = 0 ]; then
    cargo test --locked --test api -- --ignored as_root_
else
    echo "not root: the as_root_ tests stay ignored (cargo test lists them as ignored)"
fi
VENV=${SDK_VENV:-target/sdk-venv}
# (Re)install when the pinned requirements change; a warm venv under target/ fetches nothing.
WANT=$(sha256sum tests/sdk/requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/pytest" ] || [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$WANT" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r tests/sdk/requirements.txt
    echo "$WANT" > "$VENV/.requirements"
fi
FERROTUNE_BIN="$PWD/target/debug/ferrotune" "$VENV/bin/pytest" -q tests/sdk
# Fuzz the API against its committed spec (schemathesis, every check, seeded, ~3 minutes).
FERROTUNE_BIN="$PWD/target/debug/ferrotune" bash tests/schemathesis/run.sh
