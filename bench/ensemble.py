#!/usr/bin/env python3
"""Issue 19's measurement: voting ensembles and layered inference on a real model, through the
HTTP API of a running server (Python standard library only).

    python3 bench/ensemble.py --url http://127.0.0.1:8080 [--out DIR]

1. Fine-tunes one job with `ensemble_size` K (default 5) on examples/data/health_qa.json: the
   seed's LoRA recipe with the demo's 5 epochs, as one micro-batch of 8 (the same 125 optimizer
   steps of 8 examples as batch 2 x 4 accumulation). Members differ by seed.
2. Groups members 1..3 and 1..K as `vote` and `consensus` ensembles and asks each, greedily, the
   40 held-out paraphrases (examples/data/health_qa_heldout.json): ROUGE-L of every single member
   (read from the vote report, which carries each member's answer) and of each ensemble.
3. Wall time per request, one question at a time: a single member vs each ensemble.
4. Layered inference: member 1 over the base model, its threshold calibrated on held-out health
   questions 1-20 (the 5th percentile of member 1's mean token log-probability, so that 95 % of
   those keep the adapter); ROUGE-L of base, member 1 and layered on the 40 general questions
   (examples/data/general_qa_heldout.json) and on held-out health questions 21-40.

Prints a markdown table and writes ensemble.json / ensemble.md into --out. Environment:
ENSEMBLE_K (5), EPOCHS (5), WORKERS (8 questions in flight for the quality passes),
ENSEMBLE_MODEL (measure this ensemble job's model instead of training one).
"""
import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from demo import ROOT, call, rouge_l, upload  # noqa: E402

DATA = ROOT / "examples" / "data"


def chat(base, model, question, max_tokens=64, tries=4):
    """One greedy answer: (content, ensemble report or None, seconds). A 503 (the engine restarted
    under the request: mistral.rs 0.8.1 panics now and then batching many sequences on the CPU,
    see BENCHMARKS.md) is asked again, as its message says; the time is the answered try's."""
    body = {"model": model, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": question}]}
    for attempt in range(tries):
        started = time.time()
        try:
            r = call(f"{base}/v1/chat/completions", "POST", body)
            return r["choices"][0]["message"]["content"] or "", r.get("ensemble"), time.time() - started
        except SystemExit as e:
            if "-> 503" not in str(e) or attempt == tries - 1:
                raise
            RETRIES.append(model)
            time.sleep(1)


RETRIES = []  # models whose request was asked again after a 503


def train(base, base_model, k, epochs):
    file = upload(base, DATA / "health_qa.json")
    hp = {"n_epochs": epochs, "batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
          "lr_scheduler_type": "cosine", "max_length": 512, "lora_rank": 8, "lora_alpha": 32,
          "lora_dropout": 0.05, "lora_target": "all", "logging_steps": 25, "save_steps": 1000,
          "predict_with_generate": False}
    if k > 1:
        hp["ensemble_size"] = k
    job = call(f"{base}/v1/fine_tuning/jobs", "POST", {
        "model": base_model, "training_file": file["id"], "suffix": "health", "seed": 42,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}})
    started, last = time.time(), ""
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = call(f"{base}/v1/fine_tuning/jobs/{job['id']}")
        events = call(f"{base}/v1/fine_tuning/jobs/{job['id']}/events?limit=1")["data"]
        if events and events[0]["message"] != last:
            last = events[0]["message"]
            print(f"  [{time.time() - started:5.0f} s] {last}", flush=True)
    print(f"job {job['status']} in {time.time() - started:.0f} s")
    if job["status"] != "succeeded":
        sys.exit(json.dumps(job.get("error")))
    return job["fine_tuned_model"], time.time() - started, job.get("trained_tokens")


def define(base, name, members, strategy, **extra):
    name = f"{name}-{RUN}"  # a rerun against the same server defines fresh names
    call(f"{base}/v1/ensembles", "POST", {"name": name, "members": members, "strategy": strategy, **extra})
    return name


RUN = time.strftime("%H%M%S")


def over(questions, fn, workers):
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, questions))


def mean(xs):
    return round(statistics.fmean(xs), 4) if xs else None


def div(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    base = args.url.rstrip("/")
    k, epochs = int(os.environ.get("ENSEMBLE_K", 5)), int(os.environ.get("EPOCHS", 5))
    workers = int(os.environ.get("WORKERS", 8))
    base_model = call(f"{base}/v1/models")["data"][0]["id"]
    heldout = json.loads((DATA / "health_qa_heldout.json").read_text())
    general = json.loads((DATA / "general_qa_heldout.json").read_text())
    print(f"base {base_model}; training an ensemble of {k}, {epochs} epochs", flush=True)
    if os.environ.get("ENSEMBLE_MODEL"):  # measure an ensemble job trained before
        ft, train_s, trained_tokens = os.environ["ENSEMBLE_MODEL"], None, None
    else:
        ft, train_s, trained_tokens = train(base, base_model, k, epochs)
    members = [f"{ft}:member-{i}" for i in range(1, k + 1)]
    sizes = sorted({min(3, k), k})
    ensembles = {f"{s}-{n}": define(base, f"bench-{s}-{n}", members[:n], s)
                 for s in ("vote", "consensus") for n in sizes}

    # Quality on the held-out health questions.
    scores = {m: [] for m in members}
    scores.update({e: [] for e in ensembles})
    logprob_1 = []
    for name, e in ensembles.items():
        answers = over(heldout, lambda q: chat(base, e, q["instruction"]), workers)
        for q, (content, report, _) in zip(heldout, answers):
            scores[name].append(rouge_l(content, q["output"]))
            if name == f"vote-{k}":
                for a in report["answers"]:
                    scores[a["model"]].append(rouge_l(a["content"], q["output"]))
                    if a["model"] == members[0]:
                        logprob_1.append(a["mean_logprob"] if a["mean_logprob"] is not None else -100.0)
        print(f"  {name}: ROUGE-L {mean(scores[name])}", flush=True)

    # Wall time per request, one at a time (first 8 questions, after one warm-up each).
    timing = {}
    for label, model in [("single member", members[0])] + [(n, e) for n, e in ensembles.items()]:
        chat(base, model, heldout[0]["instruction"])
        timing[label] = statistics.median(chat(base, model, q["instruction"])[2] for q in heldout[:8])

    # Layered: member 1 over the base, its threshold the 5th percentile of member 1's confidence on
    # the first half of the held-out questions (95 % of those keep the adapter); scored on the
    # other half and on the general questions.
    calibration = sorted(logprob_1[: len(heldout) // 2])
    threshold = calibration[int(0.05 * len(calibration))]
    layered = define(base, "bench-layered", [members[0]], "layered", fallback=base_model,
                     threshold=round(max(-100.0, min(0.0, threshold)), 4))
    sets = {"general": general, "health": heldout[len(heldout) // 2:]}
    layer_scores = {d: {} for d in sets}
    layers = {}
    for label, model in [("base", base_model), ("member 1", members[0]), ("layered", layered)]:
        for d, qs in sets.items():
            answers = over(qs, lambda q: chat(base, model, q["instruction"]), workers)
            layer_scores[d][label] = mean([rouge_l(a[0], q["output"]) for q, a in zip(qs, answers)])
            if label == "layered":
                layers[d] = [a[1]["layer"] for a in answers]
    single = {m: mean(scores[m]) for m in members}
    result = {
        "base_model": base_model, "members": k, "epochs": epochs,
        "train_seconds": round(train_s, 1) if train_s else None, "retried_after_503": len(RETRIES),
        "trained_tokens": trained_tokens,
        "heldout_rouge_l": {**{f"member {i + 1}": single[m] for i, m in enumerate(members)},
                            **{n: mean(scores[n]) for n in ensembles}},
        "seconds_per_request": {n: round(t, 3) for n, t in timing.items()},
        "layered_threshold": threshold,
        "layered_rouge_l": layer_scores,
        "adapter_share": {d: round(v.count("member") / len(v), 3) for d, v in layers.items()},
    }
    best = max(single.values())
    lines = ["| held-out health questions (40) | ROUGE-L | s / request | vs one member |", "|---|---:|---:|---:|"]
    lines += [f"| member {i + 1} | {single[m]} | | |" for i, m in enumerate(members)]
    one = timing["single member"]
    lines += [f"| {n} | {mean(scores[n])} | {timing[n]:.2f} | {timing[n] / one:.2f}x |" for n in ensembles]
    lines += [f"| (one member, timed) | | {one:.2f} | 1.00x |", "",
              f"Best single member {best}; mean of members {mean(list(single.values()))}.", "",
              f"Layered: member 1 over {base_model}, threshold {threshold:.4f} (5th percentile of member 1's "
              "mean token log-probability on held-out health questions 1-20; scored on 21-40).", "",
              "| | base | member 1 | layered | layered / base | layered / member 1 | adapter answered |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for d, label in [("general", "40 general questions"), ("health", "held-out health 21-40")]:
        r = layer_scores[d]
        lines.append(f"| {label} | {r['base']} | {r['member 1']} | {r['layered']} | "
                     f"{div(r['layered'], r['base'])} | {div(r['layered'], r['member 1'])} | "
                     f"{result['adapter_share'][d]:.0%} |")
    table = "\n".join(lines)
    print(table)
    print(json.dumps(result, indent=1))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "ensemble.json").write_text(json.dumps(result, indent=1))
        (out / "ensemble.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
