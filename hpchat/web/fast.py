# -*- test-case-name: tests.web.test_fast -*-
"""
The hot routes without Klein: long-polls, sends, typing, the inbox, and notifications handed
over by other nodes.

These make up nearly every request a node answers. Klein's per-request machinery (werkzeug
routing, and closures that leave every request in a reference cycle for the garbage collector
to find) cost more than the work itself, so this resource matches the few hot paths directly,
calls the same L{ChatAPI} handlers, and leaves every other path to Klein. Behaviour is the same:
errors become the same JSON answers, and a client that goes away cancels its handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from hpchat.web.api import ApiError

# A hot route's handler and the arguments it takes after the request.
Found = tuple[Callable[..., Any], tuple[str, ...]]


@implementer(IResource)
class HotRoutes:
    isLeaf = True

    def __init__(self, api: Any, fallback: Any) -> None:
        self._api = api
        self._fallback = fallback
        self._conversation: dict[tuple[bytes, bytes], Callable[..., Any]] = {
            (b"GET", b"events"): api.events,
            (b"POST", b"messages"): api.sendMessage,
            (b"POST", b"typing"): api.typing,
            (b"GET", b"messages"): api.history,
        }
        # Event streams (hpchat.web.ssehot): on the edge, a streamed answer; through a
        # twisted.web request (render), Klein's routes.
        streams = api.eventStreams
        self._conversation[(b"GET", b"stream")] = streams.hotConversation
        self._conversation[(b"HEAD", b"stream")] = streams.hotConversation
        self._streamed = {streams.hotConversation, streams.hotInbox}

    def getChildWithDefault(self, name: bytes, request: Any) -> HotRoutes:
        return self

    def putChild(self, path: bytes, child: Any) -> None:
        raise NotImplementedError()

    def find(self, request: Any) -> Found | None:
        """
        The handler and arguments for C{request} if it is on a hot route, else C{None}.
        """
        try:
            if b"%" in request.path:
                unquote(request.path.decode("latin-1"), errors="strict")
            return self._match(request)
        except UnicodeDecodeError:
            # Klein would answer this in plain text and log an error.
            return (self._badPath, ())

    def _match(self, request: Any) -> Found | None:
        path = request.path
        if path == b"/v1/inbox/events":
            return (self._api.inboxEvents, ()) if request.method == b"GET" else None
        if path == b"/v1/inbox/stream":
            return ((self._api.eventStreams.hotInbox, ())
                    if request.method in (b"GET", b"HEAD") else None)
        if path == b"/internal/v1/notifications":
            return (self._api.internalNotification, ()) if request.method == b"POST" else None
        if not path.startswith(b"/v1/conversations/"):
            return None
        parts = path[len(b"/v1/conversations/"):].split(b"/")
        if len(parts) != 2 or not parts[0]:
            return None
        handler = self._conversation.get((request.method, parts[1]))
        if handler is None:
            return None
        segment = parts[0].decode("latin-1")
        if "%" in segment:
            segment = unquote(segment, errors="strict")
        return handler, (segment,)

    @staticmethod
    def start(request: Any, found: Found) -> defer.Deferred:
        """
        Run the handler C{found} for C{request}; the result fires with the answer's body or
        fails with the handler's error (L{failed} makes that the answer's body).
        """
        handler, args = found
        try:
            result = handler(request, *args)
        except BaseException:
            return defer.fail()
        if isinstance(result, defer.Deferred):
            return result
        if hasattr(result, "__await__"):
            return defer.Deferred.fromCoroutine(result)
        return defer.succeed(result)

    def call(self, request: Any, found: Found) -> defer.Deferred:
        """
        L{start}, errors already turned into their JSON answers (or C{None} once the client
        is gone).
        """
        return self.start(request, found).addErrback(self.failed, request)

    def render(self, request: Any) -> Any:
        found = self.find(request)
        if found is None or found[0] in self._streamed:
            return self._fallback.render(request)
        d = self.call(request, found)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallback(self._answer, request)
        return NOT_DONE_YET

    @staticmethod
    async def _badPath(request: Any) -> bytes:
        raise ApiError(400, "bad_request", "the path is not valid percent-encoded UTF-8")

    @staticmethod
    def _answer(body: bytes | None, request: Any) -> None:
        if body is None or request.finished or request._disconnected:
            return
        request.setHeader(b"content-length", b"%d" % len(body))
        if body:
            request.write(body)
        request.finish()

    def failed(self, failure: Failure, request: Any) -> bytes | None:
        """
        The body of the JSON answer to C{failure} of C{request}'s handler, or C{None} once its
        client is gone.
        """
        if request.finished or request._disconnected:
            return None
        return self._api.errorBody(request, failure)
