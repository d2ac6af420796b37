# -*- test-case-name: tests.test_presence -*-
"""
Presence: who is online, and when each user was last seen.

A user is online while one of their long-polls waits on any node, and for C{grace} seconds
after the last one ended. Long-polls wait on the owners of their streams, anywhere in the
cluster, so every node keeps a L{PresenceTracker} of its own polls and reports each user's
changes (first poll started: online; last poll ended: offline at that time) to the user's
presence home, the owner of the user's inbox stream, in one call per home node every
C{flushInterval}. Every C{refreshInterval} it reports its online users again, so that a new
home (after a failover or restart) learns them, and a home forgets a node's "online" that was
not refreshed within C{expiry} (the node died): the user then counts as having left when that
node last reported.

The home (L{PresenceHome}) answers lookups for its users from those reports, and keeps
C{last_seen} durable in the store (L{hpchat.storage.presence}) under the inbox groups' fences:
when a user goes offline, and every C{onlineWriteInterval} while they are online. C{last_seen}
is now while a poll of theirs waits, else when their last poll ended.

This module knows nothing of HTTP, etcd or NSQ: remote homes are reached through an injected
C{send(url, reports)}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from hpchat.deferreds import ObservableDeferred
from hpchat.groups import Local, Redirect
from hpchat.loops import startLoop
from hpchat.slices import Slices
from hpchat.streamids import groupOf, inboxStream

#: What a node reports per user: (online, when that became so).
Report = tuple[bool, float]


@dataclass(slots=True)
class _Seen:
    online: bool
    at: float
    reportedAt: float


class PresenceHome:
    """
    Presence of the users whose inbox streams this node owns.
    """

    log = Logger()

    def __init__(self, clock: Any, store: Any, ownership: Any, groups: int, grace: float = 30.0,
                 expiry: float = 30.0, onlineWriteInterval: float = 30.0,
                 persistInterval: float = 1.0):
        self._clock = clock
        self._store = store
        self._ownership = ownership
        self._groups = groups
        self.grace = grace
        self.expiry = expiry
        self.onlineWriteInterval = onlineWriteInterval
        # user -> reporting node -> what it said last.
        self._seen: dict[str, dict[str, _Seen]] = {}
        # user (in _seen) -> the group of their inbox.
        self._groupOf: dict[str, int] = {}
        # user -> last_seen to make durable.
        self._dirty: dict[str, float] = {}
        # The users in _seen, visited a slice per persist (see persist).
        self._sweep: Slices[str] = Slices(max(1, round(onlineWriteInterval / persistInterval)),
                                          onlineWriteInterval, clock.seconds())
        # The last-seen write in flight or last done (see _writing).
        self._written: ObservableDeferred[None] | None = None

    def _group(self, user: str) -> int:
        # The users in _seen keep their group: a refresh reports each of them every
        # refreshInterval, and the hash of the name costs about a microsecond each time.
        group = self._groupOf.get(user)
        return group if group is not None else groupOf(inboxStream(user), self._groups)

    def report(self, node: str, reports: dict[str, Report]) -> None:
        """
        Take C{node}'s reports for users whose home this node is (others are ignored).
        """
        now = self._clock.seconds()
        for user, (online, at) in reports.items():
            group = self._group(user)
            if self._ownership.tokenFor(group) is None:
                continue
            nodes = self._seen.get(user)
            if nodes is None:
                nodes = self._seen[user] = {}
                self._groupOf[user] = group
                self._sweep.add(user)
            nodes[node] = _Seen(bool(online), float(at), now)
            if not online:
                self._dirty[user] = max(float(at), self._dirty.get(user, 0.0))

    def state(self, user: str) -> tuple[bool, float | None]:
        """
        (online, last seen as far as memory knows) of C{user}.
        """
        now = self._clock.seconds()
        online, last = False, None
        for seen in self._seen.get(user, {}).values():
            if seen.online and now - seen.reportedAt < self.expiry:
                return True, now
            ended = seen.at if not seen.online else seen.reportedAt
            if now - ended < self.grace:
                online = True
            last = ended if last is None else max(last, ended)
        return online, last

    def lookup(self, users: Iterable[str]) -> defer.Deferred:
        """
        Fire with C{{user: (online, last_seen or None)}}, from memory and the store.
        """
        users = list(dict.fromkeys(users))
        states = {user: self.state(user) for user in users}

        def combine(stored: dict[str, float]):
            result = {}
            for user, (online, last) in states.items():
                known = [t for t in (last, stored.get(user)) if t is not None]
                result[user] = (online, max(known) if known else None)
            return result

        return defer.maybeDeferred(self._store.lastSeen, users).addCallback(combine)

    def dropGroups(self, groups: Iterable[int]) -> None:
        """
        Forget the users of C{groups} (no longer home here); their new home learns them
        from the nodes' next refresh.
        """
        groups = set(groups)
        for user in [u for u in self._seen if self._group(u) in groups]:
            del self._seen[user]
            del self._groupOf[user]
            self._sweep.discard(user)
            self._dirty.pop(user, None)

    @property
    def _writing(self) -> bool:
        return self._written is not None and not self._written.done

    def persist(self) -> defer.Deferred | None:
        """
        Write the last-seen times that changed (and, every C{onlineWriteInterval}, those of
        the users online now), for the users still at home here; forget users offline for
        longer than C{grace} + C{expiry} once written. The online users' writes and the
        forgetting visit a slice of the users at each call (all of them once per
        C{onlineWriteInterval}), not all at once.
        """
        if self._writing:
            return None
        now = self._clock.seconds()
        due = self._sweep.due(now)
        for user in due:
            online, last = self.state(user)
            if online and last is not None:
                self._dirty[user] = max(last, self._dirty.get(user, 0.0))
        self._prune(now, due)
        if not self._dirty:
            return None
        dirty, self._dirty = self._dirty, {}
        entries, fences = {}, {}
        for user, at in dirty.items():
            group = self._group(user)
            token = self._ownership.tokenFor(group)
            if token is not None:
                entries[user] = at
                fences[group] = token
        if not entries:
            return None

        def failed(failure):
            self.log.warn("writing {count} last-seen times failed: {error}",
                          count=len(entries), error=failure.getErrorMessage())
            for user, at in entries.items():
                self._dirty[user] = max(at, self._dirty.get(user, 0.0))

        d = defer.maybeDeferred(self._store.writeLastSeen, entries, fences)
        d.addCallbacks(lambda _: None, failed)
        self._written = ObservableDeferred(d, "a last-seen write")
        return self._written.observe()

    def persistLast(self) -> defer.Deferred:
        """
        For the stop: once a write in flight is done, write what changed meanwhile too.
        """
        written = self._written
        if written is None or written.done:
            return defer.maybeDeferred(self.persist)
        return written.observe().addCallback(lambda _: self.persist())

    def _prune(self, now: float, users: Iterable[str]) -> None:
        horizon = self.grace + self.expiry
        def gone(s) -> bool:
            # Offline for long, or reported online by a node that stopped reporting (it
            # died): either way the user counts as having left long ago.
            ended = s.reportedAt if s.online else s.at
            return now - ended > horizon

        for user in users:
            nodes = self._seen.get(user)
            if (nodes is not None and user not in self._dirty
                    and all(gone(s) for s in nodes.values())):
                del self._seen[user]
                del self._groupOf[user]
                self._sweep.discard(user)


#: The refresh of the users online here goes in this many slices per C{refreshInterval}.
REFRESH_SLICES = 20


class PresenceTracker:
    """
    This node's long-polls per user, reported to the users' homes.

    @param send: C{send(url, nodeId, reports)} hands reports to the home node at C{url};
        returns a Deferred.
    """

    log = Logger()

    def __init__(self, clock: Any, ownership: Any, groups: int, home: PresenceHome,
                 send: Callable[[str, str, dict[str, Report]], Any],
                 refreshInterval: float = 10.0):
        self._clock = clock
        self._ownership = ownership
        self._groups = groups
        self._home = home
        self._send = send
        self.refreshInterval = refreshInterval
        self._counts: dict[str, int] = {}
        self._pending: dict[str, Report] = {}
        # The users last reported online (to a home that took the report): a poll that
        # ends and another that starts between two flushes changes nothing to report.
        self._reportedOnline: set[str] = set()
        # The users online here, for the refresh: one slice per refreshInterval /
        # REFRESH_SLICES seconds, so that no flush reports (or even looks at) them all at once.
        self._online: Slices[str] = Slices(REFRESH_SLICES, refreshInterval, clock.seconds())

    def started(self, user: str) -> None:
        count = self._counts.get(user, 0)
        self._counts[user] = count + 1
        if count == 0:
            self._online.add(user)
            self._pending[user] = (True, self._clock.seconds())

    def ended(self, user: str) -> None:
        count = self._counts.get(user, 0) - 1
        if count > 0:
            self._counts[user] = count
            return
        self._counts.pop(user, None)
        self._online.discard(user)
        self._pending[user] = (False, self._clock.seconds())

    @property
    def online(self) -> int:
        return len(self._counts)

    def flush(self) -> defer.Deferred | None:
        """
        Report what changed to the users' homes, one call per home node: a user who went
        offline, or came online (not one whose poll ended and another started since the last
        report). Every user online here is reported again once per C{refreshInterval}, in
        slices (a user's slice is its hash), so that a home does not let the report expire.
        Reports whose home is not settled wait for the next flush; a failed call's reports go
        again unless newer ones were made meanwhile.
        """
        now = self._clock.seconds()
        pending, self._pending = self._pending, {}
        reportedOnline = self._reportedOnline
        for user in [u for u, (online, _) in pending.items()
                     if online and u in reportedOnline]:
            del pending[user]
        for user in self._online.due(now):
            pending.setdefault(user, (True, now))
        if not pending:
            return None
        byNode: dict[str, tuple[str, dict[str, Report]]] = {}
        me = self._ownership.nodeId()
        local: dict[str, Report] = {}
        for user, report in pending.items():
            route = self._ownership.route(groupOf(inboxStream(user), self._groups))
            if isinstance(route, Local):
                local[user] = report
            elif isinstance(route, Redirect) and route.node != me:
                byNode.setdefault(route.node, (route.url, {}))[1][user] = report
            else:
                if isinstance(route, defer.Deferred):
                    route.addErrback(lambda _: None)
                self._pending.setdefault(user, report)
                continue
            if report[0]:
                reportedOnline.add(user)
            else:
                reportedOnline.discard(user)
        if local:
            self._home.report(me, local)
        sent = []
        for node, (url, reports) in byNode.items():
            d = defer.maybeDeferred(self._send, url, me, reports)
            d.addErrback(self._failed, node, reports)
            sent.append(d)
        return defer.gatherResults(sent) if sent else None

    def _failed(self, failure, node: str, reports: dict[str, Report]) -> None:
        self.log.warn("presence reports for {count} users to node {node} failed: {error}",
                      count=len(reports), node=node, error=failure.getErrorMessage())
        for user, report in reports.items():
            self._pending.setdefault(user, report)
            # Not taken: an online report goes again even if the user stays online.
            self._reportedOnline.discard(user)


class Presence(Service):
    """
    A node's presence: its tracker and its home, with their loops.
    """

    def __init__(self, clock: Any, store: Any, ownership: Any, groups: int,
                 send: Callable[[str, str, dict[str, Report]], Any], grace: float = 30.0,
                 flushInterval: float = 0.5, refreshInterval: float = 10.0,
                 persistInterval: float = 1.0):
        self._clock = clock
        self.home = PresenceHome(clock, store, ownership, groups, grace=grace,
                                 expiry=3 * refreshInterval, persistInterval=persistInterval)
        self.tracker = PresenceTracker(clock, ownership, groups, self.home, send,
                                       refreshInterval=refreshInterval)
        self.flushInterval = flushInterval
        self.persistInterval = persistInterval
        self._loops: list = []

    def startService(self):
        super().startService()
        self._loops = [startLoop(self._clock, "presence reports", self.tracker.flush,
                                 self.flushInterval),
                       startLoop(self._clock, "presence last seen", self.home.persist,
                                 self.persistInterval)]

    def stopService(self):
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        # What is known now goes out once more (polls were answered before this stage).
        flushed = self.tracker.flush()
        d = defer.maybeDeferred(lambda: flushed).addBoth(lambda _: self.home.persistLast())
        return d.addBoth(lambda _: None)
