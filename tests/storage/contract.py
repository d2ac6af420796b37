"""
The event store contract: one suite of tests that every L{IEventStore} backend must pass.

A backend's test module subclasses L{EventStoreContract} with C{twisted.trial.unittest.TestCase}
and implements C{makeStore()} (a new, unopened store over fresh storage) and
C{reopenStore(store)} (a second store over the same storage).
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface.verify import verifyObject

from hpchat.storage.base import Event, FenceRejected, IEventStore, StreamConflict

from tests.support.trial import asyncTest

S = "dm:alice:bob"


def event(seq: int, stream: str = S, group: int = 1, **kw) -> Event:
    fields = dict(stream=stream, seq=seq, id=f"{stream}-{seq}", group=group, type="message",
                  sender="alice", ts=1000.0 + seq, client_id=None, data={"text": f"m{seq}"})
    fields.update(kw)
    return Event(**fields)


class EventStoreContract:
    def makeStore(self):
        raise NotImplementedError

    def reopenStore(self, store):
        raise NotImplementedError

    async def opened(self, store=None):
        store = store or self.makeStore()
        await store.open()
        self.addCleanup(lambda: store.close() if store.ready else None)
        return store

    @asyncTest
    async def test_interface(self):
        """
        The store provides IEventStore and is ready only while open.
        """
        store = self.makeStore()
        self.assertTrue(verifyObject(IEventStore, store))
        self.assertFalse(store.ready)
        await store.open()
        self.assertTrue(store.ready)
        await store.close()
        self.assertFalse(store.ready)

    @asyncTest
    async def test_appendAndReadBack(self):
        """
        Appended events are read back whole and in seq order.
        """
        store = await self.opened()
        events = [event(1, client_id="c1"), event(2, sender="bob", data={"text": "ünï 😀"}),
                  event(3, type="flirt", sender=None, data={"nested": {"a": [1, 2]}})]
        await store.append(events, {1: 5})
        self.assertEqual(await store.readAfter(S, 0, 10), events)
        self.assertEqual(await store.readAfter(S, 1, 1), [events[1]])
        self.assertEqual(await store.readAfter(S, 3, 10), [])
        self.assertEqual(await store.readAfter("dm:x:y", 0, 10), [])

    @asyncTest
    async def test_claimReturnsLastSeqAndRecent(self):
        """
        claim() returns the stream's last seq and its newest events, oldest first.
        """
        store = await self.opened()
        snapshot = await store.claim(1, 5, S, 3)
        self.assertEqual((snapshot.last_seq, list(snapshot.recent)), (0, []))
        await store.append([event(i) for i in range(1, 8)], {1: 5})
        snapshot = await store.claim(1, 5, S, 3)
        self.assertEqual(snapshot.last_seq, 7)
        self.assertEqual([e.seq for e in snapshot.recent], [5, 6, 7])

    @asyncTest
    async def test_paging(self):
        """
        readBefore pages backwards: the newest events before a seq, oldest first.
        """
        store = await self.opened()
        await store.append([event(i) for i in range(1, 26)], {1: 1})
        self.assertEqual([e.seq for e in await store.readBefore(S, None, 10)],
                         list(range(16, 26)))
        self.assertEqual([e.seq for e in await store.readBefore(S, 16, 10)], list(range(6, 16)))
        self.assertEqual([e.seq for e in await store.readBefore(S, 6, 10)], list(range(1, 6)))
        self.assertEqual(await store.readBefore(S, 1, 10), [])

    @asyncTest
    async def test_fenceRejectsLowerToken(self):
        """
        After a higher token is seen for a group, a batch with a lower one writes nothing and
        fails with FenceRejected naming the group; other groups are unaffected.
        """
        store = await self.opened()
        await store.append([event(1)], {1: 10})
        await store.claim(1, 20, S, 10)
        batch = [event(2), event(1, stream="dm:carol:dave", group=2)]
        failure = await self._failure(store.append(batch, {1: 10, 2: 10}))
        self.assertIsInstance(failure, FenceRejected)
        self.assertEqual(failure.groups, (1,))
        self.assertEqual([e.seq for e in await store.readAfter(S, 0, 10)], [1])
        self.assertEqual(await store.readAfter("dm:carol:dave", 0, 10), [])
        await store.append([event(2)], {1: 20})
        await store.append([event(1, stream="dm:carol:dave", group=2)], {2: 1})
        self.assertEqual([e.seq for e in await store.readAfter(S, 0, 10)], [1, 2])

    @asyncTest
    async def test_claimWithLowerTokenRejected(self):
        """
        A claim with a token lower than the stored one fails: a deposed owner cannot load.
        """
        store = await self.opened()
        await store.claim(3, 7, S, 10)
        failure = await self._failure(store.claim(3, 6, S, 10))
        self.assertIsInstance(failure, FenceRejected)
        await store.claim(3, 7, S, 10)

    @asyncTest
    async def test_clientIdDedupe(self):
        """
        A (stream, sender, client_id) is stored once: a second one conflicts and writes nothing;
        findClientId finds the original.
        """
        store = await self.opened()
        original = event(1, client_id="abc")
        await store.append([original], {1: 1})
        self.assertEqual(await store.findClientId(S, "alice", "abc"), original)
        self.assertIsNone(await store.findClientId(S, "bob", "abc"))
        self.assertIsNone(await store.findClientId(S, "alice", "other"))
        failure = await self._failure(store.append([event(2, client_id="abc")], {1: 1}))
        self.assertIsInstance(failure, StreamConflict)
        self.assertEqual(failure.groups, (1,))
        # The same client_id from the other participant is a different message.
        await store.append([event(2, client_id="abc", sender="bob")], {1: 1})
        self.assertEqual(len(await store.readAfter(S, 0, 10)), 2)

    @asyncTest
    async def test_notificationIdDedupe(self):
        """
        An event id is stored once per stream; findEventId finds it.
        """
        store = await self.opened()
        inbox = "inbox:bob"
        first = event(1, stream=inbox, id="n-1", type="flirt", sender="alice", data={})
        await store.append([first], {1: 1})
        self.assertEqual(await store.findEventId(inbox, "n-1"), first)
        self.assertIsNone(await store.findEventId(inbox, "n-2"))
        failure = await self._failure(store.append([event(2, stream=inbox, id="n-1")], {1: 1}))
        self.assertIsInstance(failure, StreamConflict)
        self.assertEqual([e.seq for e in await store.readAfter(inbox, 0, 10)], [1])

    @asyncTest
    async def test_duplicateSeqConflicts(self):
        """
        A seq already taken conflicts, and the whole batch is written or nothing.
        """
        store = await self.opened()
        await store.append([event(1)], {1: 1})
        other = event(1, stream="dm:carol:dave", group=2)
        failure = await self._failure(store.append([other, event(1, id="x")], {1: 1, 2: 1}))
        self.assertIsInstance(failure, StreamConflict)
        self.assertEqual(failure.groups, (1,))
        self.assertEqual(await store.readAfter("dm:carol:dave", 0, 10), [])

    @asyncTest
    async def test_largeBatch(self):
        """
        A batch of thousands of events across many streams is written atomically.
        """
        store = await self.opened()
        batch = [event(seq, stream=f"dm:u{n}:v{n}", group=n % 8, data={"text": "x" * 200})
                 for n in range(50) for seq in range(1, 101)]
        await store.append(batch, {g: 1 for g in range(8)})
        for n in (0, 17, 49):
            events = await store.readAfter(f"dm:u{n}:v{n}", 0, 1000)
            self.assertEqual([e.seq for e in events], list(range(1, 101)))

    @asyncTest
    async def test_concurrentAppendsToDifferentGroups(self):
        """
        Appends to different groups issued at once all land.
        """
        store = await self.opened()
        writes = [store.append([event(seq, stream=f"dm:g{g}:h{g}", group=g)], {g: 1})
                  for g in range(10) for seq in (1,)]
        writes += [store.append([event(2, stream=f"dm:g{g}:h{g}", group=g)], {g: 1})
                   for g in range(10)]
        await defer.gatherResults(writes, consumeErrors=True)
        for g in range(10):
            self.assertEqual([e.seq for e in await store.readAfter(f"dm:g{g}:h{g}", 0, 10)],
                             [1, 2])

    @asyncTest
    async def test_reopenAfterClose(self):
        """
        Events and fences survive closing and reopening the store.
        """
        store = await self.opened()
        await store.append([event(1, client_id="k", group=4)], {4: 9})
        await store.close()
        again = await self.opened(self.reopenStore(store))
        self.assertEqual([e.seq for e in await again.readAfter(S, 0, 10)], [1])
        self.assertEqual((await again.findClientId(S, "alice", "k")).seq, 1)
        failure = await self._failure(again.claim(4, 8, S, 10))
        self.assertIsInstance(failure, FenceRejected)

    async def _failure(self, d):
        try:
            await d
        except Exception as e:
            return e
        self.fail("expected a failure")
