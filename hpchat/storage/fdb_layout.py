# -*- test-case-name: tests.storage.test_fdb_layout -*-
"""
The keys and values of the FoundationDB store (L{hpchat.storage.fdb}), and how a batch is cut
into transactions. Pure functions over the binding's tuple layer (C{fdb.tuple}, pure Python:
no C{libfdb_c} needed).

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


Transaction-sized parts
=======================
FoundationDB limits a transaction to 10 MB and 5 s, and runs best under 1 MB. L{splitBatch}
cuts a batch into parts of a bounded estimated cost (L{EncodedEvent.cost}: key, value and
read-conflict sizes) and number of events, keeping each group's events in one part when they
fit (see L{hpchat.storage.fdb} for what a part's transaction does).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Sequence

from hpchat import strictjson
from hpchat.storage.base import Event, OutboxEntry, StoreError

LAYOUT_VERSION = 1
#: FoundationDB's own limits (known-limitations): the client refuses bigger keys and values.
MAX_KEY_BYTES = 10_000
MAX_VALUE_BYTES = 100_000


def _json(data: Any) -> str:
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

    def __init__(self, prefix: str = "hpchat", tuples: Any = None):
        if tuples is None:
            tuples = importlib.import_module("fdb.tuple")
        self._t = tuples
        self.prefix = (prefix,)
        self.root = tuples.pack(self.prefix)

    def pack(self, *items: Any) -> bytes:
        return self._t.pack(self.prefix + items)

    def unpack(self, key: bytes) -> tuple[Any, ...]:
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
        keys: tuple[bytes, ...] = (self.eventId(e.stream, e.id),)
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
    seen: set[tuple[Any, ...]] = set()
    clashes = []
    for e in events:
        keys: list[tuple[Any, ...]] = [("seq", e.stream, e.seq), ("id", e.stream, e.id)]
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

