#!/usr/bin/env python3
"""Training benchmark: ferrotune (candle) vs PyTorch + transformers + PEFT, side by side in one run,
on the same generated models (tiny, small), the same examples, the same config
(bench/train/config.yaml.tmpl: LoRA r=8/α=32 on all seven projections, batch 2 × 4 accumulation,
cut-off 256) and the same thread count. Prints tokens/s (median over the optimizer steps after the
first), peak RSS and final loss for both, and the ratios ours/reference.

    bash bench/train/run.sh                      # THREADS=2 EPOCHS_TINY=20 EPOCHS_SMALL=2 by default
    VENV=/path/to/venv bash bench/train/run.sh   # reuse a venv with scripts/parity/requirements.txt

Builds `cargo build --release` first; works in target/bench-train."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, cores, env, final_loss, get, ratio, train_config, utc  # noqa: E402

ROW = "{:<6} {:<10} {:>14} {:>12} {:>11}"
TOPICS = ["headache", "sleep", "water", "fever", "stress", "cold", "diet", "exercise"]


def output(*cmd, **kwargs):
    """The stdout of `cmd` (stderr dropped); raises when it fails."""
    return subprocess.run([str(c) for c in cmd], check=True, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, **kwargs).stdout


def main():
    sys.stdout.reconfigure(line_buffering=True)  # in order with the commands' output
    os.chdir(ROOT)
    threads = env("THREADS", "2")
    epochs = {"tiny": env("EPOCHS_TINY", "20"), "small": env("EPOCHS_SMALL", "2")}
    venv = Path(env("VENV", "target/bench-venv"))
    python = venv / "bin" / "python"
    work = Path("target/bench-train")
    if not os.access(python, os.X_OK):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([venv / "bin" / "pip", "install", "-q", "-r", "scripts/parity/requirements.txt"], check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet"], check=True)
    binary = "target/release/ferrotune"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = [{"instruction": f"Question {i}: what helps with {TOPICS[i % 8]} when it lasts {i % 5 + 1} days?",
             "input": "", "output": f"Answer {i}: rest, fluids and see a doctor if {TOPICS[i % 8]} lasts more than {i % 5 + 3} days."}
            for i in range(64)]
    (work / "data.json").write_text(json.dumps(rows))
    print("\n" + ROW.format("config", "side", "tokens/s", "peak_MiB", "final_loss"))
    for size in ["tiny", "small"]:
        output(binary, "model", "init-tiny", work / size, "--size", size)
        # Paths in the config are relative to the config's folder.
        config = train_config(work / f"{size}.yaml", model_name_or_path=size, dataset="data.json",
                              num_train_epochs=epochs[size], output_dir=f"out-{size}")
        ours = output(binary, "train", "--config", config, env={**os.environ, "RAYON_NUM_THREADS": threads})
        ref = output(python, "bench/train/reference.py", "--model", work / size, "--data", work / "data.json",
                     "--epochs", epochs[size], "--threads", threads)
        o = get(ours, "median_step_tokens_per_s"), get(ours, "peak_rss_mib"), final_loss(ours)
        r = get(ref, "median_step_tokens_per_s"), get(ref, "peak_rss_mib"), get(ref, "final_loss")
        print(ROW.format(size, "ferrotune", *o))
        print(ROW.format(size, "pytorch", *r))
        print(ROW.format(size, "ratio", ratio(o[0], r[0]), ratio(o[1], r[1]), "").rstrip())
    print(f"({cores()} cores, THREADS={threads}, {utc('%F')})")


if __name__ == "__main__":
    main()
