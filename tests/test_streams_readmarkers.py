"""
Read markers (L{hpchat.streams.readmarkers}): moved forward only, answered once durable,
their version waking the waiters that gave it.
"""

from __future__ import annotations

from hpchat.streams import CursorAhead
from tests.test_streams import CID, StreamsTestCase


class ReadMarkerTests(StreamsTestCase):
    def test_readMarkerAnsweredOnceDurable(self) -> None:
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

    def test_beyondTheLastSeqFails(self) -> None:
        """
        A marker beyond the last seq fails with CursorAhead (a failed Deferred).
        """
        self.sent("first")
        failure = self.failureResultOf(self.streams.markRead(CID, "bob", 2), CursorAhead)
        self.assertEqual(failure.value.lastSeq, 1)

    def test_backwardsLeavesTheMarker(self) -> None:
        """
        A lower seq leaves the marker where it is, answered at once; someone who is not a
        participant has no marker to move.
        """
        self.sent("first")
        self.sent("second")
        self.clock.advance(0.005)
        self.assertEqual(self.successResultOf(self.streams.markRead(CID, "alice", 1)), 2)
        self.assertEqual(self.successResultOf(self.streams.markRead(CID, "carol", 2)), 0)

    def test_durableMarkerWakesReadWaiters(self) -> None:
        """
        Once the marker is durable, a poll that gave the read version is answered with it.
        """
        self.sent("first")
        current = self.successResultOf(self.streams.poll(CID, None, None, 0))
        waiting = self.streams.poll(CID, None, None, 30, readVersion=current.read_version)
        read = self.streams.markRead(CID, "bob", 1)
        self.assertNoResult(waiting)
        self.clock.advance(0.005)
        self.assertEqual(self.successResultOf(read), 1)
        result = self.successResultOf(waiting)
        self.assertEqual((result.read, result.read_version), ({"alice": 1, "bob": 1}, 2))
