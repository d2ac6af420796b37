# -*- test-case-name: tests.web.test_sse -*-
"""
Server-Sent Events beside the long-poll: C{GET /v1/conversations/{cid}/stream} and
C{GET /v1/inbox/stream} keep one response open and write each event as it commits, so a
client that can hold a connection pays one request, not one per delivery.

An open stream reads what is there with one L{hpchat.streams.Streams.poll} answered at once,
then listens to its stream (L{hpchat.streams.Streams.listen}): each commit after its cursor,
and each new typing or read version, is written in the turn it happens, with no Deferred, no
timer and no new waiter per event (a burst, or a cursor older than the memory, is caught up
first, in batches of at most C{MAX_EVENTS_PER_POLL} events, with no gap and no repeat). One
loop of L{EventStreams} on the reactor's clock serves every open stream: a stream that wrote
nothing for C{[chat] stream_heartbeat} seconds, less a fifth of one, writes the comment
C{: hb}, so that it is never silent for longer and proxies keep the connection open.

Frames (C{text/event-stream}): C{event: message} (a Message) and C{event: notification} (an
InboxEvent) carry their seq as C{id:}. C{event: typing} (C{{"typing", "typing_version"}}) and
C{event: read} (C{{"read", "read_version"}}) have no seq of their own and carry the stream's
cursor: the seq of the last message written on this response (or where it started). So the
last id a client saw is always the seq of the last message it got, and a reconnection with
C{Last-Event-ID} (which wins over C{?after=}) resumes with no gap and no repeat. The response
starts with C{retry:} and an id-only record of the starting cursor, so that even a stream
opened "from now" that ends before its first event resumes where it began.

Everything before the first byte is checked as for the long-poll, with the same JSON errors
(401, 403, 404, 409, 429, 307 to the owner, 503). An open stream is closed (the client
reconnects and is redirected) when this node loses the stream's group, when the node drains,
and when the client stops reading: the stream is a streaming producer of its transport, paused
once the transport's buffer is full, and a stream that writes more than L{MAX_BACKLOG} bytes
while paused is cut off (it resumes from its last id). An open stream counts as one waiting
long-poll of its user against C{[limits] max_polls_per_user}, and as a user online while it is
open (presence). The heartbeat loop checks every open stream's token again: a stream ends
within one heartbeat (a fifth of one) once its token has expired.

On a node's HTTP edge the streams are answered on its hot path (L{hpchat.web.ssehot}: the
stream writes to its connection, with no twisted.web request); the Klein routes here
(L{WebEventStream}) serve the same streams on any other twisted.web site. Both share the
listening (L{EventStream}) and L{EventStreams}' checks, limits, heartbeats and closing.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from hpchat import metrics, strictjson
from hpchat.loops import startLoop
from hpchat.slices import Slices
from hpchat.storage.base import Event
from hpchat.streamids import inboxStream
from hpchat.streams import PollResult, StreamUnavailable
from hpchat.streams.waiters import Listener
from hpchat.web.auth import Unauthorized

#: Milliseconds a client waits before it reconnects (the C{retry:} field of the first record).
RETRY_MS = 2000
#: Bytes a stream may write while its transport is paused (the client is not reading) before
#: the connection is cut.
MAX_BACKLOG = 256 * 1024
HEARTBEAT = b": hb\n\n"
#: The heartbeat loop's visits to each stream per C{heartbeat}: a silent stream gets its
#: comment within this fraction of a heartbeat after C{heartbeat} seconds of silence.
TICKS_PER_HEARTBEAT = 5
#: Seconds between two ticks of the heartbeat loop, each visiting a slice of the open streams
#: (at most MAX_HEARTBEAT_SLICES of them per visit period): a visit to 10,000 streams at
#: once, 2,000 of them written to, stalled the reactor for 30-45 ms every 3 s.
HEARTBEAT_TICK = 0.1
MAX_HEARTBEAT_SLICES = 64
#: The head of a stream's answer, besides its status and framing.
HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"),
           (b"cache-control", b"no-cache"),
           # Proxies that buffer answers (nginx) pass this one through as it is written.
           (b"x-accel-buffering", b"no"))
_CURSOR = re.compile(rb"\d{1,18}")


_apiModule: Any = None


def _api():
    # hpchat.web.api imports this module; its names are looked up once both are loaded.
    global _apiModule
    if _apiModule is None:
        from hpchat.web import api

        _apiModule = api
    return _apiModule


def _hot():
    from hpchat.web import ssehot

    return ssehot


def frame(type: str, id: int, data: Any) -> bytes:
    """
    One event record: C{event:}, C{id:} and C{data:} (one line of JSON, as
    L{hpchat.strictjson.dumps} writes it), then a blank line.
    """
    return b"event: %s\nid: %d\ndata: %s\n\n" % (type.encode("ascii"), id,
                                                  strictjson.dumpb(data))


def resumeCursor(request) -> int | None:
    """
    Where a stream resumes: the C{Last-Event-ID} header if present, else C{?after=}, else
    C{None} (from now). Raises the 400 answer for one that is not a seq.
    """
    header = request.getHeader(b"last-event-id")
    if header is not None and header.strip():
        value = header.strip()
        if _CURSOR.fullmatch(value) is None:
            raise _api().ApiError(400, "bad_request", "Last-Event-ID must be a seq (an integer)")
        return int(value)
    return _api().ChatAPI._intArg(request, "after", low=0)


class EventStream:
    """
    One open stream, whatever carries it: its cursor and versions, and the listener of its
    stream. Also the streaming producer of its response, paused while the client does not
    read.

    A subclass writes (L{_send}), ends (L{_end}) and checks the token (L{_authorized}) on
    its own transport: L{WebEventStream} on a twisted.web request (the Klein route), or
    L{hpchat.web.ssehot.HotEventStream} on the connection itself (the hot path).
    """

    __slots__ = ("_hub", "user", "name", "group", "_conversation", "cursor",
                 "_typingVersion", "_readVersion", "_listener", "_pending", "_paused",
                 "_backlog", "wrote", "closed")

    log = Logger()

    def __init__(self, hub: EventStreams, user: str, name: str, conversation: bool,
                 cursor: int):
        self._hub = hub
        self.user = user
        self.name = name
        self.group = hub.streams.groupOf(name)
        self._conversation = conversation
        self.cursor = cursor
        self._typingVersion: int | None = None
        self._readVersion: int | None = None
        self._listener: Listener | None = None
        # The listener being made (the stream loading), for a close meanwhile to cancel.
        self._pending: defer.Deferred | None = None
        self._paused = False
        self._backlog = 0
        # When this stream last wrote (the heartbeats write to those silent for long).
        self.wrote = hub.seconds()
        self.closed = False

    # -- what a transport provides

    def _send(self, data: bytes) -> None:
        raise NotImplementedError()

    def _end(self, finish: bool, abort: bool) -> None:
        """
        End the response (C{finish}), cut the connection (C{abort}), or neither (it is gone).
        """
        raise NotImplementedError()

    def _authorized(self) -> bool:
        raise NotImplementedError()

    # -- writing

    def _opening(self, first: PollResult) -> bytes:
        """
        The first records: C{retry:}, the starting cursor, and what C{first} holds.
        """
        return b"retry: %d\nid: %d\n\n" % (RETRY_MS, self.cursor) + self._records(first)

    def _records(self, result: PollResult) -> bytes:
        parts = []
        hub = self._hub
        event: Event
        cursor = self.cursor
        for event in result.events:
            if event.seq <= cursor:
                continue
            parts.append(hub.eventRecord(event, self._conversation))
            cursor = event.seq
        self.cursor = cursor
        if self._conversation:
            if result.typing_version != self._typingVersion:
                self._typingVersion = result.typing_version
                parts.append(frame("typing", cursor, {
                    "typing": result.typing, "typing_version": result.typing_version}))
            if result.read_version != self._readVersion:
                self._readVersion = result.read_version
                parts.append(hub.readRecord(self.name, cursor, result))
        if not parts:
            return b""
        metrics.sseEvents.inc(len(parts))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _write(self, data: bytes) -> None:
        self.wrote = self._hub.seconds()
        if self._paused:
            self._backlog += len(data)
        self._send(data)
        if self._backlog > MAX_BACKLOG:
            metrics.countLimited("stream_backlog")
            self.close(abort=True)

    # -- listening

    def _listen(self) -> None:
        """
        After the opening records: listen to the stream from the cursor (what came since is
        written at once, a burst in batches of at most C{MAX_EVENTS_PER_POLL} events).
        """
        if self._hub.draining:
            self.close()
            return
        listening = self._hub.streams.listen(self.name, self.cursor, self._typingVersion,
                                             self._readVersion, self._changed, self._lost)
        self._pending = listening
        listening.addCallbacks(self._listening, self._failed).addErrback(self._broken)

    def _listening(self, listener: Listener) -> None:
        self._pending = None
        if self.closed:
            # (Closed while the listener caught up, or the stream loaded.)
            listener.close()
            return
        self._listener = listener

    def _changed(self, result: PollResult) -> None:
        """
        What the stream's listener is told: write the records of C{result}. Nothing to write
        is the node draining (L{hpchat.streams.Streams.answerWaiting}): the client reconnects
        elsewhere.
        """
        if self.closed:
            return
        try:
            records = self._records(result)
            if records:
                self._write(records)
            elif self._hub.draining:
                self.close()
        except Exception:
            self._broken(Failure())

    def _lost(self, reason: Exception) -> None:
        # The stream was dropped (its group moved, the node stops): the listener is gone
        # already, and the client reconnects, to be redirected.
        self._listener = None
        if self.closed:
            return
        if not isinstance(reason, StreamUnavailable):
            self.log.error("a stream of {stream} was lost ({reason!r}); closing it",
                           stream=self.name, reason=reason)
        self.close()

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        if self.closed or failure.check(defer.CancelledError):
            return
        if not failure.check(StreamUnavailable):
            self.log.failure("a stream of {stream} failed; closing it", failure,
                             stream=self.name)
        self.close()

    def _broken(self, failure: Failure) -> None:
        # A bug while writing what a change brought: the client reconnects from its last id.
        self.log.failure("writing to a stream of {stream} failed; closing it", failure,
                         stream=self.name)
        self.close()

    # -- IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0

    def stopProducing(self) -> None:
        self.close(finish=False)

    # -- the end

    def close(self, finish: bool = True, abort: bool = False) -> None:
        """
        End the stream (once): close its listener, give back its place in the limits and
        presence, and (C{finish}) end the response; C{abort} then cuts the connection too,
        for a client that does not read what is already queued for it.
        """
        if self.closed:
            return
        self.closed = True
        self._hub.forget(self)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        self._hub.release(self.user)
        self._end(finish, abort)


@implementer(IPushProducer)
class WebEventStream(EventStream):
    """
    A stream answering a twisted.web request (the Klein route): C{done} fires once it is
    closed.
    """

    __slots__ = ("request", "done")

    def __init__(self, hub: EventStreams, request, user: str, name: str, conversation: bool,
                 cursor: int):
        super().__init__(hub, user, name, conversation, cursor)
        self.request = request
        self.done: defer.Deferred = defer.Deferred(lambda _: self.close(finish=False))

    def start(self, first: PollResult) -> defer.Deferred:
        """
        Send the head and what C{first} (a poll answered at once) holds, then wait for more.
        Fires (never fails) once the stream is closed.
        """
        request = self.request
        request.setResponseCode(200)
        for name, value in HEADERS:
            request.setHeader(name, value)
        if request.method == b"HEAD":
            # The head is the whole answer.
            self.close()
            return self.done
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(self._gone)
        self._write(self._opening(first))
        self._listen()
        return self.done

    def _send(self, data: bytes) -> None:
        self.request.write(data)

    def _authorized(self) -> bool:
        return self._hub.authorized(self.request, self.user)

    def _gone(self, failure: Failure) -> None:
        # The client went away (or the connection was cut).
        self.close(finish=False)

    def _end(self, finish: bool, abort: bool) -> None:
        request = self.request
        if not request.finished and not request._disconnected:
            # (The request forgets its channel when it finishes.)
            transport = request.channel.transport
            request.unregisterProducer()
            if finish or abort:
                request.finish()
            if abort:
                transport.abortConnection()
        if not self.done.called:
            self.done.callback(None)


class EventStreams:
    """
    The open streams of a node, and the handlers of the two stream routes: L{conversation}
    and L{inbox} for the Klein routes (L{addStreamRoutes}), L{hotConversation} and
    L{hotInbox} for the hot path of the HTTP edge (L{hpchat.web.ssehot}), all with the
    L{hpchat.web.api.ChatAPI}'s checks and answers.

    C{heartbeat} (C{[chat] stream_heartbeat}) is the longest a stream stays silent: before
    that it writes the comment C{: hb}. One loop on the streams' clock
    (L{hpchat.loops.startLoop}), running while streams are open, visits every stream
    C{TICKS_PER_HEARTBEAT} times per heartbeat, a slice of them at each of its ticks
    (L{hpchat.slices.Slices}): it writes C{: hb} to the streams that would otherwise be
    silent for longer than C{heartbeat} seconds before their next visit, and closes those
    whose token is no longer valid.
    """

    def __init__(self, api, streams, ownership, heartbeat: float):
        self._api = api
        self.streams = streams
        self.heartbeat = heartbeat
        self.clock = streams.clock
        self.seconds: Callable[[], float] = self.clock.seconds
        visits = heartbeat / TICKS_PER_HEARTBEAT
        slices = max(1, min(MAX_HEARTBEAT_SLICES, round(visits / HEARTBEAT_TICK)))
        self.open: Slices[EventStream] = Slices(slices, visits, self.seconds())
        self._beats: task.LoopingCall | None = None
        ownership.subscribeLost(self.dropGroups)

        # The last record of each kind made: the two participants' streams of a
        # conversation write the same ones, one after the other.
        self._lastEvent: tuple[Event | None, bytes] = (None, b"")
        self._lastRead: tuple[Any, bytes] = (None, b"")

    def __len__(self) -> int:
        return len(self.open)

    # -- records

    def eventRecord(self, event: Event, conversation: bool) -> bytes:
        """
        The record of C{event}: C{message} (a conversation's) or C{notification}.
        """
        last, record = self._lastEvent
        if last is event:
            return record
        api = _api()
        if conversation:
            record = frame("message", event.seq, api.messageJSON(event))
        else:
            record = frame("notification", event.seq, api.inboxEventJSON(event))
        self._lastEvent = (event, record)
        return record

    def readRecord(self, name: str, cursor: int, result: PollResult) -> bytes:
        """
        The C{read} record of conversation C{name} at C{cursor}.
        """
        key = (name, cursor, result.read_version)
        last, record = self._lastRead
        if last == key:
            return record
        record = frame("read", cursor, {"read": result.read, "read_version": result.read_version})
        self._lastRead = (key, record)
        return record

    @property
    def draining(self) -> bool:
        return self._api.draining

    def authorized(self, request, user: str) -> bool:
        """
        Whether the token of C{request} is still valid for C{user} (verified tokens are
        cached until they expire: a dict lookup).
        """
        try:
            return self._api._user(request) == user
        except _api().ApiError:
            return False

    def tokenUser(self, token: str | None) -> str | None:
        """
        The user C{token} is still valid for, or C{None}.
        """
        try:
            return self._api._auth.userFor(token)
        except Unauthorized:
            return None

    # -- routes

    def conversation(self, request, cid: str) -> defer.Deferred:
        return self._route(request, cid, WebEventStream).addCallback(self._start)

    def inbox(self, request) -> defer.Deferred:
        return self._route(request, None, WebEventStream).addCallback(self._start)

    def hotConversation(self, request, cid: str) -> defer.Deferred:
        """
        The conversation stream on the hot path: fires with the
        L{hpchat.web.ssehot.HotEventStream} that the connection then starts, or fails with
        the answer.
        """
        hot = _hot().HotEventStream
        return self._route(request, cid, hot.forRequest).addCallback(hot.ready)

    def hotInbox(self, request) -> defer.Deferred:
        hot = _hot().HotEventStream
        return self._route(request, None, hot.forRequest).addCallback(hot.ready)

    def _route(self, request, cid: str | None, make: Callable[..., Any]) -> defer.Deferred:
        """
        Check C{request} (a conversation stream of C{cid}, or the inbox stream), take its
        user's place and read what is there; fires with C{(make(...), first poll)}.
        """
        api = self._api
        request.hpchatRoute = "stream" if cid is not None else "inbox_stream"
        user = api._user(request)
        name = api._conversation(cid, user) if cid is not None else inboxStream(user)
        after = resumeCursor(request)
        return api._onStream(request, name, lambda: self._open(
            request, user, name, after, cid is not None, make))

    def _open(self, request, user: str, name: str, after: int | None, conversation: bool,
              make: Callable[..., Any]) -> defer.Deferred:
        """
        Take C{user}'s place among their waiting polls and read what is there now; fires
        with the stream C{make} builds and the first poll, or fails with the answer (429)
        or the stream's error.
        """
        api = self._api
        limits = api._limits
        if limits is not None and not limits.polls.acquire(user):
            metrics.countLimited("polls_per_user")
            raise _api().ApiError(
                429, "rate_limited",
                f"at most {limits.polls.maximum} long-polls and streams may be open at once "
                f"per user", {b"retry-after": b"1"})
        presence = api._social.presence
        if presence is not None:
            presence.tracker.started(user)
        first = self.streams.poll(name, after, None, 0, None)

        def opened(result: PollResult):
            cursor = after if after is not None else result.last_seq
            return make(self, request, user, name, conversation, cursor), result

        def failed(failure: Failure):
            self.release(user)
            return failure

        return first.addCallback(opened).addErrback(failed)

    def release(self, user: str) -> None:
        """
        Give back the place L{_open} took for C{user} (once per stream).
        """
        api = self._api
        if api._limits is not None:
            api._limits.polls.release(user)
        presence = api._social.presence
        if presence is not None:
            presence.tracker.ended(user)

    def _start(self, opened) -> defer.Deferred:
        stream, first = opened
        if stream.request._disconnected:
            stream.close(finish=False)
            return stream.done
        self.started(stream)
        return stream.start(first)

    # -- open and closed

    def started(self, stream: EventStream) -> None:
        self.open.add(stream)
        metrics.sseStreams.inc()
        if self._beats is None:
            self._beats = startLoop(self.clock, "event stream heartbeats", self._beat,
                                    self.open.tick)

    def forget(self, stream: EventStream) -> None:
        if stream in self.open:
            self.open.discard(stream)
            metrics.sseStreams.dec()
            if not self.open:
                self._stopBeats()

    def _stopBeats(self) -> None:
        beats, self._beats = self._beats, None
        if beats is not None and beats.running:
            beats.stop()

    def _beat(self) -> None:
        """
        One tick of the heartbeat loop, over the streams whose visit is due: close those
        whose token expired (or all of them while the node drains), write C{: hb} to those
        silent for a heartbeat.
        """
        now = self.seconds()
        # A visit early, so that no stream stays silent longer than a heartbeat (less a
        # microsecond: what floating point loses on the ticks' times).
        quiet = now - self.heartbeat + self.heartbeat / TICKS_PER_HEARTBEAT + 1e-6
        draining = self.draining
        for stream in self.open.due(now):
            if stream.closed:
                continue
            try:
                if draining or not stream._authorized():
                    # The client reconnects (elsewhere, or to be told 401 and sign in again).
                    stream.close()
                elif stream.wrote <= quiet:
                    stream._write(HEARTBEAT)
            except Exception:
                stream._broken(Failure())

    def dropGroups(self, groups) -> None:
        """
        Close the streams of C{groups}: this node no longer owns them.
        """
        groups = set(groups)
        for stream in [s for s in self.open if s.group in groups]:
            stream.close()

    def closeAll(self) -> None:
        """
        Close every open stream (the node stops): their clients reconnect elsewhere.
        """
        for stream in list(self.open):
            stream.close()


def addStreamRoutes(app) -> None:
    """
    Add the two stream routes to L{hpchat.web.api.ChatAPI}'s Klein C{app}.
    """

    @app.route("/v1/conversations/<cid>/stream", methods=["GET"])
    def conversationStream(api, request, cid):
        return api.eventStreams.conversation(request, cid)

    @app.route("/v1/inbox/stream", methods=["GET"])
    def inboxStream_(api, request):
        return api.eventStreams.inbox(request)
