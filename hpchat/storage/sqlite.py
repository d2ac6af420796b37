# -*- test-case-name: tests.storage.test_sqlite -*-
"""
The embedded event store: one SQLite file in WAL mode with durable commits.

The schema's version is SQLite's C{user_version}: 0 for files of the first release (events and
fences), 1 adds the outbox, 2 the conversation rows, 3 the blocks, 4 last seen, 5 the blocks'
version (raised by triggers on the blocks table, so in the transaction of every change
whatever writes it). Opening a file brings it up to L{SCHEMA_VERSION}, in one write
transaction per step, so a file written by an earlier release opens as it is.

All writes run on one dedicated writer thread, reads on one reader thread with their own
connection, so the reactor thread never touches SQLite. Several node processes may share one
file (tests, small installs): each transaction takes SQLite's write lock, and the fence table
makes a deposed owner's late batch fail here too.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from hpchat import strictjson
from hpchat.storage.base import (
    Event,
    FenceRejected,
    IEventStore,
    OutboxEntry,
    StoreBusy,
    StoreError,
    StreamConflict,
    StreamSnapshot,
    requireFences,
)
from hpchat.storage.blocklist import IBlockStore, IBlockVersion
from hpchat.storage.conversations import (
    ROW_COLUMNS,
    ConversationPage,
    IConversationStore,
    latestRows,
    rowColumns,
    rowFrom,
)
from hpchat.storage.presence import IPresenceStore
from hpchat.storage.sqlshared import COLUMNS as _COLUMNS
from hpchat.storage.sqlshared import LIST_COLUMNS as _LIST_COLUMNS
from hpchat.storage.sqlshared import OUTBOX_COLUMNS as _OUTBOX_COLUMNS
from hpchat.storage.sqlshared import SQLReads
from hpchat.storage.sqlshared import row as _row
from hpchat.storage.worker import ThreadWorker
from hpchat.streamids import inboxStream

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    stream    TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    id        TEXT    NOT NULL,
    grp       INTEGER NOT NULL,
    type      TEXT    NOT NULL,
    sender    TEXT,
    ts        REAL    NOT NULL,
    client_id TEXT,
    data      TEXT    NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_by_client_id
    ON events (stream, sender, client_id) WHERE client_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS fences (
    grp   INTEGER PRIMARY KEY,
    token INTEGER NOT NULL
);
"""

SCHEMA_VERSION = 6

#: The events an id is looked up by (L{SQLiteStore.findEventId}): notifications, which are
#: kept once per id. A conversation's events have ids of the node's own making (random, so
#: unique without an index), and indexing them cost a page write per message, about a quarter
#: of the writer's CPU (bench/sqlite_writer.py --variants current,all-ids). A query uses the
#: partial index only when it repeats this condition word for word.
NOTIFICATION_IDS = "substr(stream, 1, 6) = 'inbox:'"
# What each version adds to the one before; the first entry is version 1.
_MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS outbox (
        id      TEXT    PRIMARY KEY,
        grp     INTEGER NOT NULL,
        stream  TEXT    NOT NULL,
        seq     INTEGER NOT NULL,
        body    TEXT    NOT NULL,
        created REAL    NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS outbox_by_group ON outbox (grp, created, id);
    """,
    """
    CREATE TABLE IF NOT EXISTS conversations (
        usr              TEXT    NOT NULL,
        stream           TEXT    NOT NULL,
        grp              INTEGER NOT NULL,
        partner          TEXT    NOT NULL,
        last_seq         INTEGER NOT NULL,
        read_seq         INTEGER NOT NULL,
        partner_read_seq INTEGER NOT NULL,
        updated          REAL    NOT NULL,
        PRIMARY KEY (usr, stream)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS conversations_by_activity
        ON conversations (usr, updated DESC, stream DESC);
    CREATE INDEX IF NOT EXISTS conversations_by_stream ON conversations (stream);
    """,
    """
    CREATE TABLE IF NOT EXISTS blocks (
        blocker TEXT NOT NULL,
        blocked TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (blocker, blocked)
    ) WITHOUT ROWID;
    """,
    """
    CREATE TABLE IF NOT EXISTS presence (
        usr       TEXT PRIMARY KEY,
        last_seen REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    """
    CREATE TABLE IF NOT EXISTS blocks_version (
        id      INTEGER PRIMARY KEY CHECK (id = 0),
        version INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO blocks_version (id, version) VALUES (0, 0);
    CREATE TRIGGER IF NOT EXISTS blocks_inserted AFTER INSERT ON blocks
    BEGIN
        UPDATE blocks_version SET version = version + 1 WHERE id = 0;
    END;
    CREATE TRIGGER IF NOT EXISTS blocks_updated AFTER UPDATE ON blocks
    BEGIN
        UPDATE blocks_version SET version = version + 1 WHERE id = 0;
    END;
    CREATE TRIGGER IF NOT EXISTS blocks_deleted AFTER DELETE ON blocks
    BEGIN
        UPDATE blocks_version SET version = version + 1 WHERE id = 0;
    END;
    """,
    f"""
    DROP INDEX IF EXISTS events_by_id;
    CREATE UNIQUE INDEX IF NOT EXISTS events_by_notification_id ON events (stream, id)
        WHERE {NOTIFICATION_IDS};
    """,
]

_INSERT_CONVERSATIONS = (
    f"INSERT INTO conversations ({ROW_COLUMNS}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(8))
    + " FROM json_each(?) WHERE 1 ON CONFLICT (usr, stream) DO UPDATE SET "
    "grp = excluded.grp, partner = excluded.partner, last_seq = excluded.last_seq, "
    "read_seq = excluded.read_seq, partner_read_seq = excluded.partner_read_seq, "
    "updated = excluded.updated"
)
_LIST = (
    f"SELECT {_LIST_COLUMNS} FROM conversations AS c LEFT JOIN events AS e "
    "ON e.stream = c.stream AND e.seq = c.last_seq "
    "WHERE c.usr = ? AND (c.updated, c.stream) < (?, ?) "
    "ORDER BY c.updated DESC, c.stream DESC LIMIT ?"
)

_INSERT_OUTBOX = (
    f"INSERT OR IGNORE INTO outbox ({_OUTBOX_COLUMNS}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(6))
    + " FROM json_each(?) ORDER BY key"
)

_INSERT_BATCH = (
    f"INSERT INTO events ({_COLUMNS}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(9))
    + " FROM json_each(?) ORDER BY key"
)

# Fences as a JSON list of [group, token] pairs.
_REJECTED_FENCES = (
    "SELECT fences.grp FROM json_each(?) AS wanted JOIN fences "
    "ON fences.grp = json_extract(wanted.value, '$[0]') "
    "WHERE fences.token > json_extract(wanted.value, '$[1]')"
)
_RAISE_FENCES = (
    "INSERT INTO fences (grp, token) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?) WHERE 1 "
    "ON CONFLICT (grp) DO UPDATE SET token = excluded.token WHERE excluded.token > fences.token"
)


#: Pages the write-ahead log grows to before a commit copies them into the database file (the
#: default is 1,000). A chat's hot pages (the newest of each busy stream and conversation
#: row) change in commit after commit, and a checkpoint copies a page once however often it
#: changed, so checkpointing less often copies fewer pages (bench/sqlite_writer.py: 13 % less
#: of the writer's CPU per batch at 10,000 pages in a quiet run; within the noise in others).
#: But the commit that checkpoints waits for the copy and its fsync, which delays the
#: acknowledgements of its batch: 3,000 pages (12 MB) keeps that short.
WAL_CHECKPOINT_PAGES = 3_000


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before it returns, so an acknowledged message survives kill -9
    # and power loss alike.
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=10000")
    connection.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    # A statement that writes many rows inside a transaction (each batch's INSERT ... SELECT
    # FROM json_each) keeps a statement journal to undo itself alone; on a file that is an
    # open, unlink and close per batch and a write of every page's original, a sixth of the
    # writer's CPU (bench/sqlite_writer.py --variants current,file-journals). In memory it
    # costs no system call and is dropped at the statement's end.
    connection.execute("PRAGMA temp_store=MEMORY")
    return connection


@contextmanager
def _writing(db: sqlite3.Connection) -> Iterator[None]:
    """
    One write transaction: committed when the block ends, rolled back on any error, a
    failed COMMIT (busy, I/O, full) included, so the connection never stays inside a
    transaction that every later BEGIN would trip over.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterator[str]:
    """
    The statements of C{script} one by one (a trigger's body holds semicolons of its own).
    """
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        yield pending


def _migrate(db: sqlite3.Connection) -> None:
    """
    Bring the schema from its stored version up to L{SCHEMA_VERSION}, one step per write
    transaction (another process may be opening the same file).
    """
    while True:
        with _writing(db):
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version >= SCHEMA_VERSION:
                return
            for statement in _statements(_MIGRATIONS[version]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")


@implementer(IEventStore, IConversationStore, IBlockStore, IBlockVersion, IPresenceStore)
class SQLiteStore(SQLReads):
    """
    L{IEventStore} on one SQLite file.
    """

    log = Logger()

    def __init__(self, reactor, path: str):
        self._reactor = reactor
        self.path = path
        self.ready = False
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._writerThread = ThreadWorker(reactor, "hpchat-sqlite-writer")
        self._readerThread = ThreadWorker(reactor, "hpchat-sqlite-reader")

    # -- lifecycle

    def open(self):
        self._writerThread.start()
        self._readerThread.start()

        def openBoth():
            folder = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(folder, exist_ok=True)
            writer = reader = None
            try:
                writer = _connect(self.path)
                writer.executescript(_SCHEMA)
                _migrate(writer)
                reader = _connect(self.path)
            except sqlite3.OperationalError as e:
                for connection in (writer, reader):
                    if connection is not None:
                        connection.close()
                # Switching a new file to WAL does not wait for another process doing the
                # same (SQLite's busy timeout does not apply to it).
                if "locked" in str(e):
                    raise StoreBusy(f"sqlite: {e}") from e
                raise
            self._writer, self._reader = writer, reader

        def opened(_):
            self.ready = True
            self.log.info("event store open: SQLite {path}", path=self.path)

        d = self._write(openBoth)
        d.addCallback(opened)
        return d

    def close(self):
        self.ready = False
        return self._closeConnections()

    # -- thread plumbing

    def _write(self, f: Callable[..., Any], *args):
        return self._writerThread.submit(self._guard, f, *args)

    def _read(self, f: Callable[..., Any], *args):
        if self._reader is None:
            # Not open yet (a request that came before the store opened), or closed.
            return defer.fail(StoreError("sqlite: the store is not open"))
        return self._readerThread.submit(self._guard, f, *args)

    def _writerDB(self) -> sqlite3.Connection:
        """
        On the writer thread: the writing connection, or L{StoreError} when the store is not
        open (a write queued behind the close).
        """
        if self._writer is None:
            raise StoreError("sqlite: the store is not open")
        return self._writer

    def _fetchAll(self, sql: str, params: tuple) -> list:
        return self._readerDB().execute(sql, params).fetchall()

    def _readerDB(self) -> sqlite3.Connection:
        """
        On the reader thread: the reading connection, or L{StoreError} when the store closed
        after the read was queued.
        """
        if self._reader is None:
            raise StoreError("sqlite: the store is not open")
        return self._reader

    @staticmethod
    def _guard(f, *args):
        try:
            return f(*args)
        except sqlite3.Error as e:
            raise StoreError(f"sqlite: {e}") from e

    # -- writes (writer thread)

    def claim(self, group: int, token: int, stream: str, recent: int):
        return self._write(self._claimTxn, group, token, stream, recent)

    def _claimTxn(self, group: int, token: int, stream: str, recent: int) -> StreamSnapshot:
        db = self._writerDB()
        with _writing(db):
            rejected = self._raiseFences(db, {group: token})
            if rejected:
                raise FenceRejected(rejected)
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE stream = ? ORDER BY seq DESC LIMIT ?",
                (stream, recent),
            ).fetchall()
            lastSeq = rows[0][1] if rows else 0
            reads = dict(db.execute("SELECT usr, read_seq FROM conversations WHERE stream = ?",
                                    (stream,)).fetchall())
        return StreamSnapshot(last_seq=lastSeq, recent=[_row(r) for r in reversed(rows)],
                              reads=reads)

    @staticmethod
    def _raiseFences(db: sqlite3.Connection, fences: dict[int, int]) -> list[int]:
        """
        Inside a write transaction: return the groups whose stored token exceeds ours, or
        raise the stored tokens to ours when there are none.

        Two statements whatever the number of groups: every statement hands the GIL back and
        forth with the busy reactor thread, so a query per group would stall the batch.
        """
        tokens = strictjson.dumps(list(fences.items()))
        rejected = [group for (group,) in db.execute(_REJECTED_FENCES, (tokens,))]
        if not rejected:
            db.execute(_RAISE_FENCES, (tokens,))
        return sorted(rejected)

    def append(self, events: Sequence[Event], fences: dict[int, int],
               outbox: Sequence[OutboxEntry] = (), conversations: Sequence = ()):
        requireFences(events, fences, outbox, conversations)
        # The whole batch as one JSON document, inserted by one statement: executemany would
        # hand the GIL back and forth once per row while the reactor thread is busy.
        batch = strictjson.dumps(
            [[e.stream, e.seq, e.id, e.group, e.type, e.sender, e.ts, e.client_id,
              strictjson.dumps(e.data)] for e in events])
        entries = strictjson.dumps(
            [[o.id, o.group, o.stream, o.seq, o.body, o.created] for o in outbox]) \
            if outbox else None
        rows = strictjson.dumps([rowColumns(c) for c in latestRows(conversations)]) \
            if conversations else None
        return self._write(self._appendTxn, batch, dict(fences), entries, rows)

    def _appendTxn(self, batch: str, fences: dict[int, int], entries: str | None,
                   rows: str | None = None) -> None:
        db = self._writerDB()
        try:
            with _writing(db):
                rejected = self._raiseFences(db, fences)
                if rejected:
                    raise FenceRejected(rejected)
                db.execute(_INSERT_BATCH, (batch,))
                if entries is not None:
                    db.execute(_INSERT_OUTBOX, (entries,))
                if rows is not None:
                    db.execute(_INSERT_CONVERSATIONS, (rows,))
        except sqlite3.IntegrityError as e:
            groups, streams = self._conflicting(db.execute, strictjson.loads(batch))
            raise StreamConflict(groups, str(e), streams=streams) from None

    # -- reads (reader thread): readAfter, readBefore, findClientId and findEventId are
    # SQLReads'

    def _idIndexCondition(self, stream: str) -> str:
        # The ids of other streams are not indexed: their lookup walks the stream's events.
        return f" AND {NOTIFICATION_IDS}" if stream.startswith(inboxStream("")) else ""

    # -- conversation summaries

    def listConversations(self, user: str, limit: int, before: tuple[float, str] | None):
        return self._read(self._listConversations, user, limit, before)

    def _listConversations(self, user: str, limit: int,
                           before: tuple[float, str] | None) -> ConversationPage:
        updated, stream = before if before is not None else (float("inf"), "")
        db = self._readerDB()
        if before is None:
            rows = db.execute(_LIST.replace("(c.updated, c.stream) < (?, ?)", "1"),
                              (user, limit)).fetchall()
        else:
            rows = db.execute(_LIST, (user, updated, stream, limit)).fetchall()
        (total,) = db.execute(
            "SELECT COALESCE(SUM(last_seq - read_seq), 0) FROM conversations WHERE usr = ?",
            (user,)).fetchone()
        items = [(rowFrom(r[:8]), _row(r[8:]) if r[8] is not None else None) for r in rows]
        return ConversationPage(items=items, unread_total=total)

    # -- blocks

    def setBlock(self, blocker: str, blocked: str, on: bool, group: int, token: int,
                 ts: float):
        return self._write(self._setBlock, blocker, blocked, on, group, token, ts)

    def _setBlock(self, blocker: str, blocked: str, on: bool, group: int, token: int,
                  ts: float) -> None:
        db = self._writerDB()
        with _writing(db):
            rejected = self._raiseFences(db, {group: token})
            if rejected:
                raise FenceRejected(rejected)
            if on:
                db.execute("INSERT OR IGNORE INTO blocks (blocker, blocked, created) "
                           "VALUES (?, ?, ?)", (blocker, blocked, ts))
            else:
                db.execute("DELETE FROM blocks WHERE blocker = ? AND blocked = ?",
                           (blocker, blocked))

    def blockersAmong(self, blocked: str, users):
        users = strictjson.dumps(sorted(set(users)))
        return self._read(lambda: {b for (b,) in self._readerDB().execute(
            "SELECT blocker FROM blocks WHERE blocked = ? AND blocker IN "
            "(SELECT value FROM json_each(?))", (blocked, users)).fetchall()})

    # -- last seen

    def writeLastSeen(self, entries, fences):
        if not entries:
            return defer.succeed(None)
        return self._write(self._writeLastSeen, strictjson.dumps(sorted(entries.items())),
                           dict(fences))

    def _writeLastSeen(self, entries: str, fences: dict[int, int]) -> None:
        db = self._writerDB()
        with _writing(db):
            rejected = self._raiseFences(db, fences)
            if rejected:
                raise FenceRejected(rejected)
            db.execute(
                "INSERT INTO presence (usr, last_seen) SELECT json_extract(value, '$[0]'), "
                "json_extract(value, '$[1]') FROM json_each(?) WHERE 1 ON CONFLICT (usr) DO "
                "UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)", (entries,))

    def lastSeen(self, users):
        users = strictjson.dumps(sorted(set(users)))
        return self._read(lambda: dict(self._readerDB().execute(
            "SELECT usr, last_seen FROM presence WHERE usr IN (SELECT value FROM json_each(?))",
            (users,)).fetchall()))

    # -- the outbox

    def pendingOutbox(self, groups, limit: int):
        groups = sorted(set(groups))
        if not groups or limit <= 0:
            return defer.succeed([])
        return self._read(self._pendingOutbox, strictjson.dumps(groups), limit)

    def _pendingOutbox(self, groups: str, limit: int) -> list[OutboxEntry]:
        rows = self._readerDB().execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE grp IN (SELECT value FROM json_each(?)) "
            "ORDER BY created, id LIMIT ?", (groups, limit)).fetchall()
        return [OutboxEntry(id=id, group=grp, stream=stream, seq=seq, body=body, created=created)
                for id, grp, stream, seq, body, created in rows]

    def markOutboxDone(self, entries):
        ids = [entry.id for entry in entries]
        if not ids:
            return defer.succeed(None)
        return self._write(self._markOutboxDone, strictjson.dumps(ids))

    def _markOutboxDone(self, ids: str) -> None:
        db = self._writerDB()
        with _writing(db):
            db.execute("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))", (ids,))

