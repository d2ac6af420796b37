"""
The single-thread worker that runs the store's blocking calls.
"""

from __future__ import annotations

import threading

from twisted.internet import defer
from twisted.trial import unittest

from hpchat.storage.worker import ThreadWorker
from tests.support.process import theReactor
from tests.support.trial import asyncTest


class ThreadWorkerTests(unittest.TestCase):
    @asyncTest
    async def test_runsInOrderOffTheReactorThread(self):
        """
        Calls run one at a time, in order, on the worker's own thread; results and errors
        come back as Deferreds.
        """
        worker = ThreadWorker(theReactor(), "test-worker")
        worker.start()
        self.addCleanup(worker.stop)
        seen = []
        results = await defer.gatherResults(
            [worker.submit(lambda i=i: seen.append((i, threading.current_thread().name)) or i)
             for i in range(50)])
        self.assertEqual(results, list(range(50)))
        self.assertEqual([i for i, _ in seen], list(range(50)))
        self.assertEqual({name for _, name in seen}, {"test-worker"})
        with self.assertRaises(ZeroDivisionError):
            await worker.submit(lambda: 1 / 0)

    @asyncTest
    async def test_stopFinishesSubmittedWork(self):
        """
        stop() lets what was submitted finish, then ends the thread; later calls fail.
        """
        worker = ThreadWorker(theReactor(), "test-worker")
        worker.start()
        pending = worker.submit(lambda: "done")
        await worker.stop()
        self.assertEqual(await pending, "done")
        with self.assertRaises(RuntimeError):
            await worker.submit(lambda: None)
