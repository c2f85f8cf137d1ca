"""The Batch API against the same requests sent one by one, and interactive latency while a batch
runs (standard library only). Against a running ferrotune:

1. first-token latency of PROBES streamed chat requests sent one after another, no batch running;
2. a batch of N chat requests (the serving_load prompts, `max_tokens` TOKENS, temperature 0):
   wall time from `batches.create` to `completed`, with the same PROBES measured while it runs;
3. the same N requests sent one by one (non-streamed): wall time.

Prints JSON lines and the ratios.

    python3 bench/batch_load.py --url http://127.0.0.1:8080 --model NAME [--n 1000] [--tokens 16]
"""

import argparse
import http.client
import json
import statistics
import time
import urllib.parse
import uuid

from serving_load import PROMPTS, SYSTEM, one


def call(url, method, path, body=None, headers=None, raw=None):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    conn.request(method, path, data, headers or {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.read()
    if resp.status >= 400:
        raise RuntimeError(f"{method} {path}: {resp.status} {out[:300]!r}")
    return json.loads(out) if out else None


def request(model, i, tokens):
    return {"model": model, "max_tokens": tokens, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}


def probes(url, model, count, tokens):
    """First-token seconds of `count` streamed requests, one after another."""
    firsts = []
    for i in range(count):
        out = []
        one(url, model, PROMPTS[(i * 7) % len(PROMPTS)], tokens, out)
        if "error" in out[0]:
            raise RuntimeError(f"probe failed: {out[0]}")
        firsts.append(out[0]["first"])
    return firsts


def summary(firsts):
    firsts = sorted(firsts)
    return {"first_p50_s": round(statistics.median(firsts), 3),
            "first_p99_s": round(firsts[min(len(firsts) - 1, int(len(firsts) * 0.99))], 3)}


def upload(url, name, data):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return call(url, "POST", "/v1/files", raw=body,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--probes", type=int, default=20)
    a = ap.parse_args()

    idle = probes(a.url, a.model, a.probes, a.tokens)
    print(json.dumps({"probes": "no batch", **summary(idle)}), flush=True)

    lines = "\n".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": request(a.model, i, a.tokens)}) for i in range(a.n))
    f = upload(a.url, "bench.jsonl", lines.encode())
    start = time.perf_counter()
    batch = call(a.url, "POST", "/v1/batches", {"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                                "completion_window": "24h"})
    time.sleep(1.0)
    busy = probes(a.url, a.model, a.probes, a.tokens)
    print(json.dumps({"probes": "batch running", **summary(busy)}), flush=True)
    while True:
        b = call(a.url, "GET", f"/v1/batches/{batch['id']}")
        if b["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(0.5)
    batch_s = time.perf_counter() - start
    print(json.dumps({"batch": b["status"], "requests": a.n, "counts": b["request_counts"],
                      "wall_s": round(batch_s, 1)}), flush=True)

    start = time.perf_counter()
    for i in range(a.n):
        call(a.url, "POST", "/v1/chat/completions", request(a.model, i, a.tokens))
    one_by_one_s = time.perf_counter() - start
    print(json.dumps({"one_by_one": a.n, "wall_s": round(one_by_one_s, 1)}), flush=True)
    print(f"batch of {a.n}: {batch_s:.1f} s, one by one: {one_by_one_s:.1f} s "
          f"({batch_s / one_by_one_s:.2f}x); interactive first-token p50 under the batch "
          f"{summary(busy)['first_p50_s']} s vs {summary(idle)['first_p50_s']} s idle "
          f"({summary(busy)['first_p50_s'] / summary(idle)['first_p50_s']:.2f}x), p99 "
          f"{summary(busy)['first_p99_s'] / summary(idle)['first_p99_s']:.2f}x")


if __name__ == "__main__":
    main()
