#!/usr/bin/env python3
"""The seed's scenario end to end, with only Python's standard library: upload the health Q&A
set, fine-tune with the seed's LoRA recipe, stream the job's events with a progress bar, show
where the loss curve is, then ask the fine-tuned and the base model the same training question.

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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--data", default=str(ROOT / "examples" / "data" / "health_qa.json"))
    p.add_argument("--epochs", type=int, default=None, help="default: 3 (real model) or 50 (tiny model)")
    p.add_argument("--learning-rate", type=float, default=None, help="default: the seed's 1e-4 (tiny model: 1e-2)")
    args = p.parse_args()
    base = args.url.rstrip("/")
    base_model = call(f"{base}/v1/models")["data"][0]["id"]
    tiny = base_model == "ferrotune-tiny"
    if tiny:
        print("Base model: ferrotune-tiny, a generated model with RANDOM weights (start the server with\n"
              "--base-model /path/to/Qwen2.5-0.5B-Instruct for a real one). It needs a higher learning rate\n"
              "and more epochs to learn the answers in about a minute.\n")
    epochs = args.epochs or (50 if tiny else 3)
    lr = args.learning_rate or (1e-2 if tiny else 1e-4)
    data = Path(args.data)
    file = upload(base, data)
    print(f"Uploaded {data.name}: {file['id']} ({file['example_count']} examples, {file['dataset_format']} format)")
    # The seed's recipe: LoRA r=8, alpha=32, dropout 0.05, cosine, batch 2 x 4, cutoff 512,
    # logging every 10 steps, a checkpoint every 100.
    hp = {"n_epochs": epochs, "batch_size": 2, "learning_rate": lr, "lr_scheduler_type": "cosine",
          "gradient_accumulation_steps": 4, "max_length": 512, "lora_rank": 8, "lora_alpha": 32,
          "lora_dropout": 0.05, "lora_target": "all", "logging_steps": 10, "save_steps": 100}
    job = call(f"{base}/v1/fine_tuning/jobs", "POST", {"model": base_model, "training_file": file["id"],
               "suffix": "health", "seed": 42, "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}})
    print(f"Created {job['id']}\n")
    seen, started = set(), time.time()
    while True:
        events = call(f"{base}/v1/fine_tuning/jobs/{job['id']}/events?limit=100")["data"]
        for e in reversed(events):
            if e["id"] in seen:
                continue
            seen.add(e["id"])
            if e["type"] == "metrics":
                d = e["data"]
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
    if job["status"] != "succeeded":
        sys.exit(json.dumps(job["error"]))
    for fid in job["result_files"]:
        meta = call(f"{base}/v1/files/{fid}")
        if meta["filename"] == "loss.svg":
            out = Path("demo-loss.svg").resolve()
            out.write_bytes(call(f"{base}/v1/files/{fid}/content"))
            print(f"Loss curve: {out}  (also {base}/v1/files/{fid}/content)")
    question = json.loads(data.read_text())[0]["instruction"]
    model = job["fine_tuned_model"]
    print(f"\nQuestion: {question}\n")
    rows = [(model, ask(base, model, question)), (base_model, ask(base, base_model, question))]
    width = max(len(m) for m, _ in rows)
    for m, answer in rows:
        print(f"{m:<{width}} | {answer!r}")


if __name__ == "__main__":
    main()
