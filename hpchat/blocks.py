# -*- test-case-name: tests.test_blocks -*-
"""
Blocks between users, as the nodes use them: the durable pairs of the store
(L{hpchat.storage.blocklist}) behind a short-lived cache.

Every node asks about pairs it serves something for: the owner of a conversation before a send
or a typing mark (either direction refuses them), the owner of an inbox before taking a
notification (the inbox user's own blocks drop it), any node answering presence. A pair's
answer is kept for at most C{ttl} seconds (default 0.5), so a block set on any node is in
force everywhere within C{ttl} plus one store read; a block set through this node is in force
here at once. Lookups of one pair at the same time share one store read.

This module knows nothing of HTTP, etcd or NSQ.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from hpchat import metrics

#: Pairs cached at most; past it the cache is emptied (it refills on demand).
MAX_CACHED = 100_000


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a.encode() < b.encode() else (b, a)


class BlockList:
    """
    @param store: an L{hpchat.storage.blocklist.IBlockStore}.
    """

    def __init__(self, clock: Any, store: Any, ttl: float = 0.5):
        self._clock = clock
        self._store = store
        self.ttl = ttl
        # Unordered pair -> (when read, the (blocker, blocked) pairs stored for it).
        self._cache: dict[tuple[str, str], tuple[float, frozenset]] = {}
        self._reading: dict[tuple[str, str], list[defer.Deferred]] = {}
        # Pairs changed here while a read of them was in flight: that read is not cached.
        self._stale: set[tuple[str, str]] = set()

    # -- lookups

    def _blocksBetween(self, a: str, b: str) -> defer.Deferred:
        """
        Fire with the frozenset of (blocker, blocked) pairs between C{a} and C{b}.
        """
        key = _pair(a, b)
        cached = self._cache.get(key)
        now = self._clock.seconds()
        if cached is not None and now - cached[0] < self.ttl:
            return defer.succeed(cached[1])
        follower: defer.Deferred = defer.Deferred()
        followers = self._reading.get(key)
        if followers is not None:
            followers.append(follower)
            return follower
        self._reading[key] = [follower]
        metrics.countSocial("block_lookups")
        d = defer.maybeDeferred(self._store.blocksBetween, key[0], key[1])
        # The errback after the callback: an error in _read reaches the followers too.
        d.addCallback(self._read, key, now).addErrback(self._failed, key)
        return follower

    def _read(self, found, key: tuple[str, str], when: float) -> None:
        value = frozenset(tuple(p) for p in found)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        if key in self._stale:
            self._stale.discard(key)
        else:
            self._cache[key] = (when, value)
        for follower in self._reading.pop(key):
            follower.callback(value)

    def _failed(self, failure, key: tuple[str, str]) -> None:
        self._stale.discard(key)
        for follower in self._reading.pop(key):
            follower.errback(failure)

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

        def done(_):
            key = _pair(blocker, blocked)
            self._cache.pop(key, None)
            if key in self._reading:
                self._stale.add(key)

        return d.addCallback(done)

    def blocksOf(self, blocker: str) -> defer.Deferred:
        return defer.maybeDeferred(self._store.blocksOf, blocker)
