"""
The outbox across a failover: two twistd nodes, etcd and a real nsqd.
"""

from __future__ import annotations

from twisted.trial import unittest

from tests.support.cluster import Cluster
from tests.support.process import waitFor
from tests.support.trial import asyncTest, sleep


class OutboxFailoverTests(unittest.TestCase):
    timeout = 150

    @asyncTest
    async def test_messageNotificationOfAKilledOwnerIsPublishedByTheNext(self):
        """
        nsqd is down when a message is sent (201) through the owner of its conversation,
        and that owner is killed before nsqd is back: the node that takes the conversation's
        group over publishes the pending notification, which reaches the recipient once.
        """
        cluster = await Cluster(self, size=2, nsq=True).start()
        for n in range(400):
            cid, recipient = f"dm:alice:r{n:03d}", f"r{n:03d}"
            owner = await cluster.owner(cid)
            if owner is not await cluster.owner(f"inbox:{recipient}"):
                break
        else:
            self.fail("no conversation and inbox on different nodes")
        survivor = next(n for n in cluster.nodes if n is not owner)
        await cluster.nsqd.stop()
        status, _, sent = await cluster.client.call(
            "POST", f"/v1/conversations/{cid}/messages", "alice", {"text": "before the crash"},
            start=owner)
        self.assertEqual(status, 201, sent)
        await owner.kill()
        await cluster.nsqd.start()

        async def inbox():
            status, _, body = await cluster.client.call(
                "GET", "/v1/inbox/events?after=0&timeout=0", recipient, start=survivor)
            assert status == 200, (status, body)
            return body["events"]

        await waitFor(inbox, cluster.leaseTtl + 40, "the message notification", interval=0.3)
        await sleep(2.0)  # time for a second copy to show up, if it were appended
        events = await inbox()
        self.assertEqual([(e["type"], e["data"]["conversation"], e["data"]["seq"])
                          for e in events], [("message", cid, sent["message"]["seq"])])
        self.assertIn("publishing pending notification", survivor.log())
