"""
Long-poll waiters (L{hpchat.streams.waiters}): answered at once when behind, woken by commits
and typing, timed out, cancelled, answered or failed all at once; through the facade and on a
L{Stream} directly. And the listeners of the open event streams: told synchronously, caught
up in batches and from the store, closed, lost, and keeping their stream in memory.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.storage.base import Event, StreamSnapshot
from hpchat.streams import MAX_EVENTS_PER_POLL, CursorAhead, Stream, StreamUnavailable
from hpchat.streams.waiters import Listener, NoProgress, PollResult, Waiters
from tests.fakes import MemoryEventStore
from tests.test_streams import CID, StreamsTestCase


class PollTests(StreamsTestCase):
    def test_answersAtOnceWhenBehind(self) -> None:
        """
        A cursor behind last_seq gets the missing events at once.
        """
        self.sent("a")
        self.sent("b")
        result = self.successResultOf(self.streams.poll(CID, 1, None, 30))
        self.assertEqual(([e.text if False else e.data["text"] for e in result.events],
                          result.last_seq), (["b"], 2))

    def test_waitsAndWakesOnSend(self) -> None:
        """
        A waiter at last_seq is answered when a message commits, and its timer is cancelled.
        """
        poll = self.streams.poll(CID, None, None, 30)
        self.assertNoResult(poll)
        self.assertEqual(len(self.waiterTimers()), 1)
        event, _ = self.sent("hi")
        self.assertEqual(self.successResultOf(poll).events, [event])
        self.assertEqual(self.waiterTimers(), [])

    def test_timeoutAnswersEmpty(self) -> None:
        """
        Nothing happening until the timeout gives an empty answer.
        """
        poll = self.streams.poll(CID, None, None, 3)
        self.clock.advance(2.9)
        self.assertNoResult(poll)
        self.clock.advance(0.1)
        result = self.successResultOf(poll)
        self.assertEqual((result.events, result.last_seq), ([], 0))

    def test_cursorAhead(self) -> None:
        """
        A cursor beyond last_seq fails with CursorAhead.
        """
        self.failureResultOf(self.streams.poll(CID, 3, None, 0), CursorAhead)

    def test_cancelLeavesNothingBehind(self) -> None:
        """
        Cancelling a waiting poll (the client went away) removes the waiter and its timer.
        """
        poll = self.streams.poll(CID, None, None, 30)
        poll.cancel()
        self.failureResultOf(poll, defer.CancelledError)
        stream = self.streams._streams[CID]
        self.assertEqual(stream.waiters, set())
        self.assertEqual(self.streams.waiting, 0)
        self.assertEqual(self.waiterTimers(), [])

    def test_typingWakesOnlyTypingWaiters(self) -> None:
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

    def test_typingExpiresAndRefreshes(self) -> None:
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

    def test_staleTypingVersionAnswersAtOnce(self) -> None:
        """
        A typing_version different from the current one answers at once.
        """
        self.streams.setTyping(CID, "bob", True)
        result = self.successResultOf(self.streams.poll(CID, None, 0, 30))
        self.assertEqual(result.typing_version, 1)

    def test_oldCursorReadsFromStore(self) -> None:
        """
        A cursor older than the in-memory log is served from the store, 100 at most.
        """
        for i in range(self.history + 3):
            self.sent(f"m{i}")
        result = self.successResultOf(self.streams.poll(CID, 0, None, 0))
        self.assertEqual([e.seq for e in result.events], list(range(1, self.history + 4)))


def message(seq: int, stream: str = CID, sender: str = "alice") -> Event:
    return Event(stream=stream, seq=seq, id=f"e{seq}", group=1, type="message", sender=sender,
                 ts=float(seq), data={"text": f"m{seq}"})


class WaitersTests(SynchronousTestCase):
    """
    L{Waiters} on a L{Stream} of its own, without the facade.
    """

    history = 10

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = MemoryEventStore()
        self.store.open()
        self.waiters = Waiters(self.clock, self.store)
        self.stream = Stream(CID, 1, 7, StreamSnapshot(last_seq=2, recent=[message(1), message(2)],
                                                       reads={"alice": 2}),
                             historyInMemory=self.history, now=0.0)

    def test_alwaysADeferred(self) -> None:
        """
        Every answer is a Deferred: fired at once from memory, failed for a cursor ahead.
        """
        behind = self.waiters.poll(self.stream, 1, None, 30)
        self.assertEqual([e.seq for e in self.successResultOf(behind).events], [2])
        self.assertEqual(self.successResultOf(self.waiters.poll(self.stream, 2, None, 0)),
                         PollResult(events=[], last_seq=2, typing=[], typing_version=0,
                                    read={"alice": 2, "bob": 0}, read_version=2))
        ahead = self.waiters.poll(self.stream, 3, None, 30)
        self.assertEqual(self.failureResultOf(ahead, CursorAhead).value.lastSeq, 2)
        self.assertEqual(self.waiters.count, 0)

    def test_wakeAnswersThoseBehind(self) -> None:
        """
        A commit answers the waiters whose cursor is now behind, with the new events; a
        waiter for a typing change only stays.
        """
        waiting = self.waiters.poll(self.stream, 2, None, 30)
        self.assertEqual((self.waiters.count, len(self.stream.waiters)), (1, 1))
        self.stream.remember(message(3))
        self.waiters.wake(self.stream, typingChanged=False)
        self.assertEqual([e.seq for e in self.successResultOf(waiting).events], [3])
        self.assertEqual((self.waiters.count, self.clock.getDelayedCalls()), (0, []))

    def test_sameCursorSharesOneResult(self) -> None:
        """
        The waiters a commit answers share one result per cursor: the same object for the
        same cursor, each its own events for another.
        """
        one = self.waiters.poll(self.stream, 2, None, 30)
        two = self.waiters.poll(self.stream, 2, None, 30)
        self.stream.remember(message(3))
        later = self.waiters.poll(self.stream, 3, None, 30)
        self.stream.remember(message(4))
        self.waiters.wake(self.stream, typingChanged=False)
        first, second, third = map(self.successResultOf, (one, two, later))
        self.assertIs(first, second)
        self.assertEqual(([e.seq for e in first.events], [e.seq for e in third.events]),
                         ([3, 4], [4]))
        self.assertEqual(self.waiters.count, 0)

    def test_readVersionWakes(self) -> None:
        """
        A waiter that gave the read version is answered when a marker moves; one that did
        not stays.
        """
        withReads = self.waiters.poll(self.stream, 2, None, 30, readVersion=2)
        withoutReads = self.waiters.poll(self.stream, 2, None, 30)
        self.stream.reads["bob"] = 1
        self.waiters.wake(self.stream, typingChanged=False, readChanged=True)
        result = self.successResultOf(withReads)
        self.assertEqual((result.read, result.read_version), ({"alice": 2, "bob": 1}, 3))
        self.assertNoResult(withoutReads)
        self.assertEqual(self.waiters.count, 1)

    def test_answerAllAndFailAll(self) -> None:
        """
        C{answerAll} answers every waiter with nothing new; C{failAll} fails them with the
        reason; both leave no timer behind.
        """
        answered = self.waiters.poll(self.stream, 2, None, 30)
        self.waiters.answerAll([self.stream])
        self.assertEqual(self.successResultOf(answered).events, [])
        failed = [self.waiters.poll(self.stream, 2, None, 30) for _ in range(2)]
        self.waiters.failAll(self.stream, StreamUnavailable("moved"))
        for d in failed:
            self.failureResultOf(d, StreamUnavailable)
        self.assertEqual((self.waiters.count, self.stream.waiters, self.clock.getDelayedCalls()),
                         (0, set(), []))

    def test_timeoutAfterCancelDoesNothing(self) -> None:
        """
        A cancelled waiter is gone: its timeout is cancelled with it.
        """
        waiting = self.waiters.poll(self.stream, 2, None, 30)
        waiting.cancel()
        self.failureResultOf(waiting, defer.CancelledError)
        self.assertEqual((self.waiters.count, self.clock.getDelayedCalls()), (0, []))


class Recorder:
    """
    What a listener is told: each change's result, and each loss.
    """

    def __init__(self) -> None:
        self.results: list[PollResult] = []
        self.lost: list[Exception] = []

    def onChange(self, result: PollResult) -> None:
        self.results.append(result)

    def onLost(self, reason: Exception) -> None:
        self.lost.append(reason)

    def seqs(self) -> list[int]:
        return [e.seq for result in self.results for e in result.events]


class ListenerTests(SynchronousTestCase):
    """
    L{Waiters.listen} on a L{Stream} of its own: told synchronously, no Deferred, no timer.
    """

    history = 300
    setUp = WaitersTests.setUp

    def listen(self, after: int | None = 2, typingVersion: int | None = None,
               readVersion: int | None = None) -> tuple[Recorder, Listener]:
        recorder = Recorder()
        listener = self.waiters.listen(self.stream, after, typingVersion, readVersion,
                                       recorder.onChange, recorder.onLost)
        return recorder, listener

    def commit(self, *seqs: int) -> None:
        for seq in seqs:
            self.stream.remember(message(seq))
        self.waiters.wake(self.stream, typingChanged=False)

    def test_toldAtOnceWithTheNewEvents(self) -> None:
        """
        A commit tells the listener, in the same call, exactly the events after its cursor,
        which advances; nothing is left on the clock.
        """
        recorder, listener = self.listen()
        self.assertEqual((recorder.results, listener.after), ([], 2))
        self.commit(3)
        self.assertEqual((recorder.seqs(), listener.after), ([3], 3))
        self.commit(4, 5)
        self.assertEqual((recorder.seqs(), listener.after), ([3, 4, 5], 5))
        self.assertEqual(recorder.results[-1].last_seq, 5)
        self.waiters.wake(self.stream, typingChanged=False)
        self.assertEqual(len(recorder.results), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_catchesUpWhenListening(self) -> None:
        """
        A cursor behind the last seq is given what follows it before listen returns; None
        listens from the last seq.
        """
        behind, _ = self.listen(after=0)
        self.assertEqual(behind.seqs(), [1, 2])
        fromNow, listener = self.listen(after=None)
        self.assertEqual((fromNow.results, listener.after), ([], 2))

    def test_cursorAhead(self) -> None:
        with self.assertRaises(CursorAhead):
            self.listen(after=3)
        self.assertEqual((self.waiters.count, self.stream.listeners), (0, {}))

    def test_typing(self) -> None:
        """
        A listener that follows the typing version is told each new one (once); one that
        does not is not told.
        """
        typing, listener = self.listen(typingVersion=0)
        quiet, _ = self.listen()
        self.stream.typingVersion = 1
        self.stream.typing["bob"] = self.clock.callLater(5, lambda: None)
        self.waiters.wake(self.stream, typingChanged=True)
        [result] = typing.results
        self.assertEqual((result.events, result.typing, result.typing_version), ([], ["bob"], 1))
        self.assertEqual(listener.typingVersion, 1)
        self.waiters.wake(self.stream, typingChanged=True)
        self.assertEqual((len(typing.results), quiet.results), (1, []))

    def test_readMarkers(self) -> None:
        """
        A listener that follows the read version is told when a marker moves, with the
        markers; one that does not is not told.
        """
        reads, listener = self.listen(readVersion=2)
        quiet, _ = self.listen()
        self.stream.reads["bob"] = 1
        self.waiters.wake(self.stream, typingChanged=False, readChanged=True)
        [result] = reads.results
        self.assertEqual((result.read, result.read_version), ({"alice": 2, "bob": 1}, 3))
        self.assertEqual((listener.readVersion, quiet.results), (3, []))

    def test_countAndClose(self) -> None:
        """
        Listeners count among the waiting polls; a closed listener is forgotten and told
        nothing more; closing again does nothing.
        """
        recorder, listener = self.listen()
        other, _ = self.listen()
        waiting = self.waiters.poll(self.stream, 2, None, 30)
        self.assertEqual(self.waiters.count, 3)
        listener.close()
        listener.close()
        self.assertTrue(listener.closed)
        self.assertEqual((self.waiters.count, len(self.stream.listeners)), (2, 1))
        self.commit(3)
        self.assertEqual((recorder.results, other.seqs()), ([], [3]))
        self.assertEqual(self.successResultOf(waiting).events[0].seq, 3)
        self.assertEqual(self.waiters.count, 1)

    def test_failAllLosesOnce(self) -> None:
        """
        C{failAll} (the stream is dropped) calls each listener's onLost once with the reason
        and forgets it; its owner closing it afterwards does nothing.
        """
        recorder, listener = self.listen()
        reason = StreamUnavailable("moved")
        self.waiters.failAll(self.stream, reason)
        self.assertEqual(recorder.lost, [reason])
        self.assertEqual((self.waiters.count, self.stream.listeners), (0, {}))
        listener.close()
        self.waiters.failAll(self.stream, reason)
        self.commit(3)
        self.assertEqual((recorder.lost, recorder.results), ([reason], []))
        self.assertEqual(self.waiters.count, 0)

    def test_answerAllTellsNothingNew(self) -> None:
        """
        C{answerAll} (the node drains) tells each listener, with nothing new; it stays for
        its owner to close.
        """
        recorder, _ = self.listen()
        self.waiters.answerAll([self.stream])
        [result] = recorder.results
        self.assertEqual((result.events, result.last_seq), ([], 2))
        self.assertEqual(self.waiters.count, 1)

    def test_burstBeyondOnePoll(self) -> None:
        """
        A burst of more than MAX_EVENTS_PER_POLL commits told at once comes in batches of at
        most that many, every event once, in order.
        """
        recorder, listener = self.listen()
        for seq in range(3, 3 + MAX_EVENTS_PER_POLL * 2 + 50):
            self.stream.remember(message(seq))
        self.waiters.wake(self.stream, typingChanged=False)
        self.assertEqual(recorder.seqs(), list(range(3, 3 + MAX_EVENTS_PER_POLL * 2 + 50)))
        self.assertEqual([len(r.events) for r in recorder.results],
                         [MAX_EVENTS_PER_POLL, MAX_EVENTS_PER_POLL, 50])
        self.assertEqual(listener.after, self.stream.lastSeq)

    def test_failingListenerIsLost(self) -> None:
        """
        A listener whose onChange raises is lost (logged), and the others are still told.
        """
        recorder, _ = self.listen()
        lost: list[Exception] = []
        self.waiters.listen(self.stream, 2, None, None, lambda result: 1 / 0, lost.append)
        after, _ = self.listen()
        self.commit(3)
        self.assertEqual([type(e) for e in lost], [ZeroDivisionError])
        self.assertEqual((recorder.seqs(), after.seqs(), self.waiters.count), ([3], [3], 2))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class FacadeListenTests(StreamsTestCase):
    """
    L{hpchat.streams.Streams.listen}: the stream loaded first, kept in memory while
    listened to, caught up from the store, lost with its group.
    """

    history = 5

    def listen(self, name: str = CID, after: int | None = None) -> tuple[Recorder, Listener]:
        recorder = Recorder()
        listener = self.successResultOf(self.streams.listen(
            name, after, None, None, recorder.onChange, recorder.onLost))
        return recorder, listener

    def test_loadsTheStream(self) -> None:
        """
        A stream not in memory is loaded first; a send is then told to the listener.
        """
        self.assertEqual(self.streams._streams, {})
        recorder, _ = self.listen()
        self.assertIn(CID, self.streams._streams)
        event, _ = self.sent("hi")
        self.assertEqual(recorder.results[0].events, [event])
        self.assertEqual(self.streams.waiting, 1)

    def test_cursorAhead(self) -> None:
        d = self.streams.listen(CID, 3, None, None, lambda r: None, lambda e: None)
        self.failureResultOf(d, CursorAhead)

    def test_olderThanMemory(self) -> None:
        """
        A cursor older than the memory is caught up from the store (the commits meanwhile
        pass it by), then from memory: every event once, in order.
        """
        for i in range(12):
            self.sent(f"m{i}")
        reading: list[tuple[defer.Deferred, tuple]] = []
        readAfter = self.store.readAfter

        def slowRead(*args):
            d: defer.Deferred = defer.Deferred()
            reading.append((d, args))
            return d

        self.store.readAfter = slowRead
        recorder, listener = self.listen(after=0)
        self.assertTrue(listener.reading)
        self.assertEqual(recorder.results, [])
        self.sent("m12")
        self.sent("m13")
        self.assertEqual(recorder.results, [])
        [(d, args)] = reading
        self.assertEqual(args, (CID, 0, MAX_EVENTS_PER_POLL))
        readAfter(*args).chainDeferred(d)
        self.assertFalse(listener.reading)
        self.assertEqual(recorder.seqs(), list(range(1, 15)))
        self.sent("m14")
        self.assertEqual(recorder.seqs(), list(range(1, 16)))
        self.assertEqual(recorder.lost, [])

    def test_noProgressIsLost(self) -> None:
        """
        A store that has nothing after the cursor while the stream is beyond it loses the
        listener rather than spinning.
        """
        for i in range(8):
            self.sent(f"m{i}")
        self.store.readAfter = lambda stream, after, limit: defer.succeed([])
        recorder, _ = self.listen(after=0)
        self.assertEqual([type(e) for e in recorder.lost], [NoProgress])
        self.assertEqual(self.streams.waiting, 0)

    def test_failedReadIsLost(self) -> None:
        """
        A store read that fails while catching up loses the listener, with its reason.
        """
        for i in range(8):
            self.sent(f"m{i}")
        self.store.readAfter = lambda stream, after, limit: defer.fail(RuntimeError("down"))
        recorder, listener = self.listen(after=0)
        self.assertEqual([type(e) for e in recorder.lost], [RuntimeError])
        self.assertTrue(listener.closed)
        self.assertEqual(self.streams.waiting, 0)

    def test_notEvictedWhileListening(self) -> None:
        """
        A stream listened to is not evicted when idle; once the listener is closed it is.
        """
        _, listener = self.listen()
        self.clock.advance(200)
        self.assertIn(CID, self.streams._streams)
        listener.close()
        self.clock.advance(200)
        self.assertNotIn(CID, self.streams._streams)

    def test_groupLostOnce(self) -> None:
        """
        Losing the stream's group calls onLost once, with StreamUnavailable.
        """
        recorder, listener = self.listen()
        self.ownership.lose([self.streams.groupOf(CID)])
        self.assertEqual([type(e) for e in recorder.lost], [StreamUnavailable])
        self.assertTrue(listener.closed)
        self.assertEqual(self.streams.waiting, 0)

    def test_stopLosesListeners(self) -> None:
        recorder, _ = self.listen()
        self.streams.stopService()
        self.assertEqual([type(e) for e in recorder.lost], [StreamUnavailable])
        self.streams.startService()


class LeastRecentlyUsedListenTests(StreamsTestCase):
    maxStreams = 1

    def test_listenedStreamKept(self) -> None:
        """
        Past maxStreams, a stream listened to is passed over by the eviction.
        """
        listener = self.successResultOf(self.streams.listen(
            CID, None, None, None, lambda r: None, lambda e: None))
        other = "dm:carol:dave"
        self.successResultOf(self.streams.poll(other, None, None, 0))
        self.clock.advance(0)
        self.assertEqual(list(self.streams._streams), [CID])
        listener.close()
        self.successResultOf(self.streams.poll(other, None, None, 0))
        self.clock.advance(0)
        self.assertEqual(list(self.streams._streams), [other])
