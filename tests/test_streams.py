"""
Streams in memory: seqs, visibility after durability, long-poll waiters, typing, dedupe,
eviction and loss of a group. Deterministic: a Clock and an in-memory store.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat import metrics
from hpchat.groups import Redirect
from hpchat.persister import BatchPersister
from hpchat.storage.base import Event
from hpchat.streams import CursorAhead, Streams, StreamUnavailable
from tests.fakes import FakeOwnership, MemoryEventStore

CID = "dm:alice:bob"


class StreamsTestCase(SynchronousTestCase):
    history = 5
    maxStreams: int | None = None

    def setUp(self):
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

    def tearDown(self):
        self.streams.stopService()
        self.successResultOf(self.persister.stopService())

    def waiterTimers(self):
        return [c for c in self.clock.getDelayedCalls() if "timedOut" in repr(c.func)]

    def send(self, text="hi", sender="alice", clientId=None, stream=CID):
        d = self.streams.send(stream, sender, text, clientId)
        self.clock.advance(0.005)
        return d

    def sent(self, *args, **kw):
        return self.successResultOf(self.send(*args, **kw))


class SendTests(StreamsTestCase):
    def test_seqsAreConsecutiveFromOne(self):
        """
        Messages get seqs 1, 2, 3 in order, and are stored with the owner's token.
        """
        seqs = [self.sent(f"m{i}")[0].seq for i in range(3)]
        self.assertEqual(seqs, [1, 2, 3])
        self.assertEqual(self.store.fences[self.streams.groupOf(CID)], 7)

    def test_visibleOnlyOnceDurable(self):
        """
        Until the batch is durable the send is unanswered, pollers see nothing and no
        onCommitted hook has run.
        """
        self.store.hold()
        sending = self.streams.send(CID, "alice", "hi", None)
        poll = self.streams.poll(CID, 0, None, 10)
        self.clock.advance(0.005)
        self.assertNoResult(sending)
        self.assertNoResult(poll)
        self.assertEqual(self.committed, [])
        self.store.release()
        event, created = self.successResultOf(sending)
        self.assertTrue(created)
        self.assertEqual(self.successResultOf(poll).events, [event])
        self.assertEqual(self.committed, [event])

    def test_readMarkerAnsweredOnceDurable(self):
        """
        A read at or below a marker that a send moved but that is not durable yet is
        answered only once that marker is durable, with it.
        """
        self.sent("first")
        self.store.hold()
        self.streams.send(CID, "alice", "second", None)
        self.clock.advance(0.005)
        read = self.streams.markRead(CID, "alice", 1)
        self.clock.advance(0.005)
        self.assertNoResult(read)
        self.store.release()
        self.clock.advance(0.005)
        self.clock.advance(0.005)
        self.assertEqual(self.successResultOf(read), 2)

    def test_repeatedClientIdReturnsOriginal(self):
        """
        A repeated client_id from the same sender returns the original, not a new message;
        from the other participant it is a new message.
        """
        first, created = self.sent("a", clientId="k1")
        again, createdAgain = self.sent("b", clientId="k1")
        self.assertEqual((again, createdAgain), (first, False))
        other, created = self.sent("c", sender="bob", clientId="k1")
        self.assertEqual((other.seq, created), (2, True))

    def test_concurrentRepeatsShareTheFirstOutcome(self):
        """
        Two sends with one client_id in flight at once produce one message.
        """
        self.store.hold()
        one = self.streams.send(CID, "alice", "a", "k")
        two = self.streams.send(CID, "alice", "a", "k")
        self.clock.advance(0.005)
        self.store.release()
        (first, created), (second, createdAgain) = (self.successResultOf(one),
                                                    self.successResultOf(two))
        self.assertEqual((second, created, createdAgain), (first, True, False))
        self.assertEqual(len(self.store.events[CID]), 1)

    def test_clientIdFoundInStoreBeyondMemory(self):
        """
        A client_id older than the in-memory log is found in the store after a reload.
        """
        first, _ = self.sent("a", clientId="old")
        for i in range(self.history + 2):
            self.sent(f"m{i}")
        self.streams.dropGroups([self.streams.groupOf(CID)])
        again, created = self.sent("a", clientId="old")
        self.assertEqual((again, created), (first, False))

    def notify(self, nid, type="message", user="bob"):
        d = self.streams.appendNotification(user, f"inbox:{user}", nid, type, "alice",
                                            {"conversation": CID, "seq": 1})
        self.clock.advance(0.005)
        return d

    def test_redeliveredMessageNotificationIsDeduplicated(self):
        """
        A C{message} notification delivered again (NSQ redelivers, producers resend) is found
        by its id while the inbox is complete in memory: the original is returned, nothing is
        written, and other notifications of the inbox go on.
        """
        first, created = self.successResultOf(self.notify("m.1"))
        again, createdAgain = self.successResultOf(self.notify("m.1"))
        self.assertEqual((again, created, createdAgain), (first, True, False))
        flirt, _ = self.successResultOf(self.notify("f.1", type="flirt"))
        self.assertEqual(flirt.seq, 2)
        self.assertEqual([e.id for e in self.store.stored("inbox:bob")], ["m.1", "f.1"])

    def test_concurrentMessageNotificationsShareTheFirstOutcome(self):
        """
        The same C{message} notification twice while the first is being written: one event.
        """
        self.store.hold()
        one = self.notify("m.2")
        two = self.notify("m.2")
        self.store.release()
        (first, created), (second, createdAgain) = (self.successResultOf(one),
                                                    self.successResultOf(two))
        self.assertEqual((second, created, createdAgain), (first, True, False))
        self.assertEqual(len(self.store.stored("inbox:bob")), 1)

    def test_messageNotificationFoundInStoreBeyondMemory(self):
        """
        A C{message} notification older than the in-memory log is found in the store.
        """
        first, _ = self.successResultOf(self.notify("m.old"))
        for i in range(self.history + 2):
            self.successResultOf(self.notify(f"f.{i}", type="flirt"))
        self.streams.dropGroups([self.streams.groupOf("inbox:bob")])
        again, created = self.successResultOf(self.notify("m.old"))
        self.assertEqual((again, created), (first, False))
        self.assertEqual(len(self.store.stored("inbox:bob")), self.history + 3)

    def test_duplicateInTheStoreFailsOnlyItsStream(self):
        """
        A notification that the stream's memory misses but the store holds (a stale view)
        fails alone: the other streams of its group, written in the same batch, succeed and
        stay loaded; the stream reloads, and the notification again is the stored original.
        """
        group = self.streams.groupOf("inbox:bob")
        other = next(f"inbox:u{i}" for i in range(10_000)
                     if self.streams.groupOf(f"inbox:u{i}") == group)
        self.successResultOf(self.streams.get("inbox:bob"))
        self.successResultOf(self.streams.get(other))
        stale = Event(stream="inbox:bob", seq=1, id="m.9", group=group, type="message",
                      sender="alice", ts=1.0, data={})
        self.store.events["inbox:bob"] = {1: stale}
        duplicate = self.streams.appendNotification("bob", "inbox:bob", "m.9", "message",
                                                    "alice", {})
        mate = self.streams.appendNotification(other[6:], other, "f.1", "flirt", "alice", {})
        self.clock.advance(0.005)
        self.failureResultOf(duplicate)
        self.assertTrue(self.successResultOf(mate)[1])
        self.assertIn(other, self.streams._streams)
        self.assertNotIn("inbox:bob", self.streams._streams)
        again, created = self.successResultOf(self.notify("m.9"))
        self.assertEqual((again, created), (stale, False))

    def test_lostGroupFailsTheSendAndDropsTheStream(self):
        """
        A fence rejection fails the send with the store's error and forgets the stream, whose
        waiters are told to go elsewhere.
        """
        self.sent("first")
        waiting = self.streams.poll(CID, 1, None, 30)
        self.store.fences[self.streams.groupOf(CID)] = 100
        failure = self.failureResultOf(self.send("second"))
        self.assertEqual(type(failure.value).__name__, "FenceRejected")
        self.failureResultOf(waiting, StreamUnavailable)
        self.assertNotIn(CID, self.streams._streams)

    def test_typingClearedBySending(self):
        """
        Sending a message clears the sender's typing mark.
        """
        self.streams.setTyping(CID, "alice", True)
        self.sent("hi")
        result = self.successResultOf(self.streams.poll(CID, None, None, 0))
        self.assertEqual(result.typing, [])
        self.assertEqual(result.typing_version, 2)


class PollTests(StreamsTestCase):
    def test_answersAtOnceWhenBehind(self):
        """
        A cursor behind last_seq gets the missing events at once.
        """
        self.sent("a")
        self.sent("b")
        result = self.successResultOf(self.streams.poll(CID, 1, None, 30))
        self.assertEqual(([e.text if False else e.data["text"] for e in result.events],
                          result.last_seq), (["b"], 2))

    def test_waitsAndWakesOnSend(self):
        """
        A waiter at last_seq is answered when a message commits, and its timer is cancelled.
        """
        poll = self.streams.poll(CID, None, None, 30)
        self.assertNoResult(poll)
        event, _ = self.sent("hi")
        self.assertEqual(self.successResultOf(poll).events, [event])
        self.assertEqual(self.waiterTimers(), [])

    def test_timeoutAnswersEmpty(self):
        """
        Nothing happening until the timeout gives an empty answer.
        """
        poll = self.streams.poll(CID, None, None, 3)
        self.clock.advance(2.9)
        self.assertNoResult(poll)
        self.clock.advance(0.1)
        result = self.successResultOf(poll)
        self.assertEqual((result.events, result.last_seq), ([], 0))

    def test_cursorAhead(self):
        """
        A cursor beyond last_seq fails with CursorAhead.
        """
        self.failureResultOf(self.streams.poll(CID, 3, None, 0), CursorAhead)

    def test_cancelLeavesNothingBehind(self):
        """
        Cancelling a waiting poll (the client went away) removes the waiter and its timer.
        """
        poll = self.streams.poll(CID, None, None, 30)
        poll.cancel()
        self.failureResultOf(poll, defer.CancelledError)
        stream = self.streams._streams[CID]
        self.assertEqual(stream.waiters, set())
        self.assertEqual(self.streams._waiting, 0)
        self.assertEqual(self.waiterTimers(), [])

    def test_typingWakesOnlyTypingWaiters(self):
        """
        A typing change answers waiters that gave typing_version, not those that did not.
        """
        withTyping = self.streams.poll(CID, None, 0, 30)
        withoutTyping = self.streams.poll(CID, None, None, 30)
        self.streams.setTyping(CID, "alice", True)
        result = self.successResultOf(withTyping)
        self.assertEqual((result.typing, result.typing_version), (["alice"], 1))
        self.assertNoResult(withoutTyping)
        withoutTyping.cancel()
        self.failureResultOf(withoutTyping)

    def test_typingExpiresAndRefreshes(self):
        """
        A typing mark lasts typing_ttl unless refreshed; its expiry bumps the version.
        """
        self.streams.setTyping(CID, "bob", True)
        self.clock.advance(4)
        self.streams.setTyping(CID, "bob", True)
        self.clock.advance(4)
        result = self.successResultOf(self.streams.poll(CID, None, None, 0))
        self.assertEqual((result.typing, result.typing_version), (["bob"], 1))
        waiting = self.streams.poll(CID, None, 1, 30)
        self.clock.advance(1)
        result = self.successResultOf(waiting)
        self.assertEqual((result.typing, result.typing_version), ([], 2))

    def test_staleTypingVersionAnswersAtOnce(self):
        """
        A typing_version different from the current one answers at once.
        """
        self.streams.setTyping(CID, "bob", True)
        result = self.successResultOf(self.streams.poll(CID, None, 0, 30))
        self.assertEqual(result.typing_version, 1)

    def test_oldCursorReadsFromStore(self):
        """
        A cursor older than the in-memory log is served from the store, 100 at most.
        """
        for i in range(self.history + 3):
            self.sent(f"m{i}")
        result = self.successResultOf(self.streams.poll(CID, 0, None, 0))
        self.assertEqual([e.seq for e in result.events], list(range(1, self.history + 4)))


class HistoryTests(StreamsTestCase):
    history = 10

    def test_pages(self):
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
    def test_loadsFromStoreOnFirstUse(self):
        """
        A stream already in the store continues from its last seq.
        """
        self.sent("a")
        self.sent("b")
        self.streams._streams.clear()
        event, _ = self.sent("c")
        self.assertEqual(event.seq, 3)

    def test_notOwnedIsUnavailable(self):
        """
        A stream of a group this node does not own cannot be loaded.
        """
        self.ownership.routes[self.streams.groupOf(CID)] = Redirect("n2", "http://n2")
        self.failureResultOf(self.streams.poll(CID, None, None, 0), StreamUnavailable)

    def test_losingAGroupAnswersWaiters(self):
        """
        When ownership is lost, waiting polls fail with StreamUnavailable and the stream is
        forgotten.
        """
        poll = self.streams.poll(CID, None, None, 30)
        self.ownership.lose([self.streams.groupOf(CID)])
        self.failureResultOf(poll, StreamUnavailable)
        self.assertEqual(self.streams._streams, {})
        self.assertEqual(self.streams._waiting, 0)

    def test_idleStreamsAreEvicted(self):
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

    def test_stopAnswersWaiters(self):
        """
        Stopping answers every waiting poll so clients retry elsewhere.
        """
        poll = self.streams.poll(CID, None, None, 30)
        self.streams.stopService()
        self.failureResultOf(poll, StreamUnavailable)
        self.streams.startService()


class CommitHookTests(StreamsTestCase):
    def test_hooksRunForAStreamDroppedWhileWriting(self):
        """
        A message that becomes durable after its stream was dropped (shutdown, hand-off)
        still runs the commit hooks, so its notification is not lost.
        """
        self.store.hold()
        sending = self.streams.send(CID, "alice", "last words", None)
        self.clock.advance(0.005)
        self.streams.dropGroups([self.streams.groupOf(CID)])
        self.store.release()
        event, created = self.successResultOf(sending)
        self.assertEqual(self.committed, [event])


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

    def test_leastRecentlyUsedEvictedNextTurn(self):
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

    def test_useRefreshes(self):
        """
        Using a stream makes it the most recently used: another is evicted instead.
        """
        self.touch(self.A, self.B, self.A, self.C)
        self.clock.advance(0)
        self.assertEqual(self.loaded(), [self.A, self.C])

    def test_waitingPollKeepsItInMemory(self):
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

    def test_softWhileAllBusy(self):
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

    def test_writeInFlightKeepsItInMemory(self):
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

    def test_typingKeepsItInMemory(self):
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

    def test_reloadedTransparently(self):
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

    def test_waiterAfterLoadLandsOnTheLiveStream(self):
        """
        Nothing is evicted while a load hands its stream to those waiting for it: even when
        the first of them loads another stream past the cap, the next one's poll waits on
        the stream that stays in memory, and a later send wakes it.
        """
        self.streams.maxStreams = 1
        claim, slow = self.store.claim, defer.Deferred()

        def slowClaim(group, token, stream, recent):
            if stream == self.A and not slow.called:
                return slow.addCallback(lambda _: claim(group, token, stream, recent))
            return claim(group, token, stream, recent)

        self.store.claim = slowClaim
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

    def test_idleEvictStillWorks(self):
        """
        Idle eviction goes on under the cap.
        """
        self.touch(self.A)
        self.clock.pump([30] * 4)
        self.assertEqual(self.loaded(), [])

    def test_stopCancelsAPendingEviction(self):
        """
        Stopping the service leaves no eviction on the clock.
        """
        self.touch(self.A, self.B, self.C)
        self.streams.stopService()
        self.assertEqual([c for c in self.clock.getDelayedCalls()
                          if "trim" in repr(c.func)], [])
        self.streams.startService()

    def test_atLeastOne(self):
        self.assertRaises(ValueError, Streams, self.clock, self.store, self.persister,
                          self.ownership, groups=16, maxStreams=0)
