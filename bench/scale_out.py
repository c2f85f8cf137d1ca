#!/usr/bin/env python3
"""Scale-out load benchmark (not a test): two API nodes and two workers on one PostgreSQL and one
SeaweedFS bucket (tests/sdk/cluster.py), then for DURATION seconds (default 60) at once:

- CHATS (100) concurrent streamed chats on the base model, round-robin over the API nodes, each
  client starting its next chat when one ends;
- UPLOADS (10) fine-tune file uploads, spread over the minute;
- CYCLES (50) fine-tuning jobs created and cancelled at once, spread over the minute.

Prints errors, p50/p99 of first-token latency and of each request kind, chats completed, and each
API node's RSS before and after. Run with the SDK venv (it has httpx and SeaweedFS's `weed`):

    target/sdk-venv/bin/python bench/scale_out.py        # BINARY=target/release/ferrotune
"""
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "sdk"))
from cluster import start_cluster  # noqa: E402

KEY = "sk-ferrotune-bench"
HEADERS = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = json.dumps([{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."}
                       for i in range(20)]).encode()


# Long enough that a job is still queued or running when its cancel arrives.
LONG = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50}}}


def env(name, default):
    return int(os.environ.get(name, default))


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Load:
    def __init__(self, urls, end):
        self.urls, self.end = urls, end
        self.first_token, self.chat_total, self.upload, self.cycle = [], [], [], []
        self.errors, self.error_kinds = 0, {}

    def fail(self, kind, what):
        self.errors += 1
        key = f"{kind}: {what}"[:120]
        self.error_kinds[key] = self.error_kinds.get(key, 0) + 1

    async def chat(self, http, i):
        n = 0
        while time.time() < self.end:
            url = self.urls[(i + n) % len(self.urls)]
            n += 1
            body = {"model": "ferrotune-tiny", "stream": True, "max_tokens": 32,
                    "messages": [{"role": "user", "content": f"Tell me about sleep ({i}/{n})."}]}
            start = time.time()
            first = None
            try:
                async with http.stream("POST", f"{url}/v1/chat/completions", json=body, headers=HEADERS) as r:
                    if r.status_code != 200:
                        self.fail("chat", r.status_code)
                        await r.aread()
                        continue
                    async for line in r.aiter_lines():
                        if first is None and line.startswith("data: {"):
                            first = time.time() - start
                if first is None:
                    self.fail("chat", "no chunk")
                    continue
                self.first_token.append(first)
                self.chat_total.append(time.time() - start)
            except httpx.HTTPError as e:
                self.fail("chat", type(e).__name__)

    async def spread(self, count, duration, action):
        for k in range(count):
            await asyncio.sleep(duration / count)
            asyncio.ensure_future(action(k))

    async def upload_one(self, http, k):
        url = self.urls[k % len(self.urls)]
        start = time.time()
        try:
            r = await http.post(f"{url}/v1/files", headers=HEADERS, data={"purpose": "fine-tune"},
                                files={"file": (f"load-{k}.json", EXAMPLES)})
            if r.status_code == 200:
                self.upload.append(time.time() - start)
            else:
                self.fail("upload", r.status_code)
        except httpx.HTTPError as e:
            self.fail("upload", type(e).__name__)

    async def cycle_one(self, http, file_id, k):
        url = self.urls[k % len(self.urls)]
        start = time.time()
        try:
            r = await http.post(f"{url}/v1/fine_tuning/jobs", headers=HEADERS,
                                json={"model": "ferrotune-tiny", "training_file": file_id, "method": LONG})
            if r.status_code != 200:
                self.fail("create", r.status_code)
                return
            job = r.json()["id"]
            r = await http.post(f"{url}/v1/fine_tuning/jobs/{job}/cancel", headers=HEADERS)
            if r.status_code == 200:
                self.cycle.append(time.time() - start)
            else:
                self.fail("cancel", r.status_code)
        except httpx.HTTPError as e:
            self.fail("cycle", type(e).__name__)


async def run(urls, duration, chats, uploads, cycles):
    limits = httpx.Limits(max_connections=chats + 50, max_keepalive_connections=chats + 50)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        r = await http.post(f"{urls[0]}/v1/files", headers=HEADERS, data={"purpose": "fine-tune"},
                            files={"file": ("train.json", EXAMPLES)})
        r.raise_for_status()
        file_id = r.json()["id"]
        load = Load(urls, time.time() + duration)
        tasks = [load.chat(http, i) for i in range(chats)]
        tasks.append(load.spread(uploads, duration, lambda k: load.upload_one(http, k)))
        tasks.append(load.spread(cycles, duration, lambda k: load.cycle_one(http, file_id, k)))
        await asyncio.gather(*tasks)
        await asyncio.sleep(5)  # the last spread requests
        return load


def main():
    binary = os.environ.get("BINARY", str(ROOT / "target" / "release" / "ferrotune"))
    duration, chats = env("DURATION", 60), env("CHATS", 100)
    uploads, cycles = env("UPLOADS", 10), env("CYCLES", 50)
    root = tempfile.mkdtemp(prefix="ferrotune-scale-bench-", dir="/tmp")
    cluster = start_cluster(binary, root, KEY, lease_seconds=30)
    try:
        apis = [n for n in cluster.urls]
        urls = [cluster.urls[n] for n in apis]
        before = {n: rss_mib(cluster.procs[n].pid) for n in apis}
        started = time.time()
        load = asyncio.run(run(urls, duration, chats, uploads, cycles))
        took = time.time() - started
        after = {n: rss_mib(cluster.procs[n].pid) for n in apis}
    finally:
        cluster.stop()
    ms = lambda v: f"{v * 1000:,.0f} ms"  # noqa: E731
    print(f"\n{chats} streamed chats + {uploads} uploads + {cycles} create/cancel cycles for {duration} s "
          f"against {len(urls)} API nodes and 2 workers ({os.cpu_count()} cores, {took:.0f} s in all)")
    print(f"{'what':<22} {'count':>7} {'p50':>10} {'p99':>10}")
    for name, values in [("chat first token", load.first_token), ("chat whole", load.chat_total),
                         ("upload", load.upload), ("create + cancel", load.cycle)]:
        print(f"{name:<22} {len(values):>7} {ms(pct(values, 50)):>10} {ms(pct(values, 99)):>10}")
    print(f"errors: {load.errors} {load.error_kinds if load.errors else ''}")
    for n in apis:
        print(f"{n} RSS: {before[n]:.0f} MiB before, {after[n]:.0f} MiB after")
    if load.first_token:
        print(f"chats/s: {len(load.first_token) / duration:.1f}; mean first token "
              f"{statistics.mean(load.first_token) * 1000:,.0f} ms")


if __name__ == "__main__":
    main()
