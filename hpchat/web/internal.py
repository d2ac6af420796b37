# -*- test-case-name: tests.web.test_internal -*-
"""
Calls between nodes: a node that consumed a notification for an inbox it does not own hands
it to the owner with C{POST /internal/v1/notifications}.

Under load many notifications go to the same node at once; they travel in batches
(C{{"notifications": [...]}}, one result per notification), a new batch leaving as soon as
fewer than C{maxInFlight} are on their way, so a lone notification is never held back.

Such calls carry a short-lived HS256 token whose key is derived from the site secret, so that a
user's token can never pass for a node's and no second secret has to be distributed.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import deque
from typing import Any

import jwt
import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent

from hpchat import strictjson
from hpchat.httpclient import quietPool

AUDIENCE = "hpchat-internal"
TOKEN_TTL = 60


class InternalUnauthorized(Exception):
    pass


class DeliveryFailed(Exception):
    """
    The owner did not take the notification; the caller requeues it. C{status} is the
    owner's HTTP answer, if it gave one.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class InternalAuth:
    """
    Makes and checks node tokens. A node reuses its token for half its lifetime, and a
    verified token is remembered until it expires, so a busy pair of nodes signs and checks
    about one token a minute rather than one per call.
    """

    cacheSize = 1024

    def __init__(self, secret: bytes, clock):
        self._key = hmac.new(secret, b"hpchat internal calls", hashlib.sha256).digest()
        self._clock = clock
        self._minted: dict[str, tuple[str, float]] = {}
        self._verified: dict[bytes, tuple[str, float]] = {}

    def mint(self, nodeId: str) -> str:
        now = self._clock.seconds()
        minted = self._minted.get(nodeId)
        if minted is not None and now < minted[1]:
            return minted[0]
        expires = int(now) + TOKEN_TTL
        token = jwt.encode({"sub": nodeId, "aud": AUDIENCE, "exp": expires}, self._key,
                           algorithm="HS256")
        self._minted[nodeId] = (token, now + TOKEN_TTL / 2)
        return token

    def verify(self, authorization: bytes | None) -> str:
        """
        The calling node's id, or raise L{InternalUnauthorized}.
        """
        scheme, _, value = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not value:
            raise InternalUnauthorized("internal calls need a node token")
        now = self._clock.seconds()
        known = self._verified.get(value)
        if known is not None:
            if now < known[1]:
                return known[0]
            del self._verified[value]
            raise InternalUnauthorized("the node token has expired")
        try:
            claims = jwt.decode(value.decode("ascii", "replace"), self._key,
                                algorithms=["HS256"], audience=AUDIENCE,
                                options={"require": ["sub", "exp", "aud"], "verify_exp": False,
                                         "verify_iat": False, "verify_nbf": False})
        except jwt.InvalidTokenError as e:
            raise InternalUnauthorized(f"invalid node token: {e}") from None
        expires = claims["exp"]
        if (not isinstance(expires, (int, float)) or isinstance(expires, bool)
                or not math.isfinite(expires) or expires <= now):
            raise InternalUnauthorized("the node token has expired")
        if len(self._verified) >= self.cacheSize:
            self._verified.clear()
        self._verified[value] = (str(claims["sub"]), float(expires))
        return str(claims["sub"])


class InternalClient:
    """
    Hands notifications to the node that owns their inbox.
    """

    log = Logger()
    maxRedirects = 2
    maxBatch = 100
    maxInFlight = 2

    def __init__(self, auth: InternalAuth, nodeId: str, reactor, httpClient=None,
                 timeout: float = 5.0):
        self._auth = auth
        self._nodeId = nodeId
        self._pool = None
        if httpClient is None:
            self._pool = quietPool(reactor)
            self._pool.maxPersistentPerHost = 16
            httpClient = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = httpClient
        self.timeout = timeout
        self._queues: dict[str, deque] = {}
        self._inFlight: dict[str, int] = {}

    def close(self) -> defer.Deferred:
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections()

    def deliver(self, url: str, notification) -> defer.Deferred:
        """
        Hand C{notification} to the node at C{url} (following its redirects); fires with the
        owner's answer for it once it is durable in the inbox, or fails with
        L{DeliveryFailed}.
        """
        d: defer.Deferred = defer.Deferred()
        base = url.rstrip("/")
        self._queues.setdefault(base, deque()).append((notification, d))
        self._pump(base)
        return d

    def _pump(self, base: str) -> None:
        queue = self._queues.get(base)
        while queue and self._inFlight.get(base, 0) < self.maxInFlight:
            batch = [queue.popleft() for _ in range(min(self.maxBatch, len(queue)))]
            self._inFlight[base] = self._inFlight.get(base, 0) + 1
            sent = defer.ensureDeferred(self._sendBatch(base, batch))
            sent.addBoth(self._batchSent, base)
        if queue is not None and not queue and self._queues.get(base) is queue:
            del self._queues[base]

    def _batchSent(self, result, base: str) -> None:
        if isinstance(result, Failure):
            self.log.failure("sending notifications to {node} failed", result, node=base)
        self._inFlight[base] -= 1
        if not self._inFlight[base]:
            del self._inFlight[base]
        self._pump(base)

    async def _sendBatch(self, base: str, batch: list) -> None:
        target = base + "/internal/v1/notifications"
        if len(batch) == 1:
            notification, d = batch[0]
            await self._settle(d, self._deliverOne(target, notification))
            return
        body = strictjson.dumps(
            {"notifications": [strictjson.loads(n.toJSON()) for n, _ in batch]}).encode("utf-8")
        try:
            code, answer = await self._post(target, body)
        except DeliveryFailed as e:
            if e.status in (400, 413):
                # A node of an earlier release takes one notification per call.
                for notification, d in batch:
                    await self._settle(d, self._deliverOne(target, notification))
                return
            for _, d in batch:
                d.errback(DeliveryFailed(str(e)))
            return
        results = answer.get("results") if isinstance(answer, dict) else None
        if code != 200 or not isinstance(results, list) or len(results) != len(batch):
            for _, d in batch:
                d.errback(DeliveryFailed(f"{target} answered {code} to a batch"))
            return
        for (notification, d), result in zip(batch, results):
            status = result.get("status") if isinstance(result, dict) else None
            if status in (200, 201):
                d.callback({k: v for k, v in result.items() if k != "status"})
            elif status == 307 and result.get("location"):
                # Its inbox moved meanwhile: it goes on alone, after the new owner.
                defer.ensureDeferred(self._settle(
                    d, self._deliverOne(result["location"], notification)))
            else:
                d.errback(DeliveryFailed(f"{target} answered {status} for {notification.id}: "
                                         f"{str(result)[:200]}"))

    @staticmethod
    async def _settle(d: defer.Deferred, delivery) -> None:
        """
        Fire C{d} with the outcome of C{delivery} (a coroutine).
        """
        try:
            result = await delivery
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)

    async def _post(self, target: str, body: bytes):
        """
        POST C{body}: C{(status, its JSON answer)} for a 200 or 201, C{(307, location)} for a
        redirect; anything else fails with L{DeliveryFailed}.
        """
        headers = {b"authorization": [b"Bearer " + self._auth.mint(self._nodeId).encode()],
                   b"content-type": [b"application/json"]}
        try:
            response = await self._http.post(target, data=body, headers=headers,
                                              timeout=self.timeout, allow_redirects=False)
            raw = await treq.content(response)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise DeliveryFailed(f"{target}: {e.__class__.__name__}: {e}") from None
        if response.code in (200, 201):
            try:
                return response.code, strictjson.loads(raw)
            except ValueError:
                raise DeliveryFailed(f"{target} answered {response.code} with no JSON") from None
        if response.code == 307:
            location = response.headers.getRawHeaders(b"location", [b""])[0].decode()
            if location:
                return 307, location
        raise DeliveryFailed(f"{target} answered {response.code}: {raw[:200]!r}",
                             status=response.code)

    async def postJSON(self, url: str, path: str, body: Any) -> Any:
        """
        POST the JSON C{body} to C{path} of the node at C{url} (one try, no redirects);
        fires with its JSON answer (a 200 or 201), else fails with L{DeliveryFailed}.
        """
        code, answer = await self._post(url.rstrip("/") + path,
                                        strictjson.dumpb(body))
        if code == 307:
            raise DeliveryFailed(f"{url}{path} redirected to {answer}", status=307)
        return answer

    async def _deliverOne(self, target: str, notification) -> dict:
        for _ in range(self.maxRedirects + 1):
            code, answer = await self._post(target, notification.toJSON())
            if code != 307:
                return answer
            target = answer
        raise DeliveryFailed(f"too many redirects delivering {notification.id}")
