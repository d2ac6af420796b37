"""
Tests for L{hpchat.blocks}: the block cache on a Clock over the in-memory store.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer_only

from hpchat import blocks
from hpchat.blocks import BlockList
from hpchat.storage.base import FenceRejected, IEventStore
from hpchat.storage.blocklist import IBlockStore, IBlockVersion
from hpchat.storage.conversations import IConversationStore
from hpchat.storage.presence import IPresenceStore
from tests.fakes import MemoryEventStore


class BlockListTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryEventStore()
        self.blocks = BlockList(self.clock, self.store, ttl=0.5)

    def test_directions(self):
        """
        between() is either direction; hasBlocked() one.
        """
        self.successResultOf(self.blocks.set("alice", "bob", True, 1, 1))
        self.assertTrue(self.successResultOf(self.blocks.between("bob", "alice")))
        self.assertTrue(self.successResultOf(self.blocks.hasBlocked("alice", "bob")))
        self.assertFalse(self.successResultOf(self.blocks.hasBlocked("bob", "alice")))
        self.assertFalse(self.successResultOf(self.blocks.between("bob", "carol")))

    def test_cachedForTtl(self):
        """
        A change elsewhere is in force here after ttl; a change made through this list is in
        force at once.
        """
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        self.store.blocks[("bob", "alice")] = 0.0
        self.store.blockVersion += 1
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        self.assertEqual(self.store.blockReads, 1)
        self.clock.advance(0.5)
        self.assertTrue(self.successResultOf(self.blocks.between("alice", "bob")))
        self.assertEqual(self.store.blockReads, 2)
        self.successResultOf(self.blocks.set("bob", "alice", False, 1, 1))
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))

    def test_concurrentLookupsShareARead(self):
        """
        Lookups of a pair while its read is in flight wait for that read; a change made
        meanwhile keeps that read out of the cache.
        """
        pending = defer.Deferred()
        self.store.blocksBetween = lambda a, b: pending
        first = self.blocks.between("alice", "bob")
        second = self.blocks.hasBlocked("bob", "alice")
        self.successResultOf(self.blocks.set("alice", "bob", True, 1, 1))
        pending.callback(set())
        self.assertFalse(self.successResultOf(first))
        self.assertFalse(self.successResultOf(second))
        del self.store.blocksBetween
        self.assertTrue(self.successResultOf(self.blocks.between("alice", "bob")))

    def test_knownBetweenOnlyWhileFresh(self):
        """
        knownBetween() answers from a fresh cached lookup only, and agrees with between();
        else None (never a stale answer), and the next between() reads again.
        """
        self.assertIsNone(self.blocks.knownBetween("alice", "bob"))
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        self.assertIs(self.blocks.knownBetween("bob", "alice"), False)
        self.store.blocks[("bob", "alice")] = 0.0
        self.store.blockVersion += 1
        self.clock.advance(0.5)
        self.assertIsNone(self.blocks.knownBetween("alice", "bob"))
        self.assertTrue(self.successResultOf(self.blocks.between("alice", "bob")))
        self.assertIs(self.blocks.knownBetween("alice", "bob"), True)
        self.successResultOf(self.blocks.set("bob", "alice", False, 1, 1))
        self.assertIsNone(self.blocks.knownBetween("alice", "bob"))

    def test_readFailure(self):
        """
        A failed read fails every waiting lookup and caches nothing.
        """
        self.store.blocksBetween = lambda a, b: defer.fail(RuntimeError("down"))
        self.failureResultOf(self.blocks.between("alice", "bob"), RuntimeError)
        del self.store.blocksBetween
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))

    def test_fencedWrite(self):
        """
        A write under a lapsed token fails and changes nothing.
        """
        self.store.fences[1] = 5
        self.failureResultOf(self.blocks.set("alice", "bob", True, 1, 4), FenceRejected)
        self.assertEqual(self.store.blocks, {})


@implementer_only(IEventStore, IConversationStore, IBlockStore, IPresenceStore)
class UnversionedStore(MemoryEventStore):
    """
    A store that keeps blocks but no version of them.
    """


class VersionedCacheTests(SynchronousTestCase):
    """
    With a store that keeps the blocks' version, answers are kept until a block changes.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryEventStore()
        self.blocks = BlockList(self.clock, self.store, ttl=0.5)

    def elsewhere(self, blocker: str, blocked: str, on: bool = True) -> None:
        """
        A change committed by another node: the pair and the version, together.
        """
        if on:
            self.store.blocks[(blocker, blocked)] = 0.0
        else:
            del self.store.blocks[(blocker, blocked)]
        self.store.blockVersion += 1

    def test_hitsWhileTheVersionStands(self):
        """
        While the version is unchanged, a pair is read once, however long ago: later lookups
        read only the version, once per ttl.
        """
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        self.assertEqual((self.store.blockReads, self.store.versionReads), (1, 1))
        for _ in range(40):
            self.assertFalse(self.successResultOf(self.blocks.between("bob", "alice")))
            self.assertFalse(self.successResultOf(self.blocks.hasBlocked("alice", "bob")))
            self.clock.advance(0.125)
        self.assertEqual(self.store.blockReads, 1)
        # At 0, 0.5, ..., 4.5 s.
        self.assertEqual(self.store.versionReads, 10)

    def test_oneVersionReadPerTtlShared(self):
        """
        Lookups while the version is being read wait for that one read, then are answered
        (from one read per pair).
        """
        pending: defer.Deferred = defer.Deferred()
        self.store.blocksVersion = lambda: pending
        lookups = [self.blocks.between("alice", "bob"), self.blocks.between("bob", "alice"),
                   self.blocks.hasBlocked("carol", "dave")]
        self.assertEqual([self.assertNoResult(d) for d in lookups], [None] * 3)
        self.assertEqual(self.store.blockReads, 0)
        self.clock.advance(0.3)
        pending.callback(0)
        self.assertEqual([self.successResultOf(d) for d in lookups], [False] * 3)
        self.assertEqual(self.store.blockReads, 2)
        self.clock.advance(0.1)
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        # The version is as old as its read: ttl after that read started, it is read again.
        self.clock.advance(0.1)
        again = defer.Deferred()
        self.store.blocksVersion = lambda: again
        second = self.blocks.between("alice", "bob")
        third = self.blocks.between("carol", "dave")
        self.assertNoResult(second)
        again.callback(0)
        self.assertFalse(self.successResultOf(second))
        self.assertFalse(self.successResultOf(third))
        self.assertEqual(self.store.blockReads, 2)

    def test_changeElsewhereWithinTtl(self):
        """
        A block committed elsewhere (the version raised with it) is in force here by ttl
        after the commit: the next version read empties the cache.
        """
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        self.assertFalse(self.successResultOf(self.blocks.between("carol", "dave")))
        self.clock.advance(0.3)
        self.elsewhere("bob", "alice")
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        self.clock.advance(0.2)
        self.assertTrue(self.successResultOf(self.blocks.between("alice", "bob")))
        self.assertTrue(self.successResultOf(self.blocks.hasBlocked("bob", "alice")))
        self.assertFalse(self.successResultOf(self.blocks.between("carol", "dave")))
        self.assertEqual(self.store.blockReads, 4)
        self.clock.advance(0.5)
        self.elsewhere("bob", "alice", on=False)
        self.clock.advance(0.5)
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))

    def test_pairReadInFlightWhileABlockCommitsElsewhere(self):
        """
        A pair read that misses a block committed elsewhere while it was in flight is not
        cached once a version read has seen the block, and later lookups do not join it.
        """
        self.assertFalse(self.successResultOf(self.blocks.between("carol", "dave")))
        self.clock.advance(0.5)
        pending: defer.Deferred = defer.Deferred()
        self.store.blocksBetween = lambda a, b: pending
        first = self.blocks.between("alice", "bob")
        self.elsewhere("alice", "bob")
        self.clock.advance(0.5)
        del self.store.blocksBetween
        # The version read sees the block; this lookup does not wait for the old read.
        self.assertTrue(self.successResultOf(self.blocks.between("alice", "bob")))
        # The newer read is cached; the old one, completing now, is not.
        self.assertEqual(self.blocks._cache[("alice", "bob")][1], {("alice", "bob")})
        pending.callback(set())
        self.assertFalse(self.successResultOf(first))
        self.assertEqual(self.blocks._cache[("alice", "bob")][1], {("alice", "bob")})
        self.assertTrue(self.successResultOf(self.blocks.between("alice", "bob")))
        self.assertEqual(self.store.blockReads, 2)

    def test_pairReadCompletingAfterTheRefresh(self):
        """
        A pair read started before a version read that sees a change, completing after it,
        is not cached (its lookups get its answer).
        """
        pending: defer.Deferred = defer.Deferred()
        self.store.blocksBetween = lambda a, b: pending
        first = self.blocks.between("alice", "bob")
        del self.store.blocksBetween
        self.elsewhere("alice", "bob")
        self.clock.advance(0.5)
        self.assertFalse(self.successResultOf(self.blocks.between("carol", "dave")))
        pending.callback(set())
        self.assertFalse(self.successResultOf(first))
        self.assertNotIn(("alice", "bob"), self.blocks._cache)
        self.assertTrue(self.successResultOf(self.blocks.between("alice", "bob")))

    def test_pairReadCompletingBeforeTheRefresh(self):
        """
        A pair read that completed (and was cached) before the block elsewhere is dropped by
        the version read that sees the block.
        """
        pending: defer.Deferred = defer.Deferred()
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        self.clock.advance(0.5)
        self.store.blocksVersion = lambda: pending
        waiting = self.blocks.between("alice", "bob")
        self.elsewhere("bob", "alice")
        # The refresh in flight read the version before the commit.
        pending.callback(0)
        self.assertFalse(self.successResultOf(waiting))
        del self.store.blocksVersion
        self.clock.advance(0.5)
        self.assertTrue(self.successResultOf(self.blocks.between("alice", "bob")))

    def test_pairReadDuringARefresh(self):
        """
        A pair read started under the old version and completing while a refresh that sees a
        change is in flight is dropped by that refresh.
        """
        self.assertFalse(self.successResultOf(self.blocks.between("carol", "dave")))
        pendingRead: defer.Deferred = defer.Deferred()
        self.store.blocksBetween = lambda a, b: pendingRead
        first = self.blocks.between("alice", "bob")
        self.elsewhere("alice", "bob")
        self.clock.advance(0.5)
        pendingVersion: defer.Deferred = defer.Deferred()
        self.store.blocksVersion = lambda: pendingVersion
        second = self.blocks.between("alice", "bob")
        pendingRead.callback(set())
        self.assertFalse(self.successResultOf(first))
        self.assertNoResult(second)
        del self.store.blocksBetween
        pendingVersion.callback(self.store.blockVersion)
        # The refresh emptied the cache of what was read before it; the lookup read again.
        self.assertEqual(self.blocks._cache, {("alice", "bob"): (2, {("alice", "bob")})})
        self.assertTrue(self.successResultOf(second))

    def test_changeHereInForceAtOnce(self):
        """
        A change made through this list is in force here at once, also over a read of the
        pair in flight, whose lookups get its answer while later ones read again.
        """
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        self.successResultOf(self.blocks.set("alice", "bob", True, 1, 1))
        self.assertTrue(self.successResultOf(self.blocks.between("alice", "bob")))
        pending: defer.Deferred = defer.Deferred()
        self.store.blocksBetween = lambda a, b: pending
        self.clock.advance(0.5)
        first = self.blocks.between("alice", "bob")
        del self.store.blocksBetween
        self.successResultOf(self.blocks.set("alice", "bob", False, 1, 1))
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        pending.callback({("alice", "bob")})
        self.assertTrue(self.successResultOf(first))
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))

    def test_versionReadFailure(self):
        """
        A failed version read fails every lookup waiting for it; the next lookup reads the
        version again.
        """
        pending: defer.Deferred = defer.Deferred()
        self.store.blocksVersion = lambda: pending
        lookups = [self.blocks.between("alice", "bob"), self.blocks.between("carol", "dave")]
        pending.errback(RuntimeError("down"))
        for d in lookups:
            self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.store.blockReads, 0)
        self.store.blocksVersion = lambda: defer.fail(RuntimeError("still down"))
        self.failureResultOf(self.blocks.between("alice", "bob"), RuntimeError)
        del self.store.blocksVersion
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        self.assertEqual(self.store.versionReads, 1)

    def test_boundedCache(self):
        """
        Past MAX_CACHED pairs the cache is emptied and refills on demand.
        """
        self.patch(blocks, "MAX_CACHED", 3)
        for user in ["b", "c", "d", "e"]:
            self.successResultOf(self.blocks.between("a", user))
        self.assertEqual(self.store.blockReads, 4)
        self.successResultOf(self.blocks.between("a", "e"))
        self.assertEqual(self.store.blockReads, 4)
        self.successResultOf(self.blocks.between("a", "b"))
        self.assertEqual(self.store.blockReads, 5)


class UnversionedStoreTests(SynchronousTestCase):
    """
    With a store without the blocks' version, a pair's answer lasts ttl.
    """

    def test_perPairTtl(self):
        clock = task.Clock()
        store = UnversionedStore()
        self.assertFalse(IBlockVersion.providedBy(store))
        blockList = BlockList(clock, store, ttl=0.5)
        self.assertFalse(self.successResultOf(blockList.between("alice", "bob")))
        store.blocks[("bob", "alice")] = 0.0
        clock.advance(0.4)
        self.assertFalse(self.successResultOf(blockList.between("alice", "bob")))
        self.assertEqual(store.blockReads, 1)
        clock.advance(0.1)
        self.assertTrue(self.successResultOf(blockList.between("alice", "bob")))
        self.assertEqual((store.blockReads, store.versionReads), (2, 0))
