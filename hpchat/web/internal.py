# -*- test-case-name: tests.web.test_internal -*-
"""
Calls between nodes: a node that consumed a notification for an inbox it does not own hands
it to the owner with C{POST /internal/v1/notifications}.

Such calls carry a short-lived HS256 token whose key is derived from the site secret, so that a
user's token can never pass for a node's and no second secret has to be distributed.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import jwt
import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool

AUDIENCE = "hpchat-internal"
TOKEN_TTL = 60


class InternalUnauthorized(Exception):
    pass


class DeliveryFailed(Exception):
    """
    The owner did not take the notification; the caller requeues it.
    """


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
        if not isinstance(expires, (int, float)) or expires <= now:
            raise InternalUnauthorized("the node token has expired")
        if len(self._verified) >= self.cacheSize:
            self._verified.clear()
        self._verified[value] = (str(claims["sub"]), float(expires))
        return str(claims["sub"])


class InternalClient:
    """
    Hands notifications to the node that owns their inbox.
    """

    maxRedirects = 2

    def __init__(self, auth: InternalAuth, nodeId: str, reactor, httpClient=None,
                 timeout: float = 5.0):
        self._auth = auth
        self._nodeId = nodeId
        self._pool = None
        if httpClient is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 16
            httpClient = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = httpClient
        self.timeout = timeout

    def close(self) -> defer.Deferred:
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections()

    async def deliver(self, url: str, notification) -> dict:
        """
        POST C{notification} to the node at C{url}, following its redirects; the owner's
        answer once the notification is durable in the inbox.
        """
        target = url.rstrip("/") + "/internal/v1/notifications"
        for _ in range(self.maxRedirects + 1):
            headers = {b"authorization": [b"Bearer " + self._auth.mint(self._nodeId).encode()],
                       b"content-type": [b"application/json"]}
            try:
                response = await self._http.post(target, data=notification.toJSON(),
                                                  headers=headers, timeout=self.timeout,
                                                  allow_redirects=False)
                body = await treq.content(response)
            except defer.CancelledError:
                raise
            except Exception as e:
                raise DeliveryFailed(f"{target}: {e.__class__.__name__}: {e}") from None
            if response.code in (200, 201):
                return json.loads(body)
            if response.code == 307:
                location = response.headers.getRawHeaders(b"location", [b""])[0].decode()
                if location:
                    target = location
                    continue
            raise DeliveryFailed(f"{target} answered {response.code}: {body[:200]!r}")
        raise DeliveryFailed(f"too many redirects delivering {notification.id}")
