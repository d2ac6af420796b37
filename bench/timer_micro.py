#!/usr/bin/env python3
"""
The cost of a long-poll's timeout, in process: a timer per poll on the reactor
(C{reactor.callLater}, cancelled when the poll is answered) against the polls' shared timer
(L{hpchat.deadlines.Deadlines}), with C{--waiting} polls already waiting:

  PYTHONPATH=. taskset -c 0 python bench/timer_micro.py [--waiting 10000] [--polls 30000]

Each poll adds a timeout of 25 s and the oldest waiting poll is answered (its timeout
cancelled or discarded). Prints microseconds per poll, and each rebuild of the reactor's
heap (which drops the cancelled calls once they are half of it) with how long it took.
"""

from __future__ import annotations

import argparse
import heapq
import random
import time
from collections import deque

from twisted.internet import reactor, task

from hpchat.deadlines import Deadlines


def reactorTimers(waiting: int, polls: int) -> float:
    def nothing() -> None:
        pass

    pending = deque(reactor.callLater(25 + random.random(), nothing) for _ in range(waiting))
    reactor._insertNewDelayedCalls()
    started = time.perf_counter()
    for _ in range(polls):
        pending.append(reactor.callLater(25.0, nothing))
        pending.popleft().cancel()
        # What runUntilCurrent does with them on every turn of the reactor.
        reactor._insertNewDelayedCalls()
        if (reactor._cancellations > 50
                and reactor._cancellations > len(reactor._pendingTimedCalls) >> 1):
            rebuilt = time.perf_counter()
            reactor._cancellations = 0
            reactor._pendingTimedCalls = [c for c in reactor._pendingTimedCalls
                                          if not c.cancelled]
            heapq.heapify(reactor._pendingTimedCalls)
            print(f"  reactor heap rebuilt: {(time.perf_counter() - rebuilt) * 1e3:.2f} ms "
                  f"({len(reactor._pendingTimedCalls)} calls)")
    elapsed = time.perf_counter() - started
    for call in pending:
        call.cancel()
    return elapsed / polls * 1e6


def sharedTimer(waiting: int, polls: int) -> float:
    clock = task.Clock()
    deadlines: Deadlines[object] = Deadlines(clock, lambda item: None)
    pending: deque[tuple[object, int]] = deque()
    for _ in range(waiting):
        item = object()
        pending.append((item, deadlines.add(item, 25 + random.random())))
    started = time.perf_counter()
    for _ in range(polls):
        item = object()
        pending.append((item, deadlines.add(item, 25.0)))
        deadlines.discard(*pending.popleft())
        clock.advance(0.0003)
    return (time.perf_counter() - started) / polls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--waiting", type=int, default=10000)
    p.add_argument("--polls", type=int, default=30000)
    args = p.parse_args()
    perPoll = reactorTimers(args.waiting, args.polls)
    print(f"a reactor timer per poll: {perPoll:.2f} us per poll")
    print(f"one shared timer (hpchat.deadlines): {sharedTimer(args.waiting, args.polls):.2f} "
          f"us per poll")


if __name__ == "__main__":
    main()
