# -*- test-case-name: tests.cluster.test_etcd -*-
"""
Tests for L{hpchat.cluster.etcd} (with the test-only calls of
L{tests.support.etcdadmin}).

Behaviour is tested against a real etcd started by L{tests.support.etcd};
encoding and error mapping details with treq's L{StubTreq} and a canned
resource (no fake etcd).
"""

import base64
import json

from treq.testing import HasHeaders, RequestSequence, StringStubbingResource, StubTreq
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from hpchat.cluster.etcd import (
    Compacted,
    Compare,
    DeleteRangeResponse,
    EtcdBadResponse,
    EtcdError,
    EtcdTimeout,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    Op,
    PutResponse,
    RangeResult,
    TxnResult,
    WatchCanceled,
    WatchKeeper,
    prefixRangeEnd,
    retryPolicy,
)
from tests.support.etcd import freePort, startEtcd
from tests.support.etcdadmin import AdminClient, AdminCompare, AdminOp


def b64(value):
    return base64.b64encode(value).decode("ascii")


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def waitUntil(predicate, timeout=10.0, what="condition"):
    """
    Poll C{predicate} on the reactor until it is true, failing after C{timeout}.
    """
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("timed out waiting for {}".format(what))
        yield sleep(0.01)


class EventCollector:
    """
    An C{onEvents} callback that remembers everything and lets a test wait.
    """

    def __init__(self):
        self.events = []
        self.revisions = []

    def __call__(self, events, revision):
        self.events.extend(events)
        self.revisions.append(revision)

    def waitFor(self, count, timeout=10.0):
        return waitUntil(
            lambda: len(self.events) >= count, timeout, "{} watch events".format(count)
        )

    def summary(self):
        return [(e.type, e.kv.key, e.kv.value) for e in self.events]


class RealEtcdMixin:
    """
    Start a real etcd and a client for each test.
    """

    timeout = 60  # trial's per-test limit

    @inlineCallbacks
    def setUp(self):
        self.etcd = yield startEtcd(self)
        self.client = AdminClient(reactor, self.etcd.clientURL, timeout=5.0)
        self.addCleanup(self.client.close)


class KVTests(RealEtcdMixin, TestCase):
    """
    Plain KV calls against a real etcd.
    """

    @inlineCallbacks
    def test_putAndRangePrefix(self):
        """
        Keys put under a prefix come back in key order, with their revisions,
        and nothing outside the prefix does.
        """
        r1 = yield self.client.put(b"/t/a/1", b"one")
        r2 = yield self.client.put("/t/a/2", "two")
        yield self.client.put(b"/t/b/1", b"other")
        yield self.client.put(b"/t/a", b"not under /t/a/")
        self.assertEqual(r2, r1 + 1)
        result = yield self.client.range(b"/t/a/", prefix=True)
        self.assertIsInstance(result, RangeResult)
        self.assertEqual(
            [(kv.key, kv.value) for kv in result.kvs],
            [(b"/t/a/1", b"one"), (b"/t/a/2", b"two")],
        )
        self.assertEqual(result.count, 2)
        self.assertFalse(result.more)
        self.assertEqual(result.header.revision, r1 + 3)
        kv = result.kvs[0]
        self.assertEqual((kv.createRevision, kv.modRevision, kv.version, kv.lease), (r1, r1, 1, 0))

    @inlineCallbacks
    def test_rangeOptions(self):
        """
        limit/more/count, keys only, count only, a miss, an older revision.
        """
        r1 = yield self.client.put(b"k/1", b"v1")
        yield self.client.put(b"k/2", b"v2")
        yield self.client.put(b"k/1", b"v1b")
        limited = yield self.client.range(b"k/", prefix=True, limit=1)
        self.assertEqual([kv.key for kv in limited.kvs], [b"k/1"])
        self.assertTrue(limited.more)
        self.assertEqual(limited.count, 2)
        keysOnly = yield self.client.range(b"k/", prefix=True, keysOnly=True)
        self.assertEqual(
            [(kv.key, kv.value) for kv in keysOnly.kvs], [(b"k/1", b""), (b"k/2", b"")]
        )
        counted = yield self.client.range(b"k/", prefix=True, countOnly=True)
        self.assertEqual((counted.kvs, counted.count), ([], 2))
        miss = yield self.client.range(b"nope")
        self.assertEqual((miss.kvs, miss.count, miss.more), ([], 0, False))
        old = yield self.client.range(b"k/1", revision=r1)
        self.assertEqual(old.kvs[0].value, b"v1")
        kv = yield self.client.get(b"k/1")
        self.assertEqual((kv.value, kv.version, kv.createRevision), (b"v1b", 2, r1))
        self.assertIsNone((yield self.client.get(b"k/none")))

    @inlineCallbacks
    def test_binaryAndUnicode(self):
        """
        Arbitrary bytes and UTF-8 text survive the base64 round trip; the
        empty prefix selects every key.
        """
        yield self.client.put(b"\x00\xff\n", b"\x00\x01\xfe\xff")
        yield self.client.put("ключ/é", "значение")
        kv = yield self.client.get(b"\x00\xff\n")
        self.assertEqual(kv.value, b"\x00\x01\xfe\xff")
        kv = yield self.client.get("ключ/é".encode("utf-8"))
        self.assertEqual(kv.value.decode("utf-8"), "значение")
        everything = yield self.client.range(b"", prefix=True)
        self.assertEqual(everything.count, 2)

    @inlineCallbacks
    def test_delete(self):
        """
        delete() reports how many keys went; a missing key deletes nothing.
        """
        for i in range(3):
            yield self.client.put("d/{}".format(i), b"x")
        yield self.client.put(b"e", b"x")
        self.assertEqual((yield self.client.delete(b"d/0")), 1)
        self.assertEqual((yield self.client.delete(b"d/0")), 0)
        self.assertEqual((yield self.client.delete(b"d/", prefix=True)), 2)
        left = yield self.client.range(b"", prefix=True)
        self.assertEqual([kv.key for kv in left.kvs], [b"e"])

    @inlineCallbacks
    def test_compactedRevision(self):
        """
        Reading at a compacted revision fails with L{Compacted}; a future
        revision is another L{EtcdError} (gRPC OutOfRange).
        """
        r1 = yield self.client.put(b"c", b"1")
        r2 = yield self.client.put(b"c", b"2")
        yield self.client.compact(r2)
        e = yield self.assertFailure(self.client.range(b"c", revision=r1), Compacted)
        self.assertEqual(e.code, 11)
        e = yield self.assertFailure(self.client.range(b"c", revision=r2 + 100), EtcdError)
        self.assertNotIsInstance(e, Compacted)
        self.assertEqual((e.code, e.status), (11, 400))
        self.assertIn("future revision", e.message)

    @inlineCallbacks
    def test_version(self):
        """
        GET /version answers the server version.
        """
        version = yield self.client.version()
        self.assertRegex(version["etcdserver"], r"^3\.")

    @inlineCallbacks
    def test_wrongPathIsBadResponse(self):
        """
        The plain-text 404 of an unknown path (the gateway's answer to a
        wrong prefix) is an L{EtcdBadResponse}, not a JSON crash.
        """
        client = AdminClient(reactor, self.etcd.clientURL + "/v3alpha-ish")
        self.addCleanup(client.close)
        e = yield self.assertFailure(client.range(b"a"), EtcdBadResponse)
        self.assertEqual(e.status, 404)


class LeaseTests(RealEtcdMixin, TestCase):
    """
    Leases against a real etcd.
    """

    @inlineCallbacks
    def test_leaseLifecycle(self):
        """
        Grant, attach keys, keepalive, time to live, revoke: the keys go with
        the lease and every later call says L{LeaseNotFound}.
        """
        lease = yield self.client.leaseGrant(30)
        self.assertEqual(lease.ttl, 30)
        self.assertGreater(lease.id, 0)
        yield self.client.put(b"/hpchat/nodes/a", b'{"url":"x"}', lease=lease.id)
        yield self.client.put(b"/hpchat/groups/1", b"a", lease=lease.id)
        kv = yield self.client.get(b"/hpchat/nodes/a")
        self.assertEqual(kv.lease, lease.id)
        ttl = yield self.client.leaseKeepAlive(lease.id)
        self.assertEqual(ttl, 30)
        info = yield self.client.leaseTimeToLive(lease.id, keys=True)
        self.assertEqual(info.id, lease.id)
        self.assertEqual(info.grantedTtl, 30)
        self.assertTrue(0 < info.ttl <= 30)
        self.assertEqual(sorted(info.keys), [b"/hpchat/groups/1", b"/hpchat/nodes/a"])
        self.assertIn(lease.id, (yield self.client.leaseLeases()))

        revision = yield self.client.leaseRevoke(lease.id)
        gone = yield self.client.range(b"/hpchat/", prefix=True)
        self.assertEqual(gone.kvs, [])
        self.assertEqual(gone.header.revision, revision)
        yield self.assertFailure(self.client.leaseKeepAlive(lease.id), LeaseNotFound)
        yield self.assertFailure(self.client.leaseTimeToLive(lease.id), LeaseNotFound)
        yield self.assertFailure(self.client.leaseRevoke(lease.id), LeaseNotFound)

    @inlineCallbacks
    def test_leaseChosenIdAndMinimumTtl(self):
        """
        A client-chosen ID is kept (above 2**53 too); a TTL below the
        minimum is raised by etcd.
        """
        bigId = 2**62 + 12345
        lease = yield self.client.leaseGrant(10, leaseId=bigId)
        self.assertEqual(lease.id, bigId)
        small = yield self.client.leaseGrant(1)
        self.assertGreaterEqual(small.ttl, 2)
        yield self.client.put(b"big", b"v", lease=bigId)
        self.assertEqual((yield self.client.get(b"big")).lease, bigId)

    @inlineCallbacks
    def test_putUnknownLease(self):
        """
        A put with an unknown lease fails with L{LeaseNotFound} (HTTP 404,
        gRPC NotFound).
        """
        e = yield self.assertFailure(self.client.put(b"k", b"v", lease=12345), LeaseNotFound)
        self.assertEqual((e.code, e.status), (5, 404))

    @inlineCallbacks
    def test_putLeaseDetachAndIgnore(self):
        """
        A put without lease detaches the key from its lease; with
        C{ignoreLease} it keeps it.
        """
        lease = yield self.client.leaseGrant(30)
        yield self.client.put(b"k", b"1", lease=lease.id)
        yield self.client.put(b"k", b"2", ignoreLease=True)
        self.assertEqual((yield self.client.get(b"k")).lease, lease.id)
        yield self.client.put(b"k", b"3")
        self.assertEqual((yield self.client.get(b"k")).lease, 0)

    @inlineCallbacks
    def test_leaseExpiry(self):
        """
        Without keepalives the lease expires and its keys are deleted.
        """
        lease = yield self.client.leaseGrant(2)
        yield self.client.put(b"ephemeral", b"v", lease=lease.id)

        def gone():
            d = self.client.get(b"ephemeral")
            d.addCallback(lambda kv: results.append(kv is None))
            return d

        results = []
        deadline = reactor.seconds() + 10
        while not (results and results[-1]):
            self.assertLess(reactor.seconds(), deadline, "lease did not expire")
            yield sleep(0.2)
            yield gone()
        yield self.assertFailure(self.client.leaseKeepAlive(lease.id), LeaseNotFound)


class TxnTests(RealEtcdMixin, TestCase):
    """
    Transactions against a real etcd: claims, fencing, CAS.
    """

    def claim(self, key, node, leaseId):
        return self.client.txn(
            compare=[Compare.createRevision(key, "==", 0)],
            success=[Op.put(key, node, lease=leaseId)],
            failure=[Op.range(key)],
        )

    @inlineCallbacks
    def test_claim(self):
        """
        The first claim succeeds and its revision is the fencing token (the
        key's create revision); the second fails and returns the owner.
        """
        leaseA = yield self.client.leaseGrant(30)
        leaseB = yield self.client.leaseGrant(30)
        key = b"/hpchat/groups/17"
        first = yield self.claim(key, b"node-a", leaseA.id)
        self.assertIsInstance(first, TxnResult)
        self.assertTrue(first.succeeded)
        self.assertIsInstance(first.responses[0], PutResponse)
        token = first.revision
        self.assertEqual(first.responses[0].revision, token)

        second = yield self.claim(key, b"node-b", leaseB.id)
        self.assertFalse(second.succeeded)
        [owner] = second.responses[0].kvs
        self.assertEqual(
            (owner.value, owner.createRevision, owner.lease), (b"node-a", token, leaseA.id)
        )

        # The owner's lease dies: the key goes, the next claim gets a larger token.
        yield self.client.leaseRevoke(leaseA.id)
        third = yield self.claim(key, b"node-b", leaseB.id)
        self.assertTrue(third.succeeded)
        self.assertGreater(third.revision, token)

        # A write fenced by the old token fails.
        fenced = yield self.client.txn(
            compare=[Compare.createRevision(key, "==", token)],
            success=[Op.put(key, b"node-a", ignoreLease=True)],
        )
        self.assertFalse(fenced.succeeded)
        self.assertEqual(fenced.responses, [])
        self.assertEqual((yield self.client.get(key)).value, b"node-b")

    @inlineCallbacks
    def test_casOnModRevision(self):
        """
        A compare on mod_revision: a stale revision runs the failure branch,
        the current one the success branch (with prev_kv).
        """
        lease = yield self.client.leaseGrant(30)
        yield self.client.put(b"cas", b"a", lease=lease.id)
        current = yield self.client.put(b"cas", b"b", ignoreLease=True)
        stale = yield self.client.txn(
            compare=[AdminCompare.modRevision(b"cas", "==", current - 1)],
            success=[Op.put(b"cas", b"x")],
            failure=[Op.range(b"cas")],
        )
        self.assertFalse(stale.succeeded)
        self.assertEqual(stale.responses[0].kvs[0].modRevision, current)
        ok = yield self.client.txn(
            compare=[
                AdminCompare.modRevision(b"cas", "==", current),
                AdminCompare.value(b"cas", "==", b"b"),
                AdminCompare.lease(b"cas", "==", lease.id),
                AdminCompare.version(b"cas", ">", 1),
            ],
            success=[
                Op.put(b"cas", b"c", ignoreLease=True, prevKv=True),
                Op.delete(b"other", prevKv=True),
                Op.range(b"cas"),
            ],
        )
        self.assertTrue(ok.succeeded)
        put, delete, read = ok.responses
        self.assertEqual(put.prevKv.value, b"b")
        self.assertEqual(put.prevKv.modRevision, current)
        self.assertIsInstance(delete, DeleteRangeResponse)
        self.assertEqual(delete.deleted, 0)
        self.assertEqual(read.kvs[0].value, b"c")
        self.assertEqual(read.kvs[0].lease, lease.id)

    @inlineCallbacks
    def test_nestedTxn(self):
        """
        A txn op inside a txn answers a nested L{TxnResult}.
        """
        result = yield self.client.txn(
            success=[
                AdminOp.txn(
                    compare=[Compare.createRevision(b"n", "==", 0)], success=[Op.put(b"n", b"1")]
                )
            ]
        )
        self.assertTrue(result.succeeded)
        self.assertIsInstance(result.responses[0], TxnResult)
        self.assertTrue(result.responses[0].succeeded)


class WatchTests(RealEtcdMixin, TestCase):
    """
    Watch streams against a real etcd.
    """

    @inlineCallbacks
    def test_putsAndDeletesInOrder(self):
        """
        A prefix watch gets puts and deletes in order, with prev_kv, and
        remembers where to resume.
        """
        collector = EventCollector()
        watch = self.client.watch(b"/w/", onEvents=collector, prevKv=True)
        created = yield watch.whenCreated()
        self.assertEqual(watch.nextRevision, created + 1)
        r1 = yield self.client.put(b"/w/a", b"1")
        yield self.client.put(b"/outside", b"x")
        yield self.client.put(b"/w/a", b"2")
        yield self.client.delete(b"/w/a")
        yield collector.waitFor(3)
        self.assertEqual(
            collector.summary(),
            [("PUT", b"/w/a", b"1"), ("PUT", b"/w/a", b"2"), ("DELETE", b"/w/a", b"")],
        )
        put1, put2, delete = collector.events
        self.assertIsNone(put1.prevKv)
        self.assertEqual(put1.kv.createRevision, r1)
        self.assertEqual(put2.prevKv.value, b"1")
        self.assertEqual(delete.prevKv.value, b"2")
        self.assertEqual(watch.nextRevision, delete.kv.modRevision + 1)
        reason = yield watch.cancel()
        self.assertIsInstance(reason, WatchCanceled)
        self.assertTrue(reason.byClient)
        self.assertIs(watch.reason, reason)

    @inlineCallbacks
    def test_resumeFromNextRevision(self):
        """
        A new stream from the old one's C{nextRevision} delivers exactly the
        events written while no stream was open.
        """
        collector = EventCollector()
        watch = self.client.watch(b"r/", onEvents=collector)
        yield watch.whenCreated()
        yield self.client.put(b"r/1", b"a")
        yield collector.waitFor(1)
        yield watch.cancel()
        yield self.client.put(b"r/2", b"b")
        yield self.client.delete(b"r/1")
        yield self.client.put(b"r/3", b"c")
        again = EventCollector()
        resumed = self.client.watch(b"r/", onEvents=again, startRevision=watch.nextRevision)
        self.addCleanup(resumed.cancel)
        yield again.waitFor(3)
        self.assertEqual(
            again.summary(), [("PUT", b"r/2", b"b"), ("DELETE", b"r/1", b""), ("PUT", b"r/3", b"c")]
        )
        self.assertEqual(
            [e.kv.modRevision for e in again.events],
            list(range(watch.nextRevision, watch.nextRevision + 3)),
        )

    @inlineCallbacks
    def test_singleKeyWatch(self):
        """
        C{prefix=False} watches one key only.
        """
        collector = EventCollector()
        watch = self.client.watch(b"one", onEvents=collector, prefix=False)
        self.addCleanup(watch.cancel)
        yield watch.whenCreated()
        yield self.client.put(b"one/more", b"x")
        yield self.client.put(b"one", b"y")
        yield collector.waitFor(1)
        self.assertEqual(collector.summary(), [("PUT", b"one", b"y")])

    @inlineCallbacks
    def test_compacted(self):
        """
        Watching from a compacted revision ends with L{Compacted}; the caller
        re-reads and watches from the range's revision + 1.
        """
        r1 = yield self.client.put(b"c/1", b"a")
        yield self.client.put(b"c/2", b"b")
        r3 = yield self.client.put(b"c/1", b"c")
        yield self.client.compact(r3)
        watch = self.client.watch(b"c/", startRevision=r1)
        reason = yield watch.whenDone()
        self.assertIsInstance(reason, Compacted)
        self.assertEqual(reason.compactRevision, r3)

        snapshot = yield self.client.range(b"c/", prefix=True)
        self.assertEqual([kv.value for kv in snapshot.kvs], [b"c", b"b"])
        collector = EventCollector()
        rewatch = self.client.watch(
            b"c/", onEvents=collector, startRevision=snapshot.header.revision + 1
        )
        self.addCleanup(rewatch.cancel)
        yield rewatch.whenCreated()
        yield self.client.put(b"c/3", b"d")
        yield collector.waitFor(1)
        self.assertEqual(collector.summary(), [("PUT", b"c/3", b"d")])

    @inlineCallbacks
    def test_callbackErrorsAreLoggedNotFatal(self):
        """
        An exception in C{onEvents} is logged; the stream goes on.
        """
        seen = []

        def onEvents(events, revision):
            seen.extend(events)
            if len(seen) == 1:
                raise ZeroDivisionError("boom")

        watch = self.client.watch(b"e/", onEvents=onEvents)
        self.addCleanup(watch.cancel)
        yield watch.whenCreated()
        yield self.client.put(b"e/1", b"1")
        yield waitUntil(lambda: len(seen) == 1)
        yield self.client.put(b"e/2", b"2")
        yield waitUntil(lambda: len(seen) == 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIsNone(watch.reason)


class LostEtcdTests(RealEtcdMixin, TestCase):
    """
    etcd going away while the client runs: killed, stopped, paused.
    """

    @inlineCallbacks
    def test_killedAndRestarted(self):
        """
        Killing etcd ends watches with L{EtcdUnavailable}; calls fail the
        same way; after a restart on the same ports and data, calls work and
        the data is still there.
        """
        yield self.client.put(b"persist", b"v")
        watch = self.client.watch(b"x/")
        yield watch.whenCreated()
        yield self.etcd.kill()
        reason = yield watch.whenDone()
        self.assertIsInstance(reason, EtcdUnavailable)
        yield self.assertFailure(self.client.get(b"persist"), EtcdUnavailable)
        yield self.etcd.start()
        kv = yield self.client.get(b"persist")
        self.assertEqual(kv.value, b"v")

    @inlineCallbacks
    def test_pausedTimesOut(self):
        """
        A paused (SIGSTOP) etcd accepts connections but answers nothing:
        calls fail with L{EtcdTimeout} within their timeout.
        """
        yield self.client.put(b"k", b"v")
        yield self.etcd.pause()
        try:
            start = reactor.seconds()
            yield self.assertFailure(self.client.get(b"k", timeout=0.5), EtcdTimeout)
            self.assertLess(reactor.seconds() - start, 3.0)
        finally:
            yield self.etcd.resume()
        kv = yield self.client.get(b"k")
        self.assertEqual(kv.value, b"v")


class WatchKeeperTests(RealEtcdMixin, TestCase):
    """
    L{WatchKeeper} against a real etcd; its reconnect backoff runs on a
    L{Clock} so the test decides when it reconnects.
    """

    @inlineCallbacks
    def makeKeeper(self):
        yield self.client.put(b"/hpchat/nodes/a", b"url-a")
        yield self.client.put(b"/hpchat/groups/1", b"a")
        yield self.client.put(b"/elsewhere", b"x")
        self.clock = Clock()
        self.resyncs = []
        self.collector = EventCollector()
        keeper = WatchKeeper(
            self.client,
            b"/hpchat/",
            onResync=lambda kvs, revision: self.resyncs.append((kvs, revision)),
            onEvents=self.collector,
            clock=self.clock,
        )
        keeper.start()
        self.addCleanup(keeper.stop)
        yield keeper.whenReady()
        yield waitUntil(lambda: keeper.watching, what="watch created")
        return keeper

    def values(self, keeper):
        return {k: kv.value for k, kv in keeper.kvs.items()}

    @inlineCallbacks
    def test_mirror(self):
        """
        The keeper starts from a snapshot and applies changes.
        """
        keeper = yield self.makeKeeper()
        [(kvs, revision)] = self.resyncs
        self.assertEqual(set(kvs), {b"/hpchat/nodes/a", b"/hpchat/groups/1"})
        self.assertEqual(keeper.revision, revision)
        putRevision = yield self.client.put(b"/hpchat/groups/2", b"a")
        yield self.client.delete(b"/hpchat/groups/1")
        yield self.collector.waitFor(2)
        self.assertEqual(
            self.values(keeper), {b"/hpchat/nodes/a": b"url-a", b"/hpchat/groups/2": b"a"}
        )
        self.assertEqual(keeper.revision, putRevision + 1)
        self.assertEqual(keeper.nextRevision, putRevision + 2)
        self.assertEqual(len(self.resyncs), 1)

    @inlineCallbacks
    def test_resumeAfterEtcdRestart(self):
        """
        When etcd dies, the keeper retries with backoff and resumes from the
        next revision once it is back: no resync, no lost event.
        """
        keeper = yield self.makeKeeper()
        yield self.etcd.stop()
        yield waitUntil(lambda: not keeper.watching, what="watch lost")
        self.assertTrue(self.clock.getDelayedCalls(), "no reconnect scheduled")
        # Retries fail while etcd is down, each scheduling the next.
        self.clock.advance(10)
        yield waitUntil(lambda: self.clock.getDelayedCalls(), what="next retry")
        yield self.etcd.start()
        yield self.client.put(b"/hpchat/nodes/b", b"url-b")
        self.clock.advance(60)
        yield self.collector.waitFor(1)
        self.assertEqual(self.collector.summary(), [("PUT", b"/hpchat/nodes/b", b"url-b")])
        self.assertEqual(len(self.resyncs), 1)
        self.assertIn(b"/hpchat/nodes/b", keeper.kvs)

    @inlineCallbacks
    def test_resyncAfterCompaction(self):
        """
        When the revision to resume from was compacted meanwhile, the keeper
        reads the prefix again and calls C{onResync} with the new snapshot.
        """
        keeper = yield self.makeKeeper()
        yield self.etcd.stop()
        yield waitUntil(lambda: not keeper.watching, what="watch lost")
        yield self.etcd.start()
        yield self.client.put(b"/hpchat/nodes/b", b"url-b")
        yield self.client.delete(b"/hpchat/groups/1")
        revision = yield self.client.put(b"/hpchat/groups/1", b"b")
        yield self.client.compact(revision)
        self.clock.advance(60)
        yield waitUntil(lambda: len(self.resyncs) == 2, what="resync")
        kvs, snapshotRevision = self.resyncs[1]
        self.assertEqual(snapshotRevision, revision)
        self.assertEqual(
            self.values(keeper),
            {
                b"/hpchat/nodes/a": b"url-a",
                b"/hpchat/nodes/b": b"url-b",
                b"/hpchat/groups/1": b"b",
            },
        )
        self.assertEqual(self.collector.events, [])
        yield waitUntil(lambda: keeper.watching, what="watch again")
        yield self.client.put(b"/hpchat/nodes/c", b"url-c")
        yield self.collector.waitFor(1)
        self.assertIn(b"/hpchat/nodes/c", keeper.kvs)

    @inlineCallbacks
    def test_restart(self):
        """
        restart() drops the stream and resumes at once without a resync.
        """
        keeper = yield self.makeKeeper()
        self.assertEqual(keeper.streams, 1)
        keeper.restart()
        yield waitUntil(lambda: keeper.streams == 2 and keeper.watching, what="watch again")
        yield self.client.put(b"/hpchat/nodes/z", b"z")
        yield self.collector.waitFor(1)
        self.assertEqual(len(self.resyncs), 1)


class _Silent(Protocol):
    """
    Accepts a connection and never answers.
    """

    def connectionMade(self):
        self.factory.connected.append(self)
        self.lost = Deferred()

    def connectionLost(self, reason):
        self.lost.callback(None)


class TransportErrorTests(TestCase):
    """
    Timeouts and refused connections, with real sockets and no etcd.
    """

    def listenSilently(self):
        factory = Factory.forProtocol(_Silent)
        factory.connected = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.silent = factory
        return "http://127.0.0.1:{}".format(port.getHost().port)

    @inlineCallbacks
    def waitServerSideClosed(self):
        for protocol in self.silent.connected:
            yield protocol.lost.addTimeout(5, reactor)

    @inlineCallbacks
    def test_callTimeout(self):
        """
        A server that accepts and never answers: the call fails with
        L{EtcdTimeout} after its timeout and the connection is closed.
        """
        client = AdminClient(reactor, self.listenSilently(), timeout=0.3)
        self.addCleanup(client.close)
        start = reactor.seconds()
        e = yield self.assertFailure(client.range(b"k"), EtcdTimeout)
        elapsed = reactor.seconds() - start
        self.assertTrue(0.25 <= elapsed < 2.0, elapsed)
        self.assertIn("/v3/kv/range", str(e))
        yield self.assertFailure(client.leaseKeepAlive(7, timeout=0.1), EtcdTimeout)
        self.assertEqual(len(self.silent.connected), 2)
        yield self.waitServerSideClosed()

    @inlineCallbacks
    def test_watchCreateTimeout(self):
        """
        A watch that is never confirmed ends with L{EtcdTimeout}.
        """
        client = AdminClient(reactor, self.listenSilently(), timeout=0.3)
        self.addCleanup(client.close)
        watch = client.watch(b"k")
        yield self.assertFailure(watch.whenCreated(), EtcdTimeout)
        self.assertIsInstance((yield watch.whenDone()), EtcdTimeout)
        yield self.waitServerSideClosed()

    @inlineCallbacks
    def test_connectionRefused(self):
        """
        Nobody listening: L{EtcdUnavailable}, for calls and watches.
        """
        client = AdminClient(reactor, "http://127.0.0.1:{}".format(freePort()), timeout=2)
        self.addCleanup(client.close)
        yield self.assertFailure(client.put(b"k", b"v"), EtcdUnavailable)
        reason = yield client.watch(b"k").whenDone()
        self.assertIsInstance(reason, EtcdUnavailable)

    @inlineCallbacks
    def test_cancelCall(self):
        """
        The caller may cancel a call; the connection is closed.
        """
        client = AdminClient(reactor, self.listenSilently(), timeout=5)
        self.addCleanup(client.close)
        d = client.range(b"k")
        yield waitUntil(lambda: self.silent.connected, what="connection")
        d.cancel()
        yield self.assertFailure(d, Exception)
        yield self.waitServerSideClosed()


# ---------------------------------------------------------------------------
# Encoding and error mapping, in memory.


class CannedGateway(Resource):
    """
    Records requests and answers canned responses, in order.

    A response is C{(status, body)} with C{body} bytes or JSON-able, or a
    callable taking the request (it may return C{NOT_DONE_YET}).
    """

    isLeaf = True

    def __init__(self, *responses):
        super().__init__()
        self.requests = []
        self.responses = list(responses)

    def render(self, request):
        raw = request.content.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.requests.append((request.method.decode(), request.path.decode(), body))
        answer = self.responses.pop(0)
        if callable(answer):
            return answer(request)
        status, payload = answer
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode("utf-8")
        return payload


HEADER = {"cluster_id": "1", "member_id": "2", "revision": "42", "raft_term": "3"}


class EncodingTests(SynchronousTestCase):
    """
    What goes on the wire and how answers are read, via L{StubTreq}.
    """

    def client(self, *responses):
        self.gateway = CannedGateway(*responses)
        self.stub = StubTreq(self.gateway)
        self.clock = Clock()
        return AdminClient(self.clock, "http://etcd.test:2379/", httpClient=self.stub)

    def result(self, d):
        self.stub.flush()
        value = self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [], "timeout left behind")
        return value

    def failed(self, d, *errorTypes):
        self.stub.flush()
        failure = self.failureResultOf(d, *errorTypes)
        self.assertEqual(self.clock.getDelayedCalls(), [], "timeout left behind")
        return failure.value

    def test_putEncoding(self):
        """
        Keys and values are standard base64 with padding; str is UTF-8; the
        lease ID is sent as a string; the answer's revision is an int.
        """
        client = self.client((200, {"header": HEADER}))
        revision = self.result(client.put("ключ", b"\xff\x00", lease=2**60 + 1))
        self.assertEqual(revision, 42)
        [(method, path, body)] = self.gateway.requests
        self.assertEqual((method, path), ("POST", "/v3/kv/put"))
        self.assertEqual(
            body,
            {"key": b64("ключ".encode("utf-8")), "value": "/wA=", "lease": str(2**60 + 1)},
        )

    def test_putIgnoreLease(self):
        """
        C{ignoreLease} is sent as C{ignore_lease}; it excludes C{lease}.
        """
        client = self.client((200, {"header": HEADER}))
        self.result(client.put(b"k", b"", ignoreLease=True))
        self.assertEqual(
            self.gateway.requests[0][2], {"key": "aw==", "value": "", "ignore_lease": True}
        )
        self.assertRaises(ValueError, Op.put, b"k", b"v", lease=1, ignoreLease=True)
        self.assertRaises(TypeError, Op.put, 12, b"v")

    def test_prefixRangeEnd(self):
        """
        The range end of a prefix is the prefix with its last byte + 1.
        """
        self.assertEqual(prefixRangeEnd(b"/hpchat/"), b"/hpchat0")
        self.assertEqual(prefixRangeEnd(b"a\xff"), b"b")
        self.assertEqual(prefixRangeEnd(b"\xff\xff"), b"\x00")
        self.assertEqual(prefixRangeEnd(b""), b"\x00")

    def test_rangeEncoding(self):
        """
        A prefix range sends C{range_end}; options are sent only when set.
        """
        client = self.client(
            (200, {"header": HEADER}), (200, {"header": HEADER}), (200, {"header": HEADER})
        )
        self.result(client.range(b"/hpchat/", prefix=True))
        self.result(client.range(b"k", limit=5, revision=7, keysOnly=True))
        self.result(client.range(b"", prefix=True))
        bodies = [r[2] for r in self.gateway.requests]
        self.assertEqual(bodies[0], {"key": b64(b"/hpchat/"), "range_end": b64(b"/hpchat0")})
        self.assertEqual(
            bodies[1], {"key": "aw==", "limit": "5", "revision": "7", "keys_only": True}
        )
        self.assertEqual(bodies[2], {"key": "AA==", "range_end": "AA=="})
        self.assertRaises(ValueError, client.range, b"")

    def test_rangeDecoding(self):
        """
        int64 strings become ints (lease IDs above 2**53 exactly); missing
        fields are defaults.
        """
        bigLease = 4111120261204972298
        client = self.client(
            (
                200,
                {
                    "header": HEADER,
                    "kvs": [
                        {
                            "key": b64(b"a"),
                            "create_revision": "2",
                            "mod_revision": "4",
                            "version": "2",
                            "value": b64(b"x"),
                            "lease": str(bigLease),
                        },
                        {
                            "key": b64(b"b"),
                            "create_revision": "3",
                            "mod_revision": "3",
                            "version": "1",
                        },
                    ],
                    "count": "5",
                    "more": True,
                },
            ),
            (200, {"header": {"revision": "9"}}),
        )
        result = self.result(client.range(b"a", prefix=True, limit=2))
        self.assertEqual(result.header.revision, 42)
        self.assertEqual(result.header.clusterId, 1)
        self.assertEqual(result.kvs[0], KeyValue(b"a", b"x", 2, 4, 2, bigLease))
        self.assertEqual(result.kvs[1], KeyValue(b"b", b"", 3, 3, 1, 0))
        self.assertEqual((result.count, result.more), (5, True))
        miss = self.result(client.range(b"nope"))
        self.assertEqual((miss.kvs, miss.count, miss.more, miss.revision), ([], 0, False, 9))

    def test_txnEncoding(self):
        """
        Compares send target, result and the compared field; ops are wrapped
        in C{request_*}.
        """
        client = self.client(
            (
                200,
                {
                    "header": HEADER,
                    "succeeded": True,
                    "responses": [{"response_put": {"header": {"revision": "42"}}}],
                },
            )
        )
        result = self.result(
            client.txn(
                compare=[
                    Compare.createRevision(b"g", "==", 0),
                    AdminCompare.modRevision(b"g", "<", 5),
                    AdminCompare.value(b"g", "!=", b"v"),
                    AdminCompare.version(b"g", ">", 1),
                    AdminCompare.lease(b"g", "==", 99),
                ],
                success=[Op.put(b"g", b"n", lease=99)],
                failure=[Op.range(b"g"), Op.delete(b"h", prefix=True, prevKv=True)],
            )
        )
        self.assertTrue(result.succeeded)
        self.assertEqual(result.revision, 42)
        self.assertEqual(result.responses, [PutResponse(header=result.responses[0].header)])
        body = self.gateway.requests[0][2]
        self.assertEqual(
            body["compare"],
            [
                {"target": "CREATE", "result": "EQUAL", "create_revision": "0", "key": "Zw=="},
                {"target": "MOD", "result": "LESS", "mod_revision": "5", "key": "Zw=="},
                {"target": "VALUE", "result": "NOT_EQUAL", "value": "dg==", "key": "Zw=="},
                {"target": "VERSION", "result": "GREATER", "version": "1", "key": "Zw=="},
                {"target": "LEASE", "result": "EQUAL", "lease": "99", "key": "Zw=="},
            ],
        )
        self.assertEqual(
            body["success"], [{"request_put": {"key": "Zw==", "value": "bg==", "lease": "99"}}]
        )
        self.assertEqual(
            body["failure"],
            [
                {"request_range": {"key": "Zw=="}},
                {"request_delete_range": {"key": "aA==", "range_end": "aQ==", "prev_kv": True}},
            ],
        )
        self.assertRaises(ValueError, Compare.createRevision, b"g", "=>", 0)
        self.assertRaises(TypeError, client.txn, compare=[{"target": "CREATE"}])

    def test_txnFailedDecoding(self):
        """
        A failed txn has no C{succeeded} key (false), and without failure ops
        no C{responses}; a failed claim's range gives the owner.
        """
        owner = {
            "key": "Zw==",
            "create_revision": "5",
            "mod_revision": "5",
            "version": "1",
            "value": "YQ==",
            "lease": "7",
        }
        client = self.client(
            (200, {"header": HEADER}),
            (
                200,
                {
                    "header": HEADER,
                    "responses": [
                        {
                            "response_range": {
                                "header": {"revision": "5"},
                                "kvs": [owner],
                                "count": "1",
                            }
                        },
                        {"response_delete_range": {"header": {"revision": "5"}, "deleted": "2"}},
                    ],
                },
            ),
        )
        empty = self.result(client.txn())
        self.assertEqual((empty.succeeded, empty.responses), (False, []))
        failed = self.result(client.txn())
        self.assertFalse(failed.succeeded)
        self.assertEqual(failed.responses[0].kvs, [KeyValue(b"g", b"a", 5, 5, 1, 7)])
        self.assertEqual(failed.responses[1].deleted, 2)

    def test_leaseEncoding(self):
        """
        Lease calls send C{TTL} and C{ID} (as strings) and read them back as
        ints; a keepalive reads the first streamed C{result}.
        """
        leaseId = 4111120261204972295
        client = self.client(
            (200, {"header": HEADER, "ID": str(leaseId), "TTL": "10"}),
            (200, b'{"result":{"header":{"revision":"3"},"ID":"%d","TTL":"10"}}\n' % leaseId),
            (
                200,
                {
                    "header": HEADER,
                    "ID": str(leaseId),
                    "TTL": "7",
                    "grantedTTL": "10",
                    "keys": ["YQ=="],
                },
            ),
            (200, {"header": HEADER}),
            (200, {"header": HEADER, "leases": [{"ID": "1"}, {"ID": str(leaseId)}]}),
        )
        lease = self.result(client.leaseGrant(10, leaseId=leaseId))
        self.assertEqual((lease.id, lease.ttl), (leaseId, 10))
        self.assertEqual(self.result(client.leaseKeepAlive(leaseId)), 10)
        info = self.result(client.leaseTimeToLive(leaseId, keys=True))
        self.assertEqual((info.ttl, info.grantedTtl, info.keys), (7, 10, [b"a"]))
        self.assertEqual(self.result(client.leaseRevoke(leaseId)), 42)
        self.assertEqual(self.result(client.leaseLeases()), [1, leaseId])
        paths = [(r[1], r[2]) for r in self.gateway.requests]
        self.assertEqual(
            paths,
            [
                ("/v3/lease/grant", {"TTL": "10", "ID": str(leaseId)}),
                ("/v3/lease/keepalive", {"ID": str(leaseId)}),
                ("/v3/lease/timetolive", {"ID": str(leaseId), "keys": True}),
                ("/v3/lease/revoke", {"ID": str(leaseId)}),
                ("/v3/lease/leases", {}),
            ],
        )

    def test_deadLease(self):
        """
        A keepalive answered without TTL (HTTP 200) and a timetolive of -1
        mean L{LeaseNotFound}.
        """
        client = self.client(
            (200, b'{"result":{"header":{"revision":"3"},"ID":"99"}}\n'),
            (200, {"header": HEADER, "ID": "99", "TTL": "-1"}),
        )
        self.failed(client.leaseKeepAlive(99), LeaseNotFound)
        self.failed(client.leaseTimeToLive(99), LeaseNotFound)

    def test_errorMapping(self):
        """
        gRPC codes in error bodies become typed errors, keeping code and
        HTTP status.
        """
        cases = [
            (
                404,
                {
                    "error": "etcdserver: requested lease not found",
                    "message": "etcdserver: requested lease not found",
                    "code": 5,
                },
                LeaseNotFound,
            ),
            (
                400,
                {
                    "error": "x",
                    "message": "etcdserver: mvcc: required revision has been compacted",
                    "code": 11,
                },
                Compacted,
            ),
            (503, {"error": "x", "message": "etcdserver: no leader", "code": 14}, EtcdUnavailable),
            (504, {"error": "x", "message": "context deadline exceeded", "code": 4}, EtcdTimeout),
            (
                400,
                {
                    "error": "x",
                    "message": "etcdserver: too many operations in txn request",
                    "code": 3,
                },
                EtcdError,
            ),
            (404, b"404 page not found\n", EtcdBadResponse),
            (500, b"<html>oops</html>", EtcdBadResponse),
            (400, {"no": "error fields"}, EtcdError),
        ]
        client = self.client(*[(status, body) for status, body, _ in cases])
        for status, body, errorType in cases:
            e = self.failed(client.range(b"k"), errorType)
            self.assertIs(type(e), errorType)
            self.assertEqual(e.status, status)
            if isinstance(body, dict) and "code" in body:
                self.assertEqual(e.code, body["code"])
                self.assertIn(body["message"], e.message)

    def test_streamError(self):
        """
        A streamed call answering grpc-gateway's stream error shape is mapped
        too.
        """
        client = self.client(
            (
                200,
                b'{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader",'
                b'"http_status":"Service Unavailable"}}\n',
            ),
            (200, b""),
        )
        e = self.failed(client.leaseKeepAlive(1), EtcdUnavailable)
        self.assertEqual((e.code, e.status), (14, 503))
        self.failed(client.leaseKeepAlive(1), EtcdBadResponse)

    def test_malformedAnswers(self):
        """
        Answers that are not what the gateway sends become
        L{EtcdBadResponse}, never a crash.
        """
        bodies = [
            b"not json",
            b"[1, 2]",
            b'"a string"',
            json.dumps({"header": {"revision": "abc"}}).encode(),
            json.dumps({"header": {"revision": 1.5}}).encode(),
            json.dumps({"header": "nope"}).encode(),
            json.dumps({"header": HEADER, "kvs": {"key": "YQ=="}}).encode(),
            json.dumps({"header": HEADER, "kvs": [{"key": "not base64!"}]}).encode(),
            json.dumps({"header": HEADER, "kvs": ["x"]}).encode(),
            json.dumps({"header": HEADER, "more": "yes"}).encode(),
            json.dumps({"header": HEADER, "count": True}).encode(),
        ]
        client = self.client(*[(200, body) for body in bodies])
        for body in bodies:
            e = self.failed(client.range(b"k"), EtcdBadResponse)
            self.assertEqual(type(e), EtcdBadResponse, body)
        client = self.client(
            (200, {"header": HEADER, "responses": [{"response_bogus": {}}]}),
            (200, {"header": HEADER, "responses": ["x"]}),
            (200, {"header": HEADER, "TTL": "5"}),
            (200, {"header": HEADER, "ID": "1", "TTL": "1", "keys": [7]}),
        )
        self.failed(client.txn(), EtcdBadResponse)
        self.failed(client.txn(), EtcdBadResponse)
        self.failed(client.leaseGrant(5), EtcdBadResponse)
        self.failed(client.leaseTimeToLive(1, keys=True), EtcdBadResponse)

    def test_requestSequence(self):
        """
        Exactly the request the gateway documents for a delete, checked with
        treq's L{RequestSequence}.
        """
        sequence = RequestSequence(
            [
                (
                    (
                        b"post",
                        "http://etcd.test:2379/v3/kv/deleterange",
                        {},
                        HasHeaders({"Content-Type": ["application/json"]}),
                        b'{"key":"Y2hhdC9ncm91cHMvMTgvb3duZXI="}',
                    ),
                    (200, {}, json.dumps({"header": HEADER, "deleted": "1"}).encode()),
                ),
                (
                    (
                        b"post",
                        "http://etcd.test:2379/v3/kv/deleterange",
                        {},
                        HasHeaders({"Content-Type": ["application/json"]}),
                        b'{"key":"eA=="}',
                    ),
                    (200, {}, json.dumps({"header": HEADER}).encode()),
                ),
            ]
        )
        stub = StubTreq(StringStubbingResource(sequence))
        client = AdminClient(Clock(), "http://etcd.test:2379", httpClient=stub)
        with sequence.consume(self.fail):
            d1 = client.delete(b"chat/groups/18/owner")
            d2 = client.delete(b"x")
            stub.flush()
            self.assertEqual(self.successResultOf(d1), 1)
            self.assertEqual(self.successResultOf(d2), 0)

    def test_timeoutWithClock(self):
        """
        A call without answer fails with L{EtcdTimeout} when its timeout
        passes on the injected clock, and leaves nothing scheduled.
        """
        client = self.client(lambda request: NOT_DONE_YET)
        d = client.range(b"k", timeout=2)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, EtcdTimeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RetryTests(SynchronousTestCase):
    """
    L{retryPolicy} and the backoff of L{WatchKeeper} while etcd cannot answer.
    """

    def test_policy(self):
        """
        Delays double from C{minDelay} up to C{maxDelay}, each scaled by
        C{spread()}; the default spread keeps them within half of that.
        """
        exact = retryPolicy(0.1, 5.0, spread=lambda: 1.0)
        self.assertEqual(
            [round(exact(n), 6) for n in range(8)], [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
        )
        self.assertEqual(exact(10**6), 5.0)
        halved = retryPolicy(0.1, 5.0, spread=lambda: 0.5)
        self.assertEqual(round(halved(2), 6), 0.2)
        spread = retryPolicy(1.0, 8.0)
        for n in range(6):
            ceiling = min(8.0, 2.0**n)
            for _ in range(20):
                self.assertTrue(ceiling / 2 <= spread(n) <= ceiling, (n, spread(n)))

    def test_keeperBacksOff(self):
        """
        Each failed read of the prefix schedules the next one on the clock,
        with growing delays capped at C{maxDelay}; L{WatchKeeper.stop}
        cancels the pending retry.
        """
        unavailable = {"error": "x", "message": "etcdserver: no leader", "code": 14}
        gateway = CannedGateway(*[(503, unavailable)] * 8)
        stub = StubTreq(gateway)
        clock = Clock()
        client = AdminClient(clock, "http://etcd.test", httpClient=stub, timeout=5)
        keeper = WatchKeeper(client, b"/p/", clock=clock, minDelay=1.0, maxDelay=4.0)
        keeper.start()
        delays = []
        for _ in range(6):
            stub.flush()
            [call] = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        self.assertEqual(len(gateway.requests), 7)
        for delay, ceiling in zip(delays, [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]):
            self.assertTrue(ceiling / 2 <= delay <= ceiling, (delays, ceiling))
        stub.flush()
        self.successResultOf(keeper.stop())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual((keeper.resyncs, keeper.streams), (0, 0))


class WatchStreamTests(SynchronousTestCase):
    """
    Parsing of the watch stream, fed in chunks that cut lines anywhere.
    """

    def setUp(self):
        self.requests = []

        def hold(request):
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"application/json")
            self.requests.append(request)
            return NOT_DONE_YET

        self.gateway = CannedGateway(*[hold] * 10)
        self.stub = StubTreq(self.gateway)
        self.clock = Clock()
        self.client = AdminClient(self.clock, "http://etcd.test", httpClient=self.stub, timeout=5)

    def send(self, data):
        self.requests[-1].write(data)
        self.stub.flush()

    def test_streamParsing(self):
        """
        Lines split across chunks, several lines per chunk; PUT is the
        default type, DELETE events carry only key and mod_revision; the
        resume point follows the last event and progress notifications.
        """
        collector = EventCollector()
        progress = []
        watch = self.client.watch(
            b"/hpchat/",
            onEvents=collector,
            startRevision=5,
            prevKv=True,
            onProgress=progress.append,
        )
        self.stub.flush()
        self.assertEqual(
            self.gateway.requests[0][1:],
            (
                "/v3/watch",
                {
                    "create_request": {
                        "key": b64(b"/hpchat/"),
                        "range_end": b64(b"/hpchat0"),
                        "start_revision": "5",
                        "prev_kv": True,
                    }
                },
            ),
        )
        created = watch.whenCreated()
        lines = [
            {"result": {"header": {"revision": "7"}, "created": True}},
            {
                "result": {
                    "header": {"revision": "7"},
                    "events": [
                        {
                            "kv": {
                                "key": b64(b"/hpchat/a"),
                                "create_revision": "6",
                                "mod_revision": "6",
                                "version": "1",
                                "value": b64(b"1"),
                            }
                        },
                        {
                            "kv": {
                                "key": b64(b"/hpchat/b"),
                                "create_revision": "7",
                                "mod_revision": "7",
                                "version": "1",
                            }
                        },
                    ],
                }
            },
            {
                "result": {
                    "header": {"revision": "8"},
                    "events": [
                        {
                            "type": "DELETE",
                            "kv": {"key": b64(b"/hpchat/a"), "mod_revision": "8"},
                            "prev_kv": {
                                "key": b64(b"/hpchat/a"),
                                "create_revision": "6",
                                "mod_revision": "6",
                                "version": "1",
                                "value": b64(b"1"),
                            },
                        },
                    ],
                }
            },
        ]
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        for i in range(0, len(data), 7):
            self.send(data[i : i + 7])
        self.assertEqual(self.successResultOf(created), 7)
        self.assertEqual(
            collector.summary(),
            [
                ("PUT", b"/hpchat/a", b"1"),
                ("PUT", b"/hpchat/b", b""),
                ("DELETE", b"/hpchat/a", b""),
            ],
        )
        self.assertEqual(collector.revisions, [7, 8])
        delete = collector.events[2]
        self.assertEqual(delete.kv, KeyValue(b"/hpchat/a", b"", 0, 8, 0, 0))
        self.assertEqual(delete.prevKv.value, b"1")
        self.assertEqual(watch.nextRevision, 9)
        # A progress notification moves the resume point.
        self.send(b'{"result":{"header":{"revision":"12"}}}\n')
        self.assertEqual(progress, [12])
        self.assertEqual(watch.nextRevision, 13)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # The server ends the stream.
        self.requests[0].finish()
        self.stub.flush()
        reason = self.successResultOf(watch.whenDone())
        self.assertIsInstance(reason, EtcdUnavailable)

    def test_fromNow(self):
        """
        A watch "from now" resumes after the revision it was created at.
        """
        watch = self.client.watch(b"k", prefix=False)
        self.stub.flush()
        self.assertNotIn("start_revision", self.gateway.requests[0][2]["create_request"])
        self.assertIsNone(watch.nextRevision)
        self.send(b'{"result":{"header":{"revision":"30"},"created":true}}\n')
        self.assertEqual(watch.nextRevision, 31)
        watch.cancel()
        self.stub.flush()
        self.assertTrue(self.successResultOf(watch.whenDone()).byClient)

    def test_compaction(self):
        """
        A cancel with C{compact_revision} (no header revision, no watch_id)
        ends the watch with L{Compacted}.
        """
        watch = self.client.watch(b"k")
        self.stub.flush()
        self.send(
            b'{"result":{"header":{"revision":"20"},"created":true}}\n'
            b'{"result":{"header":{"cluster_id":"1","raft_term":"2"},"canceled":true,"compact_revision":"13"}}\n'
        )
        self.stub.flush()
        reason = self.successResultOf(watch.whenDone())
        self.assertIsInstance(reason, Compacted)
        self.assertEqual(reason.compactRevision, 13)

    def test_serverCancel(self):
        """
        A create rejected by the server ends the watch with
        L{WatchCanceled} carrying the server's reason.
        """
        watch = self.client.watch(b"k")
        created = watch.whenCreated()
        self.stub.flush()
        self.send(
            b'{"result":{"header":{"revision":"3"},"watch_id":"-1","created":true,"canceled":true,'
            b'"cancel_reason":"mvcc: duplicate watch ID"}}\n'
        )
        self.stub.flush()
        reason = self.successResultOf(watch.whenDone())
        self.assertIsInstance(reason, WatchCanceled)
        self.assertFalse(reason.byClient)
        self.assertIn("duplicate watch ID", reason.message)
        self.failureResultOf(created, WatchCanceled)

    def test_malformedLine(self):
        """
        A line that is not a watch result ends the watch with
        L{EtcdBadResponse}; events before it were delivered.
        """
        bad = [
            b"garbage\n",
            b"[]\n",
            b'{"result":[]}\n',
            b'{"result":{"events":[{"kv":{"key":"%%"}}]}}\n',
            b'{"result":{"events":[{"type":"BOGUS","kv":{}}]}}\n',
            b'{"result":{"events":[{"type":"PUT"}]}}\n',
        ]
        for line in bad:
            collector = EventCollector()
            watch = self.client.watch(b"k", onEvents=collector)
            self.stub.flush()
            self.send(
                b'{"result":{"header":{"revision":"1"},"created":true}}\n'
                b'{"result":{"header":{"revision":"2"},"events":[{"kv":{"key":"aw==","mod_revision":"2"}}]}}\n'
                + line
                + b'{"result":{"header":{"revision":"3"},"events":'
                b'[{"kv":{"key":"aw==","mod_revision":"3"}}]}}\n'
            )
            reason = self.successResultOf(watch.whenDone())
            self.assertEqual(type(reason), EtcdBadResponse, line)
            self.assertEqual(len(collector.events), 1, line)
            self.assertEqual(watch.nextRevision, 3)

    def test_streamErrorLine(self):
        """
        A stream error object ends the watch with the mapped error.
        """
        watch = self.client.watch(b"k")
        self.stub.flush()
        self.send(b'{"error":{"grpc_code":2,"http_code":500,"message":"illegal base64 data"}}\n')
        self.stub.flush()
        reason = self.successResultOf(watch.whenDone())
        self.assertEqual(type(reason), EtcdError)
        self.assertEqual(reason.code, 2)

    def test_httpError(self):
        """
        A non-200 answer to the watch POST ends it with the mapped error.
        """
        client = AdminClient(
            self.clock,
            "http://etcd.test",
            httpClient=StubTreq(CannedGateway((404, b"404 page not found"))),
        )
        watch = client.watch(b"k")
        client._http.flush()
        reason = self.successResultOf(watch.whenDone())
        self.assertIsInstance(reason, EtcdBadResponse)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_createTimeout(self):
        """
        No C{created} line within the client's timeout: L{EtcdTimeout}.
        """
        watch = self.client.watch(b"k")
        self.stub.flush()
        self.clock.advance(5)
        self.stub.flush()
        self.assertIsInstance(self.successResultOf(watch.whenDone()), EtcdTimeout)
