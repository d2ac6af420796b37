"""
The event store contract on SQLite, plus what is particular to SQLite.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.trial import unittest

from hpchat.storage.base import StoreBusy, StoreError
from hpchat.storage.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.storage.contract import EventStoreContract, event, outboxEntry
from tests.storage.conversations_contract import BlockVersionContract, ConversationStoreContract
from tests.support.trial import asyncTest


class SQLiteContractTests(EventStoreContract, ConversationStoreContract,
                          BlockVersionContract, unittest.TestCase):
    def makeStore(self):
        from twisted.internet import reactor

        folder = os.path.abspath(self.mktemp())
        return SQLiteStore(reactor, os.path.join(folder, "sub", "events.sqlite3"))

    def reopenStore(self, store):
        from twisted.internet import reactor

        return SQLiteStore(reactor, store.path)


class SQLiteSpecificTests(unittest.TestCase):
    def store(self, path=None):
        from twisted.internet import reactor

        return SQLiteStore(reactor, path or os.path.join(os.path.abspath(self.mktemp()), "e.db"))

    @asyncTest
    async def test_walAndDurableCommits(self):
        """
        The file is in WAL mode and the writer commits with synchronous=FULL.
        """
        store = self.store()
        await store.open()
        self.addCleanup(store.close)
        mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
        self.assertEqual(mode, "wal")
        level = await store._write(lambda: store._writer.execute("PRAGMA synchronous").fetchone())
        self.assertEqual(level[0], 2)

    @asyncTest
    async def test_fileOfTheFirstSchemaOpens(self):
        """
        A file written before the outbox existed (schema version 0) opens with its events and
        fences, gains the outbox table and is marked with the current schema version.
        """
        path = os.path.join(os.path.abspath(self.mktemp()), "old.db")
        os.makedirs(os.path.dirname(path))
        old = sqlite3.connect(path)
        old.executescript(
            "CREATE TABLE events (stream TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,"
            " grp INTEGER NOT NULL, type TEXT NOT NULL, sender TEXT, ts REAL NOT NULL,"
            " client_id TEXT, data TEXT NOT NULL, PRIMARY KEY (stream, seq)) WITHOUT ROWID;"
            "CREATE UNIQUE INDEX events_by_id ON events (stream, id);"
            "CREATE TABLE fences (grp INTEGER PRIMARY KEY, token INTEGER NOT NULL);"
            "INSERT INTO events VALUES ('dm:alice:bob', 1, 'dm:alice:bob-1', 1, 'message',"
            " 'alice', 1001.0, NULL, '{\"text\":\"m1\"}');"
            "INSERT INTO events VALUES ('inbox:bob', 1, 'n.1', 1, 'flirt', 'alice', 1001.0,"
            " NULL, '{\"score\":NaN}');"
            "INSERT INTO fences VALUES (1, 3);")
        old.commit()
        old.close()
        store = self.store(path)
        await store.open()
        self.addCleanup(store.close)
        self.assertEqual(await store.readAfter("dm:alice:bob", 0, 10), [event(1)])
        # Written before inputs were strict: what is read back is JSON.
        [flirt] = await store.readAfter("inbox:bob", 0, 10)
        self.assertEqual(flirt.data, {"score": None})
        with self.assertRaises(Exception) as caught:
            await store.append([event(2)], {1: 2})
        self.assertEqual(type(caught.exception).__name__, "FenceRejected")
        await store.append([event(2)], {1: 3}, [outboxEntry(2)])
        self.assertEqual(await store.pendingOutbox([1], 10), [outboxEntry(2)])
        version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
        self.assertEqual(version, SCHEMA_VERSION)

    @asyncTest
    async def test_fileBeforeTheBlocksVersionOpens(self):
        """
        A file of schema version 4 (blocks without their version) opens with its blocks and
        gains the version, which the next change raises.
        """
        from hpchat.storage import sqlite

        self.assertGreaterEqual(SCHEMA_VERSION, 5)
        self.patch(sqlite, "SCHEMA_VERSION", 4)
        old = self.store()
        await old.open()
        await old.setBlock("alice", "bob", True, 1, 1, 1000.0)
        with self.assertRaises(StoreError):
            await old.blocksVersion()
        await old.close()
        self.assertEqual(sqlite3.connect(old.path).execute("PRAGMA user_version").fetchone(),
                         (4,))
        self.patch(sqlite, "SCHEMA_VERSION", 5)
        store = self.store(old.path)
        await store.open()
        self.addCleanup(store.close)
        self.assertEqual(await store.blocksOf("alice"), ["bob"])
        self.assertEqual(await store.blocksVersion(), 0)
        await store.setBlock("alice", "bob", False, 1, 1, 1001.0)
        self.assertEqual(await store.blocksVersion(), 1)
        self.assertEqual(sqlite3.connect(old.path).execute("PRAGMA user_version").fetchone(),
                         (5,))

    @asyncTest
    async def test_notificationIdsAloneAreIndexed(self):
        """
        A file of schema version 5 (every event's id indexed) opens with the index on the
        inbox streams' ids alone: a notification id is still stored once and found through
        that index, and a conversation's event is still found by its id.
        """
        from hpchat.storage import sqlite

        self.patch(sqlite, "SCHEMA_VERSION", 5)
        old = self.store()
        await old.open()
        await old.append([event(1), event(1, stream="inbox:bob", id="n-1", type="flirt",
                                            sender="alice", data={})], {1: 1})
        await old.close()
        with sqlite3.connect(old.path) as version5:
            version5.execute("CREATE UNIQUE INDEX events_by_id ON events (stream, id)")
        version5.close()
        self.patch(sqlite, "SCHEMA_VERSION", 6)
        store = self.store(old.path)
        await store.open()
        self.addCleanup(store.close)
        db = sqlite3.connect(store.path)
        self.addCleanup(db.close)
        indexes = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' "
            "AND sql IS NOT NULL")}
        self.assertEqual(indexes, {"events_by_client_id", "events_by_notification_id"})
        plan = " ".join(str(row[-1]) for row in db.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM events WHERE stream = ? AND id = ? "
            f"AND {sqlite.NOTIFICATION_IDS}", ("inbox:bob", "n-1")))
        self.assertIn("events_by_notification_id", plan)
        self.assertEqual((await store.findEventId("inbox:bob", "n-1")).seq, 1)
        self.assertEqual((await store.findEventId("dm:alice:bob", event(1).id)).seq, 1)
        self.assertIsNone(await store.findEventId("dm:alice:bob", "n-1"))
        with self.assertRaises(Exception) as caught:
            await store.append([event(2, stream="inbox:bob", id="n-1")], {1: 1})
        self.assertEqual(type(caught.exception).__name__, "StreamConflict")

    @asyncTest
    async def test_twoStoresShareOneFile(self):
        """
        Two stores (two nodes) on one file: the fence written by one stops the other's batch.
        """
        first = self.store()
        await first.open()
        self.addCleanup(first.close)
        second = self.store(first.path)
        await second.open()
        self.addCleanup(second.close)
        await first.append([event(1)], {1: 10})
        await second.claim(1, 11, "dm:alice:bob", 10)
        with self.assertRaises(Exception) as caught:
            await first.append([event(2)], {1: 10})
        self.assertEqual(type(caught.exception).__name__, "FenceRejected")
        await second.append([event(2)], {1: 11})
        self.assertEqual([e.seq for e in await first.readAfter("dm:alice:bob", 0, 10)], [1, 2])

    @asyncTest
    async def test_writeQueuedBehindTheCloseIsAStoreError(self):
        """
        A write asked for while the store closes runs after the writer's connection closed:
        it fails with StoreError.
        """
        store = self.store()
        await store.open()
        closed = store.close()
        write = store.append([event(1)], {1: 10})
        with self.assertRaises(StoreError):
            await write
        await closed

    @asyncTest
    async def test_unopenableFileIsAStoreError(self):
        """
        A path that cannot be a database fails open() with StoreError.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "adir"))
        store = self.store(os.path.join(folder, "adir"))
        with self.assertRaises(StoreError):
            await store.open()
        await store.close()

    @asyncTest
    async def test_fileLockedWhileOpeningIsBusy(self):
        """
        A new file that another process is switching to WAL (SQLite answers "database is
        locked" at once) fails open() with StoreBusy, to be tried again; no connection is
        left open, and a later open() succeeds.
        """
        from hpchat.storage import sqlite as module

        store = self.store()
        opened = []
        connect = module._connect

        def lockedReader(path):
            connection = connect(path)
            opened.append(connection)
            if len(opened) == 2:
                raise sqlite3.OperationalError("database is locked")
            return connection

        self.patch(module, "_connect", lockedReader)
        with self.assertRaises(StoreBusy):
            await store.open()
        self.assertRaises(sqlite3.ProgrammingError, opened[0].execute, "SELECT 1")
        self.patch(module, "_connect", connect)
        await store.open()
        self.addCleanup(store.close)
        self.assertTrue(store.ready)


class WriteTransactionTests(unittest.SynchronousTestCase):
    def test_failedCommitRolledBack(self):
        """
        A COMMIT that fails (busy, I/O error, disk full) is rolled back, so the writer's
        connection is not left inside a transaction that every later BEGIN would refuse.
        """
        from hpchat.storage.sqlite import _writing

        class Connection:
            in_transaction = False

            def __init__(self):
                self.statements = []

            def execute(self, sql, *args):
                self.statements.append(sql)
                if sql == "BEGIN IMMEDIATE":
                    self.in_transaction = True
                elif sql == "COMMIT":
                    raise sqlite3.OperationalError("disk I/O error")
                elif sql == "ROLLBACK":
                    self.in_transaction = False

        db = Connection()
        with self.assertRaises(sqlite3.OperationalError):
            with _writing(db):
                db.execute("INSERT")
        self.assertEqual(db.statements, ["BEGIN IMMEDIATE", "INSERT", "COMMIT", "ROLLBACK"])
        self.assertFalse(db.in_transaction)


class NotOpenTests(unittest.TestCase):
    @asyncTest
    async def test_readBeforeOpenIsAStoreError(self):
        """
        A read that comes before the store is open (a request racing the node's start) fails
        with StoreError, which the API answers 503, not with an AttributeError (a 500).
        """
        from twisted.internet import reactor

        store = SQLiteStore(reactor, os.path.join(os.path.abspath(self.mktemp()), "e.db"))
        with self.assertRaises(StoreError):
            await store.readAfter("dm:alice:bob", 0, 10)
        with self.assertRaises(StoreError):
            await store.findEventId("inbox:bob", "x")
