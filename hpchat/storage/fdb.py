# -*- test-case-name: tests.storage.test_fdb,tests.storage.test_fdb_layout -*-
"""
The event store for clusters of several machines: FoundationDB, through its Python binding.

Client and binding
==================
The binding (PyPI C{foundationdb}, module C{fdb}) is pure Python over the C client library
C{libfdb_c.so}, and a binding only loads a library of its own minor version or newer. hpchat
selects API version L{API_VERSION} (7.3) and is installed with the extra
C{hpchat[foundationdb]}, which pins C{foundationdb==7.3.*}; the machine needs the client
package C{foundationdb-clients} 7.3.x. L{loadBinding} says in one line what is missing.
C{fdb} is imported only inside functions, so this module imports without the binding.

Key layout (tuple layer)
========================
Every key lives under the one-element tuple C{(key_prefix,)}, default C{("hpchat",)}, so
several deployments (or test runs) can share a cluster. C{P} below is that prefix::

    (P, "v")                              -> (1,)        layout version, written by open()
    (P, "f", group)                       -> (token,)    fence: highest token seen for group
    (P, "e", stream, seq)                 -> (1, id, group, type, sender, ts, client_id, data)
    (P, "i", stream, id)                  -> (seq,)      event id index (notification dedupe)
    (P, "c", stream, sender, client_id)   -> (seq,)      client_id index (send dedupe); only
                                                         for events with a sender and client_id
    (P, "o", group, id)                   -> (stream, seq, body, created)   a pending outbox
                                                         entry, cleared once published
    (P, "s" | "a" | "r", ...)             conversation summaries, see
                                          L{hpchat.storage.fdb_conversations}

The outbox keys came after the first release without changing the layout version: a store
without them simply has no pending entries.

Values are tuple-packed too; C{data} is compact JSON text, C{ts} a double. The tuple layer
orders integers numerically, so the events of a stream are contiguous and in seq order: a
page of history is one range read (forward from C{seq + 1}, or C{reverse=True} with a limit
for the newest events before a seq).

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

Threads
=======
Every blocking call (C{.wait()}, reading a future, iterating a range) runs on this store's own
thread pool through C{deferToThreadPool}; the binding's network thread is started once per
process by C{fdb.open(cluster_file)}. Nothing here logs from those threads: results carry
attempt counts back to the reactor thread, which logs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from hpchat import strictjson
from hpchat.storage.base import (
    Event,
    FenceRejected,
    IEventStore,
    OutboxEntry,
    StoreError,
    StreamConflict,
    StreamSnapshot,
)
from hpchat.storage.blocklist import IBlockStore
from hpchat.storage.conversations import IConversationStore
from hpchat.storage.fdb_conversations import FDBConversations, rowsByPart
from hpchat.storage.presence import IPresenceStore

#: The FoundationDB API version hpchat selects, and the client series it belongs to.
API_VERSION = 730
CLIENT_SERIES = "7.3"
#: What an operator installs when the client cannot be loaded.
INSTALL_HINT = (f"install foundationdb-clients {CLIENT_SERIES}.x (it provides libfdb_c.so) and "
                f"pip install 'hpchat[foundationdb]' (foundationdb=={CLIENT_SERIES}.*)")
LAYOUT_VERSION = 1
#: FoundationDB's own limits (known-limitations): the client refuses bigger keys and values.
MAX_KEY_BYTES = 10_000
MAX_VALUE_BYTES = 100_000


class FoundationDBUnavailable(StoreError):
    """
    The FoundationDB client cannot be loaded here. C{reason} says what is missing in a few
    words; C{str()} adds what to install.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"{reason}; {INSTALL_HINT}")


def loadBinding(importModule: Callable[[str], Any] = importlib.import_module):
    """
    Import C{fdb} and select L{API_VERSION}, which loads C{libfdb_c}. Returns the module or
    raises L{FoundationDBUnavailable}. Safe to call more than once.
    """
    try:
        fdb = importModule("fdb")
    except ImportError:
        raise FoundationDBUnavailable(
            "the FoundationDB Python binding (package foundationdb) is not installed") from None
    try:
        if fdb.is_api_version_selected():
            selected = fdb.get_api_version()
            if selected < 630:
                raise FoundationDBUnavailable(
                    f"this process already selected FoundationDB API version {selected}, "
                    f"older than hpchat supports ({API_VERSION})")
        else:
            fdb.api_version(API_VERSION)
    except FoundationDBUnavailable:
        raise
    except Exception as e:
        message = " ".join(str(e).split())
        cause = e.__cause__ or e.__context__
        if isinstance(e, OSError) or isinstance(cause, OSError) or "Unable to locate" in message:
            reason = "the FoundationDB client library libfdb_c.so cannot be loaded"
        elif "not supported by the installed FoundationDB C library" in message:
            reason = f"the installed libfdb_c is older than the binding ({message})"
        elif "Latest known FDB API version" in message:
            reason = f"the installed binding is older than {CLIENT_SERIES} ({message})"
        else:
            reason = f"the FoundationDB client cannot be loaded ({message})"
        raise FoundationDBUnavailable(reason) from None
    return fdb


def _json(data) -> str:
    return strictjson.dumps(data)


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """
    An event with its keys and value as written, and the estimated transaction bytes it costs.
    """

    event: Event
    key: bytes
    value: bytes
    indexKeys: tuple[bytes, ...]
    indexValue: bytes
    cost: int


class KeyLayout:
    """
    The tuple-layer keys and values of the store (see the module docstring). Needs only the
    pure-Python C{fdb.tuple}, not C{libfdb_c}.
    """

    def __init__(self, prefix: str = "hpchat", tuples=None):
        if tuples is None:
            tuples = importlib.import_module("fdb.tuple")
        self._t = tuples
        self.prefix = (prefix,)
        self.root = tuples.pack(self.prefix)

    def pack(self, *items) -> bytes:
        return self._t.pack(self.prefix + items)

    def unpack(self, key: bytes) -> tuple:
        if not key.startswith(self.root):
            raise ValueError(f"key {key!r} is not under {self.prefix!r}")
        return self._t.unpack(key, prefix_len=len(self.root))

    def everything(self) -> tuple[bytes, bytes]:
        """
        The key range of the whole store (for tests and teardown).
        """
        r = self._t.range(self.prefix)
        return r.start, r.stop

    # -- keys

    def version(self) -> bytes:
        return self.pack("v")

    def fence(self, group: int) -> bytes:
        return self.pack("f", group)

    def event(self, stream: str, seq: int) -> bytes:
        return self.pack("e", stream, seq)

    def eventRange(self, stream: str) -> tuple[bytes, bytes]:
        r = self._t.range(self.prefix + ("e", stream))
        return r.start, r.stop

    def eventId(self, stream: str, id: str) -> bytes:
        return self.pack("i", stream, id)

    def clientId(self, stream: str, sender: str, clientId: str) -> bytes:
        return self.pack("c", stream, sender, clientId)

    def outbox(self, group: int, id: str) -> bytes:
        return self.pack("o", group, id)

    def outboxRange(self, group: int) -> tuple[bytes, bytes]:
        r = self._t.range(self.prefix + ("o", group))
        return r.start, r.stop

    def encodeOutbox(self, entry: OutboxEntry) -> bytes:
        return self._t.pack((entry.stream, entry.seq, entry.body, float(entry.created)))

    def decodeOutbox(self, key: bytes, value: bytes) -> OutboxEntry:
        kind, group, id = self.unpack(key)
        if kind != "o":
            raise ValueError(f"not an outbox key: {key!r}")
        stream, seq, body, created = self._t.unpack(value)
        return OutboxEntry(id=id, group=group, stream=stream, seq=seq, body=body,
                           created=created)

    # -- values

    def packInt(self, number: int) -> bytes:
        return self._t.pack((number,))

    def unpackInt(self, value: bytes) -> int:
        (number,) = self._t.unpack(value)
        return number

    def packVersion(self) -> bytes:
        return self._t.pack((LAYOUT_VERSION,))

    def encodeValue(self, e: Event) -> bytes:
        return self._t.pack((LAYOUT_VERSION, e.id, e.group, e.type, e.sender, float(e.ts),
                             e.client_id, _json(e.data)))

    def decodeEvent(self, key: bytes, value: bytes) -> Event:
        kind, stream, seq = self.unpack(key)
        if kind != "e":
            raise ValueError(f"not an event key: {key!r}")
        version, id, group, type, sender, ts, clientId, data = self._t.unpack(value)
        if version != LAYOUT_VERSION:
            raise StoreError(f"event {stream}#{seq} has value format {version}")
        return Event(stream=stream, seq=seq, id=id, group=group, type=type, sender=sender,
                     ts=ts, client_id=clientId, data=strictjson.loadsStored(data))

    def indexKeys(self, e: Event) -> tuple[bytes, ...]:
        """
        The unique index keys of C{e}: its id, and its (sender, client_id) when it has both.
        """
        keys = (self.eventId(e.stream, e.id),)
        if e.client_id is not None and e.sender is not None:
            keys += (self.clientId(e.stream, e.sender, e.client_id),)
        return keys

    def encode(self, e: Event) -> EncodedEvent:
        """
        Encode C{e}; raises C{ValueError} for a key or value FoundationDB would refuse.
        """
        key = self.event(e.stream, e.seq)
        value = self.encodeValue(e)
        indexKeys = self.indexKeys(e)
        indexValue = self.packInt(e.seq)
        if len(value) > MAX_VALUE_BYTES:
            raise ValueError(f"event {e.stream}#{e.seq} is {len(value)} bytes encoded; "
                             f"FoundationDB values are at most {MAX_VALUE_BYTES}")
        for k in (key,) + indexKeys:
            if len(k) > MAX_KEY_BYTES:
                raise ValueError(f"event {e.stream}#{e.seq} has a key of {len(k)} bytes; "
                                 f"FoundationDB keys are at most {MAX_KEY_BYTES}")
        # Written bytes, plus a read conflict range (about twice the key) per key read.
        cost = 3 * len(key) + len(value) + sum(3 * len(k) + len(indexValue) for k in indexKeys)
        return EncodedEvent(e, key, value, indexKeys, indexValue, cost)


def uniqueKeyClashes(events: Sequence[Event]) -> list[Event]:
    """
    The events of C{events} that repeat a seq, id or (sender, client_id) of an earlier event
    of the same stream in the same batch.
    """
    seen: set[tuple] = set()
    clashes = []
    for e in events:
        keys = [("seq", e.stream, e.seq), ("id", e.stream, e.id)]
        if e.client_id is not None and e.sender is not None:
            keys.append(("client", e.stream, e.sender, e.client_id))
        if any(k in seen for k in keys):
            clashes.append(e)
        seen.update(keys)
    return clashes


def splitBatch(encoded: Sequence[EncodedEvent], maxBytes: int,
               maxEvents: int) -> list[list[EncodedEvent]]:
    """
    Cut a batch into transaction-sized parts of at most C{maxBytes} (estimated cost) and
    C{maxEvents} events. A group's events stay in one part when they fit in one; a group too
    big for a part is cut in batch order, so a stream's parts hold ascending seqs.
    """
    byGroup: dict[int, list[EncodedEvent]] = {}
    for item in encoded:
        byGroup.setdefault(item.event.group, []).append(item)
    parts: list[list[EncodedEvent]] = []
    current: list[EncodedEvent] = []
    size = 0
    for items in byGroup.values():
        groupSize = sum(i.cost for i in items)
        if current and (size + groupSize > maxBytes or len(current) + len(items) > maxEvents):
            parts.append(current)
            current, size = [], 0
        for item in items:
            if current and (size + item.cost > maxBytes or len(current) + 1 > maxEvents):
                parts.append(current)
                current, size = [], 0
            current.append(item)
            size += item.cost
    if current:
        parts.append(current)
    return parts


@dataclass(frozen=True, slots=True)
class _Done:
    """
    What a transaction function returns to the reactor thread: its result and how many
    attempts it took.
    """

    result: Any
    attempts: int


@implementer(IEventStore, IConversationStore, IBlockStore, IPresenceStore)
class FoundationDBStore(FDBConversations):
    """
    L{IEventStore} on FoundationDB.

    @param binding: the C{fdb} module to use; None loads the real one in L{open} (tests pass
        an in-memory stand-in).
    """

    log = Logger()
    #: Seconds one transaction may take over all its attempts (FoundationDB's C{timeout}).
    transactionTimeout = 10.0
    #: Bounds of one transaction of an append: estimated bytes and events.
    maxPartBytes = 1_000_000
    maxPartEvents = 1000
    #: At most this many outbox keys are read by one L{pendingOutbox}.
    maxOutboxScan = 10_000

    def __init__(self, reactor, clusterFile: str, keyPrefix: str = "hpchat", threads: int = 16,
                 binding=None):
        self._reactor = reactor
        self.clusterFile = clusterFile
        self.keyPrefix = keyPrefix
        self.ready = False
        self._binding = binding
        self._fdb = None
        self._db = None
        self._layout: KeyLayout | None = None
        self.threads = threads
        self._pool: ThreadPool | None = None
        self._closing = False
        self._inFlight = 0
        self._idleWaiters: list[defer.Deferred] = []

    @property
    def layout(self) -> KeyLayout:
        if self._layout is None:
            self._layout = KeyLayout(self.keyPrefix)
        return self._layout

    # -- lifecycle

    def open(self):
        self._closing = False
        # A stopped ThreadPool cannot be started again: one per open().
        self._pool = ThreadPool(0, self.threads, "hpchat-foundationdb")
        self._pool.start()

        def opened(_):
            if self._closing:
                # close() was called while opening: it has stopped the pool already.
                return
            self.ready = True
            self.log.info("event store open: FoundationDB {clusterFile} prefix {prefix!r}",
                          clusterFile=self.clusterFile, prefix=self.keyPrefix)

        def failed(failure):
            self._stopPool()
            return failure

        d = self._defer(self._openInThread)
        d.addCallbacks(opened, failed)
        return d

    def _openInThread(self) -> None:
        binding = self._binding if self._binding is not None else loadBinding()
        layout = self.layout
        try:
            db = binding.open(self.clusterFile)
        except binding.FDBError as e:
            raise StoreError(f"cannot open FoundationDB cluster file {self.clusterFile}: "
                             f"{e}") from None
        self._fdb = binding
        self._db = db

        def checkLayout(tr, attempt):
            stored = tr.get(layout.version())
            if not stored.present():
                tr.set(layout.version(), layout.packVersion())
                return
            version = layout.unpackInt(bytes(stored))
            if version != LAYOUT_VERSION:
                raise StoreError(f"FoundationDB prefix {self.keyPrefix!r} holds layout version "
                                 f"{version}; this hpchat reads version {LAYOUT_VERSION}")

        self._transact(checkLayout)

    def close(self):
        """
        Wait for the calls in flight, then stop the thread pool. The binding's network thread
        runs until the process exits (it cannot be restarted), so reopening is cheap.
        """
        self.ready = False
        self._closing = True

        def stop(_):
            self._db = None
            self._stopPool()

        return self._whenIdle().addCallback(stop)

    def _stopPool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    # -- thread plumbing

    def _defer(self, f: Callable[..., Any], *args) -> defer.Deferred:
        if self._closing or self._pool is None:
            return defer.fail(StoreError("the FoundationDB store is not open"))
        self._inFlight += 1
        d = deferToThreadPool(self._reactor, self._pool, f, *args)

        def finished(result):
            self._inFlight -= 1
            if self._inFlight == 0:
                waiters, self._idleWaiters = self._idleWaiters, []
                for waiter in waiters:
                    waiter.callback(None)
            return result

        return d.addBoth(finished)

    def _whenIdle(self) -> defer.Deferred:
        if self._inFlight == 0:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idleWaiters.append(d)
        return d

    def _transact(self, body: Callable[..., Any], *args, commit: bool = True) -> _Done:
        """
        On a pool thread: run C{body(tr, attempt, *args)} in a transaction with the binding's
        retry loop (C{on_error} backs off and resets, or raises when the error is not
        retryable); commit unless C{commit} is false (read-only).
        """
        db = self._db
        if db is None:
            raise StoreError("the FoundationDB store is not open")
        FDBError = self._fdb.FDBError
        tr = db.create_transaction()
        # Not reset by on_error (API >= 610): bounds all attempts together.
        tr.options.set_timeout(int(self.transactionTimeout * 1000))
        attempt = 0
        while True:
            attempt += 1
            try:
                result = body(tr, attempt, *args)
                if commit:
                    tr.commit().wait()
                return _Done(result, attempt)
            except FDBError as e:
                try:
                    tr.on_error(e).wait()
                except FDBError as final:
                    raise StoreError(f"foundationdb: {final} after {attempt} attempt(s)") from None

    # -- writes

    def claim(self, group: int, token: int, stream: str, recent: int):
        d = self._defer(self._transact, self._claimBody, group, token, stream, recent)
        return d.addCallback(lambda done: done.result)

    def _claimBody(self, tr, attempt, group, token, stream, recent) -> StreamSnapshot:
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

    def _raiseFences(self, tr, fences: dict[int, int]) -> list[int]:
        """
        Inside a transaction: the groups whose stored token exceeds ours; when there are
        none, raise the stored tokens that are lower than ours.
        """
        layout = self.layout
        stored = {group: tr.get(layout.fence(group)) for group in fences}
        rejected = []
        lower = []
        for group, token in fences.items():
            value = stored[group]
            current = layout.unpackInt(bytes(value)) if value.present() else None
            if current is not None and current > token:
                rejected.append(group)
            elif current is None or current < token:
                lower.append(group)
        if rejected:
            return sorted(rejected)
        for group in lower:
            tr.set(layout.fence(group), layout.packInt(fences[group]))
        return []

    def append(self, events: Sequence[Event], fences: dict[int, int],
               outbox: Sequence[OutboxEntry] = (), conversations: Sequence = ()):
        missing = ({e.group for e in events} | {o.group for o in outbox}
                   | {c.group for c in conversations}) - set(fences)
        if missing:
            raise ValueError(f"no fence token for groups {sorted(missing)}")
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

    def _appendParts(self, parts, fences, clashes, entries, rows) -> list[_Done]:
        done = []
        for index, part in enumerate(parts):
            # Clashes inside the batch are found by the first part, after its fence check
            # and before anything is written.
            done.append(self._transact(self._appendBody, part, fences,
                                       clashes if index == 0 else [], entries[index],
                                       rows[index]))
        return done

    def _appendBody(self, tr, attempt, part: list[EncodedEvent], fences: dict[int, int],
                    clashes: list[Event], entries: list[tuple[bytes, bytes]] = (),
                    rows: Sequence = ()) -> int:
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
            raise StreamConflict({c.group for c in clashes},
                                 f"{e.stream}#{e.seq} repeats a seq, id or client_id of its batch",
                                 streams={c.stream for c in clashes})
        conflicts = []
        already = set()
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
            raise StreamConflict({c.group for c, _ in conflicts},
                                 f"the {what} of {e.stream}#{e.seq} is taken",
                                 streams={c.stream for c, _ in conflicts})
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

    def _appended(self, done: list[_Done], count: int) -> None:
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

    def _range(self, tr, begin: bytes, end: bytes, limit: int,
               reverse: bool = False) -> list[tuple[bytes, bytes]]:
        rows = tr.get_range(begin, end, limit=limit, reverse=reverse,
                            streaming_mode=self._fdb.StreamingMode.want_all)
        return [(kv.key, kv.value) for kv in rows]

    def _read(self, body: Callable[..., Any], *args) -> defer.Deferred:
        d = self._defer(self._readOnly, body, *args)
        return d.addCallback(lambda done: done.result)

    def _readOnly(self, body: Callable[..., Any], *args) -> _Done:
        return self._transact(body, *args, commit=False)

    def readAfter(self, stream: str, after: int, limit: int):
        if limit <= 0:
            # A limit of 0 means "no limit" to FoundationDB.
            return defer.succeed([])
        layout = self.layout

        def body(tr, attempt):
            _, end = layout.eventRange(stream)
            rows = self._range(tr, layout.event(stream, after + 1), end, limit)
            return [layout.decodeEvent(k, v) for k, v in rows]

        return self._read(body)

    def readBefore(self, stream: str, before: int | None, limit: int):
        if limit <= 0:
            return defer.succeed([])
        layout = self.layout

        def body(tr, attempt):
            begin, end = layout.eventRange(stream)
            if before is not None:
                end = layout.event(stream, before)
            rows = self._range(tr, begin, end, limit, reverse=True)
            return [layout.decodeEvent(k, v) for k, v in reversed(rows)]

        return self._read(body)

    def findClientId(self, stream: str, sender: str, client_id: str):
        if sender is None or client_id is None:
            return defer.succeed(None)
        return self._read(self._findBody, stream, self.layout.clientId(stream, sender, client_id))

    def findEventId(self, stream: str, id: str):
        return self._read(self._findBody, stream, self.layout.eventId(stream, id))

    def _findBody(self, tr, attempt, stream: str, indexKey: bytes) -> Event | None:
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

    def pendingOutbox(self, groups, limit: int):
        groups = sorted(set(groups))
        if not groups or limit <= 0:
            return defer.succeed([])
        layout = self.layout

        wanted = set(groups)
        # One range read from the first group asked for to the last (a sweep asks for every
        # group, and few entries are pending at any time), bounded in case many are.
        cap = max(limit * 4, self.maxOutboxScan)

        def body(tr, attempt):
            begin, _ = layout.outboxRange(groups[0])
            _, end = layout.outboxRange(groups[-1])
            entries = [layout.decodeOutbox(k, v) for k, v in self._range(tr, begin, end, cap)]
            entries = [o for o in entries if o.group in wanted]
            entries.sort(key=lambda o: (o.created, o.id))
            return entries[:limit]

        return self._read(body)

    def markOutboxDone(self, entries):
        keys = [self.layout.outbox(entry.group, entry.id) for entry in entries]
        if not keys:
            return defer.succeed(None)

        def body(tr, attempt):
            for key in keys:
                tr.clear_range(key, key + b"\x00")

        return self._defer(self._transact, body).addCallback(lambda _: None)

    # -- maintenance

    def clearAll(self):
        """
        Delete every key under this store's prefix (tests, benchmarks; never in production).
        """
        begin, end = self.layout.everything()

        def body(tr, attempt):
            tr.clear_range(begin, end)

        return self._defer(self._transact, body).addCallback(lambda _: None)
