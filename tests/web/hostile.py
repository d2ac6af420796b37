"""
Hostile HTTP input for a node, as raw bytes: attack generators by category.

An L{Attack} is the bytes to write on a fresh connection (in pieces, with a pause between
them for slow clients) and what must hold of the answer: the statuses allowed for the first
answer, the error codes allowed when it is a 4xx, whether the node must close the connection,
and by when. Every 4xx must be a JSON error C{{"error": {"code", "message"}}}; a 2xx or 3xx
is allowed only where the attack is a valid request and its C{why} says so. Smuggled requests
carry a C{marker} text that must never be stored; L{hostile_judge} checks all of that.

Each category is an endless generator: first its fixed cases, then seeded variants of them
over the node's routes, so that L{build} can make a few thousand attacks for a test or sixty
thousand for the bench with the same code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

VICTIM = "dm:alice:bob"
OTHER = "dm:bob:carol"
MARKER = "hpchat-smuggled-"
INJECTED = b"hpchat-injected"
# Seconds a node has beyond a timeout to act on it, to close a connection it must close, and
# to answer what it must answer before reading a body (the body is never sent).
SLACK = 3.0
CLOSE = 3.0
AT_ONCE = 4.0


@dataclass(frozen=True)
class Attack:
    """
    @ivar statuses: the statuses allowed for the first answer; C{None} allows any below 500.
    @ivar codes: the error codes allowed when that answer is a 4xx; C{None} allows any.
    @ivar closeWithin: the node must close the connection this many seconds after its last
        answer; C{None}: it may keep it open, and then a following request must be answered.
    @ivar silentClose: closing without any answer is acceptable (a request never finished).
    @ivar deadline: seconds from connecting by which the first answer (or the close) comes.
    @ivar probe: whether a good request is sent after the answer when the connection is open.
    @ivar marker: a message text this attack tries to store; it must never be stored.
    @ivar head: the request is a HEAD (its answer has no body).
    @ivar answers: how many requests the bytes hold (pipelined); all but the last must be
        answered 2xx, and C{statuses} is about the last.
    """

    category: str
    name: str
    pieces: tuple[bytes, ...]
    statuses: frozenset[int] | None
    codes: frozenset[str] | None = None
    why: str = ""
    closeWithin: float | None = None
    silentClose: bool = False
    deadline: float = 8.0
    pause: float = 0.0
    probe: bool = True
    marker: str | None = None
    head: bool = False
    answers: int = 1
    index: int = 0

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


@dataclass
class Context:
    """
    What attacks need to know of the node: its address, tokens, secret and limits.
    """

    host: bytes
    tokens: dict[str, str]
    secret: bytes
    max_head_bytes: int = 16384
    max_headers: int = 100
    max_target_bytes: int = 8192
    max_body_bytes: int = 65536
    max_internal_body_bytes: int = 4 * 1024 * 1024
    max_text_chars: int = 4000
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_poll_timeout: float = 60.0
    victimLastSeq: int = 0
    now: float = field(default_factory=time.time)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def marker(self) -> str:
        return f"{MARKER}{next(self.counter)}"

    def auth(self, user: str = "alice") -> tuple[bytes, bytes]:
        return (b"Authorization", b"Bearer " + self.tokens[user].encode())


# -- building requests


def request(method: bytes, target: bytes, headers=(), body: bytes | None = None,
            version: bytes = b"HTTP/1.1", length: bool = True, eol: bytes = b"\r\n") -> bytes:
    """
    A request as bytes; C{Content-Length} is added for C{body} unless C{length} is false.
    """
    lines = [method + b" " + target + b" " + version]
    lines += [name + b": " + value for name, value in headers]
    if body is not None and length:
        lines.append(b"Content-Length: %d" % len(body))
    return eol.join(lines) + eol + eol + (body or b"")


def jsonBody(value) -> bytes:
    return json.dumps(value).encode()


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def forge(secret: bytes, payload: bytes, header: bytes = b'{"alg":"HS256","typ":"JWT"}',
          sign: bool = True) -> str:
    """
    A JWT with exactly the C{payload} bytes given (which need not be strict JSON).
    """
    signing = b64(header) + b"." + b64(payload)
    signature = b64(hmac.new(secret, signing, hashlib.sha256).digest()) if sign else b""
    return (signing + b"." + signature).decode()


@dataclass(frozen=True)
class Route:
    """
    A valid request that changes nothing durable, and the status it is answered with.
    """

    name: str
    method: bytes
    target: bytes
    user: str | None
    body: bytes | None
    ok: int

    def headers(self, ctx: Context) -> list[tuple[bytes, bytes]]:
        headers = [(b"Host", ctx.host)]
        if self.user:
            headers.append(ctx.auth(self.user))
        if self.body is not None:
            headers.append((b"Content-Type", b"application/json"))
        return headers

    def build(self, ctx: Context, extra=(), body: bytes | None = None, **kwargs) -> bytes:
        return request(self.method, self.target, self.headers(ctx) + list(extra),
                       self.body if body is None else body, **kwargs)


ROUTES = (
    Route("healthz", b"GET", b"/healthz", None, None, 200),
    Route("cluster", b"GET", b"/v1/cluster", None, None, 200),
    Route("events", b"GET", b"/v1/conversations/dm:alice:bob/events?after=0&timeout=0",
          "alice", None, 200),
    Route("history", b"GET", b"/v1/conversations/dm:alice:bob/messages?limit=5", "bob",
          None, 200),
    Route("inbox", b"GET", b"/v1/inbox/events?after=0&timeout=0", "bob", None, 200),
    Route("typing", b"POST", b"/v1/conversations/dm:alice:bob/typing", "alice",
          b'{"typing": false}', 204),
)
HEALTHZ = ROUTES[0]
TYPING = ROUTES[5]


def sendRequest(ctx: Context, marker: str, cid: str = VICTIM, user: str = "alice",
                extra=()) -> bytes:
    """
    A valid send of C{marker}: what a smuggled request would do.
    """
    return request(b"POST", b"/v1/conversations/%s/messages" % cid.encode(),
                   [(b"Host", ctx.host), ctx.auth(user), (b"Content-Type", b"application/json")]
                   + list(extra), jsonBody({"text": marker}))


def reject(category: str, name: str, data, statuses=(400,), codes=None, **kwargs) -> Attack:
    pieces = (data,) if isinstance(data, bytes) else tuple(data)
    return Attack(category, name, pieces, frozenset(statuses),
                  frozenset(codes) if codes is not None else None, **kwargs)


def valid(category: str, name: str, data: bytes, statuses, why: str, **kwargs) -> Attack:
    return Attack(category, name, (data,), frozenset(statuses), why=why, **kwargs)


Template = Callable[[Context, random.Random, Route], Attack]


def endless(category: str, templates: list[Template], ctx: Context,
            rng: random.Random) -> Iterator[Attack]:
    """
    Each template once over its default route, then seeded variants over all routes.
    """
    for template in templates:
        yield template(ctx, rng, HEALTHZ)
    while True:
        template = rng.choice(templates)
        yield template(ctx, rng, rng.choice(ROUTES))


# -- all of them


def _fixed() -> dict[str, tuple[Callable, Callable, float]]:
    """
    Each category: its generator, its list of fixed cases (None: not a template list) and
    its share of a suite.
    """
    from tests.web import hostile_api as api
    from tests.web import hostile_framing as fr
    from tests.web import hostile_http as ht

    return {
        "framing": (fr.framing, fr._framing, 0.13),
        "smuggling": (fr.smuggling, fr._smuggling, 0.12),
        "splitting": (fr.splitting, fr._splitting, 0.06),
        "pipelining": (fr.pipelining, fr._pipelining, 0.03),
        "encoding": (ht.encoding, ht._encoding, 0.10),
        "methods": (ht.methods, ht._methods, 0.06),
        "limits": (ht.limits, ht._limits, 0.04),
        "slow": (ht.slow, None, 0.0),
        "auth": (api.auth, api._auth, 0.10),
        "ids": (api.ids, api._ids, 0.08),
        "json": (api.jsonBodies, api._json, 0.08),
        "query": (api.query, api._query, 0.06),
        "routes": (api.routes, api._routes, 0.04),
        "control": (api.control, api._control, 0.01),
        "fuzz": (api.fuzz, None, 0.09),
    }


def categories() -> dict[str, tuple[Callable, float]]:
    """
    Each category's generator and its share of a suite.
    """
    return {name: (generator, share) for name, (generator, _, share) in _fixed().items()}


def coreSize(ctx: Context, category: str) -> int:
    """
    How many fixed cases a category has (its generator yields them first).
    """
    generator, fixed, _ = _fixed()[category]
    if category == "slow":
        return len(list(generator(ctx, random.Random(0))))
    return 0 if fixed is None else len(fixed(ctx))


def build(ctx: Context, total: int, seed: int, only: set[str] | None = None,
          slowloris: int = 0) -> list[Attack]:
    """
    About C{total} attacks: every fixed case of each category, then seeded variants in
    proportion to the category's share; all of the slow ones, whatever C{total}, and
    C{slowloris} more trickled heads.
    """
    from tests.web.hostile_http import slowloris as trickles

    rng = random.Random(seed)
    chosen = {name: value for name, value in categories().items()
              if only is None or name in only}
    weights = sum(share for _, share in chosen.values()) or 1.0
    attacks: list[Attack] = []
    for name, (generator, share) in chosen.items():
        if name == "slow":
            attacks.extend(generator(ctx, rng))
            continue
        count = max(coreSize(ctx, name), int(total * share / weights))
        attacks.extend(itertools.islice(generator(ctx, random.Random(rng.random())), count))
    if only is None or "slow" in only:
        attacks.extend(trickles(ctx, slowloris))
    return [replace(attack, index=i) for i, attack in enumerate(attacks)]
