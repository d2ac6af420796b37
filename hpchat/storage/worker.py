# -*- test-case-name: tests.storage.test_worker -*-
"""
One thread that runs blocking calls in order and hands their results to the reactor.

Used instead of Twisted's ThreadPool on the store's hot path: a ThreadPool call builds a
self-referencing closure per call (a reference cycle for the garbage collector to find), and
carries logging contexts we do not need. Calls run one at a time, in submission order, which is
what a single SQLite connection wants anyway.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure

_STOP = object()


class ThreadWorker:
    def __init__(self, reactor, name: str):
        self._reactor = reactor
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def submit(self, f: Callable[..., Any], *args) -> defer.Deferred:
        """
        Run C{f(*args)} on the thread; the Deferred fires (in the reactor thread) with its
        result or failure.
        """
        if self._thread is None:
            return defer.fail(RuntimeError(f"{self.name} is not running"))
        d: defer.Deferred = defer.Deferred()
        self._queue.put((d, f, args))
        return d

    def stop(self) -> defer.Deferred:
        """
        Finish what was submitted, then end the thread; fires once it has ended.
        """
        thread, self._thread = self._thread, None
        if thread is None:
            return defer.succeed(None)
        done: defer.Deferred = defer.Deferred()
        self._queue.put((_STOP, done, ()))
        return done

    def _run(self) -> None:
        callFromThread = self._reactor.callFromThread
        while True:
            d, f, args = self._queue.get()
            if d is _STOP:
                callFromThread(f.callback, None)
                return
            try:
                result = f(*args)
            except BaseException:
                callFromThread(d.errback, Failure())
            else:
                callFromThread(d.callback, result)
