"""Prints the serving benchmark's table from bench/serving.sh's JSON lines: per stream count,
each server's aggregate tokens/s and first-token p99, and ferrotune's ratios to llama-server."""

import json
import sys


def rows(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def main():
    runs = rows(sys.argv[1])
    adapters = rows(sys.argv[2]) if len(sys.argv) > 2 else []
    hot = rows(sys.argv[3]) if len(sys.argv) > 3 else []
    peer = {r["streams"]: r for r in runs if r["label"] == "llama-server"}
    ours = sorted({r["label"] for r in runs if r["label"].startswith("ferrotune-")
                   and r["label"].count("-") == 1})
    print("\n| streams | llama-server tok/s | " + " | ".join(f"{l} tok/s (ratio)" for l in ours)
          + " | first-token p99: llama-server / " + " / ".join(ours) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in ours) + " | --- |")
    for streams, p in sorted(peer.items()):
        cells, p99 = [], [f"{p['first_p99_s']:.2f} s"]
        for label in ours:
            r = next((r for r in runs if r["label"] == label and r["streams"] == streams), None)
            if r is None:
                cells.append("–")
                continue
            cells.append(f"{r['tok_s']:.1f} ({r['tok_s'] / p['tok_s']:.2f}×)")
            p99.append(f"{r['first_p99_s']:.2f} s ({r['first_p99_s'] / p['first_p99_s']:.1f}×)")
        print(f"| {streams} | {p['tok_s']:.1f} | " + " | ".join(cells) + " | " + " / ".join(p99) + " |")
    print()
    for label in ["llama-server"] + ours:
        mine = [r for r in runs if r["label"] == label]
        if mine:
            print(f"RSS {label}: {mine[0]['rss_before_mib']} → {mine[-1]['rss_after_mib']} MiB; "
                  f"errors {sum(r['errors'] for r in mine)}")
    for r in runs:
        if r["label"].endswith("-11-models"):
            single = next((s for s in runs if s["label"] == r["label"][:-len("-11-models")]
                           and s["streams"] == r["streams"]), None)
            ratio = f" ({r['tok_s'] / single['tok_s']:.2f}× the base alone)" if single else ""
            print(f"{r['label']} at {r['streams']} streams: {r['tok_s']:.1f} tok/s{ratio}, "
                  f"first p99 {r['first_p99_s']:.2f} s")
    first = next((r for r in runs if r["label"].endswith("soak-first-20")), None)
    last = next((r for r in runs if r["label"].endswith("soak-to-500")), None)
    if first and last:
        growth = last["rss_after_mib"] / first["rss_after_mib"] - 1
        print(f"RSS after 20 requests {first['rss_after_mib']} MiB, after 500 "
              f"{last['rss_after_mib']} MiB ({growth:+.1%})")
    for a in adapters:
        print(f"{a['adapters']} adapters attached: RSS {a['rss_before_mib']} → {a['rss_after_mib']} MiB, "
              f"{a['mib_per_adapter']} MiB each; slowest attach {a['load_s_max']} s; slowest first "
              f"token on a just-attached adapter {a['first_token_s_max']} s")
    for h in hot:
        print(f"job {h['job']}: trained in {h['train_s']} s; succeeded → first streamed token "
              f"{h['succeeded_to_first_token_ms']} ms")


if __name__ == "__main__":
    main()
