"""
The NSQ notification bus: what it publishes and how its handler settles messages.
"""

from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat import metrics
from hpchat.config import NSQConfig
from hpchat.notify import outboxEntry
from hpchat.nsq.bus import NoLongerHeld, NSQNotifier, retryDelay
from hpchat.storage.base import Event


class FakeMessage:
    def __init__(self, body, attempts=1):
        self.id = b"0123456789abcdef"
        self.body = body
        self.attempts = attempts
        self.inFlight = True
        self.connected = True
        self.touches: list[float] = []
        self.clock = None

    def touch(self):
        self.touches.append(self.clock.seconds() if self.clock else 0.0)


class BusTests(SynchronousTestCase):
    def setUp(self):
        self.delivered = []
        self.outcome = None
        config = NSQConfig(nsqd_tcp=("127.0.0.1:4150", "127.0.0.1:4250"),
                           topic="hpchat.notifications", channel="hpchat", max_in_flight=10)
        self.clock = task.Clock()
        self.bus = NSQNotifier(self.clock, config, self.deliver, "n1")
        self.published = []
        self.bus.producer.publish = lambda topic, body: (self.published.append((topic, body))
                                                         or defer.succeed(None))

    def deliver(self, notification):
        self.delivered.append(notification)
        outcome, self.outcome = self.outcome, None
        if isinstance(outcome, list):
            outcome, self.outcome = outcome[0], outcome[1:] or None
        return outcome if outcome is not None else defer.succeed(None)

    def message(self, body, attempts=1):
        m = FakeMessage(body, attempts)
        m.clock = self.clock
        return m

    def test_consumersForEveryNsqd(self):
        """
        One consumer per nsqd, on the shared channel with the configured window.
        """
        self.assertEqual([(c.topic, c.channel, c.maxInFlight) for c in self.bus.consumers],
                         [("hpchat.notifications", "hpchat", 10)] * 2)

    def test_publishesOutboxEntries(self):
        """
        An outbox entry of a committed conversation message is published as the recipient's
        notification.
        """
        entry = outboxEntry(Event("dm:alice:bob", 3, "e1", 1, "message", "alice", 1.0, None,
                                  {"text": "hi"}))
        self.successResultOf(self.bus.publishEntry(entry))
        [(topic, body)] = self.published
        self.assertEqual(topic, "hpchat.notifications")
        self.assertEqual(json.loads(body)["user"], "bob")

    def test_validIsDeliveredAndSettledByTheOutcome(self):
        """
        A valid body is delivered; the handler's Deferred carries the outcome (FIN or REQ).
        """
        body = b'{"id": "f", "user": "bob", "type": "flirt"}'
        self.successResultOf(self.bus.handle(self.message(body)))
        self.assertEqual(self.delivered[0].id, "f")

    def test_undeliverableIsHeldTouchedAndRetried(self):
        """
        A notification that cannot be delivered yet stays in flight: it is TOUCHed before its
        msg_timeout and tried again with growing delays, and FINed once delivered; it is
        never handed back to nsqd with a delay.
        """
        body = b'{"id": "f", "user": "bob", "type": "flirt"}'
        self.outcome = [defer.fail(RuntimeError("owner unreachable"))] * 7
        message = self.message(body)
        d = self.bus.handle(message)
        # Retries after 0.5, 1, 2, 4, 5, 5 and 5 s: the eighth attempt at 22.5 s succeeds.
        self.clock.pump([0.5] * 44)
        self.assertEqual(len(self.delivered), 7)
        self.assertEqual(self.bus.holding, 1)
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.assertEqual(len(self.delivered), 8)
        self.successResultOf(d)
        self.assertEqual(self.bus.holding, 0)
        # Three TOUCHes per msg_timeout (3 s), every second.
        self.assertEqual(len(message.touches), 22)
        self.assertTrue(all(0 < b - a < self.bus.msgTimeout / 1000 / 2 for a, b in
                            zip([0.0] + message.touches, message.touches)), message.touches)
        self.clock.advance(60)
        self.assertEqual(len(message.touches), 22)
        self.assertEqual([c.requeueDelay(5) for c in self.bus.consumers], [0, 0])

    def test_handedBackStopsRetrying(self):
        """
        Once the message is no longer held (the consumer stopped and REQed it with no delay),
        retrying and touching stop and the handler fails.
        """
        self.outcome = [defer.fail(RuntimeError("owner unreachable"))] * 5
        message = self.message(b'{"id": "f", "user": "bob", "type": "flirt"}')
        d = self.bus.handle(message)
        message.inFlight = False
        self.clock.advance(0.5)
        self.failureResultOf(d, NoLongerHeld)
        self.clock.advance(60)
        self.assertEqual((len(self.delivered), message.touches), (1, []))
        # REQed on its own connection: back in nsqd, not published again.
        self.assertEqual(self.published, [])

    def test_connectionLostKeepsDelivering(self):
        """
        A message whose nsqd connection broke while the consumers still run (nsqd killed:
        it kept the message in memory only) is still delivered until it is durable, not
        dropped; the inbox deduplicates it if nsqd delivers it again.
        """
        for consumer in self.bus.consumers:
            consumer.running = True
        self.outcome = [defer.fail(RuntimeError("owner unreachable"))] * 2
        message = self.message(b'{"id": "f", "user": "bob", "type": "flirt"}')
        d = self.bus.handle(message)
        message.inFlight = message.connected = False
        self.clock.advance(0.5)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.successResultOf(d)
        self.assertEqual(len(self.delivered), 3)
        self.assertEqual(message.touches, [])
        # nsqd may have lost it with the connection: it was published again, once.
        self.assertEqual(self.published, [("hpchat.notifications", message.body)])

    def test_connectionLostAtStopPublishedAgain(self):
        """
        A held notification whose connection broke is published again before the node lets
        it go at stop (it cannot be REQed on a closed connection).
        """
        self.outcome = [defer.fail(RuntimeError("owner unreachable"))] * 3
        message = self.message(b'{"id": "f", "user": "bob", "type": "flirt"}')
        d = self.bus.handle(message)
        message.inFlight = message.connected = False
        self.clock.advance(0.5)
        self.failureResultOf(d, NoLongerHeld)
        self.assertEqual(self.published, [("hpchat.notifications", message.body)])
        self.assertEqual(self.bus.holding, 0)

    def test_malformedIsCountedAndFinished(self):
        """
        A malformed body is counted and FINed (the handler succeeds), never delivered.
        """
        before = metrics.malformedNotifications._value.get()
        self.assertIsNone(self.bus.handle(self.message(b"{nope")))
        self.assertIsNone(self.bus.handle(self.message(b'{"id": "f", "user": "bob", '
                                                       b'"type": "flirt", "data": {"x": NaN}}')))
        self.assertEqual(metrics.malformedNotifications._value.get(), before + 2)
        self.assertEqual(self.delivered, [])

    def test_retryDelayGrows(self):
        """
        Retry delays start at half a second and double up to 5 s.
        """
        self.assertEqual([retryDelay(a) for a in (1, 2, 3, 10)], [500, 1000, 2000, 5000])
