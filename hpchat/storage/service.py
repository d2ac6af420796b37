# -*- test-case-name: tests.storage.test_service -*-
"""
Opens the event store when the node starts and closes it, after everything above it has
stopped, when the node stops.
"""

from twisted.application.service import Service
from twisted.logger import Logger


class StoreService(Service):
    log = Logger()

    def __init__(self, store, onFailure):
        self.store = store
        self._onFailure = onFailure
        self._opened = None

    def startService(self):
        super().startService()
        self._opened = self.store.open()
        self._opened.addErrback(self._failed)

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
