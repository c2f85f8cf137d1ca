#!/usr/bin/env bash
# Training benchmark, ferrotune vs PyTorch + PEFT: see bench/train/run.py (THREADS, EPOCHS_TINY, EPOCHS_SMALL, VENV).
exec python3 "$(dirname "$0")/run.py" "$@"
