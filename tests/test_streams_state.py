"""
One stream's state in memory (L{hpchat.streams.state}): the log of recent events, its dedupe
index, and what keeps a stream from being evicted.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.storage.base import Event, StreamSnapshot
from hpchat.streams.state import (
    DROPPED_KEYS_PER_EVENT,
    MAX_EVENTS_PER_POLL,
    Stream,
    dedupeKey,
    participants,
)

CID = "dm:alice:bob"


def message(seq: int, clientId: str | None = None) -> Event:
    return Event(stream=CID, seq=seq, id=f"e{seq}", group=1, type="message", sender="alice",
                 ts=float(seq), client_id=clientId, data={"text": f"m{seq}"})


def seqs(events: list[Event] | None) -> list[int] | None:
    return None if events is None else [e.seq for e in events]


def stream(events: list[Event], lastSeq: int | None = None, history: int = 3) -> Stream:
    last = events[-1].seq if lastSeq is None and events else (lastSeq or 0)
    return Stream(CID, 1, 7, StreamSnapshot(last_seq=last, recent=events), history, now=0.0)


class LogTests(SynchronousTestCase):
    def test_eventsAfter(self) -> None:
        """
        Events after a cursor come from memory while it reaches back that far, at most
        MAX_EVENTS_PER_POLL; none at the last seq; None beyond memory.
        """
        s = stream([message(4), message(5), message(6)])
        self.assertEqual(seqs(s.eventsAfter(4)), [5, 6])
        self.assertEqual(s.eventsAfter(6), [])
        self.assertEqual(seqs(s.eventsAfter(3)), [4, 5, 6])
        self.assertIsNone(s.eventsAfter(2))
        big = stream([message(i) for i in range(1, 302)], history=400)
        self.assertEqual(seqs(big.eventsAfter(0)), list(range(1, MAX_EVENTS_PER_POLL + 1)))

    def test_eventsBefore(self) -> None:
        """
        A page of history from memory, with whether older events exist; None when memory
        does not reach back to the page's start.
        """
        s = stream([message(4), message(5), message(6)])
        self.assertEqual(s.eventsBefore(None, 2), (s.eventsAfter(4), True))
        self.assertEqual(s.eventsBefore(6, 2), ([message(4), message(5)], True))
        self.assertIsNone(s.eventsBefore(None, 5))
        self.assertEqual(s.eventsBefore(1, 5), ([], False))
        self.assertEqual(s.historyEnd(None), 7)
        self.assertEqual(s.historyEnd(100), 7)

    def test_rememberDropsTheOldest(self) -> None:
        """
        A full log drops its oldest event and that event's dedupe key; while the stream's
        keys are all known, the dropped key is kept as a fingerprint, so that memory still
        tells a new key from a repeat (one to look up in the store).
        """
        s = stream([message(1, "a"), message(2, "b"), message(3, "c")])
        self.assertTrue(s.unused(("c", "alice", "d")))
        s.remember(message(4, "d"))
        self.assertEqual(([e.seq for e in s.recent], s.lastSeq), ([2, 3, 4], 4))
        self.assertIsNone(s.findInMemory(("c", "alice", "a")))
        self.assertEqual(s.findInMemory(("c", "alice", "d")), message(4, "d"))
        self.assertFalse(s.unused(("c", "alice", "a")))
        self.assertFalse(s.unused(("c", "alice", "d")))
        self.assertTrue(s.unused(("c", "alice", "e")))
        self.assertTrue(s.unused(("c", "bob", "a")))

    def test_keysKnownFromTheStart(self) -> None:
        """
        Memory knows every key of a stream loaded from its start (or empty); of one loaded
        without it, none can be told unused.
        """
        self.assertTrue(stream([], lastSeq=0).unused(("c", "alice", "a")))
        self.assertTrue(stream([message(1, "a")]).unused(("c", "alice", "b")))
        partial = stream([message(2, "b"), message(3)])
        self.assertFalse(partial.unused(("c", "alice", "x")))
        self.assertIsNotNone(partial.findInMemory(("c", "alice", "b")))

    def test_droppedKeysAreBounded(self) -> None:
        """
        At most DROPPED_KEYS_PER_EVENT fingerprints per event of the log: past that, memory
        no longer tells a key unused, and keeps no fingerprints.
        """
        s = stream([], lastSeq=0, history=2)
        bound = DROPPED_KEYS_PER_EVENT * 2
        for seq in range(1, bound + 3):
            s.remember(message(seq, f"k{seq}"))
        self.assertEqual(len(s.dropped or ()), bound)
        self.assertTrue(s.unused(("c", "alice", "new")))
        self.assertFalse(s.unused(("c", "alice", "k1")))
        s.remember(message(bound + 3, "last"))
        self.assertIsNone(s.dropped)
        self.assertFalse(s.unused(("c", "alice", "new")))
        self.assertIsNotNone(s.findInMemory(("c", "alice", "last")))

    def test_keylessEventsKeepNoFingerprint(self) -> None:
        """
        A message without a client id has no key, and leaves none when dropped.
        """
        s = stream([message(1), message(2)], history=2)
        s.remember(message(3))
        self.assertEqual(s.dropped, set())

    def test_dedupeKeys(self) -> None:
        """
        Messages dedupe by (sender, client id) when they have one; inbox events and other
        types by their id.
        """
        self.assertEqual(dedupeKey(message(1, "k")), ("c", "alice", "k"))
        self.assertIsNone(dedupeKey(message(1)))
        inbox = Event(stream="inbox:bob", seq=1, id="m.1", group=1, type="message",
                      sender="alice", ts=1.0, data={})
        self.assertEqual(dedupeKey(inbox), ("n", "m.1"))

    def test_participants(self) -> None:
        self.assertEqual(participants(CID), ("alice", "bob"))
        self.assertIsNone(participants("inbox:bob"))
        self.assertIsNone(participants("dm:alice"))


class EvictableTests(SynchronousTestCase):
    def test_busyIsNotEvictable(self) -> None:
        """
        Waiters, writes in flight (keyed or not), typing marks and marker writes keep a stream
        in memory.
        """
        s = stream([message(1)])
        self.assertTrue(s.evictable())
        s.nextSeq += 1
        self.assertFalse(s.evictable())
        s.nextSeq -= 1
        s.readsInFlight = 1
        self.assertFalse(s.evictable())

    def test_clearTypingCancelsTimers(self) -> None:
        clock = task.Clock()
        s = stream([message(1)])
        s.typing["bob"] = clock.callLater(5, lambda: None)
        self.assertFalse(s.evictable())
        s.clearTyping()
        self.assertEqual((s.typing, clock.getDelayedCalls()), ({}, []))
        self.assertTrue(s.evictable())
