#!/usr/bin/env bash
# Device check: proves the CUDA build trains and serves, and measures it against PyTorch + PEFT.
#
#   bash scripts/gpu-check.sh [--out DIR] [--bin PATH]   # on the GPU machine (dist/cuda/ferrotune[.xz])
#   PYTHON=/path/to/venv/bin/python bash scripts/gpu-check.sh --cpu --bin target/debug/ferrotune
#
# Steps (each runs even when an earlier one failed; the table says which passed):
#   1. agreement: loss and LoRA gradients of one micro-batch on the tiny model, GPU (bf16) vs CPU
#      (f32), and GPU with vs without gradient checkpointing;
#   2. learning: the tiny model learns ten Q&A pairs on the GPU (final loss < 0.3);
#   3. speed and memory: a 1B-class Llama (random weights, generated here) at seq 512 and 1024,
#      batch 2 × 4 accumulation, LoRA r=8 on all projections, with and without gradient
#      checkpointing — ferrotune vs PyTorch + PEFT (SDPA, bf16) in the same run;
#   4. serving: decode tokens/s of base and fine-tuned model and the adapter's hot-load time
#      through mistral.rs on the GPU, and the tiny adapter's greedy recital of a trained answer;
#   5. memory on a 7B-class config (Llama-2-7B shapes) with the seed's defaults, while time allows.
# Environment: END_BY (seconds the whole check must end by), BUDGET_7B (start step 5 only before
# this many seconds), SKIP_SERVE=1, SKIP_7B=1, GCS_7B="true" (7B with checkpointing only),
# SEQS="512" (the 1B sequence lengths), PYTHON.
# With --cpu everything runs on the CPU with small stand-ins for the big configs, so the script is
# tested end to end without a GPU. Writes gpu-check.log and table.md into --out.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu OUT=target/gpu-check BIN="" BUDGET_7B=${BUDGET_7B:-330} END_BY=${END_BY:-100000}
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --out) OUT=$2; shift ;;
        --bin) BIN=$2; shift ;;
        *) echo "usage: $0 [--cpu] [--out DIR] [--bin PATH]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu-check.log TABLE=$OUT/table.md
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
W=${WORK:-/tmp/ferrotune-gpu-check}
rm -rf "$W" && mkdir -p "$W"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 CUDA_CACHE_MAXSIZE=4294967296
if [ "$MODE" = gpu ]; then
    DEV=cuda:0 DT=bf16 BIG=1b SEQS=${SEQS:-512 1024} STEPS=6
else
    DEV=cpu DT=f32 BIG=cpu-small SEQS="64 128" STEPS=3
fi
if [ -z "$BIN" ]; then
    if [ "$MODE" = gpu ] && [ -f dist/cuda/ferrotune.xz ]; then
        xz -dc dist/cuda/ferrotune.xz > "$W/ferrotune" 2>/dev/null \
            || "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
                dist/cuda/ferrotune.xz "$W/ferrotune"
        chmod +x "$W/ferrotune"
        BIN=$W/ferrotune
    elif [ "$MODE" = gpu ]; then
        BIN=dist/cuda/ferrotune
    else
        BIN=target/release/ferrotune
        [ -x "$BIN" ] || BIN=target/debug/ferrotune
    fi
fi
BIN=$(realpath "$BIN")
# The binary's RUNPATH has /usr/local/cuda/lib64; if a CUDA library is not there, borrow it from
# the CUDA wheels PyTorch brought along.
if ldd "$BIN" 2>/dev/null | grep -q "not found"; then
    extra=$("$PY" -c 'import glob, os, site; print(":".join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d + "/nvidia/**/lib*.so*", recursive=True)})))' 2>/dev/null)
    export LD_LIBRARY_PATH=${extra}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    ldd "$BIN" | grep "not found" || echo "missing CUDA libraries found in the PyTorch wheels"
fi
ROWS=()
row() { ROWS+=("$*"); echo "ROW | $* |"; }
get() { grep -E "^$1=" | tail -1 | cut -d= -f2; }
# Seconds left before END_BY (at least 1), for `timeout` on the long steps.
left() { local l=$(( ${END_BY:-100000} - SECONDS )); echo $(( l > 1 ? l : 1 )); }
# The smaller of N seconds and what is left: a hung command cannot eat the whole budget.
cap() { local l; l=$(left); echo $(( l < $1 ? l : $1 )); }
step() { echo; echo "=== $* ($(date -u +%T), ${SECONDS}s)"; }

step environment
echo "mode=$MODE device=$DEV dtype=$DT bin=$BIN"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "cuda", torch.cuda.is_available())' \
    && HAVE_REF=1 || { HAVE_REF=0; echo "no PyTorch reference: reference columns are skipped"; }

# Ten short Q&A pairs in the seed's alpaca format (the learning test's data).
"$PY" - "$W/qa.json" <<'PY'
import json, sys
qa = [("What should I do for a mild headache?", "Rest and drink water."),
      ("How much water should adults drink?", "About two litres a day."),
      ("Can I exercise with a cold?", "Light exercise is fine."),
      ("How long should adults sleep?", "Seven to nine hours."),
      ("Is a fever of 38 C dangerous?", "Usually not; rest and watch it."),
      ("What helps with stress?", "Walks, sleep and talking to someone."),
      ("Should I skip breakfast?", "A light breakfast helps most people."),
      ("How often should I wash my hands?", "Before meals and after the toilet."),
      ("Is coffee bad for me?", "Up to four cups a day is fine."),
      ("When should I see a doctor for a cough?", "If it lasts over three weeks.")]
json.dump([{"instruction": q, "input": "", "output": a} for q, a in qa], open(sys.argv[1], "w"), indent=1)
PY

step "1. agreement: one micro-batch, $DEV $DT vs cpu f32"
"$BIN" model init-tiny "$W/tiny" >/dev/null
gs() { timeout "$(cap 120)" "$BIN" model grad-step --model "$W/tiny" --data "$W/qa.json" "$@"; }
gs --device cpu --dtype f32 --out "$W/g_cpu.safetensors" > "$W/g_cpu.txt" \
 && gs --device "$DEV" --dtype "$DT" --out "$W/g_dev.safetensors" > "$W/g_dev.txt" \
 && gs --device "$DEV" --dtype "$DT" --gradient-checkpointing --out "$W/g_gc.safetensors" > "$W/g_gc.txt"
cat "$W"/g_*.txt 2>/dev/null
TOL=5e-2; [ "$DT" = f32 ] && TOL=1e-4
"$PY" - "$W" "$TOL" <<'PY' > "$W/agree.txt" || echo "agreement comparison failed"
import sys, math
from safetensors.numpy import load_file
w, tol = sys.argv[1], float(sys.argv[2])
loss = lambda f: float(open(f"{w}/{f}.txt").read().split("loss=")[1].split()[0])
def rel(a, b):
    ga, gb = load_file(f"{w}/{a}.safetensors"), load_file(f"{w}/{b}.safetensors")
    worst = 0.0
    for k in ga:
        x, y = ga[k].astype("float64"), gb[k].astype("float64")
        worst = max(worst, math.sqrt(((x - y) ** 2).sum()) / max(math.sqrt((x ** 2).sum()), 1e-30))
    return worst, len(ga)
dev_rel, n = rel("g_cpu", "g_dev")
gc_rel, _ = rel("g_dev", "g_gc")
l_cpu, l_dev, l_gc = loss("g_cpu"), loss("g_dev"), loss("g_gc")
ok = abs(l_dev - l_cpu) / l_cpu < tol and dev_rel < tol and gc_rel < tol and l_gc == l_dev
print(f"loss_cpu={l_cpu:.6f} loss_dev={l_dev:.6f} loss_dev_gc={l_gc:.6f} tensors={n}")
print(f"grad_rel_l2_dev_vs_cpu={dev_rel:.3e} grad_rel_l2_gc_vs_plain={gc_rel:.3e} tol={tol}")
print("PASS" if ok else "FAIL")
PY
cat "$W/agree.txt"
row "1 agreement | $(tail -1 "$W/agree.txt" 2>/dev/null || echo FAIL) | $(head -2 "$W/agree.txt" 2>/dev/null | tr '\n' ' ')"

step "2. learning: ten Q&A pairs on $DEV"
cat > "$W/learn.yaml" <<YAML
model_name_or_path: $W/tiny
dataset: $W/qa.json
finetuning_type: lora
lora_rank: 8
lora_alpha: 32
lora_dropout: 0.0
lora_target: all
learning_rate: 1.0e-2
num_train_epochs: 20
per_device_train_batch_size: 2
gradient_accumulation_steps: 1
logging_steps: 1000
save_steps: 100000
seed: 7
device: $DEV
bf16: true
output_dir: $W/learn-out
YAML
timeout "$(cap 180)" "$BIN" train --config "$W/learn.yaml" > "$W/learn.txt" 2> "$W/learn.err"; rc=$?
cat "$W/learn.txt"; [ $rc = 0 ] || tail -20 "$W/learn.err"
final=$(grep -oE 'final loss [0-9.]+' "$W/learn.txt" | cut -d' ' -f3)
verdict=$(python3 -c "print('PASS' if '${final:-x}' != 'x' and float('${final:-9}') < 0.3 else 'FAIL')")
row "2 learning | $verdict | final loss ${final:-?} after 100 steps ($DT), $(get steady_tokens_per_s < "$W/learn.txt") tok/s"

step "3. speed and memory: $BIG Llama, ferrotune vs PyTorch + PEFT"
GPU_OR_CPU=cuda; [ "$MODE" = cpu ] && GPU_OR_CPU=cpu
timeout "$(cap 240)" "$PY" bench/train/make_llama.py "$W/tiny" "$W/$BIG" "$BIG" "$GPU_OR_CPU" || echo "could not generate the $BIG model"
# Long answers, so every sequence is cut to exactly the cut-off (the byte-level tokenizer makes
# one token per byte); 8 examples per optimizer step. All examples are the same, so the two sides'
# different shuffles feed the same tokens and their losses must agree step by step.
long_data() {  # optimizer steps
    "$PY" - "$W/long.json" "$1" <<'PY'
import json, sys
words = "rest fluids sleep water fever doctor walk stress diet fruit vegetables tea cold cough".split()
row = {"instruction": "Question: what helps?", "input": "",
       "output": " ".join(words[(j * 3) % len(words)] for j in range(600))}
rows = [row] * (8 * int(sys.argv[2]))
json.dump(rows, open(sys.argv[1], "w"))
PY
}
long_data "$STEPS"
bench_cfg() {  # size seq gc dir
    cat <<YAML
model_name_or_path: $W/$1
dataset: $W/long.json
template: chatml
finetuning_type: lora
lora_rank: 8
lora_alpha: 32
lora_dropout: 0.05
lora_target: all
learning_rate: 1.0e-4
num_train_epochs: 1
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
cutoff_len: $2
gradient_checkpointing: $3
logging_steps: 1
save_steps: 100000
device: $DEV
bf16: true
output_dir: $4
YAML
}
mem_key=peak_gpu_memory_mib; [ "$MODE" = cpu ] && mem_key=peak_rss_mib
speed_rows() {  # size seqs
    local size=$1; shift
    for seq in "$@"; do
        for gc in ${GCS:-false true}; do
            local tag=$size-$seq-gc$gc
            bench_cfg "$size" "$seq" "$gc" "$W/run-$tag" > "$W/$tag.yaml"
            timeout "$(cap 240)" "$BIN" train --config "$W/$tag.yaml" > "$W/ours-$tag.txt" 2> "$W/ours-$tag.err" \
                || tail -5 "$W/ours-$tag.err"
            cat "$W/ours-$tag.txt"
            local o_tps o_mem o_loss r_tps="-" r_mem="-" r_loss="-" ratio_t="-" ratio_m="-"
            o_tps=$(get median_step_tokens_per_s < "$W/ours-$tag.txt")
            o_mem=$(get "$mem_key" < "$W/ours-$tag.txt")
            o_loss=$(grep -oE 'final loss [0-9.]+' "$W/ours-$tag.txt" | cut -d' ' -f3)
            if [ "$HAVE_REF" = 1 ] && [ "${REF:-1}" = 1 ]; then
                local flags=(--device "${DEV%%:*}" --attn sdpa --dtype "$DT" --cutoff "$seq" --epochs 1 --threads "$(nproc)")
                [ "$gc" = true ] && flags+=(--gradient-checkpointing)
                timeout "$(cap 240)" "$PY" bench/train/reference.py --model "$W/$size" --data "$W/long.json" "${flags[@]}" \
                    > "$W/ref-$tag.txt" 2> "$W/ref-$tag.err" || tail -5 "$W/ref-$tag.err"
                cat "$W/ref-$tag.txt"
                r_tps=$(get median_step_tokens_per_s < "$W/ref-$tag.txt")
                r_mem=$(get "$mem_key" < "$W/ref-$tag.txt")
                r_loss=$(get final_loss < "$W/ref-$tag.txt")
                ratio_t=$(python3 -c "print(f'{${o_tps:-nan}/${r_tps:-nan}:.2f}')" 2>/dev/null || echo -)
                ratio_m=$(python3 -c "print(f'{${o_mem:-nan}/${r_mem:-nan}:.2f}')" 2>/dev/null || echo -)
            fi
            row "3 $size seq $seq gc=$gc | ${ratio_t}x tok/s, ${ratio_m}x memory | ours/PyTorch: tok/s ${o_tps:-?} / ${r_tps}, $mem_key ${o_mem:-?} / ${r_mem}, loss after $STEPS steps ${o_loss:-?} / ${r_loss}"
        done
    done
}
# shellcheck disable=SC2086
speed_rows "$BIG" $SEQS
# Where the time goes: one micro-batch (batch 2) timed forward-only and forward+backward.
for gc in "" --gradient-checkpointing; do
    prof=$W/profile$gc.txt
    timeout "$(cap 120)" "$BIN" model grad-step --model "$W/$BIG" --data "$W/long.json" --device "$DEV" \
        --dtype "$DT" --cutoff "${SEQS%% *}" --repeat 5 $gc --out "$W/g_big.safetensors" > "$prof" 2>&1 \
        || tail -5 "$prof"
    row "3 profile $BIG seq ${SEQS%% *} ${gc:-plain} | fwd $(get forward_ms < "$prof") ms, fwd+bwd $(get forward_backward_ms < "$prof") ms | backward share $(get backward_share < "$prof"), $(get tokens_per_s < "$prof") tok/s per micro-batch"
done

if [ "${SKIP_SERVE:-0}" = 1 ]; then
    echo "skipped step 4 (SKIP_SERVE=1)"
else
step "4. serving through mistral.rs on $DEV"
timeout "$(cap 180)" "$BIN" engine-check --base "$W/tiny" --adapter "$W/learn-out/adapter" --device "$DEV" \
    --prompt "What should I do for a mild headache?" --expect "Rest and drink water." \
    > "$W/serve-tiny.txt" 2> "$W/serve-tiny.err" || tail -5 "$W/serve-tiny.err"
cat "$W/serve-tiny.txt"
row "4 serve tiny | recital $(get recital < "$W/serve-tiny.txt") | decode base $(get base_decode_tokens_per_s < "$W/serve-tiny.txt") / fine-tuned $(get fine_tuned_decode_tokens_per_s < "$W/serve-tiny.txt") tok/s | hot-load $(get hot_load_ms < "$W/serve-tiny.txt") ms"
big_seq=${SEQS%% *}
timeout "$(cap 180)" "$BIN" engine-check --base "$W/$BIG" --adapter "$W/run-$BIG-$big_seq-gcfalse/adapter" --device "$DEV" \
    > "$W/serve-big.txt" 2> "$W/serve-big.err" || tail -5 "$W/serve-big.err"
cat "$W/serve-big.txt"
row "4 serve $BIG | load $(get base_load_s < "$W/serve-big.txt") s | decode base $(get base_decode_tokens_per_s < "$W/serve-big.txt") / fine-tuned $(get fine_tuned_decode_tokens_per_s < "$W/serve-big.txt") tok/s | hot-load $(get hot_load_ms < "$W/serve-big.txt") ms"
fi

if [ "$MODE" = gpu ] && [ "${SKIP_7B:-0}" != 1 ] && [ "$SECONDS" -lt "$BUDGET_7B" ]; then
    step "5. 7B-class memory with the seed's defaults (ferrotune only)"
    rm -rf "$W/$BIG" "$W"/run-*
    # Everything here must end by END_BY seconds (the device call's limit).
    timeout "$(left)" "$PY" bench/train/make_llama.py "$W/tiny" "$W/7b" 7b cuda \
        || echo "could not generate the 7b model in time"
    long_data 2
    [ -f "$W/7b/config.json" ] && STEPS=2 REF=0 GCS=${GCS_7B:-false true} speed_rows 7b 512
else
    echo "skipped step 5 (7B): $MODE mode or past ${BUDGET_7B}s"
fi

step "table"
{
    echo "ferrotune device check, $(date -u +%F), mode=$MODE, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
    echo
    echo "| check | result | details |"
    echo "|---|---|---|"
    for r in "${ROWS[@]}"; do echo "| $r |"; done
    echo
    echo "(${SECONDS}s in all)"
} | tee "$TABLE"
