"""
Test doubles for the HTTP API tests: an in-memory event store, a scriptable ownership, and a
harness that wires the real API, streams, persister, notifier and authenticator on a
L{twisted.internet.task.Clock} and drives them over HTTP with L{treq.testing.StubTreq}.

Two clocks are involved: the harness' L{Clock} drives everything of hpchat (persister flushes,
poll timeouts, typing expiry), while StubTreq pumps bytes between client and server over its
own memory reactor. After advancing the harness clock, call L{Harness.flush} (or use
L{Harness.answer}) so that the client sees what the server wrote.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from hpchat.config import ChatConfig
from hpchat.groups import IOwnership, Local, Redirect
from hpchat.notify import InProcessNotifier
from hpchat.persister import BatchPersister
from hpchat.storage.base import (
    Event,
    FenceRejected,
    IEventStore,
    StoreError,
    StreamConflict,
    StreamSnapshot,
)
from hpchat.streams import Streams
from hpchat.web.api import ChatAPI
from hpchat.web.auth import Authenticator
from hpchat.web.internal import InternalAuth

SECRET = b"hpchat-test-secret-of-32-bytes-or-more!"
NOW = 1_700_000_000.0
BASE = "http://node-a.test:8080"
FLUSH = 0.005


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


@implementer(IEventStore)
class MemoryEventStore:
    """
    L{IEventStore} in memory, following the interface's docstrings: per-group fence tokens
    (L{FenceRejected} when a higher token is stored), L{StreamConflict} on a seq, id or
    (sender, client_id) already taken (within the batch or in the store), all-or-nothing
    batches. Every method returns an already-fired Deferred, except appends while L{hold}
    is on: those stay unfired (and unwritten) until L{release}.

    @ivar batches: every successfully written batch, as C{(events, fences)}.
    @ivar appendCalls: the number of calls to L{append}.
    """

    def __init__(self, ready: bool = True):
        self.ready = ready
        self.fences: dict[int, int] = {}
        self.events: dict[str, dict[int, Event]] = {}
        self.batches: list[tuple[list[Event], dict[int, int]]] = []
        self.appendCalls = 0
        self.claims: list[tuple[int, int, str]] = []
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

    def release(self) -> None:
        """
        Stop holding; write the held appends, in order, and fire their Deferreds.
        """
        self._holding = False
        held, self.held = self.held, []
        for h in held:
            try:
                self._write(h.events, h.fences)
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
        return defer.succeed(StreamSnapshot(last_seq=self.lastSeq(stream),
                                            recent=[_copy(e) for e in tail]))

    def append(self, events, fences):
        self.appendCalls += 1
        events = list(events)
        fences = dict(fences)
        missing = {e.group for e in events} - set(fences)
        if missing:
            return defer.fail(ValueError(f"no fence token for groups {sorted(missing)}"))
        if self._failNext:
            self._failNext -= 1
            return defer.fail(self._failWith or StoreError("the disk is on fire"))
        if self._holding:
            d: defer.Deferred = defer.Deferred()
            self.held.append(_HeldAppend(events, fences, d))
            return d
        try:
            self._write(events, fences)
        except Exception as e:
            return defer.fail(e)
        return defer.succeed(None)

    def _write(self, events: list[Event], fences: dict[int, int]) -> None:
        rejected = self._rejected(fences)
        if rejected:
            raise FenceRejected(rejected)
        conflicts = set()
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
            seen.update(keys)
        if conflicts:
            raise StreamConflict(sorted(conflicts), "seq, id or client_id already taken")
        self._raise(fences)
        for e in events:
            self.events.setdefault(e.stream, {})[e.seq] = _copy(e)
        self.batches.append(([_copy(e) for e in events], fences))

    def readAfter(self, stream, after, limit):
        return defer.succeed([_copy(e) for e in self.stored(stream) if e.seq > after][:limit])

    def readBefore(self, stream, before, limit):
        events = [e for e in self.stored(stream) if before is None or e.seq < before]
        return defer.succeed([_copy(e) for e in (events[-limit:] if limit > 0 else [])])

    def findClientId(self, stream, sender, client_id):
        for e in self.stored(stream):
            if e.sender == sender and e.client_id == client_id:
                return defer.succeed(_copy(e))
        return defer.succeed(None)

    def findEventId(self, stream, id):
        for e in self.stored(stream):
            if e.id == id:
                return defer.succeed(_copy(e))
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

    def ready(self):
        return self.isReady


# -- HTTP answers


@dataclass
class Answer:
    """
    A complete HTTP response as the client saw it.
    """

    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode())
        return values[0].decode("latin-1") if values else None

    @property
    def json(self) -> Any:
        return _json.loads(self.body.decode("utf-8"))


def chatConfig(**overrides) -> ChatConfig:
    values = dict(groups=64, max_text_chars=4000, typing_ttl=6.0, max_poll_timeout=60.0,
                  history_in_memory=200, idle_evict=300.0)
    values.update(overrides)
    return ChatConfig(**values)


class Harness:
    """
    One node's API over fakes, on a Clock, with a StubTreq client.
    """

    def __init__(self, batchSize: int = 100, maxPending: int = 10000,
                 store: MemoryEventStore | None = None, ownership: FakeOwnership | None = None,
                 **chat):
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.chat = chatConfig(**chat)
        self.store = store if store is not None else MemoryEventStore()
        self.ownership = ownership if ownership is not None else FakeOwnership(
            groups=self.chat.groups)
        self.persister = BatchPersister(self.clock, self.store, batchSize=batchSize,
                                        flushInterval=FLUSH, maxPending=maxPending)
        self.streams = Streams(self.clock, self.store, self.persister, self.ownership,
                               groups=self.chat.groups,
                               historyInMemory=self.chat.history_in_memory,
                               typingTtl=self.chat.typing_ttl, idleEvict=self.chat.idle_evict)
        self.persister.onGroupsLost = lambda groups, error: self.streams.dropGroups(groups)
        self.ownership.subscribeLost(self.streams.dropGroups)
        self.notifier = InProcessNotifier(self.streams)
        self.streams.onCommitted.append(self.notifier.messageCommitted)
        self.auth = Authenticator(SECRET, self.clock)
        self.internalAuth = InternalAuth(SECRET, self.clock)
        self.api = ChatAPI(self.streams, self.ownership, self.auth, self.store, self.chat,
                           self.persister, self.internalAuth)
        self.stub = StubTreq(self.api.resource())
        self.persister.startService()
        self.streams.startService()
        self._tokens: dict[str, str] = {}

    # -- lifecycle

    def stop(self) -> None:
        """
        Stop the services, then check that nothing of hpchat is left on the clock.
        """
        if self.store.held:
            self.store.release()
        self.streams.stopService()
        d = self.persister.stopService()
        for _ in range(100):
            if d.called:
                break
            self.clock.advance(1)
        fired(d)
        self.flush()
        left = self.clock.getDelayedCalls()
        if left:
            raise AssertionError(f"calls left on the clock: {left!r}")

    # -- time

    def flush(self) -> None:
        """
        Let StubTreq move the bytes written so far between client and server.
        """
        self.stub.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    def run(self, seconds: float, step: float = 0.01) -> None:
        """
        Advance the clock by C{seconds} in small steps, as real time would pass.
        """
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
        self.flush()

    def settle(self, rounds: int = 4) -> None:
        """
        Run a few persister flushes (and what they trigger), then pump HTTP.
        """
        for _ in range(rounds):
            self.clock.advance(FLUSH)
        self.flush()

    def pendingCalls(self) -> list:
        """
        The delayed calls on the clock other than the services' LoopingCalls.
        """
        return [c for c in self.clock.getDelayedCalls() if not isinstance(c.func, task.LoopingCall)]

    def waiters(self) -> int:
        return sum(len(s.waiters) for s in self.streams._streams.values())

    # -- auth

    def token(self, user: str, ttl: float = 3600) -> str:
        if user not in self._tokens:
            self._tokens[user] = self.auth.mint(user, ttl)
        return self._tokens[user]

    # -- HTTP

    def request(self, method: str, path: str, user: str | None = "alice",
                token: str | None = None, body: Any = None, data: bytes | None = None,
                headers: dict | None = None) -> defer.Deferred:
        """
        Start a request; fires with an L{Answer} once complete (which may take L{flush}es).
        C{body} is sent as JSON, C{data} as raw bytes. The bearer token is C{token}, or one
        for C{user}, or none when both are None.
        """
        allHeaders = {}
        if token is None and user is not None:
            token = self.token(user)
        if token is not None:
            allHeaders[b"authorization"] = [b"Bearer " + token.encode()]
        if body is not None:
            data = _json.dumps(body).encode("utf-8")
        if data is not None:
            allHeaders[b"content-type"] = [b"application/json"]
        for k, v in (headers or {}).items():
            allHeaders[k.encode() if isinstance(k, str) else k] = \
                [v.encode() if isinstance(v, str) else v]
        d = self.stub.request(method, BASE + path, headers=allHeaders, data=data,
                              allow_redirects=False)

        def read(response):
            return self.stub.content(response).addCallback(
                lambda content: Answer(response.code, response.headers, content))

        return d.addCallback(read)

    def answer(self, d: defer.Deferred) -> Answer:
        """
        Pump HTTP and return the fired L{Answer} of request C{d}.
        """
        self.flush()
        return fired(d)

    def call(self, method: str, path: str, **kw) -> Answer:
        """
        Make a request that is expected to be answered without the clock moving.
        """
        return self.answer(self.request(method, path, **kw))

    # -- conversation shortcuts

    def send(self, cid: str, user: str, text: str = "hello", clientId: str | None = None,
             **kw) -> defer.Deferred:
        body: dict[str, Any] = {"text": text}
        if clientId is not None:
            body["client_id"] = clientId
        return self.request("POST", f"/v1/conversations/{quote(cid, safe=':')}/messages",
                            user=user, body=body, **kw)

    def sent(self, cid: str, user: str, text: str = "hello", clientId: str | None = None,
             **kw) -> Answer:
        """
        Send a message and let the persister make it durable; return the answer.
        """
        d = self.send(cid, user, text, clientId, **kw)
        self.settle()
        return fired(d)

    def events(self, cid: str, user: str, **query) -> defer.Deferred:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        p = f"/v1/conversations/{quote(cid, safe=':')}/events" + (f"?{q}" if q else "")
        return self.request("GET", p, user=user)

    def lastSeq(self, cid: str, user: str = "alice") -> int:
        return self.answer(self.events(cid, user, timeout=0)).json["last_seq"]
