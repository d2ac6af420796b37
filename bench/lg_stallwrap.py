#!/usr/bin/env python3
"""
Run twistd with every long turn of the reactor's work named: each timed call (callLater and
the loops built on it), each call from a thread, and each read or write event of a socket is
timed, and those longer than --min-ms are tallied by what ran (and printed as they happen with
--each). A summary goes to stderr at exit: what stalls the loop, how often, how long.

  python bench/lg_node.py --wrap "python bench/lg_stallwrap.py --min-ms 3 --" -- -c 10000 -r 500

Only for diagnosis: the timing wrapper itself costs a few microseconds a call.
"""

from __future__ import annotations

import atexit
import runpy
import signal
import sys
import time
from collections import defaultdict

from wrapargs import err, wrapperArgs


def _name(f) -> str:
    inner = getattr(f, "f", None)  # a LoopingCall's body
    if inner is not None and callable(inner):
        f = inner
    code = getattr(f, "__code__", None)
    if code is not None and "name" in code.co_freevars and f.__closure__:  # a guarded body
        loop = f.__closure__[code.co_freevars.index("name")].cell_contents
        if isinstance(loop, str):
            return f"loop {loop}"
    func = getattr(f, "__func__", f)
    name = getattr(func, "__qualname__", None) or type(f).__qualname__
    module = getattr(func, "__module__", "") or ""
    return f"{module.rsplit('.', 1)[-1]}.{name}"


def main() -> None:
    found, argv = wrapperArgs(sys.argv[1:], ("--each",), ("--min-ms",), __doc__)
    minMs = float(found.get("--min-ms", 3.0))
    each = bool(found.get("--each"))
    limit = minMs / 1000.0
    stalls: dict[str, list[float]] = defaultdict(list)
    clock = time.perf_counter
    began = clock()

    def noted(name: str, seconds: float) -> None:
        stalls[name].append(seconds)
        if each:
            err(f"[stall] {clock() - began:9.3f} s {seconds * 1000:7.1f} ms {name}\n")

    def timed(f, name=None):
        def run(*a, **kw):
            start = clock()
            try:
                return f(*a, **kw)
            finally:
                spent = clock() - start
                if spent >= limit:
                    noted(name or _name(f), spent)
        return run

    from twisted.internet import base, epollreactor

    originalCallLater = base.ReactorBase.callLater
    originalFromThread = base.ReactorBase.callFromThread

    def callLater(self, delay, f, *a, **kw):
        return originalCallLater(self, delay, timed(f), *a, **kw)

    def callFromThread(self, f, *a, **kw):
        return originalFromThread(self, timed(f, "thread: " + _name(f)), *a, **kw)

    base.ReactorBase.callLater = callLater  # type: ignore[method-assign]
    base.ReactorBase.callFromThread = callFromThread  # type: ignore[method-assign]
    originalIO = epollreactor.EPollReactor._doReadOrWrite

    def doReadOrWrite(self, selectable, fd, event):
        start = clock()
        try:
            return originalIO(self, selectable, fd, event)
        finally:
            spent = clock() - start
            if spent >= limit:
                kind = "read" if event & epollreactor.EPOLLIN else "write"
                protocol = getattr(selectable, "protocol", None)
                noted(f"{kind} {type(selectable).__name__}/{type(protocol).__name__}", spent)

    epollreactor.EPollReactor._doReadOrWrite = doReadOrWrite  # type: ignore[method-assign]

    def summary():
        elapsed = clock() - began
        total = sum(sum(v) for v in stalls.values())
        err(f"[stall] turns >= {minMs} ms over {elapsed:.0f} s: "
             f"{sum(len(v) for v in stalls.values())}, {total * 1000:.0f} ms in all\n")
        for name, spent in sorted(list(stalls.items()), key=lambda kv: -sum(kv[1])):
            spent = sorted(spent)
            err(f"[stall] {len(spent):6d} x, {sum(spent) * 1000:8.0f} ms, median "
                 f"{spent[len(spent) // 2] * 1000:6.1f} ms, longest {spent[-1] * 1000:6.1f} ms"
                 f"  {name}\n")

    atexit.register(summary)

    def every(seconds: float) -> None:
        # The summary so far, from a thread: the node may be killed before atexit runs.
        while True:
            time.sleep(seconds)
            summary()

    import threading
    threading.Thread(target=every, args=(10.0,), daemon=True).start()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
