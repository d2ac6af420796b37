"""
The social features on a real cluster: two C{twistd hpchat} nodes, one etcd, one PostgreSQL
database. Unread counts, read markers, blocks and last-seen times are written, every node is
restarted, and all of them are still there.
"""

from __future__ import annotations

from twisted.trial import unittest

from tests.support.cluster import Cluster
from tests.support.process import waitFor
from tests.support.trial import asyncTest, sleep

AB = "dm:alice:bob"
BC = "dm:bob:carol"
AD = "dm:alice:dave"


class SocialRestartTests(unittest.TestCase):
    timeout = 180

    async def call(self, cluster, method, path, user, body=None):
        status, _, answer = await cluster.client.call(method, path, user, body)
        return status, answer

    async def send(self, cluster, cid, user, text):
        status, answer = await self.call(cluster, "POST", f"/v1/conversations/{cid}/messages",
                                         user, {"text": text})
        self.assertEqual(status, 201, answer)
        return answer["message"]["seq"]

    async def state(self, cluster):
        """
        What bob's list, the markers of dm:alice:bob, alice's blocks and dave's send say
        (asked so that alice polls nothing: her last_seen stays as it is).
        """
        status, listed = await self.call(cluster, "GET", "/v1/conversations", "bob")
        self.assertEqual(status, 200, listed)
        status, polled = await self.call(
            cluster, "GET", f"/v1/conversations/{AB}/events?timeout=0", "bob")
        self.assertEqual(status, 200, polled)
        status, blocks = await self.call(cluster, "GET", "/v1/blocks", "alice")
        self.assertEqual(status, 200, blocks)
        status, refused = await self.call(cluster, "POST", f"/v1/conversations/{AD}/messages",
                                          "dave", {"text": "let me in"})
        return {"list": [(s["conversation"], s["with"], s["unread"], s["read_seq"],
                          s["partner_read_seq"], s["last_message"]["text"])
                         for s in listed["conversations"]],
                "unread_total": listed["unread_total"],
                "read": polled["read"], "read_version": polled["read_version"],
                "blocked": blocks["blocked"], "dave_send": (status, refused["error"]["code"])}

    async def presence(self, cluster, users, viewer="erin"):
        status, answer = await self.call(cluster, "GET", f"/v1/presence?users={users}", viewer)
        self.assertEqual(status, 200, answer)
        return answer["presence"]

    @asyncTest
    async def test_everythingSurvivesARestartOfEveryNode(self):
        """
        Unread counts, read markers, blocks and last_seen are durable: after every node of
        the cluster has been stopped and started again, they are as they were.
        """
        cluster = await Cluster(self, size=2, sections={"chat": {"presence_grace": "2"}}).start()
        for n in range(3):
            await self.send(cluster, AB, "alice", f"a{n}")
        await self.send(cluster, BC, "carol", "c0")
        await self.send(cluster, BC, "carol", "c1")
        await self.send(cluster, AD, "dave", "before the block")
        status, answer = await self.call(cluster, "POST", f"/v1/conversations/{AB}/read",
                                         "bob", {"seq": 2})
        self.assertEqual((status, answer), (200, {"read_seq": 2}))
        status, _ = await self.call(cluster, "PUT", "/v1/blocks/dave", "alice")
        self.assertEqual(status, 204)

        # Alice is online while a poll of hers waits (on the owner of dm:alice:bob), and
        # for presence_grace after it ended.
        status, _ = await self.call(cluster, "GET",
                                    f"/v1/conversations/{AB}/events?timeout=1", "alice")
        self.assertEqual(status, 200)

        status, answer = await self.call(cluster, "GET", "/v1/presence?users=alice", "erin")
        self.assertEqual(answer["presence"]["alice"]["online"], True)

        async def gone():
            state = (await self.presence(cluster, "alice"))["alice"]
            return state if not state["online"] and state["last_seen"] is not None else None

        lastSeen = (await waitFor(gone, 10, "alice offline, with a last_seen"))["last_seen"]
        self.assertEqual(await self.presence(cluster, "alice", viewer="dave"),
                         {"alice": {"online": False, "last_seen": None}})

        before = await self.state(cluster)
        self.assertEqual(before["list"], [(BC, "carol", 2, 0, 2, "c1"),
                                          (AB, "alice", 1, 2, 3, "a2")])
        self.assertEqual(before["unread_total"], 3)
        self.assertEqual((before["read"], before["read_version"]),
                         ({"alice": 3, "bob": 2}, 5))
        self.assertEqual(before["blocked"], ["dave"])
        self.assertEqual(before["dave_send"], (403, "blocked"))

        # Reports and last-seen writes happen within a second or two; then every node stops
        # and starts again.
        await sleep(2.5)
        for node in cluster.nodes:
            await node.stop()
        for node in cluster.nodes:
            await node.start()

        after = await self.state(cluster)
        self.assertEqual(after, before)
        self.assertEqual(await self.presence(cluster, "alice,carol"), {
            "alice": {"online": False, "last_seen": lastSeen},
            "carol": {"online": False, "last_seen": None}})
        self.assertEqual(await self.presence(cluster, "alice", viewer="dave"),
                         {"alice": {"online": False, "last_seen": None}})
