"""
The batch persister, on a Clock with an in-memory store.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.groups import SingleNodeOwnership
from hpchat.persister import BatchPersister, Overloaded, PersisterStopped, Unfenced
from hpchat.storage.base import Event, FenceRejected, OutboxEntry, StoreError, StreamConflict
from hpchat.storage.conversations import ConversationRow
from tests.fakes import MemoryEventStore


def ev(seq, stream="dm:a:b", group=0):
    return Event(stream=stream, seq=seq, id=f"{stream}/{seq}", group=group, type="message",
                 sender="a", ts=0.0, data={"text": "x"})


class FakeFence:
    """
    A write fence whose answer C{valid(group, token)} a test sets; it records every question.
    """

    def __init__(self):
        self.valid = lambda group, token: True
        self.asked: list[tuple[int, int | None]] = []

    def mayWrite(self, group: int, token: int | None) -> int | None:
        self.asked.append((group, token))
        return token if self.valid(group, token) else None


class PersisterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryEventStore()
        self.fence = FakeFence()
        self.persister = None
        self.build()

    def build(self, **kwargs):
        """
        A started persister (in place of the current one) whose lost groups go to C{lost}.
        """
        if self.persister is not None:
            self.successResultOf(self.persister.stopService())
        kwargs = {"batchSize": 3, "flushInterval": 0.01, "maxPending": 10, **kwargs}
        self.persister = BatchPersister(self.clock, self.store, fence=self.fence, **kwargs)
        self.persister.startService()
        self.lost = []
        self.persister.subscribeLost(self.lost.append)

    def appends(self):
        return [events for events, _ in self.store.batches]

    def test_notDurableBeforeFlush(self):
        """
        An event's Deferred fires only once its batch has been written.
        """
        d = self.persister.enqueue(ev(1), 1)
        self.assertNoResult(d)
        self.assertEqual(self.appends(), [])
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d).seq, 1)
        self.assertEqual(len(self.appends()), 1)

    def test_heldWriteKeepsEventsUnacknowledged(self):
        """
        While the store has not confirmed the batch, nothing is acknowledged, and no second
        batch is started (commits are serialised).
        """
        self.store.hold()
        first = self.persister.enqueue(ev(1), 1)
        self.clock.advance(0.01)
        second = self.persister.enqueue(ev(2), 1)
        self.clock.advance(0.05)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(len(self.store.held), 1)
        self.store.release()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(self.appends(), [[ev(1)], [ev(2)]])

    def test_batchesAreBoundedAndFullBatchFlushesAtOnce(self):
        """
        A full batch is written without waiting for the interval, and so is a full batch
        right after it; what is left goes a flush interval after the last one started;
        batches hold at most batchSize events, in order.
        """
        ds = [self.persister.enqueue(ev(i), 1) for i in range(1, 8)]
        self.clock.advance(0)
        self.assertEqual([len(b) for b in self.appends()], [3, 3])
        self.clock.advance(0.0099)
        self.assertEqual([len(b) for b in self.appends()], [3, 3])
        self.clock.advance(0.0001)
        self.assertEqual([len(b) for b in self.appends()], [3, 3, 1])
        self.assertEqual([e.seq for b in self.appends() for e in b], list(range(1, 8)))
        for d in ds:
            self.successResultOf(d)

    def test_overloaded(self):
        """
        Past maxPending waiting events, enqueue raises Overloaded and queues nothing.
        """
        for i in range(10):
            self.persister.enqueue(ev(i + 1), 1)
        self.assertRaises(Overloaded, self.persister.enqueue, ev(11), 1)
        self.assertEqual(self.persister.pending, 10)

    def test_storeErrorsAreRetriedWithBackoff(self):
        """
        A failing store is retried with growing delays; the events stay queued, in order,
        and are acknowledged once written.
        """
        self.store.failNext(2)
        d = self.persister.enqueue(ev(1), 1)
        self.clock.advance(0.01)
        self.assertNoResult(d)
        self.clock.advance(0.04)
        self.assertNoResult(d)
        self.clock.advance(0.02)  # first retry after 0.05 s fails too
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d).seq, 1)
        self.assertEqual(len(self.appends()), 1)

    def test_refusesNewEventsWhileTheStoreFails(self):
        """
        While the batch at the head is being retried after a store error, new events are
        refused at once with StoreUnavailable (a StoreError: the API answers 503 with
        Retry-After) and nothing of them is queued; the queued ones are still written once
        the store takes them, and new events are taken again after that.
        """
        from hpchat.persister import StoreUnavailable

        self.store.failNext(1)
        queued = self.persister.enqueue(ev(1), 1)
        self.clock.advance(0.01)
        self.assertNoResult(queued)
        self.assertRaises(StoreUnavailable, self.persister.enqueue, ev(2), 1)
        self.assertTrue(issubclass(StoreUnavailable, StoreError))
        self.assertEqual(self.persister.pending, 1)
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(queued).seq, 1)
        later = self.persister.enqueue(ev(2), 1)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(later).seq, 2)

    def test_fenceRejectionFailsTheGroupOnly(self):
        """
        A fence rejection fails every queued event of that group and reports the group lost;
        the other groups' events are written.
        """
        self.store.fences[5] = 99
        lostEvents = [self.persister.enqueue(ev(1, "dm:a:b", 5), 1),
                      self.persister.enqueue(ev(2, "dm:a:b", 5), 1)]
        kept = self.persister.enqueue(ev(1, "dm:c:d", 6), 1)
        self.clock.advance(0.01)
        self.clock.advance(0.01)
        for d in lostEvents:
            self.failureResultOf(d, FenceRejected)
        self.successResultOf(kept)
        self.assertEqual(self.lost, [[5]])

    def test_duplicateFailsOnlyItsStream(self):
        """
        An event that collides with a stored one (a redelivered notification that slipped past
        the dedupe) fails with the other queued events of its stream; its batch-mates of the
        same group and of other groups are written, and no group is reported lost.
        """
        self.persister.batchSize = 10
        self.store.seed("inbox:b", 5, 1, type="message")
        stored = self.store.stored("inbox:b")[0]
        duplicate = Event(stream="inbox:b", seq=2, id=stored.id, group=5, type="message",
                          sender="a", ts=0.0, data={})
        later = Event(stream="inbox:b", seq=3, id="n.3", group=5, type="flirt", sender="a",
                      ts=0.0, data={})
        mates = [ev(1, "dm:a:b", 5), ev(1, "dm:c:d", 6)]
        results = [self.persister.enqueue(mates[0], 1), self.persister.enqueue(duplicate, 1),
                   self.persister.enqueue(later, 1), self.persister.enqueue(mates[1], 1)]
        self.clock.advance(0.01)
        self.clock.advance(0.01)
        self.assertEqual([self.successResultOf(results[0]), self.successResultOf(results[3])],
                         mates)
        for d in results[1:3]:
            self.assertEqual(self.failureResultOf(d, StreamConflict).value.streams, ("inbox:b",))
        self.assertEqual(self.lost, [])
        self.assertEqual([e.id for e in self.store.stored("inbox:b")], [stored.id])
        self.assertEqual(self.persister.pending, 0)

    def test_outboxWrittenWithItsEvent(self):
        """
        The outbox entry of an event goes into the same store batch as the event.
        """
        self.build(outboxFor=lambda e: OutboxEntry(
            id=f"m.{e.id}", group=e.group, stream=e.stream, seq=e.seq, body="{}",
            created=0.0) if e.stream.startswith("dm:") else None)
        d = self.persister.enqueue(ev(1), 1)
        self.persister.enqueue(ev(1, "inbox:a"), 1)
        self.clock.advance(0.01)
        self.successResultOf(d)
        self.assertEqual(list(self.store.outbox), ["m.dm:a:b/1"])
        self.assertEqual(len(self.store.batches), 1)

    def test_failedBatchLeavesNoOutbox(self):
        """
        A batch that is refused writes neither its events nor their outbox entries.
        """
        self.build(outboxFor=lambda e: OutboxEntry(
            id=f"m.{e.id}", group=e.group, stream=e.stream, seq=e.seq, body="{}",
            created=0.0))
        self.store.fences[0] = 99
        d = self.persister.enqueue(ev(1), 1)
        self.clock.advance(0.01)
        self.failureResultOf(d, FenceRejected)
        self.store.seed("dm:a:b", 0, 1)
        d = self.persister.enqueue(ev(1), 99)
        self.clock.advance(0.01)
        self.failureResultOf(d, StreamConflict)
        self.assertEqual(self.store.outbox, {})
        self.assertEqual([e.id for e in self.store.stored("dm:a:b")], ["seed-dm:a:b-1"])

    def note(self, seq, user="b", group=7):
        return Event(stream=f"inbox:{user}", seq=seq, id=f"m.{user}/{seq}", group=group,
                     type="message", sender="a", ts=0.0, data={})

    def test_companionWrittenInTheSameTransaction(self):
        """
        A companion goes into its event's batch, under its own group's fence, and the event
        then has no outbox entry; the Deferred fires with the event once both are durable,
        and the backlog counts both groups until then.
        """
        self.build(outboxFor=lambda e: OutboxEntry(
            id=f"m.{e.id}", group=e.group, stream=e.stream, seq=e.seq, body="{}",
            created=0.0))
        message, note = ev(1, group=3), self.note(1)
        d = self.persister.enqueue(message, 1, companion=(note, 4))
        self.assertEqual(self.persister.pendingFor([7]), 1)
        self.assertEqual(self.persister.pendingFor([3]), 1)
        self.clock.advance(0.01)
        self.assertIs(self.successResultOf(d), message)
        self.assertEqual(self.store.batches, [([message, note], {3: 1, 7: 4})])
        self.assertEqual(self.store.outbox, {})
        self.assertEqual(self.persister.pendingFor([3, 7]), 0)

    def test_companionsLapsedFenceFailsBoth(self):
        """
        When the companion's group is no longer writable here, its event fails too (and the
        group is reported lost); neither is written.
        """
        self.fence.valid = lambda group, token: group != 7
        d = self.persister.enqueue(ev(1, group=3), 1, companion=(self.note(1), 4))
        other = self.persister.enqueue(ev(1, "dm:c:d", 3), 1)
        self.clock.advance(0.01)
        self.failureResultOf(d, FenceRejected)
        self.successResultOf(other)
        self.assertEqual(self.lost, [[7]])
        self.assertEqual(self.store.stored("inbox:b"), [])
        self.assertEqual(self.store.stored("dm:a:b"), [])

    def test_companionsFailureFailsBothStreams(self):
        """
        A conflict on an event's stream fails its companion, and with it every queued event
        of the companion's stream (a later seq alone would leave a gap), and of the event's;
        other streams are written.
        """
        self.persister.batchSize = 10
        self.store.seed("dm:a:b", 3, 1)
        first = self.persister.enqueue(ev(1, group=3), 1, companion=(self.note(1), 4))
        laterNote = self.persister.enqueue(self.note(2), 4)
        laterMessage = self.persister.enqueue(ev(2, group=3), 1)
        other = self.persister.enqueue(ev(1, "dm:c:d", 3), 1)
        self.clock.advance(0.01)
        self.clock.advance(0.01)
        for d in (first, laterNote, laterMessage):
            self.failureResultOf(d, StreamConflict)
        self.successResultOf(other)
        self.assertEqual(self.store.stored("inbox:b"), [])
        self.assertEqual(self.persister.pending, 0)
        self.assertEqual(self.persister.pendingFor([3, 7]), 0)

    def test_companionTokensOfTwoEpochsNeverShareABatch(self):
        """
        A companion under another token of a group than a batch-mate's starts a new batch.
        """
        self.persister.enqueue(self.note(1), 4)
        self.persister.enqueue(ev(1, group=3), 1, companion=(self.note(2), 5))
        self.clock.advance(0.01)
        self.clock.advance(0.01)
        self.assertEqual([len(b) for b in self.appends()], [1, 2])

    def test_tokensOfTwoEpochsNeverShareABatch(self):
        """
        Events of one group under different tokens go into different batches.
        """
        self.persister.enqueue(ev(1), 1)
        self.persister.enqueue(ev(2), 2)
        self.clock.advance(0.01)
        self.clock.advance(0.01)
        self.assertEqual([len(b) for b in self.appends()], [1, 1])

    def test_stopFlushesEverything(self):
        """
        stopService writes everything queued before it fires, and refuses new events.
        """
        ds = [self.persister.enqueue(ev(i), 1) for i in range(1, 3)]
        stopped = self.persister.stopService()
        self.successResultOf(stopped)
        for d in ds:
            self.successResultOf(d)
        self.assertRaises(PersisterStopped, self.persister.enqueue, ev(9), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopRetriesThenGivesUp(self):
        """
        At shutdown a failing store is retried until stopTimeout, then the events fail.
        """
        self.store.failNext(10**6)
        d = self.persister.enqueue(ev(1), 1)
        stopped = self.persister.stopService()
        self.assertNoResult(stopped)
        self.clock.pump([1.0] * 40)
        self.successResultOf(stopped)
        self.failureResultOf(d, StoreError)

    def test_unexpectedErrorDropsTheGroups(self):
        """
        An unexpected exception from the store fails the batch's groups and reports them lost,
        without killing the loop.
        """
        self.store.append = lambda events, fences: 1 / 0
        d = self.persister.enqueue(ev(1, group=3), 1)
        self.clock.advance(0.01)
        self.failureResultOf(d, StoreError)
        self.assertEqual(self.lost, [[3]])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(self.persister._loop.running)

    def test_lapsedTokensAreNeverWritten(self):
        """
        Events whose token is no longer valid (self-fenced) fail instead of being written.
        """
        self.fence.valid = lambda group, token: group != 2
        gone = self.persister.enqueue(ev(1, "dm:a:b", 2), 1)
        kept = self.persister.enqueue(ev(1, "dm:c:d", 3), 1)
        self.clock.advance(0.01)
        self.failureResultOf(gone, FenceRejected)
        self.successResultOf(kept)
        self.assertEqual([e.group for b in self.appends() for e in b], [3])
        self.assertEqual(self.lost, [[2]])

    def test_stopFromAnAcknowledgement(self):
        """
        stopService called from an event's acknowledgement still drains the queue and ends.
        """
        self.store.hold()
        first = self.persister.enqueue(ev(1), 1)
        second = self.persister.enqueue(ev(2), 1)
        stopped = []
        first.addCallback(lambda _: stopped.append(self.persister.stopService()))
        self.clock.advance(0.01)
        self.store.release()
        self.clock.advance(0)
        self.store.release()
        self.successResultOf(second)
        self.successResultOf(stopped[0])

    def test_groupCommit(self):
        """
        Events queued while a batch is written go out as soon as it is done when it took a
        flush interval or more, not at the next tick, and before the first batch's events are
        acknowledged (whose callbacks answer requests), so that the store is not idle
        meanwhile.
        """
        self.store.hold()
        first = self.persister.enqueue(ev(1), 1)
        self.clock.advance(0.01)
        later = self.persister.enqueue(ev(2), 1)
        self.clock.advance(0.01)
        writtenWhenAcknowledged = []
        first.addCallback(lambda _: writtenWhenAcknowledged.append(len(self.store.held)))
        self.store.release(keepHolding=True)
        self.assertEqual(writtenWhenAcknowledged, [1])
        self.assertNoResult(later)
        self.store.release()
        self.successResultOf(later)

    def test_idleStoreWritesAtOnce(self):
        """
        An event queued when no batch started for a flush interval goes at the end of the
        reactor's turn, with what else that turn queued, not at the loop's next tick; one
        queued sooner after a batch waits for the interval.
        """
        self.clock.advance(0.003)
        first = [self.persister.enqueue(ev(1), 1), self.persister.enqueue(ev(2), 1)]
        self.clock.advance(0)
        for d in first:
            self.successResultOf(d)
        self.assertEqual([len(b) for b in self.appends()], [2])
        self.clock.advance(0.002)
        second = self.persister.enqueue(ev(3), 1)
        self.clock.advance(0)
        self.assertNoResult(second)
        self.clock.advance(0.005)
        self.successResultOf(second)

    def test_batchesStartAFlushIntervalApart(self):
        """
        After a batch that took less than a flush interval, what was queued meanwhile waits
        until an interval after that batch started, then goes as one batch (under load a
        commit carries more events; its fsync costs the same).
        """
        self.persister.batchSize = 100
        self.store.hold()
        first = self.persister.enqueue(ev(1), 1)
        self.clock.advance(0.01)
        queued = [self.persister.enqueue(ev(i), 1) for i in range(2, 5)]
        self.clock.advance(0.004)
        self.store.release()
        self.successResultOf(first)
        self.assertEqual([len(b) for b in self.appends()], [1])
        self.clock.advance(0.006)
        self.assertEqual([len(b) for b in self.appends()], [1, 3])
        for d in queued:
            self.successResultOf(d)

    def test_batchesStartThePacingsIntervalApart(self):
        """
        The interval is the pacing's, asked as each batch starts: an event that finds the
        store idle goes at once when the interval the last batch was given has passed, and
        else when it passes (not at the loop's next tick).
        """
        # Binary fractions of a second, so that the clock's sums are exact.
        intervals = [2 ** -9, 2 ** -7, 2 ** -7]
        asked: list[float] = []

        class Pacing:
            def interval(self, now: float) -> float:
                asked.append(now)
                return intervals[len(asked) - 1]

        self.build(pacing=Pacing(), flushInterval=1.0)
        self.clock.advance(1.0)
        first = self.persister.enqueue(ev(1), 1)
        self.clock.advance(0)
        self.successResultOf(first)
        self.clock.advance(2 ** -9)
        second = self.persister.enqueue(ev(2), 1)
        self.clock.advance(0)
        self.successResultOf(second)
        self.assertEqual(asked, [1.0, 1.0 + 2 ** -9])
        self.clock.advance(2 ** -7 - 2 ** -10)
        third = self.persister.enqueue(ev(3), 1)
        self.clock.advance(0)
        self.assertNoResult(third)
        self.clock.advance(2 ** -10)
        self.successResultOf(third)

    def test_fullBatchDoesNotWaitForThePacing(self):
        """
        A batch that fills while the next start waits for the interval goes at once.
        """
        self.build(flushInterval=1.0)
        self.clock.advance(1.0)
        self.persister.enqueue(ev(1), 1)
        self.clock.advance(0)
        waiting = [self.persister.enqueue(ev(i), 1) for i in (2, 3)]
        self.clock.advance(0)
        self.assertNoResult(waiting[0])
        waiting.append(self.persister.enqueue(ev(4), 1))
        self.clock.advance(0)
        for d in waiting:
            self.successResultOf(d)
        self.assertEqual([len(b) for b in self.appends()], [1, 3])

    def test_stopTimeoutBoundsABatchInFlight(self):
        """
        When the store holds a batch past stopTimeout at shutdown, stopService still fires
        then: the held batch and what is queued behind it fail with a StoreError that says
        so, and a store that answers later changes nothing.
        """
        self.persister.stopTimeout = 5.0
        self.store.hold()
        inFlight = self.persister.enqueue(ev(1), 1)
        self.clock.advance(0.01)
        queued = self.persister.enqueue(ev(2), 1)
        stopped = self.persister.stopService()
        self.clock.advance(4.9)
        self.assertNoResult(stopped)
        self.assertNoResult(inFlight)
        self.clock.advance(0.2)
        self.successResultOf(stopped)
        for d in (inFlight, queued):
            error = self.failureResultOf(d, StoreError).value
            self.assertIn("did not confirm", str(error))
        self.assertEqual(self.persister.pending, 0)
        self.store.release()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flushErrorDoesNotStopTheLoop(self):
        """
        When a flush raises (here the first, started at once for an idle store), the error
        is logged and counted under the persister's loop, and the next sends still become
        durable at the next ticks.
        """
        from hpchat import metrics

        counted = metrics.loopFailures.labels("persister")._value.get()
        calls = []

        def tokenValid(group, token):
            calls.append(group)
            if len(calls) == 1:
                raise RuntimeError("injected")
            return True

        self.fence.valid = tokenValid
        first = self.persister.enqueue(ev(1), 1)
        self.clock.advance(0)
        self.assertNoResult(first)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(metrics.loopFailures.labels("persister")._value.get(), counted + 1)
        self.assertTrue(self.persister._loop.running)
        self.clock.advance(0.01)
        self.successResultOf(first)
        later = self.persister.enqueue(ev(2), 1)
        self.clock.advance(0.01)
        self.successResultOf(later)

    def test_fenceAskedOncePerGroupOfTheBatch(self):
        """
        Before a batch the fence is asked once per group of the batch (with the batch's
        token), not once per queued event; events beyond the batch are not asked about yet.
        """
        self.build(batchSize=100)
        for seq in range(1, 6):
            self.persister.enqueue(ev(seq, "dm:a:b", 1), 7)
        for seq in range(1, 4):
            self.persister.enqueue(ev(seq, "dm:c:d", 2), 8)
        self.clock.advance(0.01)
        self.assertEqual(sorted(self.fence.asked), [(1, 7), (2, 8)])
        self.assertEqual(self.persister.pending, 0)

    def test_lapsedTokenFailsOnlyThatToken(self):
        """
        A lapsed token fails the queued events of its group under that token; events of the
        group under a newer token (the group claimed again) are kept and written next.
        """
        self.fence.valid = lambda group, token: token != 1
        old = [self.persister.enqueue(ev(1), 1), self.persister.enqueue(ev(2), 1)]
        new = self.persister.enqueue(ev(1, "dm:c:d"), 2)
        self.clock.advance(0.01)
        for d in old:
            self.failureResultOf(d, FenceRejected)
        self.assertEqual(self.successResultOf(new).stream, "dm:c:d")
        self.assertEqual(self.lost, [[0]])

    def test_storeRetryDelaysGrow(self):
        """
        The delays between retries of a failing store are Twisted's backoffPolicy from
        minBackoff, doubling, capped at maxBackoff.
        """
        self.store.failNext(100)
        self.persister.enqueue(ev(1), 1)
        delays = []
        self.clock.advance(0.01)
        for _ in range(10):
            delays.append(round(self.persister._backoff, 4))
            self.clock.advance(self.persister._backoff)
        self.assertEqual(delays, [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


class DrainedTests(SynchronousTestCase):
    """
    C{drained(groups)}: fires when no event of the groups is queued or being written.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryEventStore()
        self.persister = BatchPersister(self.clock, self.store, batchSize=2,
                                        flushInterval=0.01)
        self.persister.startService()

    def test_nothingQueuedFiresAtOnce(self):
        self.persister.enqueue(ev(1, group=3), 1)
        self.assertIsNone(self.successResultOf(self.persister.drained([1, 2])))

    def test_firesWhenTheLastEventIsDurable(self):
        """
        With the store holding the batches, the Deferred waits until the batch with the last
        event of the groups is written, and fires before time passes.
        """
        self.store.hold()
        first = self.persister.enqueue(ev(1, group=1), 1)
        self.persister.enqueue(ev(2, group=1), 1)
        last = self.persister.enqueue(ev(1, "dm:c:d", 2), 1)
        other = self.persister.enqueue(ev(1, "dm:e:f", 5), 1)
        drained = self.persister.drained([1, 2])
        self.assertEqual(self.persister.pendingFor([1, 2]), 3)
        self.clock.advance(0.01)
        self.store.release(keepHolding=True)  # the first batch: group 1 only
        self.successResultOf(first)
        self.assertNoResult(drained)
        self.assertNoResult(last)
        self.store.release()  # the batch with group 2's event (and group 5's)
        self.successResultOf(last)
        self.successResultOf(other)
        self.assertIsNone(self.successResultOf(drained))
        self.assertEqual(self.persister.pendingFor([1, 2, 5]), 0)

    def test_failedEventsDrainToo(self):
        """
        Events that fail (fence rejection) leave the queue: their group is drained.
        """
        self.store.fences[1] = 99
        d = self.persister.enqueue(ev(1, group=1), 1)
        drained = self.persister.drained([1])
        self.clock.advance(0.01)
        self.failureResultOf(d, FenceRejected)
        self.successResultOf(drained)

    def test_cancelledWaitIsForgotten(self):
        """
        Cancelling the Deferred (a hand-off's timeout) stops the waiting only.
        """
        d = self.persister.enqueue(ev(1, group=1), 1)
        drained = self.persister.drained([1])
        drained.cancel()
        self.failureResultOf(drained, defer.CancelledError)
        self.clock.advance(0.01)
        self.successResultOf(d)
        self.assertEqual(self.persister._backlog._waiting, [])

    def test_fencedByTheSingleNodeOwnership(self):
        """
        The single-node ownership is a write fence that lets its one token write.
        """
        ownership = SingleNodeOwnership("n1", "http://n1", 4)
        persister = BatchPersister(self.clock, self.store, flushInterval=0.01,
                                   fence=ownership)
        persister.startService()
        good = persister.enqueue(ev(1, group=1), ownership.tokenFor(1))
        bad = persister.enqueue(ev(1, "dm:c:d", 2), 99)
        self.clock.advance(0.01)
        self.successResultOf(good)
        self.failureResultOf(bad, FenceRejected)

    def test_unfencedLetsEveryTokenWrite(self):
        self.assertEqual(Unfenced().mayWrite(3, 17), 17)


class ConversationRowTests(SynchronousTestCase):
    """
    Conversation summary rows go in the batch of their event, or alone, fenced like events.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryEventStore()
        self.persister = BatchPersister(self.clock, self.store, batchSize=10,
                                        flushInterval=0.01)
        self.persister.startService()

    def row(self, user, read, group=0):
        return ConversationRow(user=user, stream="dm:a:b", group=group,
                               partner="b" if user == "a" else "a", last_seq=1, read_seq=read,
                               partner_read_seq=0, updated=1.0)

    def test_rowsWithTheirEvent(self):
        """
        Rows given with an event are written in its batch; rows alone fire with None.
        """
        sent = self.persister.enqueue(ev(1), 3, rows=[self.row("a", 1)])
        alone = self.persister.enqueueRows(0, "dm:a:b", [self.row("b", 1)], 3)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(sent).seq, 1)
        self.assertIsNone(self.successResultOf(alone))
        self.assertEqual(self.store.rowBatches,
                         [([ev(1)], [self.row("a", 1), self.row("b", 1)])])
        self.assertEqual(self.store.batches[0][1], {0: 3})

    def test_rowsAloneAreFenced(self):
        """
        Rows under a lapsed token fail like events, and write nothing.
        """
        self.store.fences[0] = 9
        alone = self.persister.enqueueRows(0, "dm:a:b", [self.row("b", 1)], 3)
        self.clock.advance(0.01)
        self.failureResultOf(alone, FenceRejected)
        self.assertEqual(self.store.conversations, {})

    def test_storeWithoutRows(self):
        """
        A store that keeps no conversation rows gets the events without them.
        """
        calls = []

        class Plain:
            def append(self, events, fences, outbox=()):
                calls.append(list(events))
                return defer.succeed(None)

        persister = BatchPersister(self.clock, Plain(), flushInterval=0.01)
        persister.startService()
        sent = persister.enqueue(ev(1), 1, rows=[self.row("a", 1)])
        alone = persister.enqueueRows(0, "dm:a:b", [self.row("b", 1)], 1)
        self.clock.advance(0.01)
        self.successResultOf(sent)
        self.successResultOf(alone)
        self.assertEqual(calls, [[ev(1)]])  # the rows alone wrote nothing


class AcknowledgementOrderTests(SynchronousTestCase):
    """
    A store that answers at once (here the memory store) lets the next batch be written
    before the last one's callbacks run; the acknowledgements still come in write order.
    """

    def test_batchesAcknowledgedInOrder(self):
        clock = task.Clock()
        persister = BatchPersister(clock, MemoryEventStore(), batchSize=2, flushInterval=0.01,
                                   maxPending=100)
        persister.startService()
        acknowledged: list[int] = []
        for seq in range(1, 8):
            persister.enqueue(ev(seq), 1).addCallback(lambda e: acknowledged.append(e.seq))
        clock.advance(0.01)
        self.assertEqual(acknowledged, list(range(1, 8)))
        self.successResultOf(persister.stopService())
