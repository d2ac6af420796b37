"""
The store's service: open on start, close on stop, a failed open reported.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.storage.base import StoreBusy
from hpchat.storage.service import StoreService
from tests.fakes import MemoryEventStore


class FailingStore(MemoryEventStore):
    def open(self):
        return defer.fail(OSError("no disk"))


class BusyStore(MemoryEventStore):
    def __init__(self, busyTimes):
        super().__init__(ready=False)
        self.busyTimes = busyTimes
        self.attempts = 0

    def open(self):
        self.attempts += 1
        if self.attempts <= self.busyTimes:
            return defer.fail(StoreBusy("sqlite: database is locked"))
        return super().open()


class StoreServiceTests(SynchronousTestCase):
    def test_openAndClose(self):
        """
        Starting opens the store, stopping closes it once open.
        """
        store = MemoryEventStore(ready=False)
        service = StoreService(store, lambda f: None, task.Clock())
        service.startService()
        self.assertTrue(store.ready)
        self.successResultOf(service.stopService())
        self.assertFalse(store.ready)

    def test_failedOpen(self):
        """
        A store that cannot open is reported to onFailure, logged, and not closed.
        """
        failures = []
        service = StoreService(FailingStore(ready=False), failures.append, task.Clock())
        service.startService()
        self.assertEqual([f.type for f in failures], [OSError])
        self.successResultOf(service.stopService())

    def test_busyIsTriedAgain(self):
        """
        A store busy with another process is opened again a little later, with growing delays,
        up to ten times.
        """
        clock = task.Clock()
        store = BusyStore(busyTimes=3)
        failures = []
        StoreService(store, failures.append, clock).startService()
        self.assertEqual((store.attempts, store.ready), (1, False))
        clock.advance(0.2)
        self.assertEqual(store.attempts, 2)
        clock.advance(0.39)
        self.assertEqual(store.attempts, 2)
        clock.advance(0.01)
        self.assertEqual(store.attempts, 3)
        clock.advance(0.8)
        self.assertEqual((store.attempts, store.ready, failures), (4, True, []))

        store = BusyStore(busyTimes=100)
        StoreService(store, failures.append, clock).startService()
        # 0.2, 0.4, 0.8, 1.6, then 2 s (Twisted's backoffPolicy).
        clock.pump([0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0, 1.99])
        self.assertEqual(store.attempts, StoreService.openAttempts - 1)
        clock.advance(0.01)
        self.assertEqual(store.attempts, StoreService.openAttempts)
        self.assertEqual([f.type for f in failures], [StoreBusy])
