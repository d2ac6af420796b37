"""
Blocks across a real cluster: two C{twistd hpchat} nodes, one etcd, one PostgreSQL database.
A block set through the owner of the blocker's inbox is in force on the owner of the
conversation, which had the pair cached as unblocked, within the documented half second plus
one store read; so is the unblock.
"""

from __future__ import annotations

from twisted.trial import unittest

from tests.support.cluster import Cluster
from tests.support.trial import asyncTest, sleep

#: The block cache's ttl on every node (hpchat.blocks.BlockList's default).
TTL = 0.5
#: What a store read and a request may add on a loaded test machine.
SLACK = 1.5


class BlockAcrossNodesTests(unittest.TestCase):
    timeout = 120

    async def sendStatus(self, cluster, cid: str, user: str, text: str) -> int:
        status, _, answer = await cluster.client.call(
            "POST", f"/v1/conversations/{cid}/messages", user, {"text": text})
        self.assertIn(status, (201, 403), answer)
        return status

    async def untilStatus(self, cluster, cid: str, user: str, wanted: int) -> float:
        """
        Send until a send is answered C{wanted}; return how long that took.
        """
        from twisted.internet import reactor

        start = reactor.seconds()
        n = 0
        while reactor.seconds() - start < TTL + SLACK + 5:
            n += 1
            if await self.sendStatus(cluster, cid, user, f"try {n}") == wanted:
                return reactor.seconds() - start
            await sleep(0.05)
        self.fail(f"no {wanted} for {cid} within {TTL + SLACK + 5}s")

    @asyncTest
    async def test_blockSetOnAnotherNode(self):
        cluster = await Cluster(self, size=2).start()
        # A blocker whose inbox and whose conversation with dave are owned by different
        # nodes (ownership is claimed on first use: try a few names).
        for blocker in ["alice", "amy", "ann", "anna", "abby", "ada", "agnes", "alma"]:
            cid = f"dm:{blocker}:dave"
            # The conversation's owner reads the pair (unblocked) and caches it.
            self.assertEqual(await self.sendStatus(cluster, cid, "dave", "hello"), 201)
            inboxOwner = await cluster.owner(f"inbox:{blocker}")
            conversationOwner = await cluster.owner(cid)
            if inboxOwner is not conversationOwner:
                break
        else:
            self.fail("every blocker's inbox was owned by its conversation's owner")
        # The version and the pair known on the conversation's owner are recent.
        self.assertEqual(await self.sendStatus(cluster, cid, "dave", "again"), 201)

        async def changeBlock(method: str, sendStatus: int) -> None:
            # Set on the blocker's inbox owner; in force on the conversation's within the TTL.
            status, _, _ = await cluster.client.call(method, "/v1/blocks/dave", blocker,
                                                     start=inboxOwner)
            self.assertEqual(status, 204)
            took = await self.untilStatus(cluster, cid, "dave", sendStatus)
            self.assertLess(took, TTL + SLACK)

        await changeBlock("PUT", 403)
        # Still refused: the answer is kept.
        self.assertEqual(await self.sendStatus(cluster, cid, "dave", "refused"), 403)
        await changeBlock("DELETE", 201)
