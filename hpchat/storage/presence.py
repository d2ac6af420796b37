# -*- test-case-name: tests.storage.test_sqlite -*-
"""
When each user was last online, as a store keeps it (the rest of presence lives in memory,
see L{hpchat.presence}).

The owner of a user's inbox stream writes the user's C{last_seen}, fenced by that stream's
group; a stored time only moves forward.
"""

from __future__ import annotations

from zope.interface import Interface


class IPresenceStore(Interface):
    """
    An L{hpchat.storage.base.IEventStore} that also keeps users' last-seen times.
    """

    def writeLastSeen(entries, fences):
        """
        Raise the stored last-seen time of each user of C{entries} (user -> unix time) to
        the given one (a lower one leaves it), in one transaction, raising the groups'
        fences of C{fences} (group -> token; every user's inbox group). Fires with None once
        durable; fails with L{FenceRejected}, writing nothing.
        """

    def lastSeen(users):
        """
        Fire with a dict user -> last-seen time for those of C{users} that have one.
        """
