"""
An in-memory stand-in for the part of the FoundationDB binding (C{fdb}, API 730) that
L{hpchat.storage.fdb} uses, so that the store's logic runs under the contract suite on a
machine without C{libfdb_c} or a cluster.

What it models, after the binding's documented semantics: C{open(cluster_file)} returns one
shared database per cluster file; transactions read committed data plus their own writes and
commit optimistically: a commit fails with C{not_committed} (1020) when a transaction
committed after this one started wrote a key or range this one read; C{on_error} resets the
transaction and returns for retryable codes (1007, 1020, 1021, ...) and raises the error for
the others or once C{retry_limit} is spent. C{get} returns a value future with C{present()}
and C{bytes()}; C{get_range} honours C{limit} (0 = no limit) and C{reverse}.

Fault injection: L{FakeDatabase.injectCommitFault} makes the next commits that write fail
with a given code, before or after applying their writes (C{commit_unknown_result} after
applying is the case the store must survive). Every call records the thread it ran on.
"""

from __future__ import annotations

import bisect
import threading
from types import SimpleNamespace

import fdb.tuple

RETRYABLE = {
    1007: "transaction_too_old",
    1009: "future_version",
    1020: "not_committed",
    1021: "commit_unknown_result",
    1037: "process_behind",
    1039: "cluster_version_changed",
}
OTHER = {
    1031: "transaction_timed_out",
    2101: "transaction_too_large",
    2103: "key_too_large",
    2102: "value_too_large",
}


class FDBError(Exception):
    def __init__(self, code: int):
        self.code = code
        self.description = RETRYABLE.get(code) or OTHER.get(code) or "unknown_error"
        super().__init__(code)

    def __str__(self):
        return f"{self.description} ({self.code})"


class _Ready:
    def __init__(self, error: Exception | None = None):
        self._error = error

    def wait(self):
        if self._error is not None:
            raise self._error
        return None


class _Value:
    def __init__(self, value: bytes | None):
        self.value = value

    def present(self) -> bool:
        return self.value is not None

    def wait(self):
        return self

    def __bytes__(self):
        if self.value is None:
            raise TypeError("value not present")
        return self.value


class KeyValue:
    def __init__(self, key: bytes, value: bytes):
        self.key = key
        self.value = value


class _Options:
    def __init__(self, tr: "FakeTransaction"):
        self._tr = tr

    def set_timeout(self, ms: int) -> None:
        self._tr.timeout = ms

    def set_retry_limit(self, n: int) -> None:
        self._tr.retryLimit = n


class FakeDatabase:
    def __init__(self, clusterFile: str):
        self.clusterFile = clusterFile
        self.lock = threading.RLock()
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []
        self.version = 0
        self.log: list[tuple[int, list[bytes], list[tuple[bytes, bytes]]]] = []
        self.faults: list[tuple[int, bool]] = []
        self.beforeCommit: dict[int, object] = {}
        #: Called with the error code at the start of every on_error (another client acting
        #: between a failed commit and its retry).
        self.onError = None
        self.threads: set[str] = set()
        self.commits = 0
        self.writeCommits = 0
        self.attempts = 0
        self.largestCommit = 0

    def create_transaction(self) -> "FakeTransaction":
        self.touch()
        return FakeTransaction(self)

    def touch(self) -> None:
        self.threads.add(threading.current_thread().name)

    def injectCommitFault(self, code: int, applied: bool, count: int = 1) -> None:
        """
        Make the next C{count} commits that write fail with C{code}; with C{applied}, after
        their writes were applied (the outcome the client cannot see).
        """
        with self.lock:
            self.faults.extend([(code, applied)] * count)

    def runBeforeCommit(self, ordinal: int, f) -> None:
        """
        Call C{f()} when the C{ordinal}-th commit that writes (counting from 1, attempts
        included) begins, before its conflict check: another client acting in between.
        """
        self.beforeCommit[ordinal] = f

    def items(self, begin: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
        with self.lock:
            lo = bisect.bisect_left(self.keys, begin)
            hi = bisect.bisect_left(self.keys, end)
            return [(k, self.data[k]) for k in self.keys[lo:hi]]

    def _apply(self, writes: dict[bytes, bytes | None], clears: list[tuple[bytes, bytes]],
               order: list) -> None:
        for op in order:
            if op[0] == "clear":
                _, begin, end = op
                lo = bisect.bisect_left(self.keys, begin)
                hi = bisect.bisect_left(self.keys, end)
                for k in self.keys[lo:hi]:
                    del self.data[k]
                del self.keys[lo:hi]
            else:
                _, key, value = op
                if key not in self.data:
                    bisect.insort(self.keys, key)
                self.data[key] = value


class FakeTransaction:
    def __init__(self, db: FakeDatabase):
        self.db = db
        self.options = _Options(self)
        self.timeout = 0
        self.retryLimit = -1
        self.retries = 0
        self._reset()

    def _reset(self) -> None:
        with self.db.lock:
            self.readVersion = self.db.version
            self.db.attempts += 1
        self.reads: set[bytes] = set()
        self.readRanges: list[tuple[bytes, bytes]] = []
        self.writes: dict[bytes, bytes] = {}
        self.order: list = []
        self.clears: list[tuple[bytes, bytes]] = []

    def _local(self, key: bytes):
        """
        (known, value) from this transaction's own writes and clears.
        """
        if key in self.writes:
            return True, self.writes[key]
        for begin, end in self.clears:
            if begin <= key < end:
                return True, None
        return False, None

    def get(self, key: bytes) -> _Value:
        self.db.touch()
        if not isinstance(key, bytes):
            raise TypeError("Key must be of type bytes")
        self.reads.add(key)
        known, value = self._local(key)
        if not known:
            with self.db.lock:
                value = self.db.data.get(key)
        return _Value(value)

    def get_range(self, begin: bytes, end: bytes, limit: int = 0, reverse: bool = False,
                  streaming_mode=None) -> list[KeyValue]:
        self.db.touch()
        self.readRanges.append((begin, end))
        merged = dict(self.db.items(begin, end))
        for cb, ce in self.clears:
            for k in [k for k in merged if cb <= k < ce]:
                del merged[k]
        for k, v in self.writes.items():
            if begin <= k < end:
                merged[k] = v
        keys = sorted(merged, reverse=reverse)
        if limit > 0:
            keys = keys[:limit]
        return [KeyValue(k, merged[k]) for k in keys]

    def set(self, key: bytes, value: bytes) -> None:
        self.db.touch()
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise TypeError("keys and values must be bytes")
        if len(key) > 10_000:
            raise FDBError(2103)
        if len(value) > 100_000:
            raise FDBError(2102)
        self.writes[key] = value
        self.order.append(("set", key, value))

    def clear_range(self, begin: bytes, end: bytes) -> None:
        self.db.touch()
        self.clears.append((begin, end))
        for k in [k for k in self.writes if begin <= k < end]:
            del self.writes[k]
        self.order.append(("clear", begin, end))

    def _size(self) -> int:
        written = sum(len(k) + len(v) for k, v in self.writes.items())
        read = sum(2 * len(k) for k in self.reads) + sum(len(b) + len(e)
                                                         for b, e in self.readRanges)
        return written + read

    def commit(self) -> _Ready:
        db = self.db
        db.touch()
        if not self.order:
            return _Ready()
        with db.lock:
            db.writeCommits += 1
            hook = db.beforeCommit.pop(db.writeCommits, None)
        if hook is not None:
            hook()
        size = self._size()
        if size > 10_000_000:
            return _Ready(FDBError(2101))
        with db.lock:
            for version, keys, ranges in db.log:
                if version <= self.readVersion:
                    continue
                if self._conflicts(keys, ranges):
                    return _Ready(FDBError(1020))
            fault = db.faults.pop(0) if db.faults else None
            if fault is not None and not fault[1]:
                return _Ready(FDBError(fault[0]))
            db._apply(self.writes, self.clears, self.order)
            db.version += 1
            db.log.append((db.version, list(self.writes), list(self.clears)))
            db.commits += 1
            db.largestCommit = max(db.largestCommit, size)
            if fault is not None:
                return _Ready(FDBError(fault[0]))
        return _Ready()

    def _conflicts(self, keys: list[bytes], ranges: list[tuple[bytes, bytes]]) -> bool:
        for key in keys:
            if key in self.reads or any(b <= key < e for b, e in self.readRanges):
                return True
        for cb, ce in ranges:
            if any(cb <= k < ce for k in self.reads):
                return True
            if any(b < ce and cb < e for b, e in self.readRanges):
                return True
        return False

    def on_error(self, error: FDBError) -> _Ready:
        self.db.touch()
        code = error.code if isinstance(error, FDBError) else error
        if self.db.onError is not None:
            self.db.onError(code)
        if code not in RETRYABLE:
            return _Ready(error if isinstance(error, FDBError) else FDBError(code))
        if self.retryLimit >= 0 and self.retries >= self.retryLimit:
            return _Ready(FDBError(code))
        self.retries += 1
        self._reset()
        return _Ready()


class FakeBinding:
    """
    A module-like object standing in for C{fdb} after C{api_version(730)}.
    """

    FDBError = FDBError
    StreamingMode = SimpleNamespace(want_all=-2, iterator=-1, exact=0)
    tuple = fdb.tuple

    def __init__(self):
        self.databases: dict[str, FakeDatabase] = {}
        self.lock = threading.Lock()

    def is_api_version_selected(self) -> bool:
        return True

    def get_api_version(self) -> int:
        return 730

    def api_version(self, version: int) -> None:
        if version != 730:
            raise RuntimeError("FDB API already loaded at version 730")

    def open(self, cluster_file: str | None = None) -> FakeDatabase:
        with self.lock:
            if cluster_file not in self.databases:
                self.databases[cluster_file] = FakeDatabase(cluster_file)
            return self.databases[cluster_file]
