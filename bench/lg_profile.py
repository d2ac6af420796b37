#!/usr/bin/env python3
"""
Summarize a py-spy speedscope profile of a node: the top functions by self and by inclusive
time, and the share of the hot-path categories (HTTP parsing, Klein/werkzeug routing, JWT,
JSON, Deferred machinery, persister, SQLite, logging, metrics, GC...).

  py-spy record -p PID -d 20 -r 200 -o prof.json --format speedscope --nonblocking
  python bench/lg_profile.py prof.json [--top 30] [--thread MainThread]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

# (category, predicate on "function (file)") in priority order: the first match, walking
# from the leaf up, names the category of a sample's self time.
CATEGORIES = [
    ("garbage collector (needs --native)", lambda n, f: n.startswith("gc_collect")
     or n in ("collect_with_callback", "collect_generations", "gc_collect_main")),
    ("sqlite (writer/reader threads)", lambda n, f: "sqlite" in f and "storage" in f),
    ("persister", lambda n, f: f.endswith("hpchat/persister.py")),
    ("JWT / auth", lambda n, f: "/jwt/" in f or f.endswith("hpchat/web/auth.py")),
    ("JSON encode/decode", lambda n, f: "/json/" in f),
    ("metrics (prometheus_client)", lambda n, f: "prometheus_client" in f),
    ("logging (twisted.logger)", lambda n, f: "twisted/logger" in f),
    ("Klein", lambda n, f: "/klein/" in f),
    ("werkzeug routing", lambda n, f: "/werkzeug/" in f),
    ("zope.interface", lambda n, f: "zope/interface" in f),
    ("Deferred / coroutine machinery", lambda n, f: f.endswith("twisted/internet/defer.py")
     or f.endswith("hpchat/deferreds.py")),
    ("twisted.web HTTP server", lambda n, f: "twisted/web/" in f),
    ("reactor / TCP transport", lambda n, f: "twisted/internet/" in f
     or "twisted/protocols/" in f),
    ("threadpool handoff", lambda n, f: "twisted/python/threadpool" in f
     or "twisted/_threads" in f or f.endswith("threading.py") or f.endswith("queue.py")),
    ("hpchat API handlers", lambda n, f: f.endswith("hpchat/web/api.py")),
    ("hpchat streams", lambda n, f: f.endswith("hpchat/streams.py")),
    ("hpchat notify", lambda n, f: f.endswith("hpchat/notify.py")),
    ("hpchat other", lambda n, f: "/hpchat/" in f),
    ("stdlib / other", lambda n, f: True),
]


def load(path: str):
    with open(path) as f:
        data = json.load(f)
    frames = data["shared"]["frames"]
    names = [f"{fr['name']} ({fr.get('file', '?')}:{fr.get('line', '?')})" for fr in frames]
    return data, frames, names


def short(name: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        i = name.find(marker)
        if i >= 0:
            j = name.rfind("(", 0, i)
            return name[:j + 1] + name[i + len(marker):]
    return name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--thread", default=None,
                   help="only the profile (thread) whose name contains this")
    p.add_argument("--callers", metavar="TEXT",
                   help="also show the call chains (6 frames) leading to frames whose "
                        "'function (file)' contains TEXT")
    args = p.parse_args(argv)
    data, frames, names = load(args.profile)
    selfTime: Counter = Counter()
    inclusive: Counter = Counter()
    categories: Counter = Counter()
    threads: Counter = Counter()
    chains: Counter = Counter()
    total = 0.0
    for prof in data["profiles"]:
        if args.thread and args.thread not in prof.get("name", ""):
            continue
        samples, weights = prof["samples"], prof.get("weights") or [1] * len(prof["samples"])
        for stack, weight in zip(samples, weights):
            if not stack:
                continue
            total += weight
            threads[prof.get("name", "?")] += weight
            selfTime[stack[-1]] += weight
            if args.callers:
                for k, index in enumerate(stack):
                    if args.callers in names[index]:
                        chains[" <- ".join(short(names[i]).split(" (")[0]
                                           for i in reversed(stack[max(0, k - 6):k + 1]))] += weight
                        break
            for index in set(stack):
                inclusive[index] += weight
            gcFrame = next((i for i in stack if frames[i]["name"].startswith("gc_collect")
                            or frames[i]["name"] == "collect_generations"), None)
            for index in ([gcFrame] if gcFrame is not None else []) + list(reversed(stack)):
                fr = frames[index]
                name, file = fr["name"], fr.get("file", "")
                category = next(c for c, test in CATEGORIES if test(name, file))
                if category != "stdlib / other" or index == stack[0]:
                    categories[category] += weight
                    break
    if not total:
        print("no samples")
        return 1
    pct = lambda w: 100.0 * w / total  # noqa: E731
    unit = data["profiles"][0].get("unit", "samples") if data["profiles"] else "samples"
    print(f"{total:.1f} {unit} of samples (py-spy omits idle time unless --idle)")
    print("\nthreads:")
    for name, w in threads.most_common():
        print(f"  {pct(w):5.1f}%  {w:8.2f}  {name}")
    print("\nself time by category (leaf-most frame that belongs to a known component):")
    for name, w in categories.most_common():
        print(f"  {pct(w):5.1f}%  {name}")
    print(f"\ntop {args.top} functions by self time:")
    for index, w in selfTime.most_common(args.top):
        print(f"  {pct(w):5.1f}%  {short(names[index])}")
    print(f"\ntop {args.top} functions by inclusive time:")
    for index, w in inclusive.most_common(args.top):
        print(f"  {pct(w):5.1f}%  {short(names[index])}")
    if args.callers:
        print(f"\ncall chains into {args.callers!r}:")
        for chain, w in chains.most_common(args.top):
            print(f"  {pct(w):5.1f}%  {chain}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
