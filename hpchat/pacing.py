# -*- test-case-name: tests.test_pacing -*-
"""
How long the persister lets pass between the starts of two batches.

A commit costs the store about the same however many events it holds (SQLite: some 340 µs
of CPU and an fsync), so under load the persister waits a flush interval between batches and
each commit carries more. While the node has CPU to spare, that wait is only latency: at 200
messages/s on 5,000 event streams a 5 ms interval doubled the median delivery (6.5 against
3.2 ms), while at the saturation point a 1 ms interval cost 5 % of the throughput.
L{CommitPacing} shortens the interval while the node's process is idle enough and lengthens
it as the process gets busy.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol


class Pacing(Protocol):
    """
    What the persister asks when a batch starts.
    """

    def interval(self, now: float) -> float:
        """
        The seconds that must pass, from C{now}, before the next batch may start (unless it
        is full).
        """


class FixedPacing:
    """
    The same interval whatever the load.
    """

    def __init__(self, interval: float):
        self._interval = interval

    def interval(self, now: float) -> float:
        return self._interval


class CommitPacing:
    """
    C{shortest} while the process uses at most C{IDLE} of a core, C{longest} from C{BUSY} on,
    and in between in proportion. The process's CPU time (C{cpuTime}, both of the node's busy
    threads: the reactor and the store's writer) is read at most every C{SAMPLE} seconds of
    C{now}, when asked, and its share of the wall time since the last reading is averaged
    with the shares before it, weighted by the time each covers: after a quiet spell the
    first reading alone counts.
    """

    SAMPLE = 0.1
    IDLE = 0.5
    BUSY = 0.8

    def __init__(self, shortest: float, longest: float,
                 cpuTime: Callable[[], float] = time.process_time):
        if not 0 < shortest <= longest:
            raise ValueError(f"need 0 < shortest <= longest (got {shortest}, {longest})")
        self.shortest = shortest
        self.longest = longest
        self._cpuTime = cpuTime
        self._sampledAt: float | None = None
        self._cpuAt = 0.0
        #: The process's share of a core, smoothed (None before the second reading).
        self.busy: float | None = None
        # Until the load is known, the persister paces as it did before there was a choice.
        self._interval = longest

    def interval(self, now: float) -> float:
        if self._sampledAt is None or now < self._sampledAt:
            # The first reading, or the clock went back: start measuring from here.
            self._sampledAt, self._cpuAt = now, self._cpuTime()
        elif now - self._sampledAt >= self.SAMPLE:
            cpu = self._cpuTime()
            share = (cpu - self._cpuAt) / (now - self._sampledAt)
            # A reading over a longer span weighs more: after a quiet spell it is the load.
            weight = min(1.0, (now - self._sampledAt) / (2 * self.SAMPLE))
            self.busy = share if self.busy is None else self.busy + weight * (share - self.busy)
            self._sampledAt, self._cpuAt = now, cpu
            load = min(1.0, max(0.0, (self.busy - self.IDLE) / (self.BUSY - self.IDLE)))
            self._interval = self.shortest + load * (self.longest - self.shortest)
        return self._interval
