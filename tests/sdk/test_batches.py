"""The Batch API through the official SDK (strict client): a batch polled to `completed` with its
output and error files parsed, a Responses batch, cancelling mid-way, listing, and bad files and
batches as clear errors."""
import json
import time

import openai
import pytest


def lines_of(*requests):
    return "\n".join(json.dumps(r) for r in requests).encode()


def chat(custom_id, model="ferrotune-tiny", tokens=4):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "max_tokens": tokens, "temperature": 0,
                     "messages": [{"role": "user", "content": f"Question {custom_id}"}]}}


def wait_batch(client, batch_id, statuses, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} never reached {statuses}: {batch.status}")


def jsonl(client, file_id):
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_batch_completes_with_output_and_error_files(strict):
    data = lines_of(chat("a"), chat("b"), chat("lost", model="no-such-model"))
    file = strict.files.create(file=("requests.jsonl", data), purpose="batch")
    batch = strict.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"run": "sdk"})
    assert batch.status in {"validating", "in_progress"} and batch.metadata == {"run": "sdk"}
    done = wait_batch(strict, batch.id, {"completed", "failed", "expired"})
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (3, 2, 1)
    output = {line["custom_id"]: line for line in jsonl(strict, done.output_file_id)}
    assert set(output) == {"a", "b"}
    for line in output.values():
        assert line["response"]["status_code"] == 200
        completion = openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.role == "assistant"
    [error] = jsonl(strict, done.error_file_id)
    assert error["custom_id"] == "lost" and error["response"]["status_code"] == 404
    assert error["error"]["code"] == "model_not_found"
    assert strict.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert batch.id in [b.id for b in strict.batches.list(limit=5)]


def test_a_responses_batch_is_answered_by_the_responses_endpoint(strict):
    data = lines_of({"custom_id": "r1", "method": "POST", "url": "/v1/responses",
                     "body": {"model": "ferrotune-tiny", "input": "hi", "max_output_tokens": 3}})
    file = strict.files.create(file=("r.jsonl", data), purpose="batch")
    batch = strict.batches.create(input_file_id=file.id, endpoint="/v1/responses",
                                  completion_window="24h")
    done = wait_batch(strict, batch.id, {"completed"})
    [line] = jsonl(strict, done.output_file_id)
    response = openai.types.responses.Response.model_validate(line["response"]["body"])
    assert response.usage.output_tokens == 3


def test_a_batch_cancelled_mid_way_keeps_its_answers(strict):
    data = lines_of(*[chat(f"q{i}", tokens=64) for i in range(40)])
    file = strict.files.create(file=("many.jsonl", data), purpose="batch")
    batch = strict.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    deadline = time.time() + 60
    while strict.batches.retrieve(batch.id).request_counts.completed == 0:
        assert time.time() < deadline, "no line answered"
        time.sleep(0.1)
    cancelled = strict.batches.cancel(batch.id)
    assert cancelled.status in {"cancelling", "cancelled"}
    done = wait_batch(strict, batch.id, {"cancelled"})
    assert 0 < done.request_counts.completed < 40
    assert len(jsonl(strict, done.output_file_id)) == done.request_counts.completed


def test_bad_batch_files_and_batches_are_clear_errors(strict, client):
    twice = lines_of(chat("same"), chat("same"))
    with pytest.raises(openai.BadRequestError) as e:
        strict.files.create(file=("dup.jsonl", twice), purpose="batch")
    assert "line 2" in e.value.body["message"] and e.value.body["param"] == "file"
    wrong_url = lines_of({**chat("x"), "url": "/v1/images/generations"})
    with pytest.raises(openai.BadRequestError):
        strict.files.create(file=("url.jsonl", wrong_url), purpose="batch")
    file = strict.files.create(file=("ok.jsonl", lines_of(chat("ok"))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=file.id, endpoint="/v1/responses",
                              completion_window="24h")
    assert e.value.body["param"] == "endpoint"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions",
                              completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
