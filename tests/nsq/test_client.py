# -*- test-case-name: tests.nsq.test_client -*-
"""
L{hpchat.nsq.client} services with an in-memory endpoint, L{StringTransport}s and a clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from hpchat.nsq.client import (
    NSQConsumer,
    NSQProducer,
    ProducerStopped,
    PublishBufferFull,
    endpointFromAddress,
)
from hpchat.nsq.commands import NSQError
from hpchat.nsq.framing import FRAME_TYPE_ERROR, FRAME_TYPE_MESSAGE, Frame, Message
from hpchat.nsq.protocol import NSQMessage
from tests.nsq.wire import Wire

ID1 = b"0000000000000001"
OK = Frame(0, b"OK").encode()
IDENTIFIED = Frame(0, json.dumps({"max_rdy_count": 2500}).encode()).encode()


def message(messageId: bytes = ID1, body: bytes = b"body") -> bytes:
    return Frame(FRAME_TYPE_MESSAGE, Message(1, 1, messageId, body).encode()).encode()


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    Connection attempts wait until the test accepts or refuses them.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[Any, defer.Deferred[Any]]] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.attempts.append((factory, d))
        return d


class Connection(Wire):
    """
    One accepted connection: the protocol (as ClientService wraps it) and its transport.
    """

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport


class ServiceTestCase(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = MemoryEndpoint()

    def accept(self, identify: bool = True) -> Connection:
        """
        Accept the pending connection attempt (and answer IDENTIFY).
        """
        factory, d = self.endpoint.attempts.pop(0)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        d.callback(protocol)
        c = Connection(protocol, transport)
        self.assertTrue(c.written().startswith(b"  V2IDENTIFY\n"))
        if identify:
            c.receive(IDENTIFIED)
        return c

    def stop(self, service: Any) -> None:
        d = service.stopService()
        self.clock.advance(60)
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ProducerTests(ServiceTestCase):
    """
    L{NSQProducer}: buffering, flushing, resending, stopping.
    """

    def producer(self, **kwargs: Any) -> NSQProducer:
        kwargs.setdefault("retryPolicy", lambda attempt: 1.0)
        p = NSQProducer(self.endpoint, self.clock, **kwargs)
        p.startService()
        return p

    def test_bufferedUntilReady(self) -> None:
        """
        Publishes made before a connection is ready wait in the buffer and go out, in order,
        once it is.
        """
        p = self.producer()
        d1 = p.publish("t", b"one")
        d2 = p.multiPublish("t", [b"two", b"three"])
        self.assertEqual(p.buffered, 3)
        c = self.accept(identify=False)
        self.assertEqual(c.written(), b"")
        c.receive(IDENTIFIED)
        self.assertEqual(c.written(), b"PUB t\n\x00\x00\x00\x03one" + b"MPUB t\n\x00\x00\x00\x14"
                         b"\x00\x00\x00\x02\x00\x00\x00\x03two\x00\x00\x00\x05three")
        self.assertEqual(p.buffered, 0)
        self.assertNoResult(d1)
        c.receive(OK + OK)
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.assertEqual(p.counters.published, 3)
        self.stopConnected(p, c)

    def stopConnected(self, p: NSQProducer, c: Connection) -> None:
        d = p.stopService()
        self.assertTrue(c.transport.disconnecting)
        c.lose()
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_direct(self) -> None:
        """
        With a ready connection a publish is written at once.
        """
        p = self.producer()
        c = self.accept()
        self.assertIs(self.successResultOf(p.whenReady()), p.protocol)
        d = p.publish("t", b"x")
        self.assertEqual(c.written(), b"PUB t\n\x00\x00\x00\x01x")
        c.receive(OK)
        self.successResultOf(d)
        self.stopConnected(p, c)

    def test_bufferFull(self) -> None:
        """
        Beyond maxBuffered messages, publishing fails fast with L{PublishBufferFull}.
        """
        p = self.producer(maxBuffered=3)
        kept = [p.publish("t", b"1"), p.multiPublish("t", [b"2", b"3"])]
        self.failureResultOf(p.publish("t", b"4"), PublishBufferFull)
        self.failureResultOf(p.multiPublish("t", [b"4", b"5"]), PublishBufferFull)
        self.assertEqual(p.counters.bufferFull, 3)
        self.assertEqual(p.buffered, 3)
        c = self.accept()
        c.receive(OK + OK)
        for d in kept:
            self.successResultOf(d)
        self.stopConnected(p, c)

    def test_invalid(self) -> None:
        p = self.producer()
        self.assertRaises(ValueError, p.publish, "bad topic", b"x")
        self.assertRaises(ValueError, p.publish, "t", b"")
        self.assertEqual(p.buffered, 0)
        self.stop(p)

    def test_resentAfterLoss(self) -> None:
        """
        A publish unacknowledged when the connection drops is sent again on the next one.
        """
        p = self.producer()
        c = self.accept()
        d = p.publish("t", b"x")
        c.written()
        c.lose()
        self.assertNoResult(d)
        self.assertEqual(p.buffered, 1)
        self.assertIsNone(p.protocol)
        self.clock.advance(1.0)
        c2 = self.accept()
        self.assertEqual(c2.written(), b"PUB t\n\x00\x00\x00\x01x")
        c2.receive(OK)
        self.successResultOf(d)
        self.assertEqual(p.counters.connections, 2)
        self.stopConnected(p, c2)

    def test_errorNotRetried(self) -> None:
        """
        A publish nsqd refused fails with its error and is not sent again; the producer
        reconnects.
        """
        p = self.producer()
        c = self.accept()
        d = p.publish("t", b"x")
        c.receive(Frame(FRAME_TYPE_ERROR, b"E_BAD_MESSAGE too big").encode())
        self.assertEqual(self.failureResultOf(d, NSQError).value.code, "E_BAD_MESSAGE")
        self.assertTrue(c.transport.disconnecting)
        c.lose()
        self.assertEqual(p.buffered, 0)
        self.assertEqual(p.counters.publishFailed, 1)
        self.clock.advance(1.0)
        c2 = self.accept()
        self.assertEqual(c2.written(), b"")
        self.stopConnected(p, c2)

    def test_cancelBuffered(self) -> None:
        """
        Cancelling a buffered publish withdraws it.
        """
        p = self.producer()
        d = p.publish("t", b"x")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(p.buffered, 0)
        c = self.accept()
        self.assertEqual(c.written(), b"")
        self.stopConnected(p, c)

    def test_stopWaitsForAcknowledgement(self) -> None:
        """
        stopService waits for outstanding publishes, then closes; later publishes are refused.
        """
        p = self.producer()
        c = self.accept()
        d = p.publish("t", b"x")
        stopped = p.stopService()
        self.failureResultOf(p.publish("t", b"y"), ProducerStopped)
        self.assertFalse(c.transport.disconnecting)
        c.receive(OK)
        self.successResultOf(d)
        self.assertTrue(c.transport.disconnecting)
        self.assertNoResult(stopped)
        c.lose()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopTimeout(self) -> None:
        """
        What is still unacknowledged after stopTimeout fails with L{ProducerStopped}.
        """
        p = self.producer(stopTimeout=2.0)
        d = p.publish("t", b"x")
        stopped = p.stopService()
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.failureResultOf(d, ProducerStopped)
        self.successResultOf(stopped)
        self.assertEqual(p.buffered, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_whenReadyCancelledOnStop(self) -> None:
        p = self.producer()
        d = p.whenReady()
        self.assertNoResult(d)
        self.stop(p)
        self.failureResultOf(d, defer.CancelledError)

    def test_whenReadyCancel(self) -> None:
        p = self.producer()
        d = p.whenReady()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        c = self.accept()
        self.stopConnected(p, c)

    def test_connectionRefused(self) -> None:
        """
        A failed connection attempt is retried after the retry policy's delay.
        """
        p = self.producer()
        _, d = self.endpoint.attempts.pop(0)
        d.errback(ConnectionRefusedError())
        self.assertEqual(self.endpoint.attempts, [])
        self.clock.advance(1.0)
        c = self.accept()
        self.assertIsNotNone(p.protocol)
        self.stopConnected(p, c)


class ConsumerTests(ServiceTestCase):
    """
    L{NSQConsumer}: SUB and RDY on every connection, CLS on stop.
    """

    def setUp(self) -> None:
        super().setUp()
        self.received: list[NSQMessage] = []

    def handler(self, msg: NSQMessage) -> defer.Deferred[None]:
        self.received.append(msg)
        return defer.Deferred()

    def consumer(self, **kwargs: Any) -> NSQConsumer:
        kwargs.setdefault("retryPolicy", lambda attempt: 1.0)
        c = NSQConsumer(self.endpoint, self.clock, "topic", "hpchat", self.handler, **kwargs)
        c.startService()
        return c

    def subscribe(self, c: Connection, rdy: bytes) -> None:
        self.assertEqual(c.written(), b"SUB topic hpchat\n")
        c.receive(OK)
        self.assertEqual(c.written(), b"RDY " + rdy + b"\n")

    def test_subscribeAndReady(self) -> None:
        """
        Once identified: SUB, then (after its C{OK}) RDY maxInFlight; then it is ready.
        """
        consumer = self.consumer(maxInFlight=4)
        ready = consumer.whenReady()
        c = self.accept()
        self.assertNoResult(ready)
        self.subscribe(c, b"4")
        self.assertIs(self.successResultOf(ready), consumer.protocol)
        c.receive(message())
        self.assertEqual([m.body for m in self.received], [b"body"])
        self.assertEqual(consumer.counters.consumed, 1)
        self.stopConnected(consumer, c)

    def stopConnected(self, consumer: NSQConsumer, c: Connection) -> None:
        d = consumer.stopService()
        c.written()
        c.receive(Frame(0, b"CLOSE_WAIT").encode())
        c.lose()
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resubscribeOnReconnect(self) -> None:
        """
        A new connection gets SUB and RDY again, with the current maxInFlight.
        """
        consumer = self.consumer(maxInFlight=2)
        c = self.accept()
        self.subscribe(c, b"2")
        consumer.setMaxInFlight(3)
        self.assertEqual(c.written(), b"RDY 3\n")
        c.lose()
        self.assertIsNone(consumer.protocol)
        self.clock.advance(1.0)
        c2 = self.accept()
        self.subscribe(c2, b"3")
        self.assertEqual(consumer.counters.connections, 2)
        self.stopConnected(consumer, c2)

    def test_subscribeRefused(self) -> None:
        """
        A refused SUB drops the connection; the consumer tries again later.
        """
        consumer = self.consumer()
        c = self.accept()
        c.written()
        c.receive(Frame(FRAME_TYPE_ERROR, b"E_SUB_FAILED nope").encode())
        self.assertTrue(c.transport.disconnecting)
        self.assertIsNone(consumer.protocol)
        c.lose()
        self.clock.advance(1.0)
        c2 = self.accept()
        self.subscribe(c2, b"1")
        self.stopConnected(consumer, c2)

    def test_stopSendsCLS(self) -> None:
        """
        stopService: CLS, CLOSE_WAIT, in-flight messages REQed at once, disconnect, and no
        reconnect.
        """
        consumer = self.consumer()
        c = self.accept()
        self.subscribe(c, b"1")
        c.receive(message())
        d = consumer.stopService()
        self.assertEqual(c.written(), b"CLS\n")
        c.receive(Frame(0, b"CLOSE_WAIT").encode())
        self.assertEqual(c.written(), b"REQ " + ID1 + b" 0\n")
        self.assertTrue(c.transport.disconnecting)
        self.assertNoResult(d)
        c.lose()
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.endpoint.attempts, [])

    def test_stopWithoutCloseWait(self) -> None:
        """
        Without CLOSE_WAIT, stopping still ends after the close timeout.
        """
        consumer = self.consumer(closeTimeout=3.0)
        c = self.accept()
        self.subscribe(c, b"1")
        d = consumer.stopService()
        self.clock.advance(3.0)
        self.assertTrue(c.transport.disconnecting)
        c.lose()
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWhileConnecting(self) -> None:
        consumer = self.consumer()
        self.stop(consumer)
        self.assertIsNone(consumer.protocol)

    def test_stopWhileSubscribing(self) -> None:
        """
        Stopping between IDENTIFY and SUB's C{OK} closes the connection.
        """
        consumer = self.consumer()
        c = self.accept()
        d = consumer.stopService()
        self.assertTrue(c.transport.disconnecting)
        c.lose()
        self.successResultOf(d)
        self.assertIsNone(consumer.protocol)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_invalidNames(self) -> None:
        self.assertRaises(ValueError, NSQConsumer, self.endpoint, self.clock, "bad topic", "c",
                          self.handler)
        self.assertRaises(ValueError, NSQConsumer, self.endpoint, self.clock, "t", "",
                          self.handler)


class AddressTests(SynchronousTestCase):

    def test_endpointFromAddress(self) -> None:
        reactor = MemoryReactorClock()
        endpoint = endpointFromAddress(reactor, "127.0.0.1:4150")
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        for bad in ("127.0.0.1", ":4150", "host:port", "host:"):
            self.assertRaises(ValueError, endpointFromAddress, reactor, bad)

    def test_fromAddress(self) -> None:
        """
        The services log the address they connect to.
        """
        reactor = MemoryReactorClock()
        producer = NSQProducer.fromAddress(reactor, "10.0.0.1:4150")
        self.assertEqual(producer.address, "10.0.0.1:4150")
        consumer = NSQConsumer.fromAddress(reactor, "10.0.0.2:4150", "t", "c", lambda m: None)
        self.assertEqual(consumer.address, "10.0.0.2:4150")
