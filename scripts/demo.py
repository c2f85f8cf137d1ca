#!/usr/bin/env python3
"""The seed's scenario end to end, with only Python's standard library: upload the health Q&A
set and its held-out paraphrases, fine-tune with no hyperparameters at all (`auto`, what a new
user sends; `--recipe seed` for the seed's LoRA recipe), stream the job's events
(the loss as it trains), show where the loss curve is, then print base vs fine-tuned answers side
by side with the job's ROUGE-L on the held-out questions and, asked through the chat API, on
trained questions.

    python3 scripts/demo.py --url http://127.0.0.1:8080   # scripts/demo.sh starts a server for you
"""
import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def call(url, method="GET", body=None, raw=None, headers=None):
    data = json.dumps(body).encode() if body is not None else raw
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            payload = r.read()
            return json.loads(payload) if r.headers.get_content_type() == "application/json" else payload
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {url} -> {e.code}: {e.read().decode()}")


def upload(base, path):
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n".encode(),
             f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
             "Content-Type: application/json\r\n\r\n".encode() + path.read_bytes() + b"\r\n",
             f"--{boundary}--\r\n".encode()]
    return call(f"{base}/v1/files", "POST", raw=b"".join(parts),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def ask(base, model, question):
    body = {"model": model, "temperature": 0, "max_tokens": 96, "messages": [{"role": "user", "content": question}]}
    return call(f"{base}/v1/chat/completions", "POST", body)["choices"][0]["message"]["content"]


def tokens(text):
    """Words lower-cased, other visible characters on their own (as the server scores)."""
    out, word = [], ""
    for c in text:
        if c.isalnum() and not "\u3040" <= c <= "\u9fff":
            word += c.lower()
            continue
        if word:
            out.append(word)
            word = ""
        if not c.isspace():
            out.append(c.lower())
    return out + ([word] if word else [])


def rouge_l(candidate, reference):
    c, r = tokens(candidate), tokens(reference)
    prev = [0] * (len(r) + 1)
    for a in c:
        row = [0]
        for j, b in enumerate(r):
            row.append(prev[j] + 1 if a == b else max(row[j], prev[j + 1]))
        prev = row
    lcs = prev[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(c) + len(r))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--data", default=str(ROOT / "examples" / "data" / "health_qa.json"))
    p.add_argument("--heldout", default=str(ROOT / "examples" / "data" / "health_qa_heldout.json"),
                   help="validation file: paraphrased questions on trained topics")
    p.add_argument("--trained-questions", type=int, default=20,
                   help="training questions asked through the chat API after the job")
    p.add_argument("--recipe", choices=["auto", "seed"], default="auto",
                   help="auto: no hyperparameters (the default); seed: LoRA r=8 a=32, lr 1e-4 cosine, "
                        "batch 2 x 4, cutoff 512")
    p.add_argument("--epochs", type=int, default=None, help="seed recipe: default 5 (real model) or 50 (tiny model)")
    p.add_argument("--learning-rate", type=float, default=None, help="seed recipe: default 1e-4 (tiny model: 1e-2)")
    args = p.parse_args()
    base = args.url.rstrip("/")
    base_model = call(f"{base}/v1/models")["data"][0]["id"]
    tiny = base_model == "ferrotune-tiny"
    if tiny:
        print("Base model: ferrotune-tiny, a generated model with RANDOM weights (start the server with\n"
              "--base-model /path/to/Qwen2.5-0.5B-Instruct for a real one). It needs a higher learning rate\n"
              "and more epochs to learn the answers in about a minute.\n")
    epochs = args.epochs or (50 if tiny else 5)
    lr = args.learning_rate or (1e-2 if tiny else 1e-4)
    data = Path(args.data)
    file = upload(base, data)
    print(f"Uploaded {data.name}: {file['id']} ({file['example_count']} examples, {file['dataset_format']} format)")
    heldout = Path(args.heldout)
    valid = upload(base, heldout)
    print(f"Uploaded {heldout.name}: {valid['id']} ({valid['example_count']} held-out questions)")
    # The seed's recipe: LoRA r=8, alpha=32, dropout 0.05, cosine, batch 2 x 4, cutoff 512,
    # logging every 10 steps, a checkpoint every 100.
    hp = {"n_epochs": epochs, "batch_size": 2, "learning_rate": lr, "lr_scheduler_type": "cosine",
          "gradient_accumulation_steps": 4, "max_length": 512, "lora_rank": 8, "lora_alpha": 32,
          "lora_dropout": 0.05, "lora_target": "all", "logging_steps": 10, "save_steps": 100}
    if args.recipe == "auto":
        # Nothing set, as a new user sends it (the random tiny model still needs its own pace).
        hp = {"n_epochs": epochs, "learning_rate": lr} if tiny else {}
    job = call(f"{base}/v1/fine_tuning/jobs", "POST", {"model": base_model, "training_file": file["id"],
               "validation_file": valid["id"],
               "suffix": "health", "seed": 42, "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}})
    print(f"Created {job['id']}\n")
    seen, started, last_metrics = set(), time.time(), None
    while True:
        events = call(f"{base}/v1/fine_tuning/jobs/{job['id']}/events?limit=100")["data"]
        for e in reversed(events):
            if e["id"] in seen:
                continue
            seen.add(e["id"])
            if e["type"] == "metrics":
                d = last_metrics = e["data"]
                done = int(30 * d["step"] / d["total_steps"])
                print(f"  [{'#' * done}{'.' * (30 - done)}] step {d['step']}/{d['total_steps']} "
                      f"loss {d['train_loss']:.3f} acc {d['train_mean_token_accuracy']:.2f}")
            else:
                print(f"  {e['message']}")
        job = call(f"{base}/v1/fine_tuning/jobs/{job['id']}")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    print(f"\nJob {job['status']} in {time.time() - started:.0f} s")
    shown = job.get("hyperparameters") or {}
    print("Hyperparameters: " + ", ".join(f"{k}={shown[k]}" for k in
          ("n_epochs", "batch_size", "learning_rate", "warmup_ratio", "validation_split") if k in shown))
    if last_metrics and last_metrics.get("full_valid_loss") is not None:
        print(f"Full validation loss: {last_metrics['full_valid_loss']:.4f}")
    if job["status"] != "succeeded":
        sys.exit(json.dumps(job["error"]))
    for fid in job["result_files"]:
        meta = call(f"{base}/v1/files/{fid}")
        if meta["filename"] == "loss.svg":
            out = Path("demo-loss.svg").resolve()
            out.write_bytes(call(f"{base}/v1/files/{fid}/content"))
            print(f"Loss curve: {out}  (also {base}/v1/files/{fid}/content)")
    model = job["fine_tuned_model"]
    names = {call(f"{base}/v1/files/{fid}")["filename"]: fid for fid in job["result_files"]}
    if "eval.jsonl" in names:
        records = [json.loads(l) for l in call(f"{base}/v1/files/{names['eval.jsonl']}/content").decode().splitlines()]
        print(f"\nHeld-out questions (greedy answers from the job's evaluation, {len(records)} in eval.jsonl):")
        for r in records[:3]:
            print(f"  Q: {r['prompt']}\n     reference:  {r['reference']}\n"
                  f"     base:       {r['base_answer'][:160]!r}\n     fine-tuned: {r['fine_tuned_answer'][:160]!r}")
    g = (last_metrics or {}).get("generation")
    trained = json.loads(data.read_text())[: args.trained_questions]
    scores = {"base": [], "fine_tuned": []}
    print(f"\nAsking {len(trained)} trained questions through /v1/chat/completions ...")
    for i, ex in enumerate(trained):
        for key, m in (("fine_tuned", model), ("base", base_model)):
            answer = ask(base, m, ex["instruction"])
            scores[key].append(rouge_l(answer, ex["output"]))
            if i == 0:
                print(f"  Q: {ex['instruction']}\n     {key:<10}  {answer[:160]!r}")
    mean = lambda xs: sum(xs) / max(len(xs), 1)
    print("\nROUGE-L               base   fine-tuned")
    if g:
        print(f"held-out ({g['samples']:>3})      {g['base']['rougeL']:.3f}        {g['fine_tuned']['rougeL']:.3f}")
    print(f"trained  ({len(trained):>3})      {mean(scores['base']):.3f}        {mean(scores['fine_tuned']):.3f}")
    print(f"\nWall time: {time.time() - started:.0f} s since the job was created")


if __name__ == "__main__":
    main()
