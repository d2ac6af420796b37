"""
Tests for L{hpchat.slices}: members visited a slice at a time, each once per period.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from hpchat.slices import Slices


class SlicesTests(SynchronousTestCase):
    def test_eachOncePerPeriodInSmallVisits(self):
        """
        Called once per tick, L{Slices.due} hands out every member once per period, and no
        call more than about its share of them.
        """
        sweep: Slices[str] = Slices(20, 10.0, 1000.0)
        members = [f"m{i}" for i in range(2_000)]
        for member in members:
            sweep.add(member)
        self.assertEqual(sweep.tick, 0.5)
        visits = [sweep.due(1000.0 + 0.5 * n) for n in range(1, 21)]
        self.assertEqual(sorted(m for visit in visits for m in visit), sorted(members))
        self.assertLess(max(len(visit) for visit in visits), 2 * len(members) / 20)

    def test_lateCallCatchesUp(self):
        """
        A call late by several ticks hands out the slices it missed, each once; a call a
        whole period late or more hands out every member once.
        """
        sweep: Slices[int] = Slices(10, 1.0, 0.0)
        for member in range(100):
            sweep.add(member)
        first = sweep.due(0.35)
        self.assertEqual(sorted(first), sorted(m for m in range(100)
                                               if hash((m,)) % 10 in (1, 2, 3)))
        self.assertEqual(sweep.due(0.35), [])
        self.assertEqual(sorted(sweep.due(7.0)), list(range(100)))
        self.assertEqual(sweep.due(6.0), [])

    def test_membership(self):
        """
        Adding twice keeps one; discarding what is not there is nothing; a discarded member
        is no longer handed out.
        """
        sweep: Slices[str] = Slices(4, 1.0, 0.0)
        sweep.add("a")
        sweep.add("a")
        sweep.add("b")
        sweep.discard("zzz")
        self.assertEqual((len(sweep), "a" in sweep, "c" in sweep), (2, True, False))
        sweep.discard("a")
        self.assertEqual((len(sweep), sorted(sweep)), (1, ["b"]))
        self.assertEqual(sweep.due(5.0), ["b"])

    def test_objectsSpreadEvenly(self):
        """
        Objects alike (whose own hashes are addresses a block size apart) fill every slice,
        none with more than twice its share.
        """

        class Member:
            __slots__ = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l")

        sweep: Slices[Member] = Slices(30, 3.0, 0.0)
        members = [Member() for _ in range(3_000)]
        for member in members:
            sweep.add(member)
        sizes = [len(sweep.due(0.1 * n + 0.05)) for n in range(1, 31)]
        self.assertEqual(sum(sizes), 3_000)
        self.assertLess(max(sizes), 200)
        self.assertGreater(min(sizes), 0)

    def test_refusesNoSlices(self):
        self.assertRaises(ValueError, Slices, 0, 1.0, 0.0)
        self.assertRaises(ValueError, Slices, 1, 0.0, 0.0)
