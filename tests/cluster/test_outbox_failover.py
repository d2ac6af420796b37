"""
The outbox across a failover: two twistd nodes, etcd and a real nsqd; and, without NSQ, the
notifications written with their messages.
"""

from __future__ import annotations

from twisted.internet import defer
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


class CompanionFailoverTests(unittest.TestCase):
    """
    Without NSQ, a node that owns both a conversation and its recipient's inbox writes each
    message's notification in the message's own transaction. Killed (SIGKILL) in the middle
    of a burst, the next owner of both has every acknowledged message and exactly one
    notification of each stored message, with no gap in the inbox's seqs.
    """

    timeout = 150

    @asyncTest
    async def test_killedOwnerOfBothLeavesOneNotificationPerMessage(self):
        cluster = await Cluster(self, size=2).start()
        for n in range(400):
            cid, recipient = f"dm:alice:r{n:03d}", f"r{n:03d}"
            owner = await cluster.owner(cid)
            if owner is await cluster.owner(f"inbox:{recipient}"):
                break
        else:
            self.fail("no conversation and inbox on the same node")
        survivor = next(n for n in cluster.nodes if n is not owner)
        # The inbox in memory on its owner: the companion path.
        status, _, _ = await cluster.client.call("GET", "/v1/inbox/events?timeout=0",
                                                 recipient, start=owner)
        self.assertEqual(status, 200)

        acked: dict[str, int] = {}

        async def send(i: int) -> None:
            try:
                status, _, body = await cluster.client.call(
                    "POST", f"/v1/conversations/{cid}/messages", "alice",
                    {"text": f"m{i}", "client_id": f"c{i}"}, start=owner, deadline=3,
                    maxRedirects=0, requestTimeout=3)
            except Exception:
                return
            if status in (200, 201):
                acked[f"c{i}"] = body["message"]["seq"]

        for i in range(20):
            await send(i)
        burst = [defer.ensureDeferred(send(i)) for i in range(20, 60)]
        await owner.kill()
        await defer.DeferredList(burst)
        self.assertGreaterEqual(len(acked), 20)

        async def history():
            status, _, body = await cluster.client.call(
                "GET", f"/v1/conversations/{cid}/messages?limit=200", "alice", start=survivor,
                deadline=cluster.leaseTtl + 40)
            return body["messages"] if status == 200 else None

        messages = await waitFor(lambda: defer.ensureDeferred(history()),
                                 cluster.leaseTtl + 40, "the conversation elsewhere",
                                 interval=0.3)
        stored = {m["client_id"]: m["seq"] for m in messages}
        for clientId, seq in acked.items():
            self.assertEqual(stored.get(clientId), seq, f"acknowledged {clientId} lost")
        status, _, body = await cluster.client.call(
            "GET", "/v1/inbox/events?after=0&timeout=0", recipient, start=survivor)
        self.assertEqual(status, 200, body)
        events = body["events"]
        self.assertEqual([e["seq"] for e in events], list(range(1, len(events) + 1)))
        self.assertEqual(sorted(e["data"]["seq"] for e in events if e["type"] == "message"),
                         sorted(m["seq"] for m in messages))
