"""
Server-sent event streams for the load generator: an incremental C{text/event-stream} parser,
a streaming HTTP/1.1 connection on an asyncio protocol, and the per-user stream loops of the
two stream targets.

* C{hpchat-sse}: C{GET /v1/conversations/{cid}/stream} with the user's bearer token; events
  C{event: message}, C{id: <seq>}, C{data: <the message, as in a long-poll's events[]>};
  reconnects send C{Last-Event-ID} with the last id seen.
* C{centrifugo}: Centrifugo's unidirectional SSE, C{GET /connection/uni_sse?cf_connect=
  {"token": JWT}}, the token's C{channels} claim subscribing the connection to its
  conversation channel server-side; the first event is the C{connect} push, publications come
  as C{{"channel": ..., "pub": {"data": <the published JSON>}}}, pings as C{{}}.

A stream counts as established (C{Worker.outstanding}) once its answer's headers arrived
(hpchat) or its connect push did (Centrifugo), so the generator's settle phase and the
"waiting" figures count open streams for these targets.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

from lg_http import HTTPFailure, noDelay

perf = time.perf_counter

STREAM_TARGETS = ("hpchat-sse", "centrifugo")


class SSEParser:
    """
    The event-stream format (WHATWG HTML, "server-sent events"): lines ended by LF, CRLF or
    CR; C{field: value} lines; a blank line dispatches the event gathered so far. Comments
    (lines starting with C{:}) and unknown fields are ignored; C{data} lines are joined with
    LF; an event whose data is empty is not dispatched.
    """

    def __init__(self, onEvent: Callable[[str, str | None, str], None]):
        self.onEvent = onEvent
        self._buf = b""
        self._event = ""
        self._id: str | None = None
        self._data: list[str] = []
        self._skipLF = False
        self.lastEventId: str | None = None

    def feed(self, data: bytes) -> None:
        buf = self._buf + data
        start = 0
        n = len(buf)
        while start < n:
            if self._skipLF:
                self._skipLF = False
                if buf[start:start + 1] == b"\n":
                    start += 1
                    continue
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr >= 0 and (lf < 0 or cr < lf):
                end, nxt = cr, cr + 1
                if nxt < n:
                    if buf[nxt:nxt + 1] == b"\n":
                        nxt += 1
                else:
                    self._skipLF = True  # a CR at the end: drop an LF that may follow
            else:
                end, nxt = lf, lf + 1
            self._line(buf[start:end].decode("utf-8", "replace"))
            start = nxt
        self._buf = buf[start:]

    def _line(self, line: str) -> None:
        if not line:
            data = "\n".join(self._data)
            if data:
                self.onEvent(self._event or "message", self._id, data)
            self._event, self._data = "", []
            return
        if line[0] == ":":
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
            self.lastEventId = value


class StreamConn(asyncio.Protocol):
    """
    One HTTP/1.1 request whose answer is a stream: C{headers} resolves with C{(status,
    headers)} once they arrive, then the body (chunked, or up to the close) goes to
    C{onBody} as it comes; C{closed} resolves when the connection is gone.
    """

    def __init__(self, loop, onBody: Callable[[bytes], None]):
        self.loop = loop
        self.onBody = onBody
        self.transport = None
        self.headers: asyncio.Future = loop.create_future()
        self.closed: asyncio.Future = loop.create_future()
        self._buf = bytearray()
        self._inBody = False
        self._chunked = False
        self._chunkLeft = 0      # bytes left in the current chunk (+2 for its CRLF)
        self.status = 0

    def connection_made(self, transport):
        self.transport = transport
        noDelay(transport)

    def connection_lost(self, exc):
        if not self.headers.done():
            self.headers.set_exception(HTTPFailure("closed", "closed before the headers"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data):
        if self._inBody and not self._chunked:
            self.onBody(data)
            return
        self._buf += data
        try:
            if not self._inBody:
                self._head()
            if self._inBody and self._chunked:
                self._dechunk()
        except HTTPFailure as e:
            if not self.headers.done():
                self.headers.set_exception(e)
            self.close()

    def _head(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                raise HTTPFailure("parse", "header block too large")
            return
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[:end + 4]
        parts = lines[0].split(b" ", 2)
        try:
            self.status = int(parts[1])
        except (IndexError, ValueError):
            raise HTTPFailure("parse", "bad status line") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self._inBody = True
        self._chunked = headers.get(b"transfer-encoding", b"").lower().endswith(b"chunked")
        self.headers.set_result((self.status, headers))
        if not self._chunked and buf:
            rest = bytes(buf)
            buf.clear()
            self.onBody(rest)

    def _dechunk(self) -> None:
        buf = self._buf
        while buf:
            if self._chunkLeft > 0:
                take = min(self._chunkLeft - 2, len(buf))
                if take > 0:
                    self.onBody(bytes(buf[:take]))
                    del buf[:take]
                    self._chunkLeft -= take
                if self._chunkLeft <= 2:
                    if len(buf) < self._chunkLeft:
                        return
                    del buf[:self._chunkLeft]  # the chunk's CRLF
                    self._chunkLeft = 0
                continue
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            try:
                size = int(bytes(buf[:eol]).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPFailure("parse", "bad chunk size") from None
            del buf[:eol + 2]
            if size == 0:
                self.close()  # the stream ended
                return
            self._chunkLeft = size + 2


async def openStream(loop, addr, request: bytes, onBody, timeout: float,
                     localHost: str | None) -> tuple[StreamConn, int, dict]:
    """
    Connect to C{addr}, write C{request}, and wait for the answer's headers.
    """
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: StreamConn(loop, onBody), addr[0], addr[1],
                                   local_addr=(localHost, 0) if localHost else None),
            timeout)
    except asyncio.TimeoutError:
        raise HTTPFailure("connect_timeout") from None
    except OSError as e:
        raise HTTPFailure("connect", e.strerror or type(e).__name__) from None
    conn.transport.write(request)
    try:
        status, headers = await asyncio.wait_for(asyncio.shield(conn.headers), timeout)
    except asyncio.TimeoutError:
        conn.close()
        raise HTTPFailure("timeout", "no headers in time") from None
    except HTTPFailure:
        conn.close()
        raise
    return conn, status, headers


async def streamLoop(worker, user) -> None:
    """
    Keep one event stream open for C{user} until the run ends, reconnecting (with
    Last-Event-ID for hpchat) when it drops; hand every message to C{worker.delivered}.
    """
    centrifugo = worker.target == "centrifugo"
    state = {"established": False}

    def established() -> None:
        if not state["established"]:
            state["established"] = True
            worker.outstanding += 1

    def onEvent(event: str, eventId: str | None, data: str) -> None:
        now = perf()
        try:
            body = json.loads(data)
        except ValueError:
            worker.unmatched += 1
            return
        if centrifugo:
            if "connect" in body:
                established()
                return
            pub = body.get("pub")
            if pub is None:
                return  # a ping ({}) or another push
            worker.pollAnswers += 1
            worker.delivered(user, [pub.get("data") or {}], now, False)
        elif event == "message":
            worker.pollAnswers += 1
            worker.delivered(user, [body], now, False)

    backoff = 0.25
    first = True
    parser = SSEParser(onEvent)
    while worker.running:
        addr = user.entry
        if centrifugo:
            path = user.connect
            extra = b"Accept: text/event-stream\r\n"
        else:
            path = f"/v1/conversations/{user.cid}/stream"
            extra = user.auth + b"Accept: text/event-stream\r\n"
            if parser.lastEventId is not None:
                extra += f"Last-Event-ID: {parser.lastEventId}\r\n".encode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\n".encode("latin-1")
                   + extra + b"\r\n")
        if first:
            first = False
            worker.firstSent += 1
        try:
            conn, status, headers = await openStream(
                worker.loop, addr, request, parser.feed, worker.spec["connect_timeout"],
                worker.localHost())
        except HTTPFailure as e:
            if worker.running:
                worker.error("stream_" + e.kind)
                backoff = await worker.backOff(backoff)
            continue
        if status == 307 and not centrifugo:
            conn.close()
            if worker.followRedirect(user.cid, _Head(headers)):
                user.entry = worker.owner[user.cid]
            continue
        if status != 200:
            conn.close()
            worker.error(f"stream_http_{status}")
            backoff = await worker.backOff(backoff)
            continue
        backoff = 0.25
        if not centrifugo:
            established()
        worker.pollConns.add(conn)
        try:
            await conn.closed
        except asyncio.CancelledError:
            conn.close()
            raise
        finally:
            worker.pollConns.discard(conn)
            if state["established"]:
                state["established"] = False
                worker.outstanding -= 1
        # The parser keeps its last event id for the reconnect; a partial event is dropped.
        lastId = parser.lastEventId
        parser = SSEParser(onEvent)
        parser.lastEventId = lastId
        if worker.running:
            worker.error("stream_closed")


class _Head:
    """
    The headers of an answer, shaped like L{lg_http.Response} for C{followRedirect}.
    """

    def __init__(self, headers: dict):
        self.headers = headers
