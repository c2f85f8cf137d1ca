"""What the SDK hides: exact SSE framing, content types, and JSON errors for unknown routes, wrong
methods and malformed bodies."""
import json

import httpx

from conftest import KEY_A

H = {"Authorization": f"Bearer {KEY_A}"}


def test_sse_framing_is_exact(server):
    body = {"model": "ferrotune-tiny", "stream": True, "max_tokens": 4,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=H, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert len({c["id"] for c in chunks}) == 1


def test_json_content_types(server):
    r = httpx.get(f"{server}/v1/models", headers=H)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    r = httpx.post(f"{server}/v1/chat/completions", headers=H,
                   json={"model": "ferrotune-tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.headers["content-type"].startswith("application/json")


def error_of(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_errors_are_json_envelopes(server):
    assert error_of(httpx.get(f"{server}/v1/nothing-here", headers=H), 404)["code"] == "unknown_url"
    assert error_of(httpx.delete(f"{server}/v1/chat/completions", headers=H), 405)["code"] == "method_not_allowed"
    bad = httpx.post(f"{server}/v1/chat/completions", headers={**H, "content-type": "application/json"}, content=b"{oops")
    assert "Invalid JSON" in error_of(bad, 400)["message"]
    assert error_of(httpx.get(f"{server}/v1/files"), 401)["code"] == "invalid_api_key"
