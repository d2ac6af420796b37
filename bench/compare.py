#!/usr/bin/env python3
"""
hpchat and nginx + Nchan side by side, the same clients and rates, in one run.

  python bench/compare.py --points 5000:1000,10000:1000 --duration 20 \\
      --sat-clients 1000 --sat-hpchat 1000,1500,2000,3000 --sat-nchan 2000,4000,8000,16000 \\
      --json-out docs/bench-compare.jsonl

For every point C:R, a fresh hpchat node (bench/lg_node.py) then a fresh nginx + Nchan
(bench/lg_nchan.py) get the same load generator run (bench/loadgen.py, `--target nchan` for
Nchan). The saturation series raise R on --sat-clients users until the acknowledged sends stop
keeping up. Prints one Markdown table of every run, the saturation throughput of each and
the ratios hpchat/Nchan; every JSON result is appended to --json-out (for bench/plot.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(target: str, clients: int, rate: float, duration: float, extra: list[str]) -> dict:
    script = "lg_node.py" if target == "hpchat" else "lg_nchan.py"
    command = [sys.executable, os.path.join(HERE, script), "--", "-c", str(clients),
               "-r", str(rate), "--duration", str(duration), "-q"] + extra
    print(f"compare: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        print(f"compare: {target} C={clients} R={rate} failed ({out.returncode})",
              file=sys.stderr)
        return {}
    result = json.loads(lines[-1])
    return result


def saturated(r: dict) -> bool:
    s, lat = r["sends"], r["latency_ms"]
    return (s["acked_per_s"] < 0.95 * s["offered_per_s"] or s["skipped_in_window"] > 0
            or (lat["p99"] or 0) > 1000 or s["undelivered"] > 0)


def row(r: dict, kind: str) -> str:
    p, lat, s, nt, lg = (r["params"], r["latency_ms"], r["sends"], r["node_total"],
                         r["loadgen"])
    f = lambda v, d=1: "-" if v is None else f"{v:,.{d}f}"  # noqa: E731
    state = "saturated" if saturated(r) else "ok"
    return (f"| {p['target']} | {kind} | {p['clients']:,} | {p['rate']:,.0f} | {f(lat['p50'])} | "
            f"{f(lat['p99'])} | {f(lat['max'])} | {s['offered_per_s']:,.0f} | "
            f"{s['acked_per_s']:,.0f} | {state} | {nt['cpu_pct']:.0f} % | "
            f"{f(nt['rss_kb_per_waiting_poll'])} / {f(nt['rss_delta_kb_per_waiting_poll'])} | "
            f"{lg['cpu_pct_max_proc']:.0f} % |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", default="5000:1000,10000:1000", help="C:R,C:R,...")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--sat-clients", type=int, default=1000)
    p.add_argument("--sat-duration", type=float, default=10.0)
    p.add_argument("--sat-hpchat", default="", help="rates for hpchat's saturation series")
    p.add_argument("--sat-nchan", default="", help="rates for Nchan's saturation series")
    p.add_argument("--ramp-rate", type=float, default=1000.0)
    p.add_argument("--json-out")
    args = p.parse_args()
    extra = ["--ramp-rate", str(args.ramp_rate)]
    results: list[tuple[str, dict]] = []

    def keep(kind, r):
        if not r:
            return
        r["series"] = kind
        results.append((kind, r))
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")

    for point in filter(None, args.points.split(",")):
        c, rate = point.split(":")
        for target in ("hpchat", "nchan"):
            keep("load", run(target, int(c), float(rate), args.duration, extra))
    for target, rates in (("hpchat", args.sat_hpchat), ("nchan", args.sat_nchan)):
        for rate in filter(None, rates.split(",")):
            r = run(target, args.sat_clients, float(rate), args.sat_duration, extra)
            keep("saturation", r)
            if r and saturated(r):
                break  # no need to go higher
    print("| server | series | C | R offered | p50 ms | p99 ms | max ms | offered/s | acked/s "
          "| state | server CPU | KB per waiting client (total / above idle) "
          "| loadgen busiest proc |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|")
    for kind, r in results:
        print(row(r, kind))
    print()
    # ratios
    byKey = {(r["params"]["target"], r["params"]["clients"], r["params"]["rate"]): r
             for kind, r in results if kind == "load"}
    for point in filter(None, args.points.split(",")):
        c, rate = int(point.split(":")[0]), float(point.split(":")[1])
        h, n = byKey.get(("hpchat", c, rate)), byKey.get(("nchan", c, rate))
        if h and n:
            hp, np_ = h["latency_ms"]["p99"], n["latency_ms"]["p99"]
            hm, nm = (h["node_total"]["rss_kb_per_waiting_poll"],
                      n["node_total"]["rss_kb_per_waiting_poll"])
            hd, nd = (h["node_total"]["rss_delta_kb_per_waiting_poll"],
                      n["node_total"]["rss_delta_kb_per_waiting_poll"])
            print(f"C={c:,} R={rate:,.0f}: p99 hpchat/Nchan = {hp:.1f}/{np_:.1f} ms = "
                  f"{hp / np_:.1f}x; memory per waiting client {hm:.1f}/{nm:.1f} KB = "
                  f"{hm / nm:.2f}x total, {hd:.1f}/{nd:.1f} KB = {hd / nd:.2f}x above idle")
    best = {}
    for kind, r in results:
        if kind != "saturation":
            continue
        t = r["params"]["target"]
        best[t] = max(best.get(t, 0.0), r["sends"]["acked_per_s"])
    if "hpchat" in best and "nchan" in best:
        print(f"throughput at saturation (C={args.sat_clients:,}, most acked sends/s seen): "
              f"hpchat {best['hpchat']:,.0f}/s, Nchan {best['nchan']:,.0f}/s = "
              f"{best['hpchat'] / best['nchan']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
