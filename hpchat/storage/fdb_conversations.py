# -*- test-case-name: tests.storage.test_fdb -*-
"""
Conversation summaries (L{hpchat.storage.conversations}) on FoundationDB: the keys, and the
parts of L{hpchat.storage.fdb.FoundationDBStore} that read and write them.

Keys (tuple layer, C{P} the store's prefix)::

    (P, "s", user, stream)            -> (group, partner, last_seq, read_seq,
                                          partner_read_seq, updated)   the summary row
    (P, "a", user, updated, stream)   -> ()          the user's activity index: a reverse
                                                     range read is the list, newest first
    (P, "r", stream, user)            -> (read_seq,) the read markers, read on claim
    (P, "b", blocker, blocked)        -> (created,)  a block (L{hpchat.storage.blocklist})
    (P, "p", user)                    -> (last_seen,) when the user was last online

A row is written in the transaction of the part of its batch that holds its message (rows
without one: the last part), so it commits with its event; writing a row clears the activity
key of the row it replaces.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from twisted.internet import defer

from hpchat.storage.base import Event, FenceRejected
from hpchat.storage.conversations import ConversationPage, ConversationRow, latestRows
from hpchat.storage.fdb_client import FDBClient
from hpchat.storage.fdb_layout import KeyLayout

#: At most this many summary rows of one user are read to count their unread messages.
MAX_ROWS_SCANNED = 100_000


class ConversationKeys:
    """
    The keys and values of the summaries, over a L{hpchat.storage.fdb_layout.KeyLayout}.
    """

    def __init__(self, layout: KeyLayout):
        self._layout = layout
        self._t = layout._t

    def summary(self, user: str, stream: str) -> bytes:
        return self._layout.pack("s", user, stream)

    def summaryRange(self, user: str) -> tuple[bytes, bytes]:
        r = self._t.range(self._layout.prefix + ("s", user))
        return r.start, r.stop

    def activity(self, user: str, updated: float, stream: str) -> bytes:
        return self._layout.pack("a", user, float(updated), stream)

    def activityRange(self, user: str) -> tuple[bytes, bytes]:
        r = self._t.range(self._layout.prefix + ("a", user))
        return r.start, r.stop

    def read(self, stream: str, user: str) -> bytes:
        return self._layout.pack("r", stream, user)

    def block(self, blocker: str, blocked: str) -> bytes:
        return self._layout.pack("b", blocker, blocked)

    def blocksVersion(self) -> bytes:
        return self._layout.pack("bv")

    def blockRange(self, blocker: str) -> tuple[bytes, bytes]:
        r = self._t.range(self._layout.prefix + ("b", blocker))
        return r.start, r.stop

    def readRange(self, stream: str) -> tuple[bytes, bytes]:
        r = self._t.range(self._layout.prefix + ("r", stream))
        return r.start, r.stop

    def encodeRow(self, row: ConversationRow) -> bytes:
        return self._t.pack((row.group, row.partner, row.last_seq, row.read_seq,
                             row.partner_read_seq, float(row.updated)))

    def decodeRow(self, user: str, stream: str, value: bytes) -> ConversationRow:
        group, partner, lastSeq, readSeq, partnerReadSeq, updated = self._t.unpack(value)
        return ConversationRow(user=user, stream=stream, group=group, partner=partner,
                               last_seq=lastSeq, read_seq=readSeq,
                               partner_read_seq=partnerReadSeq, updated=updated)


def rowsByPart(rows: Sequence[ConversationRow], parts: Sequence[Sequence[Any]]
               ) -> list[list[ConversationRow]]:
    """
    Each row in the part holding its message (the event at its stream's C{last_seq}), else
    in the last part, keeping the rows' order.
    """
    partOf = {(item.event.stream, item.event.seq): index
              for index, part in enumerate(parts) for item in part}
    byPart: list[list[ConversationRow]] = [[] for _ in parts]
    for row in rows:
        byPart[partOf.get((row.stream, row.last_seq), len(parts) - 1)].append(row)
    return byPart


class FDBConversations(FDBClient):
    """
    The conversation, block and presence parts of L{hpchat.storage.fdb.FoundationDBStore}.
    """

    @property
    def conversationKeys(self) -> ConversationKeys:
        return ConversationKeys(self.layout)

    def _readMarkers(self, tr: Any) -> Callable[[str], dict[str, int]]:
        """
        A function of a stream giving its read markers, read in C{tr}.
        """
        keys = self.conversationKeys

        def reads(stream: str) -> dict[str, int]:
            begin, end = keys.readRange(stream)
            return {self.layout.unpack(k)[2]: self.layout.unpackInt(v)
                    for k, v in self._range(tr, begin, end, 0)}

        return reads

    def _writeRows(self, tr: Any, rows: Sequence[ConversationRow]) -> None:
        """
        Inside an append's transaction, after its checks: write C{rows}.
        """
        keys = self.conversationKeys
        rows = latestRows(rows)
        stored = [(row, tr.get(keys.summary(row.user, row.stream))) for row in rows]
        for row, old in stored:
            if old.present():
                previous = keys.decodeRow(row.user, row.stream, bytes(old))
                key = keys.activity(row.user, previous.updated, row.stream)
                tr.clear_range(key, key + b"\x00")
            tr.set(keys.summary(row.user, row.stream), keys.encodeRow(row))
            tr.set(keys.activity(row.user, row.updated, row.stream), b"")
            tr.set(keys.read(row.stream, row.user), self.layout.packInt(row.read_seq))

    def listConversations(self, user: str, limit: int,
                          before: tuple[float, str] | None) -> defer.Deferred[ConversationPage]:
        if limit <= 0:
            return defer.succeed(ConversationPage(items=[], unread_total=0))
        keys = self.conversationKeys
        layout = self.layout

        def body(tr: Any, attempt: int) -> ConversationPage:
            begin, end = keys.activityRange(user)
            if before is not None:
                end = keys.activity(user, before[0], before[1])
            found = self._range(tr, begin, end, limit, reverse=True)
            streams = [layout.unpack(k)[3] for k, _ in found]
            rows = [(s, tr.get(keys.summary(user, s))) for s in streams]
            sBegin, sEnd = keys.summaryRange(user)
            total = 0
            for k, v in self._range(tr, sBegin, sEnd, MAX_ROWS_SCANNED):
                row = keys.decodeRow(user, layout.unpack(k)[2], v)
                total += row.last_seq - row.read_seq
            items: list[tuple[ConversationRow, Event | None]] = []
            for stream, value in rows:
                if not value.present():
                    continue
                row = keys.decodeRow(user, stream, bytes(value))
                event = tr.get(layout.event(stream, row.last_seq))
                last = (layout.decodeEvent(layout.event(stream, row.last_seq), bytes(event))
                        if event.present() else None)
                items.append((row, last))
            return ConversationPage(items=items, unread_total=total)

        return self._read(body)

    # -- blocks

    def setBlock(self, blocker: str, blocked: str, on: bool, group: int, token: int,
                 ts: float) -> defer.Deferred[None]:
        keys = self.conversationKeys
        key, versionKey = keys.block(blocker, blocked), keys.blocksVersion()
        value = self.layout._t.pack((float(ts),))

        def body(tr: Any, attempt: int) -> None:
            rejected = self._raiseFences(tr, {group: token})
            if rejected:
                raise FenceRejected(rejected)
            present = tr.get(key).present()
            if on and not present:
                tr.set(key, value)
            elif not on and present:
                tr.clear_range(key, key + b"\x00")
            else:
                return
            # The version of all blocks (IBlockVersion), in the change's own transaction.
            # Blocks change rarely: a read and a write of one key, not an atomic add (whose
            # little-endian counter the tuple layer would not read).
            tr.set(versionKey, self.layout._t.pack((self._version(tr, versionKey) + 1,)))

        return self._readWrite(body)

    def _version(self, tr: Any, versionKey: bytes) -> int:
        found = tr.get(versionKey)
        return int(self.layout._t.unpack(bytes(found))[0]) if found.present() else 0

    def blocksVersion(self) -> defer.Deferred[int]:
        versionKey = self.conversationKeys.blocksVersion()
        return self._read(lambda tr, attempt: self._version(tr, versionKey))

    def blocksOf(self, blocker: str) -> defer.Deferred[list[str]]:
        keys = self.conversationKeys

        def body(tr: Any, attempt: int) -> list[str]:
            begin, end = keys.blockRange(blocker)
            return sorted((self.layout.unpack(k)[2] for k, _ in self._range(tr, begin, end, 0)),
                          key=str.encode)

        return self._read(body)

    def blocksBetween(self, a: str, b: str) -> defer.Deferred[set[tuple[str, str]]]:
        keys = self.conversationKeys

        def body(tr: Any, attempt: int) -> set[tuple[str, str]]:
            found = [((a, b), tr.get(keys.block(a, b))), ((b, a), tr.get(keys.block(b, a)))]
            return {pair for pair, value in found if value.present()}

        return self._read(body)

    def blockersAmong(self, blocked: str, users: Iterable[str]) -> defer.Deferred[set[str]]:
        keys = self.conversationKeys
        among = sorted(set(users))

        def body(tr: Any, attempt: int) -> set[str]:
            found = [(u, tr.get(keys.block(u, blocked))) for u in among]
            return {u for u, value in found if value.present()}

        return self._read(body)

    # -- last seen

    def writeLastSeen(self, entries: Mapping[str, float],
                      fences: Mapping[int, int]) -> defer.Deferred[None]:
        if not entries:
            return defer.succeed(None)
        layout = self.layout
        seen = dict(entries)

        def body(tr: Any, attempt: int) -> None:
            stored = [(u, tr.get(layout.pack("p", u))) for u in seen]
            rejected = self._raiseFences(tr, dict(fences))
            if rejected:
                raise FenceRejected(rejected)
            for user, value in stored:
                old = layout._t.unpack(bytes(value))[0] if value.present() else None
                if old is None or old < seen[user]:
                    tr.set(layout.pack("p", user), layout._t.pack((float(seen[user]),)))

        return self._readWrite(body)

    def lastSeen(self, users: Iterable[str]) -> defer.Deferred[dict[str, float]]:
        layout = self.layout
        among = sorted(set(users))

        def body(tr: Any, attempt: int) -> dict[str, float]:
            found = [(u, tr.get(layout.pack("p", u))) for u in among]
            return {u: layout._t.unpack(bytes(v))[0] for u, v in found if v.present()}

        return self._read(body)
