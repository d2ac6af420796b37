"""
A minimal HTTP/1.1 keep-alive client for the load generator, on asyncio protocols.

One L{Conn} carries one request at a time (no pipelining), like a browser connection. It
parses the status line, the headers and a body framed by Content-Length or by chunked
transfer coding (Twisted answers chunked when the handler writes asynchronously). There is no
thread per connection and no task per request: a request is a Future resolved from
C{data_received}, with its deadline as one timer handle.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit


class HTTPFailure(Exception):
    """
    A request that got no usable answer; C{kind} names the failure for the error counts.
    """

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body


_NO_BODY = (204, 304)


def noDelay(transport) -> None:
    """
    TCP_NODELAY on C{transport}'s socket: small requests go out at once.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class Conn(asyncio.Protocol):
    """
    One keep-alive connection. Use L{connect} to make one.
    """

    def __init__(self, loop, addr):
        self.loop = loop
        self.addr = addr
        self.transport = None
        self.closed = False
        self.busy = False
        self._buf = bytearray()
        self._waiter: asyncio.Future | None = None
        self._timer = None
        self._reset()

    def _reset(self):
        self._status = 0
        self._headers: dict[bytes, bytes] | None = None
        self._length = -1        # Content-Length, or -1 when chunked / unknown
        self._chunked = False
        self._chunks: list[bytes] = []
        self._close_after = False
        self._head_request = False

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        noDelay(transport)

    def data_received(self, data):
        self._buf += data
        if self._waiter is not None:
            try:
                self._parse()
            except HTTPFailure as e:
                self._fail(e)
        elif self._buf:
            # Bytes nobody asked for: the server is confused or this is a stale answer.
            self._fail(HTTPFailure("unsolicited_data"))

    def connection_lost(self, exc):
        self.closed = True
        if self._waiter is not None:
            self._fail(HTTPFailure("closed", "connection closed before the answer"))

    # -- requests

    def request(self, data: bytes, timeout: float) -> asyncio.Future:
        """
        Write the encoded request C{data}; the Future resolves with a L{Response} or fails
        with L{HTTPFailure} (the connection is then closed).
        """
        if self.closed:
            raise HTTPFailure("closed", "connection already closed")
        self._reset()
        self._head_request = data.startswith(b"HEAD ")
        waiter = self.loop.create_future()
        self._waiter = waiter
        self.busy = True
        self._timer = self.loop.call_later(timeout, self._timedOut)
        self.transport.write(data)
        return waiter

    def close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self._waiter is not None:
            self._fail(HTTPFailure("closed", "closed by client"))

    def abort(self):
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        if self._waiter is not None:
            self._fail(HTTPFailure("closed", "aborted by client"))

    def _timedOut(self):
        self._timer = None
        self._fail(HTTPFailure("timeout", "no answer in time"))

    def _fail(self, error: HTTPFailure):
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.busy = False
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _done(self, body: bytes):
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.busy = False
        response = Response(self._status, self._headers, body)
        if self._close_after:
            self.closed = True
            self.transport.close()
        elif self._buf:
            self._fail(HTTPFailure("unsolicited_data"))
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # -- parsing

    def _parse(self):
        buf = self._buf
        if self._headers is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise HTTPFailure("parse", "header block too large")
                return
            head = bytes(buf[:end])
            del buf[:end + 4]
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise HTTPFailure("parse", f"bad status line {lines[0][:80]!r}")
            try:
                self._status = int(parts[1])
            except ValueError:
                raise HTTPFailure("parse", "bad status code") from None
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise HTTPFailure("parse", "bad header line")
                headers[name.strip().lower()] = value.strip()
            self._headers = headers
            if headers.get(b"connection", b"").lower() == b"close" or parts[0] == b"HTTP/1.0":
                self._close_after = True
            if self._head_request or self._status in _NO_BODY or 100 <= self._status < 200:
                self._done(b"")
                return
            te = headers.get(b"transfer-encoding")
            if te is not None and te.lower().endswith(b"chunked"):
                self._chunked = True
            else:
                length = headers.get(b"content-length")
                if length is None:
                    raise HTTPFailure("parse", "no Content-Length and not chunked")
                try:
                    self._length = int(length)
                except ValueError:
                    raise HTTPFailure("parse", "bad Content-Length") from None
        if self._chunked:
            self._parseChunks()
        elif len(buf) >= self._length:
            body = bytes(buf[:self._length])
            del buf[:self._length]
            self._done(body)

    def _parseChunks(self):
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            sizeField = bytes(buf[:eol]).split(b";", 1)[0].strip()
            try:
                size = int(sizeField, 16)
            except ValueError:
                raise HTTPFailure("parse", "bad chunk size") from None
            if size == 0:
                # Trailers (none expected) end with an empty line.
                end = buf.find(b"\r\n", eol + 2)
                if end < 0:
                    return
                if end != eol + 2:
                    end = buf.find(b"\r\n\r\n", eol + 2)
                    if end < 0:
                        return
                    end += 2
                del buf[:end + 2]
                self._done(b"".join(self._chunks))
                return
            if len(buf) < eol + 2 + size + 2:
                return
            self._chunks.append(bytes(buf[eol + 2:eol + 2 + size]))
            del buf[:eol + 2 + size + 2]


async def connect(loop, addr: tuple[str, int], timeout: float = 10.0,
                  localHost: str | None = None) -> Conn:
    """
    A new L{Conn} to C{addr} = (host, port); raises L{HTTPFailure} C{connect} on failure.
    """
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: Conn(loop, addr), addr[0], addr[1],
                                   local_addr=(localHost, 0) if localHost else None),
            timeout)
    except asyncio.TimeoutError:
        raise HTTPFailure("connect_timeout") from None
    except OSError as e:
        raise HTTPFailure("connect", e.strerror or type(e).__name__) from None
    return conn


def encodeRequest(method: str, path: str, host: str, headers: bytes = b"",
                  body: bytes | None = None) -> bytes:
    """
    An HTTP/1.1 keep-alive request; C{headers} are extra pre-encoded lines ending in CRLF.
    """
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1") + headers
    if body is None:
        return head + b"\r\n"
    return head + b"Content-Type: application/json\r\nContent-Length: " \
        + str(len(body)).encode() + b"\r\n\r\n" + body


def parseURL(url: str) -> tuple[str, int]:
    """
    (host, port) of an http URL.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host:port URLs are supported (got {url!r})")
    return parts.hostname, parts.port or 80


class Pool:
    """
    Keep-alive connections per address for the senders: an idle one is reused, a new one is
    opened while fewer than C{limit} are open to that address, else the caller waits for one.
    """

    def __init__(self, loop, limit: int, connectTimeout: float, localHosts=None):
        self.loop = loop
        self.limit = limit
        self.connectTimeout = connectTimeout
        self.localHosts = localHosts or [None]
        self._next = 0
        self._idle: dict[tuple, list[Conn]] = {}
        self._open: dict[tuple, int] = {}
        self._waiters: dict[tuple, list[asyncio.Future]] = {}
        self.all: set[Conn] = set()

    def openCount(self) -> int:
        return sum(self._open.values())

    async def acquire(self, addr) -> Conn:
        idle = self._idle.get(addr)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self._forget(conn)
        if self._open.get(addr, 0) < self.limit:
            self._open[addr] = self._open.get(addr, 0) + 1
            host = self.localHosts[self._next % len(self.localHosts)]
            self._next += 1
            try:
                conn = await connect(self.loop, addr, self.connectTimeout, host)
            except BaseException:
                self._open[addr] -= 1
                self._wakeOne(addr)
                raise
            self.all.add(conn)
            return conn
        waiter = self.loop.create_future()
        self._waiters.setdefault(addr, []).append(waiter)
        conn = await waiter
        if conn is None:
            return await self.acquire(addr)
        return conn

    def release(self, conn: Conn) -> None:
        addr = conn.addr
        if conn.closed:
            self._forget(conn)
            self._wakeOne(addr)
            return
        waiters = self._waiters.get(addr)
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.setdefault(addr, []).append(conn)

    def _forget(self, conn: Conn) -> None:
        if conn in self.all:
            self.all.discard(conn)
            self._open[conn.addr] -= 1

    def _wakeOne(self, addr) -> None:
        waiters = self._waiters.get(addr)
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)  # the waiter opens a connection of its own
                return

    def closeAll(self) -> None:
        for conn in list(self.all):
            conn.close()
        self.all.clear()
        self._idle.clear()
        self._open.clear()
