# -*- test-case-name: tests.test_backlog -*-
"""
The writes of each chat group that are not durable yet, and who waits for them to be.

The persister counts here every event it queues and every event that leaves its queue (written
or failed); a hand-off waits on L{GroupBacklog.drained} before it releases a group, so that the
group's next owner finds every acknowledged event in the store. Nothing polls: the waiters are
fired by the persister's flush completion, when the last event of their groups leaves.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from twisted.internet import defer


class GroupBacklog:
    """
    Per group, the number of events queued or being written.
    """

    def __init__(self) -> None:
        self._counts: Counter[int] = Counter()
        self._waiting: list[tuple[frozenset[int], defer.Deferred[None]]] = []

    def add(self, group: int) -> None:
        """
        One more event of C{group} is queued.
        """
        self._counts[group] += 1

    def remove(self, groups: Iterable[int]) -> None:
        """
        One event of each of C{groups} (a group once per event) is durable or failed.
        """
        emptied = set()
        for group in groups:
            left = self._counts[group] - 1
            if left > 0:
                self._counts[group] = left
            else:
                del self._counts[group]
                emptied.add(group)
        if emptied and self._waiting:
            self._wake(emptied)

    def count(self, groups: Iterable[int]) -> int:
        """
        The number of events of C{groups} not yet durable.
        """
        return sum(self._counts.get(group, 0) for group in set(groups))

    def drained(self, groups: Iterable[int]) -> defer.Deferred[None]:
        """
        A Deferred that fires once no event of C{groups} is queued or being written (at once
        if none is). Cancelling it (a timeout) only stops the waiting.
        """
        wanted = frozenset(groups)
        if not self.count(wanted):
            return defer.succeed(None)

        def cancelled(d: defer.Deferred[None]) -> None:
            self._waiting = [(g, w) for g, w in self._waiting if w is not d]

        d: defer.Deferred[None] = defer.Deferred(cancelled)
        self._waiting.append((wanted, d))
        return d

    def _wake(self, emptied: set[int]) -> None:
        ready: list[defer.Deferred[None]] = []
        waiting: list[tuple[frozenset[int], defer.Deferred[None]]] = []
        for groups, d in self._waiting:
            if not groups.isdisjoint(emptied) and not self.count(groups):
                ready.append(d)
            else:
                waiting.append((groups, d))
        self._waiting = waiting
        for d in ready:
            d.callback(None)
