"""
The outbox: a message's notification written with the message, published after commit,
marked done after the publish is acknowledged, and republished after a restart or failover.
Deterministic: a Clock, the in-memory store and ownership.
"""

from __future__ import annotations

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.groups import Redirect
from hpchat.notify import outboxEntry, parseNotification
from hpchat.outbox import OutboxPublisher
from hpchat.persister import BatchPersister
from hpchat.storage.base import Event, FenceRejected, OutboxEntry
from hpchat.streams import Streams
from tests.fakes import FakeOwnership, MemoryEventStore

CID = "dm:alice:bob"
GROUPS = 16


class Node:
    """
    The parts of one node that the outbox touches, over a shared store.
    """

    def __init__(self, clock, store, publish):
        self.ownership = FakeOwnership(token=7, groups=GROUPS)
        self.persister = BatchPersister(clock, store, batchSize=100, flushInterval=0.005,
                                        outboxFor=outboxEntry)
        self.streams = Streams(clock, store, self.persister, self.ownership, groups=GROUPS)
        self.outbox = OutboxPublisher(clock, store, publish, outboxEntry, self.ownership, GROUPS,
                                      policy=backoffPolicy(0.5, 30.0, jitter=lambda: 0))
        self.streams.onCommitted.append(self.outbox.committed)
        self.ownership.subscribeGained(self.outbox.groupsGained)

    def start(self):
        self.persister.startService()
        self.outbox.startService()
        self.streams.startService()

    def stop(self):
        self.streams.stopService()
        self.persister.stopService()
        self.outbox.stopService()


class OutboxTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryEventStore()
        self.published: list[tuple[str, defer.Deferred]] = []
        self.node = Node(self.clock, self.store, self.publish)
        self.node.start()
        self.addCleanup(lambda: self.node.stop() if self.node.outbox.running else None)

    def publish(self, entry):
        d: defer.Deferred = defer.Deferred()
        self.published.append((entry.id, d))
        return d

    def send(self, text="hi", node=None):
        d = (node or self.node).streams.send(CID, "alice", text, None)
        self.clock.advance(0.005)
        return self.successResultOf(d)[0]

    def test_writtenWithItsMessage(self):
        """
        The message's notification is in the outbox of the store batch that wrote the message,
        and nowhere when that batch failed.
        """
        group = self.node.streams.groupOf(CID)
        self.store.failNext(1, FenceRejected([group]))
        failed = self.node.streams.send(CID, "alice", "lost", None)
        self.clock.advance(0.005)
        self.failureResultOf(failed)
        self.assertEqual((self.store.outbox, self.store.stored(CID)), ({}, []))
        event = self.send()
        [entry] = self.store.outbox.values()
        self.assertEqual(entry, outboxEntry(event))
        self.assertEqual(len(self.store.batches), 1)
        notification = parseNotification(entry.body.encode())
        self.assertEqual((notification.user, notification.type, notification.data["seq"]),
                         ("bob", "message", event.seq))

    def test_publishedAfterCommitAndDoneAfterOK(self):
        """
        Once the message is durable its notification is published; the entry stays pending
        until the publish is acknowledged, and is then marked done.
        """
        event = self.send()
        [(nid, d)] = self.published
        self.assertEqual(nid, f"m.{event.id}")
        self.assertEqual(list(self.store.outbox), [nid])
        d.callback(None)
        # Marked done with the others acknowledged within markDelay, in one store write.
        self.assertEqual(list(self.store.outbox), [nid])
        self.clock.advance(self.node.outbox.markDelay)
        self.assertEqual(self.store.outbox, {})
        self.assertEqual(self.node.outbox.published, 1)

    def test_notPublishedTwiceWhileInFlight(self):
        """
        While its publish waits (nsqd down), sweeps come with growing delays and do not
        publish the entry again.
        """
        self.send()
        calls = []
        real = self.store.pendingOutbox
        self.store.pendingOutbox = lambda groups, limit: calls.append(self.clock.seconds()) \
            or real(groups, limit)
        self.clock.advance(0)
        for _ in range(60):
            self.clock.advance(1)
        self.assertEqual(len(self.published), 1)
        gaps = [b - a for a, b in zip(calls, calls[1:])]
        self.assertTrue(gaps and all(b >= a for a, b in zip(gaps, gaps[1:])), gaps)
        self.assertGreater(gaps[-1], gaps[0])

    def test_failedPublishIsRetried(self):
        """
        A publish that fails leaves the entry pending; a later sweep publishes it again.
        """
        self.send()
        self.published[0][1].errback(RuntimeError("nsqd refused"))
        self.assertEqual(len(self.store.outbox), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.published), 2)
        self.published[1][1].callback(None)
        self.clock.advance(self.node.outbox.markDelay)
        self.assertEqual(self.store.outbox, {})
        self.assertEqual(self.node.outbox.republished, 1)

    def test_successShortensTheRetryDelay(self):
        """
        After a long run of sweeps that found entries pending (the delays grown to 30 s), a
        publish that succeeds makes the next failed one retried after the shortest delay.
        """
        self.send()
        self.published[0][1].errback(RuntimeError("owner away"))
        for _ in range(12):
            self.clock.advance(30)
            self.published[-1][1].errback(RuntimeError("owner away"))
        self.assertEqual(self.node.outbox._policy(self.node.outbox._pendingSweeps), 30)
        self.clock.advance(30)
        self.published[-1][1].callback(None)
        self.clock.advance(self.node.outbox.markDelay)
        self.assertEqual(self.store.outbox, {})
        self.send("second")
        count = len(self.published)
        self.published[-1][1].errback(RuntimeError("owner away again"))
        self.clock.advance(0.5)
        self.assertEqual(len(self.published), count + 1)

    def test_pendingCountsUntilDone(self):
        """
        The C{hpchat_outbox_pending} count holds an entry while it is published, after its
        publish failed until a sweep publishes it, and until it is marked done.
        """
        from hpchat import metrics

        def pending() -> float:
            return metrics.outboxPending.collect()[0].samples[0].value

        self.assertEqual(pending(), 0)
        self.send()
        self.assertEqual(pending(), 1)
        self.published[0][1].errback(RuntimeError("nsqd refused"))
        self.assertEqual(pending(), 1)
        self.clock.advance(0.5)
        self.published[1][1].callback(None)
        self.assertEqual(pending(), 1)
        self.clock.advance(self.node.outbox.markDelay)
        self.assertEqual((self.store.outbox, pending()), ({}, 0))

    def test_republishedWhenServedAfterARestart(self):
        """
        A node killed after the message was durable but before its notification was
        acknowledged: the node that serves the group next publishes the pending entry as
        soon as it starts, and marks it done after the OK.
        """
        event = self.send()
        # kill -9: nothing of the old node runs again.
        self.node.outbox.stopService()
        self.published.clear()
        again = Node(self.clock, self.store, self.publish)
        again.start()
        self.addCleanup(again.stop)
        self.clock.advance(0)
        [(nid, d)] = self.published
        self.assertEqual(nid, f"m.{event.id}")
        d.callback(None)
        self.clock.advance(again.outbox.markDelay)
        self.assertEqual(self.store.outbox, {})

    def test_onlyTheOwnerPublishes(self):
        """
        Pending entries of a group owned elsewhere are left to its owner.
        """
        self.send()
        self.node.outbox.stopService()
        self.published.clear()
        other = Node(self.clock, self.store, self.publish)
        group = other.streams.groupOf(CID)
        other.ownership.set(group, Redirect("node-b", "http://node-b.test:8080"))
        other.start()
        self.addCleanup(other.stop)
        self.clock.advance(0)
        self.clock.advance(5)
        self.assertEqual(self.published, [])
        self.assertIn(group, other.ownership.routeCalls)

    def test_pendingEntriesIdleSweep(self):
        """
        With nothing pending the sweeps slow to the idle interval; an entry that shows up
        (written by a failed-over owner) is then found by the next one.
        """
        self.clock.advance(0)
        self.assertEqual(self.published, [])
        entry = outboxEntry(Event(CID, 1, "e1", self.node.streams.groupOf(CID), "message",
                                  "alice", 1.0, None, {"text": "x"}))
        self.store.outbox[entry.id] = entry
        self.clock.advance(self.node.outbox.idleInterval)
        self.assertEqual([nid for nid, _ in self.published], [entry.id])

    def leftByAnotherOwner(self) -> tuple[int, OutboxEntry]:
        """
        CID's group owned by node-b, and a pending entry of it in the store.
        """
        group = self.node.streams.groupOf(CID)
        self.node.ownership.set(group, Redirect("node-b", "http://node-b.test:8080"))
        self.clock.advance(0)
        entry = outboxEntry(Event(CID, 1, "e1", group, "message", "alice", 1.0, None,
                                  {"text": "x"}))
        self.store.outbox[entry.id] = entry
        return group, entry

    def test_gainedGroupIsSweptAtOnce(self):
        """
        A group this node gains (its owner failed over) is swept at once, not at the next idle
        sweep: the entries its previous owner left pending go out.
        """
        group, entry = self.leftByAnotherOwner()
        self.clock.advance(1)
        self.assertEqual(self.published, [])
        self.node.ownership.gain([group])
        self.clock.advance(0)
        self.assertEqual([nid for nid, _ in self.published], [entry.id])

    def test_gainDuringASweepSweepsAgain(self):
        """
        A gain told while a sweep is reading the store (which may have taken the owned groups
        before it) is followed by another sweep as soon as that one ends.
        """
        group, entry = self.leftByAnotherOwner()
        reads: list[defer.Deferred] = []
        pendingOutbox = self.store.pendingOutbox

        def slowRead(groups, limit):
            d: defer.Deferred = defer.Deferred()
            reads.append(d)
            d.addCallback(lambda _: pendingOutbox(groups, limit))
            return d

        self.patch(self.store, "pendingOutbox", slowRead)
        self.clock.advance(self.node.outbox.idleInterval)
        self.assertEqual(len(reads), 1)
        self.node.ownership.gain([group])
        self.clock.advance(0)
        self.assertEqual(len(reads), 1, "one sweep at a time")
        self.patch(self.store, "pendingOutbox", pendingOutbox)
        reads[0].callback(None)
        self.assertEqual(self.published, [])
        self.clock.advance(0)
        self.assertEqual([nid for nid, _ in self.published], [entry.id])

    def test_ownEntriesNotCrowdedOut(self):
        """
        Many older entries of groups owned elsewhere do not keep this node's own pending
        entry out of its sweeps.
        """
        from hpchat.storage.base import OutboxEntry

        group = self.node.streams.groupOf(CID)
        other = (group + 1) % GROUPS
        self.node.ownership.set(other, Redirect("node-b", "http://node-b.test:8080"))
        self.clock.advance(0)
        for i in range(self.node.outbox.sweepLimit + 10):
            entry = OutboxEntry(f"m.other-{i}", other, "dm:x:y", i + 1, "{}", float(i))
            self.store.outbox[entry.id] = entry
        mine = outboxEntry(Event(CID, 1, "e1", group, "message", "alice", 10_000.0, None,
                                 {"text": "x"}))
        self.store.outbox[mine.id] = mine
        self.clock.advance(self.node.outbox.idleInterval)
        self.assertEqual([nid for nid, _ in self.published], [mine.id])

    def test_storeAwayDuringASweep(self):
        """
        A sweep that finds the store away (a StoreError) logs one line, no traceback, and
        sweeps again soon; the entry is published once the store answers.
        """
        from hpchat.storage.base import StoreError

        self.clock.advance(0)
        entry = outboxEntry(Event(CID, 1, "e1", self.node.streams.groupOf(CID), "message",
                                  "alice", 1.0, None, {"text": "x"}))
        self.store.outbox[entry.id] = entry
        real = self.store.pendingOutbox
        self.store.pendingOutbox = lambda groups, limit: defer.fail(StoreError("away"))
        self.clock.advance(self.node.outbox.idleInterval)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.published, [])
        self.store.pendingOutbox = real
        self.clock.advance(1.0)
        self.assertEqual([nid for nid, _ in self.published], [entry.id])

    def test_marksDoneInOneWrite(self):
        """
        Entries acknowledged close together are marked done with one store write.
        """
        calls = []
        real = self.store.markOutboxDone
        self.store.markOutboxDone = lambda entries: calls.append(len(entries)) or real(entries)
        for i in range(3):
            self.send(f"m{i}")
        for _, d in self.published:
            d.callback(None)
        self.clock.advance(self.node.outbox.markDelay)
        self.assertEqual((calls, self.store.outbox), ([3], {}))

    def test_stopWaitsForMarking(self):
        """
        Stopping marks the acknowledged entries done at once and waits for the write.
        """
        self.send()
        marking: defer.Deferred = defer.Deferred()
        self.store.markOutboxDone = lambda entries: marking
        self.published[0][1].callback(None)
        stopped = self.node.outbox.stopService()
        self.assertNoResult(stopped)
        marking.callback(None)
        self.successResultOf(stopped)
