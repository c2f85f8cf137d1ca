"""Streamed chat load against an OpenAI-compatible server (standard library only).

For each concurrency level, REQUESTS chat completions (the same PROMPTS with the same system
line, temperature 0, `max_tokens` TOKENS, streamed with usage) go out with that many in flight.
Prints one JSON line per level: aggregate completion tokens per second, first-token p50/p99, and
the server's RSS (from /proc) before and after.

    python3 bench/serving_load.py --url http://127.0.0.1:8080 --model NAME --pid PID \
        [--levels 1,8,32] [--requests 32] [--tokens 64] [--models a,b,c]
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse

SYSTEM = "You are a concise assistant. Answer in one or two sentences."
PROMPTS = [
    "What is the capital of France?", "Name three primary colours.", "Why is the sky blue?",
    "How many legs does a spider have?", "What does a thermometer measure?",
    "Give one tip for better sleep.", "What is photosynthesis?", "Who wrote Hamlet?",
    "What is the boiling point of water at sea level?", "How do bees make honey?",
    "What is a prime number?", "Why do we have seasons?", "What is the largest ocean?",
    "How does a rainbow form?", "What is gravity?", "Name a mammal that can fly.",
    "What is the speed of light?", "How many continents are there?", "What do plants need to grow?",
    "What is the chemical symbol for gold?", "Why is exercise healthy?", "What is a volcano?",
    "How do magnets work?", "What is the tallest mountain?", "What causes tides?",
    "What language is spoken in Brazil?", "How many days are in a leap year?",
    "What is the freezing point of water?", "What is an atom?", "Why do leaves change colour?",
    "What is the main gas in the air?", "How does the heart pump blood?", "What is a noun?",
    "Name a renewable energy source.", "What is the moon made of?", "What is inflation?",
    "How do fish breathe?", "What is a haiku?", "Why do cats purr?", "What is an algorithm?",
]


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def one(url, model, prompt, tokens, out):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = {
        "model": model, "stream": True, "max_tokens": tokens, "temperature": 0,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
    }
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first, usage, buf = None, None, b""
    if resp.status != 200:
        out.append({"error": resp.status, "body": resp.read()[:200].decode(errors="replace")})
        return
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            data = event.strip()[len(b"data: "):]
            if data == b"[DONE]":
                continue
            obj = json.loads(data)
            for c in obj.get("choices") or []:
                if first is None and (c.get("delta") or {}).get("content"):
                    first = time.perf_counter() - start
            if obj.get("usage"):
                usage = obj["usage"]
    out.append({"first": first if first is not None else time.perf_counter() - start,
                "tokens": (usage or {}).get("completion_tokens", 0)})


def level(url, models, streams, requests, tokens):
    results, lock, next_i = [], threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                if i >= requests:
                    return
                next_i[0] += 1
            one(url, models[i % len(models)], PROMPTS[i % len(PROMPTS)], tokens, results)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    errors = [r for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    firsts = sorted(r["first"] for r in ok)
    pct = lambda p: firsts[min(len(firsts) - 1, int(p * len(firsts)))] if firsts else float("nan")
    total = sum(r["tokens"] for r in ok)
    return {"streams": streams, "requests": requests, "errors": len(errors),
            "tokens": total, "wall_s": round(wall, 2), "tok_s": round(total / wall, 1),
            "first_p50_s": round(pct(0.5), 3), "first_p99_s": round(pct(0.99), 3),
            "error_sample": errors[:1]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--models", default="", help="spread requests over these (comma-separated)")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--label", default="")
    a = p.parse_args()
    models = [m for m in a.models.split(",") if m] or [a.model]
    one(a.url, models[0], PROMPTS[0], 4, [])  # warm-up
    for streams in [int(s) for s in a.levels.split(",")]:
        before = rss_mib(a.pid)
        r = level(a.url, models, streams, a.requests, a.tokens)
        r.update({"label": a.label, "rss_before_mib": round(before), "rss_after_mib": round(rss_mib(a.pid))})
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
