# -*- test-case-name: tests.cluster.test_etcd -*-
"""
L{WatchKeeper}: a local mirror of every key under a prefix, kept current
across disconnects (resuming from the next revision) and compactions
(reading the prefix again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hpchat.cluster.etcd.backoff import retryPolicy
from hpchat.cluster.etcd.errors import Compacted, EtcdBadResponse, EtcdError, WatchCanceled
from hpchat.cluster.etcd.watch import EventsCallback, Watch
from hpchat.cluster.etcd.wire import KeyLike, KeyValue, RangeResult, WatchEvent, toBytes
from hpchat.deferreds import fireAll, observer

if TYPE_CHECKING:
    from hpchat.cluster.etcd.client import EtcdClient

__all__ = ["ResyncCallback", "WatchKeeper"]

#: C{onResync(kvs, revision)}: a fresh snapshot C{{key: KeyValue}} at C{revision}.
ResyncCallback = Callable[[dict[bytes, KeyValue], int], object]


class WatchKeeper:
    """
    Keep a local mirror of every key under a prefix, across disconnects and
    compactions.

    It reads the prefix (C{onResync(kvs, revision)} with a fresh snapshot
    C{{key: KeyValue}}), then watches from the next revision
    (C{onEvents(events, revision)} after each change, applied to L{kvs}).
    When the stream ends it reconnects with exponential backoff (see
    L{retryPolicy}) and resumes from the next unseen revision; when that
    revision has been compacted (or etcd cancels the watch) it reads the
    prefix again and calls C{onResync}.

    @ivar kvs: C{{key: KeyValue}}, current as of L{revision}.
    @ivar revision: the store revision the mirror reflects.
    @ivar watching: is a confirmed watch stream open right now?
    @ivar resyncs: how many snapshots were read (1 after the start).
    @ivar streams: how many watch streams were opened.
    """

    log = Logger()

    def __init__(
        self,
        client: EtcdClient,
        prefix: KeyLike,
        onResync: ResyncCallback | None = None,
        onEvents: EventsCallback | None = None,
        prevKv: bool = False,
        clock: IReactorTime | None = None,
        minDelay: float = 0.1,
        maxDelay: float = 5.0,
    ) -> None:
        self._client = client
        self._clock = clock if clock is not None else client.reactor
        self.prefix = toBytes(prefix)
        self.onResync = onResync
        self.onEvents = onEvents
        self.prevKv = prevKv
        self.minDelay = minDelay
        self.maxDelay = maxDelay
        self._retryDelay = retryPolicy(minDelay, maxDelay)
        self.kvs: dict[bytes, KeyValue] = {}
        self.revision = 0
        self.nextRevision: int | None = None
        self.watching = False
        self.resyncs = 0
        self.streams = 0
        self._needResync = True
        self._running = False
        self._attempt = 0
        self._delayed: IDelayedCall | None = None
        self._inflight: Deferred[None] | None = None
        self._watch: Watch | None = None
        self._ready = False
        self._readyWaiters: list[Deferred[WatchKeeper]] = []

    def __repr__(self) -> str:
        return "<WatchKeeper {!r} rev={} watching={}>".format(
            self.prefix, self.revision, self.watching
        )

    def start(self) -> None:
        """
        Start the read-and-watch loop (it retries forever until L{stop}).
        """
        if self._running:
            return
        self._running = True
        self._cycle()

    def whenReady(self) -> Deferred[WatchKeeper]:
        """
        @return: a L{Deferred} firing with C{self} after the first snapshot.
        """
        if self._ready:
            return succeed(self)
        return observer(self._readyWaiters)

    def restart(self) -> None:
        """
        Drop the current stream and reconnect at once (resuming from
        L{nextRevision}), e.g. when the caller suspects the stream is stale.
        """
        if self._watch is not None:
            self._attempt = 0
            self._watch.cancel()
        elif self._running and self._delayed is not None:
            self._delayed.cancel()
            self._cycle()

    def stop(self) -> Deferred[None]:
        """
        Stop the loop and close the stream.

        @return: a L{Deferred} firing when the connection is closed.
        """
        self._running = False
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        fireAll(self._readyWaiters, Failure(CancelledError("WatchKeeper stopped")))
        waits: list[Deferred[EtcdError]] = []
        if self._inflight is not None:
            self._inflight.cancel()
        if self._watch is not None:
            waits.append(self._watch.cancel())
        return gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- the loop

    def _cycle(self) -> None:
        self._delayed = None
        if not self._running:
            return
        if self._needResync:
            d = self._client.range(self.prefix, prefix=True)
            self._inflight = d.addCallbacks(self._resynced, self._resyncFailed)
            d.addErrback(lambda f: self.log.failure("Bug in {keeper!r}", f, keeper=self))
        else:
            self._startWatch()

    def _resynced(self, result: RangeResult) -> None:
        self._inflight = None
        if not self._running:
            return
        self.kvs = {kv.key: kv for kv in result.kvs}
        self.revision = result.header.revision
        self.nextRevision = self.revision + 1
        self._needResync = False
        self.resyncs += 1
        self.log.debug(
            "Resynced {prefix!r}: {count} keys at revision {revision}",
            prefix=self.prefix,
            count=len(self.kvs),
            revision=self.revision,
        )
        if self.onResync is not None:
            self._call(self.onResync, dict(self.kvs), self.revision)
        if not self._ready:
            self._ready = True
            fireAll(self._readyWaiters, self)
        self._startWatch()

    def _resyncFailed(self, failure: Failure) -> None:
        self._inflight = None
        if not self._running:
            return
        self.log.warn(
            "Reading {prefix!r} failed: {error}", prefix=self.prefix, error=failure.value
        )
        self._retryLater()

    def _startWatch(self) -> None:
        self.streams += 1
        watch = self._watch = self._client.watch(
            self.prefix,
            prefix=True,
            startRevision=self.nextRevision,
            prevKv=self.prevKv,
            onEvents=self._gotEvents,
            onProgress=self._gotProgress,
        )
        watch.whenCreated().addCallbacks(self._watchCreated, lambda f: None)
        watch.whenDone().addCallback(self._watchEnded, watch)

    def _watchCreated(self, revision: int) -> None:
        self.watching = True
        self._attempt = 0

    def _gotEvents(self, events: list[WatchEvent], revision: int) -> None:
        for event in events:
            if event.type == WatchEvent.DELETE:
                self.kvs.pop(event.kv.key, None)
            else:
                self.kvs[event.kv.key] = event.kv
        self.revision = events[-1].kv.modRevision
        self.nextRevision = self.revision + 1
        if self.onEvents is not None:
            self._call(self.onEvents, events, self.revision)

    def _gotProgress(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
            self.nextRevision = revision + 1

    def _watchEnded(self, reason: EtcdError, watch: Watch) -> None:
        if self._watch is watch:
            self._watch = None
        self.watching = False
        if not self._running:
            return
        byClient = isinstance(reason, WatchCanceled) and reason.byClient
        if isinstance(reason, Compacted) or (
            isinstance(reason, (WatchCanceled, EtcdBadResponse)) and not byClient
        ):
            self.log.info(
                "Watch on {prefix!r} ended ({reason}); reading it again",
                prefix=self.prefix,
                reason=reason,
            )
            self._needResync = True
            if isinstance(reason, Compacted):
                self._cycle()
                return
        elif byClient:
            # restart(): reconnect at once.
            self._cycle()
            return
        else:
            self.log.info(
                "Watch on {prefix!r} lost ({reason}); resuming from {revision}",
                prefix=self.prefix,
                reason=reason,
                revision=self.nextRevision,
            )
        self._retryLater()

    def _retryLater(self) -> None:
        delay = self._retryDelay(self._attempt)
        self._attempt += 1
        self._delayed = self._clock.callLater(delay, self._cycle)

    def _call(self, callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            self.log.failure(
                "{keeper!r} callback {callback!r} failed", keeper=self, callback=callback
            )
