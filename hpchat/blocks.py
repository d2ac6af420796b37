# -*- test-case-name: tests.test_blocks -*-
"""
Blocks between users, as the nodes use them: the durable pairs of the store
(L{hpchat.storage.blocklist}) behind a cache.

Every node asks about pairs it serves something for: the owner of a conversation before a send
or a typing mark (either direction refuses them), the owner of an inbox before taking a
notification (the inbox user's own blocks drop it), any node answering presence. A block set
on any node is in force everywhere within C{ttl} (default 0.5 s) plus one store read; a block
set through this node is in force here at once. Lookups of one pair at the same time share one
store read.

With a store that keeps a version of its blocks (L{IBlockVersion}), a pair's answer is kept
until a block changes anywhere:

  - The node knows the version read last and when that read started. A lookup while the
    known version is less than C{ttl} old is answered from the cache; otherwise it first waits
    for a refresh of the version, one read shared by every lookup meanwhile. A refresh that
    finds another version empties the cache (a new generation of it begins).
  - A pair's read is tagged with the generation current when it started, and is cached (and
    shared with later lookups) only while that generation is current. A block committed
    elsewhere is counted by the version in the same transaction: a version read started after
    the commit sees it, so every lookup later than C{ttl} after the commit has waited for
    such a read, which dropped every answer read before it. A pair read in flight while a block
    commits elsewhere may miss it; it belongs to the generation the next refresh ends, so it
    is not cached past that refresh (or is dropped by it, if it completed first). A lookup
    that joins a refresh in flight gets an answer no older than that read: C{ttl} plus one
    read.
  - A block set through this node drops the pair's answer once the store has it, and keeps a
    read of the pair in flight from being cached or shared (it may predate the change). The
    next refresh then finds a new version and empties the cache, one more read per pair.

With a store without it, a pair's answer is kept for C{ttl} seconds after its read started.

This module knows nothing of HTTP, etcd or NSQ.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from hpchat import metrics
from hpchat.deferreds import ObservableDeferred
from hpchat.storage.blocklist import IBlockVersion

#: Pairs cached at most; past it the cache is emptied (it refills on demand).
MAX_CACHED = 100_000


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a.encode() < b.encode() else (b, a)


class BlockList:
    """
    @param store: an L{hpchat.storage.blocklist.IBlockStore}, ideally also an
        L{hpchat.storage.blocklist.IBlockVersion}.
    """

    def __init__(self, clock: Any, store: Any, ttl: float = 0.5):
        self._clock = clock
        self._store = store
        self.ttl = ttl
        self._versioned = IBlockVersion.providedBy(store)
        # Unordered pair -> (tag, the (blocker, blocked) pairs stored for it). The tag is the
        # cache's generation when the read started (versioned), or when it started (not).
        self._cache: dict[tuple[str, str], tuple[float, frozenset]] = {}
        # Unordered pair -> (tag, the read in flight, its lookups).
        self._reading: dict[tuple[str, str],
                            tuple[float, defer.Deferred, ObservableDeferred]] = {}
        # The version known, when the read of it started, and the cache's generation (one
        # more each time a refresh finds another version).
        self._version: int | None = None
        self._versionAt = float("-inf")
        self._generation = 0
        self._refreshing: ObservableDeferred[None] | None = None

    # -- lookups

    def _tag(self) -> float:
        return self._generation if self._versioned else self._clock.seconds()

    def _fresh(self, tag: float) -> bool:
        if self._versioned:
            return tag == self._generation
        return self._clock.seconds() - tag < self.ttl

    def _blocksBetween(self, a: str, b: str) -> defer.Deferred:
        """
        Fire with the frozenset of (blocker, blocked) pairs between C{a} and C{b}.
        """
        key = _pair(a, b)
        if self._versionStale():
            return self._refresh().addCallback(lambda _: self._lookup(key))
        return self._lookup(key)

    def _versionStale(self) -> bool:
        """
        Whether the known blocks' version is to be read again before a lookup.
        """
        return self._versioned and self._clock.seconds() - self._versionAt >= self.ttl

    def _cached(self, key: tuple[str, str]) -> frozenset | None:
        """
        The fresh cached answer for C{key}, if there is one.
        """
        cached = self._cache.get(key)
        return cached[1] if cached is not None and self._fresh(cached[0]) else None

    def _lookup(self, key: tuple[str, str]) -> defer.Deferred:
        cached = self._cached(key)
        if cached is not None:
            return defer.succeed(cached)
        reading = self._reading.get(key)
        if reading is not None and self._fresh(reading[0]):
            return reading[2].observe()
        metrics.countSocial("block_lookups")
        tag = self._tag()
        work: defer.Deferred = defer.Deferred()
        work.addCallback(lambda found: frozenset(tuple(p) for p in found))
        # Before the lookups have the answer: a lookup's callbacks find it cached.
        work.addBoth(self._read, key, tag, work)
        shared: ObservableDeferred[frozenset] = ObservableDeferred(work, "a block lookup")
        self._reading[key] = (tag, work, shared)
        answer = shared.observe()
        defer.maybeDeferred(self._store.blocksBetween, key[0], key[1]).chainDeferred(work)
        return answer

    def _read(self, outcome: Any, key: tuple[str, str], tag: float,
              work: defer.Deferred) -> Any:
        reading = self._reading.get(key)
        if reading is None or reading[1] is not work:
            # Dropped by a change made here meanwhile, or replaced by a newer read.
            return outcome
        del self._reading[key]
        if isinstance(outcome, frozenset) and self._fresh(tag):
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[key] = (tag, outcome)
        return outcome

    def _refresh(self) -> defer.Deferred:
        """
        Fire once the known version is read anew (by the read in flight, if there is one).
        """
        if self._refreshing is None:
            metrics.countSocial("block_version_reads")
            work: defer.Deferred = defer.Deferred()
            work.addCallback(self._refreshed, self._clock.seconds())
            work.addBoth(self._refreshDone)
            self._refreshing = ObservableDeferred(work, "a blocks' version read")
            answer = self._refreshing.observe()
            defer.maybeDeferred(self._store.blocksVersion).chainDeferred(work)
            return answer
        return self._refreshing.observe()

    def _refreshed(self, version: int, started: float) -> None:
        if version != self._version:
            self._version = version
            self._generation += 1
            self._cache.clear()
        self._versionAt = started

    def _refreshDone(self, outcome: Any) -> Any:
        # A failure goes on to the lookups waiting; the known version keeps its age, so the
        # next lookup reads it again.
        self._refreshing = None
        return outcome

    def knownBetween(self, a: str, b: str) -> bool | None:
        """
        What L{between} would fire with, when it is known here now (a fresh cached answer
        under a fresh version); else C{None}, and L{between} reads it.

        For the send path: nearly every send's pair is cached, and answering it without a
        Deferred saves the chaining of one Deferred into another for each message.
        """
        if self._versionStale():
            return None
        cached = self._cached(_pair(a, b))
        return None if cached is None else bool(cached)

    def between(self, a: str, b: str) -> defer.Deferred:
        """
        Fire with True when C{a} has blocked C{b} or C{b} has blocked C{a}.
        """
        return self._blocksBetween(a, b).addCallback(bool)

    def hasBlocked(self, blocker: str, blocked: str) -> defer.Deferred:
        """
        Fire with True when C{blocker} has blocked C{blocked}.
        """
        return self._blocksBetween(blocker, blocked).addCallback(
            lambda pairs: (blocker, blocked) in pairs)

    # -- changes (by the owner of the blocker's inbox)

    def set(self, blocker: str, blocked: str, on: bool, group: int, token: int
            ) -> defer.Deferred:
        """
        Block (C{on}) or unblock, durably under the fence of C{blocker}'s inbox group; in
        force on this node once it fires.
        """
        d = defer.maybeDeferred(self._store.setBlock, blocker, blocked, on, group, token,
                                self._clock.seconds())

        def done(_: Any) -> None:
            key = _pair(blocker, blocked)
            self._cache.pop(key, None)
            # A read in flight may predate the change: its lookups get its answer, later
            # ones read again.
            self._reading.pop(key, None)

        return d.addCallback(done)

    def blocksOf(self, blocker: str) -> defer.Deferred:
        return defer.maybeDeferred(self._store.blocksOf, blocker)
