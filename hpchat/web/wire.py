# -*- test-case-name: tests.web.test_channel -*-
"""
The pieces of HTTP/1.1 that L{HTTPConnection} reads and writes: the checks of a request
target, header values safe to send, status lines and dates, the small request the hot routes
are answered with, and one request's state on a connection.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from io import BytesIO
from types import MappingProxyType
from urllib.parse import unquote_to_bytes

from twisted.web import http

STATUS = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason
           in http.RESPONSES.items()}
_HEADER_NAMES: dict[bytes, bytes] = {}
_lastDate: tuple[int, bytes] = (-1, b"")
METHODS = frozenset([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
# An origin-form target: visible ASCII only (llhttp already refuses controls and spaces).
TARGET = re.compile(rb"/[!-~]*")
# The characters of a reg-name or IPv4 address (RFC 3986 3.2.2).
_REG_NAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]*")
# Headers that may appear once: a second one would leave it to chance which one counts.
SINGLE_HEADERS = frozenset([b"host", b"authorization", b"content-type", b"origin",
                            b"content-length", b"transfer-encoding", b"expect"])


def validHost(value: bytes) -> bool:
    """
    Whether C{value} is a Host header (RFC 9112 3.2, RFC 3986 3.2.2): an IP-literal in
    brackets or a reg-name whose labels IDNA accepts (as the router does with it), and an
    optional port of digits.
    """
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return False
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return False
        try:
            ipaddress.IPv6Address(text[1:end])
        except ValueError:
            return False
        rest = text[end + 1:]
    else:
        name, colon, port = text.partition(":")
        rest = colon + port
        if _REG_NAME.fullmatch(name) is None:
            return False
        try:
            name.encode("idna")
        except UnicodeError:
            return False
    if rest:
        port = rest[1:]
        if rest[0] != ":" or not (1 <= len(port) <= 5 and port.isdigit()):
            return False
    return True


def httpDate(now: float) -> bytes:
    """
    The Date header's value, formatted once per second.
    """
    global _lastDate
    second = int(now)
    if second != _lastDate[0]:
        _lastDate = (second, http.datetimeToString(second))
    return _lastDate[1]


def canonical(name: bytes) -> bytes:
    found = _HEADER_NAMES.get(name)
    if found is None:
        found = b"-".join(p.capitalize() for p in name.split(b"-"))
        if len(_HEADER_NAMES) < 256:
            _HEADER_NAMES[name] = found
    return found


def unsafeHeader(value: bytes) -> bool:
    """
    Whether C{value} may not go into an answer's header: it would end the field or the head.
    """
    return b"\r" in value or b"\n" in value or b"\0" in value


def errorJSON(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}},
                      separators=(",", ":")).encode("utf-8")


def checkTarget(target: bytes) -> str | None:
    """
    Why the origin-form C{target} is refused, or C{None}: visible ASCII only, and its
    percent-decoding must be UTF-8 without NUL.
    """
    if TARGET.fullmatch(target) is None:
        return "the request target must be an absolute path of visible ASCII"
    if b"%" in target:
        decoded = unquote_to_bytes(target)
        if b"\0" in decoded:
            return "the request target may not contain NUL"
        try:
            decoded.decode("utf-8")
        except UnicodeDecodeError:
            return "the request target is not valid percent-encoded UTF-8"
    return None


class HotRequest:
    """
    The part of twisted.web's request that the hot route handlers use.
    """

    __slots__ = (
        "_disconnected",
        "_headers",
        "args",
        "code",
        "content",
        "finished",
        "hpchatRoute",
        "method",
        "path",
        "responseHeaders",
        "uri",
    )

    def __init__(self, method: bytes, uri: bytes, path: bytes, args: dict,
                 headers: dict[bytes, bytes], body: bytes):
        self.method = method
        self.uri = uri
        self.path = path
        self.args = args
        self._headers = headers
        self.content = BytesIO(body)
        self.code = 200
        self.hpchatRoute = "unknown"
        self.finished = False
        self._disconnected = False
        self.responseHeaders: dict[bytes, bytes] = {}

    def getHeader(self, name: bytes) -> bytes | None:
        return self._headers.get(name.lower())

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders[name.lower()] = value

    def setResponseCode(self, code: int) -> None:
        self.code = code


class Exchange:
    """
    One request on a connection, from its parsed head to its answer. The class attributes
    are the defaults: most requests set only a few of them (and an exchange is made for
    every request).
    """

    method = b""
    target = b""
    version = b"HTTP/1.1"
    headers: Mapping[bytes, bytes] = MappingProxyType({})
    raw: Sequence[tuple[bytes, bytes]] = ()
    keepAlive = False
    limit = 0
    body: list[bytes] | None = None
    size = 0
    complete = False
    expectContinue = False
    # (status, code, message, extra headers) for a request refused here.
    error: tuple[int, str, str, dict] | None = None
