"""
Inbox notifications across a real cluster: two twistd nodes, etcd and a real nsqd. Events are
published with nsqd's own HTTP API, as the site's other services do.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.trial import unittest

from tests.support.cluster import TOPIC, Cluster
from tests.support.process import theReactor, waitFor
from tests.support.trial import asyncTest, sleep


async def inboxLastSeq(cluster, user, start=None):
    status, _, body = await cluster.client.call("GET", "/v1/inbox/events?timeout=0", user,
                                                start=start)
    assert status == 200, (status, body)
    return body["last_seq"]


async def pollInbox(cluster, user, after, start, timeout=20):
    status, _, body = await cluster.client.call(
        "GET", f"/v1/inbox/events?after={after}&timeout={timeout}", user, start=start,
        deadline=timeout + 10, requestTimeout=timeout + 5)
    assert status == 200, (status, body)
    return body


def flirt(nid, user="bob", sender="alice"):
    return json.dumps({"id": nid, "user": user, "type": "flirt", "from": sender,
                       "data": {"hearts": 3}}).encode()


class NotificationTests(unittest.TestCase):
    timeout = 120

    @asyncTest
    async def test_flirtReachesTheWaitingPollThroughEitherNode(self):
        """
        A flirt published to nsqd reaches bob's waiting inbox poll, whichever node he polls
        through, within a fraction of a second.
        """
        cluster = await Cluster(self, size=2, nsq=True).start()
        for i, entry in enumerate(cluster.nodes):
            after = await inboxLastSeq(cluster, "bob", entry)
            poll = defer.ensureDeferred(pollInbox(cluster, "bob", after, entry))
            await sleep(0.2)
            published = theReactor().seconds()
            await cluster.nsqd.pub(TOPIC, flirt(f"flirt-{i}"))
            body = await poll
            took = theReactor().seconds() - published
            self.assertEqual([(e["id"], e["type"], e["from"], e["data"]) for e in body["events"]],
                             [(f"flirt-{i}", "flirt", "alice", {"hearts": 3})])
            self.assertLess(took, 2.0)

    @asyncTest
    async def test_chatMessageNotifiesTheRecipientOnAnotherNode(self):
        """
        A message in a conversation owned by one node puts a message notification into the
        recipient's inbox owned by the other node.
        """
        cluster = await Cluster(self, size=2, nsq=True).start()
        for n in range(200):
            cid, recipient = f"dm:alice:r{n:03d}", f"r{n:03d}"
            if (await cluster.owner(cid)) is not (await cluster.owner(f"inbox:{recipient}")):
                break
        else:
            self.fail("no conversation and inbox on different nodes")
        after = await inboxLastSeq(cluster, recipient)
        poll = defer.ensureDeferred(pollInbox(cluster, recipient, after, cluster.nodes[0]))
        status, _, sent = await cluster.client.call(
            "POST", f"/v1/conversations/{cid}/messages", "alice", {"text": "hello there"})
        self.assertEqual(status, 201)
        body = await poll
        [event] = body["events"]
        self.assertEqual((event["type"], event["from"]), ("message", "alice"))
        self.assertEqual(event["data"], {"conversation": cid, "seq": sent["message"]["seq"],
                                         "preview": "hello there"})

    @asyncTest
    async def test_inboxOwnerKilledNotificationArrivesOnce(self):
        """
        With the owner of bob's inbox killed, a flirt (published twice, as NSQ may deliver it
        twice) arrives after failover, exactly once.
        """
        cluster = await Cluster(self, size=2, nsq=True).start()
        owner = await cluster.owner("inbox:bob")
        survivor = next(n for n in cluster.nodes if n is not owner)
        before = await inboxLastSeq(cluster, "bob")
        await owner.kill()
        await cluster.nsqd.pub(TOPIC, flirt("flirt-failover"))
        await cluster.nsqd.pub(TOPIC, flirt("flirt-failover"))

        async def arrived():
            body = await pollInbox(cluster, "bob", before, survivor, timeout=2)
            return body["events"]

        events = await waitFor(arrived, cluster.leaseTtl + 15, "the flirt after failover")
        self.assertEqual([e["id"] for e in events], ["flirt-failover"])
        await sleep(2.0)  # time for a second delivery to show up, if it were appended
        body = await pollInbox(cluster, "bob", before, survivor, timeout=0)
        self.assertEqual([e["id"] for e in body["events"]], ["flirt-failover"])
