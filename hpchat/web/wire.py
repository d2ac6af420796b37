# -*- test-case-name: tests.web.test_channel -*-
"""
The pieces of HTTP/1.1 that L{HTTPConnection} reads and writes: the checks of a request's
head and target, header values safe to send, status lines and dates, the small request the
hot routes are answered with, and one request's state on a connection.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from io import BytesIO
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet import tcp
from twisted.logger import Logger
from twisted.web import http

from hpchat import strictjson

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
                            b"content-length", b"transfer-encoding", b"expect",
                            b"last-event-id"])

_log = Logger()


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


# The lines of the answers' own headers, by their (name, value) pairs, for the few names
# whose values come from the code (nearly every answer has the same two, a JSON answer's).
_KNOWN_LINES: dict[tuple[tuple[bytes, bytes], ...], tuple[bytes, ...]] = {}
_CONSTANT_NAMES = frozenset([b"content-type", b"cache-control", b"retry-after",
                             b"www-authenticate"])


def headerLines(headers: Mapping[bytes, bytes]) -> Sequence[bytes]:
    """
    The lines of a hot answer's own C{headers}; a value that could end the field or the
    head is dropped and logged.
    """
    key = tuple(headers.items())
    known = _KNOWN_LINES.get(key)
    if known is not None:
        return known
    lines = tuple(_headerLines(headers))
    if len(_KNOWN_LINES) < 64 and _CONSTANT_NAMES.issuperset(headers):
        _KNOWN_LINES[key] = lines
    return lines


def _headerLines(headers: Mapping[bytes, bytes]) -> list[bytes]:
    lines = []
    for name, value in headers.items():
        if unsafeHeader(value):
            _log.warn("dropped an unsafe {name} header from an answer",
                      name=name.decode("latin-1"))
            continue
        lines.append(b"%s: %s\r\n" % (canonical(name), value))
    return lines


def errorJSON(code: str, message: str) -> bytes:
    return strictjson.dumpb({"error": {"code": code, "message": message}})


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


def checkHead(exchange: Exchange, headers: dict[bytes, bytes], target: bytes, version: str,
              hosts: int, limits: Any, goodHost: bytes | None
              ) -> tuple[int, str, str, str | None] | None:
    """
    Why the request whose head was just parsed (C{headers}, with C{hosts} Host fields, for
    C{target}) is refused under C{limits} (a L{LimitsConfig}): C{(status, code, message,
    limit name or None)}, or C{None}. It also sets the exchange's target, version and body
    limit. C{goodHost} is a Host already found valid on the connection.
    """
    method = exchange.method
    if version not in ("1.1", "1.0"):
        # HTTP/0.9 (no version at all) or 2.0 and above on this port: not a request here.
        return 400, "bad_request", "only HTTP/1.1 and 1.0 are served", None
    if version == "1.0":
        exchange.version = b"HTTP/1.0"
    if method not in METHODS:
        return 405, "method_not_allowed", "method not allowed", None
    if target[:1] != b"/":
        if not target.startswith((b"http://", b"https://")):
            return 400, "bad_request", "the request target must be an absolute path", None
        # The absolute form: its authority replaces Host (RFC 9112 3.2.2).
        try:
            parts = urlsplit(target)
        except ValueError:
            # e.g. an unclosed IPv6 literal: http://[::1/
            return 400, "bad_request", "the request target is not a valid URL", None
        headers[b"host"] = parts.netloc
        raw = [(n, v) for n, v in exchange.raw if n.lower() != b"host"]
        raw.append((b"Host", parts.netloc))
        exchange.raw = raw
        target = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
        hosts = 1
    if b"%" in target or TARGET.fullmatch(target) is None:
        why = checkTarget(target)
        if why is not None:
            return 400, "bad_request", why, None
    exchange.target = target
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        return 400, "bad_request", "an HTTP/1.1 request has exactly one Host", None
    host = headers.get(b"host")
    if host is not None and host != goodHost and not validHost(host):
        return 400, "bad_request", "the Host header is not a valid host", None
    expect = headers.get(b"expect")
    if expect is not None and (expect.lower() != b"100-continue" or version != "1.1"):
        return 417, "expectation_failed", "only Expect: 100-continue is served", None
    chunked = b"transfer-encoding" in headers
    length = headers.get(b"content-length")
    if not chunked and length is None:
        return None
    if chunked and (version == "1.0" or headers[b"transfer-encoding"].lower() != b"chunked"):
        return 400, "bad_request", "only Transfer-Encoding: chunked on HTTP/1.1", None
    limit = exchange.limit = (limits.max_internal_body_bytes if target.startswith(b"/internal/")
                              else limits.max_body_bytes)
    if length is not None and int(length) > limit:
        return 413, "too_large", f"request bodies are at most {limit} bytes", "body_bytes"
    if expect is not None:
        exchange.expectContinue = bool(chunked or int(length or 0))
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

    def __init__(self, method: bytes, uri: bytes, path: bytes, args: dict[bytes, list[bytes]],
                 headers: Mapping[bytes, bytes], body: bytes):
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
    error: tuple[int, str, str, dict[bytes, bytes]] | None = None


def sendNow(transport: Any, data: bytes) -> None:
    """
    Write C{data}: on a plain TCP connection with nothing queued, straight to the socket.

    A transport's write only queues the data and asks the reactor to watch the socket; the
    send happens on the reactor's next turn. An answer is small and the socket's buffer
    nearly always free, so it goes out at once (as asyncio's transports do), and whatever the
    socket does not take is left to the transport, in order. Only the reactor's own TCP
    connection qualifies (checked by its exact type, never through a wrapper such as TLS,
    which must encrypt it).
    """
    if (type(transport) is tcp.Server and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._tempDataBuffer
            and not transport.dataBuffer):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
