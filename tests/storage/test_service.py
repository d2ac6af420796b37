"""
The store's service: open on start, close on stop, a failed open reported.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from hpchat.storage.service import StoreService
from tests.fakes import MemoryEventStore


class FailingStore(MemoryEventStore):
    def open(self):
        return defer.fail(OSError("no disk"))


class StoreServiceTests(SynchronousTestCase):
    def test_openAndClose(self):
        """
        Starting opens the store, stopping closes it once open.
        """
        store = MemoryEventStore(ready=False)
        service = StoreService(store, lambda f: None)
        service.startService()
        self.assertTrue(store.ready)
        self.successResultOf(service.stopService())
        self.assertFalse(store.ready)

    def test_failedOpen(self):
        """
        A store that cannot open is reported to onFailure, logged, and not closed.
        """
        failures = []
        service = StoreService(FailingStore(ready=False), failures.append)
        service.startService()
        self.assertEqual([f.type for f in failures], [OSError])
        self.successResultOf(service.stopService())
