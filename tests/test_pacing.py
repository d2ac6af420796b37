"""
Tests for L{hpchat.pacing}: the interval between batches follows the process's CPU.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from hpchat.pacing import CommitPacing, FixedPacing


class FakeCPU:
    def __init__(self):
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


class CommitPacingTests(SynchronousTestCase):
    def setUp(self):
        self.cpu = FakeCPU()
        self.pacing = CommitPacing(0.001, 0.005, cpuTime=self.cpu)
        self.now = 100.0

    def load(self, share: float, seconds: float) -> float:
        """
        Let C{seconds} pass with the process busy C{share} of a core, asking every 0.05 s as
        batches would; the last interval given.
        """
        interval = self.pacing.interval(self.now)
        for _ in range(round(seconds / 0.05)):
            self.now += 0.05
            self.cpu.seconds += share * 0.05
            interval = self.pacing.interval(self.now)
        return interval

    def test_longestUntilTheLoadIsKnown(self):
        self.assertEqual(self.pacing.interval(self.now), 0.005)
        self.assertEqual(self.pacing.interval(self.now + 0.1), 0.005)

    def test_shortestWhileIdle(self):
        self.assertAlmostEqual(self.load(0.3, 2.0), 0.001)
        self.assertAlmostEqual(self.pacing.busy, 0.3)

    def test_longestWhenBusy(self):
        self.assertAlmostEqual(self.load(0.95, 2.0), 0.005)

    def test_inProportionBetween(self):
        # Halfway from IDLE (0.5) to BUSY (0.8): halfway from shortest to longest.
        self.assertAlmostEqual(self.load(0.65, 3.0), 0.003)

    def test_followsTheLoadBothWays(self):
        self.assertAlmostEqual(self.load(0.95, 2.0), 0.005)
        self.assertAlmostEqual(self.load(0.1, 2.0), 0.001)
        self.assertAlmostEqual(self.load(0.95, 2.0), 0.005)

    def test_readsTheCPUAtMostEverySample(self):
        reads = []

        def cpu() -> float:
            reads.append(self.now)
            return 0.0

        pacing = CommitPacing(0.001, 0.005, cpuTime=cpu)
        for _ in range(100):
            pacing.interval(self.now)
            self.now += 0.01
        # The first reading, then one per SAMPLE of the 0.99 s asked over (give or take the
        # clock's rounding), not one per question.
        self.assertLessEqual(abs(len(reads) - (1 + 0.99 / CommitPacing.SAMPLE)), 1)

    def test_oneReadingAfterAQuietSpell(self):
        """
        After seconds without a batch (nothing asked), the first reading covers the quiet
        spell: the interval is short again at once.
        """
        self.assertAlmostEqual(self.load(1.0, 2.0), 0.005)
        self.now += 10.0
        self.cpu.seconds += 0.2
        self.assertAlmostEqual(self.pacing.interval(self.now), 0.001)

    def test_clockGoingBackStartsAgain(self):
        self.load(1.0, 1.0)
        self.now -= 50.0
        self.assertEqual(self.pacing.interval(self.now), 0.005)
        self.assertAlmostEqual(self.load(0.0, 2.0), 0.001)

    def test_boundsChecked(self):
        self.assertRaises(ValueError, CommitPacing, 0.005, 0.001)
        self.assertRaises(ValueError, CommitPacing, 0.0, 0.001)

    def test_fixed(self):
        self.assertEqual(FixedPacing(0.004).interval(12.0), 0.004)
