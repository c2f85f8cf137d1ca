#!/usr/bin/env bash
# Training benchmark, ferrotune vs PyTorch + PEFT: see bench/train/run.py (THREADS, EPOCHS_*, BUSY, ONLY, BINARY, VENV).
exec python3 "$(dirname "$0")/run.py" "$@"
