# -*- test-case-name: tests.web.test_auth -*-
"""
Bearer tokens: HS256 JWTs with C{sub} (the user id) and C{exp}, made and checked with PyJWT.

Expiry is checked against the injected clock, and verified tokens are cached until they
expire, so a long-poll client re-polling with the same token costs one dict lookup.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import jwt

from hpchat.streamids import isUserId


def _finiteNumber(value: object) -> bool:
    """
    True for an int or float that is neither NaN nor infinite (PyJWT reads claims with
    Python's JSON decoder, which takes NaN and Infinity).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class Unauthorized(Exception):
    """
    The request carries no valid token; C{str()} says why, without echoing the token.
    """


class Authenticator:
    cacheSize = 100_000

    def __init__(self, secret: bytes, clock):
        self._secret = secret
        self._clock = clock
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def mint(self, user: str, ttl: float) -> str:
        if not isUserId(user):
            raise ValueError("user ids match ^[A-Za-z0-9_-]{1,64}$")
        now = int(self._clock.seconds())
        return jwt.encode({"sub": user, "iat": now, "exp": now + int(ttl)}, self._secret,
                          algorithm="HS256")

    def userFor(self, token: str | None) -> str:
        """
        The user id of a valid C{token}, or raise L{Unauthorized}.
        """
        if not token:
            raise Unauthorized("a bearer token is required")
        now = self._clock.seconds()
        cached = self._cache.get(token)
        if cached is not None:
            user, expires = cached
            if now < expires:
                return user
            del self._cache[token]
            raise Unauthorized("the token has expired")
        try:
            # Times are checked below against the injected clock, not PyJWT's wall clock.
            claims = jwt.decode(token, self._secret, algorithms=["HS256"],
                                options={"require": ["sub", "exp"], "verify_exp": False,
                                         "verify_iat": False, "verify_nbf": False})
        except jwt.InvalidTokenError as e:
            raise Unauthorized(f"invalid token: {e}") from None
        user, expires = claims["sub"], claims["exp"]
        if not isUserId(user):
            raise Unauthorized("invalid token: sub is not a valid user id")
        if not _finiteNumber(expires):
            raise Unauthorized("invalid token: exp must be a finite number")
        if now >= expires:
            raise Unauthorized("the token has expired")
        notBefore = claims.get("nbf")
        if notBefore is not None:
            if not _finiteNumber(notBefore):
                raise Unauthorized("invalid token: nbf must be a finite number")
            if now < notBefore:
                raise Unauthorized("the token is not valid yet")
        self._cache[token] = (user, float(expires))
        if len(self._cache) > self.cacheSize:
            self._cache.popitem(last=False)
        return user
