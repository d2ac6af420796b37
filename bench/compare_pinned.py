#!/usr/bin/env python3
"""
hpchat (long-poll and SSE), nginx + Nchan and Centrifugo side by side, one core each: the
server pinned to one CPU, the load generator to the other.

  python bench/compare_pinned.py --json-out bench/results/pinned.jsonl
  python bench/compare_pinned.py --targets nchan,centrifugo --points 1000:300 --no-saturation
  python bench/compare_pinned.py --table bench/results/pinned.jsonl     # print the tables only

For every point C:R and every target, a fresh server is started on --server-cpu (`taskset`;
hpchat one twistd process, Nchan one nginx worker, Centrifugo GOMAXPROCS=1) and
bench/loadgen.py runs on --loadgen-cpu (all its worker processes). Then, per target, a
saturation series at --sat-clients raises R until p99 goes over --sat-p99 ms or the sends stop
keeping up; the last rate below that is the target's saturation point. Every result is one
JSON line (with the load average before and after the run) appended to --json-out; at the end
the Markdown tables (every run; the ratios per point hpchat / Nchan and hpchat / Centrifugo)
are printed.

Runners: bench/lg_node.py (hpchat, hpchat-sse), bench/lg_nchan.py, bench/lg_centrifugo.py
(which needs bench/centrifugo/build.sh run once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ("hpchat", "hpchat-sse", "nchan", "centrifugo")
RUNNERS = {"hpchat": ("lg_node.py", []), "hpchat-sse": ("lg_node.py", ["--target", "hpchat-sse"]),
           "nchan": ("lg_nchan.py", []), "centrifugo": ("lg_centrifugo.py", [])}
POINTS = "1000:300,5000:200,10000:500,10000:1000"
SATURATION = {"hpchat": "1000,1500,2000,2500,3000,3500",
              "hpchat-sse": "1000,1500,2000,2500,3000,3500,4000,5000",
              "nchan": "2000,5000,8000,12000,16000,20000",
              "centrifugo": "2000,5000,8000,12000,16000,20000"}
NAMES = {"hpchat": "hpchat long-poll", "hpchat-sse": "hpchat SSE", "nchan": "Nchan",
         "centrifugo": "Centrifugo"}
GENERATOR_BOUND = 90.0  # % of the generator's core: beyond it the generator may be the limit


def run(args, target: str, clients: int, rate: float, duration: float, series: str) -> dict:
    script, extra = RUNNERS[target]
    command = (["taskset", "-c", args.loadgen_cpu, sys.executable, os.path.join(HERE, script),
                "--wrap", f"taskset -c {args.server_cpu}", "--", "-c", str(clients),
                "-r", str(rate), "--duration", str(duration), "--ramp-rate",
                str(args.ramp_rate), "--procs", str(args.procs), "-q"] + extra)
    print(f"compare_pinned: {' '.join(command)}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    tmpfs = target.startswith("hpchat") and args.hpchat_tmpfs
    if tmpfs:
        env["TMPDIR"] = "/dev/shm"  # lg_node.py's folder, and so the SQLite file, on tmpfs
    before = os.getloadavg()
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    after = os.getloadavg()
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        print(f"compare_pinned: {target} C={clients} R={rate} failed ({out.returncode})",
              file=sys.stderr, flush=True)
        return {}
    result = json.loads(lines[-1])
    result["series"] = series
    result["pinning"] = {"server_cpu": args.server_cpu, "loadgen_cpu": args.loadgen_cpu}
    result["load_avg"] = {"before": [round(x, 2) for x in before],
                          "after": [round(x, 2) for x in after]}
    result["command"] = (("TMPDIR=/dev/shm " if tmpfs else "") + " ".join(command[3:]))
    result["storage_tmpfs"] = tmpfs
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps(result, separators=(",", ":")) + "\n")
    return result


def saturated(r: dict, p99: float) -> bool:
    s, lat = r["sends"], r["latency_ms"]
    return (s["acked_per_s"] < 0.95 * s["offered_per_s"] or s["skipped_in_window"] > 0
            or s["undelivered"] > 0 or (lat["p99"] or 0) > p99)


def generatorBound(r: dict) -> bool:
    return r["loadgen"]["cpu_pct_total"] >= GENERATOR_BOUND


def cpuPerMessage(r: dict) -> float | None:
    """
    The server's CPU time per acked message, in µs: steadier than latency on a shared machine.
    """
    acked = r["sends"]["acked_per_s"]
    return r["node_total"]["cpu_pct"] * 10000.0 / acked if acked else None


def fmt(v, d: int = 1) -> str:
    return "-" if v is None else f"{v:,.{d}f}"


def name(r: dict) -> str:
    target = r["params"]["target"]
    return NAMES.get(target, target) + (" (tmpfs)" if r.get("storage_tmpfs") else "")


def table(results: list[dict], p99: float) -> str:
    out = ["| server | series | C | R | p50 ms | p99 ms | acked/s | server CPU | CPU µs/msg | "
           "KB per client above idle | generator CPU (busiest proc) | load avg (1 min) | state |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        p, lat, s, nt, lg = r["params"], r["latency_ms"], r["sends"], r["node_total"], r["loadgen"]
        state = "over" if saturated(r, p99) else "ok"
        if generatorBound(r):
            state += ", generator-bound"
        load = r.get("load_avg", {}).get("before", [None])[0]
        out.append(f"| {name(r)} | {r.get('series', '')} | "
                   f"{p['clients']:,} | {p['rate']:,.0f} | {fmt(lat['p50'])} | "
                   f"{fmt(lat['p99'])} | {s['acked_per_s']:,.0f} | {nt['cpu_pct']:.0f} % | "
                   f"{fmt(cpuPerMessage(r), 0)} | "
                   f"{fmt(nt['rss_delta_kb_per_client'])} | {lg['cpu_pct_total']:.0f} % "
                   f"({lg['cpu_pct_max_proc']:.0f} %) | {fmt(load, 2)} | {state} |")
    return "\n".join(out)


def ratio(a, b, d: int = 2) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.{d}f}×"


def ratios(results: list[dict], p99: float) -> str:
    points: dict[tuple, dict[str, dict]] = {}
    for r in results:
        if r.get("series") == "load":
            p = r["params"]
            key = p["target"] + ("+tmpfs" if r.get("storage_tmpfs") else "")
            points.setdefault((p["clients"], p["rate"]), {})[key] = r
    out = ["| C | R | vs | p99 (hpchat / other) | memory per client above idle | "
           "server CPU | CPU per message |", "|---:|---:|---|---:|---:|---:|---:|"]
    for (c, rate), by in sorted(points.items()):
        for mine in ("hpchat", "hpchat+tmpfs", "hpchat-sse", "hpchat-sse+tmpfs"):
            h = by.get(mine)
            if h is None:
                continue
            for other in ("nchan", "centrifugo"):
                o = by.get(other)
                if o is None:
                    continue
                hl, ol = h["latency_ms"]["p99"], o["latency_ms"]["p99"]
                hm, om = (h["node_total"]["rss_delta_kb_per_client"],
                          o["node_total"]["rss_delta_kb_per_client"])
                hc, oc = h["node_total"]["cpu_pct"], o["node_total"]["cpu_pct"]
                out.append(f"| {c:,} | {rate:,.0f} | {name(h)} / {NAMES[other]} | "
                           f"{fmt(hl)} / {fmt(ol)} ms = {ratio(hl, ol, 1)} | "
                           f"{fmt(hm)} / {fmt(om)} KB = {ratio(hm, om)} | "
                           f"{hc:.0f} / {oc:.0f} % = {ratio(hc, oc, 1)} | "
                           f"{fmt(cpuPerMessage(h), 0)} / {fmt(cpuPerMessage(o), 0)} µs = "
                           f"{ratio(cpuPerMessage(h), cpuPerMessage(o), 1)} |")
    best: dict[str, tuple[float, dict]] = {}
    for r in results:
        if r.get("series") == "saturation" and not saturated(r, p99):
            t = name(r)
            if r["sends"]["acked_per_s"] > best.get(t, (0.0, None))[0]:
                best[t] = (r["sends"]["acked_per_s"], r)
    if best:
        out += ["", f"Saturation (highest acked rate with p99 ≤ {p99:g} ms):", ""]
        for t in sorted(best):
            rate, r = best[t]
            bound = " (generator-bound: a lower bound)" if generatorBound(r) else ""
            out.append(f"* {t}: {rate:,.0f} msgs/s at C = "
                       f"{r['params']['clients']:,}, p99 {fmt(r['latency_ms']['p99'])} ms, "
                       f"server CPU {r['node_total']['cpu_pct']:.0f} %{bound}")
        for mine in sorted(t for t in best if t.startswith("hpchat")):
            for other in (NAMES["nchan"], NAMES["centrifugo"]):
                if other in best:
                    out.append(f"* {mine} / {other}: {ratio(best[mine][0], best[other][0])}")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated, of {', '.join(TARGETS)}")
    p.add_argument("--points", default=POINTS, help="C:R,C:R,...")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per point")
    p.add_argument("--sat-clients", type=int, default=1000)
    p.add_argument("--sat-duration", type=float, default=10.0)
    p.add_argument("--sat-p99", type=float, default=50.0, help="p99 bound of saturation (ms)")
    for t in TARGETS:
        p.add_argument(f"--sat-{t}", default=SATURATION[t], help=f"{t}'s saturation rates")
    p.add_argument("--no-saturation", action="store_true")
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--loadgen-cpu", default="1")
    p.add_argument("--procs", type=int, default=2, help="load generator worker processes")
    p.add_argument("--ramp-rate", type=float, default=1000.0)
    p.add_argument("--hpchat-tmpfs", action="store_true",
                   help="hpchat's SQLite file on tmpfs (/dev/shm: its fsyncs cost nothing), to "
                        "measure its CPU per core apart from the disk's latency")
    p.add_argument("--json-out", help="append every JSON result to this file")
    p.add_argument("--table", metavar="JSONL", help="only print the tables of a results file")
    args = p.parse_args()
    if args.table:
        with open(args.table) as f:
            results = [json.loads(line) for line in f if line.startswith("{")]
        results = [r for r in results if "pinning" in r]
    else:
        targets = [t for t in args.targets.split(",") if t]
        for t in targets:
            if t not in TARGETS:
                p.error(f"unknown target {t!r}")
        results = []
        for point in filter(None, args.points.split(",")):
            c, rate = point.split(":")
            for t in targets:
                r = run(args, t, int(c), float(rate), args.duration, "load")
                if r:
                    results.append(r)
        if not args.no_saturation:
            for t in targets:
                for rate in filter(None, getattr(args, f"sat_{t.replace('-', '_')}").split(",")):
                    r = run(args, t, args.sat_clients, float(rate), args.sat_duration,
                            "saturation")
                    if not r:
                        break
                    results.append(r)
                    if saturated(r, args.sat_p99):
                        break  # no need to go higher
    print(table(results, args.sat_p99))
    print()
    print(ratios(results, args.sat_p99))
    return 0


if __name__ == "__main__":
    sys.exit(main())
