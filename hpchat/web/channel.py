# -*- test-case-name: tests.web.test_channel -*-
"""
The HTTP/1.1 connection of a node, with a lane of its own for the hot routes.

A node answers thousands of small requests a second on the hot routes (long-polls, sends,
typing) and twisted.web's per-request machinery (a line callback per header, a Headers object,
a Request with its producer and finish notifications) cost more than the work itself. When a
whole request for a hot route is in one read, which is the common case, L{HotChannel} parses
it at once, runs the same L{HotRoutes} handler with a small L{HotRequest}, and writes the
answer in one call. Anything else (another route, a request split over reads, chunked bodies,
C{Expect}, HTTP/1.0, a header it does not parse plainly, a preflight) goes through
twisted.web's own parser exactly as before, on the same connection, so behaviour and errors
are twisted.web's wherever the lane does not apply.
"""

from __future__ import annotations

from io import BytesIO

from twisted.logger import Logger
from twisted.web import http

from hpchat import metrics

MAX_HEAD = 16384
# A hot request whose body is still arriving is waited for up to this size; beyond it
# twisted.web takes it (the API's bodies are at most 64 KiB, a batch between nodes 900 KiB).
MAX_PARTIAL = 128 * 1024
# Pipelined requests held back while the current one is answered, before reading pauses.
MAX_HELD = 0x4000
_RESPONSES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason
              in http.RESPONSES.items()}
_HEADER_NAMES: dict[bytes, bytes] = {}
_lastDate = [-1, b""]


def _date(now: float) -> bytes:
    """
    The Date header's value, formatted once per second.
    """
    second = int(now)
    if second != _lastDate[0]:
        _lastDate[:] = [second, http.datetimeToString(second)]
    return _lastDate[1]


def _canonical(name: bytes) -> bytes:
    found = _HEADER_NAMES.get(name)
    if found is None:
        found = _HEADER_NAMES[name] = b"-".join(p.capitalize() for p in name.split(b"-"))
    return found


class HotRequest:
    """
    The part of twisted.web's request that the hot route handlers use.
    """

    __slots__ = ("method", "uri", "path", "args", "content", "code", "hpchatRoute",
                 "finished", "_disconnected", "_headers", "responseHeaders")

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


INCOMPLETE = "incomplete"


def parseHead(data: bytes):
    """
    Parse the request at the start of C{data} if its head is whole and plain: C{(method,
    target, headers, body, rest)}, where C{body} is C{None} while not all of it has arrived
    (and it is at most L{MAX_PARTIAL}); L{INCOMPLETE} while the head has not; C{None} to leave
    it to twisted.web.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return INCOMPLETE if len(data) <= MAX_HEAD else None
    if end > MAX_HEAD:
        return None
    lines = data[:end].split(b"\r\n")
    first = lines[0].split(b" ")
    if len(first) != 3 or first[2] != b"HTTP/1.1" or first[1][:1] != b"/":
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name or b"\t" in name:
            return None
        name = name.lower()
        if name in headers:
            return None
        headers[name] = value.strip()
    if b"transfer-encoding" in headers or b"expect" in headers or b"upgrade" in headers:
        return None
    length = headers.get(b"content-length", b"0")
    if not length.isdigit() or len(length) > 9:
        return None
    start = end + 4
    stop = start + int(length)
    if len(data) < stop:
        if stop > MAX_PARTIAL:
            return None
        return first[0], first[1], headers, None, b""
    return first[0], first[1], headers, data[start:stop], data[stop:]


class HotChannel(http.HTTPChannel):
    """
    twisted.web's channel, with the hot routes answered in a lane of their own.

    The site gives C{hot} (the L{HotRoutes}) and C{cors} (a L{CORSPolicy} or C{None}).
    """

    log = Logger()
    _call = None
    _request: HotRequest | None = None
    _serving = False

    def connectionMade(self):
        super().connectionMade()
        self._held: list[bytes] = []
        self._heldSize = 0
        self._readingPaused = False
        # The start of a request that has not all arrived yet (clients often write the head
        # and the body separately).
        self._partial = b""

    def dataReceived(self, data):
        if self._request is not None:
            # Pipelined behind the request being answered.
            self._held.append(data)
            self._heldSize += len(data)
            if self._heldSize > MAX_HELD:
                # Again each time: twisted.web may resume reading when its writes drain.
                self._readingPaused = True
                self.transport.pauseProducing()
            return
        if self._partial:
            data, self._partial = self._partial + data, b""
        if not self._idle():
            return super().dataReceived(data)
        self.resetTimeout()
        self._serve(data)

    def _idle(self) -> bool:
        """
        Whether twisted.web's parser is between requests with nothing buffered.
        """
        return (not self.requests and self.line_mode and not self._buffer
                and not self._busyReceiving and self.persistent
                and self._HTTPChannel__first_line == 1 and not self._HTTPChannel__header)

    def _serve(self, data: bytes) -> None:
        """
        Answer the hot requests at the start of C{data}, as long as they are answered at
        once; hold the rest while one waits, and hand anything else to twisted.web.
        """
        site = self.site
        self._serving = True
        try:
            while data:
                parsed = parseHead(data)
                if parsed is INCOMPLETE:
                    self._partial = data
                    return
                request = found = None
                if parsed is not None:
                    method, target, headers, body, rest = parsed
                    path, _, query = target.partition(b"?")
                    request = HotRequest(method, target, path,
                                         http.parse_qs(query, 1) if query else {}, headers,
                                         body or b"")
                    if method != b"OPTIONS" and site.hot is not None:
                        found = site.hot.find(request)
                if found is None:
                    super().dataReceived(data)
                    return
                if body is None:
                    self._partial = data
                    return
                connection = headers.get(b"connection")
                if connection is not None and b"close" in connection.lower().replace(
                        b",", b" ").split():
                    self.persistent = False
                if site.cors is not None:
                    site.cors.apply(request)
                self._request = request
                call = site.hot.call(request, found)
                call.addCallback(self._answer, request).addErrback(self._answerFailed)
                if self._request is not None:
                    # Waiting (a long-poll, a send until durable).
                    self._call = call
                    if rest:
                        self._held.append(rest)
                        self._heldSize += len(rest)
                    return
                if not self.persistent:
                    return
                data = rest
        finally:
            self._serving = False

    def _answer(self, body: bytes | None, request: HotRequest) -> None:
        self._request = self._call = None
        if body is None or request._disconnected:
            return
        request.finished = True
        headers = request.responseHeaders
        parts = [_RESPONSES.get(request.code) or b"HTTP/1.1 %d Unknown\r\n" % request.code,
                 b"Date: %s\r\nContent-Length: %d\r\n" % (_date(self.site.reactor.seconds()),
                                                          len(body))]
        for name, value in headers.items():
            parts.append(b"%s: %s\r\n" % (_canonical(name), value))
        if not self.persistent:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        self._send(b"".join(parts))
        metrics.countRequest(request.hpchatRoute, request.code)
        if not self.persistent:
            self.transport.loseConnection()
            return
        self.resetTimeout()
        if not self._serving:
            self._resumeHeld()

    def _answerFailed(self, failure) -> None:
        # A bug in writing the answer: the client cannot get one, so it is disconnected.
        self.log.failure("writing an answer failed", failure)
        self._request = self._call = None
        self.transport.abortConnection()

    def _send(self, data: bytes) -> None:
        """
        Write C{data}, straight to the socket when nothing is queued before it.

        A transport's write only queues the data and asks the reactor to watch the socket;
        the send happens on the reactor's next turn, after two more epoll calls. An answer
        is small and the socket's buffer is nearly always free, so it goes out at once (as
        asyncio's transports do); whatever the socket does not take, or any error, is left to
        the transport's own write, which queues it in order and reports the error.
        """
        transport = self.transport
        sock = getattr(transport, "socket", None)
        if (sock is not None and transport.connected and not transport.disconnecting
                and not getattr(transport, "_tempDataBuffer", True)
                and not getattr(transport, "dataBuffer", True)):
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def _resumeHeld(self) -> None:
        held, self._held, self._heldSize = self._held, [], 0
        if self._readingPaused:
            self._readingPaused = False
            self.transport.resumeProducing()
        if held:
            self.dataReceived(b"".join(held))

    def connectionLost(self, reason):
        request, call = self._request, self._call
        self._request = self._call = None
        if request is not None:
            request._disconnected = True
        if call is not None:
            call.cancel()
        super().connectionLost(reason)
