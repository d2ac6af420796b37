"""
The node's ordered, bounded start and stop (L{hpchat.node}), and the stages of a real node's
wiring (L{hpchat.tap.nodeStages}) stopped on a Clock with an in-memory store.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.node import NodeService, Stage, serviceStage
from hpchat.persister import BatchPersister, PersisterStopped
from hpchat.storage.service import StoreService
from hpchat.streams import Streams
from hpchat.tap import nodeStages
from tests.fakes import FakeOwnership, MemoryEventStore

CID = "dm:alice:bob"


class Recorder(Service):
    """
    A service that records its start and stop in C{log}; its stop returns C{result}
    (a Deferred the test fires, or None).
    """

    def __init__(self, name: str, log: list, result=None):
        self.name = name
        self.log = log
        self.result = result

    def privilegedStartService(self):
        self.log.append(("privileged", self.name))
        super().privilegedStartService()

    def startService(self):
        self.log.append(("start", self.name))
        super().startService()

    def stopService(self):
        self.log.append(("stop", self.name))
        super().stopService()
        return self.result


class NodeServiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.log: list = []

    def node(self, *stages, stopTimeout=40.0):
        return NodeService(self.clock, stages, stopTimeout=stopTimeout)

    def test_startsInReverseStopOrder(self):
        """
        The services of the stages start in the reverse of the stop order, privileged
        starts first, and they are the node's children.
        """
        a, b, c = (Recorder(n, self.log) for n in "abc")
        node = self.node(serviceStage("a", 1, a), Stage("plain", lambda: None, 1),
                         serviceStage("bc", 1, b, c))
        node.privilegedStartService()
        node.startService()
        self.assertEqual(self.log, [("privileged", "b"), ("privileged", "c"),
                                    ("privileged", "a"), ("start", "b"), ("start", "c"),
                                    ("start", "a")])
        self.assertEqual(set(node), {a, b, c})
        self.assertTrue(all(s.running for s in (a, b, c)))

    def test_eachStageAwaitedInTurn(self):
        """
        A stage's stop begins only once the previous stage's Deferred has fired, and the
        node's stop fires after the last.
        """
        first, second = defer.Deferred(), defer.Deferred()
        node = self.node(serviceStage("one", 5, Recorder("one", self.log, first)),
                         serviceStage("two", 5, Recorder("two", self.log, second)),
                         Stage("three", lambda: self.log.append(("stop", "three")), 5))
        node.startService()
        del self.log[:]
        stopped = node.stopService()
        self.assertEqual(self.log, [("stop", "one")])
        self.clock.advance(4)
        self.assertEqual(self.log, [("stop", "one")])
        first.callback(None)
        self.assertEqual(self.log, [("stop", "one"), ("stop", "two")])
        self.assertNoResult(stopped)
        second.callback(None)
        self.assertEqual(self.log[-1], ("stop", "three"))
        self.successResultOf(stopped)
        self.assertFalse(node.running)

    def test_overrunningStageIsLoggedAndTheNextGoesOn(self):
        """
        A stage that takes longer than its timeout is logged by name and left running; the
        next stage starts at its timeout; a failure it ends with later is logged too.
        """
        from twisted.logger import globalLogPublisher

        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        slow = defer.Deferred()
        node = self.node(Stage("slow", lambda: slow, 3),
                         Stage("next", lambda: self.log.append("next"), 3))
        node.startService()
        stopped = node.stopService()
        self.clock.advance(2.9)
        self.assertEqual(self.log, [])
        self.clock.advance(0.1)
        self.assertEqual(self.log, ["next"])
        self.successResultOf(stopped)
        overran = [e for e in events if e.get("stage") == "slow"
                   and "did not finish" in e.get("log_format", "")]
        self.assertEqual(len(overran), 1)
        self.assertFalse(slow.called)
        slow.errback(RuntimeError("late"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_wholeStopIsBounded(self):
        """
        The stop takes at most stopTimeout however long the stages' own timeouts are, and
        each stage still to come keeps up to RESERVE seconds of it: a stage that overruns
        cannot leave nothing for the ones after it (the lease revoke, the store).
        """
        from hpchat.node import RESERVE

        node = self.node(Stage("a", defer.Deferred, 30), Stage("b", defer.Deferred, 30),
                         Stage("c", lambda: self.log.append("c"), 30), stopTimeout=40)
        node.startService()
        stopped = node.stopService()
        self.clock.advance(30)
        self.assertNoResult(stopped)
        # b gets what is left but c's reserve: 40 - 30 - RESERVE.
        self.clock.advance(40 - 30 - RESERVE - 0.1)
        self.assertEqual(self.log, [])
        self.clock.advance(0.1)
        self.assertEqual(self.log, ["c"])
        self.successResultOf(stopped)
        self.assertEqual(self.clock.seconds(), 40 - RESERVE)

    def test_failingStageIsLoggedAndTheNextGoesOn(self):
        """
        A stage whose stop raises or fails is logged; the following stages still run and
        the node's stop succeeds.
        """
        def boom():
            raise ValueError("sync")

        node = self.node(Stage("raises", boom, 1),
                         Stage("fails", lambda: defer.fail(KeyError("async")), 1),
                         Stage("coroutine", lambda: self._appendLater("ran"), 1))
        node.startService()
        stopped = node.stopService()
        self.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(self.log, ["ran"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError, KeyError)), 2)

    async def _appendLater(self, what):
        await task.deferLater(self.clock, 0, lambda: None)
        self.log.append(what)

    def test_stopTwiceWaitsForTheSameStop(self):
        """
        A second stopService while stopping runs no stage again and fires with the first.
        """
        gate = defer.Deferred()
        calls = []
        node = self.node(Stage("a", lambda: calls.append(1) or gate, 5))
        node.startService()
        first, second = node.stopService(), node.stopService()
        self.assertEqual(calls, [1])
        gate.callback(None)
        self.successResultOf(first)
        self.successResultOf(second)

    def test_addStageBeforeAndAfter(self):
        """
        A stage can be placed just before or after a named one (e.g. an outbox between the
        persister and the producer); names are unique; no stage is added once running.
        """
        node = self.node(*(Stage(n, lambda: None, 1) for n in ("persister", "producer")))
        node.addStage(Stage("outbox", lambda: None, 1), after="persister")
        node.addStage(Stage("first", lambda: None, 1), before="persister")
        node.addStage(Stage("last", lambda: None, 1))
        self.assertEqual([s.name for s in node.stages],
                         ["first", "persister", "outbox", "producer", "last"])
        self.assertRaises(ValueError, node.addStage, Stage("outbox", lambda: None, 1))
        self.assertRaises(ValueError, node.addStage, Stage("x", lambda: None, 1),
                          before="nowhere")
        node.startService()
        self.assertRaises(RuntimeError, node.addStage, Stage("late", lambda: None, 1))


class FakeInternalClient:
    def __init__(self, log):
        self.log = log

    def close(self):
        self.log.append(("stop", "internal client"))


class LeaseRecorder(Recorder):
    """
    Records, when stopped, how many events the persister still had queued.
    """

    def __init__(self, log, persister):
        super().__init__("lease", log)
        self.persister = persister

    def stopService(self):
        self.log.append(("lease revoked with pending", self.persister.pending))
        return super().stopService()


class WiredStopTests(SynchronousTestCase):
    """
    The stages of L{nodeStages} around real streams, persister and store service.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.log: list = []
        self.store = MemoryEventStore()
        self.ownership = FakeOwnership(token=7, groups=16)
        self.persister = BatchPersister(self.clock, self.store, batchSize=100,
                                        flushInterval=10.0)
        self.streams = Streams(self.clock, self.store, self.persister, self.ownership,
                               groups=16)
        self.web = Recorder("web", self.log)
        self.lease = LeaseRecorder(self.log, self.persister)
        self.storeService = StoreService(self.store, lambda f: None, self.clock)
        self.node = NodeService(self.clock, nodeStages(
            web=self.web, streams=self.streams, persister=self.persister,
            internalClient=FakeInternalClient(self.log), store=self.storeService,
            ownership=self.lease))
        self.node.privilegedStartService()
        self.node.startService()
        del self.log[:]

    def test_queuedSendsAreDurableBeforeLeaseAndStore(self):
        """
        With six sends queued at stop, every one becomes durable: the lease is given back
        and the store closed only once the persister has written them all.
        """
        sends = [self.streams.send(CID, "alice", f"m{i}", None) for i in range(6)]
        self.assertEqual(self.persister.pending, 6)
        self.store.hold()
        stopped = self.node.stopService()
        self.assertNoResult(stopped)
        self.assertTrue(self.store.ready)
        self.assertNotIn(("stop", "lease"), self.log)
        self.assertEqual(len(self.store.held), 1)
        self.store.release()
        self.successResultOf(stopped)
        self.assertEqual([self.successResultOf(d)[0].seq for d in sends], [1, 2, 3, 4, 5, 6])
        self.assertEqual([e.seq for e in self.store.stored(CID)], [1, 2, 3, 4, 5, 6])
        self.assertIn(("lease revoked with pending", 0), self.log)
        self.assertFalse(self.store.ready)
        self.assertEqual(self.log, [("stop", "web"), ("stop", "internal client"),
                                    ("lease revoked with pending", 0), ("stop", "lease")])
        self.assertRaises(PersisterStopped, self.persister.enqueue, self.store.stored(CID)[0], 7)

    def test_waitingPollsAreAnsweredWithWhatTheyHave(self):
        """
        A waiting long-poll is answered at the polls stage with an empty result at the
        current last seq (not an error), so that its client polls again.
        """
        sent = self.streams.send(CID, "alice", "hello", None)
        self.clock.advance(10.0)
        self.successResultOf(sent)
        poll = self.streams.poll(CID, 1, None, 30)
        self.assertNoResult(poll)
        self.node.stopService()
        result = self.successResultOf(poll)
        self.assertEqual((result.events, result.last_seq), ([], 1))

    def test_hungStoreDoesNotHangTheStop(self):
        """
        A store that never confirms the last batch fails those sends after the persister's
        stopTimeout, and the rest of the stop (lease, store) still runs.
        """
        self.persister.stopTimeout = 5.0
        send = self.streams.send(CID, "alice", "lost", None)
        self.store.hold()
        stopped = self.node.stopService()
        self.clock.advance(5.0)
        self.successResultOf(stopped)
        self.failureResultOf(send)
        self.assertIn(("lease revoked with pending", 0), self.log)
        self.assertFalse(self.store.ready)
