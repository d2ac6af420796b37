# -*- test-case-name: tests.web.test_channel -*-
"""
The HTTP/1.1 server protocol of a node: one strict parser (llhttp, through httptools) for
every connection, with the limits of the C{[limits]} section.

Every request is parsed, checked and bounded here before anything else sees it: a head larger
than C{max_head_bytes} or with more than C{max_headers} fields (431), a target longer than
C{max_target_bytes} (414), a body over C{max_body_bytes} (413, refused from its
Content-Length before it is read, or counted as its chunks arrive), a head or body that takes
too long (408), more connections than C{max_connections} (503). Anything malformed (llhttp
refuses CR, LF and NUL inside fields, obs-fold, bare LF, Content-Length with
Transfer-Encoding, duplicate lengths, bad chunk sizes; this module adds Host, target, version
and encoding checks) is a JSON C{400} and the connection is closed: a request that is not
plainly framed is never passed on.

The hot routes (L{HotRoutes}) are answered with the small L{HotRequest}, each answer in one
write. Every other request becomes a twisted.web C{server.Request} whose channel is this
protocol (as twisted.web's own HTTP/2 streams are), so the Klein app, static files and the
rest see the usual request objects. Requests pipelined on a connection are answered in order;
the idle timeout applies between requests only, never while one (a long-poll) is answered.
"""

from __future__ import annotations

from collections.abc import Iterable
from io import BytesIO
from typing import Any

import httptools
from twisted.internet import defer, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from hpchat import metrics
from hpchat.config import LimitsConfig
from hpchat.web.hot import HotLane, hotRequest
from hpchat.web.wire import (
    SINGLE_HEADERS,
    STATUS,
    Exchange,
    HotRequest,
    canonical,
    checkHead,
    checkTarget,
    errorJSON,
    httpDate,
    unsafeHeader,
)

__all__ = ["Exchange", "HTTPConnection", "HotRequest", "checkTarget"]

# Seconds the rest of a refused request is read and dropped before the connection closes.
LINGER = 2.0
# Complete requests parsed ahead of the one being answered before reading pauses.
MAX_QUEUED = 32
# What an answer of a twisted.web request may hold back before it is written.
MAX_HELD_ANSWER = 65536
# The header fields of a connection between requests: none (shared, never appended to; each
# request's head starts a list of its own).
_NO_FIELDS: list[tuple[bytes, bytes]] = []


class _Refused(Exception):
    """
    Raised inside a parser callback to stop parsing; the refusal is already queued.
    """


class HTTPConnection(HotLane, Protocol):
    """
    One HTTP/1.1 connection of L{HPChatSite}: the site gives C{hot} (the L{HotRoutes}),
    C{cors} (a L{CORSPolicy} or C{None}), C{limits} (a L{LimitsConfig}), C{reactor} and
    C{requestFactory} (for requests other than the hot routes).

    Its state is in slots: a node holds one per waiting long-poll, and an instance dict of
    this many fields is the largest part of one.
    """

    __slots__ = (
        "_activity", "_broken", "_call", "_closing", "_counted", "_current",
        "_currentExchange", "_deadline", "_deadlineActivity", "_deadlineKind", "_dispatching",
        "_goodHost", "_headSeen", "_headSize", "_inBody", "_inHead", "_limits", "_linger",
        "_out", "_outSize", "_parser", "_parsing", "_paused", "_producing", "_queue", "_raw",
        "_reactor", "_timer", "_url",
    )

    log = Logger()
    site: Any = None
    factory: Any = None
    requestFactory: Any = None
    transport: Any

    def __init__(self) -> None:
        self._closing = False
        self._linger: IDelayedCall | None = None
        self._broken = False
        self._paused = False
        self._dispatching = False
        self._inHead = False
        self._inBody = False
        self._timer: IDelayedCall | None = None
        self._deadlineKind: str | None = None
        self._deadline = 0.0
        self._counted = False
        self._producing = False
        self._goodHost: bytes | None = None
        self._current: Any = None
        self._call: defer.Deferred | None = None
        self._currentExchange: Exchange | None = None
        self._parsing: Exchange | None = None
        self._queue: list[Exchange] = []
        self._out: list[bytes] = []
        self._outSize = 0
        self._activity = 0
        self._deadlineActivity = -1
        self._headSeen = 0
        self._headSize = 0
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = _NO_FIELDS

    # -- connection

    def connectionMade(self) -> None:
        site = self.site
        self._limits: LimitsConfig = site.limits
        self._reactor: Any = site.reactor
        self._parser = httptools.HttpRequestParser(self)
        self._counted = True
        site.openConnections += 1
        if site.openConnections > self._limits.max_connections:
            metrics.countLimited("connections")
            self._writeError(503, "overloaded", "too many connections; retry",
                             {b"retry-after": b"1"})
            self._closeAfterError()
            return
        # Answers and events are written whole, each in one call: Nagle's algorithm would
        # only hold a stream's next event back until the client's delayed ACK of the last
        # one (up to 40 ms), as nginx's tcp_nodelay and Go's default avoid too.
        noDelay = getattr(self.transport, "setTcpNoDelay", None)
        if noDelay is not None:
            try:
                noDelay(True)
            except OSError:
                pass
        self._updateDeadline()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if self._counted:
            self._counted = False
            self.site.openConnections -= 1
        self._closing = True
        self._queue.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        current, call = self._current, self._call
        self._current = self._call = self._currentExchange = None
        self._parsing = None
        if isinstance(current, HotRequest):
            current._disconnected = True
            if call is not None:
                call.cancel()
        elif current is not None:
            current.connectionLost(reason or Failure(ConnectionDone()))

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.transport.loseConnection()

    def _closeAfterError(self) -> None:
        """
        Close after an error answer while the client may still be sending (a body refused
        from its length, a request cut short): closing with unread bytes makes the kernel
        answer them with a reset, which can destroy the answer before the client reads it.
        So the sending side is closed after the answer, and what still arrives is read and
        dropped for up to L{LINGER} seconds (plain TCP; TLS closes at once).
        """
        transport = self.transport
        if self._closing:
            return
        if type(transport) is not tcp.Server:
            self._close()
            return
        self._closing = True
        transport.loseWriteConnection()
        if self._paused:
            self._paused = False
            transport.resumeProducing()
        self._linger = self._reactor.callLater(LINGER, transport.abortConnection)

    # -- reading and parsing

    def dataReceived(self, data: bytes) -> None:
        if self._closing or self._broken:
            return
        continuing = self._inHead
        try:
            self._parser.feed_data(data)
        except _Refused:
            pass
        except httptools.HttpParserUpgrade:
            # The request asked to upgrade (or was a CONNECT): it is answered as a plain
            # request and nothing after it is read.
            self._stopReading()
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _Refused):
                raise
        except httptools.HttpParserInvalidMethodError:
            self._refuse(400, "bad_request", "unknown method (methods are case-sensitive)")
        except httptools.HttpParserError as e:
            self._refuse(400, "bad_request", f"malformed request: {e}")
        if self._inHead and not self._broken:
            if continuing:
                # A head spread over reads: what arrived counts until it is complete.
                self._headSeen += len(data)
            if self._headSeen > self._limits.max_head_bytes:
                self._refuse(431, "header_too_large", "the request head is too large",
                             limit="head_bytes")
            else:
                self._headRefused()
        self._advance()
        self._updateDeadline()

    def on_message_begin(self) -> None:
        self._parsing = Exchange()
        self._inHead = True
        self._headSeen = 0
        self._headSize = 0
        self._url = b""
        self._raw = []
        self._activity += 1

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_target_bytes:
            self._refuse(414, "uri_too_long", "the request target is too long",
                         limit="target_bytes")
            raise _Refused()

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called for every field: the limits are checked once the head is whole, or at the
        # end of each read while it is not (a read adds at most one read's worth).
        self._raw.append((name, value))
        self._headSize += len(name) + len(value) + 4

    def _headRefused(self) -> bool:
        """
        Refuse the head being parsed if it is over max_headers or max_head_bytes.
        """
        limits = self._limits
        if len(self._raw) > limits.max_headers:
            self._refuse(431, "header_too_large", "too many header fields", limit="headers")
            return True
        if self._headSize + len(self._url) > limits.max_head_bytes:
            self._refuse(431, "header_too_large", "the request head is too large",
                         limit="head_bytes")
            return True
        return False

    def on_headers_complete(self) -> None:
        if self._headRefused():
            raise _Refused()
        self._inHead = False
        exchange = self._parsing
        assert exchange is not None
        exchange.raw = self._raw
        # The head now lives in the exchange only: nothing of it stays with the connection
        # while the request (a long-poll) is answered.
        self._raw = _NO_FIELDS
        parser = self._parser
        exchange.method = parser.get_method()
        version = parser.get_http_version()
        headers: dict[bytes, bytes] = {}
        exchange.headers = headers
        hosts = 0
        repeated = None
        for name, value in exchange.raw:
            lower = name.lower()
            if lower == b"host":
                hosts += 1
            if lower in headers and lower in SINGLE_HEADERS:
                repeated = lower
            headers[lower] = value
        problem = checkHead(exchange, headers, self._url, version, hosts, self._limits,
                            self._goodHost)
        self._url = b""
        if problem is None and repeated is not None and repeated != b"host":
            problem = (400, "bad_request",
                       f"the {repeated.decode('ascii')} header may appear once", None)
        if problem is not None:
            status, code, message, limit = problem
            self._refuse(status, code, message, limit=limit)
            raise _Refused()
        # Clients send the same Host on every request of a connection: checked once.
        self._goodHost = headers.get(b"host")
        exchange.keepAlive = version == "1.1" and parser.should_keep_alive() and (
            b"upgrade" not in headers)
        self._queue.append(exchange)
        self._inBody = True

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        assert exchange is not None
        exchange.size += len(body)
        if exchange.size > exchange.limit:
            self._refuse(413, "too_large",
                         f"request bodies are at most {exchange.limit} bytes",
                         limit="body_bytes")
            raise _Refused()
        if exchange.body is None:
            exchange.body = [body]
        else:
            exchange.body.append(body)

    def on_message_complete(self) -> None:
        self._inBody = False
        exchange, self._parsing = self._parsing, None
        assert exchange is not None
        exchange.complete = True
        if not exchange.keepAlive:
            # Nothing after a request that ends the connection is read.
            self._stopReading()
            raise _Refused()

    # -- refusals and deadlines

    def _stopReading(self) -> None:
        self._broken = True
        if not self._closing and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _refuse(self, status: int, code: str, message: str,
                headers: dict[bytes, bytes] | None = None,
                limit: str | None = None) -> None:
        """
        Answer the request being parsed with an error, in order, and close the connection
        after it; nothing more is read.
        """
        if self._broken:
            return
        if limit is not None:
            metrics.countLimited(limit)
        exchange = self._parsing
        if exchange is None or exchange.complete:
            exchange = Exchange()
        if not self._queue or self._queue[-1] is not exchange:
            self._queue.append(exchange)
        exchange.error = (status, code, message, headers or {})
        self._parsing = None
        self._inHead = self._inBody = False
        self._stopReading()

    def _updateDeadline(self) -> None:
        """
        Arm the one deadline that applies now: a whole head, a whole body, or idleness
        between requests; none while a request is being answered.
        """
        if self._closing:
            return
        limits = self._limits
        if self._inHead:
            kind, timeout = "head", limits.head_timeout
        elif self._inBody:
            kind, timeout = "body", limits.body_timeout
        elif self._current is not None or self._queue or self._broken:
            kind, timeout = None, 0.0
        else:
            kind, timeout = "idle", limits.idle_timeout
        if kind == self._deadlineKind and self._deadlineActivity == self._activity:
            return
        self._deadlineKind = kind
        self._deadlineActivity = self._activity
        if kind is None:
            return
        now = self._reactor.seconds()
        self._deadline = now + timeout
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() <= self._deadline:
                return
            timer.cancel()
        self._timer = self._reactor.callLater(timeout, self._deadlinePassed)

    def _deadlinePassed(self) -> None:
        self._timer = None
        kind = self._deadlineKind
        if kind is None or self._closing:
            return
        left = self._deadline - self._reactor.seconds()
        if left > 0:
            self._timer = self._reactor.callLater(left, self._deadlinePassed)
            return
        self._deadlineKind = None
        if kind == "idle":
            self._close()
            return
        self._refuse(408, "request_timeout", f"the request {kind} took too long",
                     limit=f"{kind}_timeout")
        self._advance()

    # -- answering in order

    def _advance(self) -> None:
        """
        Start answering the requests at the front of the queue, one at a time.
        """
        if self._dispatching or self._closing:
            return
        self._dispatching = True
        try:
            queue = self._queue
            while self._current is None and queue and not self._closing:
                exchange = queue[0]
                if exchange.error is not None:
                    queue.clear()
                    self._writeError(*exchange.error)
                    self._closeAfterError()
                    return
                if not exchange.complete:
                    if exchange.expectContinue:
                        exchange.expectContinue = False
                        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    break
                del queue[0]
                self._start(exchange)
            if not self._broken:
                if len(queue) > MAX_QUEUED and not self._paused:
                    self._paused = True
                    self.transport.pauseProducing()
                elif self._paused and len(queue) <= MAX_QUEUED // 2:
                    self._paused = False
                    self.transport.resumeProducing()
        finally:
            self._dispatching = False

    def _start(self, exchange: Exchange) -> None:
        site = self.site
        request = hotRequest(exchange)
        found = None
        if site.hot is not None and exchange.method != b"OPTIONS":
            found = site.hot.find(request)
        self._currentExchange = exchange
        if found is None:
            self._startWeb(exchange, request.content.getvalue())
            return
        exchange.raw = ()
        if site.cors is not None:
            site.cors.apply(request)
        self._startHot(site.hot, request, found, exchange)

    def _startWeb(self, exchange: Exchange, body: bytes) -> None:
        request = self.requestFactory(self)
        self._current = request
        add = request.requestHeaders.addRawHeader
        for name, value in exchange.raw:
            add(name, value)
        exchange.raw = ()
        request.content = BytesIO(body)
        request.requestReceived(exchange.method, exchange.target, exchange.version)

    def _finished(self, exchange: Exchange) -> None:
        self._current = self._call = self._currentExchange = None
        if not exchange.keepAlive:
            self._close()
            return
        if not self._dispatching:
            # Else the read that is being handled goes on with the next request.
            self._advance()
            self._updateDeadline()

    def _writeError(self, status: int, code: str, message: str,
                    headers: dict[bytes, bytes] | None = None) -> None:
        body = errorJSON(code, message)
        parts = [STATUS.get(status) or b"HTTP/1.1 %d Error\r\n" % status,
                 b"Date: %s\r\nContent-Type: application/json; charset=utf-8\r\n"
                 b"Cache-Control: no-store\r\nContent-Length: %d\r\nConnection: close\r\n"
                 % (httpDate(self._reactor.seconds()), len(body))]
        for name, value in (headers or {}).items():
            parts.append(b"%s: %s\r\n" % (canonical(name), value))
        parts.append(b"\r\n")
        parts.append(body)
        self.transport.write(b"".join(parts))
        metrics.countRequest("refused", status)

    # -- the channel of twisted.web requests

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes,
                     headers: Headers) -> None:
        parts = [b"HTTP/1.1 %s %s\r\n" % (code, reason)]
        exchange = self._currentExchange
        for name, values in headers.getAllRawHeaders():
            if unsafeHeader(name):
                continue
            for value in values:
                if unsafeHeader(value):
                    self.log.warn("dropped an unsafe {name} header from an answer",  # noqa: G010
                                  name=name.decode("latin-1"))
                    continue
                parts.append(b"%s: %s\r\n" % (name, value))
        if exchange is not None and exchange.keepAlive and not (
                headers.hasHeader(b"content-length")
                or headers.hasHeader(b"transfer-encoding")) and int(code) not in (204, 304) \
                and exchange.method != b"HEAD":
            # Without a length the end of the body is the end of the connection.
            exchange.keepAlive = False
        if exchange is None or not exchange.keepAlive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        # Held with the body that follows, so that a small answer goes out in one write.
        self._out = [b"".join(parts)]
        self._outSize = len(self._out[0])

    def write(self, data: bytes) -> None:
        if self._closing or not data:
            return
        self._out.append(data)
        self._outSize += len(data)
        if self._producing or self._outSize >= MAX_HELD_ANSWER:
            # A producer (a file) writes its next part once the transport's buffer drained.
            self._flush()

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out = []
            self._outSize = 0
            if not self._closing:
                self.transport.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def requestDone(self, request: Any) -> None:
        self._flush()
        exchange = self._currentExchange
        if request is self._current and exchange is not None:
            self._finished(exchange)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._flush()
        self._producing = True
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._producing = False
        self.transport.unregisterProducer()

    def loseConnection(self) -> None:
        self._close()

    def getPeer(self) -> IAddress:
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        return self.transport.getHost()

    def isSecure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)
