"""
The client side of the FoundationDB store (L{hpchat.storage.fdb_client}): loading the binding,
the store's own threads, opening with the layout check, and closing after the calls in flight.
Over the in-memory binding of L{tests.storage.fakefdb}, and, for loading, stand-in modules.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from hpchat.storage.base import StoreError
from hpchat.storage.fdb_client import API_VERSION, FoundationDBUnavailable, loadBinding
from tests.storage.contract import S, asyncTest, event
from tests.storage.test_fdb import FakeFoundationDBCase, fdbStore


class ThreadsAndLifecycleTests(FakeFoundationDBCase):
    @asyncTest
    async def test_blockingCallsRunOnTheStoresThreads(self) -> None:
        """
        Every call into the binding runs on the store's own pool threads, never on the
        reactor thread.
        """
        store, db = await self.opened()
        await store.append([event(1, client_id="c")], {1: 1})
        await store.claim(1, 1, S, 10)
        await store.readAfter(S, 0, 10)
        await store.readBefore(S, None, 10)
        await store.findClientId(S, "alice", "c")
        await store.findEventId(S, event(1).id)
        self.assertNotIn(threading.current_thread().name, db.threads)
        self.assertTrue(db.threads)
        for name in db.threads:
            self.assertIn("hpchat-foundationdb", name)

    @asyncTest
    async def test_layoutVersionIsChecked(self) -> None:
        """
        open() writes the layout version, and refuses a prefix holding another version.
        """
        store, db = await self.opened()
        tr = db.create_transaction()
        self.assertEqual(bytes(tr.get(store.layout.version())), store.layout.packInt(1))
        tr.set(store.layout.version(), store.layout.packInt(2))
        tr.commit().wait()
        again = fdbStore(self.clusterFile, binding=self.binding)
        failure = await self.failure(again.open())
        self.assertIsInstance(failure, StoreError)
        self.assertIn("layout version 2", str(failure))
        self.assertFalse(again.ready)
        await again.close()

    @asyncTest
    async def test_closedStoreRefusesCalls(self) -> None:
        """
        After close(), calls fail with StoreError instead of touching the binding.
        """
        store, db = await self.opened()
        await store.close()
        failure = await self.failure(store.append([event(1)], {1: 1}))
        self.assertIsInstance(failure, StoreError)
        self.assertIsInstance(await self.failure(store.readAfter(S, 0, 1)), StoreError)

    @asyncTest
    async def test_closeWaitsForCallsInFlight(self) -> None:
        """
        close() fires only after the calls already started have finished.
        """
        store, db = await self.opened()
        writes = [store.append([event(seq)], {1: 1}) for seq in range(1, 6)]
        closed = store.close()
        await defer.gatherResults(writes)
        await closed
        self.assertFalse(store.ready)
        self.assertEqual(len(db.items(*store.layout.eventRange(S))), 5)

    @asyncTest
    async def test_closeWhileOpening(self) -> None:
        """
        close() called while open() is still running leaves the store closed, not ready.
        """
        store = fdbStore(self.clusterFile, binding=self.binding)
        opening = store.open()
        closing = store.close()
        await opening
        await closing
        self.assertFalse(store.ready)
        self.assertIsNone(store._pool)

    @asyncTest
    async def test_everyCloseWaitsForTheCallsInFlight(self) -> None:
        """
        Several closes, each waiting for the same calls, all fire once those have finished,
        and a later close fires at once.
        """
        store, db = await self.opened()
        gate = threading.Event()
        slow = store._defer(gate.wait, 10)
        first, second = store.close(), store.close()
        self.assertFalse(first.called or second.called)
        gate.set()
        self.assertTrue(await slow)
        await defer.gatherResults([first, second])
        self.assertEqual(store._idle, [])
        self.assertIsNone(store._pool)
        await store.close()

    @asyncTest
    async def test_aCancelledIdleWaitIsForgotten(self) -> None:
        """
        Waiting for the calls in flight can be given up; the other waiters still fire.
        """
        store, db = await self.opened()
        gate = threading.Event()
        slow = store._defer(gate.wait, 10)
        given, kept = store._whenIdle(), store._whenIdle()
        given.cancel()
        self.failureResultOf(given, defer.CancelledError)
        self.assertEqual(store._idle, [kept])
        gate.set()
        await slow
        await kept
        self.assertEqual(store._idle, [])


def fakeModule(**kwargs: Any) -> SimpleNamespace:
    """
    A stand-in for the C{fdb} module: no API version selected unless told.
    """
    module = SimpleNamespace(selected=kwargs.pop("selected", None), **kwargs)
    module.is_api_version_selected = lambda: module.selected is not None
    module.get_api_version = lambda: module.selected

    def apiVersion(version: int) -> None:
        if "fail" in kwargs:
            raise kwargs["fail"]
        module.selected = version

    module.api_version = apiVersion
    return module


class LoadBindingTests(unittest.SynchronousTestCase):
    """
    loadBinding says in one line what is missing, and what to install.
    """

    def reason(self, importModule: Any) -> str:
        error = self.assertRaises(FoundationDBUnavailable, loadBinding, importModule)
        self.assertIn("foundationdb-clients 7.3", str(error))
        return error.reason

    def test_selectsTheApiVersion(self) -> None:
        module = fakeModule()
        self.assertIs(loadBinding(lambda name: module), module)
        self.assertEqual(module.selected, API_VERSION)
        self.assertIs(loadBinding(lambda name: module), module)

    def test_noBinding(self) -> None:
        def missing(name: str) -> Any:
            raise ImportError(name)

        self.assertIn("binding (package foundationdb) is not installed", self.reason(missing))

    def test_noLibrary(self) -> None:
        module = fakeModule(fail=OSError("libfdb_c.so: cannot open shared object file"))
        self.assertIn("libfdb_c.so cannot be loaded", self.reason(lambda name: module))

    def test_olderApiAlreadySelected(self) -> None:
        module = fakeModule(selected=520)
        self.assertIn("already selected FoundationDB API version 520",
                      self.reason(lambda name: module))


class UnavailableClientTests(unittest.TestCase):
    """
    open() on a machine without the client library fails with the install hint.
    """

    @asyncTest
    async def test_openWithoutLibraryFails(self) -> None:
        """
        Without libfdb_c (or the binding), open() fails with FoundationDBUnavailable naming
        what to install, and leaves no threads behind.
        """
        from hpchat.storage.fdb_client import FoundationDBUnavailable, loadBinding

        try:
            loadBinding()
        except FoundationDBUnavailable:
            pass
        else:
            raise unittest.SkipTest("the FoundationDB client library is installed here")
        store = fdbStore(self.mktemp())
        try:
            await store.open()
        except FoundationDBUnavailable as e:
            self.assertIn("foundationdb-clients 7.3", str(e))
            self.assertIn("hpchat[foundationdb]", str(e))
        else:
            self.fail("open() succeeded without the client library")
        self.assertFalse(store.ready)
        self.assertIsNone(store._pool)
        await store.close()
