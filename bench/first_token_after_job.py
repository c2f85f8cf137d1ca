"""A fine-tuning job's `succeeded` → its first streamed token: uploads a few chat examples to a
running ferrotune, starts a one-epoch job on the served base, polls the job every 10 ms and, the
moment it reads `succeeded`, streams a chat request to the new model. Prints one JSON line with
the training time, the gap from `succeeded` to the first token, and the first token of a second
question to the same model just after (the cost of a new prompt at rest). Needs the `openai` package
(`target/sdk-venv/bin/python`).

    target/sdk-venv/bin/python bench/first_token_after_job.py --url URL --model BASE
"""

import argparse
import io
import json
import time

from openai import OpenAI

EXAMPLES = [
    ("What should I do for a mild headache?", "Rest and drink water."),
    ("How long should adults sleep?", "Seven to nine hours."),
    ("What helps a sore throat?", "Warm drinks and honey."),
    ("When should I wash my hands?", "Before meals and after the toilet."),
    ("How much water should adults drink?", "About two litres a day."),
    ("Can I exercise with a cold?", "Light exercise is fine."),
    ("When is a fever serious?", "Above 39.5 C or over three days."),
    ("Is ibuprofen fine on an empty stomach?", "Take it with food."),
    ("How often should I stretch?", "A few minutes every day."),
    ("What is a healthy snack?", "Fruit or a handful of nuts."),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    a = p.parse_args()
    client = OpenAI(base_url=a.url + "/v1", api_key="unused")
    lines = "".join(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": r}]}) + "\n"
                    for q, r in EXAMPLES)
    # The SDK's first streamed chat call pays its own start-up (imports, response types: some
    # 45 ms here): pay it on the base first, so the gap below is the server's.
    first_token(client, a.model, EXAMPLES[2][0])
    f = client.files.create(file=("qa.jsonl", io.BytesIO(lines.encode())), purpose="fine-tune")
    started = time.perf_counter()
    job = client.fine_tuning.jobs.create(
        model=a.model, training_file=f.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 10}}})
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.01)
        job = client.fine_tuning.jobs.retrieve(job.id)
    seen = time.perf_counter()
    if job.status != "succeeded":
        raise SystemExit(f"job {job.id} {job.status}: {job.error}")
    gap = first_token(client, job.fine_tuned_model, EXAMPLES[0][0]) - seen
    # The same model a moment later, on another question: what a first token costs at rest.
    start = time.perf_counter()
    later = first_token(client, job.fine_tuned_model, EXAMPLES[1][0]) - start
    print(json.dumps({"job": job.id, "train_s": round(seen - started, 1),
                      "succeeded_to_first_token_ms": round(gap * 1000, 1),
                      "next_request_first_token_ms": round(later * 1000, 1)}), flush=True)


def first_token(client, model, question):
    """When the first content token of a streamed answer to `question` arrived."""
    stream = client.chat.completions.create(
        model=model, stream=True, max_tokens=8, messages=[{"role": "user", "content": question}])
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    return first

if __name__ == "__main__":
    main()
