#!/usr/bin/env bash
# Build ferrotune for a benchmark (release; BENCH_PROFILE=dev for the test build), with llama.cpp
# for this CPU's instruction sets as .ci/run builds it, and print the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a
eval "$(bash scripts/llama_isa.sh)"
set +a
if [[ "${BENCH_PROFILE:-release}" == dev ]]; then
    cargo build --locked --bin ferrotune >&2
    echo target/debug/ferrotune
else
    cargo build --release --locked --bin ferrotune >&2
    echo target/release/ferrotune
fi
