"""
The event store contract on a real PostgreSQL server, plus what is particular to it: the
versioned schema, a server restart under the store, and fencing between two writers.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from hpchat.storage.base import FenceRejected, StoreError
from hpchat.storage.postgresql import SCHEMA_VERSION, PostgreSQLStore, SchemaTooNew
from tests.storage.contract import EventStoreContract, event
from tests.storage.conversations_contract import BlockVersionContract, ConversationStoreContract
from tests.support.postgres import freshDatabase, startPostgres
from tests.support.process import freePort
from tests.support.trial import asyncTest


def _reactor():
    from twisted.internet import reactor

    return reactor


class PostgreSQLContractTests(EventStoreContract, ConversationStoreContract,
                              BlockVersionContract, unittest.TestCase):
    async def _setUp(self):
        self.dsn = await freshDatabase(self)

    def setUp(self):
        return defer.ensureDeferred(self._setUp())

    def makeStore(self):
        return PostgreSQLStore(_reactor(), self.dsn)

    def reopenStore(self, store):
        return PostgreSQLStore(_reactor(), self.dsn)


class PostgreSQLSpecificTests(unittest.TestCase):
    async def opened(self, dsn):
        store = PostgreSQLStore(_reactor(), dsn, connectTimeout=2)
        await store.open()
        self.addCleanup(lambda: store.close() if store.ready else None)
        return store

    @asyncTest
    async def test_schemaVersioned(self):
        """
        The first open creates the schema at the current version; opening again keeps it.
        """
        dsn = await freshDatabase(self)
        store = await self.opened(dsn)
        version = await store._write(
            lambda: store._writer.execute("SELECT version FROM hpchat_schema").fetchall())
        self.assertEqual(version, [(SCHEMA_VERSION,)])
        await store.close()
        again = await self.opened(dsn)
        version = await again._write(
            lambda: again._writer.execute("SELECT version FROM hpchat_schema").fetchall())
        self.assertEqual(version, [(SCHEMA_VERSION,)])

    @asyncTest
    async def test_olderSchemaMigrated(self):
        """
        A database of schema version 1 (events and fences, before the outbox) is brought up
        to the current version at open, its events kept.
        """
        import psycopg

        from hpchat.storage.postgresql import _MIGRATIONS

        dsn = await freshDatabase(self)

        def setUpVersion1():
            with psycopg.connect(dsn, autocommit=True) as db:
                db.execute(_MIGRATIONS[0])
                db.execute("CREATE TABLE hpchat_schema (version INTEGER NOT NULL)")
                db.execute("INSERT INTO hpchat_schema VALUES (1)")
                db.execute("INSERT INTO events VALUES ('dm:alice:bob', 1, 'x', 1, 'message', "
                           "'alice', 1.0, NULL, '{\"text\":\"old\"}')")

        from twisted.internet import threads

        await threads.deferToThread(setUpVersion1)
        store = await self.opened(dsn)
        version = await store._write(
            lambda: store._writer.execute("SELECT version FROM hpchat_schema").fetchall())
        self.assertEqual(version, [(SCHEMA_VERSION,)])
        self.assertEqual([e.data for e in await store.readAfter("dm:alice:bob", 0, 10)],
                         [{"text": "old"}])
        self.assertEqual(await store.pendingOutbox([1], 10), [])

    @asyncTest
    async def test_databaseBeforeTheBlocksVersionMigrated(self):
        """
        A database of schema version 5 (blocks without their version) is brought up to the
        current version at open, its blocks kept, and gains the version, which the next
        change raises.
        """
        from hpchat.storage import postgresql

        self.assertEqual(SCHEMA_VERSION, 6)
        dsn = await freshDatabase(self)
        self.patch(postgresql, "SCHEMA_VERSION", 5)
        old = await self.opened(dsn)
        await old.setBlock("alice", "bob", True, 1, 1, 1000.0)
        with self.assertRaises(StoreError):
            await old.blocksVersion()
        await old.close()
        self.patch(postgresql, "SCHEMA_VERSION", 6)
        store = await self.opened(dsn)
        version = await store._write(
            lambda: store._writer.execute("SELECT version FROM hpchat_schema").fetchall())
        self.assertEqual(version, [(6,)])
        self.assertEqual(await store.blocksOf("alice"), ["bob"])
        self.assertEqual(await store.blocksVersion(), 0)
        await store.setBlock("alice", "bob", False, 1, 1, 1001.0)
        self.assertEqual(await store.blocksVersion(), 1)

    @asyncTest
    async def test_newerSchemaRefused(self):
        """
        A database set up by a newer hpchat is refused at open, not written.
        """
        dsn = await freshDatabase(self)
        store = await self.opened(dsn)
        await store._write(lambda: store._writer.execute(
            "UPDATE hpchat_schema SET version = %s", (SCHEMA_VERSION + 1,)))
        await store.close()
        newer = PostgreSQLStore(_reactor(), dsn)
        with self.assertRaises(SchemaTooNew):
            await newer.open()
        await newer.close()

    @asyncTest
    async def test_serverRestartUnderTheStore(self):
        """
        While the server is away, calls fail with StoreError and the store says why it is
        not ready; when it is back the next calls succeed without reopening, and what was
        committed before is all there.
        """
        server = await startPostgres(self)
        store = await self.opened(server.dsn)
        await store.append([event(1)], {1: 5})
        # A fast shutdown ends the server's backends with it (after a kill -9 of the
        # postmaster a backend may still answer a moment).
        await server.stop()
        with self.assertRaises(StoreError):
            await store.append([event(2)], {1: 5})
        self.assertIsNotNone(store.notReadyReason)
        await server.start()
        await store.append([event(2)], {1: 5})
        self.assertIsNone(store.notReadyReason)
        self.assertEqual([e.seq for e in await store.readAfter(event(1).stream, 0, 10)], [1, 2])

    @asyncTest
    async def test_unreachableAtOpen(self):
        """
        A server that is not there fails open with StoreError (the store service retries).
        """
        store = PostgreSQLStore(_reactor(), f"host=127.0.0.1 port={freePort()} user=x "
                                             "dbname=x connect_timeout=1", connectTimeout=1)
        with self.assertRaises(StoreError):
            await store.open()
        await store.close()

    @asyncTest
    async def test_fencedWriterOnAnotherConnection(self):
        """
        Two stores (two nodes) on one database: once the newer owner has claimed the group,
        the older one's batch is rejected whole.
        """
        dsn = await freshDatabase(self)
        old = await self.opened(dsn)
        new = await self.opened(dsn)
        await old.append([event(1)], {1: 10})
        await new.claim(1, 11, event(1).stream, 10)
        with self.assertRaises(FenceRejected):
            await old.append([event(2)], {1: 10})
        self.assertEqual([e.seq for e in await new.readAfter(event(1).stream, 0, 10)], [1])
