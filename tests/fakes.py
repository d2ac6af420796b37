"""
Test doubles for the layers below the streams and the API: an event store in memory that
follows the IEventStore contract (and lets a test hold or fail writes), and an ownership whose
answers the test sets.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from hpchat.groups import IOwnership, Local, Redirect
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
from hpchat.storage.conversations import ConversationPage, IConversationStore, latestRows
from hpchat.storage.presence import IPresenceStore

NOW = 1_700_000_000.0
BASE = "http://node-a.test:8080"


def fired(d: defer.Deferred) -> Any:
    """
    The result of the already-fired Deferred C{d}; raise its failure's exception, or an
    AssertionError when it has not fired.
    """
    results: list = []

    def capture(result):
        results.append(result)
        return None if isinstance(result, Failure) else result

    d.addBoth(capture)
    if not results:
        raise AssertionError(f"{d!r} has not fired")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


# -- the event store


def _copy(event: Event) -> Event:
    """
    What a store gives back: an equal event that shares no mutable state with the original
    (the data goes through JSON as in the real backends).
    """
    return replace(event, data=_json.loads(_json.dumps(dict(event.data))))


@dataclass
class _HeldAppend:
    events: list[Event]
    fences: dict[int, int]
    deferred: defer.Deferred
    outbox: list[OutboxEntry]
    conversations: list = None


@implementer(IEventStore, IConversationStore, IBlockStore, IBlockVersion, IPresenceStore)
class MemoryEventStore:
    """
    L{IEventStore} in memory, following the interface's docstrings: per-group fence tokens
    (L{FenceRejected} when a higher token is stored), L{StreamConflict} on a seq, id or
    (sender, client_id) already taken (within the batch or in the store), all-or-nothing
    batches with their outbox entries. Every method returns an already-fired Deferred, except
    appends while L{hold} is on: those stay unfired (and unwritten) until L{release}.

    @ivar batches: every successfully written batch, as C{(events, fences)}.
    @ivar appendCalls: the number of calls to L{append}.
    @ivar lookups: the number of calls to L{findClientId} and L{findEventId}.
    @ivar outbox: the pending outbox entries, by id.
    """

    def __init__(self, ready: bool = True):
        self.ready = ready
        self.fences: dict[int, int] = {}
        self.events: dict[str, dict[int, Event]] = {}
        self.batches: list[tuple[list[Event], dict[int, int]]] = []
        #: Every successfully written batch, as C{(events, conversation rows)}.
        self.rowBatches: list[tuple[list[Event], list]] = []
        self.appendCalls = 0
        self.lookups = 0
        self.claims: list[tuple[int, int, str]] = []
        self.outbox: dict[str, OutboxEntry] = {}
        #: Conversation summaries by (user, stream).
        self.conversations: dict[tuple[str, str], Any] = {}
        #: Blocks: (blocker, blocked) -> when.
        self.blocks: dict[tuple[str, str], float] = {}
        self.blockReads = 0
        #: The blocks' version (raised by every change of L{blocks} through L{setBlock}), and
        #: the number of calls to L{blocksVersion}.
        self.blockVersion = 0
        self.versionReads = 0
        #: Last-seen times by user.
        self.presence: dict[str, float] = {}
        self._failNext = 0
        self._failWith: Exception | None = None
        self._holding = False
        self.held: list[_HeldAppend] = []

    # -- test controls

    def failNext(self, count: int, error: Exception | None = None) -> None:
        """
        Fail the next C{count} appends with C{error} (default: a L{StoreError}), writing nothing.
        """
        self._failNext = count
        self._failWith = error

    def hold(self) -> None:
        """
        From now on, appends neither write nor fire until L{release}.
        """
        self._holding = True

    def release(self, keepHolding: bool = False) -> None:
        """
        Write the held appends, in order, and fire their Deferreds; stop holding unless
        C{keepHolding} (then appends made meanwhile are held in turn).
        """
        self._holding = keepHolding
        held, self.held = self.held, []
        for h in held:
            try:
                self._write(h.events, h.fences, h.outbox, h.conversations or [])
            except Exception as e:
                h.deferred.errback(e)
            else:
                h.deferred.callback(None)

    def seed(self, stream: str, group: int, count: int, sender: str = "alice",
             start: int = 1, ts: float = NOW - 1000, type: str = "message") -> list[Event]:
        """
        Write C{count} events to C{stream} directly (as if an earlier owner had written them).
        """
        events = [Event(stream=stream, seq=seq, id=f"seed-{stream}-{seq}", group=group,
                        type=type, sender=sender, ts=ts + seq, client_id=f"seed{seq}",
                        data={"text": f"message {seq}"} if type == "message" else {"n": seq})
                  for seq in range(start, start + count)]
        for e in events:
            self.events.setdefault(stream, {})[e.seq] = _copy(e)
        return events

    def lastSeq(self, stream: str) -> int:
        return max(self.events.get(stream, {}), default=0)

    def stored(self, stream: str) -> list[Event]:
        s = self.events.get(stream, {})
        return [s[k] for k in sorted(s)]

    # -- IEventStore

    def open(self):
        self.ready = True
        return defer.succeed(None)

    def close(self):
        self.ready = False
        return defer.succeed(None)

    def _rejected(self, fences: dict[int, int]) -> list[int]:
        return [g for g, t in fences.items() if self.fences.get(g, t) > t]

    def _raise(self, fences: dict[int, int]) -> None:
        for g, t in fences.items():
            if t > self.fences.get(g, t - 1):
                self.fences[g] = t

    def claim(self, group, token, stream, recent):
        self.claims.append((group, token, stream))
        rejected = self._rejected({group: token})
        if rejected:
            return defer.fail(FenceRejected(rejected))
        self._raise({group: token})
        events = self.stored(stream)
        tail = events[-recent:] if recent > 0 else []
        reads = {user: row.read_seq for (user, s), row in self.conversations.items()
                 if s == stream}
        return defer.succeed(StreamSnapshot(last_seq=self.lastSeq(stream),
                                            recent=[_copy(e) for e in tail], reads=reads))

    def append(self, events, fences, outbox=(), conversations=()):
        self.appendCalls += 1
        events = list(events)
        fences = dict(fences)
        outbox = list(outbox)
        conversations = list(conversations)
        try:
            requireFences(events, fences, outbox, conversations)
        except ValueError:
            return defer.fail()
        if self._failNext:
            self._failNext -= 1
            return defer.fail(self._failWith or StoreError("the disk is on fire"))
        if self._holding:
            d: defer.Deferred = defer.Deferred()
            self.held.append(_HeldAppend(events, fences, d, outbox, conversations))
            return d
        try:
            self._write(events, fences, outbox, conversations)
        except Exception as e:
            return defer.fail(e)
        return defer.succeed(None)

    def _write(self, events: list[Event], fences: dict[int, int],
               outbox: list[OutboxEntry] = (), conversations: list = ()) -> None:
        rejected = self._rejected(fences)
        if rejected:
            raise FenceRejected(rejected)
        conflicts = set()
        streams = set()
        seen: set[tuple] = set()
        for e in events:
            stored = self.events.get(e.stream, {})
            keys = [("seq", e.stream, e.seq), ("id", e.stream, e.id)]
            if e.client_id is not None:
                keys.append(("client", e.stream, e.sender, e.client_id))
            taken = (e.seq in stored
                     or any(s.id == e.id for s in stored.values())
                     or (e.client_id is not None
                         and any(s.sender == e.sender and s.client_id == e.client_id
                                 for s in stored.values())))
            if taken or any(k in seen for k in keys):
                conflicts.add(e.group)
                streams.add(e.stream)
            seen.update(keys)
        if conflicts:
            raise StreamConflict(sorted(conflicts), "seq, id or client_id already taken",
                                 streams=sorted(streams))
        self._raise(fences)
        for e in events:
            self.events.setdefault(e.stream, {})[e.seq] = _copy(e)
        for entry in outbox:
            self.outbox.setdefault(entry.id, entry)
        for row in latestRows(conversations):
            self.conversations[(row.user, row.stream)] = row
        self.batches.append(([_copy(e) for e in events], fences))
        self.rowBatches.append(([_copy(e) for e in events], list(conversations)))

    def readAfter(self, stream, after, limit):
        return defer.succeed([_copy(e) for e in self.stored(stream) if e.seq > after][:limit])

    def readBefore(self, stream, before, limit):
        events = [e for e in self.stored(stream) if before is None or e.seq < before]
        return defer.succeed([_copy(e) for e in (events[-limit:] if limit > 0 else [])])

    def findClientId(self, stream, sender, client_id):
        self.lookups += 1
        for e in self.stored(stream):
            if e.sender == sender and e.client_id == client_id:
                return defer.succeed(_copy(e))
        return defer.succeed(None)

    def findEventId(self, stream, id):
        self.lookups += 1
        for e in self.stored(stream):
            if e.id == id:
                return defer.succeed(_copy(e))
        return defer.succeed(None)

    def listConversations(self, user, limit, before):
        rows = sorted((r for (u, _), r in self.conversations.items() if u == user),
                      key=lambda r: (r.updated, r.stream), reverse=True)
        total = sum(r.last_seq - r.read_seq for r in rows)
        if before is not None:
            rows = [r for r in rows if (r.updated, r.stream) < tuple(before)]
        items = []
        for row in rows[:max(0, limit)]:
            last = self.events.get(row.stream, {}).get(row.last_seq)
            items.append((row, _copy(last) if last is not None else None))
        return defer.succeed(ConversationPage(items=items, unread_total=total))

    def setBlock(self, blocker, blocked, on, group, token, ts):
        rejected = self._rejected({group: token})
        if rejected:
            return defer.fail(FenceRejected(rejected))
        self._raise({group: token})
        if on and (blocker, blocked) not in self.blocks:
            self.blocks[(blocker, blocked)] = ts
            self.blockVersion += 1
        elif not on and self.blocks.pop((blocker, blocked), None) is not None:
            self.blockVersion += 1
        return defer.succeed(None)

    def blocksVersion(self):
        self.versionReads += 1
        return defer.succeed(self.blockVersion)

    def blocksOf(self, blocker):
        return defer.succeed(sorted((b for a, b in self.blocks if a == blocker),
                                    key=str.encode))

    def blocksBetween(self, a, b):
        self.blockReads += 1
        return defer.succeed({p for p in ((a, b), (b, a)) if p in self.blocks})

    def blockersAmong(self, blocked, users):
        return defer.succeed({u for u in users if (u, blocked) in self.blocks})

    def writeLastSeen(self, entries, fences):
        rejected = self._rejected(dict(fences))
        if rejected:
            return defer.fail(FenceRejected(rejected))
        self._raise(dict(fences))
        for user, ts in entries.items():
            self.presence[user] = max(ts, self.presence.get(user, ts))
        return defer.succeed(None)

    def lastSeen(self, users):
        return defer.succeed({u: self.presence[u] for u in users if u in self.presence})

    def pendingOutbox(self, groups, limit):
        groups = set(groups)
        entries = sorted((o for o in self.outbox.values() if o.group in groups),
                         key=lambda o: (o.created, o.id))
        return defer.succeed(entries[:max(0, limit)])

    def markOutboxDone(self, entries):
        for entry in entries:
            self.outbox.pop(entry.id, None)
        return defer.succeed(None)


# -- ownership


@implementer(IOwnership)
class FakeOwnership:
    """
    An L{IOwnership} that owns every group under C{token} unless told otherwise per group:
    L{Local} with another token, L{Redirect} to another node, L{Unsettled}, or an unfired
    Deferred (a claim in progress) that the test fires.
    """

    def __init__(self, nodeId: str = "node-a", url: str = BASE, groups: int = 64,
                 token: int = 1):
        self._nodeId = nodeId
        self.url = url
        self.groups = groups
        self.default = Local(token)
        self.routes: dict[int, Any] = {}
        self.nodes = {nodeId: url}
        self.isReady = True
        self.lostCallbacks: list = []
        self.gainedCallbacks: list = []
        self.routeCalls: list[int] = []

    def set(self, group: int, route) -> None:
        self.routes[group] = route

    def lose(self, groups) -> None:
        """
        Stop owning C{groups} (they now redirect to node-b) and tell the subscribers.
        """
        groups = list(groups)
        self.nodes.setdefault("node-b", "http://node-b.test:8080")
        for g in groups:
            self.routes[g] = Redirect("node-b", "http://node-b.test:8080")
        for callback in self.lostCallbacks:
            callback(groups)

    def nodeId(self):
        return self._nodeId

    def tokenFor(self, group):
        route = self.routes.get(group, self.default)
        return route.token if isinstance(route, Local) else None

    def route(self, group):
        self.routeCalls.append(group)
        return self.routes.get(group, self.default)

    def cluster(self):
        owners = {}
        for g in range(self.groups):
            route = self.routes.get(g, self.default)
            if isinstance(route, Local):
                owners[g] = self._nodeId
            elif isinstance(route, Redirect):
                owners[g] = route.node
        return dict(self.nodes), owners

    def subscribeLost(self, callback):
        self.lostCallbacks.append(callback)

    def subscribeGained(self, callback):
        self.gainedCallbacks.append(callback)

    def gain(self, groups, token: int | None = None) -> None:
        """
        Own C{groups} (under C{token}, else the default one) and tell the subscribers.
        """
        groups = list(groups)
        for g in groups:
            self.routes[g] = Local(token) if token is not None else self.default
        for callback in self.gainedCallbacks:
            callback(groups)

    def ready(self):
        return self.isReady
