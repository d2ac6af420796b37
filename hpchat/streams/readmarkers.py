# -*- test-case-name: tests.test_streams_readmarkers -*-
"""
Read markers of conversations and the summary rows that make them durable.

Each participant of a conversation has a read marker: the highest seq they have read. It only
moves forward; sending a message moves the sender's own marker to that message. Every move,
and every message, writes both participants' L{ConversationRow}s (the conversation list reads
them) in the same store batch as the message, under the conversation's fence.

The owner keeps two views per stream: the markers queued for writing (the rows of later
writes are computed from them, so that no row written later goes back) and the durable ones
shown to pollers. Because markers only grow, their sum is a version that every owner of the
stream computes alike, across failovers: the long-poll's C{read_version}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from hpchat.deferreds import shield
from hpchat.storage.conversations import ConversationRow
from hpchat.streams.state import CursorAhead, Stream, StreamTable, StreamUnavailable

if TYPE_CHECKING:
    from hpchat.streams.waiters import Waiters


def conversationRows(stream: str, group: int, users: tuple[str, str], lastSeq: int,
                     reads: dict[str, int], updated: float) -> list[ConversationRow]:
    """
    Both participants' rows of C{stream} from its last seq and read markers.
    """
    a, b = users
    return [ConversationRow(user=user, stream=stream, group=group, partner=partner,
                            last_seq=lastSeq, read_seq=reads.get(user, 0),
                            partner_read_seq=reads.get(partner, 0), updated=updated)
            for user, partner in ((a, b), (b, a))]


def readVersion(reads: dict[str, int]) -> int:
    return sum(reads.values())


class ReadMarkers:
    """
    The read marker part of L{hpchat.streams.Streams}: moves markers forward, writes them
    through the persister, and wakes the waiters once they are durable. (A send moves its
    sender's marker in L{hpchat.streams.appends}.)
    """

    def __init__(self, table: StreamTable, persister: Any, waiters: Waiters):
        self._table = table
        self._persister = persister
        self._waiters = waiters

    def markRead(self, name: str, user: str, seq: int) -> defer.Deferred[int]:
        """
        Move C{user}'s read marker in conversation C{name} forward to C{seq} (a lower seq
        leaves it); fires with the marker once durable. Fails with L{CursorAhead} when
        C{seq} is beyond the last seq.
        """
        return self._table.get(name).addCallback(self._markRead, user, seq)

    def _markRead(self, stream: Stream, user: str, seq: int) -> defer.Deferred[int]:
        if seq > stream.lastSeq:
            return defer.fail(CursorAhead(stream.lastSeq))
        current = stream.readsQueued.get(user, 0)
        if stream.users is None or user not in stream.users:
            return defer.succeed(current)
        if seq <= current:
            if stream.reads.get(user, 0) >= current:
                return defer.succeed(current)
            # The marker is already further but not durable yet (a send moved it): written
            # again behind that write, so the answer comes once it is durable.
            seq = current
        queued = dict(stream.readsQueued)
        queued[user] = seq
        rows = conversationRows(stream.name, stream.group, stream.users, stream.nextSeq - 1,
                                queued, stream.updated)
        durable = self._persister.enqueueRows(stream.group, stream.name, rows, stream.token)
        stream.readsQueued = queued
        stream.readsInFlight += 1

        def written(_: object) -> int:
            stream.readsInFlight -= 1
            if self._table.isLoaded(stream) and stream.reads.get(user, 0) < seq:
                stream.reads[user] = seq
                self._waiters.wake(stream, typingChanged=False, readChanged=True)
            return max(seq, stream.reads.get(user, 0))

        def failed(failure: Any) -> Any:
            stream.readsInFlight -= 1
            self._table.drop(stream, StreamUnavailable(f"write to {stream.name} failed: "
                                                       f"{failure.value}"))
            return failure

        return shield(durable.addCallbacks(written, failed), "a read marker")
