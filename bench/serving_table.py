"""Prints the serving benchmark's table from bench/serving.sh's JSON lines: per stream count, each
server's median aggregate tokens/s and first-token p99 over the rounds, and ferrotune's ratios to
llama-server (the median of the per-round ratios: round k of ferrotune against round k of
llama-server, run one after the other)."""

import json
import statistics
import sys


def rows(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def rounds(runs, label, streams):
    """The runs of `label` at `streams`, in the order they ran."""
    return [r for r in runs if r["label"] == label and r["streams"] == streams]


def ratios(mine, theirs, key):
    return [m[key] / t[key] for m, t in zip(mine, theirs) if t[key] > 0]


def fmt_ratios(values):
    return f"{statistics.median(values):.2f}× (" + " / ".join(f"{v:.2f}" for v in values) + ")"


def table(runs):
    peer_levels = sorted({r["streams"] for r in runs if r["label"] == "llama-server"})
    ours = sorted({r["label"] for r in runs if r["label"].startswith("ferrotune-")
                   and r["label"].count("-") == 1})
    print("\n| streams | llama-server tok/s | " + " | ".join(f"{l} tok/s, ratio (per round)" for l in ours)
          + " | first-token p99: llama-server / " + " / ".join(ours) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in ours) + " | --- |")
    for streams in peer_levels:
        peer = rounds(runs, "llama-server", streams)
        peer_p99 = statistics.median(r["first_p99_s"] for r in peer)
        cells, p99 = [], [f"{peer_p99:.2f} s"]
        for label in ours:
            mine = rounds(runs, label, streams)
            if not mine:
                cells.append("–")
                continue
            tok = statistics.median(r["tok_s"] for r in mine)
            cells.append(f"{tok:.1f}, {fmt_ratios(ratios(mine, peer, 'tok_s'))}")
            mine_p99 = statistics.median(r["first_p99_s"] for r in mine)
            p99.append(f"{mine_p99:.2f} s ({mine_p99 / peer_p99:.1f}×)")
        print(f"| {streams} | {statistics.median(r['tok_s'] for r in peer):.1f} | "
              + " | ".join(cells) + " | " + " / ".join(p99) + " |")
    print()
    for label in ["llama-server"] + ours:
        mine = [r for r in runs if r["label"] == label]
        if mine:
            print(f"RSS {label} (each round): "
                  + ", ".join(f"{r['rss_before_mib']} → {r['rss_after_mib']}" for r in mine
                              if r["streams"] == mine[0]["streams"])
                  + f" MiB at its first level; errors {sum(r['errors'] for r in mine)}")


def mix(runs):
    for label in sorted({r["label"] for r in runs if r["label"].endswith("-11-models")}):
        base_label = label[:-len("-11-models")] + "-base-alone"
        for streams in sorted({r["streams"] for r in runs if r["label"] == label}):
            mixed, alone = rounds(runs, label, streams), rounds(runs, base_label, streams)
            print(f"{label} at {streams} streams: "
                  + " / ".join(f"{r['tok_s']:.1f}" for r in mixed) + " tok/s against the base alone "
                  + " / ".join(f"{r['tok_s']:.1f}" for r in alone) + f" → {fmt_ratios(ratios(mixed, alone, 'tok_s'))}; "
                  f"first p99 {statistics.median(r['first_p99_s'] for r in mixed):.2f} s")


def main():
    runs = rows(sys.argv[1])
    adapters = rows(sys.argv[2]) if len(sys.argv) > 2 else []
    hot = rows(sys.argv[3]) if len(sys.argv) > 3 else []
    table(runs)
    mix(runs)
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
