"""
The backlog of queued writes per group, and waiting for groups to drain.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from hpchat.backlog import GroupBacklog


class GroupBacklogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backlog = GroupBacklog()

    def test_countPerGroup(self) -> None:
        for group in (1, 1, 2, 3):
            self.backlog.add(group)
        self.assertEqual(self.backlog.count([1, 2]), 3)
        self.assertEqual(self.backlog.count([1, 1]), 2)
        self.backlog.remove([1, 3])
        self.assertEqual(self.backlog.count([1, 2, 3, 4]), 2)

    def test_drainedAtOnceWhenEmpty(self) -> None:
        self.backlog.add(2)
        self.assertIsNone(self.successResultOf(self.backlog.drained([1, 3])))
        self.assertIsNone(self.successResultOf(self.backlog.drained([])))

    def test_waitsForEveryGroup(self) -> None:
        """
        A wait for several groups fires when the last of them drains, not at the first.
        """
        self.backlog.add(1)
        self.backlog.add(2)
        self.backlog.add(2)
        d = self.backlog.drained([1, 2])
        self.backlog.remove([1])
        self.assertNoResult(d)
        self.backlog.remove([2])
        self.assertNoResult(d)
        self.backlog.remove([2])
        self.successResultOf(d)

    def test_groupQueuedAgainKeepsTheWait(self) -> None:
        """
        A group that drained but was queued to again before the others drained is waited for
        again: the wait fires only when none of its groups has a queued write.
        """
        self.backlog.add(1)
        self.backlog.add(2)
        d = self.backlog.drained([1, 2])
        self.backlog.remove([1])
        self.backlog.add(1)
        self.backlog.remove([2])
        self.assertNoResult(d)
        self.backlog.remove([1])
        self.successResultOf(d)

    def test_cancel(self) -> None:
        self.backlog.add(1)
        d = self.backlog.drained([1])
        other = self.backlog.drained([1])
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.backlog.remove([1])
        self.successResultOf(other)
