"""
Streams in memory, through the facade the API uses (L{hpchat.streams.Streams}): loading,
history, loss of a group, idle and least-recently-used eviction. The parts have their own
modules: tests.test_streams_state, _waiters, _appends and _readmarkers, on the base class
L{StreamsTestCase} here. Deterministic: a Clock and an in-memory store.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat import metrics
from hpchat.groups import Redirect
from hpchat.persister import BatchPersister
from hpchat.storage.base import Event
from hpchat.streams import Streams, StreamUnavailable
from tests.fakes import FakeOwnership, MemoryEventStore

CID = "dm:alice:bob"


class StreamsTestCase(SynchronousTestCase):
    history = 5
    maxStreams: int | None = None

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = MemoryEventStore()
        self.store.open()
        self.ownership = FakeOwnership(token=7, groups=16)
        self.persister = BatchPersister(self.clock, self.store, batchSize=100,
                                        flushInterval=0.005)
        self.streams = Streams(self.clock, self.store, self.persister, self.ownership,
                               groups=16, historyInMemory=self.history, typingTtl=5,
                               idleEvict=60, maxStreams=self.maxStreams)
        self.persister.subscribeLost(self.streams.dropGroups)
        self.ownership.subscribeLost(self.streams.dropGroups)
        self.persister.startService()
        self.streams.startService()
        self.committed: list[Event] = []
        self.streams.onCommitted.append(self.committed.append)

    def tearDown(self) -> None:
        self.streams.stopService()
        self.successResultOf(self.persister.stopService())

    def waiterTimers(self):
        """
        The timer of the waiters' timeouts (one for all of them), if it is on the clock.
        """
        return [c for c in self.clock.getDelayedCalls() if "Deadlines._fire" in repr(c.func)]

    def send(self, text="hi", sender="alice", clientId=None, stream=CID):
        d = self.streams.send(stream, sender, text, clientId)
        self.clock.advance(0.005)
        return d

    def sent(self, *args, **kw):
        return self.successResultOf(self.send(*args, **kw))


class HistoryTests(StreamsTestCase):
    history = 10

    def test_pages(self) -> None:
        """
        History pages backwards, oldest first, from memory and from the store alike.
        """
        for i in range(25):
            self.sent(f"m{i}")
        events, more = self.successResultOf(self.streams.history(CID, None, 5))
        self.assertEqual(([e.seq for e in events], more), ([21, 22, 23, 24, 25], True))
        events, more = self.successResultOf(self.streams.history(CID, 21, 12))
        self.assertEqual(([e.seq for e in events], more), (list(range(9, 21)), True))
        events, more = self.successResultOf(self.streams.history(CID, 9, 50))
        self.assertEqual(([e.seq for e in events], more), (list(range(1, 9)), False))
        self.assertEqual(self.successResultOf(self.streams.history(CID, 1, 5)), ([], False))


class LifecycleTests(StreamsTestCase):
    def test_loadsFromStoreOnFirstUse(self) -> None:
        """
        A stream already in the store continues from its last seq.
        """
        self.sent("a")
        self.sent("b")
        self.streams._streams.clear()
        event, _ = self.sent("c")
        self.assertEqual(event.seq, 3)

    def test_groupOfALoadedStreamIsItsOwn(self) -> None:
        """
        The group of a stream in memory is the one it was loaded under, without hashing its
        name again; of any other, the hash of its name.
        """
        from hpchat import streamids
        from hpchat.streams import service

        expected = streamids.groupOf(CID, self.streams.groups)
        self.assertEqual(self.streams.groupOf(CID), expected)
        stream = self.successResultOf(self.streams.get(CID))
        self.assertEqual(stream.group, expected)

        def hashed(name: str, groups: int) -> int:
            raise AssertionError(f"hashed {name!r} again")

        self.patch(service, "groupOf", hashed)
        self.assertEqual(self.streams.groupOf(CID), expected)
        self.assertRaises(AssertionError, self.streams.groupOf, "inbox:carol")

    def test_notOwnedIsUnavailable(self) -> None:
        """
        A stream of a group this node does not own cannot be loaded.
        """
        self.ownership.routes[self.streams.groupOf(CID)] = Redirect("n2", "http://n2")
        self.failureResultOf(self.streams.poll(CID, None, None, 0), StreamUnavailable)

    def test_losingAGroupAnswersWaiters(self) -> None:
        """
        When ownership is lost, waiting polls fail with StreamUnavailable and the stream is
        forgotten.
        """
        poll = self.streams.poll(CID, None, None, 30)
        self.ownership.lose([self.streams.groupOf(CID)])
        self.failureResultOf(poll, StreamUnavailable)
        self.assertEqual(self.streams._streams, {})
        self.assertEqual(self.streams.waiting, 0)

    def test_idleStreamsAreEvicted(self) -> None:
        """
        A stream unused for idle_evict seconds, with no waiter and nothing in flight, is
        dropped from memory; one with a waiter stays.
        """
        self.sent("a")
        self.sent("x", stream="dm:carol:dave", sender="carol")
        waiting = self.streams.poll("dm:carol:dave", None, None, 3600)
        self.clock.pump([30] * 4)
        self.assertEqual(list(self.streams._streams), ["dm:carol:dave"])
        waiting.cancel()
        self.failureResultOf(waiting)

    def test_stopAnswersWaiters(self) -> None:
        """
        Stopping answers every waiting poll so clients retry elsewhere.
        """
        poll = self.streams.poll(CID, None, None, 30)
        self.streams.stopService()
        self.failureResultOf(poll, StreamUnavailable)
        self.streams.startService()


class FacadeTests(StreamsTestCase):
    def test_concurrentGetsShareOneLoad(self) -> None:
        """
        Gets while a stream loads wait for the one load; a caller that gives up (cancels)
        leaves it and the others.
        """
        claim, claims = self.store.claim, []
        slow: defer.Deferred[None] = defer.Deferred()

        def slowClaim(group, token, stream, recent):
            claims.append(stream)
            return slow.addCallback(lambda _: claim(group, token, stream, recent))

        self.store.claim = slowClaim  # type: ignore[method-assign]
        first, second = self.streams.get(CID), self.streams.get(CID)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        slow.callback(None)
        stream = self.successResultOf(second)
        self.assertEqual((stream.name, claims), (CID, [CID]))
        self.assertIs(self.successResultOf(self.streams.get(CID)), stream)
        self.assertEqual(self.streams._loading, {})

    def test_failedLoadReachesEveryWaiter(self) -> None:
        """
        A load that fails fails every get waiting for it, and the next get tries again.
        """
        claims: list[defer.Deferred] = []

        def slowClaim(group, token, stream, recent):
            claims.append(defer.Deferred())
            return claims[-1]

        self.store.claim = slowClaim  # type: ignore[method-assign]
        first, second = self.streams.get(CID), self.streams.get(CID)
        claims[0].errback(RuntimeError("store down"))
        self.failureResultOf(first, RuntimeError)
        self.failureResultOf(second, RuntimeError)
        self.assertEqual(self.streams._loading, {})
        again = self.streams.get(CID)
        self.assertEqual(len(claims), 2)
        self.assertNoResult(again)
        claims[1].errback(RuntimeError("still down"))
        self.failureResultOf(again, RuntimeError)

    def test_currentAndIsLoaded(self) -> None:
        """
        C{current} gives a loaded, owned stream (else None); C{isLoaded} says whether a
        stream object is still the one in memory.
        """
        self.assertIsNone(self.streams.current(CID))
        stream = self.successResultOf(self.streams.get(CID))
        self.assertIs(self.streams.current(CID), stream)
        self.assertTrue(self.streams.isLoaded(stream))
        self.ownership.lose([self.streams.groupOf(CID)])
        self.assertIsNone(self.streams.current(CID))
        self.assertFalse(self.streams.isLoaded(stream))

    def test_waitingCountsPolls(self) -> None:
        """
        C{waiting} counts the polls waiting, on every stream.
        """
        polls = [self.streams.poll(name, None, None, 30) for name in (CID, "dm:carol:dave")]
        self.assertEqual(self.streams.waiting, 2)
        for poll in polls:
            poll.cancel()
            self.failureResultOf(poll)
        self.assertEqual(self.streams.waiting, 0)

    def test_historyBeyondMemoryIsRead(self) -> None:
        """
        History from memory is answered at once; older pages come from the store.
        """
        for i in range(self.history + 2):
            self.sent(f"m{i}")
        events, more = self.successResultOf(self.streams.history(CID, None, 2))
        self.assertEqual(([e.seq for e in events], more), ([6, 7], True))
        events, more = self.successResultOf(self.streams.history(CID, 3, 10))
        self.assertEqual(([e.seq for e in events], more), ([1, 2], False))


def evicted() -> float:
    return metrics.REGISTRY.get_sample_value("hpchat_limited_total",
                                             {"limit": "streams_evicted"}) or 0.0


class LeastRecentlyUsedTests(StreamsTestCase):
    """
    At most maxStreams in memory: the least recently used evicted, loaded again on demand.
    """

    maxStreams = 2
    A, B, C = "dm:alice:bob", "dm:carol:dave", "dm:erin:frank"

    def touch(self, *names: str) -> None:
        for name in names:
            self.successResultOf(self.streams.poll(name, None, None, 0))

    def loaded(self) -> list[str]:
        return list(self.streams._streams)

    def test_leastRecentlyUsedEvictedNextTurn(self) -> None:
        """
        Loading one stream too many evicts the least recently used one, on the next turn
        of the reactor (not during the load), and counts it.
        """
        before = evicted()
        self.touch(self.A, self.B, self.C)
        self.assertEqual(self.loaded(), [self.A, self.B, self.C])
        self.clock.advance(0)
        self.assertEqual(self.loaded(), [self.B, self.C])
        self.assertEqual(evicted() - before, 1)

    def test_useRefreshes(self) -> None:
        """
        Using a stream makes it the most recently used: another is evicted instead.
        """
        self.touch(self.A, self.B, self.A, self.C)
        self.clock.advance(0)
        self.assertEqual(self.loaded(), [self.A, self.C])

    def test_waitingPollKeepsItInMemory(self) -> None:
        """
        A stream with a poll waiting is never evicted (the cap is soft then); it is
        once the poll has been answered and the cap is enforced again.
        """
        waiting = self.streams.poll(self.A, None, None, 30)
        self.touch(self.B, self.C)
        self.clock.advance(0)
        self.assertEqual(self.loaded(), [self.C, self.A])
        self.sent("wake", stream=self.A)
        self.assertEqual(len(self.successResultOf(waiting).events), 1)
        self.touch(self.B)
        self.clock.advance(0)
        self.assertEqual(self.loaded(), [self.A, self.B])

    def test_softWhileAllBusy(self) -> None:
        """
        When every stream is busy, all stay: nothing is lost, nothing counted.
        """
        before = evicted()
        polls = [self.streams.poll(name, None, None, 30) for name in (self.A, self.B, self.C)]
        self.clock.advance(0)
        self.assertEqual(sorted(self.loaded()), sorted([self.A, self.B, self.C]))
        self.assertEqual(evicted(), before)
        for poll in polls:
            poll.cancel()
            self.failureResultOf(poll)

    def test_writeInFlightKeepsItInMemory(self) -> None:
        """
        A stream with a write not yet durable is not evicted; its event is shown once it is.
        """
        self.store.hold()
        sending = self.streams.send(self.A, "alice", "slow", None)
        self.touch(self.B, self.C)
        self.clock.advance(0.005)
        self.assertIn(self.A, self.loaded())
        self.store.release()
        event, _ = self.successResultOf(sending)
        self.assertEqual(self.successResultOf(self.streams.poll(self.A, 0, None, 0)).events,
                         [event])

    def test_typingKeepsItInMemory(self) -> None:
        """
        A stream where someone is typing is not evicted until the mark expires.
        """
        self.successResultOf(self.streams.setTyping(self.A, "alice", True))
        self.touch(self.B, self.C)
        self.clock.advance(0)
        self.assertIn(self.A, self.loaded())
        self.clock.advance(5)
        self.touch(self.C, self.B)
        self.clock.advance(0)
        self.assertEqual(self.loaded(), [self.C, self.B])

    def test_reloadedTransparently(self) -> None:
        """
        After eviction, the stream is loaded again from the store: a poll with a cursor gets
        the right events (from memory or, beyond it, from the store), and sends continue the
        seqs.
        """
        sent = [self.sent(f"m{i}", stream=self.A)[0] for i in range(8)]
        waiting = self.streams.poll(self.A, 8, None, 30)
        self.touch(self.B, self.C)
        self.clock.advance(0)
        self.assertIn(self.A, self.loaded())
        event, _ = self.sent("m8", stream=self.A)
        self.assertEqual(self.successResultOf(waiting).events, [event])
        sent.append(event)
        self.touch(self.B, self.C)
        self.clock.advance(0)
        self.assertNotIn(self.A, self.loaded())
        beyondMemory = self.successResultOf(self.streams.poll(self.A, 1, None, 30))
        self.assertEqual([e.seq for e in beyondMemory.events], list(range(2, 10)))
        self.assertEqual(beyondMemory.events, sent[1:])
        self.touch(self.B, self.C)
        self.clock.advance(0)
        self.assertNotIn(self.A, self.loaded())
        recent = self.successResultOf(self.streams.poll(self.A, 7, None, 30))
        self.assertEqual([e.seq for e in recent.events], [8, 9])
        self.assertEqual(recent.last_seq, 9)
        self.assertEqual(self.sent("m9", stream=self.A)[0].seq, 10)

    def test_waiterAfterLoadLandsOnTheLiveStream(self) -> None:
        """
        Nothing is evicted while a load hands its stream to those waiting for it: even when
        the first of them loads another stream past the cap, the next one's poll waits on
        the stream that stays in memory, and a later send wakes it.
        """
        self.streams.maxStreams = 1
        claim = self.store.claim
        slow: defer.Deferred[None] = defer.Deferred()

        def slowClaim(group, token, stream, recent):
            if stream == self.A and not slow.called:
                return slow.addCallback(lambda _: claim(group, token, stream, recent))
            return claim(group, token, stream, recent)

        self.store.claim = slowClaim  # type: ignore[method-assign]
        first = self.streams.get(self.A).addCallback(lambda _: self.touch(self.B))
        waiting = self.streams.poll(self.A, None, None, 30)
        slow.callback(None)
        self.successResultOf(first)
        self.assertEqual(self.loaded(), [self.A, self.B])
        self.clock.advance(0)
        self.assertEqual(self.loaded(), [self.A])
        self.sent("hello", stream=self.A)
        self.assertEqual([e.data["text"] for e in self.successResultOf(waiting).events],
                         ["hello"])

    def test_idleEvictStillWorks(self) -> None:
        """
        Idle eviction goes on under the cap.
        """
        self.touch(self.A)
        self.clock.pump([30] * 4)
        self.assertEqual(self.loaded(), [])

    def test_stopCancelsAPendingEviction(self) -> None:
        """
        Stopping the service leaves no eviction on the clock.
        """
        self.touch(self.A, self.B, self.C)
        self.streams.stopService()
        self.assertEqual([c for c in self.clock.getDelayedCalls()
                          if "trim" in repr(c)], [])
        self.streams.startService()

    def test_atLeastOne(self) -> None:
        self.assertRaises(ValueError, Streams, self.clock, self.store, self.persister,
                          self.ownership, groups=16, maxStreams=0)
