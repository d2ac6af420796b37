"""
Tests for L{hpchat.blocks}: the block cache on a Clock over the in-memory store.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.blocks import BlockList
from hpchat.storage.base import FenceRejected
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
        A pair is read from the store once per ttl; a change made through this list is in
        force at once.
        """
        self.assertFalse(self.successResultOf(self.blocks.between("alice", "bob")))
        self.store.blocks[("bob", "alice")] = 0.0
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
