#!/usr/bin/env bash
# Serving side by side with llama.cpp's own server, in one invocation: llama-server (built from the
# llama.cpp source the `llama-cpp-python` sdist vendors, cached under target/), ferrotune on the
# llama.cpp engine and ferrotune on mistral.rs, each serving SmolLM2-135M-Instruct's Q4_1 GGUF, the
# same 40 prompts with the same system line, 64 streamed tokens, REQUESTS per level at LEVELS
# streams (bench/serving_load.py). Then, on ferrotune's llama.cpp engine: 20 fine-tunes attached at
# once (RSS per adapter) and traffic spread over 10 fine-tunes and the base.
#
#   bash bench/serving.sh                  # release build; BENCH_PROFILE=dev for the test build
#
# This machine is shared and noisy (the same server moves ±15 % between back-to-back runs), so
# llama-server and ferrotune's llama.cpp engine run in ROUNDS alternating rounds (default 3) and
# the table gives each level's median over the rounds and the median of the per-round ratios; the
# 11-model mix alternates with the base alone in the same server the same way.
#
# ENGINES picks the ferrotune engines (default "llamacpp mistralrs"; mistral.rs runs one round);
# LEVELS (default 1,8,32), REQUESTS (32), THREADS (2). The long RSS check (500 requests) runs with
# SOAK=1; PEER=0 leaves llama-server out (the many-fine-tunes checks compare ferrotune with itself).
set -euo pipefail
cd "$(dirname "$0")/.."
LEVELS=${LEVELS:-1,8,32}
REQUESTS=${REQUESTS:-32}
THREADS=${THREADS:-2}
SLOTS=32
export FERROTUNE_HOME=${FERROTUNE_HOME:-$PWD/target/ferrotune-home}
set -a # llama.cpp for this CPU's instruction sets, as .ci/run builds it (llama-server too)
eval "$(bash scripts/llama_isa.sh)"
set +a
bin=$(bash bench/ferrotune_bin.sh)
peer=
if [[ "${PEER:-1}" == 1 ]]; then peer=$(bash bench/build_llama_server.sh); fi
model_dir=$("$bin" model pull smollm2-135m-instruct | sed 's/^[^:]*: //')
gguf=$model_dir/model.gguf
out=$(mktemp -d)
work=$(mktemp -d)
chmod 755 "$work" # run as root, the embedded PostgreSQL drops to another user
pid=
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

wait_up() { # url
    for _ in $(seq 1 600); do
        curl -fs "$1/v1/models" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || { echo "server exited" >&2; tail -20 "$work"/*.log >&2; return 1; }
        sleep 0.5
    done
    return 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
load() { # label model [extra args]
    local label=$1 model=$2; shift 2
    python3 bench/serving_load.py --url "$URL" --model "$model" --pid "$pid" --levels "$LEVELS" \
        --requests "$REQUESTS" --label "$label" "$@" | tee -a "$out/runs.jsonl"
}

ROUNDS=${ROUNDS:-3}
PEER_URL=http://127.0.0.1:18181
URL=http://127.0.0.1:18182
peer_round() {
    echo "== llama-server ($peer)" >&2
    "$peer" -m "$gguf" -t "$THREADS" -tb "$THREADS" -np "$SLOTS" -c $((1024 * SLOTS)) --no-webui \
        --port 18181 >"$work/peer.log" 2>&1 &
    pid=$!
    wait_up "$PEER_URL"
    URL=$PEER_URL load llama-server smollm2
    stop
}
ferrotune() { # engine
    echo "== ferrotune --engine $1" >&2
    rm -rf "$work/data-$1"
    "$bin" serve --engine "$1" --port 18182 --data-dir "$work/data-$1" \
        --base-model smollm2-135m-instruct --max-sequences "$SLOTS" --kv-cache-tokens $((1024 * SLOTS)) \
        --adapter-root "$work/adapters" --max-resident-models 32 >"$work/ferrotune-$1.log" 2>&1 &
    pid=$!
    wait_up "$URL"
}
mkdir -p "$work/adapters"
python3 bench/make_adapters.py --model-dir "$model_dir" --out "$work/adapters" --count 20
engines=${ENGINES:-llamacpp mistralrs}
for round in $(seq 1 "$ROUNDS"); do
    [[ "${PEER:-1}" == 1 ]] && peer_round
    if [[ " $engines " == *" llamacpp "* ]]; then
        ferrotune llamacpp
        load ferrotune-llamacpp smollm2-135m-instruct
        stop
    fi
done
for engine in $engines; do
    if [[ "$engine" == llamacpp ]]; then
        ferrotune llamacpp
        python3 bench/adapter_load.py --url "$URL" --pid "$pid" --root "$work/adapters" --count 20 \
            | tee -a "$out/adapters.jsonl"
        models=smollm2-135m-instruct$(printf ',ft-%02d' $(seq 0 9))
        for round in $(seq 1 "$ROUNDS"); do
            LEVELS=8 load ferrotune-llamacpp-base-alone smollm2-135m-instruct
            LEVELS=8 load ferrotune-llamacpp-11-models smollm2-135m-instruct --models "$models"
        done
        if [[ -x target/sdk-venv/bin/python ]]; then # made by scripts/test.sh
            target/sdk-venv/bin/python bench/first_token_after_job.py --url "$URL" \
                --model smollm2-135m-instruct | tee -a "$out/hot.jsonl"
        fi
        if [[ "${SOAK:-0}" == 1 ]]; then
            LEVELS=8 REQUESTS=20 load ferrotune-llamacpp-soak-first-20 smollm2-135m-instruct
            LEVELS=8 REQUESTS=480 load ferrotune-llamacpp-soak-to-500 smollm2-135m-instruct
        fi
    else
        ferrotune "$engine"
        load "ferrotune-$engine" smollm2-135m-instruct
    fi
    stop
done
echo "raw runs: $out" >&2
python3 bench/serving_table.py "$out/runs.jsonl" "$out/adapters.jsonl" "$out/hot.jsonl"
