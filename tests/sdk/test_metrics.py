"""`/metrics` parses with the reference Prometheus text-format parser, needs a key like /v1, and
its counters move with traffic (serving under vLLM's names, HTTP by route and status)."""
import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import KEY_A


def scrape(server):
    res = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {KEY_A}"}, timeout=30)
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("text/plain")
    samples = {}
    families = {}
    for family in text_string_to_metric_families(res.text):
        families[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_a_key(server):
    assert httpx.get(f"{server}/metrics").status_code == 401
    bad = httpx.get(f"{server}/metrics", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "invalid_request_error"


def test_counters_move_with_traffic(server, client):
    _, before = scrape(server)
    model = {"model_name": "ferrotune-tiny"}
    client.chat.completions.create(model="ferrotune-tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6)
    stream = client.chat.completions.create(model="ferrotune-tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=6, stream=True)
    streamed = sum(1 for c in stream if c.choices and c.choices[0].delta.content)
    assert streamed > 0
    pieces = list(client.completions.create(model="ferrotune-tiny", prompt="once upon", max_tokens=4, stream=True))
    assert pieces
    httpx.get(f"{server}/v1/files/file-doesnotexist", headers={"Authorization": f"Bearer {KEY_A}"})
    families, after = scrape(server)

    for name, kind in {
        "vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge",
        "vllm:time_to_first_token_seconds": "histogram", "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram", "vllm:prompt_tokens": "counter",
        "vllm:generation_tokens": "counter", "vllm:request_success": "counter",
        "ferrotune:http_requests": "counter", "ferrotune:http_request_duration_seconds": "histogram",
        "ferrotune:models_resident": "gauge", "ferrotune:models_loading": "gauge",
        "ferrotune:fine_tuning_queue_depth": "gauge", "process_resident_memory_bytes": "gauge",
    }.items():
        assert families.get(name) == kind, f"{name}: {families.get(name)}"

    def grew(name, by=1, **labels):
        delta = value(after, name, **labels) - value(before, name, **labels)
        assert delta >= by, f"{name}{labels} moved by {delta}"

    grew("vllm:prompt_tokens_total", by=2, **model)
    grew("vllm:generation_tokens_total", by=6 + streamed + 1, **model)
    finished = lambda samples: sum(v for (n, labels), v in samples.items()
                                   if n == "vllm:request_success_total" and ("model_name", "ferrotune-tiny") in labels)
    assert finished(after) - finished(before) >= 2, "the non-streamed chat and the completion finished"
    assert any(n == "vllm:request_success_total" and dict(labels).get("finished_reason") in ("length", "stop")
               for (n, labels) in after)
    grew("vllm:time_to_first_token_seconds_count", by=3, **model)
    grew("vllm:e2e_request_latency_seconds_count", by=3, **model)
    grew("vllm:inter_token_latency_seconds_count", by=2, **model)
    grew("ferrotune:http_requests_total", by=2, method="POST", route="/v1/chat/completions", status="200")
    grew("ferrotune:http_requests_total", method="GET", route="/v1/files/{file_id}", status="404")
    grew("ferrotune:http_request_duration_seconds_count", by=2, method="POST", route="/v1/chat/completions",
         status="200")
    # Nothing is left in flight once the responses are read.
    assert value(after, "vllm:num_requests_running", **model) == 0
    assert value(after, "vllm:num_requests_waiting", **model) == 0
    assert value(after, "process_resident_memory_bytes") > 0


def test_training_figures_come_from_the_database_and_model_loads_are_timed(server, client, fine_tuned):
    # Serving the fine-tuned model loads it (if the job's preload has not already).
    client.chat.completions.create(model=fine_tuned.fine_tuned_model, max_tokens=2,
                                   messages=[{"role": "user", "content": "hi"}])
    _, samples = scrape(server)
    assert value(samples, "ferrotune:fine_tuning_jobs", status="succeeded") >= 1
    assert value(samples, "ferrotune:adapter_load_seconds_count", outcome="loaded") >= 1
    assert value(samples, "ferrotune:models_resident") >= 1
