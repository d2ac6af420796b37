# -*- test-case-name: tests.storage.test_sqlite -*-
"""
Blocks between users, as a store keeps them: a set of (blocker, blocked) pairs.

A user's blocks are written by the owner of the user's inbox stream, fenced by that stream's
group like its events, in a transaction of their own. Anyone may read them: the owner of a
conversation checks both directions before a send or a typing mark, the owner of an inbox
before taking a notification.
"""

from __future__ import annotations

from zope.interface import Interface


class IBlockStore(Interface):
    """
    An L{hpchat.storage.base.IEventStore} that also keeps blocks.
    """

    def setBlock(blocker, blocked, on, group, token, ts):
        """
        Record (C{on}) or remove C{blocker}'s block of C{blocked} (idempotent), raising the
        fence of C{group} (the blocker's inbox group) to C{token} in the same transaction.
        Fires with None once durable; fails with L{FenceRejected} when a higher token is
        stored, writing nothing.
        """

    def blocksOf(blocker):
        """
        Fire with the users C{blocker} has blocked, sorted.
        """

    def blocksBetween(a, b):
        """
        Fire with the set of (blocker, blocked) pairs stored among (a, b) and (b, a).
        """

    def blockersAmong(blocked, users):
        """
        Fire with the set of those of C{users} who have blocked C{blocked}.
        """
