# -*- test-case-name: tests.storage.test_service -*-
"""
Opens the event store when the node starts and closes it, after everything above it has
stopped, when the node stops.
"""

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from hpchat.storage.base import StoreBusy


class StoreService(Service):
    """
    Opening is tried again, a few times, while the store is busy with another process.
    """

    log = Logger()
    openAttempts = 10
    retryDelay = 0.2

    def __init__(self, store, onFailure, clock):
        self.store = store
        self._onFailure = onFailure
        self._clock = clock
        self._opened = None

    def startService(self):
        super().startService()
        self._opened = defer.ensureDeferred(self._open())
        self._opened.addErrback(self._failed)

    async def _open(self):
        for attempt in range(1, self.openAttempts + 1):
            try:
                return await self.store.open()
            except StoreBusy as e:
                if attempt == self.openAttempts:
                    raise
                self.log.info("event store busy ({error}); opening again in {delay}s",
                              error=str(e), delay=self.retryDelay)
                await task.deferLater(self._clock, self.retryDelay, lambda: None)

    def _failed(self, failure):
        self.log.critical("cannot open the event store: {error}", error=failure.getErrorMessage())
        self._onFailure(failure)

    def stopService(self):
        super().stopService()
        if self._opened is None:
            return None
        d = self._opened
        d.addCallback(lambda _: self.store.close() if self.store.ready else None)
        return d
