# -*- test-case-name: tests.storage.test_fdb -*-
"""
The event store for clusters of several machines: FoundationDB, through its Python binding.

The store's parts: L{hpchat.storage.fdb_layout} (the keys and values, and how a batch is cut
into transactions), L{hpchat.storage.fdb_client} (the binding, the store's threads, the
retry loop and the fences), L{hpchat.storage.fdb_conversations} (conversation summaries,
blocks, last seen), and this module: the events, reads and the outbox.

One batch, one transaction
==========================
C{append} reads, in one transaction, the fence key of every group of the batch and, for every
event, its event key and index keys (all as futures, so the reads overlap). It fails with
L{FenceRejected} naming every group whose stored token is higher than ours, then with
L{StreamConflict} (naming the colliding streams) when a seq, id or client_id is taken;
otherwise it raises the fences to our tokens and writes the events, and the outbox entries of
those events in the same transaction. FoundationDB's serializable transactions make the check and
the write atomic: a claim that raises a fence after our read makes our commit conflict, and
the retry sees the new fence.

Retries and C{commit_unknown_result}
------------------------------------
The retry loop is the binding's (C{commit}, then C{on_error}, which backs off and resets, or
raises for errors that are not retryable), written out so that attempts can be counted. It
re-runs the body after C{commit_unknown_result} (1021), when the first attempt may have
committed. So an event whose key already holds I{exactly the bytes we are writing} is not a
conflict but already written, and is skipped: it can only be this batch's own earlier attempt
(event ids are random and timestamps are the owner's clock), and either way the stored state
is what the writer asked for. The same rule makes the persister's retry of a batch after a
L{StoreError} safe when that batch had in fact committed. A retry can still report a
L{FenceRejected} for events that the first attempt wrote, when a new owner raised the fence in
between: the error is then conservative (durable but not acknowledged), never the reverse.
Each transaction has a timeout (L{FoundationDBStore.transactionTimeout}, over all its
attempts); a timed-out append fails with L{StoreError} and is retried by the persister.

Batches larger than a transaction
---------------------------------
FoundationDB limits a transaction to 10 MB and 5 s, and runs best under 1 MB. A batch is
therefore written in parts of at most L{FoundationDBStore.maxPartBytes} (estimated from key,
value and read-conflict sizes) and L{FoundationDBStore.maxPartEvents} events, keeping each
group's events in one part when they fit. Each part is its own transaction and repeats the
fence check for every group of the batch; atomicity is per part. If part k fails, parts
before k stay written and the error names the failing groups; the events of the other groups
stay queued in the persister, and its next batch finds them stored (identical) and
acknowledges them. With the default C{batch_size} (100) and message sizes a batch is one part.

"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from twisted.internet import defer
from zope.interface import implementer

from hpchat.storage.base import (
    Event,
    FenceRejected,
    IEventStore,
    OutboxEntry,
    StoreError,
    StreamConflict,
    StreamSnapshot,
    requireFences,
)
from hpchat.storage.blocklist import IBlockStore, IBlockVersion
from hpchat.storage.conversations import ConversationRow, IConversationStore
from hpchat.storage.fdb_client import Done
from hpchat.storage.fdb_conversations import FDBConversations, rowsByPart
from hpchat.storage.fdb_layout import EncodedEvent, splitBatch, uniqueKeyClashes
from hpchat.storage.presence import IPresenceStore


@implementer(IEventStore, IConversationStore, IBlockStore, IBlockVersion, IPresenceStore)
class FoundationDBStore(FDBConversations):
    """
    L{IEventStore} on FoundationDB (and the conversation, block and presence stores).

    @param binding: the C{fdb} module to use; None loads the real one in L{open} (tests pass
        an in-memory stand-in).
    """

    #: Bounds of one transaction of an append: estimated bytes and events.
    maxPartBytes = 1_000_000
    maxPartEvents = 1000
    #: At most this many outbox keys are read by one L{pendingOutbox}.
    maxOutboxScan = 10_000

    # -- writes

    def claim(self, group: int, token: int, stream: str,
              recent: int) -> defer.Deferred[StreamSnapshot]:
        return self._readWriteResult(self._claimBody, group, token, stream, recent)

    def _claimBody(self, tr: Any, attempt: int, group: int, token: int, stream: str,
                   recent: int) -> StreamSnapshot:
        layout = self.layout
        rejected = self._raiseFences(tr, {group: token})
        if rejected:
            raise FenceRejected(rejected)
        begin, end = layout.eventRange(stream)
        rows = self._range(tr, begin, end, max(recent, 1), reverse=True)
        lastSeq = layout.decodeEvent(rows[0][0], rows[0][1]).seq if rows else 0
        newest = rows[:recent] if recent > 0 else []
        return StreamSnapshot(last_seq=lastSeq,
                              recent=[layout.decodeEvent(k, v) for k, v in reversed(newest)],
                              reads=self._readMarkers(tr)(stream))

    def append(self, events: Sequence[Event], fences: dict[int, int],
               outbox: Sequence[OutboxEntry] = (),
               conversations: Sequence[ConversationRow] = ()) -> defer.Deferred[None]:
        requireFences(events, fences, outbox, conversations)
        layout = self.layout
        encoded = [layout.encode(e) for e in events]
        clashes = uniqueKeyClashes(events)
        parts = splitBatch(encoded, self.maxPartBytes, self.maxPartEvents) or [[]]
        # Each entry goes into the transaction of the event it announces.
        partOf = {(item.event.stream, item.event.seq): index
                  for index, part in enumerate(parts) for item in part}
        entries: list[list[tuple[bytes, bytes]]] = [[] for _ in parts]
        for entry in outbox:
            entries[partOf.get((entry.stream, entry.seq), 0)].append(
                (layout.outbox(entry.group, entry.id), layout.encodeOutbox(entry)))
        rows = rowsByPart(conversations, parts)
        d = self._defer(self._appendParts, parts, dict(fences), clashes, entries, rows)
        d.addCallback(self._appended, len(events))
        return d

    def _appendParts(self, parts: list[list[EncodedEvent]], fences: dict[int, int],
                     clashes: list[Event], entries: list[list[tuple[bytes, bytes]]],
                     rows: list[list[ConversationRow]]) -> list[Done]:
        done = []
        for index, part in enumerate(parts):
            # Clashes inside the batch are found by the first part, after its fence check
            # and before anything is written.
            done.append(self._transact(self._appendBody, part, fences,
                                       clashes if index == 0 else [], entries[index],
                                       rows[index]))
        return done

    def _appendBody(self, tr: Any, attempt: int, part: list[EncodedEvent],
                    fences: dict[int, int], clashes: list[Event],
                    entries: Sequence[tuple[bytes, bytes]] = (),
                    rows: Sequence[ConversationRow] = ()) -> int:
        """
        One part of a batch; returns how many of its events were already stored identically
        (written by an earlier attempt whose commit result was unknown).
        """
        # Issue every read before waiting on any, so they overlap.
        present = [(item, tr.get(item.key), [tr.get(k) for k in item.indexKeys])
                   for item in part]
        pending = [(key, value, tr.get(key)) for key, value in entries]
        rejected = self._raiseFences(tr, fences)
        if rejected:
            raise FenceRejected(rejected)
        if clashes:
            e = clashes[0]
            raise StreamConflict(sorted({c.group for c in clashes}),
                                 f"{e.stream}#{e.seq} repeats a seq, id or client_id of its batch",
                                 streams=sorted({c.stream for c in clashes}))
        conflicts: list[tuple[Event, str]] = []
        already: set[bytes] = set()
        for item, stored, indexed in present:
            if stored.present():
                if bytes(stored) == item.value:
                    already.add(item.key)
                else:
                    conflicts.append((item.event, "seq"))
            elif any(f.present() for f in indexed):
                conflicts.append((item.event, "id or client_id"))
        if conflicts:
            e, what = conflicts[0]
            raise StreamConflict(sorted({c.group for c, _ in conflicts}),
                                 f"the {what} of {e.stream}#{e.seq} is taken",
                                 streams=sorted({c.stream for c, _ in conflicts}))
        for item in part:
            if item.key in already:
                continue
            tr.set(item.key, item.value)
            for key in item.indexKeys:
                tr.set(key, item.indexValue)
        for key, value, stored in pending:
            # An id already pending keeps its entry.
            if not stored.present():
                tr.set(key, value)
        if rows:
            self._writeRows(tr, rows)
        return len(already)

    def _appended(self, done: list[Done], count: int) -> None:
        already = sum(d.result for d in done)
        attempts = max(d.attempts for d in done)
        if already:
            self.log.warn("{already} of {count} events were already stored by an earlier "
                          "attempt of their batch (commit result unknown, then retried)",
                          already=already, count=count)
        if attempts > 1:
            self.log.debug("batch of {count} events in {parts} part(s) needed {attempts} "
                           "attempts", count=count, parts=len(done), attempts=attempts)
        return None

    # -- reads

    def readAfter(self, stream: str, after: int, limit: int) -> defer.Deferred[list[Event]]:
        if limit <= 0:
            # A limit of 0 means "no limit" to FoundationDB.
            return defer.succeed([])
        layout = self.layout

        def body(tr: Any, attempt: int) -> list[Event]:
            _, end = layout.eventRange(stream)
            rows = self._range(tr, layout.event(stream, after + 1), end, limit)
            return [layout.decodeEvent(k, v) for k, v in rows]

        return self._read(body)

    def readBefore(self, stream: str, before: int | None,
                   limit: int) -> defer.Deferred[list[Event]]:
        if limit <= 0:
            return defer.succeed([])
        layout = self.layout

        def body(tr: Any, attempt: int) -> list[Event]:
            begin, end = layout.eventRange(stream)
            if before is not None:
                end = layout.event(stream, before)
            rows = self._range(tr, begin, end, limit, reverse=True)
            return [layout.decodeEvent(k, v) for k, v in reversed(rows)]

        return self._read(body)

    def findClientId(self, stream: str, sender: str | None,
                     client_id: str | None) -> defer.Deferred[Event | None]:
        if sender is None or client_id is None:
            return defer.succeed(None)
        return self._read(self._findBody, stream, self.layout.clientId(stream, sender, client_id))

    def findEventId(self, stream: str, id: str) -> defer.Deferred[Event | None]:
        return self._read(self._findBody, stream, self.layout.eventId(stream, id))

    def _findBody(self, tr: Any, attempt: int, stream: str, indexKey: bytes) -> Event | None:
        layout = self.layout
        seq = tr.get(indexKey)
        if not seq.present():
            return None
        key = layout.event(stream, layout.unpackInt(bytes(seq)))
        value = tr.get(key)
        if not value.present():
            raise StoreError(f"index key {indexKey!r} points at a missing event")
        return layout.decodeEvent(key, bytes(value))

    # -- the outbox

    def pendingOutbox(self, groups: Iterable[int],
                      limit: int) -> defer.Deferred[list[OutboxEntry]]:
        groups = sorted(set(groups))
        if not groups or limit <= 0:
            return defer.succeed([])
        layout = self.layout

        wanted = set(groups)
        # One range read from the first group asked for to the last (a sweep asks for every
        # group, and few entries are pending at any time), bounded in case many are.
        cap = max(limit * 4, self.maxOutboxScan)

        def body(tr: Any, attempt: int) -> list[OutboxEntry]:
            begin, _ = layout.outboxRange(groups[0])
            _, end = layout.outboxRange(groups[-1])
            entries = [layout.decodeOutbox(k, v) for k, v in self._range(tr, begin, end, cap)]
            entries = [o for o in entries if o.group in wanted]
            entries.sort(key=lambda o: (o.created, o.id))
            return entries[:limit]

        return self._read(body)

    def markOutboxDone(self, entries: Iterable[OutboxEntry]) -> defer.Deferred[None]:
        keys = [self.layout.outbox(entry.group, entry.id) for entry in entries]
        if not keys:
            return defer.succeed(None)

        def body(tr: Any, attempt: int) -> None:
            for key in keys:
                tr.clear_range(key, key + b"\x00")

        return self._readWrite(body)

    # -- maintenance

    def clearAll(self) -> defer.Deferred[None]:
        """
        Delete every key under this store's prefix (tests, benchmarks; never in production).
        """
        begin, end = self.layout.everything()

        def body(tr: Any, attempt: int) -> None:
            tr.clear_range(begin, end)

        return self._readWrite(body)
