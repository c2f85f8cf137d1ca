"""Preference tuning through the official SDK: a `method={"type": "dpo", ...}` job on OpenAI's
preference format trains to succeeded, reports TRL's reward metrics and is served."""
import json

from conftest import QA, wait_for

RAMBLE = "Well, that is a big question and there are many things one could say about it"


def test_a_dpo_job_through_the_sdk_is_served(strict, client):
    lines = [{"input": {"messages": [{"role": "user", "content": q}]},
              "preferred_output": [{"role": "assistant", "content": a}],
              "non_preferred_output": [{"role": "assistant", "content": RAMBLE}]} for q, a in QA]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file = strict.files.create(file=("pairs.jsonl", data), purpose="fine-tune")
    job = strict.fine_tuning.jobs.create(
        model="ferrotune-tiny",
        training_file=file.id,
        suffix="concise",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "n_epochs": 3, "batch_size": 2}}},
        extra_body={"hyperparameters": {"learning_rate": 0.01, "lora_dropout": 0.0, "logging_steps": 1}},
    )
    assert job.method.type == "dpo"
    assert job.method.dpo.hyperparameters.beta == 0.5
    job = wait_for(strict, job.id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    events = strict.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e.data for e in events if e.type == "metrics"]
    assert len(metrics) == 15
    assert all("rewards/accuracies" in m and "rewards/margins" in m for m in metrics)
    last = max(metrics, key=lambda m: m["step"])
    assert last["rewards/margins"] > 0
    answer = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=8,
                                            messages=[{"role": "user", "content": QA[0][0]}])
    assert answer.choices[0].message.content
