#!/usr/bin/env python3
"""What `auto` hyperparameters learn, against fixed recipes, on the real model: each setting is one
`ferrotune train` run (LLaMA-Factory keys; keys left out are `auto`) on the same data and seed;
the run's own generation evaluation answers the `--eval` file's questions greedily, and this
prints, per setting: the resolved values, wall time, the last validation loss, mean and lowest
ROUGE-L of the fine-tuned answers (and the base's mean).

    python3 bench/auto_defaults.py --bin target/release/ferrotune --model-dir DIR \
        --data bench/data/facts12.json --eval bench/data/facts12.json \
        --setting auto= --setting lr3e-4=learning_rate:3e-4 --setting seed=num_train_epochs:10,learning_rate:1e-4,per_device_train_batch_size:2,gradient_accumulation_steps:4

A setting is `name=key:value,key:value` (empty: everything auto). `--repeat` runs each setting
again with the same seed (the numbers must not move).
"""
import argparse
import csv
import json
import subprocess
import shutil
import time
from pathlib import Path


def run(binary, model_dir, data, eval_file, overrides, seed, work):
    cfg = {
        "model_name_or_path": str(model_dir),
        "dataset": str(Path(data).resolve()),
        "eval_dataset": str(Path(eval_file).resolve()),
        "finetuning_type": "lora",
        "seed": seed,
        "max_new_tokens": 48,
        "output_dir": str(work),
    }
    cfg.update(overrides)
    path = Path(work).with_suffix(".yaml")
    path.write_text("".join(f"{k}: {v}\n" for k, v in cfg.items()))
    started = time.monotonic()
    out = subprocess.run([binary, "train", "--config", str(path)], capture_output=True, text=True)
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"train failed ({overrides}):\n{out.stderr[-3000:]}")
    rows = list(csv.DictReader(open(Path(work) / "results" / "metrics.csv")))
    valid = [float(r["valid_loss"]) for r in rows if r["valid_loss"]]
    records = [json.loads(line) for line in open(Path(work) / "results" / "eval.jsonl")]
    tuned = [r["fine_tuned"]["rougeL"] for r in records]
    base = [r["base"]["rougeL"] for r in records]
    resolved = next((line for line in out.stderr.splitlines() if "Training " in line), "")
    said = ("fine-tuned model is the checkpoint", "Stopping early", "range test:", "Holding out")
    best = [line.strip() for line in out.stderr.splitlines() if any(s in line for s in said)]
    return {
        "steps": len(rows),
        "wall_s": round(wall, 1),
        "last_valid_loss": valid[-1] if valid else None,
        "min_valid_loss": min(valid) if valid else None,
        "rouge_l_mean": round(sum(tuned) / len(tuned), 3),
        "rouge_l_min": round(min(tuned), 3),
        "base_rouge_l_mean": round(sum(base) / len(base), 3),
        "plan": resolved.split("Training ", 1)[-1][:160],
        "notes": best,
        "worst": min(records, key=lambda r: r["fine_tuned"]["rougeL"])["fine_tuned_answer"][:100],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--eval", required=True)
    p.add_argument("--setting", action="append", required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeat", action="store_true")
    p.add_argument("--work", default="target/auto-defaults", help="run directories (replaced)")
    a = p.parse_args()
    for i, setting in enumerate(a.setting):
        name, _, spec = setting.partition("=")
        overrides = dict(kv.split(":", 1) for kv in spec.split(",") if kv)
        for attempt in range(2 if a.repeat else 1):
            work = Path(a.work) / f"{name}-{attempt}"
            shutil.rmtree(work, ignore_errors=True)
            work.parent.mkdir(parents=True, exist_ok=True)
            r = run(a.bin, a.model_dir, a.data, a.eval, overrides, a.seed, work.resolve())
            print(json.dumps({"setting": name, "attempt": attempt, **r}), flush=True)


if __name__ == "__main__":
    main()
