"""
Test doubles for the layers below the streams: an in-memory event store whose Deferreds the
test controls, and an ownership whose answers the test sets.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from hpchat.groups import IOwnership, Local
from hpchat.storage.base import (
    Event,
    FenceRejected,
    IEventStore,
    StoreError,
    StreamConflict,
    StreamSnapshot,
)


@implementer(IEventStore)
class MemoryStore:
    """
    Keeps events in a dict. With C{hold = True}, appends wait until L{release} is called;
    C{failNext} makes that many appends fail with L{StoreError}.
    """

    def __init__(self):
        self.ready = False
        self.events: dict[str, dict[int, Event]] = {}
        self.fences: dict[int, int] = {}
        self.appends: list[list[Event]] = []
        self.hold = False
        self.held: list[tuple[list, dict, defer.Deferred]] = []
        self.failNext = 0

    def open(self):
        self.ready = True
        return defer.succeed(None)

    def close(self):
        self.ready = False
        return defer.succeed(None)

    def claim(self, group, token, stream, recent):
        if self.fences.get(group, 0) > token:
            return defer.fail(FenceRejected([group]))
        self.fences[group] = token
        events = sorted(self.events.get(stream, {}).values(), key=lambda e: e.seq)
        lastSeq = events[-1].seq if events else 0
        return defer.succeed(StreamSnapshot(lastSeq, events[-recent:]))

    def append(self, events, fences):
        if self.hold:
            d = defer.Deferred()
            self.held.append((list(events), dict(fences), d))
            return d
        return defer.maybeDeferred(self._append, list(events), dict(fences))

    def release(self):
        held, self.held = self.held, []
        for events, fences, d in held:
            try:
                d.callback(self._append(events, fences))
            except Exception as e:
                d.errback(e)

    def _append(self, events, fences):
        if self.failNext:
            self.failNext -= 1
            raise StoreError("disk on fire")
        rejected = [g for g, t in fences.items() if self.fences.get(g, 0) > t]
        if rejected:
            raise FenceRejected(rejected)
        for e in events:
            stream = self.events.get(e.stream, {})
            taken = e.seq in stream or any(
                x.id == e.id or (e.client_id is not None and x.client_id == e.client_id
                                 and x.sender == e.sender) for x in stream.values())
            if taken:
                raise StreamConflict([e.group], f"{e.stream} {e.seq}")
        for g, t in fences.items():
            self.fences[g] = max(t, self.fences.get(g, 0))
        for e in events:
            self.events.setdefault(e.stream, {})[e.seq] = e
        self.appends.append(events)

    def _sorted(self, stream):
        return sorted(self.events.get(stream, {}).values(), key=lambda e: e.seq)

    def readAfter(self, stream, after, limit):
        return defer.succeed([e for e in self._sorted(stream) if e.seq > after][:limit])

    def readBefore(self, stream, before, limit):
        events = [e for e in self._sorted(stream) if before is None or e.seq < before]
        return defer.succeed(events[-limit:] if limit else [])

    def findClientId(self, stream, sender, client_id):
        for e in self._sorted(stream):
            if e.sender == sender and e.client_id == client_id:
                return defer.succeed(e)
        return defer.succeed(None)

    def findEventId(self, stream, id):
        for e in self._sorted(stream):
            if e.id == id:
                return defer.succeed(e)
        return defer.succeed(None)


@implementer(IOwnership)
class SettableOwnership:
    """
    Owns every group under C{token} unless C{routes} says otherwise for a group.
    """

    def __init__(self, token: int = 1, nodeId: str = "here", url: str = "http://here"):
        self.token = token
        self.routes: dict[int, object] = {}
        self._nodeId = nodeId
        self._url = url
        self._lost = []
        self.isReady = True

    def nodeId(self):
        return self._nodeId

    def tokenFor(self, group):
        route = self.routes.get(group, Local(self.token))
        return route.token if isinstance(route, Local) else None

    def route(self, group):
        return self.routes.get(group, Local(self.token))

    def cluster(self):
        return {self._nodeId: self._url}, {}

    def subscribeLost(self, callback):
        self._lost.append(callback)

    def lose(self, groups, route):
        for g in groups:
            self.routes[g] = route
        for callback in self._lost:
            callback(groups)

    def ready(self):
        return self.isReady
