# -*- test-case-name: tests.test_readmarkers -*-
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

from typing import Any

from twisted.internet import defer

from hpchat.deferreds import shield
from hpchat.storage.base import Event
from hpchat.storage.conversations import ConversationRow
from hpchat.streamids import BadConversation, parseConversation


class StreamUnavailable(Exception):
    """
    This node does not (or no longer) serve the stream's group; ask the ownership where to go.
    """


class CursorAhead(Exception):
    """
    The client's cursor is beyond the stream's last seq.
    """

    def __init__(self, lastSeq: int):
        self.lastSeq = lastSeq
        super().__init__(f"cursor is ahead of last_seq {lastSeq}")


def participants(stream: str) -> tuple[str, str] | None:
    """
    The two users of conversation C{stream}, or None for any other stream.
    """
    if not stream.startswith("dm:"):
        return None
    try:
        return parseConversation(stream)
    except BadConversation:
        return None


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
    The read marker part of L{hpchat.streams.Streams} (which provides C{get}, C{_streams},
    C{_persister}, C{_wake} and C{_drop}).
    """

    _persister: Any
    _streams: Any

    def _enqueueEvent(self, stream: Any, event: Event) -> defer.Deferred:
        """
        Queue C{event} of C{stream} for writing, with both participants' rows when it is a
        message of a conversation (the sender's marker moves to it).
        """
        if stream.users is None or event.type != "message" or event.sender not in stream.users:
            return self._persister.enqueue(event, stream.token)
        queued = dict(stream.readsQueued)
        queued[event.sender] = event.seq
        rows = conversationRows(stream.name, stream.group, stream.users, event.seq, queued,
                                event.ts)
        durable = self._persister.enqueue(event, stream.token, rows)
        stream.readsQueued = queued
        stream.updated = event.ts
        return durable

    def markRead(self, name: str, user: str, seq: int) -> defer.Deferred:
        """
        Move C{user}'s read marker in conversation C{name} forward to C{seq} (a lower seq
        leaves it); fires with the marker once durable. Fails with L{CursorAhead} when
        C{seq} is beyond the last seq.
        """
        return self.get(name).addCallback(self._markRead, user, seq)

    def _markRead(self, stream: Any, user: str, seq: int):
        if seq > stream.lastSeq:
            raise CursorAhead(stream.lastSeq)
        current = stream.readsQueued.get(user, 0)
        if stream.users is None or user not in stream.users:
            return current
        if seq <= current:
            if stream.reads.get(user, 0) >= current:
                return current
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

        def written(_):
            stream.readsInFlight -= 1
            if self._streams.get(stream.name) is stream and stream.reads.get(user, 0) < seq:
                stream.reads[user] = seq
                self._wake(stream, typingChanged=False, readChanged=True)
            return max(seq, stream.reads.get(user, 0))

        def failed(failure):
            stream.readsInFlight -= 1
            self._drop(stream, StreamUnavailable(f"write to {stream.name} failed: "
                                                 f"{failure.value}"))
            return failure

        return shield(durable.addCallbacks(written, failed), "a read marker")
