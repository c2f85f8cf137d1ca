#!/usr/bin/env bash
# QLoRA benchmark on the CPU, dense vs 4-bit frozen base: see bench/train/qlora.py (THREADS, STEPS).
exec python3 "$(dirname "$0")/qlora.py" "$@"
