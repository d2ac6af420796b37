# -*- test-case-name: tests.web.test_api -*-
"""
The HTTP API v1 (JSON over Klein): send, typing, long-poll events, history, inbox, cluster
view; the node's own pages are in L{hpchat.web.operations}.

Every request for a stream is checked in this order: token, stream id, membership, body, and
then ownership of the stream's group (307 to the owner, or 503 while unsettled). Errors are
always C{{"error": {"code", "message"}}} with the documented status; never a traceback.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from hpchat import metrics, strictjson
from hpchat.groups import Local, Redirect, resolveRoute
from hpchat.limits import UserLimits, retryAfter
from hpchat.notify import BadNotification, Dropped, deliverToInbox, notificationFrom
from hpchat.persister import Overloaded, PersisterStopped, StoreUnavailable
from hpchat.storage.base import Event, StoreError
from hpchat.streamids import BadConversation, inboxStream, parseConversation
from hpchat.streams import CursorAhead, StreamUnavailable
from hpchat.web.auth import Unauthorized
from hpchat.web.internal import InternalUnauthorized
from hpchat.web.operations import OPENAPI, PAGE, addOperationsRoutes, packaged
from hpchat.web.social import SocialRoutes, addSocialRoutes
from hpchat.web.sse import EventStreams, addStreamRoutes

MAX_BODY = 64 * 1024
MAX_NOTIFICATION_BATCH = 100
# A batch of notifications between nodes, each at most 8 KiB.
MAX_INTERNAL_BODY = MAX_NOTIFICATION_BATCH * 9 * 1024
DEFAULT_POLL_TIMEOUT = 25.0
DEFAULT_HISTORY = 50
MAX_HISTORY = 200
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_INTEGER = re.compile(r"-?\d{1,18}")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _badRequest(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def messageJSON(event: Event) -> dict[str, Any]:
    return {"id": event.id, "conversation": event.stream, "seq": event.seq,
            "sender": event.sender, "text": event.data.get("text", ""), "ts": event.ts,
            "client_id": event.client_id}


def inboxEventJSON(event: Event) -> dict[str, Any]:
    return {"seq": event.seq, "id": event.id, "type": event.type, "from": event.sender,
            "ts": event.ts, "data": dict(event.data)}


def _json(request, status: int, body: Any) -> bytes:
    return _encoded(request, status, strictjson.dumpb(body))


def _encoded(request, status: int, body: bytes) -> bytes:
    """
    C{body}, already JSON, as the answer to C{request} with C{status}.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return body


def _route(request, name: str) -> None:
    request.hpchatRoute = name


class ChatAPI:
    """
    The routes. State comes from the constructor: streams, ownership, auth, store, settings,
    and the per-user C{limits} (a L{UserLimits}; C{None}: none).
    """

    app = Klein()
    log = Logger()

    def __init__(self, streams, ownership, authenticator, store, chat, persister=None,
                 internalAuth=None, devLogin: bool = False, limits: UserLimits | None = None,
                 blocks=None, presence=None, internalClient=None,
                 maxBody: int = MAX_BODY, maxInternalBody: int = MAX_INTERNAL_BODY):
        # Request bodies: [limits] max_body_bytes and max_internal_body_bytes (the HTTP edge
        # refuses longer ones from their Content-Length before reading them).
        self.maxBody = maxBody
        self.maxInternalBody = maxInternalBody
        packaged(*PAGE)
        packaged(*OPENAPI)
        self._streams = streams
        self._limits = limits
        self._devLogin = devLogin
        self._internalAuth = internalAuth
        self._ownership = ownership
        self._auth = authenticator
        self._store = store
        self._persister = persister
        self._chat = chat
        self.draining = False
        # The last poll result answered and its JSON: the waiters a change answers with the
        # same cursor share one result (hpchat.streams.waiters), and so one encoding.
        self._lastPolled: tuple[Any, bytes] | None = None
        self._social = SocialRoutes(self, streams, store, ownership, blocks, presence,
                                    internalClient)
        # The open Server-Sent Events streams (hpchat.web.sse).
        self.eventStreams = EventStreams(self, streams, ownership, chat.stream_heartbeat)

    def resource(self):
        return self.app.resource()

    # -- errors

    @app.handle_errors(ApiError)
    def _apiError(self, request, failure):
        error = failure.value
        for name, value in error.headers.items():
            request.setHeader(name, value)
        return _json(request, error.status, {"error": {"code": error.code,
                                                       "message": error.message}})

    def errorBody(self, request, failure) -> bytes:
        """
        The JSON answer for C{failure}, as the Klein error handlers give it.
        """
        if failure.check(ApiError):
            return self._apiError(request, failure)
        return self._unexpected(request, failure)

    @app.handle_errors(NotFound)
    def _notFound(self, request, failure):
        return _json(request, 404, {"error": {"code": "not_found",
                                              "message": "no such resource"}})

    @app.handle_errors(RequestRedirect)
    def _slashRedirect(self, request, failure):
        # werkzeug would redirect /v1//cluster to /v1/cluster; this API has no such aliases.
        return self._notFound(request, failure)

    @app.handle_errors(MethodNotAllowed)
    def _methodNotAllowed(self, request, failure):
        allowed = failure.value.valid_methods or []
        if allowed:
            request.setHeader(b"allow", ", ".join(allowed).encode())
        return _json(request, 405, {"error": {"code": "method_not_allowed",
                                              "message": "method not allowed here"}})

    @app.handle_errors(Exception)
    def _unexpected(self, request, failure):
        self.log.failure("unexpected error answering {method} {path}", failure,
                         method=request.method.decode("latin-1"),
                         path=request.path.decode("latin-1"))
        return _json(request, 500, {"error": {"code": "internal",
                                              "message": "internal error"}})

    # -- request helpers

    def _user(self, request) -> str:
        try:
            return self._auth.userFor(self._token(request))
        except Unauthorized as e:
            raise ApiError(401, "unauthorized", str(e),
                           {b"www-authenticate": b'Bearer realm="hpchat"'}) from None

    @staticmethod
    def _token(request) -> str | None:
        """
        The bearer token of C{request}: its Authorization header, else C{?access_token=}.
        """
        header = request.getHeader(b"authorization")
        token = None
        if header:
            scheme, _, value = header.partition(b" ")
            if scheme.lower() != b"bearer" or not value.strip():
                raise ApiError(401, "unauthorized", "use Authorization: Bearer <token>",
                               {b"www-authenticate": b'Bearer realm="hpchat"'})
            token = value.strip().decode("utf-8", "replace")
        else:
            values = request.args.get(b"access_token")
            if values:
                token = values[0].decode("utf-8", "replace")
        return token

    def _conversation(self, cid: str, user: str) -> str:
        try:
            a, b = parseConversation(cid)
        except BadConversation as e:
            raise _badRequest(str(e), "bad_conversation") from None
        if user not in (a, b):
            raise ApiError(403, "forbidden", "only its two participants may use a conversation")
        return cid

    def _body(self, request, internal: bool = False) -> dict:
        limit = self.maxInternalBody if internal else self.maxBody
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, "too_large", f"request bodies are at most {limit} bytes")
        raw = request.content.read(limit + 1) if request.content is not None else b""
        if len(raw) > limit:
            raise ApiError(413, "too_large", f"request bodies are at most {limit} bytes")
        try:
            body = strictjson.loads(raw)
        except strictjson.NotUnicode as e:
            raise _badRequest(str(e)) from None
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise _badRequest("the body must be JSON (NaN and Infinity are not JSON)",
                              "bad_json") from None
        if not isinstance(body, dict):
            raise _badRequest("the body must be a JSON object")
        return body

    @staticmethod
    def _intArg(request, name: str, low: int | None = None) -> int | None:
        values = request.args.get(name.encode())
        if not values:
            return None
        text = values[0].decode("ascii", "replace")
        if not _INTEGER.fullmatch(text):
            raise _badRequest(f"{name} must be an integer")
        value = int(text)
        if low is not None and value < low:
            raise _badRequest(f"{name} must be at least {low}")
        return value

    def _timeout(self, request) -> float:
        values = request.args.get(b"timeout")
        if not values:
            return min(DEFAULT_POLL_TIMEOUT, self._chat.max_poll_timeout)
        try:
            timeout = float(values[0])
        except ValueError:
            raise _badRequest("timeout must be a number of seconds") from None
        if timeout != timeout:  # NaN
            raise _badRequest("timeout must be a number of seconds")
        return max(0.0, min(timeout, self._chat.max_poll_timeout))

    def _serveHere(self, request, stream: str) -> defer.Deferred | None:
        """
        C{None} if this node serves C{stream} now; a Deferred while its owner is being
        settled; otherwise raise the 307 or 503 answer (the Deferred fails with it).

        The hot handlers are chains of Deferreds rather than coroutines: most requests are
        answered from memory, and a coroutine per step costs more than the work.
        """
        if self.draining:
            raise ApiError(503, "unavailable", "this node is shutting down",
                           {b"retry-after": b"1"})
        group = self._streams.groupOf(stream)
        route = self._ownership.route(group)
        if isinstance(route, Local):
            # The common case, answered without waiting on anything.
            return None
        if isinstance(route, defer.Deferred):
            settled = resolveRoute(self._ownership, group, route)
            return settled.addCallbacks(lambda route: self._notHere(request, group, route),
                                        self._unsettled, errbackArgs=(group,))
        self._notHere(request, group, route)
        return None

    def _unsettled(self, failure, group: int):
        if failure.check(defer.CancelledError):
            return failure
        error = failure.value
        self.log.warn("cannot settle the owner of group {group}: {error}", group=group,
                      error=str(error) or type(error).__name__)
        raise ApiError(503, "unavailable", f"the owner of group {group} is not settled yet",
                       {b"retry-after": b"1"})

    def _notHere(self, request, group: int, route) -> None:
        """
        Raise the answer for a request whose group is routed elsewhere (or nowhere yet).
        """
        if isinstance(route, Local):
            return
        if isinstance(route, Redirect) and route.node != self._ownership.nodeId():
            metrics.redirects.inc()
            location = route.url + request.uri.decode("latin-1")
            raise ApiError(307, "moved", f"group {group} is served by node {route.node}",
                           {b"location": location.encode("utf-8"),
                            b"x-hpchat-owner": route.node.encode("utf-8")})
        retry = getattr(route, "retryAfter", 1.0)
        raise ApiError(503, "unavailable", f"the owner of group {group} is not settled yet",
                       {b"retry-after": str(max(1, int(round(retry)))).encode()})

    def _onStream(self, request, stream: str, call,
                  answer: Callable[[Any, Any], Any] | None = None) -> defer.Deferred:
        """
        Run C{call()} (which returns a Deferred) against C{stream} on this node, mapping
        stream errors to answers, and its result to C{answer(result, request)} when given
        (one callback pair instead of two, for what a waiting poll holds). A group lost
        meanwhile is routed again, so the client is redirected to the new owner.
        """
        here = self._serveHere(request, stream)
        if here is None:
            result = defer.maybeDeferred(call)
        else:
            result = here.addCallback(lambda _: call())
        if answer is None:
            return result.addErrback(self._streamFailed, request, stream)
        return result.addCallbacks(answer, self._streamFailed, callbackArgs=(request,),
                                   errbackArgs=(request, stream))

    def _streamFailed(self, failure, request, stream: str):
        error = failure.value
        if isinstance(error, StreamUnavailable):
            def moved(_):
                raise ApiError(503, "unavailable", "the stream moved; retry",
                               {b"retry-after": b"1"})
            here = self._serveHere(request, stream)
            return moved(None) if here is None else here.addCallback(moved)
        if isinstance(error, CursorAhead):
            raise ApiError(409, "cursor_ahead", f"after is beyond the last seq ({error.lastSeq})")
        if isinstance(error, Overloaded):
            raise ApiError(503, "overloaded", f"too many pending writes: {error}",
                           {b"retry-after": b"1"})
        if isinstance(error, PersisterStopped):
            raise ApiError(503, "unavailable", "this node is shutting down",
                           {b"retry-after": b"1"})
        if isinstance(error, StoreError):
            if not isinstance(error, StoreUnavailable):
                # (While the store is away the persister logs why, once per retry.)
                self.log.warn("store error on {stream}: {error}", stream=stream, error=str(error))
            raise ApiError(503, "unavailable", "storage is unavailable; retry",
                           {b"retry-after": b"1"})
        return failure

    # -- conversations

    @app.route("/v1/conversations/<cid>/messages", methods=["POST"])
    def sendMessage(self, request, cid):
        _route(request, "send")
        user = self._user(request)
        cid = self._conversation(cid, user)
        body = self._body(request)
        text, clientId = body.get("text"), body.get("client_id")
        if not isinstance(text, str) or not text.strip():
            raise _badRequest("text must be a non-empty string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _badRequest("text must be valid Unicode (no lone surrogates)") from None
        if len(text) > self._chat.max_text_chars:
            raise _badRequest(f"text is longer than {self._chat.max_text_chars} characters")
        if clientId is not None and (not isinstance(clientId, str)
                                     or not _CLIENT_ID.fullmatch(clientId)):
            raise _badRequest("client_id must match [A-Za-z0-9_-]{1,64}")
        return self._onStream(request, cid, lambda: self._send(cid, user, text, clientId),
                              self._sent)

    def _send(self, cid: str, user: str, text: str, clientId: str | None) -> defer.Deferred:
        # Charged once this node serves the stream (a redirected request is charged by the
        # owner), before anything is written. A repeated client_id is charged like any send:
        # refused, it stores nothing and its retry within the budget gets the original (200).
        if self._limits is not None:
            self._charge(self._limits.sends.take(user), "sends", "messages")
        return self._social.unlessBlocked(
            cid, "send", lambda: self._streams.send(cid, user, text, clientId))

    @staticmethod
    def _charge(wait: float, limit: str, what: str) -> None:
        """
        Raise the 429 answer when a rate limit asked to C{wait} seconds.
        """
        if wait:
            metrics.countLimited(limit)
            header = retryAfter(wait)
            raise ApiError(429, "rate_limited",
                           f"too many {what}; retry in {header.decode()} s",
                           {b"retry-after": header})

    @staticmethod
    def _sent(result, request) -> bytes:
        event, created = result
        return _json(request, 201 if created else 200, {"message": messageJSON(event)})

    @app.route("/v1/conversations/<cid>/typing", methods=["POST"])
    def typing(self, request, cid):
        _route(request, "typing")
        user = self._user(request)
        cid = self._conversation(cid, user)
        body = self._body(request)
        typing = body.get("typing")
        if not isinstance(typing, bool):
            raise _badRequest("typing must be true or false")
        return self._onStream(request, cid, lambda: self._setTyping(cid, user, typing),
                              self._noContent)

    def _setTyping(self, cid: str, user: str, typing: bool) -> defer.Deferred:
        if self._limits is not None:
            self._charge(self._limits.typing.take(user), "typing", "typing marks")
        return self._social.unlessBlocked(
            cid, "typing", lambda: self._streams.setTyping(cid, user, typing))

    @staticmethod
    def _noContent(_, request) -> bytes:
        request.setResponseCode(204)
        return b""

    @app.route("/v1/conversations/<cid>/events", methods=["GET"])
    def events(self, request, cid):
        _route(request, "events")
        user = self._user(request)
        cid = self._conversation(cid, user)
        after = self._intArg(request, "after", low=0)
        typingVersion = self._intArg(request, "typing_version", low=0)
        readVersion = self._intArg(request, "read_version", low=0)
        timeout = self._timeout(request)
        return self._onStream(
            request, cid, lambda: self._poll(user, cid, after, typingVersion, timeout,
                                             readVersion), self._polled)

    def _poll(self, user: str, stream: str, after: int | None, typingVersion: int | None,
              timeout: float, readVersion: int | None = None) -> defer.Deferred:
        """
        C{Streams.poll}, while which C{user} counts as online (L{hpchat.presence}) and, from
        when it is not answered at once until it is answered, times out, fails or is
        cancelled by a disconnect, among C{user}'s polls on this node (conversations and
        inbox together). A poll answered at once is never refused; one that would wait beyond
        C{max_polls_per_user} is withdrawn (nothing is left waiting) and answered 429.
        """
        presence = self._social.presence
        tracker = None if presence is None else presence.tracker
        polls = None if self._limits is None else self._limits.polls
        if tracker is not None:
            tracker.started(user)
        # Counted first and released when answered: one answered at once is counted back
        # before the check, so only a poll left waiting can be over the cap.
        if polls is not None:
            polls.add(user)
        try:
            polled = self._streams.poll(stream, after, typingVersion, timeout, readVersion)
        except BaseException:
            self._pollEnded(None, polls, tracker, user)
            raise
        if polls is None and tracker is None:
            return polled
        # (One callback for both: each one a waiting poll holds is more for the collector.)
        polled.addBoth(self._pollEnded, polls, tracker, user)
        if polls is not None and polls.exceeded(user):
            polled.addErrback(self._withdrawn)
            polled.cancel()
            metrics.countLimited("polls_per_user")
            raise ApiError(429, "rate_limited",
                           f"at most {polls.maximum} long-polls may wait at once per user",
                           {b"retry-after": b"1"})
        return polled

    @staticmethod
    def _pollEnded(result, polls, tracker, user: str):
        if polls is not None:
            polls.release(user)
        if tracker is not None:
            tracker.ended(user)
        return result

    @staticmethod
    def _withdrawn(failure) -> None:
        failure.trap(defer.CancelledError)

    def _polled(self, result, request) -> bytes:
        last = self._lastPolled
        if last is not None and last[0] is result:
            return _encoded(request, 200, last[1])
        body = strictjson.dumpb({"events": [messageJSON(e) for e in result.events],
                                 "last_seq": result.last_seq, "typing": result.typing,
                                 "typing_version": result.typing_version,
                                 "read": result.read, "read_version": result.read_version})
        self._lastPolled = (result, body)
        return _encoded(request, 200, body)

    @app.route("/v1/conversations/<cid>/messages", methods=["GET"])
    def history(self, request, cid):
        _route(request, "history")
        user = self._user(request)
        cid = self._conversation(cid, user)
        before = self._intArg(request, "before", low=1)
        limit = self._intArg(request, "limit", low=1)
        limit = DEFAULT_HISTORY if limit is None else min(limit, MAX_HISTORY)
        return self._onStream(request, cid, lambda: self._streams.history(cid, before, limit),
                              self._history)

    @staticmethod
    def _history(result, request) -> bytes:
        events, hasMore = result
        return _json(request, 200, {"messages": [messageJSON(e) for e in events],
                                    "has_more": hasMore})

    # -- inbox

    @app.route("/v1/inbox/events", methods=["GET"])
    def inboxEvents(self, request):
        _route(request, "inbox")
        user = self._user(request)
        stream = inboxStream(user)
        after = self._intArg(request, "after", low=0)
        timeout = self._timeout(request)
        return self._onStream(request, stream,
                              lambda: self._poll(user, stream, after, None, timeout),
                              self._inboxPolled)

    @staticmethod
    def _inboxPolled(result, request) -> bytes:
        return _json(request, 200, {"events": [inboxEventJSON(e) for e in result.events],
                                    "last_seq": result.last_seq})

    # -- the chat page

    # -- between nodes

    @app.route("/internal/v1/notifications", methods=["POST"])
    def internalNotification(self, request):
        """
        Another node hands over a notification for an inbox this node owns, or a batch of
        them (C{{"notifications": [...]}}); answered once they are durable. A batch is
        answered 200 with one result per notification, each with its own C{status} (and
        C{location} when its inbox is served elsewhere).
        """
        _route(request, "internal_notification")
        if self._internalAuth is None:
            raise ApiError(404, "not_found", "no such resource")
        try:
            self._internalAuth.verify(request.getHeader(b"authorization"))
        except InternalUnauthorized as e:
            raise ApiError(401, "unauthorized", str(e)) from None
        raw = self._body(request, internal=True)
        batch = raw.get("notifications")
        if batch is None:
            return self._deliverNotification(request, raw).addCallback(self._delivered, request)
        if not isinstance(batch, list) or not 1 <= len(batch) <= MAX_NOTIFICATION_BATCH:
            raise _badRequest(f"notifications must be a list of 1 to {MAX_NOTIFICATION_BATCH}")
        results = [self._deliverNotification(request, item).addCallbacks(
            self._batchResult, self._batchError, errbackArgs=(request,)) for item in batch]
        return defer.gatherResults(results, consumeErrors=True).addCallback(
            lambda results: _json(request, 200, {"results": results}))

    def _deliverNotification(self, request, raw) -> defer.Deferred:
        try:
            notification = notificationFrom(raw)
        except BadNotification as e:
            return defer.fail(_badRequest(str(e)))
        stream = inboxStream(notification.user)
        try:
            return self._onStream(request, stream,
                                  lambda: deliverToInbox(self._streams, notification,
                                                         self._social.blocks))
        except ApiError:
            return defer.fail()

    @staticmethod
    def _delivered(result, request) -> bytes:
        if isinstance(result, Dropped):
            return _json(request, 200, {"dropped": result.reason, "created": False})
        event, created = result
        return _json(request, 201 if created else 200,
                     {"event": inboxEventJSON(event), "created": created})

    @staticmethod
    def _batchResult(result) -> dict:
        if isinstance(result, Dropped):
            return {"status": 200, "dropped": result.reason, "created": False}
        event, created = result
        return {"status": 201 if created else 200, "event": inboxEventJSON(event),
                "created": created}

    def _batchError(self, failure, request):
        if failure.check(defer.CancelledError):
            return failure
        if not failure.check(ApiError):
            self.log.failure("unexpected error delivering a notification", failure)
            return {"status": 500, "error": {"code": "internal", "message": "internal error"}}
        error = failure.value
        result = {"status": error.status,
                  "error": {"code": error.code, "message": error.message}}
        if b"location" in error.headers:
            result["location"] = error.headers[b"location"].decode("utf-8")
        return result


# The social routes (read receipts, conversation list, blocks, presence), the event streams
# (Server-Sent Events) and the node's own pages (chat page, health, metrics) live in their
# modules.
addSocialRoutes(ChatAPI.app)
addStreamRoutes(ChatAPI.app)
addOperationsRoutes(ChatAPI.app)
