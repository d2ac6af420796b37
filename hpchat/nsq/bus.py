# -*- test-case-name: tests.nsq.test_bus -*-
"""
Inbox notifications over NSQ, the site's message bus (DESIGN.md §6).

Every node publishes a C{message} notification when a conversation message commits, and every
node consumes the topic on the shared, durable channel. The node that gets a notification
routes it to the owner of the user's inbox (itself or another node) and FINs it only once it is
durable there; on failure it is requeued with a growing delay. Malformed bodies are logged,
counted and FINed, never requeued.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from hpchat import metrics
from hpchat.notify import BadNotification, messageNotification, parseNotification
from hpchat.nsq.client import NSQConsumer, NSQProducer
from hpchat.nsq.commands import IdentifyOptions
from hpchat.nsq.protocol import NSQCounters


class PrometheusCounters(NSQCounters):
    """
    The NSQ client's counters, also exported as C{hpchat_nsq_total{event=...}}.
    """

    def count(self, name: str, n: int = 1) -> None:
        super().count(name, n)
        metrics.nsqEvents.labels(name).inc(n)


def requeueDelay(attempts: int) -> int:
    """
    Milliseconds before a failed notification is tried again: 0.5 s, 1 s, 2 s, ... 30 s. A
    failover takes a lease TTL, so the first retries come soon.
    """
    return min(30_000, 500 * 2 ** max(0, attempts - 1))


class NSQNotifier:
    """
    The producer (C{producer}) and one consumer per nsqd (C{consumers}), services that the
    node's wiring places: the producer stops after the last batch is written, the consumers
    before the streams stop.
    """

    log = Logger()

    def __init__(self, reactor, config, deliver, nodeId: str):
        self.topic = config.topic
        self._deliver = deliver
        counters = PrometheusCounters()
        self.counters = counters
        # Unbuffered output: nsqd writes each message at once instead of holding it for
        # up to output_buffer_timeout, which would add 25 ms or more to every notification.
        options = IdentifyOptions(clientId=nodeId, outputBufferTimeout=None,
                                  outputBufferSize=-1, heartbeatInterval=10_000,
                                  msgTimeout=30_000)
        self.producer = NSQProducer.fromAddress(reactor, config.nsqd_tcp[0], options=options,
                                                maxBuffered=10_000, counters=counters)
        self.consumers = [
            NSQConsumer.fromAddress(reactor, address, config.topic, config.channel, self.handle,
                                    maxInFlight=config.max_in_flight, options=options,
                                    requeueDelay=requeueDelay, counters=counters)
            for address in config.nsqd_tcp]

    def messageCommitted(self, event) -> None:
        """
        The streams' commit hook: publish the recipient's C{message} notification.
        """
        notification = messageNotification(event)
        if notification is None:
            return
        d = self.producer.publish(self.topic, notification.toJSON())
        d.addErrback(lambda f: self.log.warn(
            "notification {id} for {user} not published: {error}", id=notification.id,
            user=notification.user, error=f.getErrorMessage() or f.type.__name__))

    def handle(self, message):
        """
        The consumer's handler: a Deferred that succeeds (FIN) once the notification is
        durable in its inbox, or fails (REQ).
        """
        try:
            notification = parseNotification(message.body)
        except BadNotification as e:
            metrics.malformedNotifications.inc()
            self.log.warn("malformed notification {nsqId} FINed: {error}",
                          nsqId=message.id.decode("ascii", "replace"), error=str(e))
            return None
        d = defer.maybeDeferred(self._deliver, notification)

        def failed(failure):
            self.log.info("notification {id} for {user} not delivered (attempt {attempts}): "
                          "{error}; requeued", id=notification.id, user=notification.user,
                          attempts=message.attempts,
                          error=failure.getErrorMessage() or failure.type.__name__)
            return failure

        return d.addErrback(failed)
