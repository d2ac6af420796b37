"""
Tests for L{hpchat.presence}: the tracker of a node's polls and the presence home, on a Clock
over the in-memory store.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.groups import Redirect, Unsettled
from hpchat.presence import Presence, PresenceHome, PresenceTracker
from hpchat.streamids import groupOf, inboxStream
from tests.fakes import FakeOwnership, MemoryEventStore

GROUPS = 64


def group(user: str) -> int:
    return groupOf(inboxStream(user), GROUPS)


class HomeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.store = MemoryEventStore()
        self.ownership = FakeOwnership(groups=GROUPS)
        self.home = PresenceHome(self.clock, self.store, self.ownership, GROUPS, grace=30,
                                 expiry=30, onlineWriteInterval=60)

    def lookup(self, *users):
        return self.successResultOf(self.home.lookup(users))

    def test_onlineWhileWaitingThenGrace(self):
        """
        Online while a node reports a poll waiting; for grace seconds after it ended; then
        offline, last seen when it ended.
        """
        self.assertEqual(self.lookup("alice"), {"alice": (False, None)})
        self.home.report("n1", {"alice": (True, 1000.0)})
        self.clock.advance(20)
        self.assertEqual(self.lookup("alice"), {"alice": (True, 1020.0)})
        self.home.report("n1", {"alice": (False, 1020.0)})
        self.clock.advance(29)
        self.assertEqual(self.lookup("alice"), {"alice": (True, 1020.0)})
        self.clock.advance(2)
        self.assertEqual(self.lookup("alice"), {"alice": (False, 1020.0)})

    def test_anyNodeKeepsTheUserOnline(self):
        """
        A user with polls on two nodes is online until both have ended.
        """
        self.home.report("n1", {"alice": (True, 1000.0)})
        self.home.report("n2", {"alice": (True, 1000.0)})
        self.home.report("n1", {"alice": (False, 1001.0)})
        self.clock.advance(100)
        self.home.report("n2", {"alice": (True, 1000.0)})  # n2's refresh
        self.assertEqual(self.lookup("alice"), {"alice": (True, 1100.0)})

    def test_unrefreshedOnlineExpires(self):
        """
        A node that stops refreshing (it died) counts as having ended at its last report.
        """
        self.home.report("n1", {"alice": (True, 1000.0)})
        self.clock.advance(30 + 30)
        self.assertEqual(self.lookup("alice"), {"alice": (False, 1000.0)})

    def test_deadReporterForgotten(self):
        """
        A user last reported online by a node that then died is forgotten from memory once
        that report is older than grace + expiry and the last-seen time is written, so the
        home's memory does not grow with every user of every node that ever died.
        """
        self.home.report("n1", {"alice": (True, 1000.0)})
        self.clock.advance(61)
        self.successResultOf(defer.maybeDeferred(self.home.persist))
        self.assertNotIn("alice", self.home._seen)
        self.assertNotIn("alice", self.home._groupOf)
        self.assertEqual(self.lookup("alice")["alice"][0], False)

    def test_storedLastSeen(self):
        """
        Users not in memory (a restart, a new home) have their stored last-seen time.
        """
        self.store.presence["bob"] = 500.0
        self.assertEqual(self.lookup("bob", "carol"), {"bob": (False, 500.0),
                                                       "carol": (False, None)})

    def test_persist(self):
        """
        Ended polls' times are written under the inbox groups' fences; online users' now
        every onlineWriteInterval; users whose group is not owned here are not taken.
        """
        self.ownership.set(group("carol"), Redirect("node-b", "http://b"))
        self.home.report("n1", {"alice": (False, 990.0), "bob": (True, 995.0),
                                "carol": (False, 999.0)})
        self.successResultOf(defer.maybeDeferred(self.home.persist))
        self.assertEqual(self.store.presence, {"alice": 990.0})
        self.assertEqual(self.store.fences, {group("alice"): 1})
        self.clock.advance(60)
        self.home.report("n1", {"bob": (True, 995.0)})
        self.successResultOf(defer.maybeDeferred(self.home.persist))
        self.assertEqual(self.store.presence, {"alice": 990.0, "bob": 1060.0})

    def test_onlineWritesInSlices(self):
        """
        Persisted every second, each persist writes the last-seen times of about a
        sixtieth of the users online (onlineWriteInterval 60 s), and each of them once per
        onlineWriteInterval: no persist looks at every user at home here.
        """
        users = [f"u{i}" for i in range(600)]
        written: list[dict[str, float]] = []
        real = self.store.writeLastSeen

        def record(entries, fences):
            written.append(dict(entries))
            return real(entries, fences)

        self.store.writeLastSeen = record
        for _ in range(60):
            self.clock.advance(1)
            self.home.report("n1", {user: (True, 1000.0) for user in users})
            self.successResultOf(defer.maybeDeferred(self.home.persist))
        self.assertEqual(sorted(u for entries in written for u in entries), sorted(users))
        self.assertLess(max(len(entries) for entries in written), 40)
        self.assertEqual(set(self.store.presence.values()) - set(range(1001, 1061)), set())

    def test_persistLastWaitsForTheWriteInFlight(self):
        """
        At stop, a last-seen write in flight is waited for, and what ended meanwhile is
        written after it (a plain persist would skip it while the first write runs).
        """
        held: defer.Deferred = defer.Deferred()
        real = self.store.writeLastSeen
        self.store.writeLastSeen = lambda entries, fences: held.addCallback(
            lambda _: real(entries, fences))
        self.home.report("n1", {"alice": (False, 990.0)})
        self.home.persist()
        self.home.report("n1", {"bob": (False, 995.0)})
        last = self.home.persistLast()
        self.assertNoResult(last)
        self.store.writeLastSeen = real
        held.callback(None)
        self.successResultOf(last)
        self.assertEqual(self.store.presence, {"alice": 990.0, "bob": 995.0})

    def test_persistFailureRetried(self):
        """
        A failed write is tried again at the next persist.
        """
        self.home.report("n1", {"alice": (False, 990.0)})
        self.store.writeLastSeen = lambda entries, fences: defer.fail(RuntimeError("down"))
        self.successResultOf(self.home.persist())
        del self.store.writeLastSeen
        self.successResultOf(defer.maybeDeferred(self.home.persist))
        self.assertEqual(self.store.presence, {"alice": 990.0})

    def test_dropGroups(self):
        """
        Users of groups lost are forgotten.
        """
        self.home.report("n1", {"alice": (True, 1000.0)})
        self.home.dropGroups([group("alice")])
        self.assertEqual(self.lookup("alice"), {"alice": (False, None)})
        self.assertEqual(self.home._groupOf, {})

    def test_knownUsersGroupNotHashedAgain(self):
        """
        A user the home remembers keeps the group of their inbox: the refreshes that report
        them again do not hash their name.
        """
        from hpchat import presence

        self.home.report("n1", {"alice": (True, 1000.0)})
        self.assertEqual(self.home._groupOf, {"alice": group("alice")})

        def hashed(stream: str, groups: int) -> int:
            raise AssertionError(f"hashed {stream!r} again")

        self.patch(presence, "groupOf", hashed)
        self.home.report("n2", {"alice": (True, 1001.0)})
        self.assertEqual(self.lookup("alice")["alice"][0], True)


class TrackerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.store = MemoryEventStore()
        self.ownership = FakeOwnership(groups=GROUPS)
        self.home = PresenceHome(self.clock, self.store, self.ownership, GROUPS)
        self.sent = []
        self.answer = lambda: defer.succeed(None)
        self.tracker = PresenceTracker(self.clock, self.ownership, GROUPS, self.home,
                                       self.send, refreshInterval=10)

    def send(self, url, node, reports):
        self.sent.append((url, node, dict(reports)))
        return self.answer()

    def test_transitionsOnly(self):
        """
        The first poll started and the last one ended are reported, at flush; polls in
        between are not.
        """
        self.tracker.started("alice")
        self.tracker.started("alice")
        self.clock.advance(1)
        self.tracker.ended("alice")
        self.tracker.flush()
        self.assertEqual(self.home._seen["alice"]["node-a"].online, True)
        self.assertEqual(self.home._seen["alice"]["node-a"].at, 1000.0)
        self.tracker.ended("alice")
        self.tracker.flush()
        self.assertEqual(self.home._seen["alice"]["node-a"].online, False)
        self.assertEqual(self.home._seen["alice"]["node-a"].at, 1001.0)
        self.assertEqual(self.tracker.online, 0)
        self.assertIsNone(self.tracker.flush())

    def test_oneCallPerHomeNode(self):
        """
        Users whose homes are elsewhere are reported in one call per home node.
        """
        b = Redirect("node-b", "http://b")
        c = Redirect("node-c", "http://c")
        users = [f"u{i}" for i in range(40)]
        for n, user in enumerate(users):
            self.ownership.set(group(user), b if n % 2 else c)
        for user in users:
            self.tracker.started(user)
        self.tracker.flush()
        self.assertEqual(sorted(url for url, _, _ in self.sent), ["http://b", "http://c"])
        self.assertEqual(sum(len(r) for _, _, r in self.sent), len(set(users)))

    def test_unsettledAndFailedGoAgain(self):
        """
        Reports whose home is unsettled, or whose call failed, go at the next flush.
        """
        self.ownership.set(group("alice"), Unsettled(1))
        self.ownership.set(group("bob"), Redirect("node-b", "http://b"))
        self.answer = lambda: defer.fail(ConnectionError("down"))
        self.tracker.started("alice")
        self.tracker.started("bob")
        self.tracker.flush()
        self.assertEqual(set(self.tracker._pending), {"alice", "bob"})
        self.ownership.set(group("alice"), Redirect("node-b", "http://b"))
        self.answer = lambda: defer.succeed(None)
        self.sent.clear()
        self.tracker.flush()
        self.assertEqual([set(r) for _, _, r in self.sent], [{"alice", "bob"}])
        self.assertEqual(self.tracker._pending, {})

    def test_refresh(self):
        """
        Every refreshInterval the users online here are reported again.
        """
        self.ownership.set(group("alice"), Redirect("node-b", "http://b"))
        self.tracker.started("alice")
        self.tracker.flush()
        self.clock.advance(10)
        self.tracker.flush()
        self.assertEqual([r for _, _, r in self.sent],
                         [{"alice": (True, 1000.0)}, {"alice": (True, 1010.0)}])


    def test_blipBetweenFlushesNotReported(self):
        """
        A user reported online whose poll ends and whose next poll starts before the next
        flush is not reported again (until the refresh).
        """
        self.ownership.set(group("alice"), Redirect("node-b", "http://b"))
        self.tracker.started("alice")
        self.tracker.flush()
        self.tracker.ended("alice")
        self.tracker.started("alice")
        # (Within one slice of the refresh: no refresh is due.)
        self.clock.advance(0.1)
        self.assertIsNone(self.tracker.flush())
        self.tracker.ended("alice")
        self.clock.advance(0.1)
        self.tracker.flush()
        self.assertEqual([r for _, _, r in self.sent],
                         [{"alice": (True, 1000.0)}, {"alice": (False, 1000.1)}])

    def test_refreshInSlices(self):
        """
        Flushed every half second, each flush refreshes about a twentieth of the users
        online here, and each of them once per refreshInterval.
        """
        users = [f"u{i}" for i in range(400)]
        for user in users:
            self.ownership.set(group(user), Redirect("node-b", "http://b"))
            self.tracker.started(user)
        self.tracker.flush()
        self.sent.clear()
        sizes = []
        for _ in range(20):
            self.clock.advance(0.5)
            before = sum(len(r) for _, _, r in self.sent)
            self.tracker.flush()
            sizes.append(sum(len(r) for _, _, r in self.sent) - before)
        refreshed = [user for _, _, r in self.sent for user in r]
        self.assertEqual(sorted(refreshed), sorted(users))
        self.assertLess(max(sizes), 60)

    def test_failedOnlineReportGoesAgain(self):
        """
        An online report whose call failed goes again at the next flush, though the user
        stayed online.
        """
        self.ownership.set(group("alice"), Redirect("node-b", "http://b"))
        self.answer = lambda: defer.fail(ConnectionError("down"))
        self.tracker.started("alice")
        self.tracker.flush()
        self.answer = lambda: defer.succeed(None)
        self.clock.advance(0.5)
        self.tracker.flush()
        self.assertEqual([r for _, _, r in self.sent],
                         [{"alice": (True, 1000.0)}, {"alice": (True, 1000.0)}])


class ServiceTests(SynchronousTestCase):
    def test_loopsAndStop(self):
        """
        The service flushes and persists on its loops, and once more when it stops.
        """
        clock = task.Clock()
        store = MemoryEventStore()
        presence = Presence(clock, store, FakeOwnership(groups=GROUPS), GROUPS,
                            lambda *a: defer.succeed(None), grace=5)
        presence.startService()
        presence.tracker.started("alice")
        clock.advance(0.5)
        self.assertTrue(self.successResultOf(presence.home.lookup(["alice"]))["alice"][0])
        presence.tracker.ended("alice")
        self.successResultOf(presence.stopService())
        self.assertEqual(store.presence, {"alice": 0.5})
        self.assertEqual(clock.getDelayedCalls(), [])
