#!/usr/bin/env bash
# Check that adapters written by ferrotune load in Hugging Face PEFT and give the same logits as
# our model with the adapter applied. Needs the venv of requirements.txt (see
# tests/fixtures/parity/README.md); set PYTHON to its interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
cargo test --test api export_our_adapter_for_peft -- --ignored --quiet
for arch in llama qwen2; do
    echo "== $arch"
    "$PYTHON" scripts/parity/make_fixtures.py verify-adapter \
        --model "tests/fixtures/parity/$arch/model" \
        --adapter "target/parity-export/$arch/adapter" \
        --expected "target/parity-export/$arch/ours.safetensors"
done
