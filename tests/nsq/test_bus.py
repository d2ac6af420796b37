"""
The NSQ notification bus: what it publishes and how its handler settles messages.
"""

from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat import metrics
from hpchat.config import NSQConfig
from hpchat.nsq.bus import NSQNotifier, requeueDelay
from hpchat.storage.base import Event


class FakeMessage:
    def __init__(self, body, attempts=1):
        self.id = b"0123456789abcdef"
        self.body = body
        self.attempts = attempts


class BusTests(SynchronousTestCase):
    def setUp(self):
        self.delivered = []
        self.outcome = None
        config = NSQConfig(nsqd_tcp=("127.0.0.1:4150", "127.0.0.1:4250"),
                           topic="hpchat.notifications", channel="hpchat", max_in_flight=10)
        self.bus = NSQNotifier(task.Clock(), config, self.deliver, "n1")
        self.published = []
        self.bus.producer.publish = lambda topic, body: (self.published.append((topic, body))
                                                         or defer.succeed(None))

    def deliver(self, notification):
        self.delivered.append(notification)
        return self.outcome if self.outcome is not None else defer.succeed(None)

    def test_consumersForEveryNsqd(self):
        """
        One consumer per nsqd, on the shared channel with the configured window.
        """
        self.assertEqual([(c.topic, c.channel, c.maxInFlight) for c in self.bus.consumers],
                         [("hpchat.notifications", "hpchat", 10)] * 2)

    def test_publishesMessageNotifications(self):
        """
        A committed conversation message publishes the recipient's notification.
        """
        self.bus.messageCommitted(Event("dm:alice:bob", 3, "e1", 1, "message", "alice", 1.0,
                                        None, {"text": "hi"}))
        [(topic, body)] = self.published
        self.assertEqual(topic, "hpchat.notifications")
        self.assertEqual(json.loads(body)["user"], "bob")

    def test_validIsDeliveredAndSettledByTheOutcome(self):
        """
        A valid body is delivered; the handler's Deferred carries the outcome (FIN or REQ).
        """
        body = b'{"id": "f", "user": "bob", "type": "flirt"}'
        self.successResultOf(self.bus.handle(FakeMessage(body)))
        self.assertEqual(self.delivered[0].id, "f")
        self.outcome = defer.fail(RuntimeError("owner unreachable"))
        self.failureResultOf(self.bus.handle(FakeMessage(body, attempts=2)), RuntimeError)

    def test_malformedIsCountedAndFinished(self):
        """
        A malformed body is counted and FINed (the handler succeeds), never delivered.
        """
        before = metrics.malformedNotifications._value.get()
        self.assertIsNone(self.bus.handle(FakeMessage(b"{nope")))
        self.assertEqual(metrics.malformedNotifications._value.get(), before + 1)
        self.assertEqual(self.delivered, [])

    def test_requeueDelayGrows(self):
        """
        Requeue delays start at half a second and double up to 30 s.
        """
        self.assertEqual([requeueDelay(a) for a in (1, 2, 3, 10)], [500, 1000, 2000, 30000])
