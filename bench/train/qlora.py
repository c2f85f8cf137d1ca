#!/usr/bin/env python3
"""QLoRA benchmark on the CPU: the same LoRA run (same data, seed and config) with the frozen base
dense and stored in 4 bits, side by side in one invocation, for the generated `small` model and
SmolLM2-135M-Instruct. Prints tokens/s (median over the optimizer steps after the first), peak
RSS, the mean training loss of the last 10 of 50 steps, and each run's ratios to the dense run.

    bash bench/train/qlora.sh          # THREADS=2 STEPS=50 by default

Rows: small — dense f32, nf4 (double-quantized scales), q4_k; SmolLM2 — dense f32 (the import's
dequantized weights without its stored blocks), the GGUF's own q4_1 blocks (the default for a
GGUF source), nf4, q4_k (both quantize the dequantized Q4_1 weights again). Batch 2, no accumulation, cut-off 256, LoRA r=8/α=32 on all projections.
Builds `cargo build --release` first; works in target/bench-qlora; SmolLM2 comes from the model
cache (FERROTUNE_HOME, default target/ferrotune-home, pulled on first use)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, cores, env, get, ratio, train_config, utc  # noqa: E402

ROW = "{:<8} {:<22} {:>10} {:>10} {:>12} {:>8} {:>8} {:>9}"


def output(*cmd, **kwargs):
    """The stdout of `cmd` (stderr dropped); raises when it fails."""
    return subprocess.run([str(c) for c in cmd], check=True, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, **kwargs).stdout


def tail_loss(out_dir, last=10):
    """The mean training loss over the last `last` steps of the run's metrics.csv."""
    with open(out_dir / "results" / "metrics.csv") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    tail = losses[-last:]
    return sum(tail) / len(tail), len(losses)


def dense_copy(src, dst):
    """`src` without its stored GGUF blocks: the trainer then holds the dequantized weights."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("stored_blocks.gguf"))


def main():
    sys.stdout.reconfigure(line_buffering=True)
    os.chdir(ROOT)
    threads, steps = env("THREADS", "2"), int(env("STEPS", "50"))
    home = Path(env("FERROTUNE_HOME", "target/ferrotune-home")).resolve()
    work = Path("target/bench-qlora")
    subprocess.run(["cargo", "build", "--release", "--quiet"], check=True)
    binary = Path("target/release/ferrotune").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = json.loads(Path("examples/data/health_qa.json").read_text())
    (work / "data.json").write_text(json.dumps((rows * 2)[: 2 * steps]))
    run_env = {**os.environ, "RAYON_NUM_THREADS": threads, "FERROTUNE_HOME": str(home)}
    output(binary, "model", "init-tiny", work / "small", "--size", "small")
    pulled = output(binary, "model", "pull", "smollm2-135m-instruct", env=run_env).strip().split(": ", 1)[1]
    dense_copy(pulled, work / "smollm2-dense")
    small, dense = work / "small", work / "smollm2-dense"
    runs = {
        "small": [("dense f32", small, {}), ("nf4", small, {"quantization_bit": 4}),
                  ("q4_k", small, {"quantization_bit": 4, "quantization_method": "q4_k"})],
        "smollm2": [("dense f32", dense, {}), ("stored q4_1 blocks", pulled, {}),
                    ("nf4", pulled, {"quantization_bit": 4}),
                    ("q4_k", pulled, {"quantization_bit": 4, "quantization_method": "q4_k"})],
    }
    print("\n" + ROW.format("model", "frozen base", "tokens/s", "peak_MiB", "loss_last10", "tok/s×", "RSS×", "loss_Δ%"))
    for model, variants in runs.items():
        first = None
        for i, (label, path, extra) in enumerate(variants):
            out = f"out-{model}-{i}"
            config = train_config(work / f"{model}-{i}.yaml", model_name_or_path=Path(path).resolve(),
                                  dataset="data.json", num_train_epochs=1, gradient_accumulation_steps=1,
                                  logging_steps=1, seed=7, output_dir=out, val_size=None, **extra)
            text = output(binary, "train", "--config", config, env=run_env)
            tps, rss = get(text, "median_step_tokens_per_s"), get(text, "peak_rss_mib")
            loss, n = tail_loss(work / out)
            assert n == steps, f"{model} {label}: {n} steps, expected {steps}"
            if first is None:
                first = (tps, rss, loss)
            delta = f"{100 * (loss - first[2]) / first[2]:+.2f}"
            print(ROW.format(model, label, tps, rss, f"{loss:.4f}", ratio(tps, first[0]), ratio(rss, first[1]), delta))
    print(f"({cores()} cores, THREADS={threads}, {steps} steps, {utc('%F')})")


if __name__ == "__main__":
    main()
