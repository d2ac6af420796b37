# -*- test-case-name: tests.nsq.test_integration -*-
"""
L{hpchat.nsq.client} against a real nsqd (C{tools/nsqd/build.sh}; skipped without the binary).

Timing: every test starts its own nsqd (about 50 ms). Redelivery goes through REQ 0, never
through msg_timeout or a delayed REQ, because nsqd scans for those only on channels it knew at
its last 5-second refresh (reference/nsq.md §2.3).
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from hpchat.nsq import commands
from hpchat.nsq.client import NSQConsumer, NSQProducer
from hpchat.nsq.commands import IdentifyOptions, NSQError
from hpchat.nsq.protocol import NSQMessage
from tests.support.nsqd import NSQD

TIMEOUT = 10.0


def fastRetry(attempt: int) -> float:
    return 0.1


@defer.inlineCallbacks
def waitFor(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    """
    Poll C{predicate} (which may return a Deferred) every 20 ms until it is true.
    """
    deadline = reactor.seconds() + timeout
    while True:
        result = yield defer.maybeDeferred(predicate)
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        yield task.deferLater(reactor, 0.02, lambda: None)


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class Inbox:
    """
    A handler that records messages; C{hold} makes it return a Deferred per message that the
    test fires (C{release}); C{failFirst} fails first deliveries.
    """

    def __init__(self, hold: bool = False, failFirst: bool = False) -> None:
        self.hold = hold
        self.failFirst = failFirst
        self.messages: list[NSQMessage] = []
        self.held: list[defer.Deferred[None]] = []
        self.queue: defer.DeferredQueue[NSQMessage] = defer.DeferredQueue()

    def __call__(self, message: NSQMessage) -> Any:
        # The queue wakes the test synchronously, so record everything before.
        self.messages.append(message)
        result: defer.Deferred[None] | None = None
        if self.hold:
            result = defer.Deferred()
            self.held.append(result)
        self.queue.put(message)
        if self.failFirst and message.attempts == 1:
            raise RuntimeError("failing the first attempt")
        return result

    def next(self, timeout: float = TIMEOUT) -> defer.Deferred[NSQMessage]:
        return self.queue.get().addTimeout(timeout, reactor)

    def release(self) -> None:
        held, self.held = self.held, []
        for d in held:
            d.callback(None)


class IntegrationTests(unittest.TestCase):
    """
    Producer and consumer services against a real nsqd.
    """

    nsqdArgs: list[str] = ["--msg-timeout=5s"]

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.nsqd = NSQD(reactor, self.nsqdArgs)
        self.addCleanup(self.nsqd.cleanup)
        yield self.nsqd.start()
        self.topic = f"test.{uuid.uuid4().hex[:12]}"
        self.channel = "hpchat"

    def producer(self, **kwargs: Any) -> NSQProducer:
        kwargs.setdefault("retryPolicy", fastRetry)
        p = NSQProducer.fromAddress(reactor, self.nsqd.tcpAddress, **kwargs)
        p.startService()
        self.addCleanup(p.stopService)
        return p

    def consumer(self, handler: Any, **kwargs: Any) -> NSQConsumer:
        kwargs.setdefault("retryPolicy", fastRetry)
        c = NSQConsumer.fromAddress(reactor, self.nsqd.tcpAddress, self.topic, self.channel,
                                    handler, **kwargs)
        c.startService()
        self.addCleanup(lambda: c.stopService() if c.running else None)
        return c

    @defer.inlineCallbacks
    def test_messagesGoToDisk(self) -> Any:
        """
        The test nsqd runs with --mem-queue-size=0, as deployments must: a message it has
        acknowledged is in its disk queue, not in memory.
        """
        self.assertIn("--mem-queue-size=0", self.nsqd.arguments())
        yield self.nsqd.pub(self.topic, b"kept")
        stats = yield self.nsqd.stats(self.topic)
        self.assertEqual((stats["depth"], stats["backend_depth"]), (1, 1))

    @defer.inlineCallbacks
    def test_publishAndConsume(self) -> Any:
        """
        Messages published with PUB and MPUB reach a consumer, which FINs them.
        """
        inbox = Inbox()
        consumer = self.consumer(inbox)
        yield consumer.whenReady().addTimeout(TIMEOUT, reactor)
        producer = self.producer()
        yield producer.publish(self.topic, b"one").addTimeout(TIMEOUT, reactor)
        yield producer.multiPublish(self.topic, [b"two", b"three"]).addTimeout(TIMEOUT, reactor)
        bodies = set()
        for _ in range(3):
            message = yield inbox.next()
            self.assertEqual(message.attempts, 1)
            self.assertEqual(len(message.id), 16)
            bodies.add(message.body)
        self.assertEqual(bodies, {b"one", b"two", b"three"})
        self.assertEqual(producer.counters.published, 3)
        yield waitFor(lambda: consumer.counters.finished == 3, what="3 FINs")
        stats = yield waitFor(lambda: self.nsqd.channelStats(self.topic, self.channel).addCallback(
            lambda c: c if c.get("message_count") == 3 and c["in_flight_count"] == 0 else None))
        self.assertEqual(stats["requeue_count"], 0)
        client = stats["clients"][0]
        self.assertEqual(client["user_agent"], commands.USER_AGENT)
        self.assertEqual(client["finish_count"], 3)

    @defer.inlineCallbacks
    def test_readyWindow(self) -> Any:
        """
        With maxInFlight=2 and a handler that holds its messages, nsqd has at most two in
        flight; releasing them lets the rest through.
        """
        inbox = Inbox(hold=True)
        consumer = self.consumer(inbox, maxInFlight=2)
        yield consumer.whenReady().addTimeout(TIMEOUT, reactor)
        producer = self.producer()
        yield producer.multiPublish(self.topic, [b"m%d" % i for i in range(5)])
        yield inbox.next()
        yield inbox.next()
        # Well beyond the 25 ms output buffer timeout we asked for.
        yield sleep(0.3)
        self.assertEqual(len(inbox.messages), 2)
        stats = yield self.nsqd.channelStats(self.topic, self.channel)
        self.assertEqual(stats["in_flight_count"], 2)
        self.assertEqual(stats["clients"][0]["ready_count"], 2)
        seen = 2
        while seen < 5:
            inbox.release()
            yield inbox.next()
            seen += 1
            self.assertLessEqual(len(inbox.held), 2)
        inbox.release()
        self.assertEqual(sorted(m.body for m in inbox.messages), [b"m%d" % i for i in range(5)])
        yield waitFor(lambda: consumer.counters.finished == 5, what="5 FINs")

    @defer.inlineCallbacks
    def test_requeue(self) -> Any:
        """
        A handler failing on the first delivery REQs the message, which comes back with
        attempts == 2 and is then FINed.
        """
        delays = []

        def requeueDelay(attempts: int) -> int:
            delays.append(attempts)
            return 0

        inbox = Inbox(failFirst=True)
        consumer = self.consumer(inbox, requeueDelay=requeueDelay)
        yield consumer.whenReady().addTimeout(TIMEOUT, reactor)
        yield self.producer().publish(self.topic, b"again")
        first = yield inbox.next()
        second = yield inbox.next()
        self.assertEqual((first.attempts, second.attempts), (1, 2))
        self.assertEqual(first.id, second.id)
        self.assertEqual(second.body, b"again")
        self.assertEqual(delays, [1])
        self.assertEqual(consumer.counters.requeued, 1)
        yield waitFor(lambda: consumer.counters.finished == 1, what="FIN")
        stats = yield self.nsqd.channelStats(self.topic, self.channel)
        self.assertEqual(stats["requeue_count"], 1)

    @defer.inlineCallbacks
    def test_restart(self) -> Any:
        """
        nsqd restarted: producer and consumer reconnect (the consumer re-SUBs and re-RDYs) and
        carry on; a publish made while nsqd is down waits in the buffer.
        """
        inbox = Inbox()
        consumer = self.consumer(inbox, maxInFlight=3)
        yield consumer.whenReady().addTimeout(TIMEOUT, reactor)
        producer = self.producer()
        yield producer.publish(self.topic, b"before")
        self.assertEqual((yield inbox.next()).body, b"before")
        # Else nsqd may save "before" as in flight and deliver it again after the restart.
        yield waitFor(lambda: self.nsqd.channelStats(self.topic, self.channel).addCallback(
            lambda c: c.get("in_flight_count") == 0), what="the FIN to reach nsqd")

        yield self.nsqd.stop()
        yield waitFor(lambda: producer.protocol is None and consumer.protocol is None,
                      what="disconnect")
        during = producer.publish(self.topic, b"during")
        self.assertEqual(producer.buffered, 1)
        yield self.nsqd.start()

        yield during.addTimeout(TIMEOUT, reactor)
        yield producer.publish(self.topic, b"after")
        bodies = {(yield inbox.next()).body, (yield inbox.next()).body}
        self.assertEqual(bodies, {b"during", b"after"})
        self.assertEqual(consumer.counters.connections, 2)
        self.assertEqual(producer.counters.connections, 2)
        stats = yield self.nsqd.channelStats(self.topic, self.channel)
        self.assertEqual(stats["clients"][0]["ready_count"], 3)

    @defer.inlineCallbacks
    def test_stopSendsCLS(self) -> Any:
        """
        Stopping a consumer sends CLS; the message its handler still holds is not FINed but
        handed back, and a new consumer gets it (attempts == 2) without waiting for the
        msg_timeout.
        """
        held = Inbox(hold=True)
        first = self.consumer(held)
        yield first.whenReady().addTimeout(TIMEOUT, reactor)
        yield self.producer().publish(self.topic, b"held")
        message = yield held.next()
        protocol = first.protocol
        start = reactor.seconds()
        yield first.stopService().addTimeout(TIMEOUT, reactor)
        self.assertTrue(protocol.closing)
        self.assertFalse(protocol.connected)
        self.assertEqual(first.counters.finished, 0)
        self.assertEqual(first.counters.requeued, 1)
        held.release()  # too late: ignored
        self.assertEqual(first.counters.finished, 0)

        inbox = Inbox()
        self.consumer(inbox)
        again = yield inbox.next()
        self.assertEqual((again.id, again.body, again.attempts), (message.id, b"held", 2))
        self.assertLess(reactor.seconds() - start, 4.0)

    @defer.inlineCallbacks
    def test_httpPublish(self) -> Any:
        """
        A message published through nsqd's HTTP /pub (as other services do) is consumed.
        """
        inbox = Inbox()
        consumer = self.consumer(inbox)
        yield consumer.whenReady().addTimeout(TIMEOUT, reactor)
        body = json.dumps({"id": "n1", "user": "bob", "type": "flirt", "from": "alice",
                           "data": {}}).encode()
        self.assertEqual((yield self.nsqd.pub(self.topic, body)), b"OK")
        message = yield inbox.next()
        self.assertEqual(json.loads(message.body)["id"], "n1")

    @defer.inlineCallbacks
    def test_heartbeat(self) -> Any:
        """
        nsqd's heartbeats (every second, as we asked) are answered with NOP, which keeps the
        connection past nsqd's read deadline (two intervals).
        """
        consumer = self.consumer(Inbox(), options=IdentifyOptions(heartbeatInterval=1000))
        protocol = yield consumer.whenReady().addTimeout(TIMEOUT, reactor)
        yield waitFor(lambda: consumer.counters.heartbeats >= 3, what="3 heartbeats")
        self.assertIs(consumer.protocol, protocol)
        self.assertTrue(protocol.connected)
        self.assertEqual(consumer.counters.livenessTimeouts, 0)

    @defer.inlineCallbacks
    def test_nonFatalError(self) -> Any:
        """
        FIN of a message we do not hold gets E_FIN_FAILED, which leaves the connection open.
        """
        consumer = self.consumer(Inbox())
        protocol = yield consumer.whenReady().addTimeout(TIMEOUT, reactor)
        protocol.transport.write(commands.fin(b"0123456789abcdef"))
        yield waitFor(lambda: consumer.counters.nonFatalErrors == 1, what="E_FIN_FAILED")
        inbox = consumer.handler
        yield self.producer().publish(self.topic, b"still here")
        self.assertEqual((yield inbox.next()).body, b"still here")
        self.assertIs(consumer.protocol, protocol)
        self.assertEqual(consumer.counters.connections, 1)


class FatalErrorTests(unittest.TestCase):
    """
    A fatal error from nsqd fails the matching publish, and the producer reconnects.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.nsqd = NSQD(reactor, ["--max-msg-size=1024"])
        self.addCleanup(self.nsqd.cleanup)
        yield self.nsqd.start()

    @defer.inlineCallbacks
    def test_messageTooBig(self) -> Any:
        """
        A message over --max-msg-size gets E_BAD_MESSAGE: that publish fails, nsqd closes the
        connection, the producer reconnects and the next publish goes through.
        """
        producer = NSQProducer.fromAddress(reactor, self.nsqd.tcpAddress, retryPolicy=fastRetry)
        producer.startService()
        self.addCleanup(producer.stopService)
        yield producer.whenReady().addTimeout(TIMEOUT, reactor)
        error = yield self.assertFailure(producer.publish("big", b"x" * 2000), NSQError)
        self.assertEqual(error.code, "E_BAD_MESSAGE")
        yield producer.publish("big", b"small").addTimeout(TIMEOUT, reactor)
        self.assertEqual(producer.counters.fatalErrors, 1)
        self.assertEqual(producer.counters.publishFailed, 1)
        self.assertEqual(producer.counters.published, 1)
        self.assertEqual(producer.counters.connections, 2)
