"""
Tests for L{hpchat.deadlines}: many timeouts on one timer, never early, at most a resolution
late, and no timer left once nothing is held.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.deadlines import Deadlines


class Item:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


class DeadlinesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000.0)
        self.timedOut: list[tuple[Item, float]] = []
        self.deadlines: Deadlines[Item] = Deadlines(
            self.clock, lambda item: self.timedOut.append((item, self.clock.seconds())),
            resolution=0.05)

    def test_exactForOne(self):
        """
        An item alone times out at its deadline, not before.
        """
        a = Item("a")
        self.deadlines.add(a, 25.0)
        self.clock.advance(24.999)
        self.assertEqual(self.timedOut, [])
        self.clock.advance(0.001)
        self.assertEqual([item for item, _ in self.timedOut], [a])
        self.assertEqual(len(self.deadlines), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_neverEarlyAtMostAResolutionLate(self):
        """
        Items added over time, with timeouts of several lengths, each time out at or after
        its deadline and within a resolution of it, on one timer.
        """
        items = {}
        for i in range(400):
            item = Item(f"i{i}")
            timeout = (0.5, 2.0, 25.0)[i % 3] + (i % 7) * 0.013
            items[item] = self.clock.seconds() + timeout
            self.deadlines.add(item, timeout)
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
            self.clock.advance(0.011)
        for _ in range(3000):
            self.clock.advance(0.01)
        self.assertEqual(sorted(id(i) for i, _ in self.timedOut), sorted(map(id, items)))
        for item, at in self.timedOut:
            self.assertGreaterEqual(at, items[item] - 1e-9)
            self.assertLess(at - items[item], 0.05 + 0.01 + 1e-9)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_discardedNeverTimesOut(self):
        a, b = Item("a"), Item("b")
        bucketA = self.deadlines.add(a, 1.0)
        self.deadlines.add(b, 1.0)
        self.deadlines.discard(a, bucketA)
        self.deadlines.discard(a, bucketA)
        self.assertEqual(len(self.deadlines), 1)
        self.clock.advance(1.0)
        self.assertEqual([item for item, _ in self.timedOut], [b])

    def test_lastDiscardLeavesNoTimer(self):
        """
        Once nothing is held, the timer is cancelled (nothing is left on the clock).
        """
        a, b = Item("a"), Item("b")
        buckets = [self.deadlines.add(a, 1.0), self.deadlines.add(b, 30.0)]
        self.deadlines.discard(a, buckets[0])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.deadlines.discard(b, buckets[1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertEqual(self.timedOut, [])

    def test_earlierItemMovesTheTimerSooner(self):
        a, b = Item("a"), Item("b")
        self.deadlines.add(a, 25.0)
        self.deadlines.add(b, 1.0)
        self.clock.advance(1.0)
        self.assertEqual([item for item, _ in self.timedOut], [b])
        self.clock.advance(24.0)
        self.assertEqual([item for item, _ in self.timedOut], [b, a])

    def test_laterItemInTheSameBucketMovesTheTimerLater(self):
        """
        A bucket fires once its latest deadline has passed: nothing in it is early.
        """
        # Binary fractions, so that the buckets are known exactly: a at 1001.0 and b at
        # 1001.125 are both in bucket 4004 of a quarter of a second.
        self.deadlines = Deadlines(
            self.clock, lambda item: self.timedOut.append((item, self.clock.seconds())),
            resolution=0.25)
        a, b = Item("a"), Item("b")
        self.assertEqual(self.deadlines.add(a, 1.0), 4004)
        self.clock.advance(0.125)
        self.assertEqual(self.deadlines.add(b, 1.0), 4004)
        self.clock.advance(0.875)
        self.assertEqual(self.timedOut, [])
        self.clock.advance(0.125)
        self.assertEqual(sorted(item.name for item, _ in self.timedOut), ["a", "b"])

    def test_discardFromACallback(self):
        """
        An item that an earlier item's timeout discards is not timed out; one added from a
        callback waits for its own deadline.
        """
        items = [Item(f"i{n}") for n in range(5)]
        buckets = {}
        late = Item("late")

        def timedOut(item):
            self.timedOut.append((item, self.clock.seconds()))
            for other in items:
                if other is not item:
                    self.deadlines.discard(other, buckets[other])
            buckets[late] = self.deadlines.add(late, 5.0)

        self.deadlines = Deadlines(self.clock, timedOut)
        for item in items:
            buckets[item] = self.deadlines.add(item, 1.0)
        self.clock.advance(1.0)
        self.assertEqual(len(self.timedOut), 1)
        self.clock.advance(4.9)
        self.assertEqual(len(self.timedOut), 1)
        self.clock.advance(0.1)
        self.assertEqual([item for item, _ in self.timedOut][1:], [late])

    def test_failingCallbackDoesNotStopTheOthers(self):
        items = [Item("a"), Item("b")]
        seen = []

        def timedOut(item):
            seen.append(item)
            raise RuntimeError("boom")

        self.deadlines = Deadlines(self.clock, timedOut)
        for item in items:
            self.deadlines.add(item, 1.0)
        self.clock.advance(1.0)
        self.assertEqual(len(seen), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clear(self):
        self.deadlines.add(Item("a"), 1.0)
        self.deadlines.clear()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(2.0)
        self.assertEqual(self.timedOut, [])
