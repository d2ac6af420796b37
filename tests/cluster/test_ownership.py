"""
The ownership service on a Clock, over a scripted etcd client and a hand-fed mirror: lease
registration, claims, self-fencing, lease loss, watch events, hand-off and drain.
"""

from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.backlog import GroupBacklog
from hpchat.cluster.etcd import (
    EtcdTimeout,
    KeyValue,
    Lease,
    LeaseNotFound,
    RangeResult,
    ResponseHeader,
    TxnResult,
    WatchEvent,
)
from hpchat.cluster.ownership import EtcdOwnership, Owner
from hpchat.groups import Local, Redirect, Unsettled

P = b"/hpchat/"


class ScriptedEtcd:
    """
    Answers at once, except keepalives and txns when C{hold} is set for them.
    """

    url = "http://etcd.test"

    def __init__(self):
        self.calls: list[tuple] = []
        self.nextLease = 0x100
        self.revision = 10
        self.keepalives: list[defer.Deferred] = []
        self.holdKeepalives = False
        self.txnOutcome = None

    def leaseGrant(self, ttl, leaseId=None, timeout=None):
        self.nextLease += 1
        self.calls.append(("grant", ttl))
        return defer.succeed(Lease(self.nextLease, ttl))

    def put(self, key, value, lease=None, ignoreLease=False, timeout=None):
        self.calls.append(("put", key, value, lease))
        self.revision += 1
        return defer.succeed(self.revision)

    def leaseKeepAlive(self, leaseId, timeout=None):
        self.calls.append(("keepalive", leaseId))
        d = defer.Deferred()
        self.keepalives.append(d)
        return d

    def txn(self, compare=(), success=(), failure=(), timeout=None):
        self.calls.append(("txn", compare, success, failure))
        if self.txnOutcome is not None:
            return defer.maybeDeferred(self.txnOutcome, compare, success, failure)
        self.revision += 1
        return defer.succeed(TxnResult(ResponseHeader(revision=self.revision), succeeded=True))

    def leaseRevoke(self, leaseId, timeout=None):
        self.calls.append(("revoke", leaseId))
        return defer.succeed(None)

    def close(self):
        return defer.succeed(None)


class HandFedKeeper:
    def __init__(self, client, prefix, onResync, onEvents, clock):
        self.onResync = onResync
        self.onEvents = onEvents
        self.kvs: dict[bytes, KeyValue] = {}
        self.resyncs = 0
        self.started = False

    def start(self):
        self.started = True

    def restart(self):
        self.restarts = getattr(self, "restarts", 0) + 1

    def stop(self):
        return defer.succeed(None)

    def snapshot(self, kvs, revision):
        self.kvs = {kv.key: kv for kv in kvs}
        self.resyncs += 1
        self.onResync(dict(self.kvs), revision)

    def events(self, events, revision):
        for e in events:
            if e.type == "DELETE":
                self.kvs.pop(e.kv.key, None)
            else:
                self.kvs[e.kv.key] = e.kv
        self.onEvents(events, revision)


def nodeKv(nodeId, lease, url=None):
    value = json.dumps({"url": url or f"http://{nodeId}", "started": 0}).encode()
    return KeyValue(P + b"nodes/" + nodeId.encode(), value, 2, 2, 1, lease)


def groupKv(group, nodeId, token, lease):
    return KeyValue(P + b"groups/" + str(group).encode(), nodeId.encode(), token, token, 1, lease)


class OwnershipTests(SynchronousTestCase):
    ttl = 6
    margin = 1.0

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.etcd = ScriptedEtcd()
        self.backlog = GroupBacklog()
        self.ownership = EtcdOwnership(self.clock, self.etcd, "me", "http://me", groups=8,
                                       leaseTtl=self.ttl, fenceMargin=self.margin, slack=0,
                                       keeperFactory=HandFedKeeper, drains=self.backlog)
        self.keeper = self.ownership._keeper
        self.lost: list[list[int]] = []
        self.ownership.subscribeLost(self.lost.append)
        self.gained: list[list[int]] = []
        self.ownership.subscribeGained(self.gained.append)
        self.ownership.startService()
        self.lease = self.etcd.nextLease
        self.keeper.snapshot([nodeKv("me", self.lease, "http://me")], 12)

    def tearDown(self):
        if self.ownership.running:
            self.successResultOf(self.ownership.stopService())

    def advanceAlive(self, seconds: float) -> None:
        """
        Let C{seconds} pass with every keepalive acknowledged.
        """
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(0.5, end - self.clock.seconds()))
            for d in self.etcd.keepalives:
                if not d.called:
                    d.callback(self.ttl)

    def own(self, group, token=20):
        self.keeper.events([WatchEvent("PUT", groupKv(group, "me", token, self.lease))], token)

    def test_registersUnderALease(self):
        """
        Starting grants a lease, puts nodes/<id> with it, starts the mirror, and is ready.
        """
        self.assertEqual(self.etcd.calls[0], ("grant", self.ttl))
        _, key, value, lease = self.etcd.calls[1]
        self.assertEqual((key, lease), (P + b"nodes/me", self.lease))
        self.assertEqual(json.loads(value)["url"], "http://me")
        self.assertTrue(self.keeper.started)
        self.assertTrue(self.ownership.ready())

    def test_claimOnDemand(self):
        """
        An unowned group is claimed with a create_revision == 0 txn under our lease; the
        txn's revision is the token.
        """
        route = self.successResultOf(defer.maybeDeferred(self.ownership.route, 3))
        self.assertEqual(route, Local(self.etcd.revision))
        _, compare, success, failure = self.etcd.calls[-1]
        self.assertEqual(compare[0].json["target"], "CREATE")
        self.assertEqual(success[0].json["request_put"]["lease"], str(self.lease))
        self.assertEqual(self.ownership.tokenFor(3), self.etcd.revision)

    def test_claimForThePreferredNode(self):
        """
        When placement prefers another node, the claim is made with that node's lease and
        the route is a redirect to it.
        """
        self.keeper.events([WatchEvent("PUT", nodeKv("other", 0x999, "http://other"))], 13)
        self.ownership.placement = type("P", (), {
            "preferred": lambda self, g, nodes, load=None, cap=None: "other",
            "rank": lambda self, g, nodes: sorted(nodes)})()
        route = self.successResultOf(defer.maybeDeferred(self.ownership.route, 5))
        self.assertEqual(route, Redirect("other", "http://other"))
        _, _, success, _ = self.etcd.calls[-1]
        self.assertEqual(success[0].json["request_put"]["lease"], str(0x999))

    def test_lostClaimLearnsTheOwner(self):
        """
        A claim that loses the race learns the current owner from the txn's failure branch.
        """
        self.keeper.events([WatchEvent("PUT", nodeKv("other", 0x999, "http://other"))], 13)
        self.etcd.txnOutcome = lambda c, s, f: TxnResult(
            ResponseHeader(revision=30), succeeded=False,
            responses=[RangeResult(ResponseHeader(revision=30),
                                   [groupKv(2, "other", 29, 0x999)], count=1)])
        route = self.successResultOf(defer.maybeDeferred(self.ownership.route, 2))
        self.assertEqual(route, Redirect("other", "http://other"))

    def test_failedClaimIsUnsettled(self):
        """
        An etcd error while claiming gives an unsettled route, not an error.
        """
        self.etcd.txnOutcome = lambda c, s, f: defer.fail(EtcdTimeout("slow"))
        route = self.successResultOf(defer.maybeDeferred(self.ownership.route, 2))
        self.assertIsInstance(route, Unsettled)

    def test_selfFencesFromTheSendTimeOfTheLastAck(self):
        """
        Serving stops at send time of the last acknowledged keepalive + TTL - margin; an
        acknowledgement that arrives late extends only from its send time.
        """
        self.own(1)
        self.clock.advance(self.ttl / 3)          # keepalive sent at t0 + 2
        sentAt = self.clock.seconds()
        self.clock.advance(2.5)                    # its answer arrives 2.5 s later
        self.etcd.keepalives[0].callback(self.ttl)
        self.assertEqual(self.ownership.tokenFor(1), 20)
        self.etcd.holdKeepalives = True
        self.clock.advance(sentAt + self.ttl - self.margin - self.clock.seconds() - 0.01)
        self.assertEqual(self.ownership.tokenFor(1), 20)
        self.assertEqual(self.lost, [])
        self.clock.advance(0.02)
        self.assertIsNone(self.ownership.tokenFor(1))
        self.assertIsNone(self.ownership.mayWrite(1, 20))
        self.assertEqual(self.lost, [[1]])
        self.assertFalse(self.ownership.ready())
        self.assertIsInstance(self.ownership.route(1), Unsettled)

    def test_failedKeepaliveRestartsTheWatch(self):
        """
        A keepalive that fails (etcd paused or unreachable) also restarts the watch stream,
        which would otherwise hang silently.
        """
        self.clock.advance(self.ttl / 3)
        self.etcd.keepalives[0].errback(EtcdTimeout("no answer"))
        self.assertEqual(self.keeper.restarts, 1)
        self.assertTrue(self.ownership.ready())

    def test_recoversWhenKeepaliveAnswersAgain(self):
        """
        A keepalive acknowledged after a self-fence (lease still alive) resumes serving.
        """
        self.own(1)
        self.clock.pump([self.ttl / 3] * 3)       # three keepalives sent, none answered
        self.assertEqual(self.lost, [[1]])
        self.etcd.keepalives[-1].callback(self.ttl)
        self.assertEqual(self.ownership.tokenFor(1), 20)

    def test_leaseNotFoundRegistersAgain(self):
        """
        A keepalive answered "lease not found" drops every group and registers with a new
        lease.
        """
        self.own(1)
        self.own(4, 21)
        self.clock.advance(self.ttl / 3)
        self.etcd.keepalives[0].errback(LeaseNotFound("gone"))
        self.assertEqual(self.lost, [[1, 4]])
        grants = [c for c in self.etcd.calls if c[0] == "grant"]
        self.assertEqual(len(grants), 2)
        self.assertIsNone(self.ownership.tokenFor(1), "old claims belong to the old lease")

    def test_deleteEventLosesTheGroup(self):
        """
        A DELETE of our claim (seen through the watch) stops serving that group.
        """
        self.own(6)
        self.keeper.events([WatchEvent("DELETE", KeyValue(P + b"groups/6", modRevision=40))], 40)
        self.assertEqual(self.lost, [[6]])
        self.assertIsNone(self.ownership.tokenFor(6))

    def test_gainedGroupsAreTold(self):
        """
        Groups this node starts serving, through the watch or its own claim, are told to the
        gained-groups subscribers once each; a group it already serves is not told again.
        """
        self.own(2)
        self.own(5, 21)
        self.own(2, 22)
        route = self.successResultOf(defer.maybeDeferred(self.ownership.route, 3))
        self.assertEqual(route, Local(self.etcd.revision))
        self.assertEqual(self.gained, [[2], [5], [3]])
        self.keeper.events([WatchEvent("DELETE", KeyValue(P + b"groups/5", modRevision=40))], 40)
        self.own(5, 41)
        self.assertEqual(self.gained, [[2], [5], [3], [5]])
        self.assertEqual(self.lost, [[5]])

    def test_staleDeleteDoesNotUndoANewerClaim(self):
        """
        A DELETE older than the claim we know of is ignored.
        """
        self.own(6, token=50)
        self.keeper.events([WatchEvent("DELETE", KeyValue(P + b"groups/6", modRevision=40))], 40)
        self.assertEqual(self.ownership.tokenFor(6), 50)

    def test_ownerWithoutNodeIsUnsettled(self):
        """
        A group owned by a node that is not registered is unsettled, never a redirect.
        """
        self.keeper.events([WatchEvent("PUT", groupKv(2, "ghost", 30, 0x5))], 30)
        self.assertIsInstance(self.ownership.route(2), Unsettled)

    def test_handOffReleasesOnlyAfterPendingWrites(self):
        """
        Over its fair share, a node stops serving the groups another node should have, waits
        until their writes are durable, then deletes the claim guarded by its token.
        """
        for g in range(8):
            self.own(g, 20 + g)
            self.backlog.add(g)
            self.backlog.add(g)
        self.keeper.events([WatchEvent("PUT", nodeKv("other", 0x999, "http://other"))], 40)
        self.clock.advance(1.0)
        handing = sorted(self.ownership._handingOff)
        self.assertEqual(len(handing), 4)
        self.assertEqual(self.lost, [handing])
        self.assertIsNotNone(self.ownership.mayWrite(handing[0], 20 + handing[0]))
        self.advanceAlive(5.0)
        self.backlog.remove(range(8))
        self.assertFalse([c for c in self.etcd.calls if c[0] == "txn"])
        # Nothing polls: the last write's completion releases the groups, with no time passing.
        self.backlog.remove(range(8))
        releases = [c for c in self.etcd.calls if c[0] == "txn"]
        self.assertEqual(len(releases), 4)
        self.assertEqual(releases[0][1][0].json["target"], "CREATE")
        self.assertEqual(releases[0][1][0].json["create_revision"],
                         str(20 + handing[0]))
        self.assertEqual(sorted(g for g in range(8) if self.ownership.tokenFor(g)),
                         sorted(set(range(8)) - set(handing)))

    def test_handOffWithNothingQueuedReleasesAtOnce(self):
        """
        When none of the groups handed off has a queued write, they are released at once.
        """
        for g in range(8):
            self.own(g, 20 + g)
        self.keeper.events([WatchEvent("PUT", nodeKv("other", 0x999, "http://other"))], 40)
        self.clock.advance(1.0)
        self.assertEqual(len([c for c in self.etcd.calls if c[0] == "txn"]), 4)
        self.assertEqual(self.ownership._handingOff, set())

    def test_handOffGivesUpWaitingAtItsDeadline(self):
        """
        Writes that never become durable hold a hand-off for C{handoffTimeout} seconds only:
        the group is released then (the store's fence refuses what is left).
        """
        for g in range(8):
            self.own(g, 20 + g)
            self.backlog.add(g)
        self.keeper.events([WatchEvent("PUT", nodeKv("other", 0x999, "http://other"))], 40)
        self.clock.advance(1.0)
        self.assertEqual(len(self.ownership._handingOff), 4)
        self.advanceAlive(self.ownership.handoffTimeout - 0.01)
        self.assertFalse([c for c in self.etcd.calls if c[0] == "txn"])
        self.clock.advance(0.01)
        self.assertEqual(len([c for c in self.etcd.calls if c[0] == "txn"]), 4)
        self.assertEqual(self.ownership._handingOff, set())
        self.assertEqual(self.backlog._waiting, [])

    def test_stopRevokesTheLease(self):
        """
        stopService revokes the lease, which deletes our node key and claims at once.
        """
        self.own(1)
        self.successResultOf(self.ownership.stopService())
        self.assertIn(("revoke", self.lease), self.etcd.calls)
        self.assertEqual(self.lost, [[1]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clusterView(self):
        """
        cluster() lists live nodes and group owners.
        """
        self.own(3)
        nodes, groups = self.ownership.cluster()
        self.assertEqual((nodes, groups), ({"me": "http://me"}, {3: "me"}))
        self.assertEqual(self.ownership._owners[3], Owner("me", 20, self.lease))
