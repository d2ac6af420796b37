# -*- test-case-name: tests.test_outbox -*-
"""
The outbox publisher: notifications that are durable from the moment their event is.

A conversation message's C{message} notification is written to the store's outbox in the same
batch as the message (the persister's C{outboxFor}). Once the batch is durable the streams'
commit hook hands the event here and the entry is published at once; when the publish is
acknowledged (nsqd's C{OK}, or the inbox append is durable without NSQ) the entry is marked
done in the store.

What a crash, a restart or a failover leaves pending is found by sweeps: at start, when this
node gains groups (a failed-over owner's entries are then this node's to publish), and again
with growing delays (Twisted's C{backoffPolicy}) while entries stay pending, and every
C{idleInterval} seconds otherwise. A sweep reads the pending entries of every group and
publishes those of the groups this node owns. Asking the ownership about the others claims an
unowned group for the node that placement prefers, whose own sweeps then publish them.
Publishing is at least once: a notification may go out twice (an entry published just before a
crash, not yet marked done), and the inbox deduplicates it by id.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from hpchat import metrics
from hpchat.deferreds import fireAll, observer
from hpchat.groups import Local
from hpchat.loops import retryDelays
from hpchat.storage.base import Event, OutboxEntry, StoreError


class OutboxPublisher(Service):
    """
    @param publish: C{publish(entry)} returns a Deferred that fires once the entry's
        notification is accepted (nsqd's OK or the inbox append), or fails.
    @param entryFor: the L{OutboxEntry} that was written with a committed event, or None.
    @param ownership: an L{IOwnership}: entries of the groups it gives as L{Local} are
        published by this node.
    @param groups: the number of chat groups.
    @param policy: seconds before the next sweep, given how many sweeps in a row found
        entries pending (default: Twisted's backoffPolicy from 0.5 s, 1.5 times per sweep,
        up to 30 s, plus up to 1 s of jitter).
    """

    log = Logger()
    sweepLimit = 500
    # Entries of other nodes' groups looked at per sweep, to find groups nobody owns.
    probeLimit = 50
    idleInterval = 10.0
    #: Acknowledged entries are marked done together, one store write per this many seconds.
    markDelay = 0.5
    # Longest wait at stop for the last entries to be marked done.
    stopTimeout = 10.0

    def __init__(self, clock: Any, store: Any, publish: Callable[[OutboxEntry], defer.Deferred],
                 entryFor: Callable[[Event], OutboxEntry | None], ownership: Any, groups: int,
                 policy: Callable[[int], float] | None = None):
        self._clock = clock
        self._store = store
        self._publish = publish
        self._entryFor = entryFor
        self._ownership = ownership
        self.groups = groups
        self._policy = policy or retryDelays(0.5, 30.0, factor=1.5, jitter=random.random)
        # Ids being published or marked done: not published again meanwhile.
        self._busy: set[str] = set()
        # Ids whose publish failed, until published (or no longer pending here at a sweep).
        self._unsent: set[str] = set()
        self._toMark: list[OutboxEntry] = []
        self._marking: defer.Deferred | None = None
        self._markWaiters: list[defer.Deferred[None]] = []
        self._markTimer: Any = None
        self._timer: Any = None
        self._sweeping = False
        # A sweep was due while one ran (which may have read the owned groups before a gain).
        self._sweepAgain = False
        self._pendingSweeps = 0
        self.published = 0
        self.republished = 0

    # -- service

    def startService(self) -> None:
        super().startService()
        # Read when /metrics is scraped.
        metrics.outboxPending.set_function(lambda: self.pending)
        self._schedule(0)

    @property
    def pending(self) -> int:
        """
        Entries being published or marked done, and those a failed publish left for the
        next sweep (the C{hpchat_outbox_pending} gauge).
        """
        return len(self._busy | self._unsent)

    def stopService(self) -> defer.Deferred:
        """
        Stop sweeping; fires once the entries already acknowledged are marked done. Publishes
        still in flight are marked done when they are acknowledged (place this service so that
        it stops after the persister's last batch and before the NSQ producer and the store).
        """
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._markNow()
        if self._marking is None and not self._toMark:
            return defer.succeed(None)
        return observer(self._markWaiters).addTimeout(self.stopTimeout, self._clock).addErrback(
            lambda f: self.log.warn("outbox: entries not marked done before stop: {error}",
                                    error=f.getErrorMessage()))

    # -- publishing

    def committed(self, event: Event) -> None:
        """
        The streams' commit hook: publish the outbox entry written with C{event}, if any.
        """
        try:
            entry = self._entryFor(event)
        except Exception:
            self.log.failure("outbox: no entry for {stream} seq {seq}", stream=event.stream,
                             seq=event.seq)
            return
        if entry is not None:
            self._send(entry)

    def _send(self, entry: OutboxEntry, again: bool = False) -> None:
        if entry.id in self._busy:
            return
        self._busy.add(entry.id)
        d = defer.maybeDeferred(self._publish, entry)
        d.addCallbacks(self._sent, self._notSent, callbackArgs=(entry, again),
                       errbackArgs=(entry,))
        d.addErrback(lambda f: self.log.failure("outbox bug", f))

    def _sent(self, _: object, entry: OutboxEntry, again: bool) -> None:
        self._unsent.discard(entry.id)
        # Publishing works again: the delays before the next sweeps start from the shortest,
        # so that an entry whose publish fails next (its inbox's owner failing over) is tried
        # again within a second, not after the longest delay of a long run of sweeps.
        self._pendingSweeps = 0
        if again:
            self.republished += 1
        else:
            self.published += 1
        self._toMark.append(entry)
        if not self.running:
            self._markNow()
        elif self._markTimer is None:
            self._markTimer = self._clock.callLater(self.markDelay, self._markNow)

    def _markNow(self) -> None:
        if self._markTimer is not None:
            if self._markTimer.active():
                self._markTimer.cancel()
            self._markTimer = None
        self._markDone()

    def _notSent(self, failure: Failure, entry: OutboxEntry) -> None:
        self._busy.discard(entry.id)
        self._unsent.add(entry.id)
        self.log.warn("outbox: notification {id} not published ({error}); a sweep tries again",
                      id=entry.id, error=failure.getErrorMessage() or repr(failure.value))
        self._schedule(self._policy(self._pendingSweeps))

    def _markDone(self) -> None:
        if self._marking is not None or not self._toMark:
            if self._marking is None:
                fireAll(self._markWaiters)
            return
        batch, self._toMark = self._toMark, []
        d = defer.maybeDeferred(self._store.markOutboxDone, batch)

        def failed(failure: Failure) -> None:
            # Still pending in the store: a later sweep publishes them again (deduplicated).
            self.log.warn("outbox: {count} entries not marked done: {error}",
                          count=len(batch), error=failure.getErrorMessage())

        def finished(_: object) -> None:
            self._marking = None
            for entry in batch:
                self._busy.discard(entry.id)
            self._markDone()

        self._marking = d
        d.addCallbacks(lambda _: None, failed)
        d.addBoth(finished)

    # -- sweeps

    def groupsGained(self, groups: list[int]) -> None:
        """
        The ownership's gained-groups hook: sweep now rather than at the next idle sweep, so
        that the notifications a previous owner left pending in C{groups} go out at once.
        """
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        when = self._clock.seconds() + delay
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= when:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        if not self.running:
            return
        if self._sweeping:
            self._sweepAgain = True
            return
        self._sweeping = True
        d = defer.ensureDeferred(self._sweepOnce())

        def done(result: bool | Failure) -> None:
            self._sweeping = False
            if not isinstance(result, bool):
                if result.check(StoreError):
                    # The store is away for a moment: tried again with growing delays.
                    self.log.warn("outbox sweep: {error}", error=result.getErrorMessage())
                else:
                    self.log.failure("outbox sweep failed", result)
                result = True
            if result:
                self._pendingSweeps += 1
                self._schedule(self._policy(self._pendingSweeps))
            else:
                self._pendingSweeps = 0
                self._schedule(self.idleInterval)
            if self._sweepAgain:
                self._sweepAgain = False
                self._schedule(0)

        d.addBoth(done)

    async def _sweepOnce(self) -> bool:
        """
        Publish the pending entries of the groups owned here; True while entries are pending.
        """
        if not getattr(self._store, "ready", True):
            return True
        owned = [g for g in range(self.groups) if self._ownership.tokenFor(g) is not None]
        others = sorted(set(range(self.groups)) - set(owned))
        pending = False
        # This node's own entries first: those of other groups (whose owner is away) must
        # not crowd them out of the sweep.
        found = await self._store.pendingOutbox(owned, self.sweepLimit) if owned else []
        # A failed one no longer pending here was done elsewhere, or its group moved.
        self._unsent.intersection_update(entry.id for entry in found)
        for entry in found:
            pending = True
            if entry.id in self._busy:
                continue
            self.log.info("outbox: publishing pending notification {id} of {stream} "
                          "seq {seq}", id=entry.id, stream=entry.stream, seq=entry.seq)
            self._send(entry, again=True)
        # Entries of groups owned elsewhere or by nobody: asking about an unowned group
        # claims it for the node placement prefers, whose own sweeps then publish them.
        probe = await self._store.pendingOutbox(others, self.probeLimit) if others else []
        for group in sorted({entry.group for entry in probe}):
            pending = True
            # Claims an unowned group; if it comes here, the next sweep (soon: entries are
            # pending) sends its entries.
            self._owned(group)
        return pending

    def _owned(self, group: int) -> bool:
        route = self._ownership.route(group)
        if isinstance(route, defer.Deferred):
            # A claim in progress: the next sweep sees its outcome.
            route.addErrback(lambda f: None)
            return False
        return isinstance(route, Local)

