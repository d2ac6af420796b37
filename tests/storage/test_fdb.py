"""
The event store contract on FoundationDB, and what is particular to the FoundationDB store.

Two ways it runs:

  - against a real cluster when C{HPCHAT_TEST_FDB_CLUSTER_FILE} names a cluster file (each
    test under its own key prefix, cleared afterwards); without it trial reports those tests
    as skipped, with a reason naming the variable;
  - always, against L{tests.storage.fakefdb}, an in-memory stand-in for the binding with
    optimistic conflicts and fault injection, so that the store's own logic (fences,
    conflicts, retries after commit_unknown_result, batch splitting, threads) is exercised
    on a machine without libfdb_c.
"""

from __future__ import annotations

import os
import uuid
from typing import cast

from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial import unittest

from hpchat.storage.base import FenceRejected, StoreError, StreamConflict
from tests.storage.contract import EventStoreContract, S, asyncTest, event
from tests.storage.conversations_contract import BlockVersionContract, ConversationStoreContract

CLUSTER_ENV = "HPCHAT_TEST_FDB_CLUSTER_FILE"
CLUSTER_FILE = os.environ.get(CLUSTER_ENV) or None

NO_BINDING: str | None
try:
    import fdb.tuple  # type: ignore[import-untyped]  # noqa: F401  (pure Python: no libfdb_c)
except ImportError:
    NO_BINDING = ("the FoundationDB binding is not installed "
                  "(pip install 'hpchat[foundationdb]' or '.[test]')")
else:
    NO_BINDING = None


def theReactor():
    from twisted.internet import reactor

    return reactor


def fdbStore(*args, **kwargs):
    from hpchat.storage.fdb import FoundationDBStore

    return FoundationDBStore(theReactor(), *args, **kwargs)


class FoundationDBContractTests(EventStoreContract, ConversationStoreContract,
                                 BlockVersionContract, unittest.TestCase):
    """
    The contract against a real FoundationDB cluster.
    """

    if CLUSTER_FILE is None:
        skip = (f"no FoundationDB cluster: set {CLUSTER_ENV} to a cluster file "
                "(e.g. /etc/foundationdb/fdb.cluster) to run the store contract against it")
    elif NO_BINDING:
        skip = NO_BINDING

    def makeStore(self):
        prefix = f"hpchat-test-{uuid.uuid4().hex[:12]}"
        self.addCleanup(self._clear, prefix)
        return fdbStore(CLUSTER_FILE, keyPrefix=prefix)

    def reopenStore(self, store):
        return fdbStore(store.clusterFile, keyPrefix=store.keyPrefix)

    async def _clear(self, prefix):
        store = fdbStore(CLUSTER_FILE, keyPrefix=prefix)
        await store.open()
        try:
            await store.clearAll()
        finally:
            await store.close()


class FoundationDBClusterTests(unittest.TestCase):
    """
    What only a real cluster shows: the API version in use and the keys as stored.
    """

    skip = getattr(FoundationDBContractTests, "skip", None)

    @asyncTest
    async def test_keysAsDocumented(self):
        """
        After an append, the cluster holds exactly the documented keys under the prefix.
        """
        import fdb

        prefix = f"hpchat-test-{uuid.uuid4().hex[:12]}"
        store = fdbStore(CLUSTER_FILE, keyPrefix=prefix)
        await store.open()
        self.addCleanup(store.close)
        self.addCleanup(store.clearAll)
        self.assertEqual(fdb.get_api_version(), 730)
        await store.append([event(1, client_id="k", group=3)], {3: 42})
        begin, end = store.layout.everything()
        rows = fdb.open(CLUSTER_FILE).get_range(begin, end)
        keys = [fdb.tuple.unpack(kv.key) for kv in rows]
        self.assertEqual(sorted(keys), sorted([
            (prefix, "v"), (prefix, "f", 3), (prefix, "e", S, 1),
            (prefix, "i", S, f"{S}-1"), (prefix, "c", S, "alice", "k")]))


class FakeFoundationDBContractTests(EventStoreContract, ConversationStoreContract,
                                    BlockVersionContract, unittest.TestCase):
    """
    The contract against the FoundationDB store over the in-memory binding.
    """

    if NO_BINDING:
        skip = NO_BINDING

    def setUp(self):
        from tests.storage.fakefdb import FakeBinding

        self.binding = FakeBinding()

    def makeStore(self):
        return fdbStore(f"fake-{uuid.uuid4().hex}.cluster", binding=self.binding)

    def reopenStore(self, store):
        return fdbStore(store.clusterFile, keyPrefix=store.keyPrefix, binding=self.binding)


class FakeFoundationDBCase(unittest.TestCase):
    """
    A FoundationDB store over the in-memory binding, and helpers for its tests (here and in
    L{tests.storage.test_fdb_client}).
    """

    if NO_BINDING:
        skip = NO_BINDING

    def setUp(self):
        from tests.storage.fakefdb import FakeBinding

        self.binding = FakeBinding()
        self.clusterFile = f"fake-{uuid.uuid4().hex}.cluster"

    async def opened(self, **kwargs) -> tuple:
        store = fdbStore(self.clusterFile, binding=self.binding, **kwargs)
        await store.open()
        self.addCleanup(lambda: store.close() if store.ready else None)
        return store, self.binding.open(self.clusterFile)

    async def failure(self, d):
        try:
            await d
        except Exception as e:
            return e
        self.fail("expected a failure")

    def captureLog(self) -> list[dict]:
        events: list[dict] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return events

    def raiseFence(self, store, db, group: int, token: int):
        """
        What a new owner's claim does to the fence, as another client would.
        """
        def claim():
            tr = db.create_transaction()
            tr.set(store.layout.fence(group), store.layout.packInt(token))
            tr.commit().wait()

        return claim


class FakeFoundationDBTests(FakeFoundationDBCase):
    """
    The FoundationDB store's own behaviour: retries after unknown results, splitting, fences,
    key prefixes.
    """

    @asyncTest
    async def test_commitUnknownResultAfterCommitIsNotAConflict(self):
        """
        When the commit was applied but the client got commit_unknown_result (1021), the
        retry finds its own events stored and succeeds instead of reporting a conflict; the
        events are stored once and a warning is logged.
        """
        store, db = await self.opened()
        log = self.captureLog()
        db.injectCommitFault(1021, applied=True)
        batch = [event(1, client_id="a"), event(2, client_id="b")]
        await store.append(batch, {1: 5})
        self.assertEqual(await store.readAfter(S, 0, 10), batch)
        self.assertEqual(db.commits, 2)  # the layout version at open, then the batch, once
        self.assertTrue(any(e.get("already") == 2 and e["log_level"] == LogLevel.warn
                            for e in log))
        await store.append([event(3)], {1: 5})
        self.assertEqual([e.seq for e in await store.readAfter(S, 0, 10)], [1, 2, 3])

    @asyncTest
    async def test_commitUnknownResultBeforeCommitWrites(self):
        """
        When the commit was not applied (1021 with nothing written, 1020, 1007), the retry
        writes the batch.
        """
        store, db = await self.opened()
        for n, code in enumerate((1021, 1020, 1007), start=1):
            db.injectCommitFault(code, applied=False)
            await store.append([event(n)], {1: 5})
        self.assertEqual([e.seq for e in await store.readAfter(S, 0, 10)], [1, 2, 3])

    @asyncTest
    async def test_realConflictAfterUnknownResultIsStillAConflict(self):
        """
        A different event already at the seq is a conflict even on a retry.
        """
        store, db = await self.opened()
        await store.append([event(1, id="theirs")], {1: 5})
        db.injectCommitFault(1020, applied=False)
        failure = await self.failure(store.append([event(1, id="mine")], {1: 5}))
        self.assertIsInstance(failure, StreamConflict)
        self.assertEqual([e.id for e in await store.readAfter(S, 0, 10)], ["theirs"])

    @asyncTest
    async def test_unknownResultThenFencedIsConservative(self):
        """
        If a new owner raises the fence between a commit with an unknown result and its
        retry, the append fails with FenceRejected although its events are stored: never
        acknowledged without being durable, possibly durable without being acknowledged.
        """
        store, db = await self.opened()
        db.injectCommitFault(1021, applied=True)
        claim = self.raiseFence(store, db, 1, 9)

        def onError(code):
            db.onError = None
            claim()

        db.onError = onError
        failure = await self.failure(store.append([event(1)], {1: 5}))
        self.assertIsInstance(failure, FenceRejected)
        self.assertEqual(failure.groups, (1,))
        self.assertEqual([e.seq for e in await store.readAfter(S, 0, 10)], [1])

    @asyncTest
    async def test_claimBetweenReadAndCommitRejects(self):
        """
        A claim that raises the fence after the append read it makes the append's commit
        conflict (not_committed); the retry sees the new fence and writes nothing.
        """
        store, db = await self.opened()
        await store.append([event(1)], {1: 5})
        db.runBeforeCommit(db.writeCommits + 1, self.raiseFence(store, db, 1, 9))
        failure = await self.failure(store.append([event(2)], {1: 5}))
        self.assertIsInstance(failure, FenceRejected)
        self.assertEqual([e.seq for e in await store.readAfter(S, 0, 10)], [1])
        self.assertGreater(db.attempts, db.commits)

    @asyncTest
    async def test_timeoutIsAStoreErrorAndTheRetryIsSafe(self):
        """
        An error that is not retryable (here transaction_timed_out after the commit was
        applied) fails the append with StoreError; the persister's retry of the same events
        then succeeds, finding them stored.
        """
        store, db = await self.opened()
        db.injectCommitFault(1031, applied=True)
        batch = [event(1, client_id="x")]
        failure = await self.failure(store.append(batch, {1: 5}))
        self.assertIsInstance(failure, StoreError)
        self.assertNotIsInstance(failure, (FenceRejected, StreamConflict))
        self.assertIn("transaction_timed_out", str(failure))
        await store.append(batch + [event(2)], {1: 5})
        self.assertEqual([e.seq for e in await store.readAfter(S, 0, 10)], [1, 2])

    @asyncTest
    async def test_bigBatchIsSplitIntoTransactions(self):
        """
        A batch over the part limits is written in several transactions, none over the
        limits, each group's events together when they fit.
        """
        store, db = await self.opened()
        store.maxPartEvents = 25
        before = db.commits
        batch = [event(seq, stream=f"dm:u{g}:v{g}", group=g) for g in range(8)
                 for seq in range(1, 21)]
        await store.append(batch, {g: 1 for g in range(8)})
        self.assertEqual(db.commits - before, 8)
        for g in range(8):
            self.assertEqual(len(await store.readAfter(f"dm:u{g}:v{g}", 0, 100)), 20)
        store.maxPartBytes = 20_000
        big = [event(seq, stream="dm:big:one", group=9, data={"text": "z" * 1000})
               for seq in range(1, 101)]
        before = db.commits
        await store.append(big, {9: 1})
        self.assertGreaterEqual(db.commits - before, 5)
        self.assertLess(db.largestCommit, 10_000_000)
        self.assertEqual([e.seq for e in await store.readAfter("dm:big:one", 0, 200)],
                         list(range(1, 101)))

    @asyncTest
    async def test_eachPartChecksTheFences(self):
        """
        Every part of a split batch checks the fences: a claim between two parts stops the
        later parts (FenceRejected), the earlier parts stay written, and appending the
        remaining events again (as the persister does) stores them and skips those already
        stored.
        """
        store, db = await self.opened()
        store.maxPartEvents = 10
        batch = [event(seq, stream=f"dm:u{g}:v{g}", group=g) for g in range(1, 5)
                 for seq in range(1, 11)]
        fences = {g: 5 for g in range(1, 5)}
        # Part 1 (group 1) commits; before part 2 commits, a new owner claims group 3.
        db.runBeforeCommit(db.writeCommits + 2, self.raiseFence(store, db, 3, 6))
        failure = await self.failure(store.append(batch, fences))
        self.assertIsInstance(failure, FenceRejected)
        self.assertEqual(failure.groups, (3,))
        counts = [len(await store.readAfter(f"dm:u{g}:v{g}", 0, 100)) for g in range(1, 5)]
        self.assertEqual(counts, [10, 0, 0, 0])
        rest = [e for e in batch if e.group != 3]
        await store.append(rest, {g: 5 for g in (1, 2, 4)})
        counts = [len(await store.readAfter(f"dm:u{g}:v{g}", 0, 100)) for g in range(1, 5)]
        self.assertEqual(counts, [10, 10, 0, 10])

    @asyncTest
    async def test_prefixesAreSeparate(self):
        """
        Two stores with different key prefixes on one cluster do not see each other.
        """
        first = fdbStore(self.clusterFile, keyPrefix="one", binding=self.binding)
        second = fdbStore(self.clusterFile, keyPrefix="two", binding=self.binding)
        for store in (first, second):
            await store.open()
            self.addCleanup(store.close)
        await first.append([event(1)], {1: 50})
        self.assertEqual(await second.readAfter(S, 0, 10), [])
        await second.append([event(1, id="other")], {1: 1})
        self.assertEqual((await first.readAfter(S, 0, 10))[0].id, event(1).id)
        await first.clearAll()
        self.assertEqual(await first.readAfter(S, 0, 10), [])
        self.assertEqual(len(await second.readAfter(S, 0, 10)), 1)

    def test_tooLargeEventIsRefusedAtOnce(self):
        """
        An event FoundationDB could not store (value over 100,000 bytes) is refused before
        anything is sent.
        """
        store = fdbStore(self.clusterFile, binding=self.binding)
        huge = event(1, data={"text": "\u0001" * 20000})
        self.assertRaises(ValueError, store.append, [huge], {1: 1})

    def test_missingFenceIsRefused(self):
        """
        Every group of the events needs a token.
        """
        store = fdbStore(self.clusterFile, binding=self.binding)
        self.assertRaises(ValueError, store.append, [event(1, group=4)], {1: 1})
