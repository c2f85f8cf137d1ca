"""Attaches COUNT adapters (ROOT/ft-00 …) to a running ferrotune through `/v1/load_lora_adapter`,
one streamed request each so its weights are really in use, and prints one JSON line: the
server's RSS before and after and the RSS each adapter added (standard library only).

    python3 bench/adapter_load.py --url URL --pid PID --root ROOT --count 20
"""

import argparse
import http.client
import json
import time
import urllib.parse

from serving_load import one, rss_mib


def post(url, path, body):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode(errors="replace")
    if resp.status != 200:
        raise SystemExit(f"{path}: {resp.status} {text}")
    return json.loads(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--count", type=int, default=20)
    a = p.parse_args()
    one(a.url, "smollm2-135m-instruct", "Hello", 8, [])
    before = rss_mib(a.pid)
    loads, firsts = [], []
    for i in range(a.count):
        name = f"ft-{i:02d}"
        start = time.perf_counter()
        post(a.url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": f"{a.root}/{name}"})
        loads.append(time.perf_counter() - start)
        out = []
        one(a.url, name, "Hello", 8, out)
        firsts.append(out[0].get("first"))
    after = rss_mib(a.pid)
    print(json.dumps({"adapters": a.count, "rss_before_mib": round(before),
                      "rss_after_mib": round(after),
                      "mib_per_adapter": round((after - before) / a.count, 1),
                      "load_s_max": round(max(loads), 3),
                      "first_token_s_max": round(max(f for f in firsts if f is not None), 3)}),
          flush=True)


if __name__ == "__main__":
    main()
