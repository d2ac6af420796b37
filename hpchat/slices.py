# -*- test-case-name: tests.test_slices -*-
"""
A periodic sweep over many members, one slice at a time.

A loop that visits every open stream or every online user in one tick stalls the reactor
for that whole visit: at 10,000 members, tens of milliseconds every few seconds, which every
message sent meanwhile waits for (C{bench/lg_stallwrap.py} named the heartbeats and the
presence loops as the node's longest turns). L{Slices} keeps the members in C{count} slices
(by their hash) and hands out, at each tick, only the slices whose turn came since the last
one: every member is still visited once per C{period}, in C{count} small visits.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Slices(Generic[T]):
    """
    A set of members in C{count} slices (by hash); slice C{n % count} is due at each
    multiple C{n} of C{period / count} seconds.
    """

    __slots__ = ("_slices", "_step", "_last", "_size")

    def __init__(self, count: int, period: float, now: float) -> None:
        if count < 1 or period <= 0:
            raise ValueError("a sweep needs at least one slice and a period")
        self._slices: list[set[T]] = [set() for _ in range(count)]
        self._step = period / count
        self._last = int(now // self._step)
        self._size = 0

    @property
    def tick(self) -> float:
        """
        How often a loop calls L{due} to visit one slice at a time.
        """
        return self._step

    def _slice(self, member: object) -> set[T]:
        # Hashed again inside a tuple: an object's own hash is its address, whose low bits
        # repeat with the allocator's block size and would leave most slices empty.
        return self._slices[hash((member,)) % len(self._slices)]

    def add(self, member: T) -> None:
        members = self._slice(member)
        if member not in members:
            members.add(member)
            self._size += 1

    def discard(self, member: T) -> None:
        members = self._slice(member)
        if member in members:
            members.discard(member)
            self._size -= 1

    def __contains__(self, member: object) -> bool:
        return member in self._slice(member)

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[T]:
        for members in self._slices:
            yield from members

    def due(self, now: float) -> list[T]:
        """
        The members of the slices whose turn came since the last call, each slice at most
        once (all of them once a whole period has passed), as a list the caller may change
        the set under.
        """
        current = int(now // self._step)
        count = len(self._slices)
        first = max(self._last + 1, current - count + 1)
        self._last = max(self._last, current)
        members: list[T] = []
        for n in range(first, current + 1):
            members.extend(self._slices[n % count])
        return members
