"""
Periodic loops survive their bodies' exceptions: the shared guard, the streams' evictor and
the lease keepalive, on a Clock.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat import metrics
from hpchat.cluster.ownership import EtcdOwnership
from hpchat.loops import guarded, retryDelays, startLoop
from hpchat.persister import BatchPersister
from hpchat.streams import Streams
from tests.cluster.test_ownership import HandFedKeeper, ScriptedEtcd
from tests.fakes import FakeOwnership, MemoryEventStore


def failures(loop: str) -> float:
    return metrics.loopFailures.labels(loop)._value.get()


class GuardTests(SynchronousTestCase):
    def test_raisedAndFailedAreLoggedCountedAndSwallowed(self):
        """
        An exception raised by the body, or a failed Deferred it returns, is logged, counted
        under the loop's name, and not passed on; other results pass through.
        """
        before = failures("test-guard")
        results = iter([ValueError("raised"), defer.fail(KeyError("failed")), 7])

        def body():
            result = next(results)
            if isinstance(result, Exception):
                raise result
            return result

        run = guarded("test-guard", body)
        self.assertIsNone(run())
        self.assertIsNone(self.successResultOf(run()))
        self.assertEqual(run(), 7)
        self.assertEqual(failures("test-guard"), before + 2)
        self.assertEqual(len(self.flushLoggedErrors(ValueError, KeyError)), 2)

    def test_loopGoesOn(self):
        """
        A loop whose body raises on every other tick keeps ticking.
        """
        clock = task.Clock()
        ticks = []

        def body():
            ticks.append(clock.seconds())
            if len(ticks) % 2:
                raise RuntimeError("odd tick")

        loop = startLoop(clock, "test-loop", body, 1.0)
        clock.pump([1.0] * 4)
        self.assertEqual(ticks, [1.0, 2.0, 3.0, 4.0])
        self.assertTrue(loop.running)
        loop.stop()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class EvictorTests(SynchronousTestCase):
    def test_evictorSurvivesAnException(self):
        """
        When one run of the idle evictor raises, it is logged and counted, and a later run
        still evicts an idle stream.
        """
        clock = task.Clock()
        store = MemoryEventStore()
        persister = BatchPersister(clock, store, flushInterval=0.005)
        streams = Streams(clock, store, persister, FakeOwnership(token=1, groups=16),
                          groups=16, idleEvict=60)
        evict = streams._evictIdle
        runs = []

        def injected():
            runs.append(clock.seconds())
            if len(runs) == 1:
                raise RuntimeError("injected")
            return evict()

        streams._evictIdle = injected
        before = failures("evictor")
        persister.startService()
        streams.startService()
        self.addCleanup(lambda: (streams.stopService(), persister.stopService()))
        sent = streams.send("dm:alice:bob", "alice", "hi", None)
        clock.advance(0.005)
        self.successResultOf(sent)
        clock.advance(30)
        self.assertEqual(len(runs), 1)
        self.assertEqual(failures("evictor"), before + 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.pump([30] * 3)
        self.assertEqual(len(runs), 4)
        self.assertEqual(streams._streams, {})


class KeepaliveTests(SynchronousTestCase):
    def test_keepaliveSurvivesAnException(self):
        """
        When sending one keepalive raises, it is logged and counted, and the next
        keepalive is sent at the next tick.
        """
        clock = task.Clock()
        clock.advance(1000)
        etcd = ScriptedEtcd()
        sendKeepAlive = etcd.leaseKeepAlive
        calls = []

        def leaseKeepAlive(leaseId, timeout=None):
            calls.append(leaseId)
            if len(calls) == 1:
                raise RuntimeError("injected")
            return sendKeepAlive(leaseId, timeout)

        etcd.leaseKeepAlive = leaseKeepAlive
        ownership = EtcdOwnership(clock, etcd, "me", "http://me", groups=8, leaseTtl=6,
                                  keeperFactory=HandFedKeeper)
        before = failures("keepalive")
        ownership.startService()
        self.addCleanup(lambda: self.successResultOf(ownership.stopService()))
        clock.advance(2)
        self.assertEqual(failures("keepalive"), before + 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.advance(2)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(etcd.keepalives), 1)
        etcd.keepalives[0].callback(6)


class RetryDelayTests(SynchronousTestCase):
    def test_exponentialCappedWithoutJitter(self) -> None:
        """
        Retry C{n} waits C{initialDelay * factor ** n}, capped at C{maxDelay}; exact unless a
        jitter is given.
        """
        delays = retryDelays(0.25, 3.0)
        self.assertEqual([delays(n) for n in range(6)], [0.25, 0.5, 1.0, 2.0, 3.0, 3.0])
        self.assertEqual(retryDelays(1.0, 10.0, factor=3.0)(2), 9.0)
        self.assertEqual(retryDelays(1.0, 60.0)(10_000), 60.0)

    def test_jitterIsAdded(self) -> None:
        self.assertEqual(retryDelays(1.0, 5.0, jitter=lambda: 0.5)(1), 2.5)

    def test_registrationRetriesBackOff(self) -> None:
        """
        The ownership's registration with an etcd that refuses it is tried again after
        0.2 s, 0.4 s, 0.8 s ...: the delays of its retryDelays.
        """
        clock = task.Clock()
        etcd = ScriptedEtcd()
        grants: list[float] = []

        def refuse(ttl: int, leaseId: object = None, timeout: object = None) -> defer.Deferred:
            grants.append(clock.seconds())
            return defer.fail(ConnectionRefusedError("etcd is down"))

        etcd.leaseGrant = refuse
        ownership = EtcdOwnership(clock, etcd, "me", "http://me", groups=8,
                                  keeperFactory=HandFedKeeper, retryDelays=(0.2, 1.0))
        ownership.startService()
        clock.pump([0.2, 0.4, 0.8, 1.0, 1.0])
        self.assertEqual([round(t, 6) for t in grants], [0.0, 0.2, 0.6, 1.4, 2.4, 3.4])
        self.successResultOf(ownership.stopService())
