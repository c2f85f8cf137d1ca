#!/usr/bin/env bash
# The project's test command: formatting, then every Rust test (unit + HTTP integration tests on
# a real embedded PostgreSQL). Needs the PostgreSQL server binaries (initdb, pg_ctl).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo test --locked
