# -*- test-case-name: tests.nsq.test_bus -*-
"""
Inbox notifications over NSQ, the site's message bus (DESIGN.md §6).

Every node publishes the C{message} notifications of its outbox (L{hpchat.outbox}), and every
node consumes the topic on the shared, durable channel. The node that gets a notification
routes it to the owner of the user's inbox (itself or another node) and FINs it only once it is
durable there. Malformed bodies are logged, counted and FINed, never requeued.

A notification that cannot be delivered yet (no settled inbox owner, the owner unreachable)
stays in flight: it is TOUCHed before its msg_timeout runs out and tried again here with
growing delays. It is never REQed with a delay, since nsqd keeps deferred messages in memory
only and a kill -9 of nsqd would lose them. When the node stops, its consumers hand what they
still hold back with a REQ of no delay, which nsqd started with C{--mem-queue-size=0} keeps on
disk.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import Logger

from hpchat import metrics
from hpchat.loops import retryDelays
from hpchat.notify import BadNotification, parseNotification
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


_heldRetryDelays = retryDelays(0.5, 5.0)


def retryDelay(attempts: int) -> int:
    """
    Milliseconds before a failed notification is tried again (here, while it is held in
    flight) after C{attempts} failures: 0.5 s, 1 s, 2 s, 4 s, then every 5 s (Twisted's
    backoffPolicy, without jitter). A failover takes a lease TTL, so the first retries come
    soon, and a held notification arrives within 5 s of its inbox's owner being back.
    """
    return int(1000 * _heldRetryDelays(max(0, attempts - 1)))


class NoLongerHeld(Exception):
    """
    The notification is no longer in flight here (handed back to nsqd, or its connection
    lost): nsqd delivers it again.
    """


class NSQNotifier:
    """
    The producer (C{producer}) and one consumer per nsqd (C{consumers}), services that the
    node's wiring places: the producer stops after the last batch is written, the consumers
    before the streams stop.
    """

    log = Logger()
    # nsqd gives a message delivered to a consumer that died back only after this long, and
    # keeps it in memory meanwhile (lost if nsqd is killed then): short, since notifications
    # held here on purpose are TOUCHed.
    msgTimeout = 3_000

    def __init__(self, reactor, config, deliver, nodeId: str):
        self.topic = config.topic
        # Notifications taken from nsqd and not yet durable in their inbox: how many, and
        # those whose nsqd connection broke (nsqd may have lost them: published again).
        self.holding = 0
        self._orphans: dict[bytes, defer.Deferred] = {}
        metrics.notificationsHeld.set_function(lambda: self.holding)
        self._clock = reactor
        self._deliver = deliver
        # TOUCH three times per msg_timeout, so that one lost or late TOUCH does not matter.
        self.touchInterval = self.msgTimeout / 3000
        counters = PrometheusCounters()
        self.counters = counters
        # Unbuffered output: nsqd writes each message at once instead of holding it for
        # up to output_buffer_timeout, which would add 25 ms or more to every notification.
        options = IdentifyOptions(clientId=nodeId, outputBufferTimeout=None,
                                  outputBufferSize=-1, heartbeatInterval=10_000,
                                  msgTimeout=self.msgTimeout)
        self.producer = NSQProducer.fromAddress(reactor, config.nsqd_tcp[0], options=options,
                                                maxBuffered=10_000, counters=counters)
        self.consumers = [
            NSQConsumer.fromAddress(reactor, address, config.topic, config.channel, self.handle,
                                    maxInFlight=config.max_in_flight, options=options,
                                    requeueDelay=lambda attempts: 0, counters=counters)
            for address in config.nsqd_tcp]

    def publishEntry(self, entry) -> defer.Deferred:
        """
        The outbox publisher's C{publish}: send an outbox entry's notification; fires on
        nsqd's OK.
        """
        return self.producer.publish(self.topic, entry.body.encode("utf-8"))

    def handle(self, message):
        """
        The consumer's handler: a Deferred that succeeds (FIN) once the notification is
        durable in its inbox; it fails only once the message is no longer held here.
        """
        try:
            notification = parseNotification(message.body)
        except BadNotification as e:
            metrics.malformedNotifications.inc()
            self.log.warn("malformed notification {nsqId} FINed: {error}",
                          nsqId=message.id.decode("ascii", "replace"), error=str(e))
            return None
        return defer.ensureDeferred(self._hold(message, notification))

    async def _hold(self, message, notification) -> object:
        """
        Deliver C{notification} until it is durable, holding C{message} in flight meanwhile.
        """
        toucher = task.LoopingCall(self._touch, message)
        toucher.clock = self._clock
        toucher.start(self.touchInterval, now=False).addErrback(
            lambda f: self.log.failure("touching {id} failed", f, id=notification.id))
        attempt = 0
        self.holding += 1
        try:
            while True:
                try:
                    return await defer.maybeDeferred(self._deliver, notification)
                except Exception as e:
                    attempt += 1
                    error = str(e) or e.__class__.__name__
                if not getattr(message, "connected", True):
                    self._publishAgain(message, notification)
                if not self._keepTrying(message):
                    await self._handedBack(message, notification)
                    raise NoLongerHeld(f"{notification.id}: {error}")
                delay = retryDelay(attempt) / 1000
                self.log.info("notification {id} for {user} not delivered (attempt {attempt}): "
                              "{error}; held, trying again in {delay}s", id=notification.id,
                              user=notification.user, attempt=attempt, error=error, delay=delay)
                await task.deferLater(self._clock, delay, lambda: None)
                if not self._keepTrying(message):
                    await self._handedBack(message, notification)
                    raise NoLongerHeld(f"{notification.id}: handed back to nsqd")
        finally:
            self._orphans.pop(message.id, None)
            self.holding -= 1
            if toucher.running:
                toucher.stop()

    def _publishAgain(self, message, notification) -> None:
        """
        Publish a held notification again, once, when its nsqd connection broke: nsqd keeps
        in-flight messages in memory only, so after a kill -9 of nsqd this node's copy may be
        the last one. Published again it is on nsqd's disk queue; the inbox deduplicates the
        copies.
        """
        if message.id in self._orphans:
            return
        d = self.producer.publish(self.topic, message.body)

        def failed(failure):
            self.log.warn("notification {id} not published again: {error}", id=notification.id,
                          error=failure.getErrorMessage())
            self._orphans.pop(message.id, None)

        self._orphans[message.id] = d.addErrback(failed)

    async def _handedBack(self, message, notification) -> None:
        """
        Before the holder lets a notification go at stop: one whose connection broke is
        published again (and waited for, a little); one on a live connection was REQed by
        the consumer.
        """
        if not getattr(message, "connected", True):
            self._publishAgain(message, notification)
        pending = self._orphans.get(message.id)
        if pending is not None:
            await pending.addTimeout(5.0, self._clock).addErrback(lambda f: None)

    def _keepTrying(self, message) -> bool:
        """
        Whether to go on delivering C{message}: while nsqd holds it for us, and also when its
        connection broke while the consumers still run. nsqd keeps in-flight messages in
        memory only, so after a kill -9 of nsqd this node's copy may be the last one; the
        inbox deduplicates it if nsqd delivers it again. Once the consumers stop, what is no
        longer held was handed back to nsqd (REQ 0, to its disk queue).
        """
        return _held(message) or any(c.running for c in self.consumers)

    @staticmethod
    def _touch(message) -> None:
        if _held(message):
            message.touch()


def _held(message) -> bool:
    return getattr(message, "inFlight", True)
