# -*- test-case-name: tests.web.test_ssehot -*-
"""
Event streams on the hot path of the HTTP edge: a stream written straight to its connection,
with no twisted.web request, headers object or Klein behind it.

The hot routes (L{hpchat.web.fast.HotRoutes}) send C{GET} and C{HEAD} of
C{/v1/conversations/{cid}/stream} and C{/v1/inbox/stream} to
L{hpchat.web.sse.EventStreams.hotConversation} and C{hotInbox}, which check the request as
the Klein route does (the same JSON errors, 307 with the query kept, the limits) and fire
with a L{HotEventStream}: a L{StreamedAnswer}. The connection
(L{hpchat.web.channel.HTTPConnection}) then makes it its current request and calls
L{StreamedAnswer.attach}; the stream writes its own head and records, and calls the
connection's C{streamEnded} once its answer is complete. Until then the connection reads and
queues what follows but answers nothing else, and its idle timeout does not run.

An open stream holds its connection and transport, its cursor and versions, its user, stream
name and token, and the listener of its stream (L{hpchat.streams.waiters.Listener}): a few
hundred bytes besides the connection, and no Deferred or timer of its own.

Framing: an HTTP/1.1 request gets a chunked answer (one chunk per write): a stream that ends
writes the last chunk, so the client knows it got all of it, and the connection serves the
next request (such as the client's reconnection) unless the request asked to close it. An
HTTP/1.0 request gets an answer delimited by the end of the connection.

Writing: each change its listener is told of is one write of its framed records, sent to the
socket at once when the transport holds nothing (plain TCP; through the transport otherwise,
so TLS encrypts it and writes of one turn go out together). The stream is the transport's
streaming producer: the transport pauses it when its buffer is full, and a stream that writes
more than L{hpchat.web.sse.MAX_BACKLOG} bytes while paused is cut off.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from hpchat import metrics
from hpchat.streams import PollResult
from hpchat.web.sse import HEADERS, EventStream, EventStreams
from hpchat.web.wire import canonical, headerLines, httpDate, sendNow

_CHUNKED = 1
_CLOSE = 2
_FIELDS = b"".join(b"%s: %s\r\n" % (canonical(name), value) for name, value in HEADERS)
_HEAD_CHUNKED = _FIELDS + b"Transfer-Encoding: chunked\r\n\r\n"
_HEAD_CHUNKED_CLOSE = _FIELDS + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
_HEAD_CLOSE = _FIELDS + b"Connection: close\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class StreamedAnswer:
    """
    An answer that writes itself on the connection, for as long as it lasts: what a hot
    route handler fires with instead of a body.

    The connection calls L{attach} (making the answer its current request), or
    L{connectionLost} if the client is gone before that or while it lasts; the answer calls
    the connection's C{streamEnded(answer)} once it wrote its last byte.
    """

    __slots__ = ()

    def attach(self, connection: Any, request: Any, keepAlive: bool, chunked: bool) -> None:
        """
        Start answering C{request} (a L{hpchat.web.wire.HotRequest}) on C{connection}
        (whose C{transport} it writes to). C{keepAlive}: whether the connection serves
        another request after this one; C{chunked}: whether the client reads chunked
        answers (HTTP/1.1).
        """
        raise NotImplementedError()

    def connectionLost(self, reason: Any) -> None:
        raise NotImplementedError()


@implementer(IPushProducer)
class HotEventStream(EventStream, StreamedAnswer):
    """
    An event stream written to its connection (see the module's description).
    """

    __slots__ = ("_connection", "_transport", "_token", "_framing", "_first")

    def __init__(self, hub: EventStreams, user: str, name: str, conversation: bool,
                 cursor: int, token: str | None):
        super().__init__(hub, user, name, conversation, cursor)
        self._token = token
        self._connection: Any = None
        self._transport: Any = None
        self._framing = 0
        self._first: PollResult | None = None

    @classmethod
    def forRequest(cls, hub: EventStreams, request, user: str, name: str, conversation: bool,
                   cursor: int) -> HotEventStream:
        """
        The stream for C{request}, checked already, with the token it was authorized by.
        """
        return cls(hub, user, name, conversation, cursor, hub._api._token(request))

    @staticmethod
    def ready(opened: tuple[HotEventStream, PollResult]) -> HotEventStream:
        """
        The stream of C{opened} (the stream and its first poll), to be attached.
        """
        stream, first = opened
        stream._first = first
        return stream

    # -- StreamedAnswer

    def attach(self, connection: Any, request: Any, keepAlive: bool, chunked: bool) -> None:
        first, self._first = self._first, None
        self._connection = connection
        transport = self._transport = connection.transport
        parts = [b"HTTP/1.1 200 OK\r\nDate: %s\r\n" % httpDate(connection.site.reactor.seconds())]
        # (The CORS headers of the request's origin.)
        parts += headerLines(request.responseHeaders)
        if chunked:
            parts.append(_HEAD_CHUNKED if keepAlive else _HEAD_CHUNKED_CLOSE)
        else:
            parts.append(_HEAD_CLOSE)
        head = b"".join(parts)
        if request.method == b"HEAD" or first is None:
            # The head is the whole answer.
            sendNow(transport, head)
            self.close()
            return
        self._framing = _CHUNKED if chunked else _CLOSE
        self._hub.started(self)
        transport.registerProducer(self, True)
        if self.closed:
            # (The transport was gone already.)
            return
        sendNow(transport, head + self._frame(self._opening(first)))
        self._listen()

    def connectionLost(self, reason: Any) -> None:
        self.close(finish=False)

    # -- EventStream

    def _frame(self, data: bytes) -> bytes:
        if self._framing == _CHUNKED:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def _send(self, data: bytes) -> None:
        sendNow(self._transport, self._frame(data))

    def _authorized(self) -> bool:
        return self._hub.tokenUser(self._token) == self.user

    def _end(self, finish: bool, abort: bool) -> None:
        connection, transport, framing = self._connection, self._transport, self._framing
        self._connection = self._transport = None
        self._framing = 0
        if connection is None:
            # Never attached: the client went away first.
            return
        if framing:
            transport.unregisterProducer()
        metrics.countRequest("stream" if self._conversation else "inbox_stream", 200)
        if abort:
            transport.abortConnection()
            return
        if not finish:
            # The connection is gone.
            return
        if framing == _CHUNKED:
            sendNow(transport, _LAST_CHUNK)
        connection.streamEnded(self)
