# -*- test-case-name: tests.storage.test_service -*-
"""
Opens the event store when the node starts and closes it, after everything above it has
stopped, when the node stops.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from hpchat.loops import retryDelays
from hpchat.storage.base import StoreBusy


class StoreService(Service):
    """
    Opening is tried again, a few times with growing delays (Twisted's backoffPolicy, from
    C{minRetryDelay} doubling up to C{maxRetryDelay}), while the store is busy with another
    process.
    """

    log = Logger()
    openAttempts = 10
    minRetryDelay = 0.2
    maxRetryDelay = 2.0

    def __init__(self, store: Any, onFailure: Callable[[Failure], object], clock: Any):
        self.store = store
        self._onFailure = onFailure
        self._clock = clock
        self._opened: defer.Deferred[Any] | None = None
        self._retryDelay = retryDelays(self.minRetryDelay, self.maxRetryDelay)

    def startService(self) -> None:
        super().startService()
        self._opened = defer.ensureDeferred(self._open())
        self._opened.addErrback(self._failed)

    async def _open(self) -> Any:
        for attempt in range(1, self.openAttempts + 1):
            try:
                return await self.store.open()
            except StoreBusy as e:
                if attempt == self.openAttempts:
                    raise
                delay = self._retryDelay(attempt - 1)
                self.log.info("event store busy ({error}); opening again in {delay}s",
                              error=str(e), delay=delay)
                await task.deferLater(self._clock, delay, lambda: None)

    def _failed(self, failure: Failure) -> None:
        self.log.critical("cannot open the event store: {error}", error=failure.getErrorMessage())
        self._onFailure(failure)

    def stopService(self) -> defer.Deferred[Any] | None:
        super().stopService()
        if self._opened is None:
            return None
        d = self._opened
        d.addCallback(lambda _: self.store.close() if self.store.ready else None)
        return d
