# -*- test-case-name: tests.nsq.test_protocol -*-
"""
The NSQ V2 client protocol: one TCP connection to one nsqd.

On connect it sends the magic and IDENTIFY; L{NSQProtocol.identified} fires with the negotiated
settings. Heartbeats are answered with NOP, and a watchdog on the injected clock aborts the
connection when nothing at all arrived for two heartbeat intervals.

Replies (C{OK}, C{CLOSE_WAIT}, the IDENTIFY JSON, or a fatal C{E_*} error) are matched to the
commands that expect one in FIFO order: nsqd answers strictly in order, and heartbeats are
filtered out first. E_FIN_FAILED, E_REQ_FAILED and E_TOUCH_FAILED answer commands that get no
reply and leave the connection alone; every other error is fatal: nsqd closes the connection, and
so do we.

Producer role: L{NSQProtocol.publish}, L{NSQProtocol.multiPublish}. Consumer role:
L{NSQProtocol.subscribe}, L{NSQProtocol.setReady} and a message handler whose Deferred decides
FIN (success) or REQ with a delay growing with the attempts (failure); L{NSQProtocol.close} is
the CLS handshake.

Malformed or unexpected frames never raise out of C{dataReceived}: they are counted and the
connection is aborted (the client service reconnects).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar, cast

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from hpchat.loops import retryDelays
from hpchat.nsq import commands
from hpchat.nsq.commands import CLOSE_WAIT, HEARTBEAT, OK, IdentifyOptions, NSQError
from hpchat.nsq.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_TYPE_ERROR,
    FRAME_TYPE_MESSAGE,
    MAGIC_V2,
    Frame,
    FrameDecoder,
    FrameError,
    Message,
    decodeMessage,
)

DEFAULT_HEARTBEAT_INTERVAL = 30000  # ms, what nsqd uses for heartbeat_interval 0


class NSQConnectionLost(Exception):
    """
    The connection closed before nsqd answered the command.
    """


class NotConnected(Exception):
    """
    The command was not sent: the connection is closed or closing.
    """


class UnexpectedResponse(Exception):
    """
    nsqd answered with something the command does not expect (e.g. not C{OK} to a PUB).
    """


class NSQCounters:
    """
    Plain integer counters, shared by a service and its connections. To feed them elsewhere
    (e.g. Prometheus), subclass and override L{count}.
    """

    names = (
        "connections",       # connections that completed IDENTIFY
        "published",         # messages acknowledged with OK (an MPUB counts its messages)
        "publishFailed",     # messages whose PUB/MPUB got an error
        "bufferFull",        # messages refused because the publish buffer was full
        "consumed",          # messages delivered to us
        "finished",          # FIN sent
        "requeued",          # REQ sent
        "touched",           # TOUCH sent
        "discarded",         # FINed without handling after maxAttempts
        "handlerFailures",   # handler Deferreds that failed
        "malformedFrames",   # undecodable or oversized frames (connection dropped)
        "rejectedFrames",    # well-formed frames we did not expect (connection dropped)
        "fatalErrors",       # fatal E_* errors from nsqd
        "nonFatalErrors",    # E_FIN_FAILED, E_REQ_FAILED, E_TOUCH_FAILED
        "heartbeats",        # heartbeats answered with NOP
        "livenessTimeouts",  # connections aborted for silence
    )

    def __init__(self) -> None:
        for name in self.names:
            setattr(self, name, 0)

    def count(self, name: str, n: int = 1) -> None:
        setattr(self, name, getattr(self, name) + n)

    def asDict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.names}


_requeueDelays = retryDelays(1.0, 60.0)


def defaultRequeueDelay(attempts: int) -> int:
    """
    The delay of the C{REQ} of a message whose handler failed on delivery number C{attempts}
    (NSQ counts them from 1): the milliseconds nsqd waits before it delivers the message
    again, 1 s, 2 s, 4 s ... capped at 60 s (Twisted's backoffPolicy, without jitter).
    """
    return int(1000 * _requeueDelays(max(attempts - 1, 0)))


class NSQMessage:
    """
    A message delivered to this connection, as the handler sees it.
    """

    __slots__ = ("id", "body", "attempts", "timestamp", "_protocol")

    def __init__(self, protocol: NSQProtocol, message: Message) -> None:
        self.id = message.id
        self.body = message.body
        self.attempts = message.attempts
        self.timestamp = message.timestamp
        self._protocol = protocol

    def touch(self) -> None:
        """
        Ask nsqd for another msg_timeout before it redelivers this message elsewhere.
        """
        self._protocol.touch(self)

    @property
    def inFlight(self) -> bool:
        """
        True until this message is FINed or REQed here, or its connection is closed.
        """
        return bool(self._protocol.connected) and self.id in self._protocol.inFlight

    @property
    def connected(self) -> bool:
        """
        Whether the connection this message came on is still open (a message no longer in
        flight on an open connection was FINed or REQed; on a closed one, nsqd may have lost
        it).
        """
        return bool(self._protocol.connected)

    def __repr__(self) -> str:
        return f"<NSQMessage {self.id!r} attempts={self.attempts} {len(self.body)} bytes>"


@dataclass
class _Pending:
    name: str
    expect: bytes | None  # None: any response
    deferred: defer.Deferred[bytes]


MessageHandler = Callable[[NSQMessage], Any]


class NSQProtocol(Protocol):
    """
    One nsqd connection. See the module docstring.

    @ivar identified: fires with the IDENTIFY response (a dict) once negotiated; fails with the
        L{NSQError} or L{NSQConnectionLost} that prevented it.
    @ivar disconnected: fires (never fails) with the reason, an exception, when the connection is
        lost.
    @ivar inFlight: messages delivered and neither FINed nor REQed yet, by id.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        options: IdentifyOptions = IdentifyOptions(),
        *,
        handler: MessageHandler | None = None,
        requeueDelay: Callable[[int], int] = defaultRequeueDelay,
        maxAttempts: int | None = None,
        maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE,
        counters: NSQCounters | None = None,
    ) -> None:
        self.clock = clock
        self.options = options
        self.handler = handler
        self.requeueDelay = requeueDelay
        self.maxAttempts = maxAttempts
        self.counters = counters if counters is not None else NSQCounters()
        self._decoder = FrameDecoder(maxFrameSize)
        self._pending: deque[_Pending] = deque()
        self._watchdog: IDelayedCall | None = None
        self.connected = False
        self._dropped = False
        self.subscribed = False
        self.closing = False
        self.readyCount = 0
        self.negotiated: dict[str, Any] = {}
        self.inFlight: dict[bytes, NSQMessage] = {}
        self.identified: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.disconnected: defer.Deferred[BaseException | None] = defer.Deferred()
        self._closed: defer.Deferred[None] | None = None

    # -- connection

    @property
    def _tcp(self) -> ITCPTransport:
        """
        The connection's transport (set from connectionMade on).
        """
        return cast(ITCPTransport, self.transport)

    def connectionMade(self) -> None:
        self.connected = True
        self._startWatchdog()
        self._tcp.write(MAGIC_V2)
        d = self._command("IDENTIFY", commands.identify(self.options), expect=None
                          ).addCallback(self._identifyResponse)
        d.chainDeferred(self.identified)

    def _identifyResponse(self, data: bytes) -> dict[str, Any]:
        try:
            self.negotiated = commands.parseIdentifyResponse(data)
        except ValueError as e:
            self.counters.count("rejectedFrames")
            self._drop("bad IDENTIFY response: {error}", error=str(e))
            raise UnexpectedResponse(str(e))
        self.counters.count("connections")
        self.log.debug("NSQ connection identified: {negotiated}", negotiated=self.negotiated)
        return self.negotiated

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self._stopWatchdog()
        why = reason.getErrorMessage() if reason is not None else "connection closed"
        pending, self._pending = self._pending, deque()
        for p in pending:
            if not p.deferred.called:
                p.deferred.errback(NSQConnectionLost(
                    f"connection lost before the reply to {p.name}: {why}"))
        # Messages still in flight stay with nsqd until their msg_timeout runs out.
        self.inFlight.clear()
        self.disconnected.callback(reason.value if reason is not None else None)

    @property
    def usable(self) -> bool:
        """
        Connected, and not being dropped after a fatal error or a bad frame.
        """
        return bool(self.connected) and not self._dropped

    def _drop(self, why: str, **fields: Any) -> None:
        """
        Abort the connection after a protocol violation; the frames after it are ignored.
        """
        if self._dropped:
            return
        self._dropped = True
        self.log.warn("Dropping NSQ connection to {peer}: " + why, peer=self._peer(), **fields)
        self._tcp.abortConnection()

    def _peer(self) -> str:
        try:
            peer = self._tcp.getPeer()
            return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        except Exception:
            return "?"

    # -- liveness

    def _heartbeatSeconds(self) -> float | None:
        interval = self.options.heartbeatInterval
        if interval < 0:
            return None
        return (interval or DEFAULT_HEARTBEAT_INTERVAL) / 1000.0

    def _startWatchdog(self) -> None:
        interval = self._heartbeatSeconds()
        if interval is not None:
            self._watchdog = self.clock.callLater(2 * interval, self._silent)

    def _stopWatchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _silent(self) -> None:
        self._watchdog = None
        try:
            self.counters.count("livenessTimeouts")
            self.log.warn("No data from nsqd {peer} for two heartbeat intervals; aborting",
                          peer=self._peer())
            self._dropped = True
            self._tcp.abortConnection()
        except Exception:
            self.log.failure("NSQ liveness check failed")

    # -- frames

    def dataReceived(self, data: bytes) -> None:
        if self._dropped:
            return
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(2 * (self._heartbeatSeconds() or 0))
        self._decoder.feed(data)
        while not self._dropped:
            try:
                frame = self._decoder.nextFrame()
            except FrameError as e:
                self.counters.count("malformedFrames")
                self._drop("{error}", error=str(e))
                return
            if frame is None:
                return
            try:
                self._frameReceived(frame)
            except Exception:
                self.counters.count("rejectedFrames")
                self.log.failure("Error handling an NSQ frame")
                self._drop("error handling a frame")

    def _frameReceived(self, frame: Frame) -> None:
        if frame.frameType == FRAME_TYPE_MESSAGE:
            try:
                message = decodeMessage(frame.data)
            except FrameError as e:
                self.counters.count("malformedFrames")
                self._drop("{error}", error=str(e))
                return
            self._messageReceived(message)
        elif frame.frameType == FRAME_TYPE_ERROR:
            self._errorReceived(commands.parseError(frame.data))
        elif frame.data == HEARTBEAT:
            self.counters.count("heartbeats")
            self._tcp.write(commands.nop())
        else:
            self._responseReceived(frame.data)

    def _responseReceived(self, data: bytes) -> None:
        if not self._pending:
            self.counters.count("rejectedFrames")
            self._drop("response {data!r} with no command waiting", data=data[:64])
            return
        p = self._pending.popleft()
        if p.expect is not None and data != p.expect:
            self.counters.count("rejectedFrames")
            error = UnexpectedResponse(f"{p.name} got {data[:64]!r}")
            self._drop("{error}", error=str(error))
            if not p.deferred.called:
                p.deferred.errback(error)
            return
        if not p.deferred.called:  # the caller may have cancelled it
            p.deferred.callback(data)

    def _errorReceived(self, error: NSQError) -> None:
        if not error.fatal:
            # An answer to FIN/REQ/TOUCH, which expect no reply: the message timed out and
            # went back to the queue (or to another consumer).
            self.counters.count("nonFatalErrors")
            self.log.info("nsqd: {error}", error=str(error))
            return
        self.counters.count("fatalErrors")
        self.log.warn("Fatal error from nsqd {peer}: {error}", peer=self._peer(),
                      error=str(error))
        if self._pending:
            p = self._pending.popleft()
            if not p.deferred.called:
                p.deferred.errback(error)
        # nsqd closes its side; close ours too so we reconnect without waiting for it.
        self._dropped = True
        self._tcp.loseConnection()

    # -- commands

    def _write(self, data: bytes) -> bool:
        if not self.connected or self._dropped:
            return False
        self._tcp.write(data)
        return True

    def _command(self, name: str, data: bytes, expect: bytes | None = OK
                 ) -> defer.Deferred[bytes]:
        if not self.connected or self._dropped:
            return defer.fail(NotConnected(f"cannot send {name}: not connected"))
        p = _Pending(name, expect, defer.Deferred())
        self._pending.append(p)
        self._tcp.write(data)
        return p.deferred

    def publish(self, topic: str, body: bytes) -> defer.Deferred[None]:
        """
        PUB one message; fires when nsqd answers C{OK}, fails with its L{NSQError}.

        @raise ValueError: for an invalid topic or an empty body (nothing is sent).
        """
        return self._publish("PUB", commands.pub(topic, body), 1)

    def multiPublish(self, topic: str, bodies: Sequence[bytes]) -> defer.Deferred[None]:
        """
        MPUB several messages at once (all or nothing).
        """
        return self._publish("MPUB", commands.mpub(topic, bodies), len(bodies))

    def _publish(self, name: str, data: bytes, count: int) -> defer.Deferred[None]:
        def ok(_: bytes) -> None:
            self.counters.count("published", count)

        def failed(f: Failure) -> Failure:
            if f.check(NSQError):
                self.counters.count("publishFailed", count)
            return f

        return self.sendPublish(name, data).addCallbacks(ok, failed)

    def sendPublish(self, name: str, data: bytes) -> defer.Deferred[bytes]:
        """
        Send an already encoded PUB/MPUB/DPUB command (used by the producer's buffer).
        """
        return self._command(name, data)

    def subscribe(self, topic: str, channel: str) -> defer.Deferred[None]:
        """
        SUB; fires on C{OK}. Messages flow only after L{setReady}.
        """
        data = commands.sub(topic, channel)

        def subscribed(_: bytes) -> None:
            self.subscribed = True

        return self._command("SUB", data).addCallback(subscribed)

    def setReady(self, count: int) -> None:
        """
        Set the RDY window: nsqd keeps up to C{count} messages in flight on this connection.
        Capped at the server's max_rdy_count.
        """
        maxRdy = self.negotiated.get("max_rdy_count")
        if isinstance(maxRdy, int) and count > maxRdy:
            count = maxRdy
        if self.closing or not self._write(commands.rdy(count)):
            return
        self.readyCount = count

    # -- consumer

    def _messageReceived(self, message: Message) -> None:
        if self.handler is None or not self.subscribed:
            self.counters.count("rejectedFrames")
            self._drop("message {id!r} on a connection that did not subscribe",
                       id=message.id)
            return
        self.counters.count("consumed")
        msg = NSQMessage(self, message)
        self.inFlight[msg.id] = msg
        if self.closing:
            # Sent before nsqd saw our CLS: give it straight back.
            self.requeue(msg, 0)
            return
        if self.maxAttempts is not None and msg.attempts > self.maxAttempts:
            self.counters.count("discarded")
            self.log.warn("Discarding NSQ message {id!r} after {attempts} attempts",
                          id=msg.id, attempts=msg.attempts)
            self.finish(msg)
            return
        d = defer.maybeDeferred(self.handler, msg)
        d.addCallbacks(self._handled, self._handlerFailed, callbackArgs=(msg,),
                       errbackArgs=(msg,))
        d.addErrback(lambda f: self.log.failure("Error settling NSQ message", f))

    def _handled(self, _: object, msg: NSQMessage) -> None:
        self.finish(msg)

    def _handlerFailed(self, failure: Failure, msg: NSQMessage) -> None:
        self.counters.count("handlerFailures")
        if msg.id not in self.inFlight:
            return
        delay = self.requeueDelay(msg.attempts)
        # Not log.failure: a failing handler (e.g. the inbox owner is unreachable) is an
        # operational event, not a bug.
        self.log.warn("NSQ handler failed on {id!r} (attempt {attempts}): {error}; requeue in "
                      "{delay} ms", id=msg.id, attempts=msg.attempts, delay=delay,
                      error=failure.getErrorMessage())
        self.requeue(msg, delay)

    def finish(self, msg: NSQMessage) -> None:
        """
        FIN: the message is done. A no-op if it is no longer in flight here.
        """
        if self.inFlight.pop(msg.id, None) is not None and self._write(commands.fin(msg.id)):
            self.counters.count("finished")

    def requeue(self, msg: NSQMessage, delayMs: int | None = None) -> None:
        """
        REQ: deliver the message again after C{delayMs} (default: L{requeueDelay} of its
        attempts). A no-op if it is no longer in flight here.
        """
        if delayMs is None:
            delayMs = self.requeueDelay(msg.attempts)
        delayMs = max(0, int(delayMs))
        if self.inFlight.pop(msg.id, None) is not None and self._write(
                commands.req(msg.id, delayMs)):
            self.counters.count("requeued")

    def touch(self, msg: NSQMessage) -> None:
        """
        TOUCH: reset the message's timeout on nsqd.
        """
        if msg.id in self.inFlight and self._write(commands.touch(msg.id)):
            self.counters.count("touched")

    # -- shutdown

    def close(self, timeout: float = 5.0) -> defer.Deferred[None]:
        """
        Close cleanly; fires once the connection is closed, never fails.

        A subscribed connection sends CLS and waits (at most C{timeout} seconds) for
        C{CLOSE_WAIT}, so nsqd sends nothing more. Messages still in flight are not FINed: they
        are REQed with no delay, so nsqd hands them to another consumer at once instead of after
        their msg_timeout; a handler finishing later is ignored. Then the connection is closed,
        and aborted if it is not gone after another C{timeout}.
        """
        if self._closed is not None:
            return _chained(self._closed)
        closed: defer.Deferred[None] = defer.Deferred()
        self._closed = closed
        if not self.connected:
            closed.callback(None)
            return _chained(closed)
        self.disconnected.addBoth(_also(lambda: closed.callback(None)))

        if self.subscribed and not self._dropped:
            self.closing = True
            waiting = self._command("CLS", commands.cls(), expect=CLOSE_WAIT)
            waiting.addTimeout(timeout, self.clock)
            waiting.addErrback(lambda f: self.log.info(
                "No CLOSE_WAIT from nsqd: {error}", error=f.getErrorMessage()))
            waiting.addCallback(lambda _: self._disconnect(timeout))
        else:
            self._disconnect(timeout)
        return _chained(self._closed)

    def _disconnect(self, timeout: float) -> None:
        for msg in list(self.inFlight.values()):
            self.requeue(msg, 0)
        if not self.connected:
            return
        self._tcp.loseConnection()
        killer = self.clock.callLater(timeout, self._kill)
        self.disconnected.addBoth(_also(lambda: killer.cancel() if killer.active() else None))

    def _kill(self) -> None:
        try:
            if self.connected:
                self.log.warn("NSQ connection to {peer} did not close; aborting",
                              peer=self._peer())
                self._tcp.abortConnection()
        except Exception:
            self.log.failure("Aborting an NSQ connection failed")


def _chained(d: defer.Deferred[None]) -> defer.Deferred[None]:
    """
    A new Deferred that fires with C{d}, so several callers can wait on it.
    """
    result: defer.Deferred[None] = defer.Deferred()
    d.addBoth(_also(lambda: result.callback(None)))
    return result


_T = TypeVar("_T")


def _also(f: Callable[[], object]) -> Callable[[_T], _T]:
    """
    A callback that calls C{f} and passes the result on untouched.
    """
    def callback(result: _T) -> _T:
        f()
        return result
    return callback
