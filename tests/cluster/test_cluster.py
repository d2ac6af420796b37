"""
The cluster for real: one etcd and three (then four) C{twistd hpchat} processes sharing one
SQLite file, driven over HTTP like browsers would.
"""

from __future__ import annotations

import math
import os
import signal

from twisted.internet import defer
from twisted.trial import unittest

from hpchat.streamids import groupOf
from tests.support.cluster import Cluster, token
from tests.support.etcd import EtcdProcess, findEtcd
from tests.support.node import Node
from tests.support.process import theReactor, waitFor
from tests.support.trial import asyncTest, sleep

CID = "dm:alice:bob"


def streamsCoveringAllGroups(groups: int) -> list[str]:
    """
    One conversation per group.
    """
    found: dict[int, str] = {}
    n = 0
    while len(found) < groups:
        cid = f"dm:u{n:04d}:v{n:04d}"
        found.setdefault(groupOf(cid, groups), cid)
        n += 1
    return [found[g] for g in range(groups)]


async def readAll(cluster: Cluster, cid: str) -> list[dict]:
    messages: list[dict] = []
    before = None
    while True:
        path = f"/v1/conversations/{cid}/messages?limit=200"
        if before is not None:
            path += f"&before={before}"
        status, _, body = await cluster.client.call("GET", path, cid.split(":")[1])
        assert status == 200, (status, body)
        messages[:0] = body["messages"]
        if not body["has_more"]:
            return messages
        before = body["messages"][0]["seq"]


def assertExactlyOnce(testcase, messages: list[dict], acked: dict[str, int]) -> None:
    testcase.assertEqual([m["seq"] for m in messages], list(range(1, len(messages) + 1)),
                         "seqs must be 1..n without gap or duplicate")
    seen: dict[str, int] = {}
    for m in messages:
        testcase.assertNotIn(m["client_id"], seen, f"{m['client_id']} stored twice")
        seen[m["client_id"]] = m["seq"]
    for clientId, seq in acked.items():
        testcase.assertEqual(seen.get(clientId), seq, f"acknowledged {clientId} lost or moved")


class Sender:
    """
    Sends to one conversation in a loop through the cluster client, remembering every
    acknowledgement with its time.
    """

    def __init__(self, cluster: Cluster, cid: str, name: str):
        self.cluster = cluster
        self.cid = cid
        self.name = name
        self.acked: dict[str, int] = {}
        self.ackTimes: list[tuple[float, str]] = []
        self.running = True
        self.errors: list[str] = []

    async def run(self):
        n = 0
        user = self.cid.split(":")[1 + n % 2]
        while self.running:
            clientId = f"{self.name}-{n}"
            try:
                status, headers, body = await self.cluster.client.call(
                    "POST", f"/v1/conversations/{self.cid}/messages", user,
                    {"text": clientId, "client_id": clientId}, deadline=20)
            except Exception as e:
                self.errors.append(repr(e))
                return
            if status in (200, 201):
                self.acked[clientId] = body["message"]["seq"]
                self.ackTimes.append((theReactor().seconds(), clientId))
            else:
                self.errors.append(f"{status} {body}")
                return
            n += 1
            await sleep(0.01)


class RedirectTests(unittest.TestCase):
    timeout = 120

    @asyncTest
    async def test_nonOwnerRedirectsToOwner(self):
        """
        A node that does not own a conversation's group answers 307 with Location (the owner's
        URL plus the same path and query) and X-HPChat-Owner; the owner answers it; every node
        agrees on the owner, and following redirects never loops.
        """
        cluster = await Cluster(self).start()
        owner = await cluster.owner(CID)
        other = next(n for n in cluster.nodes if n is not owner)
        path = f"/v1/conversations/{CID}/messages?trace=1"
        status, headers, body = await cluster.http.request(
            "POST", other.url + path, token("alice"), {"text": "hi"})
        self.assertEqual(status, 307, body)
        self.assertEqual(headers.getRawHeaders(b"location"), [(owner.url + path).encode()])
        self.assertEqual(headers.getRawHeaders(b"x-hpchat-owner"), [owner.nodeId.encode()])
        self.assertEqual(body["error"]["code"], "moved")
        status, _, body = await cluster.http.request("POST", owner.url + path, token("alice"),
                                                     {"text": "hi"})
        self.assertEqual(status, 201)

        streams = streamsCoveringAllGroups(cluster.groups)
        for cid in streams:
            for node in cluster.nodes:
                status, _, _ = await cluster.client.call(
                    "GET", f"/v1/conversations/{cid}/events?timeout=0", cid.split(":")[1],
                    start=node, maxRedirects=1)
                self.assertEqual(status, 200)
        views = [await cluster.view(n) for n in cluster.nodes]
        self.assertEqual(len(views[0]["groups"]), cluster.groups)
        for view in views[1:]:
            self.assertEqual(view["groups"], views[0]["groups"])
            self.assertEqual(view["nodes"], views[0]["nodes"])
        counts = [list(views[0]["groups"].values()).count(n.nodeId) for n in cluster.nodes]
        cap = math.ceil(cluster.groups / 3) + 1
        self.assertTrue(all(0 < c <= cap for c in counts), counts)
        # Every ownership change is a log line on every node: "claimed ... for" on the node
        # that claimed it (for itself or the node placement chose), "now owned by" on the
        # others; no factory start and stop lines.
        group = str(cluster.group(CID))
        ownerId = views[0]["groups"][group]
        lines = (f"claimed group {group} for {ownerId}", f"group {group} now owned by {ownerId}")
        for node in cluster.nodes:
            await waitFor(lambda: any(line in node.log() for line in lines), 5,
                          f"{node.nodeId}'s log line for group {group}")
            self.assertNotIn("Starting factory", node.log())


class FailoverTests(unittest.TestCase):
    timeout = 180

    @asyncTest
    async def test_killOwnerUnderLoad(self):
        """
        kill -9 of the owner while sends stream in: another node acknowledges sends within
        lease_ttl + 2 s, and afterwards every acknowledged message is stored exactly once with
        seqs 1..n.
        """
        cluster = await Cluster(self).start()
        owner = await cluster.owner(CID)
        senders = [Sender(cluster, CID, f"s{i}") for i in range(4)]
        running = [defer.ensureDeferred(s.run()) for s in senders]
        await sleep(1.0)
        before = sum(len(s.acked) for s in senders)
        self.assertGreater(before, 10)
        await owner.kill()
        killedAt = theReactor().seconds()
        await waitFor(lambda: any(t > killedAt for s in senders for t, _ in s.ackTimes),
                      cluster.leaseTtl + 10, "an acknowledgement after the kill")
        firstAck = min(t for s in senders for t, _ in s.ackTimes if t > killedAt)
        await sleep(1.0)
        for s in senders:
            s.running = False
        await defer.gatherResults(running)
        for s in senders:
            self.assertEqual(s.errors, [])
        self.assertLess(firstAck - killedAt, cluster.leaseTtl + 2,
                        f"takeover took {firstAck - killedAt:.2f}s")
        newOwner = await cluster.owner(CID)
        self.assertIsNot(newOwner, owner)
        acked = {k: v for s in senders for k, v in s.acked.items()}
        assertExactlyOnce(self, await readAll(cluster, CID), acked)

    @asyncTest
    async def test_pausedOwnerIsFenced(self):
        """
        An owner paused (SIGSTOP) past its lease TTL is replaced; resumed (SIGCONT), it commits
        nothing: the send it received while paused is answered with a redirect or a 503, and
        the conversation keeps its seqs 1..n.
        """
        cluster = await Cluster(self).start()
        owner = await cluster.owner(CID)
        acked = {}
        for i in range(5):
            status, _, body = await cluster.client.call(
                "POST", f"/v1/conversations/{CID}/messages", "alice",
                {"text": f"before {i}", "client_id": f"b{i}"})
            acked[f"b{i}"] = body["message"]["seq"]
        owner.signal(signal.SIGSTOP)
        self.addCleanup(owner.signal, signal.SIGCONT)
        # A send straight to the paused owner waits in its socket until it wakes.
        stale = defer.ensureDeferred(cluster.http.request(
            "POST", owner.url + f"/v1/conversations/{CID}/messages", token("alice"),
            {"text": "sent to the paused owner", "client_id": "stale"}, timeout=30))
        await sleep(cluster.leaseTtl + 1)
        others = [n for n in cluster.nodes if n is not owner]
        for i in range(5):
            status, _, body = await cluster.client.call(
                "POST", f"/v1/conversations/{CID}/messages", "bob",
                {"text": f"after {i}", "client_id": f"a{i}"}, start=others[i % 2])
            self.assertIn(status, (200, 201))
            acked[f"a{i}"] = body["message"]["seq"]
        view = await cluster.view(others[0])
        self.assertNotEqual(view["groups"][str(cluster.group(CID))], owner.nodeId)
        owner.signal(signal.SIGCONT)
        status, headers, body = await stale
        self.assertIn(status, (307, 503), body)
        if status == 307:
            self.assertNotEqual(headers.getRawHeaders(b"x-hpchat-owner"), [owner.nodeId.encode()])
        messages = await readAll(cluster, CID)
        assertExactlyOnce(self, messages, acked)
        self.assertNotIn("stale", [m["client_id"] for m in messages])
        # It comes back as a member with a fresh lease.
        await waitFor(lambda: self._ready(cluster, owner), 15, "the resumed node ready again")

    async def _ready(self, cluster, node):
        status, _, _ = await cluster.http.request("GET", node.url + "/readyz", timeout=2)
        return status == 200

    @asyncTest
    async def test_gracefulStopHandsOverAtOnce(self):
        """
        SIGTERM of an owner: it flushes, revokes its lease, and another node acknowledges a
        send for its group in under a second.
        """
        cluster = await Cluster(self).start()
        owner = await cluster.owner(CID)
        status, _, _ = await cluster.client.call(
            "POST", f"/v1/conversations/{CID}/messages", "alice", {"text": "one"})
        self.assertEqual(status, 201)
        others = [n for n in cluster.nodes if n is not owner]
        started = theReactor().seconds()
        owner.signal(signal.SIGTERM)
        status, _, body = await cluster.client.call(
            "POST", f"/v1/conversations/{CID}/messages", "bob", {"text": "two"},
            start=others[0])
        elapsed = theReactor().seconds() - started
        self.assertEqual((status, body["message"]["seq"]), (201, 2))
        self.assertLess(elapsed, 1.0, f"takeover took {elapsed:.3f}s")
        # The groups are handed over before the lease goes, so the takeover can be acknowledged
        # before the stopping node has logged the revocation: wait for the line.
        await waitFor(lambda: "lease revoked" in owner.log(), 5, "the lease revoked")


class MembershipTests(unittest.TestCase):
    timeout = 180

    @asyncTest
    async def test_joiningNodeGetsAFairShare(self):
        """
        With every group owned by three nodes, a fourth node joins: the others hand off what
        exceeds ceil(N/K) (slack 0 here), losing nothing, and the newcomer ends up with its
        share.
        """
        cluster = Cluster(self, slack=0)
        await cluster.start()
        streams = streamsCoveringAllGroups(cluster.groups)
        acked = {}
        for cid in streams:
            status, _, body = await cluster.client.call(
                "POST", f"/v1/conversations/{cid}/messages", cid.split(":")[1],
                {"text": "first", "client_id": f"{cid[3:8]}-1"})
            self.assertEqual(status, 201, body)
            acked[cid] = {f"{cid[3:8]}-1": body["message"]["seq"]}
        newcomer = cluster.addNode()
        await newcomer.start()
        cap = math.ceil(cluster.groups / 4)

        async def balanced():
            for cid in streams:
                await cluster.client.call("GET", f"/v1/conversations/{cid}/events?timeout=0",
                                          cid.split(":")[1])
            view = await cluster.view(newcomer)
            counts = {n.nodeId: list(view["groups"].values()).count(n.nodeId)
                      for n in cluster.nodes}
            return (len(view["groups"]) == cluster.groups
                    and max(counts.values()) <= cap and counts[newcomer.nodeId] > 0 and counts)

        counts = await waitFor(balanced, 30, "a balanced cluster")
        self.assertEqual(counts[newcomer.nodeId], cluster.groups - 3 * cap, counts)
        for cid in streams:
            status, _, body = await cluster.client.call(
                "POST", f"/v1/conversations/{cid}/messages", cid.split(":")[1],
                {"text": "second", "client_id": f"{cid[3:8]}-2"})
            acked[cid][f"{cid[3:8]}-2"] = body["message"]["seq"]
            assertExactlyOnce(self, await readAll(cluster, cid), acked[cid])


class EtcdFaultTests(unittest.TestCase):
    timeout = 120

    @asyncTest
    async def test_etcdUnreachableAtStartup(self):
        """
        A node whose etcd is down logs a clear line, stays alive (/healthz 200) but not ready
        (/readyz 503, API 503), retries, and becomes ready once etcd answers.
        """
        findEtcd()
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        etcd = EtcdProcess(theReactor())
        self.addCleanup(etcd.cleanup)
        node = Node(workdir, "lonely", sections={
            "cluster": {"etcd": etcd.clientURL, "lease_ttl": "3"}})
        self.addCleanup(lambda: defer.ensureDeferred(node.stop()))
        await node.start(ready=False)
        cluster = Cluster(self, size=0)
        cluster.nodes.append(node)
        self.addCleanup(lambda: defer.ensureDeferred(cluster.http.close()))
        status, _, body = await cluster.http.request("GET", node.url + "/readyz")
        self.assertEqual((status, body["checks"]["ownership"]), (503, False))
        status, _, body = await cluster.http.request(
            "POST", node.url + f"/v1/conversations/{CID}/messages", token("alice"), {"text": "x"})
        self.assertEqual((status, body["error"]["code"]), (503, "unavailable"))
        await waitFor(lambda: "cannot register node lonely with etcd" in node.log(), 10,
                      "the log line")
        await etcd.start()
        await waitFor(lambda: self._ready(cluster, node), 20, "ready after etcd started")
        status, _, _ = await cluster.http.request(
            "POST", node.url + f"/v1/conversations/{CID}/messages", token("alice"), {"text": "x"})
        self.assertEqual(status, 201)

    async def _ready(self, cluster, node):
        status, _, _ = await cluster.http.request("GET", node.url + "/readyz", timeout=2)
        return status == 200

    @asyncTest
    async def test_etcdLostWhileRunning(self):
        """
        With etcd gone, an owner self-fences after the TTL (sends answered 503, nothing
        written, not ready) and recovers when etcd returns; seqs stay 1..n.
        """
        cluster = await Cluster(self, size=1).start()
        [node] = cluster.nodes
        acked = {}
        status, _, body = await cluster.client.call(
            "POST", f"/v1/conversations/{CID}/messages", "alice",
            {"text": "one", "client_id": "one"})
        acked["one"] = body["message"]["seq"]
        await cluster.etcd.stop()
        await sleep(cluster.leaseTtl)
        status, _, body = await cluster.http.request(
            "POST", node.url + f"/v1/conversations/{CID}/messages", token("alice"),
            {"text": "while fenced", "client_id": "fenced"})
        self.assertEqual(status, 503, body)
        status, _, _ = await cluster.http.request("GET", node.url + "/readyz")
        self.assertEqual(status, 503)
        self.assertIn("self-fencing", node.log())
        await cluster.etcd.start()
        await waitFor(lambda: self._ready(cluster, node), 30, "ready after etcd returned")
        status, _, body = await cluster.client.call(
            "POST", f"/v1/conversations/{CID}/messages", "alice",
            {"text": "two", "client_id": "two"})
        self.assertIn(status, (200, 201))
        acked["two"] = body["message"]["seq"]
        messages = await readAll(cluster, CID)
        assertExactlyOnce(self, messages, acked)
        self.assertNotIn("fenced", [m["client_id"] for m in messages])
