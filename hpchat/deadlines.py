# -*- test-case-name: tests.test_deadlines -*-
"""
The timeouts of many waiting long-polls on one timer.

A timer per poll (C{reactor.callLater}) costs its DelayedCall, a push onto the reactor's heap
of every pending call, whose order is a Python-level comparison (some 14 of them with 10,000
polls waiting), and a cancellation when the poll is answered, nearly always before it times
out. The reactor drops cancelled calls by rebuilding its heap once they are half of it: with
10,000 polls waiting, a pause of 4-7 ms every few seconds. L{Deadlines} keeps the waiting
items in buckets of C{resolution} seconds by deadline, with one timer for the earliest
bucket: adding and discarding an item is a set operation. A bucket fires when its latest
deadline has passed, so an item's timeout comes at most C{resolution} late, never early.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Generic, Hashable, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    """
    Items that each time out at a deadline: C{timedOut(item)} is called for each item still
    held once its bucket's latest deadline has passed.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, timedOut: Callable[[T], Any],
                 resolution: float = 0.05):
        self._clock = clock
        self._timedOut = timedOut
        self.resolution = resolution
        # bucket number -> (its items, its latest deadline)
        self._buckets: dict[int, tuple[set[T], list[float]]] = {}
        # The bucket numbers, earliest first, each once.
        self._order: list[int] = []
        self._timer: IDelayedCall | None = None
        self._timerBucket: int | None = None
        # The items of the bucket being timed out, while their callbacks run.
        self._firing: set[T] = set()
        self._held = 0

    def __len__(self) -> int:
        return self._held

    def add(self, item: T, timeout: float) -> int:
        """
        Time C{item} out C{timeout} seconds from now; returns the bucket to L{discard} it from.
        """
        deadline = self._clock.seconds() + timeout
        bucket = int(deadline // self.resolution)
        self._held += 1
        held = self._buckets.get(bucket)
        if held is None:
            self._buckets[bucket] = ({item}, [deadline])
            heapq.heappush(self._order, bucket)
        else:
            held[0].add(item)
            if deadline <= held[1][0]:
                return bucket
            held[1][0] = deadline
        # An earlier bucket than the timer's, or the timer's own with a later deadline.
        if self._timerBucket is None or bucket <= self._timerBucket:
            self._schedule(bucket, deadline)
        return bucket

    def discard(self, item: T, bucket: int) -> None:
        """
        Forget C{item} (added to C{bucket}); nothing if it is not held.
        """
        held = self._buckets.get(bucket)
        items = held[0] if held is not None else self._firing
        if item not in items:
            return
        # An empty bucket stays until its time (dropped and made again as items come and go,
        # it would be pushed onto the order once per coming), unless nothing is held at all:
        # then no timer is left behind either.
        items.discard(item)
        self._held -= 1
        if not self._held:
            self.clear()

    def _schedule(self, bucket: int, deadline: float) -> None:
        delay = max(0.0, deadline - self._clock.seconds())
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._fire)
        self._timerBucket = bucket

    def _fire(self) -> None:
        self._timer = None
        self._timerBucket = None
        now = self._clock.seconds()
        order = self._order
        while order:
            if not self._held:
                self.clear()
                return
            bucket = order[0]
            items, latest = self._buckets[bucket]
            if latest[0] > now:
                self._schedule(bucket, latest[0])
                return
            heapq.heappop(order)
            del self._buckets[bucket]
            # An item that an earlier callback discards is not timed out; one added now goes
            # to a new bucket.
            self._firing = items
            while items:
                self._held -= 1
                try:
                    self._timedOut(items.pop())
                except Exception:
                    self.log.failure("a timeout failed")
            self._firing = set()

    def clear(self) -> None:
        """
        Forget every item and stop the timer.
        """
        self._buckets.clear()
        self._order.clear()
        self._firing = set()
        self._held = 0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timerBucket = None
