#!/usr/bin/env python3
"""Issue 22's measurement: DPO on the real model through the HTTP API of a running server
(Python standard library only).

    python3 bench/dpo.py --url http://127.0.0.1:8080 [--out DIR]

The preference set (examples/data/health_pref.jsonl, written by `--write-data`): the first 100
questions of examples/data/health_qa.json, the preferred answer its concise reference, the other
the same facts buried in rambling (openers, hedges and a tail, varied by a fixed pattern). 80
pairs train, 20 are held out as the validation file.

1. A DPO job (β 0.1, sigmoid, the seed's LoRA r 8 / α 32 / dropout 0.05 on all projections,
   batch 2 × 2 accumulation, EPOCHS epochs at LR): reward accuracy and margin on the 20 held-out
   pairs (the job's `eval_rewards/*`), training tokens/s (its metrics events).
2. An SFT job on the same 80 prompts with the preferred answers, same batch and LoRA: tokens/s,
   for the DPO/SFT ratio (a DPO step scores two sequences per pair; the reference was scored once
   before training).
3. Served answers to the 20 held-out questions, greedy, up to 128 tokens: mean words from the
   base, the DPO and the SFT model, and of the held-out preferred answers.

Prints a markdown table and writes dpo.json into --out. Environment: EPOCHS (1), LR (2e-4),
PREF_FTX (0: weight of LLaMA-Factory's SFT term on the chosen answers).
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from demo import ROOT, call, rouge_l, upload  # noqa: E402

DATA = ROOT / "examples" / "data"
PAIRS = DATA / "health_pref.jsonl"
OPENERS = [
    "Well, that's a really good question, and honestly there are a lot of different things to think about here.",
    "So, first of all, it's worth saying that everybody is different and there isn't really one single answer.",
    "Great question! There's quite a lot to unpack, so let me walk through it slowly and carefully.",
    "Hmm, let me think about this one for a moment, because it depends on a whole range of factors.",
]
TAILS = [
    "Of course, it always depends on your situation, and you might want to read more about it or ask around.",
    "Anyway, that's the general idea, although there are always exceptions and things can vary quite a bit.",
    "I hope that helps a little, but keep in mind that there's a lot more that could be said about it.",
    "Everyone's body is different, so what works for one person may not work for another, as they say.",
]


def ramble(answer, i):
    return f"{OPENERS[i % 4]} Generally speaking, and broadly, {answer[0].lower()}{answer[1:]} {TAILS[(i // 4) % 4]}"


def write_data():
    qa = json.loads((DATA / "health_qa.json").read_text())[:100]
    with PAIRS.open("w") as f:
        for i, r in enumerate(qa):
            f.write(json.dumps({
                "input": {"messages": [{"role": "user", "content": r["instruction"]}]},
                "preferred_output": [{"role": "assistant", "content": r["output"]}],
                "non_preferred_output": [{"role": "assistant", "content": ramble(r["output"], i)}],
            }) + "\n")
    print(f"wrote {PAIRS}")


def split(out):
    lines = PAIRS.read_text().splitlines()
    train, held = out / "pref_train.jsonl", out / "pref_heldout.jsonl"
    train.write_text("\n".join(lines[:80]) + "\n")
    held.write_text("\n".join(lines[80:]) + "\n")
    sft = out / "sft_train.jsonl"
    sft.write_text("".join(json.dumps({"messages": json.loads(l)["input"]["messages"]
                                       + json.loads(l)["preferred_output"]}) + "\n" for l in lines[:80]))
    return train, held, sft, [json.loads(l) for l in lines[80:]]


def run_job(base, body, label):
    job = call(f"{base}/v1/fine_tuning/jobs", "POST", body)
    started = time.time()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(5)
        job = call(f"{base}/v1/fine_tuning/jobs/{job['id']}")
    print(f"{label}: {job['status']} in {time.time() - started:.0f} s", flush=True)
    if job["status"] != "succeeded":
        sys.exit(f"{label} job did not succeed: {job.get('error')}")
    events = call(f"{base}/v1/fine_tuning/jobs/{job['id']}/events?limit=100")["data"]
    rows = [e["data"] for e in reversed(events) if e["type"] == "metrics"]
    return job, rows, time.time() - started


def answers(base, model, pairs):
    """Mean words and mean ROUGE-L against the preferred answer, and the first answer."""
    lengths, scores, texts = [], [], []
    for p in pairs:
        body = {"model": model, "temperature": 0, "max_tokens": 128, "messages": p["input"]["messages"]}
        text = call(f"{base}/v1/chat/completions", "POST", body)["choices"][0]["message"]["content"] or ""
        lengths.append(len(text.split()))
        scores.append(rouge_l(text, p["preferred_output"][0]["content"]))
        texts.append(text)
    return statistics.mean(lengths), statistics.mean(scores), texts[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--out", default="target/bench-dpo")
    ap.add_argument("--write-data", action="store_true")
    a = ap.parse_args()
    if a.write_data:
        write_data()
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs, lr = int(os.environ.get("EPOCHS", "1")), float(os.environ.get("LR", "2e-4"))
    ftx = float(os.environ.get("PREF_FTX", "0"))
    base_model = call(f"{a.url}/v1/models")["data"][0]["id"]
    train, held, sft, held_pairs = split(out)
    tf, hf, sf = upload(a.url, train), upload(a.url, held), upload(a.url, sft)
    lora = {"lora_rank": 8, "lora_alpha": 32, "lora_dropout": 0.05, "lora_target": "all", "batch_size": 2,
            "gradient_accumulation_steps": 2, "learning_rate": lr, "n_epochs": epochs, "max_length": 512,
            "logging_steps": 10, "save_steps": 1000, "predict_with_generate": False}
    dpo_job, dpo_rows, dpo_s = run_job(a.url, {
        "model": base_model, "training_file": tf["id"], "validation_file": hf["id"], "suffix": "concise", "seed": 42,
        "method": {"type": "dpo", "dpo": {"hyperparameters": {**lora, "beta": 0.1, "pref_ftx": ftx}}}}, "DPO")
    sft_job, sft_rows, sft_s = run_job(a.url, {
        "model": base_model, "training_file": sf["id"], "suffix": "sft", "seed": 42,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {**lora, "logging_steps": 5}}}}, "SFT")
    first_eval = next(r for r in dpo_rows if "eval_rewards/accuracies" in r)
    last = dpo_rows[-1]
    tps = lambda rows: statistics.median(r["tokens_per_second"] for r in rows if "tokens_per_second" in r)
    base_words, base_rouge, base_first = answers(a.url, base_model, held_pairs)
    dpo_words, dpo_rouge, dpo_first = answers(a.url, dpo_job["fine_tuned_model"], held_pairs)
    sft_words, sft_rouge, sft_first = answers(a.url, sft_job["fine_tuned_model"], held_pairs)
    ref_words = statistics.mean(len(p["preferred_output"][0]["content"].split()) for p in held_pairs)
    result = {
        "base_model": base_model, "epochs": epochs, "learning_rate": lr, "pref_ftx": ftx, "steps": len(dpo_rows) and last["step"],
        "eval_accuracy_first": first_eval["eval_rewards/accuracies"], "eval_margin_first": first_eval["eval_rewards/margins"],
        "eval_accuracy": last.get("eval_rewards/accuracies"), "eval_margin": last.get("eval_rewards/margins"),
        "valid_loss_first": first_eval.get("valid_loss"), "valid_loss": last.get("valid_loss"),
        "train_loss_first": dpo_rows[0]["train_loss"], "train_loss": last["train_loss"],
        "dpo_tokens_per_s": tps(dpo_rows), "sft_tokens_per_s": tps(sft_rows),
        "dpo_job_s": dpo_s, "sft_job_s": sft_s, "dpo_trained_tokens": dpo_job["trained_tokens"],
        "sft_trained_tokens": sft_job["trained_tokens"], "base_words": base_words, "dpo_words": dpo_words,
        "sft_words": sft_words, "preferred_words": ref_words, "base_rouge_l": base_rouge,
        "dpo_rouge_l": dpo_rouge, "sft_rouge_l": sft_rouge,
        "first_question": held_pairs[0]["input"]["messages"][-1]["content"],
        "first_answers": {"base": base_first, "dpo": dpo_first, "sft": sft_first},
    }
    (out / "dpo.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"""
| measure | value |
| --- | --- |
| held-out reward accuracy (step {first_eval['step']} → {last['step']}) | {result['eval_accuracy_first']:.2f} → {result['eval_accuracy']:.2f} |
| held-out reward margin | {result['eval_margin_first']:.3f} → {result['eval_margin']:.3f} |
| held-out DPO loss | {result['valid_loss_first']:.4f} → {result['valid_loss']:.4f} |
| mean words per answer, 20 held-out questions: base / DPO / SFT (preferred answers: {ref_words:.1f}) | {base_words:.1f} / {dpo_words:.1f} / {sft_words:.1f} |
| mean ROUGE-L against the preferred answers: base / DPO / SFT | {base_rouge:.3f} / {dpo_rouge:.3f} / {sft_rouge:.3f} |
| training tokens/s DPO vs SFT (median step) | {result['dpo_tokens_per_s']:.1f} vs {result['sft_tokens_per_s']:.1f} ({result['dpo_tokens_per_s'] / result['sft_tokens_per_s']:.2f}x) |
| job wall time DPO / SFT | {dpo_s:.0f} s / {sft_s:.0f} s |""")


if __name__ == "__main__":
    main()
