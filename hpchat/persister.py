# -*- test-case-name: tests.test_persister -*-
"""
The batch persister: events queue up in memory and a LoopingCall writes them to the store
in batches of up to C{batchSize}, one batch at a time, in the order they were queued.

An event's Deferred fires only once its batch is durable, which is when the sender gets its
acknowledgement and pollers see it. Store errors are retried with backoff (the batch stays at
the head of the queue); a fence rejection fails the queued events of the groups concerned,
since their writer has lost them. A conflict (an event that collides with a stored one, such as
a duplicate that slipped past the streams' dedupe) fails the queued events of the colliding
streams only, whose writer has misjudged them and reloads them; the other events of the batch
are written at once without them.

An entry may also carry conversation summary rows (L{ConversationRow}: read markers, the
conversation list), written in the same batch as its event; an entry of rows alone (a read
marker moved) has no event. Rows go to stores that keep them (L{IConversationStore}) only.

An event may come with an outbox entry (C{outboxFor(event)}, e.g. the C{message} notification
of a conversation message): it is written in the same batch as its event, or not at all. An
event may instead come with a companion: a second event, of another stream and maybe another
group (the recipient's inbox notification of a message, when this node holds that inbox too),
written in the same batch, so in the same transaction, as its event. The two succeed or fail
together; when they fail, so does every queued event of either stream (a later seq alone would
leave a gap).

Before each batch the persister asks its L{WriteFence} (the node's ownership), once per group of
the batch, whether the batch's token still lets this node write that group; events of a group
whose token lapsed (lease lost, self-fenced) fail with L{FenceRejected} instead. Every queued
event is counted in a L{GroupBacklog}, which says when a group's writes are all durable
(L{BatchPersister.drained}).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from hpchat import metrics
from hpchat.backlog import GroupBacklog
from hpchat.deferreds import fireAll, observer
from hpchat.loops import guarded, retryDelays, startLoop
from hpchat.pacing import FixedPacing, Pacing
from hpchat.storage.base import Event, FenceRejected, OutboxEntry, StoreError, StreamConflict
from hpchat.storage.conversations import ConversationRow, IConversationStore


class WriteFence(Protocol):
    """
    Whether this node may still write a group under a fencing token.
    """

    def mayWrite(self, group: int, token: int | None) -> int | None:
        """
        The token under which this node may write C{group} now (only if it is C{token}, when
        given), else None.
        """


class Unfenced:
    """
    The fence of a persister used alone (tests, benchmarks): every token is valid; the
    store's own fence still applies.
    """

    def mayWrite(self, group: int, token: int | None) -> int | None:
        return token if token is not None else 0


LostCallback = Callable[[list[int]], Any]


class Overloaded(Exception):
    """
    Too many events are waiting to become durable; the caller should retry later.
    """


class StoreUnavailable(StoreError):
    """
    The store failed the last batch and is being retried: new events are refused until it
    takes one again, so that senders hear it at once instead of waiting on a dead store.
    """


class PersisterStopped(Exception):
    """
    The persister is stopping or stopped and takes no new events.
    """


@dataclass(slots=True)
class _Pending:
    event: Event | None
    token: int
    group: int
    stream: str
    outbox: OutboxEntry | None = None
    rows: Sequence[ConversationRow] = ()
    companion: Event | None = None
    companionToken: int = 0
    deferred: defer.Deferred = field(default_factory=defer.Deferred)

    def fences(self) -> Iterable[tuple[int, int]]:
        """Each (group, token) this entry is written under."""
        yield self.group, self.token
        if self.companion is not None:
            yield self.companion.group, self.companionToken

    def groups(self) -> Iterable[int]:
        """The group of each event of this entry (a group once per event)."""
        yield self.group
        if self.companion is not None:
            yield self.companion.group

    def streams(self) -> Iterable[str]:
        yield self.stream
        if self.companion is not None:
            yield self.companion.stream


class BatchPersister(Service):
    """
    @param fence: the L{WriteFence} asked before each batch (default: L{Unfenced}).
    @param outboxFor: C{outboxFor(event)} gives the L{OutboxEntry} to write with C{event}, or
        None (the default: no outbox).
    @param backlog: the L{GroupBacklog} that counts the queued events (default: a new one);
        shared with whoever waits for groups to drain (the ownership's hand-offs).
    @param pacing: the L{Pacing} asked, as each batch starts, how long before the next one
        may start unless it is full (default: C{flushInterval} always). The loop ticks every
        C{flushInterval}, so that should be the longest interval the pacing gives.
    """

    log = Logger()
    minBackoff = 0.05
    maxBackoff = 5.0
    stopTimeout = 30.0

    def __init__(self, clock: Any, store: Any, batchSize: int = 100,
                 flushInterval: float = 0.005, maxPending: int = 10000,
                 fence: WriteFence | None = None,
                 outboxFor: Callable[[Event], OutboxEntry | None] | None = None,
                 backlog: GroupBacklog | None = None, pacing: Pacing | None = None):
        self._clock = clock
        self._store = store
        self.batchSize = batchSize
        self.flushInterval = flushInterval
        self.maxPending = maxPending
        self._fence: WriteFence = fence if fence is not None else Unfenced()
        self._outboxFor = outboxFor if outboxFor is not None else (lambda event: None)
        self._backlog = backlog if backlog is not None else GroupBacklog()
        self._pacing: Pacing = pacing if pacing is not None else FixedPacing(flushInterval)
        self._lostCallbacks: list[LostCallback] = []
        self._retryDelay = retryDelays(self.minBackoff, self.maxBackoff)
        self._queue: deque[_Pending] = deque()
        self._flushing: defer.Deferred | None = None
        self._kick: Any = None
        self._loop: task.LoopingCall | None = None
        self._backoff = 0.0
        self._storeFailures = 0
        self._retryAt = 0.0
        self._accepting = False
        self._doneWaiters: list[defer.Deferred] = []
        # Written batches whose events are still to be acknowledged, oldest first (see
        # _acknowledge), and whether that is under way.
        self._toAcknowledge: deque[list[_Pending]] = deque()
        self._acknowledging = False
        # When the next batch may start (unless it is full), and the pacing's interval that
        # the last one gave.
        self._nextStart = float("-inf")
        self._interval = 0.0

    def subscribeLost(self, callback: LostCallback) -> None:
        """
        Call C{callback(groups)} with the groups of a L{FenceRejected}, a L{StreamConflict}
        without streams, an unexpected store error or a lapsed token, once their queued events
        have failed, so that their owner drops its state of them.
        """
        self._lostCallbacks.append(callback)

    def _lost(self, groups: Iterable[int]) -> None:
        lost = sorted(set(groups))
        for callback in self._lostCallbacks:
            try:
                callback(lost)
            except Exception:
                self.log.failure("a lost-groups subscriber failed")

    # -- service

    def startService(self):
        super().startService()
        # Read when /metrics is scraped, not set on every change of the hot path.
        metrics.pendingEvents.set_function(lambda: len(self._queue))
        metrics.persistInterval.set_function(lambda: self._interval)
        self._accepting = True
        self._loop = startLoop(self._clock, "persister", self._tick, self.flushInterval)

    def stopService(self):
        """
        Stop taking events and write everything queued; fires when the queue is empty, or
        after C{stopTimeout} (a batch in the store's hands included), when what is left fails
        with a L{StoreError}.
        """
        super().stopService()
        self._accepting = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._kick is not None and self._kick.active():
            self._kick.cancel()
        self._kick = None
        return defer.ensureDeferred(self._drain())

    async def _drain(self):
        deadline = self._clock.seconds() + self.stopTimeout
        while self._queue or self._flushing is not None:
            left = deadline - self._clock.seconds()
            if left <= 0:
                self._giveUp()
                break
            if self._flushing is not None:
                # Bounded even while the store holds a batch: a hung store must not hang
                # the shutdown.
                try:
                    await self._batchDone().addTimeout(left, self._clock)
                except defer.TimeoutError:
                    self._giveUp()
                    break
                continue
            delay = max(0.0, self._retryAt - self._clock.seconds())
            if delay:
                await task.deferLater(self._clock, min(delay, left), lambda: None)
                continue
            try:
                self._flush()
            except Exception:
                self.log.failure("shutdown: writing the last events failed")
                self._giveUp()
                break

    def _giveUp(self) -> None:
        """
        Fail everything still queued, the batch being written included: the shutdown does
        not wait for the store any longer. A batch that the store completes later is ignored.
        """
        count = len(self._queue)
        self.log.error("shutdown: the store did not confirm {count} events within {timeout}s; "
                       "they fail", count=count, timeout=self.stopTimeout)
        self._flushing = None
        self._failWhere(lambda p: True, StoreError(
            f"shutdown: the store did not confirm the last {count} events within "
            f"{self.stopTimeout:g}s"))

    # -- API

    @property
    def pending(self) -> int:
        return len(self._queue)

    def pendingFor(self, groups: Iterable[int]) -> int:
        """
        The number of events of C{groups} queued or being written.
        """
        return self._backlog.count(groups)

    def drained(self, groups: Iterable[int]) -> defer.Deferred[None]:
        """
        Fires once no event of C{groups} is queued or being written (at once if none is); the
        persister's flush completion fires it. Cancel it to stop waiting.
        """
        return self._backlog.drained(groups)

    def enqueue(self, event: Event, token: int, rows: Sequence[ConversationRow] = (),
                companion: tuple[Event, int] | None = None) -> defer.Deferred:
        """
        Queue C{event} (with conversation summary C{rows}), written under fence C{token}; the
        result fires with the event once it is durable. A C{companion} C{(event, token)} is
        written in the same transaction (and C{event} then has no outbox entry). Raises
        L{Overloaded} when C{maxPending} events are waiting, and L{StoreUnavailable} while
        the store fails the batch at the head of the queue.
        """
        self._check()
        if companion is None:
            pending = _Pending(event, token, event.group, event.stream, self._outboxFor(event),
                               self._rowsFor(rows))
        else:
            pending = _Pending(event, token, event.group, event.stream, None,
                               self._rowsFor(rows), companion[0], companion[1])
        return self._queued(pending)

    def enqueueRows(self, group: int, stream: str, rows: Sequence[ConversationRow],
                    token: int) -> defer.Deferred:
        """
        Queue conversation summary rows of C{stream} without an event; fires with None once
        durable. Refuses as L{enqueue} does.
        """
        self._check()
        rows = self._rowsFor(rows)
        if not rows:
            return defer.succeed(None)
        return self._queued(_Pending(None, token, group, stream, None, rows))

    def _rowsFor(self, rows: Sequence[ConversationRow]) -> Sequence[ConversationRow]:
        return tuple(rows) if rows and IConversationStore.providedBy(self._store) else ()

    def _check(self) -> None:
        if not self._accepting:
            raise PersisterStopped("the node is shutting down")
        if self._backoff:
            raise StoreUnavailable("the event store is failing; the last batch is being retried")
        if len(self._queue) >= self.maxPending:
            metrics.overloaded.inc()
            raise Overloaded(f"{len(self._queue)} events are waiting to be written")

    def _queued(self, pending: _Pending) -> defer.Deferred:
        self._queue.append(pending)
        for group in pending.groups():
            self._backlog.add(group)
        if self._flushing is None:
            # The store is idle: a full batch goes at once, and so does an event once the
            # pacing's interval since the last batch started has passed (at the end of this
            # turn of the reactor, with whatever else it queues), not at the loop's next tick.
            if self._kick is None:
                now = self._clock.seconds()
                if now >= self._retryAt:
                    wait = 0.0 if len(self._queue) >= self.batchSize else self._nextStart - now
                    self._kick = self._clock.callLater(max(0.0, wait), self._kicked)
            elif (len(self._queue) >= self.batchSize
                  and self._kick.getTime() > self._clock.seconds()):
                self._kick.reset(0)
        return pending.deferred

    # -- the loop

    def _batchDone(self) -> defer.Deferred:
        """
        Fires once the batch being written is done with, even when called from one of its own
        callbacks (when the batch's Deferred has fired but is still running them).
        """
        return observer(self._doneWaiters)

    def _kicked(self) -> None:
        self._kick = None
        guarded("persister", self._flush)()

    def _tick(self):
        if self._flushing is None and self._queue and self._clock.seconds() >= self._retryAt:
            return self._flush()

    def _flush(self) -> defer.Deferred:
        if self._flushing is not None:
            return self._flushing
        batch = self._takeBatch()
        fences = self._fencesOf(batch)
        while batch and self._failLapsed(fences):
            batch = self._takeBatch()
            fences = self._fencesOf(batch)
        if not batch:
            return defer.succeed(None)
        started = self._clock.seconds()
        self._interval = self._pacing.interval(started)
        self._nextStart = started + self._interval
        outbox = [p.outbox for p in batch if p.outbox is not None]
        events: list[Event] = []
        for p in batch:
            if p.event is not None:
                events.append(p.event)
            if p.companion is not None:
                events.append(p.companion)
        rows = [row for p in batch for row in p.rows]
        if rows:
            d = defer.maybeDeferred(self._store.append, events, fences, outbox,
                                    conversations=rows)
        elif outbox:
            d = defer.maybeDeferred(self._store.append, events, fences, outbox)
        else:
            d = defer.maybeDeferred(self._store.append, events, fences)
        d.addCallbacks(self._written, self._failed, callbackArgs=(batch, started),
                       errbackArgs=(batch,))
        d.addErrback(lambda f: self.log.failure("persister bug", f))
        self._flushing = d

        def done(result):
            if self._flushing is d:
                self._flushing = None
            # After a refused or failed batch, what is still queued goes next, at once (a
            # written batch starts the next one itself, in _written).
            if (self._queue and self._kick is None and self._flushing is None
                    and self._accepting and self._clock.seconds() >= self._retryAt):
                self._kick = self._clock.callLater(0, self._kicked)
            fireAll(self._doneWaiters)
            return result

        d.addBoth(done)
        # The loop waits for the batch but must never see its errors.
        return d

    @staticmethod
    def _fencesOf(batch: list[_Pending]) -> dict[int, int]:
        return {group: token for p in batch for group, token in p.fences()}

    def _failLapsed(self, fences: dict[int, int]) -> bool:
        """
        Ask the fence about each group of the next batch (one token per group, see
        L{_takeBatch}); fail the queued events of those whose token lapsed. True if any did.
        """
        lapsed = {(group, token) for group, token in fences.items()
                  if self._fence.mayWrite(group, token) is None}
        if not lapsed:
            return False
        groups = sorted(group for group, _ in lapsed)
        self.log.warn("not writing events of groups {groups}: no longer owned here",
                      groups=groups)
        self._failWhere(lambda p: not lapsed.isdisjoint(p.fences()), FenceRejected(groups))
        self._lost(groups)
        return True

    def _takeBatch(self) -> list[_Pending]:
        """
        The head of the queue, up to batchSize events, stopping where a group's token changes
        (events of two ownership epochs never share a batch).
        """
        batch: list[_Pending] = []
        tokens: dict[int, int] = {}
        for pending in self._queue:
            if len(batch) >= self.batchSize:
                break
            if any(tokens.setdefault(group, token) != token
                   for group, token in pending.fences()):
                break
            batch.append(pending)
        return batch

    def _abandoned(self, batch: list[_Pending]) -> bool:
        """
        Whether shutdown gave up on C{batch} (failed its events) while the store held it: a
        batch being written is otherwise always at the head of the queue.
        """
        return not self._queue or self._queue[0] is not batch[0]

    def _written(self, _, batch: list[_Pending], started: float):
        if self._abandoned(batch):
            self.log.warn("a batch of {count} events was written after shutdown gave up on it",
                          count=len(batch))
            return
        for _ in batch:
            self._queue.popleft()
        self._backlog.remove(group for p in batch for group in p.groups())
        self._backoff = 0.0
        self._storeFailures = 0
        self._retryAt = 0.0
        metrics.persistBatchSize.observe(len(batch))
        metrics.persistLatency.observe(self._clock.seconds() - started)
        # Group commit: the store takes the next batch before this one's callbacks run (they
        # answer requests and wake polls), so that it is not idle meanwhile; but batches start
        # at most once per the pacing's interval (unless one is full), so that under load
        # each commit, whose fsync costs the same however many events it holds, carries more.
        self._flushing = None
        self._toAcknowledge.append(batch)
        try:
            if self._queue and self._accepting:
                wait = self._nextStart - self._clock.seconds()
                if wait <= 0 or len(self._queue) >= self.batchSize:
                    self._flush()
                elif self._kick is None:
                    self._kick = self._clock.callLater(wait, self._kicked)
        finally:
            self._acknowledge()

    def _acknowledge(self) -> None:
        """
        Fire the events' Deferreds, batch after batch in the order they were written: a store
        that answers at once writes the next batch (in L{_flush}, above) before this one's
        callbacks would run, and its acknowledgements must not overtake these.
        """
        if self._acknowledging:
            return
        self._acknowledging = True
        try:
            while self._toAcknowledge:
                for pending in self._toAcknowledge.popleft():
                    pending.deferred.callback(pending.event)
        finally:
            self._acknowledging = False

    def _failed(self, failure, batch: list[_Pending]):
        if self._abandoned(batch):
            return
        error = failure.value
        if isinstance(error, StreamConflict) and error.streams:
            metrics.storeErrors.labels("conflict").inc()
            streams = set(error.streams)
            self.log.warn("batch refused for streams {streams}: {error}; their queued events "
                          "fail, the other {count} go again", streams=sorted(streams),
                          error=str(error),
                          count=sum(1 for p in batch if streams.isdisjoint(p.streams())))
            # Every queued event of those streams: a later seq alone would leave a gap.
            self._failWhere(lambda p: not streams.isdisjoint(p.streams()), error)
            return
        if isinstance(error, (FenceRejected, StreamConflict)):
            kind = "fenced" if isinstance(error, FenceRejected) else "conflict"
            metrics.storeErrors.labels(kind).inc()
            self.log.warn("batch refused for groups {groups}: {error}", groups=list(error.groups),
                          error=str(error))
            refused = set(error.groups)
            self._failWhere(lambda p: not refused.isdisjoint(p.groups()), error)
            self._lost(error.groups)
            return
        if isinstance(error, StoreError):
            metrics.storeErrors.labels("retry").inc()
            self._backoff = self._retryDelay(self._storeFailures)
            self._storeFailures += 1
            self._retryAt = self._clock.seconds() + self._backoff
            self.log.warn("store error, retrying {count} events in {backoff}s: {error}",
                          count=len(batch), backoff=self._backoff, error=str(error))
            return
        # Anything else may recur: give up the groups of the batch rather than loop on it, and
        # let their owner reload them from the store (later events would leave a seq gap).
        metrics.storeErrors.labels("unexpected").inc()
        self.log.failure("unexpected error writing a batch; dropping its groups", failure)
        groups = {group for p in batch for group in p.groups()}
        self._failWhere(lambda p: not groups.isdisjoint(p.groups()),
                        StoreError(f"unexpected store error: {error!r}"))
        self._lost(groups)

    def _failWhere(self, predicate: Callable[[_Pending], bool], error: Exception) -> None:
        """
        Fail the queued events that C{predicate} picks, and with them every queued event of
        a stream that a failed companion shares (its seq would otherwise leave a gap).
        """
        chosen = {id(p) for p in self._queue if predicate(p)}
        if not chosen:
            return
        seen: set[str] = set()
        tainted = {s for p in self._queue if id(p) in chosen and p.companion is not None
                   for s in p.streams()}
        while tainted:
            seen |= tainted
            more = [p for p in self._queue
                    if id(p) not in chosen and not tainted.isdisjoint(p.streams())]
            chosen.update(id(p) for p in more)
            tainted = {s for p in more for s in p.streams()} - seen
        failed = [p for p in self._queue if id(p) in chosen]
        self._queue = deque(p for p in self._queue if id(p) not in chosen)
        self._backlog.remove(group for p in failed for group in p.groups())
        for pending in failed:
            pending.deferred.errback(error)
