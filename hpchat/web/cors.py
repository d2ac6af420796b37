# -*- test-case-name: tests.web.test_cors -*-
"""
CORS for the API, so that the site's pages on another origin can call the nodes.

A request from an allowed origin gets C{Access-Control-Allow-Origin} (and may read
C{Location}, C{X-HPChat-Owner} and C{Retry-After}); a preflight (OPTIONS with
C{Access-Control-Request-Method}) is answered here, before routing. Browsers drop the
Authorization header when they follow a redirect to another origin, which is why the API also
takes the token as C{access_token} in the query.
"""

from __future__ import annotations

import re

from twisted.web.resource import IResource
from zope.interface import implementer

ALLOWED_METHODS = b"GET, POST, PUT, DELETE, OPTIONS"
ALLOWED_HEADERS = b"Authorization, Content-Type, Last-Event-ID"
EXPOSED_HEADERS = b"Location, X-HPChat-Owner, Retry-After"
MAX_AGE = b"600"
# A serialized origin (RFC 6454): scheme "://" host [":" port], and nothing that could end a
# header field when it is echoed back.
_ORIGIN = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~%!$&'()*+,;=\[\]:-]+")


class CORSPolicy:
    """
    The allowed origins (C{"*"} allows any) and the headers an allowed request gets.
    """

    def __init__(self, origins):
        self._any = "*" in origins
        self._origins = {o.encode() for o in origins if o != "*"}

    def apply(self, request) -> bool:
        """
        Add the CORS answer headers to C{request} if its origin is allowed; say whether it is.
        """
        origin = request.getHeader(b"origin")
        # After a 307 to another node (another origin) browsers send the redirected request
        # with "Origin: null". The API takes bearer tokens only, never cookies, so answering
        # it discloses nothing that the token's holder could not read anyway.
        allowed = origin is not None and (origin in self._origins or origin == b"null" or (
            self._any and _ORIGIN.fullmatch(origin) is not None))
        if allowed:
            request.setHeader(b"access-control-allow-origin", origin)
            request.setHeader(b"vary", b"Origin")
            request.setHeader(b"access-control-expose-headers", EXPOSED_HEADERS)
        return allowed


@implementer(IResource)
class CORSResource:
    """
    Wraps the API's resource: answers preflights and adds the headers of C{policy}.
    """

    isLeaf = True

    def __init__(self, wrapped, policy: CORSPolicy):
        self._wrapped = wrapped
        self.policy = policy

    def getChildWithDefault(self, name, request):
        return self

    def putChild(self, path, child):
        raise NotImplementedError()

    def render(self, request):
        allowed = self.policy.apply(request)
        if request.method == b"OPTIONS" and request.getHeader(b"access-control-request-method"):
            request.setResponseCode(204 if allowed else 403)
            if allowed:
                request.setHeader(b"access-control-allow-methods", ALLOWED_METHODS)
                request.setHeader(b"access-control-allow-headers", ALLOWED_HEADERS)
                request.setHeader(b"access-control-max-age", MAX_AGE)
            request.hpchatRoute = "preflight"
            return b""
        return self._wrapped.render(request)
