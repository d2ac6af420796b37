#!/usr/bin/env python3
"""
Plot delivery latency (p50 and p99) of hpchat and Nchan from the load generator's JSON lines.

  python bench/plot.py docs/bench-compare.jsonl [more.jsonl ...] -o docs/benchmarks-latency.png

Left: p50/p99 against the waiting clients C at R = 1,000/s (every run with that rate, cluster
runs marked by their node count). Right: p50/p99 against the offered rate R (the saturation
series). Log scale for the latency.
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"hpchat": ("tab:blue", "hpchat"), "nchan": ("tab:orange", "nginx + Nchan")}


def load(paths):
    out = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    out.append(json.loads(line))
    return out


def label(r):
    target = r["params"].get("target", "hpchat")
    nodes = len(r["params"]["urls"])
    name = STYLE[target][1]
    return name + (f" ({nodes} nodes)" if target == "hpchat" and nodes > 1 else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jsonl", nargs="+")
    p.add_argument("-o", "--output", default="docs/benchmarks-latency.png")
    p.add_argument("--rate", type=float, default=1000.0, help="R of the latency-vs-C panel")
    args = p.parse_args()
    results = load(args.jsonl)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    # latency vs C at R
    groups: dict[str, list] = {}
    for r in results:
        if r["params"]["rate"] == args.rate and r.get("series") != "saturation":
            groups.setdefault(label(r), []).append(r)
    markers = {}
    for i, (name, runs) in enumerate(sorted(groups.items())):
        runs.sort(key=lambda r: r["params"]["clients"])
        target = runs[0]["params"].get("target", "hpchat")
        color = STYLE[target][0] if "nodes" not in name else ["tab:green", "tab:purple"][
            markers.setdefault(name, len(markers)) % 2]
        xs = [r["params"]["clients"] for r in runs]
        left.plot(xs, [r["latency_ms"]["p99"] for r in runs], "o-", color=color,
                  label=f"{name} p99")
        left.plot(xs, [r["latency_ms"]["p50"] for r in runs], "s--", color=color,
                  label=f"{name} p50", alpha=0.7)
    left.set_xlabel("waiting clients C")
    left.set_ylabel("delivery latency (ms, log)")
    left.set_yscale("log")
    left.set_title(f"delivery latency vs waiting clients, R = {args.rate:,.0f} msgs/s")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    # latency vs R (saturation series)
    sat: dict[str, list] = {}
    for r in results:
        if r.get("series") == "saturation":
            sat.setdefault(r["params"].get("target", "hpchat"), []).append(r)
    for target, runs in sorted(sat.items()):
        runs.sort(key=lambda r: r["params"]["rate"])
        color, name = STYLE[target]
        xs = [r["params"]["rate"] for r in runs]
        right.plot(xs, [r["latency_ms"]["p99"] for r in runs], "o-", color=color,
                   label=f"{name} p99")
        right.plot(xs, [r["latency_ms"]["p50"] for r in runs], "s--", color=color,
                   label=f"{name} p50", alpha=0.7)
        for r in runs:
            right.annotate(f"{r['sends']['acked_per_s']:,.0f}/s",
                           (r["params"]["rate"], r["latency_ms"]["p99"]), fontsize=7,
                           textcoords="offset points", xytext=(3, 4), color=color)
    clients = {r["params"]["clients"] for v in sat.values() for r in v}
    right.set_xlabel("offered messages/s R (labels: acked sends/s)")
    right.set_ylabel("delivery latency (ms, log)")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_title(f"towards saturation, C = {', '.join(f'{c:,}' for c in sorted(clients))}")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle("hpchat vs nginx + Nchan, 2 x AMD EPYC vCPU (generator on the same cores)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"plot: wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
