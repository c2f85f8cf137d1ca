"""The official OpenAI SDK against ferrotune: files, fine-tuning jobs, events, checkpoints, chat
and models, with a default and a strict (`_strict_response_validation=True`) client."""
import json

import openai
import pytest
from openai import OpenAI

from conftest import KEY_B, QA, qa_file_bytes, wait_for


def test_files_create_retrieve_list_content_delete(strict):
    created = [strict.files.create(file=(f"f{i}.jsonl", b'{"prompt":"a","completion":"b"}\n'), purpose="fine-tune")
               for i in range(3)]
    assert created[0].id.startswith("file-") and created[0].status == "processed"
    assert strict.files.retrieve(created[0].id).filename == "f0.jsonl"
    assert strict.files.content(created[1].id).read() == b'{"prompt":"a","completion":"b"}\n'
    # Auto-pagination over pages of two.
    ids = [f.id for f in strict.files.list(limit=2, purpose="fine-tune")]
    assert all(c.id in ids for c in created)
    page = strict.files.list(limit=2)
    assert page.has_more and len(page.data) == 2
    deleted = strict.files.delete(created[2].id)
    assert deleted.deleted and deleted.id == created[2].id
    with pytest.raises(openai.NotFoundError):
        strict.files.retrieve(created[2].id)


def test_a_job_trains_to_succeeded_with_events_and_checkpoints(strict, fine_tuned):
    assert fine_tuned.status == "succeeded", fine_tuned.error
    assert fine_tuned.fine_tuned_model.startswith("ft:ferrotune-tiny:")
    assert fine_tuned.fine_tuned_model.split(":")[3] == "health"
    assert fine_tuned.trained_tokens > 0 and len(fine_tuned.result_files) == 3
    assert fine_tuned.hyperparameters.n_epochs == 20
    events = list(strict.fine_tuning.jobs.list_events(fine_tuned.id, limit=3))
    assert len(events) > 3, "auto-pagination crossed pages"
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and metrics[0].data["step"] == metrics[0].data["total_steps"]
    assert events[0].message == "The job has successfully completed"
    checkpoints = strict.fine_tuning.jobs.checkpoints.list(fine_tuned.id)
    assert checkpoints.data and checkpoints.data[0].fine_tuned_model_checkpoint.startswith(fine_tuned.fine_tuned_model)
    names = {strict.files.retrieve(f).filename: f for f in fine_tuned.result_files}
    assert set(names) == {"step_metrics.csv", "loss.svg", "adapter.tar.gz"}
    assert strict.files.content(names["step_metrics.csv"]).read().startswith(b"step,train_loss,train_accuracy")


def test_a_validation_file_gets_base_vs_fine_tuned_scores_and_eval_jsonl(strict, training_file):
    # Validating on the training questions: the tiny model learns them, its random base cannot.
    job = strict.fine_tuning.jobs.create(
        model="ferrotune-tiny",
        training_file=training_file.id,
        validation_file=training_file.id,
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 2}}},
        extra_body={"hyperparameters": {"learning_rate": 0.01, "lora_dropout": 0.0, "logging_steps": 100}},
    )
    job = wait_for(strict, job.id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    last = next(e for e in strict.fine_tuning.jobs.list_events(job.id) if e.type == "metrics")
    g = last.data["generation"]
    assert g["samples"] == len(QA)
    assert g["fine_tuned"]["rougeL"] > g["base"]["rougeL"] + 0.5, g
    assert last.data["full_valid_loss"] < 1.0
    names = {strict.files.retrieve(f).filename: f for f in job.result_files}
    lines = strict.files.content(names["eval.jsonl"]).read().decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in records] == [q for q, _ in QA]
    assert {"reference", "base_answer", "fine_tuned_answer", "base", "fine_tuned"} <= set(records[0])
    summary = strict.files.content(names["eval_summary.csv"]).read().decode()
    assert summary.startswith("model,samples,rouge1,rouge2,rougeL,bleu4\nbase,")


def test_jobs_list_pages_and_metadata(strict, training_file):
    made = [strict.fine_tuning.jobs.create(model="ferrotune-tiny", training_file=training_file.id,
                                           metadata={"batch": "pages"}) for _ in range(3)]
    for job in made:
        strict.fine_tuning.jobs.cancel(job.id)
    listed = [j.id for j in strict.fine_tuning.jobs.list(limit=2)]
    assert all(j.id in listed for j in made)
    tagged = strict.fine_tuning.jobs.list(extra_query={"metadata[batch]": "pages"})
    assert {j.id for j in tagged.data} == {j.id for j in made}


def test_cancel_pause_and_resume(client, training_file):
    job = client.fine_tuning.jobs.create(
        model="ferrotune-tiny", training_file=training_file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}})
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"  # not in the SDK's enum: the lenient client accepts it
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(job.id)


def test_chat_with_the_fine_tuned_model(strict, fine_tuned):
    model = fine_tuned.fine_tuned_model
    question, answer = QA[0]
    msgs = [{"role": "user", "content": question}]
    plain = strict.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=40)
    assert plain.choices[0].message.content == answer
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
    base = strict.chat.completions.create(model="ferrotune-tiny", messages=msgs, temperature=0, max_tokens=40)
    assert base.choices[0].message.content != answer

    streamed = "".join(c.choices[0].delta.content or "" for c in
                       strict.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=40, stream=True)
                       if c.choices)
    assert streamed == answer

    chunks = list(strict.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=40,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])

    two = strict.chat.completions.create(model=model, messages=msgs, n=2, temperature=1.0, max_tokens=10)
    assert [c.index for c in two.choices] == [0, 1]

    stopped = strict.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=40, stop=["drink"])
    assert stopped.choices[0].finish_reason == "stop"
    assert "drink" not in stopped.choices[0].message.content

    short = strict.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2


def test_models_list_retrieve_delete(strict, training_file):
    job = strict.fine_tuning.jobs.create(
        model="ferrotune-tiny", training_file=training_file.id, suffix="todelete",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}})
    job = wait_for(strict, job.id, {"succeeded", "failed"})
    assert job.status == "succeeded", job.error
    ids = [m.id for m in strict.models.list()]
    assert "ferrotune-tiny" in ids and job.fine_tuned_model in ids
    assert strict.models.retrieve(job.fine_tuned_model).owned_by.startswith("org-")
    assert strict.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        strict.models.retrieve(job.fine_tuned_model)
    with pytest.raises(openai.BadRequestError):
        strict.models.delete("ferrotune-tiny")


def test_errors_map_to_the_sdk_exception_classes(server, strict, training_file):
    with pytest.raises(openai.BadRequestError) as bad:
        strict.fine_tuning.jobs.create(model="gpt-9", training_file=training_file.id)
    assert bad.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        strict.fine_tuning.jobs.create(model="ferrotune-tiny", training_file=training_file.id,
                                       method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}})
    with pytest.raises(openai.BadRequestError):
        strict.files.create(file=("bad.jsonl", b"not json\n"), purpose="fine-tune")
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{server}/v1", api_key="sk-wrong", max_retries=0).files.list()
    with pytest.raises(openai.NotFoundError):
        strict.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.NotFoundError) as missing:
        strict.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["code"] == "model_not_found"


def test_keys_are_separate_organizations(server, fine_tuned):
    other = OpenAI(base_url=f"{server}/v1", api_key=KEY_B, max_retries=0, _strict_response_validation=True)
    assert fine_tuned.id not in [j.id for j in other.fine_tuning.jobs.list()]
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=fine_tuned.fine_tuned_model, messages=[{"role": "user", "content": "x"}])
    own = other.files.create(file=("b.json", qa_file_bytes()), purpose="fine-tune")
    assert own.id in [f.id for f in other.files.list()]
