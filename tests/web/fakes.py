"""
The HTTP API test harness: it wires the real API, streams, persister, notifier and authenticator on
a L{twisted.internet.task.Clock} and drives them over HTTP through the node's production edge
(the L{HPChatSite} of L{buildSite}: its connections parse with httptools and answer the hot
routes themselves) with L{tests.web.edge.EdgeTreq}, StubTreq's interface.

Two clocks are involved: the harness' L{Clock} drives everything of hpchat (persister flushes,
poll timeouts, typing expiry, the connections' idle and head deadlines), while the client
pumps bytes between client and server over its own memory reactor. After advancing the
harness clock, call L{Harness.flush} (or use L{Harness.answer}) so that the client sees what
the server wrote.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, task
from twisted.web.http_headers import Headers

from hpchat import metrics
from hpchat.blocks import BlockList
from hpchat.config import ChatConfig, LimitsConfig
from hpchat.limits import UserLimits
from hpchat.notify import InProcessNotifier, messageNotification
from hpchat.persister import BatchPersister
from hpchat.presence import Presence
from hpchat.streams import Streams
from hpchat.web.api import ChatAPI
from hpchat.web.auth import Authenticator
from hpchat.web.channel import HTTPConnection
from hpchat.web.internal import InternalAuth
from hpchat.web.site import buildSite
from tests.fakes import (  # noqa: F401  (re-exported for the API tests)
    BASE,
    NOW,
    FakeOwnership,
    MemoryEventStore,
    fired,
)
from tests.web.edge import EdgeTreq

SECRET = b"hpchat-test-secret-of-32-bytes-or-more!"
FLUSH = 0.005
#: Limits no test of other behaviour reaches (tests send many messages at one instant).
GENEROUS = LimitsConfig(sends_per_second=1e6, sends_burst=1_000_000, typing_per_second=1e6,
                        typing_burst=1_000_000, max_polls_per_user=100_000)


class _FakeInternalClient:
    """
    The other nodes of the harness' cluster as far as presence lookups go: each answers from
    C{harness.remotePresence[url]} (user -> state), and C{calls} records every call.
    """

    def __init__(self, harness):
        self._harness = harness
        self.calls: list[tuple[str, str, Any]] = []

    async def postJSON(self, url: str, path: str, body: Any) -> Any:
        self.calls.append((url, path, body))
        known = self._harness.remotePresence.get(url)
        if known is None:
            raise ConnectionError(f"{url} is down")
        return {"presence": {u: known.get(u, {"online": False, "last_seen": None})
                             for u in body["users"]}}


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
    One node's API over fakes, on a Clock, behind its production HTTP edge, with a
    StubTreq-like client. C{limits} are the C{[limits]} the streams, API and edge get
    (L{GENEROUS} unless given).
    """

    def __init__(self, batchSize: int = 100, maxPending: int = 10000,
                 store: MemoryEventStore | None = None, ownership: FakeOwnership | None = None,
                 limits: LimitsConfig = GENEROUS, **chat):
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
                               typingTtl=self.chat.typing_ttl, idleEvict=self.chat.idle_evict,
                               maxStreams=limits.max_streams,
                               # As on a node without NSQ.
                               notificationOf=messageNotification)
        self.persister.subscribeLost(self.streams.dropGroups)
        self.ownership.subscribeLost(self.streams.dropGroups)
        self.blocks = BlockList(self.clock, self.store)
        self.notifier = InProcessNotifier(self.streams, blocks=self.blocks)
        self.streams.onCommitted.append(self.notifier.messageCommitted)
        self.auth = Authenticator(SECRET, self.clock)
        self.internalAuth = InternalAuth(SECRET, self.clock)
        self.limits = UserLimits.fromConfig(self.clock, limits)
        self.presenceReports: list[tuple[str, str, dict]] = []
        self.presence = Presence(self.clock, self.store, self.ownership, self.chat.groups,
                                 self._report, grace=self.chat.presence_grace)
        self.ownership.subscribeLost(self.presence.home.dropGroups)
        self.remotePresence: dict[str, dict] = {}
        self.internalClient = _FakeInternalClient(self)
        self.api = ChatAPI(self.streams, self.ownership, self.auth, self.store, self.chat,
                           self.persister, self.internalAuth, limits=self.limits,
                           blocks=self.blocks, presence=self.presence,
                           internalClient=self.internalClient)
        self.site = buildSite(self.api, self.clock, limits=limits)
        self.stub = EdgeTreq(self.site)
        self.persister.startService()
        self.streams.startService()
        self.presence.startService()
        self._tokens: dict[str, str] = {}

    # -- lifecycle

    def stop(self) -> None:
        """
        Stop the services, then check that nothing of hpchat is left on the clock and that
        no poll is still counted against its user.
        """
        if self.store.held:
            self.store.release()
        self.streams.stopService()
        self.presence.stopService()
        self.flush()
        if len(self.limits.polls):
            raise AssertionError(f"polls still counted: {self.limits.polls._counts!r}")
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

    def _report(self, url: str, node: str, reports: dict) -> defer.Deferred:
        self.presenceReports.append((url, node, dict(reports)))
        return defer.succeed(None)

    # -- time

    def flush(self) -> None:
        """
        Let the client move the bytes written so far between client and server.
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
        The delayed calls on the clock other than the services' LoopingCalls and the HTTP
        connections' deadlines (a deadline armed before a request came stays on the clock,
        inert, while the request is answered).
        """
        deadlines = self.deadlines()
        return [c for c in self.clock.getDelayedCalls()
                if not isinstance(c.func, task.LoopingCall) and c not in deadlines]

    def deadlines(self) -> list:
        """
        The deadlines (idle, head, body) of the HTTP connections on the clock.
        """
        return [c for c in self.clock.getDelayedCalls()
                if getattr(c.func, "__func__", None) is HTTPConnection._deadlinePassed]

    def waiters(self) -> int:
        return sum(len(s.waiters) + len(s.listeners) for s in self.streams._streams.values())

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


def requestsCounted(route: str, status: str) -> float:
    """
    The node's hpchat_http_requests_total{route, status} now, as /metrics would show it.
    """
    value = metrics.REGISTRY.get_sample_value("hpchat_http_requests_total",
                                              {"route": route, "status": status})
    return value or 0.0
