# -*- test-case-name: tests.web.test_channel -*-
"""
The hot lane of a connection: a request on one of the hot routes (L{HotRoutes}) is run by its
handler with the small L{HotRequest} and answered in one write, status line, headers and body
together, straight to the socket when the transport is the reactor's own TCP connection.

L{HotLane} is the half of L{hpchat.web.channel.HTTPConnection} that does this; the connection
(parsing, limits, order of answers) is the other half.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import parse_qs

from hpchat import metrics
from hpchat.web.ssehot import StreamedAnswer
from hpchat.web.wire import STATUS, Exchange, HotRequest, headerLines, httpDate, sendNow

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from hpchat.web.fast import HotRoutes

_NO_ARGS: dict[bytes, list[bytes]] = {}


def queryArgs(query: bytes) -> dict[bytes, list[bytes]]:
    """
    C{twisted.web.http.parse_qs(query, 1)}: a query with nothing quoted in it (the hot
    routes' C{timeout=25&after=7}) is split without unquoting each part. (parse_qs is
    imported by name: twisted.web.http is a deprecation proxy, whose every attribute read
    costs two Python calls.)
    """
    if b"%" in query or b"+" in query or b";" in query:
        return parse_qs(query, 1)
    args: dict[bytes, list[bytes]] = {}
    for item in query.split(b"&"):
        name, equals, value = item.partition(b"=")
        if not equals:
            continue
        values = args.get(name)
        if values is None:
            args[name] = [value]
        else:
            values.append(value)
    return args


def hotRequest(exchange: Exchange) -> HotRequest:
    """
    The L{HotRequest} of C{exchange}, whose body is handed over (and dropped from it).
    """
    body = b"".join(exchange.body) if exchange.body else b""
    exchange.body = None
    target = exchange.target
    path, _, query = target.partition(b"?")
    # Handlers only read the arguments: a request without any shares one empty dict.
    args = queryArgs(query) if query else _NO_ARGS
    return HotRequest(exchange.method, target, path, args, exchange.headers, body)


def encodeAnswer(request: HotRequest, body: bytes, keepAlive: bool, now: float) -> bytes:
    """
    The whole answer to C{request}: status line, Date, Content-Length, the handler's headers
    (a value that could end the field or the head is dropped and logged) and C{body}.
    """
    parts = [STATUS.get(request.code) or b"HTTP/1.1 %d Unknown\r\n" % request.code,
             b"Date: %s\r\nContent-Length: %d\r\n" % (httpDate(now), len(body))]
    parts += headerLines(request.responseHeaders)
    if not keepAlive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


class HotLane:
    """
    Runs and answers hot requests for the connection it is mixed into, which provides
    C{transport}, C{_reactor}, C{_closing}, C{_current}, C{_call} and C{_finished}.
    """

    log = Logger()

    transport: Any
    _reactor: IReactorTime
    _closing: bool
    _current: Any
    _currentExchange: Exchange | None
    _call: defer.Deferred | None

    def _finished(self, exchange: Exchange) -> None:
        raise NotImplementedError()

    def _startHot(self, hot: HotRoutes, request: HotRequest, found: tuple,
                  exchange: Exchange) -> None:
        """
        Run C{request}'s handler; its answer (or its error's JSON answer) is written once it
        fires. One callback pair per request: the errors of the handler and those of writing
        the answer are told apart here rather than by more links in the chain.
        """
        self._current = request
        call = hot.start(request, found)
        if self._current is request:
            self._call = call
        call.addCallbacks(self._answer, self._handlerFailed, callbackArgs=(request, exchange),
                          errbackArgs=(hot, request, exchange))

    def _handlerFailed(self, failure: Failure, hot: HotRoutes, request: HotRequest,
                       exchange: Exchange) -> None:
        try:
            body = hot.failed(failure, request)
        except BaseException:
            self._answerFailed(Failure())
            return
        self._answer(body, request, exchange)

    def _answer(self, body: bytes | None, request: HotRequest, exchange: Exchange) -> None:
        if self._current is request:
            self._call = None
        if isinstance(body, StreamedAnswer):
            # An event stream (hpchat.web.ssehot): it writes its own answer.
            try:
                self._stream(body, request, exchange)
            except BaseException:
                body.connectionLost(None)
                self._answerFailed(Failure())
            return
        if body is None or request._disconnected or self._closing:
            return
        try:
            request.finished = True
            sendNow(self.transport, encodeAnswer(request, body, exchange.keepAlive,
                                                 self._reactor.seconds()))
            metrics.countRequest(request.hpchatRoute, request.code)
            self._finished(exchange)
        except BaseException:
            self._answerFailed(Failure())

    # -- streamed answers (hpchat.web.ssehot.StreamedAnswer)

    def _stream(self, answer: StreamedAnswer, request: HotRequest, exchange: Exchange) -> None:
        """
        Make C{answer} the current request, which it stays until it calls L{streamEnded}.
        """
        if request._disconnected or self._closing or self._current is not request:
            answer.connectionLost(None)
            return
        request.finished = True
        # The request's head is not needed any more.
        exchange.headers = Exchange.headers
        self._current = answer
        answer.attach(self, request, exchange.keepAlive, exchange.version == b"HTTP/1.1")

    def streamEnded(self, answer: StreamedAnswer) -> None:
        """
        C{answer} wrote its last byte: on to the next request (or the end).
        """
        exchange = self._currentExchange
        if self._current is answer and exchange is not None:
            self._finished(exchange)

    def _answerFailed(self, failure: Failure) -> None:
        # A bug in writing the answer: the client cannot get one, so it is disconnected.
        self.log.failure("writing an answer failed", failure)
        self._current = self._call = None
        self._closing = True
        self.transport.abortConnection()
