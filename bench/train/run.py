#!/usr/bin/env python3
"""Training benchmark: ferrotune (candle) vs PyTorch + transformers + PEFT, side by side in one run,
on the same models, the same examples, the same config (bench/train/config.yaml.tmpl: LoRA r=8/α=32
on all seven projections, batch 2 × 4 accumulation, cut-off 256) and the same thread count. Prints
tokens/s of real (non-padding) tokens (median over the optimizer steps after the first), peak RSS
and final loss for both, and the ratios ours/reference.

Configs: the generated tiny and small models on short uniform examples, and small and
SmolLM2-135M-Instruct (the real model, pulled into the model cache, trained dense in f32 on both
sides) on variable-length examples (answers of 10–300 tokens, cut at 256 with the prompt). The
reference pads each micro-batch to its longest example; ferrotune packs it (no padding, attention
inside each example).

    bash bench/train/run.sh                      # THREADS=2 EPOCHS_TINY=20 EPOCHS_SMALL=2 EPOCHS_SMOLLM2=1
    BUSY=1 bash bench/train/run.sh               # with a CPU-bound process on one core throughout
    ONLY=smollm2 bash bench/train/run.sh         # configs whose name contains ONLY
    VENV=/path/to/venv bash bench/train/run.sh   # reuse a venv with scripts/parity/requirements.txt
    BINARY=path/to/ferrotune bash bench/train/run.sh  # measure that build (no cargo build)

Builds `cargo build --release` first; works in target/bench-train."""
import json
import random
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, cores, env, final_loss, get, ratio, train_config, utc  # noqa: E402

ROW = "{:<15} {:<10} {:>14} {:>12} {:>11}"
TOPICS = ["headache", "sleep", "water", "fever", "stress", "cold", "diet", "exercise"]


def output(*cmd, **kwargs):
    """The stdout of `cmd` (stderr dropped); raises when it fails."""
    return subprocess.run([str(c) for c in cmd], check=True, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, **kwargs).stdout


def short_rows():
    """64 uniform short examples."""
    return [{"instruction": f"Question {i}: what helps with {TOPICS[i % 8]} when it lasts {i % 5 + 1} days?",
             "input": "", "output": f"Answer {i}: rest, fluids and see a doctor if {TOPICS[i % 8]} lasts more than {i % 5 + 3} days."}
            for i in range(64)]


def varied_rows():
    """64 examples with answers of about 10 to 300 tokens (seeded), the shape of real Q&A."""
    g = random.Random(0)
    words = ("rest fluids sleep water doctor fever pain days weeks symptoms advice the and of if when "
             "take avoid drink eat walk breathe slowly quickly usually rarely").split()
    rows = []
    for i in range(64):
        n = g.randint(6, 220)
        answer = " ".join(g.choice(words) for _ in range(n))
        rows.append({"instruction": f"Question {i}: what should I do about {TOPICS[i % 8]}?", "input": "",
                     "output": f"Answer {i}: {answer}."})
    return rows


def busy_process():
    """A CPU-bound process (one core's worth) to run beside the benchmark, or None without BUSY."""
    if not os.environ.get("BUSY"):
        return None
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main():
    sys.stdout.reconfigure(line_buffering=True)  # in order with the commands' output
    os.chdir(ROOT)
    threads = env("THREADS", "2")
    epochs = {"tiny": env("EPOCHS_TINY", "20"), "small": env("EPOCHS_SMALL", "2"),
              "smollm2": env("EPOCHS_SMOLLM2", "1")}
    venv = Path(env("VENV", "target/bench-venv"))
    home = Path(env("FERROTUNE_HOME", "target/ferrotune-home")).resolve()
    python = venv / "bin" / "python"
    work = Path("target/bench-train")
    if not os.access(python, os.X_OK):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([venv / "bin" / "pip", "install", "-q", "-r", "scripts/parity/requirements.txt"], check=True)
    binary = os.environ.get("BINARY")
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--quiet"], check=True)
        binary = "target/release/ferrotune"
    binary = Path(binary).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "short.json").write_text(json.dumps(short_rows()))
    (work / "varied.json").write_text(json.dumps(varied_rows()))
    run_env = {**os.environ, "RAYON_NUM_THREADS": threads, "FERROTUNE_HOME": str(home)}
    configs = [("tiny", "tiny", "short"), ("small", "small", "short"), ("small-varied", "small", "varied"),
               ("smollm2-varied", "smollm2", "varied")]
    configs = [c for c in configs if env("ONLY", "") in c[0]]
    busy = busy_process()
    print("\n" + ROW.format("config", "side", "tokens/s", "peak_MiB", "final_loss"))
    try:
        for name, model, data in configs:
            model_dir = work / model
            if not model_dir.exists():
                if model == "smollm2":
                    pulled = output(binary, "model", "pull", "smollm2-135m-instruct", env=run_env).strip()
                    # Dense on both sides: without the GGUF's stored blocks (which ferrotune would
                    # otherwise train on, QLoRA-style; see bench/train/qlora.sh).
                    shutil.copytree(pulled.split(": ", 1)[1], model_dir,
                                    ignore=shutil.ignore_patterns("stored_blocks.gguf"))
                else:
                    output(binary, "model", "init-tiny", model_dir, "--size", model)
            # Paths in the config are relative to the config's folder.
            config = train_config(work / f"{name}.yaml", model_name_or_path=model, dataset=f"{data}.json",
                                  num_train_epochs=epochs[model], output_dir=f"out-{name}")
            ours = output(binary, "train", "--config", config, env=run_env)
            ref = output(python, "bench/train/reference.py", "--model", model_dir, "--data", work / f"{data}.json",
                         "--epochs", epochs[model], "--threads", threads)
            o = get(ours, "median_step_tokens_per_s"), get(ours, "peak_rss_mib"), final_loss(ours)
            r = get(ref, "median_step_tokens_per_s"), get(ref, "peak_rss_mib"), get(ref, "final_loss")
            print(ROW.format(name, "ferrotune", *o))
            print(ROW.format(name, "pytorch", *r))
            print(ROW.format(name, "ratio", ratio(o[0], r[0]), ratio(o[1], r[1]), "").rstrip())
    finally:
        if busy:
            busy.kill()
    load = ", with a CPU-bound process beside it" if busy else ""
    print(f"({cores()} cores, THREADS={threads}{load}, {utc('%F')})")


if __name__ == "__main__":
    main()
