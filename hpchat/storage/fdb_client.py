# -*- test-case-name: tests.storage.test_fdb_client -*-
"""
The FoundationDB client side of the store (L{hpchat.storage.fdb}): loading the binding, the
store's thread pool, the transaction retry loop, fencing, and opening and closing.

Client and binding
==================
The binding (PyPI C{foundationdb}, module C{fdb}) is pure Python over the C client library
C{libfdb_c.so}, and a binding only loads a library of its own minor version or newer. hpchat
selects API version L{API_VERSION} (7.3) and is installed with the extra
C{hpchat[foundationdb]}, which pins C{foundationdb==7.3.*}; the machine needs the client
package C{foundationdb-clients} 7.3.x. L{loadBinding} says in one line what is missing.
C{fdb} is imported only inside functions, so this module imports without the binding.

Threads
=======
Every blocking call (C{.wait()}, reading a future, iterating a range) runs on this store's own
thread pool through C{deferToThreadPool}; the binding's network thread is started once per
process by C{fdb.open(cluster_file)}. Nothing here logs from those threads: results carry
attempt counts back to the reactor thread, which logs.

Transactions
============
L{FDBClient._transact} is the binding's retry loop (C{commit}, then C{on_error}, which backs
off and resets, or raises for errors that are not retryable), written out so that attempts
can be counted; it runs a body again after C{commit_unknown_result} (1021), when the first
attempt may have committed (see L{hpchat.storage.fdb} for why a write body may be run
twice). Each transaction has a timeout (L{FDBClient.transactionTimeout}, over all its
attempts); a transaction that times out fails with L{StoreError}.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from hpchat.deferreds import fireAll, observer
from hpchat.storage.base import StoreError
from hpchat.storage.fdb_layout import LAYOUT_VERSION, KeyLayout

#: The FoundationDB API version hpchat selects, and the client series it belongs to.
API_VERSION = 730
CLIENT_SERIES = "7.3"
#: What an operator installs when the client cannot be loaded.
INSTALL_HINT = (f"install foundationdb-clients {CLIENT_SERIES}.x (it provides libfdb_c.so) and "
                f"pip install 'hpchat[foundationdb]' (foundationdb=={CLIENT_SERIES}.*)")


class FoundationDBUnavailable(StoreError):
    """
    The FoundationDB client cannot be loaded here. C{reason} says what is missing in a few
    words; C{str()} adds what to install.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"{reason}; {INSTALL_HINT}")


def loadBinding(importModule: Callable[[str], Any] = importlib.import_module) -> Any:
    """
    Import C{fdb} and select L{API_VERSION}, which loads C{libfdb_c}. Returns the module or
    raises L{FoundationDBUnavailable}. Safe to call more than once.
    """
    try:
        fdb = importModule("fdb")
    except ImportError:
        raise FoundationDBUnavailable(
            "the FoundationDB Python binding (package foundationdb) is not installed") from None
    try:
        if fdb.is_api_version_selected():
            selected = fdb.get_api_version()
            if selected < 630:
                raise FoundationDBUnavailable(
                    f"this process already selected FoundationDB API version {selected}, "
                    f"older than hpchat supports ({API_VERSION})")
        else:
            fdb.api_version(API_VERSION)
    except FoundationDBUnavailable:
        raise
    except Exception as e:
        message = " ".join(str(e).split())
        cause = e.__cause__ or e.__context__
        if isinstance(e, OSError) or isinstance(cause, OSError) or "Unable to locate" in message:
            reason = "the FoundationDB client library libfdb_c.so cannot be loaded"
        elif "not supported by the installed FoundationDB C library" in message:
            reason = f"the installed libfdb_c is older than the binding ({message})"
        elif "Latest known FDB API version" in message:
            reason = f"the installed binding is older than {CLIENT_SERIES} ({message})"
        else:
            reason = f"the FoundationDB client cannot be loaded ({message})"
        raise FoundationDBUnavailable(reason) from None
    return fdb



@dataclass(frozen=True, slots=True)
class Done:
    """
    What a transaction function returns to the reactor thread: its result and how many
    attempts it took.
    """

    result: Any
    attempts: int


class FDBClient:
    """
    A FoundationDB database opened on a thread pool of its own, for the store built on it.

    @param binding: the C{fdb} module to use; None loads the real one in L{open} (tests pass
        an in-memory stand-in).
    """

    log = Logger()
    #: Seconds one transaction may take over all its attempts (FoundationDB's C{timeout}).
    transactionTimeout = 10.0

    def __init__(self, reactor: Any, clusterFile: str, keyPrefix: str = "hpchat",
                 threads: int = 16, binding: Any = None):
        self._reactor = reactor
        self.clusterFile = clusterFile
        self.keyPrefix = keyPrefix
        self.ready = False
        self._binding = binding
        self._fdb: Any = None
        self._db: Any = None
        self._layout: KeyLayout | None = None
        self.threads = threads
        self._pool: ThreadPool | None = None
        self._closing = False
        self._inFlight = 0
        # Fired once no call is in flight (close() waits for them).
        self._idle: list[defer.Deferred[None]] = []

    @property
    def layout(self) -> KeyLayout:
        if self._layout is None:
            self._layout = KeyLayout(self.keyPrefix)
        return self._layout

    # -- lifecycle

    def open(self) -> defer.Deferred[None]:
        self._closing = False
        # A stopped ThreadPool cannot be started again: one per open().
        self._pool = ThreadPool(0, self.threads, "hpchat-foundationdb")
        self._pool.start()

        def opened(_: object) -> None:
            if self._closing:
                # close() was called while opening: it has stopped the pool already.
                return
            self.ready = True
            self.log.info("event store open: FoundationDB {clusterFile} prefix {prefix!r}",
                          clusterFile=self.clusterFile, prefix=self.keyPrefix)

        def failed(failure: Any) -> Any:
            self._stopPool()
            return failure

        d = self._defer(self._openInThread)
        d.addCallbacks(opened, failed)
        return d

    def _openInThread(self) -> None:
        binding = self._binding if self._binding is not None else loadBinding()
        layout = self.layout
        try:
            db = binding.open(self.clusterFile)
        except binding.FDBError as e:
            raise StoreError(f"cannot open FoundationDB cluster file {self.clusterFile}: "
                             f"{e}") from None
        self._fdb = binding
        self._db = db

        def checkLayout(tr: Any, attempt: int) -> None:
            stored = tr.get(layout.version())
            if not stored.present():
                tr.set(layout.version(), layout.packVersion())
                return
            version = layout.unpackInt(bytes(stored))
            if version != LAYOUT_VERSION:
                raise StoreError(f"FoundationDB prefix {self.keyPrefix!r} holds layout version "
                                 f"{version}; this hpchat reads version {LAYOUT_VERSION}")

        self._transact(checkLayout)

    def close(self) -> defer.Deferred[None]:
        """
        Wait for the calls in flight, then stop the thread pool. The binding's network thread
        runs until the process exits (it cannot be restarted), so reopening is cheap.
        """
        self.ready = False
        self._closing = True

        def stop(_: object) -> None:
            self._db = None
            self._stopPool()

        return self._whenIdle().addCallback(stop)

    def _stopPool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    # -- thread plumbing

    def _defer(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """
        Run C{f(*args)} on the store's thread pool.
        """
        if self._closing or self._pool is None:
            return defer.fail(StoreError("the FoundationDB store is not open"))
        self._inFlight += 1
        d = deferToThreadPool(self._reactor, self._pool, f, *args)

        def finished(result: Any) -> Any:
            self._inFlight -= 1
            if self._inFlight == 0:
                fireAll(self._idle)
            return result

        return d.addBoth(finished)

    def _whenIdle(self) -> defer.Deferred[None]:
        """
        Fires once no call runs on the thread pool (at once if none does).
        """
        if self._inFlight == 0:
            return defer.succeed(None)
        return observer(self._idle)

    def _transact(self, body: Callable[..., Any], *args: Any, commit: bool = True) -> Done:
        """
        On a pool thread: run C{body(tr, attempt, *args)} in a transaction with the binding's
        retry loop (C{on_error} backs off and resets, or raises when the error is not
        retryable); commit unless C{commit} is false (read-only).
        """
        db = self._db
        if db is None:
            raise StoreError("the FoundationDB store is not open")
        FDBError = self._fdb.FDBError
        tr = db.create_transaction()
        # Not reset by on_error (API >= 610): bounds all attempts together.
        tr.options.set_timeout(int(self.transactionTimeout * 1000))
        attempt = 0
        while True:
            attempt += 1
            try:
                result = body(tr, attempt, *args)
                if commit:
                    tr.commit().wait()
                return Done(result, attempt)
            except FDBError as e:
                try:
                    tr.on_error(e).wait()
                except FDBError as final:
                    raise StoreError(f"foundationdb: {final} after {attempt} attempt(s)") from None

    def _range(self, tr: Any, begin: bytes, end: bytes, limit: int,
               reverse: bool = False) -> list[tuple[bytes, bytes]]:
        rows = tr.get_range(begin, end, limit=limit, reverse=reverse,
                            streaming_mode=self._fdb.StreamingMode.want_all)
        return [(kv.key, kv.value) for kv in rows]

    def _read(self, body: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """
        The result of C{body(tr, attempt, *args)} run in a read-only transaction.
        """
        d = self._defer(self._readOnly, body, *args)
        return d.addCallback(lambda done: done.result)

    def _readOnly(self, body: Callable[..., Any], *args: Any) -> Done:
        return self._transact(body, *args, commit=False)

    def _readWrite(self, body: Callable[..., Any], *args: Any) -> defer.Deferred[None]:
        """
        Run C{body(tr, attempt, *args)} in a transaction that commits; fires with None.
        """
        return self._defer(self._transact, body, *args).addCallback(lambda _: None)

    def _readWriteResult(self, body: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """
        The result of C{body(tr, attempt, *args)} run in a transaction that commits.
        """
        return self._defer(self._transact, body, *args).addCallback(lambda done: done.result)

    # -- fencing

    def _raiseFences(self, tr: Any, fences: dict[int, int]) -> list[int]:
        """
        Inside a transaction: the groups whose stored token exceeds ours; when there are
        none, raise the stored tokens that are lower than ours.
        """
        layout = self.layout
        stored = {group: tr.get(layout.fence(group)) for group in fences}
        rejected = []
        lower = []
        for group, token in fences.items():
            value = stored[group]
            current = layout.unpackInt(bytes(value)) if value.present() else None
            if current is not None and current > token:
                rejected.append(group)
            elif current is None or current < token:
                lower.append(group)
        if rejected:
            return sorted(rejected)
        for group in lower:
            tr.set(layout.fence(group), layout.packInt(fences[group]))
        return []
