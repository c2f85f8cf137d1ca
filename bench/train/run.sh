#!/usr/bin/env bash
# Training benchmark: ferrotune (candle) vs PyTorch + transformers + PEFT, side by side in one
# run, on the same generated models (tiny, small), the same examples, LoRA r=8/α=32 on all seven
# projections, batch 2 × 4 accumulation, cut-off 256, and the same thread count.
# Prints tokens/s (median over the optimizer steps after the first), peak RSS and final loss for
# both, and the ratios ours/reference.
#
#   bash bench/train/run.sh            # THREADS=2 EPOCHS_TINY=20 EPOCHS_SMALL=2 by default
#   VENV=/path/to/venv bash bench/train/run.sh   # reuse a venv with scripts/parity/requirements.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${THREADS:-2}
EPOCHS_TINY=${EPOCHS_TINY:-20}
EPOCHS_SMALL=${EPOCHS_SMALL:-2}
VENV=${VENV:-target/bench-venv}
WORK=target/bench-train
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r scripts/parity/requirements.txt
fi
cargo build --release --quiet
BIN=target/release/ferrotune
rm -rf "$WORK" && mkdir -p "$WORK"
"$VENV/bin/python" - "$WORK/data.json" <<'PY'
import json, sys
topics = ["headache", "sleep", "water", "fever", "stress", "cold", "diet", "exercise"]
rows = [{"instruction": f"Question {i}: what helps with {topics[i % 8]} when it lasts {i % 5 + 1} days?",
         "input": "", "output": f"Answer {i}: rest, fluids and see a doctor if {topics[i % 8]} lasts more than {i % 5 + 3} days."}
        for i in range(64)]
json.dump(rows, open(sys.argv[1], "w"))
PY
get() { grep -E "^$1=" | tail -1 | cut -d= -f2; }
printf '\n%-6s %-10s %14s %12s %11s\n' config side tokens/s peak_MiB final_loss
for size in tiny small; do
    epochs=$EPOCHS_TINY; [ "$size" = small ] && epochs=$EPOCHS_SMALL
    "$BIN" model init-tiny "$WORK/$size" --size "$size" >/dev/null
    cat > "$WORK/$size.yaml" <<YAML
model_name_or_path: $size
dataset: data.json
template: chatml
finetuning_type: lora
lora_rank: 8
lora_alpha: 32
lora_dropout: 0.05
lora_target: all
learning_rate: 1.0e-4
num_train_epochs: $epochs
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
cutoff_len: 256
logging_steps: 1000
save_steps: 100000
output_dir: out-$size
YAML
    ours=$(RAYON_NUM_THREADS=$THREADS "$BIN" train --config "$WORK/$size.yaml" 2>/dev/null)
    ref=$("$VENV/bin/python" bench/train/reference.py --model "$WORK/$size" --data "$WORK/data.json" \
        --epochs "$epochs" --threads "$THREADS" 2>/dev/null)
    o_tps=$(echo "$ours" | get median_step_tokens_per_s); r_tps=$(echo "$ref" | get median_step_tokens_per_s)
    o_rss=$(echo "$ours" | get peak_rss_mib); r_rss=$(echo "$ref" | get peak_rss_mib)
    o_loss=$(echo "$ours" | grep -oE 'final loss [0-9.]+' | cut -d' ' -f3); r_loss=$(echo "$ref" | get final_loss)
    printf '%-6s %-10s %14s %12s %11s\n' "$size" ferrotune "$o_tps" "$o_rss" "$o_loss"
    printf '%-6s %-10s %14s %12s %11s\n' "$size" pytorch "$r_tps" "$r_rss" "$r_loss"
    python3 -c "print(f'{\"$size\":<6} {\"ratio\":<10} {$o_tps/$r_tps:>14.2f} {$o_rss/$r_rss:>12.2f}')"
done
echo "($(nproc) cores, THREADS=$THREADS, $(date -u +%F))"
