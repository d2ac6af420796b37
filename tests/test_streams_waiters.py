"""
Long-poll waiters (L{hpchat.streams.waiters}): answered at once when behind, woken by commits
and typing, timed out, cancelled, answered or failed all at once; through the facade and on a
L{Stream} directly.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.storage.base import Event, StreamSnapshot
from hpchat.streams import CursorAhead, Stream, StreamUnavailable
from hpchat.streams.waiters import PollResult, Waiters
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

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = MemoryEventStore()
        self.store.open()
        self.waiters = Waiters(self.clock, self.store)
        self.stream = Stream(CID, 1, 7, StreamSnapshot(last_seq=2, recent=[message(1), message(2)],
                                                       reads={"alice": 2}),
                             historyInMemory=10, now=0.0)

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
