#!/usr/bin/env python3
"""
Run a Python program (e.g. twistd) with its garbage-collector pauses logged, without changing
the program: every collection of generation >= 1 that takes longer than --min-ms is written to
stderr, and a summary per generation is written at exit.

  python bench/lg_gcwrap.py [--min-ms 5] -- /path/to/twistd -n --pidfile= hpchat --config FILE
  python bench/lg_node.py --wrap "python bench/lg_gcwrap.py --" -- -c 5000 -r 100

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


def main() -> None:
    argv = sys.argv[1:]
    minMs = 5.0
    census = False
    while argv[:1] in (["--min-ms"], ["--census"]):
        if argv[0] == "--census":
            census = True
            argv = argv[1:]
        else:
            minMs = float(argv[1])
            argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit(__doc__)
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
        if generation >= 1 and ms >= minMs:
            sys.stderr.write(f"[gcwrap] {time.strftime('%H:%M:%S')} gen{generation} "
                             f"collection {ms:.1f} ms, collected {info['collected']}\n")
            sys.stderr.flush()
        if census and generation == 2 and gc.garbage:
            from collections import Counter
            kinds = Counter(type(o).__qualname__ for o in gc.garbage)
            sys.stderr.write(f"[gcwrap] census of {len(gc.garbage)} objects in cycles: "
                             + ", ".join(f"{k}={n}" for k, n in kinds.most_common(20)) + "\n")
            # Tally the functions of cyclic frames and coroutines: where the cycles come from.
            where = Counter()
            for o in gc.garbage:
                code = getattr(o, "f_code", None) or getattr(o, "cr_code", None) \
                    or getattr(o, "gi_code", None)
                if code is not None:
                    where[f"{code.co_name}@{code.co_filename.rsplit('/', 2)[-1]}"] += 1
            if where:
                sys.stderr.write("[gcwrap] cyclic frames/coroutines: " + ", ".join(
                    f"{k}={n}" for k, n in where.most_common(15)) + "\n")
            sys.stderr.flush()
            gc.garbage.clear()

    def summary():
        for generation, (count, totalMs, maxMs) in totals.items():
            sys.stderr.write(f"[gcwrap] gen{generation}: {count} collections, {totalMs:.0f} ms "
                             f"in all, longest {maxMs:.1f} ms\n")
        sys.stderr.flush()

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
