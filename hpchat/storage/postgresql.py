# -*- test-case-name: tests.storage.test_postgresql -*-
"""
The event store for a cluster of several machines on PostgreSQL (psycopg 3).

One writer connection on its own thread takes every batch in one transaction: the fences of
the batch's groups are raised (or found higher, and the batch rejected) by one upsert that
holds their rows locked until the commit, then the events go in with one statement. Reads use
a second connection on a second thread, so the reactor thread never waits on the network.

A connection that breaks (the server restarted, the network dropped) makes the call fail
with L{StoreError}; the next call connects again, so the persister's retries bring the node
back by itself when the server returns. C{notReadyReason} says why while it is away.

C{ready} is True from a successful L{open} until L{close}; C{notReadyReason} is None while
the server answers, else why not.

The schema is created at first open and versioned in C{hpchat_schema} (version 6 adds the
blocks' version, raised by a trigger on the blocks table); a database of a newer
version than this code knows is refused rather than written wrongly.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from hpchat import strictjson
from hpchat.storage.base import (
    Event,
    FenceRejected,
    IEventStore,
    OutboxEntry,
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

SCHEMA_VERSION = 6

# Each step takes the schema from version i to i + 1; all run in one transaction.
_MIGRATIONS = [
    """
    CREATE TABLE events (
        stream    TEXT             NOT NULL,
        seq       BIGINT           NOT NULL,
        id        TEXT             NOT NULL,
        grp       INTEGER          NOT NULL,
        type      TEXT             NOT NULL,
        sender    TEXT,
        ts        DOUBLE PRECISION NOT NULL,
        client_id TEXT,
        data      TEXT             NOT NULL,
        PRIMARY KEY (stream, seq)
    );
    CREATE UNIQUE INDEX events_by_id ON events (stream, id);
    CREATE UNIQUE INDEX events_by_client_id ON events (stream, sender, client_id)
        WHERE client_id IS NOT NULL;
    CREATE TABLE fences (
        grp   INTEGER PRIMARY KEY,
        token BIGINT  NOT NULL
    );
    """,
    """
    CREATE TABLE outbox (
        id      TEXT             PRIMARY KEY,
        grp     INTEGER          NOT NULL,
        stream  TEXT             NOT NULL,
        seq     BIGINT           NOT NULL,
        body    TEXT             NOT NULL,
        created DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX outbox_by_group ON outbox (grp, created, id);
    """,
    """
    CREATE TABLE conversations (
        usr              TEXT             NOT NULL,
        stream           TEXT             NOT NULL,
        grp              INTEGER          NOT NULL,
        partner          TEXT             NOT NULL,
        last_seq         BIGINT           NOT NULL,
        read_seq         BIGINT           NOT NULL,
        partner_read_seq BIGINT           NOT NULL,
        updated          DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (usr, stream)
    );
    CREATE INDEX conversations_by_activity ON conversations (usr, updated DESC, stream DESC);
    CREATE INDEX conversations_by_stream ON conversations (stream);
    """,
    """
    CREATE TABLE blocks (
        blocker TEXT             NOT NULL,
        blocked TEXT             NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (blocker, blocked)
    );
    """,
    """
    CREATE TABLE presence (
        usr       TEXT             PRIMARY KEY,
        last_seen DOUBLE PRECISION NOT NULL
    );
    """,
    # The blocks' version, raised by a trigger in the transaction of every change of a block
    # (a SEQUENCE would not do: it moves outside the transaction, before the change is seen).
    """
    CREATE TABLE blocks_version (
        id      INTEGER PRIMARY KEY CHECK (id = 0),
        version BIGINT  NOT NULL
    );
    INSERT INTO blocks_version (id, version) VALUES (0, 0);
    CREATE FUNCTION hpchat_blocks_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE blocks_version SET version = version + 1 WHERE id = 0;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER blocks_changed AFTER INSERT OR UPDATE OR DELETE ON blocks
        FOR EACH ROW EXECUTE FUNCTION hpchat_blocks_changed();
    """,
]

_INSERT_CONVERSATIONS = (
    f"INSERT INTO conversations ({ROW_COLUMNS}) SELECT * FROM unnest(%s::text[], %s::text[], "
    "%s::integer[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], "
    "%s::double precision[]) ON CONFLICT (usr, stream) DO UPDATE SET grp = excluded.grp, "
    "partner = excluded.partner, last_seq = excluded.last_seq, read_seq = excluded.read_seq, "
    "partner_read_seq = excluded.partner_read_seq, updated = excluded.updated"
)
_LIST = (
    f"SELECT {_LIST_COLUMNS} FROM conversations AS c LEFT JOIN events AS e "
    "ON e.stream = c.stream AND e.seq = c.last_seq WHERE c.usr = %s {where}"
    "ORDER BY c.updated DESC, c.stream DESC LIMIT %s"
)

# An id already pending stays as it is (a notification republished before it was marked done).
_INSERT_OUTBOX = (
    f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) SELECT * FROM unnest(%s::text[], %s::integer[], "
    "%s::text[], %s::bigint[], %s::text[], %s::double precision[]) ON CONFLICT (id) DO NOTHING"
)

# One statement for every group of a batch: raise each stored token to ours unless it is
# higher, and say what is stored afterwards. The rows stay locked until the commit, so two
# writers of one group are serialised and the loser sees the winner's token.
_RAISE_FENCES = (
    "INSERT INTO fences (grp, token) SELECT * FROM unnest(%s::integer[], %s::bigint[]) "
    "ON CONFLICT (grp) DO UPDATE SET token = GREATEST(fences.token, excluded.token) "
    "RETURNING grp, token"
)
_INSERT_BATCH = (
    f"INSERT INTO events ({_COLUMNS}) SELECT * FROM unnest(%s::text[], %s::bigint[], "
    "%s::text[], %s::integer[], %s::text[], %s::text[], %s::double precision[], %s::text[], "
    "%s::text[])"
)


class SchemaTooNew(StoreError):
    """
    The database was set up by a newer version of hpchat.
    """


@implementer(IEventStore, IConversationStore, IBlockStore, IBlockVersion, IPresenceStore)
class PostgreSQLStore(SQLReads):
    """
    L{IEventStore} on one PostgreSQL database given by a libpq C{dsn}.
    """

    log = Logger()
    marker = "%s"
    byteOrder = ' COLLATE "C"'
    sameSender = "IS NOT DISTINCT FROM"

    def __init__(self, reactor, dsn: str, connectTimeout: float = 5.0,
                 statementTimeout: float = 10.0):
        self._reactor = reactor
        self._dsn = dsn
        self._connectTimeout = connectTimeout
        self._statementTimeout = statementTimeout
        self.ready = False
        self.notReadyReason: str | None = None
        self._writer: Any = None
        self._reader: Any = None
        self._writerThread = ThreadWorker(reactor, "hpchat-pg-writer")
        self._readerThread = ThreadWorker(reactor, "hpchat-pg-reader")

    # -- connections (store threads only)

    def _connect(self):
        import psycopg

        connection = psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=max(1, int(self._connectTimeout)),
            options=f"-c statement_timeout={int(self._statementTimeout * 1000)}",
            application_name="hpchat")
        return connection

    def _writerConnection(self):
        if self._writer is None or self._writer.closed:
            self._writer = self._connect()
        return self._writer

    def _fetchAll(self, sql: str, params: tuple) -> list:
        return self._readerConnection().execute(sql, params).fetchall()

    def _readerConnection(self):
        if self._reader is None or self._reader.closed:
            self._reader = self._connect()
        return self._reader

    # -- lifecycle

    def open(self):
        self._writerThread.start()
        self._readerThread.start()

        def opened(_):
            self.ready = True
            self.notReadyReason = None
            self.log.info("event store open: PostgreSQL {where}", where=self._where())

        d = self._write(self._migrate)
        d.addCallback(lambda _: self._read(self._readerConnection))
        d.addCallback(opened)
        return d

    def _where(self) -> str:
        # The DSN without its password.
        from psycopg.conninfo import conninfo_to_dict

        try:
            parts = conninfo_to_dict(self._dsn)
        except Exception:
            return "(dsn)"
        return " ".join(f"{k}={v}" for k, v in parts.items() if k != "password")

    def _migrate(self) -> None:
        db = self._writerConnection()
        with db.transaction():
            # One node migrates at a time; the others wait here, then see the new version.
            db.execute("SELECT pg_advisory_xact_lock(7466294771)")
            db.execute("CREATE TABLE IF NOT EXISTS hpchat_schema (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM hpchat_schema").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(f"postgresql: schema version {version} is newer than this "
                                   f"hpchat knows ({SCHEMA_VERSION})")
            for step in range(version, SCHEMA_VERSION):
                db.execute(_MIGRATIONS[step])
            if row is None:
                db.execute("INSERT INTO hpchat_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                db.execute("UPDATE hpchat_schema SET version = %s", (SCHEMA_VERSION,))

    def close(self):
        self.ready = False
        self.notReadyReason = None
        return self._closeConnections()

    # -- thread plumbing

    def _write(self, f: Callable[..., Any], *args):
        return self._writerThread.submit(self._guard, f, "_writer", *args).addCallbacks(
            self._reachable, self._unreachable)

    def _read(self, f: Callable[..., Any], *args):
        return self._readerThread.submit(self._readTwice, f, *args).addCallbacks(
            self._reachable, self._unreachable)

    def _readTwice(self, f: Callable[..., Any], *args):
        """
        A read on a connection that broke since its last use (a server restart) is tried once
        more on a new one: reads change nothing, so trying again is always safe.
        """
        try:
            return self._guard(f, "_reader", *args)
        except _Unreachable:
            return self._guard(f, "_reader", *args)

    def _guard(self, f, which: str, *args):
        import psycopg

        try:
            return f(*args)
        except (FenceRejected, StreamConflict, SchemaTooNew):
            raise
        except psycopg.Error as e:
            connection = getattr(self, which)
            if connection is None or connection.closed or connection.broken \
                    or isinstance(e, psycopg.OperationalError):
                # Connected again by the next call on this thread.
                if connection is not None:
                    try:
                        connection.close()
                    except psycopg.Error:
                        pass
                setattr(self, which, None)
                raise _Unreachable(f"postgresql: {_firstLine(e)}") from e
            raise StoreError(f"postgresql: {_firstLine(e)}") from e

    def _reachable(self, result):
        if self.ready and self.notReadyReason is not None:
            self.notReadyReason = None
            self.log.info("event store reachable again")
        return result

    def _unreachable(self, failure):
        if failure.check(_Unreachable) and self.ready:
            if self.notReadyReason is None:
                self.log.warn("event store unreachable: {error}",
                              error=failure.getErrorMessage())
            self.notReadyReason = f"unreachable: {failure.getErrorMessage()}"
        return failure

    # -- writes (writer thread)

    def claim(self, group: int, token: int, stream: str, recent: int):
        return self._write(self._claimTxn, group, token, stream, recent)

    def _claimTxn(self, group: int, token: int, stream: str, recent: int) -> StreamSnapshot:
        db = self._writerConnection()
        with db.transaction():
            self._raiseFences(db, {group: token})
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE stream = %s ORDER BY seq DESC LIMIT %s",
                (stream, recent)).fetchall()
            reads = dict(db.execute(
                "SELECT usr, read_seq FROM conversations WHERE stream = %s",
                (stream,)).fetchall())
        lastSeq = rows[0][1] if rows else 0
        return StreamSnapshot(last_seq=lastSeq, recent=[_row(r) for r in reversed(rows)],
                              reads=reads)

    @staticmethod
    def _raiseFences(db, fences: dict[int, int]) -> None:
        """
        Inside a transaction: raise the stored tokens of C{fences} to ours, or raise
        L{FenceRejected} (rolling the transaction back) where a higher one is stored.
        """
        groups = sorted(fences)
        stored = db.execute(_RAISE_FENCES, (groups, [fences[g] for g in groups])).fetchall()
        rejected = sorted(g for g, t in stored if t > fences[g])
        if rejected:
            raise FenceRejected(rejected)

    def append(self, events: Sequence[Event], fences: dict[int, int],
               outbox: Sequence[OutboxEntry] = (), conversations: Sequence = ()):
        requireFences(events, fences, outbox, conversations)
        columns: list[list] = [[] for _ in range(9)]
        for e in events:
            for column, value in zip(columns, (
                    e.stream, e.seq, e.id, e.group, e.type, e.sender, e.ts, e.client_id,
                    strictjson.dumps(e.data))):
                column.append(value)
        entries: list[list] | None = None
        if outbox:
            entries = [[] for _ in range(6)]
            for o in outbox:
                for column, field in zip(entries, (o.id, o.group, o.stream, o.seq, o.body,
                                                   o.created)):
                    column.append(field)
        rows: list[list] | None = None
        if conversations:
            rows = [list(column) for column in
                    zip(*(rowColumns(c) for c in latestRows(conversations)))]
        return self._write(self._appendTxn, columns, dict(fences), entries, rows)

    def _appendTxn(self, columns: list[list], fences: dict[int, int],
                   entries: list[list] | None, rows: list[list] | None = None) -> None:
        import psycopg

        db = self._writerConnection()
        try:
            with db.transaction():
                self._raiseFences(db, fences)
                if columns[0]:
                    db.execute(_INSERT_BATCH, columns)
                if entries is not None:
                    db.execute(_INSERT_OUTBOX, entries)
                if rows is not None:
                    db.execute(_INSERT_CONVERSATIONS, rows)
        except psycopg.errors.UniqueViolation as e:
            groups, streams = self._conflicting(db.execute, zip(*columns))
            raise StreamConflict(groups, _firstLine(e), streams=streams) from None

    # -- reads (reader thread): readAfter, readBefore, findClientId and findEventId are
    # SQLReads'

    # -- conversation summaries

    def listConversations(self, user: str, limit: int, before: tuple[float, str] | None):
        return self._read(self._listConversations, user, limit, before)

    def _listConversations(self, user: str, limit: int,
                           before: tuple[float, str] | None) -> ConversationPage:
        db = self._readerConnection()
        if before is None:
            rows = db.execute(_LIST.format(where=""), (user, limit)).fetchall()
        else:
            rows = db.execute(_LIST.format(where="AND (c.updated, c.stream) < (%s, %s) "),
                              (user, before[0], before[1], limit)).fetchall()
        (total,) = db.execute(
            "SELECT COALESCE(SUM(last_seq - read_seq), 0) FROM conversations WHERE usr = %s",
            (user,)).fetchone()
        items = [(rowFrom(r[:8]), _row(r[8:]) if r[8] is not None else None) for r in rows]
        return ConversationPage(items=items, unread_total=int(total))

    # -- blocks

    def setBlock(self, blocker: str, blocked: str, on: bool, group: int, token: int,
                 ts: float):
        return self._write(self._setBlock, blocker, blocked, on, group, token, ts)

    def _setBlock(self, blocker: str, blocked: str, on: bool, group: int, token: int,
                  ts: float) -> None:
        db = self._writerConnection()
        with db.transaction():
            self._raiseFences(db, {group: token})
            if on:
                db.execute("INSERT INTO blocks (blocker, blocked, created) VALUES (%s, %s, %s) "
                           "ON CONFLICT DO NOTHING", (blocker, blocked, ts))
            else:
                db.execute("DELETE FROM blocks WHERE blocker = %s AND blocked = %s",
                           (blocker, blocked))

    def blockersAmong(self, blocked: str, users):
        users = sorted(set(users))
        return self._read(lambda: {b for (b,) in self._readerConnection().execute(
            "SELECT blocker FROM blocks WHERE blocked = %s AND blocker = ANY(%s)",
            (blocked, users)).fetchall()})

    # -- last seen

    def writeLastSeen(self, entries, fences):
        if not entries:
            return defer.succeed(None)
        users = sorted(entries)
        return self._write(self._writeLastSeen, users, [float(entries[u]) for u in users],
                           dict(fences))

    def _writeLastSeen(self, users: list[str], times: list[float],
                       fences: dict[int, int]) -> None:
        db = self._writerConnection()
        with db.transaction():
            self._raiseFences(db, fences)
            db.execute(
                "INSERT INTO presence (usr, last_seen) SELECT * FROM unnest(%s::text[], "
                "%s::double precision[]) ON CONFLICT (usr) DO UPDATE SET "
                "last_seen = GREATEST(presence.last_seen, excluded.last_seen)", (users, times))

    def lastSeen(self, users):
        users = sorted(set(users))
        return self._read(lambda: dict(self._readerConnection().execute(
            "SELECT usr, last_seen FROM presence WHERE usr = ANY(%s)", (users,)).fetchall()))

    # -- the outbox

    def pendingOutbox(self, groups, limit: int):
        groups = sorted(set(groups))
        if not groups or limit <= 0:
            return defer.succeed([])
        return self._read(self._pendingOutbox, groups, limit)

    def _pendingOutbox(self, groups: list[int], limit: int) -> list[OutboxEntry]:
        rows = self._readerConnection().execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE grp = ANY(%s) ORDER BY created, id "
            "LIMIT %s", (groups, limit)).fetchall()
        return [OutboxEntry(id=id, group=grp, stream=stream, seq=seq, body=body, created=created)
                for id, grp, stream, seq, body, created in rows]

    def markOutboxDone(self, entries):
        ids = sorted({e.id for e in entries})
        if not ids:
            return defer.succeed(None)
        return self._write(lambda: self._writerConnection().execute(
            "DELETE FROM outbox WHERE id = ANY(%s)", (ids,)) and None)



class _Unreachable(StoreError):
    """
    The connection to the server broke; the next call connects again.
    """


def _firstLine(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
