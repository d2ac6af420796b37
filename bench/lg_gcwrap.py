#!/usr/bin/env python3
"""
Run a Python program (e.g. twistd) with its garbage-collector pauses logged, without changing
the program: every collection of generation >= 1 that takes longer than --min-ms is written to
stderr, and a summary per generation is written at exit.

  python bench/lg_gcwrap.py [--min-ms 5] -- /path/to/twistd -n --pidfile= hpchat --config FILE
  python bench/lg_node.py --wrap "python bench/lg_gcwrap.py --" -- -c 5000 -r 100

--threshold A,B,C runs the program with gc.set_threshold(A, B, C), to try a GC tuning.

With --census, the cyclic garbage is kept (gc.DEBUG_SAVEALL) and, after each collection of
generation 2, the types of the objects found in reference cycles are tallied and printed (top
20) and the garbage is dropped: this names what creates the cycles that make full
collections necessary. Only for diagnosis: it changes what gets freed when.
"""

from __future__ import annotations

import atexit
import gc
import runpy
import signal
import sys
import time

from wrapargs import err, wrapperArgs


def _describe(parent, child) -> str:
    """
    How C{parent} refers to C{child}: an attribute or key name when one can be found.
    """
    if isinstance(parent, dict):
        for key, value in parent.items():
            if value is child:
                return f"[{key!r}]"
    names = getattr(parent, "__slots__", ())
    for name in names if isinstance(names, (tuple, list)) else ():
        if getattr(parent, name, None) is child:
            return f".{name}"
    if getattr(parent, "__dict__", None) is child:
        return ".__dict__"
    if getattr(parent, "__closure__", None) is child:
        return ".__closure__"
    return ""


def _label(o) -> str:
    name = type(o).__qualname__
    if name == "function":
        return f"function {o.__qualname__}"
    if name in ("method",):
        return f"method {o.__func__.__qualname__}"
    if name == "cell":
        return "cell"
    return name


def _holders(o, garbage, depth=8) -> str:
    """
    A chain of referrers (within C{garbage}) leading to C{o}, nearest first.
    """
    ids = {id(g) for g in garbage}
    chain = [_label(o)]
    seen = {id(o)}
    for _ in range(depth):
        referrers = [r for r in gc.get_referrers(o) if id(r) in ids and id(r) not in seen]
        if not referrers:
            break
        # Prefer a non-container holder to show the interesting link.
        referrers.sort(key=lambda r: type(r).__name__ in ("dict", "list", "tuple", "cell"))
        parent = referrers[0]
        chain.append(f"<-{_describe(parent, o)}- {_label(parent)}"
                     + (f" (+{len(referrers) - 1} more)" if len(referrers) > 1 else ""))
        seen.add(id(parent))
        o = parent
    return " ".join(chain)


def _cycle(start, garbage) -> str:
    """
    The shortest reference path from C{start} back to itself through C{garbage}.
    """
    ids = {id(o) for o in garbage}
    previous = {id(start): None}
    objects = {id(start): start}
    queue = [start]
    while queue:
        nextQueue = []
        for o in queue:
            for child in gc.get_referents(o):
                if child is start:
                    path = [child, o]
                    key = id(o)
                    while previous[key] is not None:
                        key = previous[key]
                        path.append(objects[key])
                    path.reverse()
                    parts = [_label(path[0])]
                    for parent, item in zip(path, path[1:]):
                        parts.append(f"-{_describe(parent, item)}-> {_label(item)}")
                    return " ".join(parts)
                if id(child) in ids and id(child) not in previous:
                    previous[id(child)] = id(o)
                    objects[id(child)] = child
                    nextQueue.append(child)
        queue = nextQueue
        if len(previous) > 20_000:
            break
    return None


def main() -> None:
    found, argv = wrapperArgs(sys.argv[1:], ("--census",), ("--min-ms", "--threshold"),
                              __doc__)
    minMs = float(found.get("--min-ms", 5.0))
    census = bool(found.get("--census"))
    if "--threshold" in found:
        gc.set_threshold(*(int(x) for x in str(found["--threshold"]).split(",")))
        # The node sets its own thresholds at startup (hpchat.process); the one tried wins.
        gc.set_threshold = lambda *args: err(f"[gcwrap] kept the tried threshold, not {args}\n")
    started: dict[int, float] = {}
    totals = {g: [0, 0.0, 0.0] for g in range(3)}  # count, total ms, max ms

    def callback(phase, info):
        generation = info["generation"]
        if phase == "start":
            started[generation] = time.perf_counter()
            return
        ms = (time.perf_counter() - started.pop(generation, time.perf_counter())) * 1000.0
        total = totals[generation]
        total[0] += 1
        total[1] += ms
        total[2] = max(total[2], ms)
        if generation == 2:
            err(f"[gcwrap] {time.strftime('%H:%M:%S')} cumulative: " + ", ".join(
                f"gen{g} {c} x {t:.0f} ms" for g, (c, t, _m) in totals.items())
                + f"; process CPU {time.process_time():.2f} s\n")
        if generation >= 1 and ms >= minMs:
            err(f"[gcwrap] {time.strftime('%H:%M:%S')} gen{generation} "
                             f"collection {ms:.1f} ms, collected {info['collected']}\n")
        if census and generation == 2 and gc.garbage:
            from collections import Counter
            kinds = Counter(type(o).__qualname__ for o in gc.garbage)
            err(f"[gcwrap] census of {len(gc.garbage)} objects in cycles: "
                             + ", ".join(f"{k}={n}" for k, n in kinds.most_common(20)) + "\n")
            # Tally the functions of cyclic frames and coroutines: where the cycles come from.
            where = Counter()
            for o in gc.garbage:
                code = getattr(o, "f_code", None) or getattr(o, "cr_code", None) \
                    or getattr(o, "gi_code", None)
                if code is not None:
                    where[f"{code.co_name}@{code.co_filename.rsplit('/', 2)[-1]}"] += 1
            request = next((o for o in gc.garbage if type(o).__name__ == "HPChatRequest"), None)
            if request is not None:
                err("[gcwrap] what holds a request: " + _holders(request, gc.garbage)
                                 + "\n")
            tried = 0
            for o in gc.garbage:
                if type(o).__name__ not in ("KleinRequest", "HPChatRequest", "function",
                                            "cell", "Deferred", "MapAdapter"):
                    continue
                tried += 1
                cycle = _cycle(o, gc.garbage)
                if cycle is not None:
                    err(f"[gcwrap] a cycle: {cycle}\n")
                    break
                if tried > 300:
                    break
            if where:
                err("[gcwrap] cyclic frames/coroutines: " + ", ".join(
                    f"{k}={n}" for k, n in where.most_common(15)) + "\n")
            gc.garbage.clear()

    def summary():
        for generation, (count, totalMs, maxMs) in totals.items():
            err(f"[gcwrap] gen{generation}: {count} collections, {totalMs:.0f} ms "
                             f"in all, longest {maxMs:.1f} ms\n")

    if census:
        gc.set_debug(gc.DEBUG_SAVEALL)
    gc.callbacks.append(callback)
    atexit.register(summary)
    # twistd stops on SIGTERM through the reactor, so atexit runs; be explicit for SIGINT too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
