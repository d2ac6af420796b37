# -*- test-case-name: tests.storage.test_sqlite -*-
"""
Blocks between users, as a store keeps them: a set of (blocker, blocked) pairs.

A user's blocks are written by the owner of the user's inbox stream, fenced by that stream's
group like its events, in a transaction of their own. Anyone may read them: the owner of a
conversation checks both directions before a send or a typing mark, the owner of an inbox
before taking a notification.

A store may also keep a version of all its blocks (L{IBlockVersion}), so that a node can keep
its answers until a block changes anywhere instead of reading each pair again every fraction of
a second.
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


class IBlockVersion(Interface):
    """
    An L{IBlockStore} that keeps a version of all its blocks.
    """

    def blocksVersion():
        """
        Fire with the blocks' version: an integer raised by every change of the stored
        blocks (a pair blocked or unblocked; setting a block already set, or removing one not
        set, changes nothing and leaves it as it is), in the same transaction as the change, so
        that a reader never sees a version before the change it counts. It never goes down
        and it is durable. The SQL stores raise it by a trigger on their blocks table, so a
        change written by any code counts.
        """
