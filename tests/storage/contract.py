"""
The event store contract: one suite of tests that every L{IEventStore} backend must pass.

A backend's test module subclasses L{EventStoreContract} with C{twisted.trial.unittest.TestCase}
and implements C{makeStore()} (a new, unopened store over fresh storage) and
C{reopenStore(store)} (a second store over the same storage).
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface.verify import verifyObject

from hpchat.storage.base import (
    Event,
    FenceRejected,
    IEventStore,
    OutboxEntry,
    StreamConflict,
)
from tests.support.trial import asyncTest

S = "dm:alice:bob"


def event(seq: int, stream: str = S, group: int = 1, **kw) -> Event:
    fields = dict(stream=stream, seq=seq, id=f"{stream}-{seq}", group=group, type="message",
                  sender="alice", ts=1000.0 + seq, client_id=None, data={"text": f"m{seq}"})
    fields.update(kw)
    return Event(**fields)


def outboxEntry(seq: int, stream: str = S, group: int = 1, created: float | None = None,
                **kw) -> OutboxEntry:
    fields = dict(id=f"m.{stream}-{seq}", group=group, stream=stream, seq=seq,
                  body='{"id":"m.%s-%d","data":{"ü":1}}' % (stream, seq),
                  created=1000.0 + seq if created is None else created)
    fields.update(kw)
    return OutboxEntry(**fields)


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

    @asyncTest
    async def test_appendRaisesTheFence(self):
        """
        An append with a higher token raises the group's fence: later appends and claims with
        a lower token are rejected, an equal token is accepted.
        """
        store = await self.opened()
        await store.append([event(1)], {1: 20})
        failure = await self._failure(store.append([event(2)], {1: 15}))
        self.assertIsInstance(failure, FenceRejected)
        self.assertIsInstance(await self._failure(store.claim(1, 19, S, 10)), FenceRejected)
        await store.append([event(2)], {1: 20})
        self.assertEqual([e.seq for e in await store.readAfter(S, 0, 10)], [1, 2])

    @asyncTest
    async def test_duplicatesWithinOneBatchConflict(self):
        """
        A batch that repeats a seq, a notification id (of an inbox stream: a conversation's
        event ids are the node's own, random) or a (sender, client_id) of its own stream
        conflicts and writes nothing, not even its other events.
        """
        store = await self.opened()
        other = event(1, stream="dm:carol:dave", group=2)
        inbox = "inbox:bob"
        batches = [
            [other, event(1), event(1, id="second")],
            [other, event(1, stream=inbox), event(2, stream=inbox, id=event(1, stream=inbox).id)],
            [other, event(1, client_id="k"), event(2, client_id="k")],
        ]
        for batch in batches:
            failure = await self._failure(store.append(batch, {1: 1, 2: 1}))
            self.assertIsInstance(failure, StreamConflict)
            self.assertEqual(failure.groups, (1,))
            for stream in (S, inbox, "dm:carol:dave"):
                self.assertEqual(await store.readAfter(stream, 0, 10), [])
        # Another sender may reuse a client_id, and other streams may reuse ids and seqs.
        await store.append([event(1, client_id="k"), event(2, client_id="k", sender="bob"),
                            event(1, stream="dm:carol:dave", group=2, id=event(1).id)],
                           {1: 1, 2: 1})
        self.assertEqual(len(await store.readAfter(S, 0, 10)), 2)

    @asyncTest
    async def test_conflictAtTheEndWritesNothing(self):
        """
        In a batch of a few hundred events over several groups, one event whose client_id is
        taken fails the whole batch with StreamConflict naming only its group.
        """
        store = await self.opened()
        await store.append([event(1, stream="dm:s3:t3", group=3, client_id="dup")], {3: 1})
        batch = [event(seq, stream=f"dm:s{g}:t{g}", group=g, data={"text": "y" * 100})
                 for g in range(4) for seq in range(2 if g == 3 else 1, 51)]
        batch.append(event(51, stream="dm:s3:t3", group=3, client_id="dup"))
        failure = await self._failure(store.append(batch, {g: 1 for g in range(4)}))
        self.assertIsInstance(failure, StreamConflict)
        self.assertEqual(failure.groups, (3,))
        for g in range(3):
            self.assertEqual(await store.readAfter(f"dm:s{g}:t{g}", 0, 100), [])
        self.assertEqual([e.seq for e in await store.readAfter("dm:s3:t3", 0, 100)], [1])

    @asyncTest
    async def test_limitsAreHonoured(self):
        """
        Reads return at most C{limit} events; a limit of 0 returns none.
        """
        store = await self.opened()
        await store.append([event(i) for i in range(1, 11)], {1: 1})
        self.assertEqual(await store.readAfter(S, 0, 0), [])
        self.assertEqual(await store.readBefore(S, None, 0), [])
        self.assertEqual([e.seq for e in await store.readAfter(S, 2, 3)], [3, 4, 5])
        self.assertEqual([e.seq for e in await store.readBefore(S, None, 3)], [8, 9, 10])
        self.assertEqual([e.seq for e in await store.readBefore(S, 5, 100)], [1, 2, 3, 4])
        self.assertEqual([e.seq for e in await store.readAfter(S, 8, 100)], [9, 10])

    @asyncTest
    async def test_streamsSharingAPrefixStaySeparate(self):
        """
        Streams whose names share a prefix ("inbox:al", "inbox:alice") never see each
        other's events, ids or client_ids.
        """
        store = await self.opened()
        short, long = "inbox:al", "inbox:alice"
        await store.append([event(1, stream=short, id="n1", client_id="c"),
                            event(2, stream=short, id="n2")], {1: 1})
        await store.append([event(1, stream=long, id="n3", client_id="c")], {1: 1})
        self.assertEqual([e.id for e in await store.readAfter(short, 0, 10)], ["n1", "n2"])
        self.assertEqual([e.id for e in await store.readBefore(long, None, 10)], ["n3"])
        self.assertIsNone(await store.findEventId(short, "n3"))
        self.assertIsNone(await store.findEventId(long, "n1"))
        self.assertEqual((await store.findClientId(long, "alice", "c")).id, "n3")
        self.assertEqual((await store.claim(1, 1, short, 10)).last_seq, 2)
        self.assertEqual((await store.claim(1, 1, long, 10)).last_seq, 1)
        self.assertEqual(await store.readAfter("inbox:a", 0, 10), [])

    @asyncTest
    async def test_racingWritersOneWins(self):
        """
        Two stores over the same storage (two nodes) that write the same seq of a stream at
        once: exactly one batch lands, the other fails with StreamConflict.
        """
        first = await self.opened()
        second = await self.opened(self.reopenStore(first))
        mine = [event(1, id="from-first"), event(2, id="from-first-2")]
        theirs = [event(1, id="from-second"), event(2, id="from-second-2")]
        results = await defer.DeferredList([first.append(mine, {1: 1}),
                                            second.append(theirs, {1: 1})],
                                           consumeErrors=True)
        outcomes = sorted(ok for ok, _ in results)
        self.assertEqual(outcomes, [False, True])
        [loser] = [r for ok, r in results if not ok]
        self.assertIsInstance(loser.value, StreamConflict)
        winner = mine if results[0][0] else theirs
        self.assertEqual(await first.readAfter(S, 0, 10), winner)
        self.assertEqual(await second.readAfter(S, 0, 10), winner)

    # -- the outbox

    @asyncTest
    async def test_outboxWrittenWithItsEvents(self):
        """
        Outbox entries written with a batch are pending, oldest first, by group and limit.
        """
        store = await self.opened()
        other = "dm:carol:dave"
        entries = [outboxEntry(1, created=1003.0), outboxEntry(2, created=1001.0),
                   outboxEntry(1, stream=other, group=2, created=1002.0)]
        await store.append([event(1), event(2), event(1, stream=other, group=2)],
                           {1: 1, 2: 1}, entries)
        self.assertEqual(await store.pendingOutbox([1, 2], 10),
                         [entries[1], entries[2], entries[0]])
        self.assertEqual(await store.pendingOutbox([1], 10), [entries[1], entries[0]])
        self.assertEqual(await store.pendingOutbox([1, 2], 2), [entries[1], entries[2]])
        self.assertEqual(await store.pendingOutbox([3], 10), [])
        self.assertEqual(await store.pendingOutbox([], 10), [])

    @asyncTest
    async def test_outboxNotWrittenByAFailedBatch(self):
        """
        A batch refused for a conflict or a fence writes neither its events nor its outbox.
        """
        store = await self.opened()
        await store.append([event(1)], {1: 5})
        other = "dm:carol:dave"
        conflicting = [event(1, stream=other, group=2), event(1, id="again")]
        failure = await self._failure(store.append(
            conflicting, {1: 5, 2: 5}, [outboxEntry(1, stream=other, group=2),
                                        outboxEntry(1, id="m.again")]))
        self.assertIsInstance(failure, StreamConflict)
        failure = await self._failure(store.append(
            [event(2)], {1: 4}, [outboxEntry(2)]))
        self.assertIsInstance(failure, FenceRejected)
        self.assertEqual(await store.pendingOutbox([1, 2], 10), [])
        self.assertEqual(await store.readAfter(other, 0, 10), [])
        self.assertEqual([e.seq for e in await store.readAfter(S, 0, 10)], [1])

    @asyncTest
    async def test_markOutboxDone(self):
        """
        Entries marked done are no longer pending; unknown entries are ignored; what is still
        pending survives a reopen.
        """
        store = await self.opened()
        entries = [outboxEntry(seq) for seq in (1, 2, 3)]
        await store.append([event(seq) for seq in (1, 2, 3)], {1: 1}, entries)
        await store.markOutboxDone([entries[0], entries[2], outboxEntry(9)])
        self.assertEqual(await store.pendingOutbox([1], 10), [entries[1]])
        await store.markOutboxDone([entries[0]])
        await store.markOutboxDone([])
        await store.close()
        again = await self.opened(self.reopenStore(store))
        self.assertEqual(await again.pendingOutbox([1], 10), [entries[1]])

    @asyncTest
    async def test_outboxIdPendingIsKept(self):
        """
        An entry whose id is already pending is not written twice.
        """
        store = await self.opened()
        first = outboxEntry(1)
        await store.append([event(1)], {1: 1}, [first])
        await store.append([event(2)], {1: 1}, [outboxEntry(2, id=first.id, created=2000.0)])
        self.assertEqual(await store.pendingOutbox([1], 10), [first])

    @asyncTest
    async def test_conflictNamesItsStreams(self):
        """
        A conflict names the colliding streams: the rest of the batch can then be written
        without them.
        """
        store = await self.opened()
        inbox = "inbox:bob"
        await store.append([event(1, stream=inbox, id="m.1", type="message")], {1: 1})
        other = "dm:carol:dave"
        batch = [event(1, stream=other, group=1), event(2, stream=inbox, id="m.1"),
                 event(1, stream="dm:x:y", group=2)]
        failure = await self._failure(store.append(batch, {1: 1, 2: 1}))
        self.assertIsInstance(failure, StreamConflict)
        self.assertEqual(failure.streams, (inbox,))
        await store.append([batch[0], batch[2]], {1: 1, 2: 1})
        self.assertEqual(await store.readAfter(other, 0, 10), [batch[0]])

    async def _failure(self, d):
        try:
            await d
        except Exception as e:
            return e
        self.fail("expected a failure")
