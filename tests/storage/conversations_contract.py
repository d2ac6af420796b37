"""
The conversation summaries contract: what every L{IConversationStore} backend must do, mixed
into a backend's L{tests.storage.contract.EventStoreContract} tests.
"""

from __future__ import annotations

from zope.interface.verify import verifyObject

from hpchat.storage.base import FenceRejected
from hpchat.storage.blocklist import IBlockStore, IBlockVersion
from hpchat.storage.conversations import ConversationRow, IConversationStore
from hpchat.storage.presence import IPresenceStore
from tests.storage.contract import event
from tests.support.trial import asyncTest

S = "dm:alice:bob"


def row(user: str, stream: str = S, last: int = 1, read: int = 0, partnerRead: int = 0,
        updated: float = 1000.0, group: int = 1) -> ConversationRow:
    a, b = stream.split(":")[1:]
    return ConversationRow(user=user, stream=stream, group=group,
                           partner=b if user == a else a, last_seq=last, read_seq=read,
                           partner_read_seq=partnerRead, updated=updated)


class ConversationStoreContract:
    @asyncTest
    async def test_conversationInterface(self):
        """
        The store provides IConversationStore.
        """
        store = await self.opened()
        self.assertTrue(verifyObject(IConversationStore, store))

    @asyncTest
    async def test_rowsWrittenWithEventsAndReadsClaimed(self):
        """
        Rows written in a batch with their message come back as the stream's read markers on
        claim, and in the user's list with the last message.
        """
        store = await self.opened()
        message = event(1, sender="alice")
        await store.append([message], {1: 5}, conversations=[
            row("alice", read=1, updated=1001.0), row("bob", partnerRead=1, updated=1001.0)])
        snapshot = await store.claim(1, 5, S, 10)
        self.assertEqual(dict(snapshot.reads), {"alice": 1, "bob": 0})
        page = await store.listConversations("bob", 10, None)
        self.assertEqual(page.unread_total, 1)
        self.assertEqual([(r, e) for r, e in page.items],
                         [(row("bob", partnerRead=1, updated=1001.0), message)])
        empty = await store.listConversations("carol", 10, None)
        self.assertEqual((list(empty.items), empty.unread_total), ([], 0))

    @asyncTest
    async def test_rowsAloneAndLastOfABatchWins(self):
        """
        Rows may be written without events; the last row of a batch for a (user,
        conversation) is the one kept, and a later batch replaces it.
        """
        store = await self.opened()
        await store.append([event(1), event(2)], {1: 5})
        await store.append([], {1: 5}, conversations=[
            row("bob", last=2, read=1), row("bob", last=2, read=2), row("alice", last=2)])
        snapshot = await store.claim(1, 5, S, 10)
        self.assertEqual(dict(snapshot.reads), {"alice": 0, "bob": 2})
        await store.append([], {1: 5}, conversations=[row("alice", last=2, read=2)])
        page = await store.listConversations("alice", 10, None)
        self.assertEqual([r.read_seq for r, _ in page.items], [2])
        self.assertEqual(page.unread_total, 0)

    @asyncTest
    async def test_rowsAreFenced(self):
        """
        A batch under a lower token writes none of its rows.
        """
        store = await self.opened()
        await store.append([event(1)], {1: 7}, conversations=[row("alice", read=1)])
        with self.assertRaises(FenceRejected):
            await store.append([], {1: 6}, conversations=[row("alice", read=0, last=9)])
        page = await store.listConversations("alice", 10, None)
        self.assertEqual([r.last_seq for r, _ in page.items], [1])

    @asyncTest
    async def test_listNewestFirstAndPaged(self):
        """
        The list is ordered by (updated, stream) descending and pages with a cursor; ties
        on updated are broken by the stream; the unread total covers every conversation.
        """
        store = await self.opened()
        partners = [f"u{i:02d}" for i in range(7)]
        events, rows = [], []
        for i, partner in enumerate(partners):
            stream = f"dm:alice:{partner}"
            events.append(event(1, stream=stream, group=2, sender=partner))
            rows.append(row("alice", stream=stream, last=1, updated=1000.0 + i // 2, group=2))
        await store.append(events, {2: 1}, conversations=rows)
        expected = sorted(rows, key=lambda r: (r.updated, r.stream), reverse=True)
        seen, before = [], None
        while True:
            page = await store.listConversations("alice", 3, before)
            self.assertEqual(page.unread_total, 7)
            seen.extend(r for r, _ in page.items)
            if len(page.items) < 3:
                break
            last = page.items[-1][0]
            before = (last.updated, last.stream)
        self.assertEqual(seen, expected)
        self.assertTrue(all(e is not None and e.stream == r.stream
                            for r, e in (await store.listConversations("alice", 10, None)).items))

    @asyncTest
    async def test_rowsSurviveReopen(self):
        """
        Rows are durable: a second store over the same storage reads them.
        """
        store = await self.opened()
        await store.append([event(1)], {1: 5}, conversations=[row("alice", read=1)])
        await store.close()
        again = await self.opened(self.reopenStore(store))
        snapshot = await again.claim(1, 5, S, 10)
        self.assertEqual(dict(snapshot.reads), {"alice": 1})

    @asyncTest
    async def test_blocks(self):
        """
        Blocks are set and removed idempotently, listed per blocker in byte order, looked up
        in both directions, fenced, and durable.
        """
        store = await self.opened()
        self.assertTrue(verifyObject(IBlockStore, store))
        for _ in range(2):
            await store.setBlock("alice", "bob", True, 3, 5, 1000.0)
        await store.setBlock("alice", "Zed", True, 3, 5, 1001.0)
        await store.setBlock("carol", "alice", True, 4, 1, 1002.0)
        self.assertEqual(await store.blocksOf("alice"), ["Zed", "bob"])
        self.assertEqual(await store.blocksOf("bob"), [])
        self.assertEqual(await store.blocksBetween("bob", "alice"), {("alice", "bob")})
        self.assertEqual(await store.blocksBetween("alice", "carol"), {("carol", "alice")})
        self.assertEqual(await store.blocksBetween("bob", "carol"), set())
        with self.assertRaises(FenceRejected):
            await store.setBlock("alice", "bob", False, 3, 4, 1003.0)
        for _ in range(2):
            await store.setBlock("alice", "Zed", False, 3, 5, 1004.0)
        await store.close()
        again = await self.opened(self.reopenStore(store))
        self.assertEqual(await again.blocksOf("alice"), ["bob"])
        with self.assertRaises(FenceRejected):
            await again.claim(3, 4, S, 1)

    @asyncTest
    async def test_blockersAmong(self):
        """
        blockersAmong names those of the users given who have blocked the user.
        """
        store = await self.opened()
        await store.setBlock("alice", "bob", True, 3, 5, 1000.0)
        await store.setBlock("carol", "bob", True, 4, 5, 1000.0)
        await store.setBlock("bob", "dave", True, 4, 5, 1000.0)
        self.assertEqual(await store.blockersAmong("bob", ["alice", "dave", "carol", "alice"]),
                         {"alice", "carol"})
        self.assertEqual(await store.blockersAmong("dave", ["alice"]), set())

    @asyncTest
    async def test_lastSeen(self):
        """
        Last-seen times only move forward, are fenced, and are durable.
        """
        store = await self.opened()
        self.assertTrue(verifyObject(IPresenceStore, store))
        await store.writeLastSeen({"alice": 100.5, "bob": 200.0}, {1: 5, 2: 5})
        await store.writeLastSeen({"alice": 50.0, "bob": 300.25}, {1: 5, 2: 5})
        with self.assertRaises(FenceRejected):
            await store.writeLastSeen({"alice": 900.0}, {1: 4})
        self.assertEqual(await store.lastSeen(["alice", "bob", "carol"]),
                         {"alice": 100.5, "bob": 300.25})
        await store.close()
        again = await self.opened(self.reopenStore(store))
        self.assertEqual(await again.lastSeen(["bob"]), {"bob": 300.25})


class BlockVersionContract:
    """
    What every L{IBlockVersion} backend must do (mixed in by the backends that keep it).
    """

    @asyncTest
    async def test_blocksVersion(self):
        """
        Every change of a block raises the version; a change that changes nothing (a block
        set again, an unblock of a pair not blocked) and a fenced-off one leave it; it is
        durable.
        """
        store = await self.opened()
        self.assertTrue(verifyObject(IBlockVersion, store))
        seen = [await store.blocksVersion()]

        async def changed(*args) -> int:
            await store.setBlock(*args)
            seen.append(await store.blocksVersion())
            return seen[-1] - seen[-2]

        self.assertGreater(await changed("alice", "bob", True, 3, 5, 1000.0), 0)
        self.assertEqual(await changed("alice", "bob", True, 3, 5, 1001.0), 0)
        self.assertGreater(await changed("carol", "bob", True, 4, 1, 1002.0), 0)
        self.assertGreater(await changed("alice", "bob", False, 3, 5, 1003.0), 0)
        self.assertEqual(await changed("alice", "bob", False, 3, 5, 1004.0), 0)
        self.assertEqual(await changed("dave", "erin", False, 3, 5, 1005.0), 0)
        with self.assertRaises(FenceRejected):
            await store.setBlock("alice", "bob", True, 3, 4, 1006.0)
        self.assertEqual(await store.blocksVersion(), seen[-1])
        self.assertGreater(await changed("alice", "bob", True, 3, 5, 1007.0), 0)
        await store.close()
        again = await self.opened(self.reopenStore(store))
        self.assertEqual(await again.blocksVersion(), seen[-1])
        await again.setBlock("carol", "bob", False, 4, 1, 1008.0)
        self.assertGreater(await again.blocksVersion(), seen[-1])
