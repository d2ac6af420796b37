# -*- test-case-name: tests.nsq.test_client,tests.nsq.test_integration -*-
"""
Long-lived NSQ clients as services: L{NSQProducer} and L{NSQConsumer}.

Each keeps one connection to one nsqd through L{ClientService}, which reconnects with
exponential backoff. A connection is used once it is ready: identified (and, for a consumer,
subscribed with its RDY window set). Reconnecting repeats all of it.

The producer buffers publishes while it has no ready connection (a bounded buffer: beyond it,
publishing fails fast with L{PublishBufferFull}) and flushes the buffer on reconnect.
Publishes that were sent but not acknowledged when the connection dropped are sent again, so
publishing is at least once: receivers dedupe by the application id in the body.

C{stopService} returns a Deferred of the real work: the producer waits (bounded) until its
buffer is flushed and acknowledged; the consumer sends CLS and hands its in-flight messages
back to nsqd (L{NSQProtocol.close}). Then the connection is closed.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from hpchat.deferreds import fireAll, observer
from hpchat.loops import retryDelays
from hpchat.nsq import commands
from hpchat.nsq.commands import IdentifyOptions
from hpchat.nsq.framing import DEFAULT_MAX_FRAME_SIZE
from hpchat.nsq.protocol import (
    MessageHandler,
    NotConnected,
    NSQConnectionLost,
    NSQCounters,
    NSQProtocol,
    defaultRequeueDelay,
)


class PublishBufferFull(Exception):
    """
    The producer has no connection and its buffer is full: the publish was refused.
    """


class ProducerStopped(Exception):
    """
    The producer is stopping or stopped: the publish was refused, or never got an answer.
    """


def defaultRetryPolicy() -> Callable[[int], float]:
    """
    Reconnect after 0.5 s, growing 1.5 times per failed attempt up to 15 s, plus up to 1 s jitter.
    """
    return retryDelays(0.5, 15.0, factor=1.5, jitter=random.random)


def endpointFromAddress(reactor: Any, address: str, timeout: float = 10.0
                        ) -> IStreamClientEndpoint:
    """
    A TCP endpoint for an nsqd C{"host:port"} address.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"invalid nsqd address {address!r} (want host:port)")
    return TCP4ClientEndpoint(reactor, host, int(port), timeout=timeout)


def _describe(endpoint: IStreamClientEndpoint) -> str:
    host, port = getattr(endpoint, "_host", None), getattr(endpoint, "_port", None)
    return f"{host}:{port}" if host is not None else repr(endpoint)


class _NSQFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], NSQProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> NSQProtocol:
        protocol = self._build()
        protocol.factory = self
        return protocol


class _NSQService(Service):
    """
    What producer and consumer share: the ClientService, readiness, and its waiters.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        options: IdentifyOptions,
        retryPolicy: Callable[[int], float] | None,
        counters: NSQCounters | None,
        maxFrameSize: int,
    ) -> None:
        self.endpoint = endpoint
        self.address = _describe(endpoint)
        self.clock = clock
        self.options = options
        self.counters = counters if counters is not None else NSQCounters()
        self.maxFrameSize = maxFrameSize
        self._protocol: NSQProtocol | None = None
        self._waiters: list[defer.Deferred[NSQProtocol]] = []
        self._clientService = ClientService(
            endpoint, _NSQFactory(self._buildProtocol),
            retryPolicy=retryPolicy if retryPolicy is not None else defaultRetryPolicy(),
            clock=clock)

    @property
    def protocol(self) -> NSQProtocol | None:
        """
        The ready connection, if any.
        """
        return self._protocol

    def whenReady(self) -> defer.Deferred[NSQProtocol]:
        """
        The ready connection, now or once there is one. Fails with L{defer.CancelledError} if
        the service stops first.
        """
        if self._protocol is not None:
            return defer.succeed(self._protocol)
        return observer(self._waiters)

    def _protocolArguments(self) -> dict[str, Any]:
        return {}

    def _buildProtocol(self) -> NSQProtocol:
        p = NSQProtocol(self.clock, self.options, maxFrameSize=self.maxFrameSize,
                        counters=self.counters, **self._protocolArguments())
        p.identified.addCallbacks(lambda _: self._identified(p),
                                  lambda f: self._handshakeFailed(p, f))
        p.identified.addErrback(lambda f: self.log.failure("NSQ connection setup failed", f))
        p.disconnected.addCallback(lambda reason: self._lost(p, reason))
        return p

    def _identified(self, p: NSQProtocol) -> None:
        self._ready(p)

    def _handshakeFailed(self, p: NSQProtocol, failure: Failure) -> None:
        self.log.warn("NSQ handshake with {address} failed: {error}",
                      address=self.address, error=failure.getErrorMessage())

    def _ready(self, p: NSQProtocol) -> None:
        if not p.usable:
            return
        if not self.running:
            p.close().addErrback(lambda f: self.log.failure("Closing NSQ connection", f))
            return
        self.log.info("NSQ connection to {address} ready", address=self.address)
        self._protocol = p
        fireAll(self._waiters, p)
        self._connectionReady(p)

    def _connectionReady(self, p: NSQProtocol) -> None:
        pass

    def _lost(self, p: NSQProtocol, reason: BaseException | None) -> BaseException | None:
        if self._protocol is p:
            self._protocol = None
            self.log.info("NSQ connection to {address} lost: {reason}",
                          address=self.address, reason=reason)
        return reason

    def startService(self) -> None:
        super().startService()
        self._clientService.startService()

    def _cancelWaiters(self) -> None:
        fireAll(self._waiters, Failure(defer.CancelledError("NSQ service stopped")))

    def _stopClient(self, _: object = None) -> defer.Deferred[None]:
        self._cancelWaiters()
        if self._clientService.running:
            return self._clientService.stopService()
        return defer.succeed(None)


@dataclass(eq=False)
class _Publish:
    name: str
    data: bytes
    count: int
    deferred: defer.Deferred[None] = field(default_factory=defer.Deferred)


class NSQProducer(_NSQService):
    """
    Publishes to one nsqd. See the module docstring.

    @ivar maxBuffered: how many messages may wait for a connection (and for re-sending).
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        *,
        options: IdentifyOptions = IdentifyOptions(),
        maxBuffered: int = 1000,
        stopTimeout: float = 5.0,
        retryPolicy: Callable[[int], float] | None = None,
        counters: NSQCounters | None = None,
        maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        super().__init__(endpoint, clock, options, retryPolicy, counters, maxFrameSize)
        self.maxBuffered = maxBuffered
        self.stopTimeout = stopTimeout
        self._retry: deque[_Publish] = deque()
        self._buffer: deque[_Publish] = deque()
        self._buffered = 0
        self._sent: set[_Publish] = set()
        self._stopped = False
        self._drained: defer.Deferred[None] | None = None

    @classmethod
    def fromAddress(cls, reactor: Any, address: str, **kwargs: Any) -> NSQProducer:
        return cls(endpointFromAddress(reactor, address), reactor, **kwargs)

    @property
    def buffered(self) -> int:
        """
        Messages waiting for a connection.
        """
        return self._buffered

    def publish(self, topic: str, body: bytes) -> defer.Deferred[None]:
        """
        Publish one message. Fires when nsqd acknowledged it; fails with L{NSQError} if nsqd
        refused it, L{PublishBufferFull} if it could not even be buffered, L{ProducerStopped}
        if the producer stopped first. Cancelling a buffered publish withdraws it.

        @raise ValueError: for an invalid topic or an empty body.
        """
        return self._submit(_Publish("PUB", commands.pub(topic, body), 1))

    def multiPublish(self, topic: str, bodies: Sequence[bytes]) -> defer.Deferred[None]:
        """
        Publish several messages with one MPUB (all or nothing); otherwise as L{publish}.
        """
        return self._submit(_Publish("MPUB", commands.mpub(topic, bodies), len(bodies)))

    def _submit(self, item: _Publish) -> defer.Deferred[None]:
        if self._stopped:
            return defer.fail(ProducerStopped("the NSQ producer is stopped"))
        p = self._protocol
        if p is not None and p.usable and not self._buffer and not self._retry:
            self._send(p, item)
        else:
            if self._buffered + item.count > self.maxBuffered:
                self.counters.count("bufferFull", item.count)
                return defer.fail(PublishBufferFull(
                    f"{self._buffered} messages are waiting for nsqd; refusing {item.count} more"))
            self._buffer.append(item)
            self._buffered += item.count
        result: defer.Deferred[None] = defer.Deferred(lambda _: self._withdraw(item))
        item.deferred.chainDeferred(result)
        return result

    def _withdraw(self, item: _Publish) -> None:
        for queue in (self._buffer, self._retry):
            if item in queue:
                queue.remove(item)
                self._buffered -= item.count
                self._checkDrained()
        # Already sent: nsqd's answer will find the Deferred called and be ignored.

    def _send(self, p: NSQProtocol, item: _Publish) -> None:
        self._sent.add(item)
        p.sendPublish(item.name, item.data).addCallbacks(
            self._acknowledged, self._notAcknowledged, callbackArgs=(item,), errbackArgs=(item,))

    def _acknowledged(self, _: bytes, item: _Publish) -> None:
        self._sent.discard(item)
        self.counters.count("published", item.count)
        if not item.deferred.called:
            item.deferred.callback(None)
        self._checkDrained()

    def _notAcknowledged(self, failure: Failure, item: _Publish) -> None:
        self._sent.discard(item)
        if failure.check(NSQConnectionLost, NotConnected) and not item.deferred.called:
            # nsqd may or may not have it: send it again (at least once).
            # Sent again on the next ready connection.
            self._retry.append(item)
            self._buffered += item.count
            return
        self.counters.count("publishFailed", item.count)
        if not item.deferred.called:
            item.deferred.errback(failure)
        self._checkDrained()

    def _connectionReady(self, p: NSQProtocol) -> None:
        self._flush(p)

    def _flush(self, p: NSQProtocol) -> None:
        if self._retry or self._buffer:
            self.log.info("Flushing {count} buffered NSQ messages", count=self._buffered)
        while (self._retry or self._buffer) and self._protocol is p and p.usable:
            item = (self._retry or self._buffer).popleft()
            self._buffered -= item.count
            self._send(p, item)
        self._checkDrained()

    def _checkDrained(self) -> None:
        if (self._drained is not None and not self._drained.called and not self._sent
                and not self._buffer and not self._retry):
            self._drained.callback(None)

    def stopService(self) -> defer.Deferred[None]:
        """
        Refuse new publishes, wait (at most C{stopTimeout}) until everything buffered and sent
        is acknowledged, fail what is left with L{ProducerStopped}, then disconnect.
        """
        super().stopService()
        self._stopped = True
        self._drained = defer.Deferred()
        self._checkDrained()
        d = self._drained.addTimeout(self.stopTimeout, self.clock)
        d.addErrback(self._abandon)
        d.addCallback(self._closeConnection)
        d.addCallback(self._stopClient)
        return d

    def _abandon(self, failure: Failure) -> None:
        failure.trap(defer.TimeoutError)
        left = list(self._retry) + list(self._buffer) + list(self._sent)
        self.log.warn("NSQ producer stopping with {count} unacknowledged messages",
                      count=sum(item.count for item in left))
        self._retry.clear()
        self._buffer.clear()
        self._sent.clear()
        self._buffered = 0
        for item in left:
            if not item.deferred.called:
                item.deferred.errback(ProducerStopped("stopped before nsqd acknowledged"))

    def _closeConnection(self, _: object) -> defer.Deferred[None] | None:
        p = self._protocol
        return p.close() if p is not None else None


class NSQConsumer(_NSQService):
    """
    Consumes one topic/channel from one nsqd.

    C{handler(message)} gets an L{NSQMessage} and may return a Deferred: success FINs the
    message, failure REQs it after C{requeueDelay(attempts)} milliseconds. Up to C{maxInFlight}
    messages are handled at once (the RDY window).
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        topic: str,
        channel: str,
        handler: MessageHandler,
        *,
        maxInFlight: int = 1,
        options: IdentifyOptions = IdentifyOptions(),
        requeueDelay: Callable[[int], int] = defaultRequeueDelay,
        maxAttempts: int | None = None,
        closeTimeout: float = 5.0,
        retryPolicy: Callable[[int], float] | None = None,
        counters: NSQCounters | None = None,
        maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        commands.sub(topic, channel)  # validate now rather than on every connection
        if maxInFlight < 0:
            raise ValueError("maxInFlight must be >= 0")
        super().__init__(endpoint, clock, options, retryPolicy, counters, maxFrameSize)
        self.topic = topic
        self.channel = channel
        self.handler = handler
        self.maxInFlight = maxInFlight
        self.requeueDelay = requeueDelay
        self.maxAttempts = maxAttempts
        self.closeTimeout = closeTimeout

    @classmethod
    def fromAddress(cls, reactor: Any, address: str, topic: str, channel: str,
                    handler: MessageHandler, **kwargs: Any) -> NSQConsumer:
        return cls(endpointFromAddress(reactor, address), reactor, topic, channel, handler,
                   **kwargs)

    def _protocolArguments(self) -> dict[str, Any]:
        return {"handler": self.handler, "requeueDelay": self.requeueDelay,
                "maxAttempts": self.maxAttempts}

    def _identified(self, p: NSQProtocol) -> None:
        if not self.running:
            self._ready(p)  # closes it
            return

        def subscribed(_: None) -> None:
            p.setReady(self.maxInFlight)
            self._ready(p)

        def failed(f: Failure) -> None:
            self.log.warn("SUB {topic}/{channel} failed: {error}", topic=self.topic,
                          channel=self.channel, error=f.getErrorMessage())

        p.subscribe(self.topic, self.channel).addCallbacks(subscribed, failed)

    def setMaxInFlight(self, maxInFlight: int) -> None:
        """
        Change the RDY window (0 pauses delivery); kept across reconnects.
        """
        self.maxInFlight = maxInFlight
        if self._protocol is not None:
            self._protocol.setReady(maxInFlight)

    def stopService(self) -> defer.Deferred[None]:
        """
        CLS, wait for CLOSE_WAIT (at most C{closeTimeout}), hand in-flight messages back to
        nsqd, disconnect.
        """
        super().stopService()
        p = self._protocol
        d = p.close(self.closeTimeout) if p is not None else defer.succeed(None)
        d.addCallback(self._stopClient)
        return d
