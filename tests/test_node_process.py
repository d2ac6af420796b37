"""
End to end: a real C{twistd -n hpchat} process on a free port with a temporary SQLite file.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.support.node import HTTP, Node
from tests.support.process import theReactor

CID = "dm:alice:bob"


async def mintToken(node: Node, user: str) -> str:
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "hpchat.cli", "token", "--config", node.configPath, user],
        env=dict(os.environ), reactor=theReactor())
    if code != 0:
        raise AssertionError(f"hpchat token failed: {err!r}")
    return out.decode().strip()


async def readAll(http: HTTP, node: Node, token: str, cid: str) -> list[dict]:
    """
    Every message of C{cid}, oldest first, read through history paging.
    """
    pages: list[list[dict]] = []
    before = None
    while True:
        url = f"{node.url}/v1/conversations/{cid}/messages?limit=200"
        if before is not None:
            url += f"&before={before}"
        status, _, body = await http.request("GET", url, token)
        assert status == 200, (status, body)
        if body["messages"]:
            pages.append(body["messages"])
            before = body["messages"][0]["seq"]
        if not body["has_more"]:
            break
    return [m for page in reversed(pages) for m in page]


class KillAndRestartTests(unittest.TestCase):
    timeout = 120

    async def solo(self):
        """
        A started node on a temporary SQLite file, an HTTP client, and tokens for alice
        and bob minted with the hpchat command.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, "solo")
        self.addCleanup(lambda: defer.ensureDeferred(node.stop()))
        http = HTTP()
        self.addCleanup(lambda: defer.ensureDeferred(http.close()))
        await node.start()
        alice = await mintToken(node, "alice")
        bob = await mintToken(node, "bob")
        return node, http, alice, bob

    def test_sigkillAfterBurstLosesNothingAcknowledged(self):
        """
        When the node is killed with SIGKILL right after a burst of acknowledged sends and
        restarted, every acknowledged message is there once, with seqs 1..n and no gap, and
        an acknowledged client_id is still recognised.
        """
        return defer.ensureDeferred(self._sigkill())

    async def _sigkill(self):
        node, http, alice, bob = await self.solo()

        acked: dict[str, int] = {}
        killed = defer.Deferred()
        state = {"stop": False}

        async def sender(worker: int):
            n = 0
            while not state["stop"]:
                clientId = f"w{worker}-{n}"
                token = alice if worker % 2 else bob
                try:
                    status, _, body = await http.request(
                        "POST", f"{node.url}/v1/conversations/{CID}/messages", token,
                        {"text": f"message {clientId}", "client_id": clientId}, timeout=5)
                except Exception:
                    return
                if status != 201:
                    return
                acked[clientId] = body["message"]["seq"]
                n += 1
                if len(acked) >= 300 and not killed.called:
                    killed.callback(None)

        senders = [defer.ensureDeferred(sender(i)) for i in range(16)]
        await killed
        await node.kill()
        state["stop"] = True
        await defer.gatherResults(senders)
        self.assertGreaterEqual(len(acked), 300)

        await node.start()
        messages = await readAll(http, node, alice, CID)
        seqs = [m["seq"] for m in messages]
        self.assertEqual(seqs, list(range(1, len(messages) + 1)))
        byClientId = {}
        for m in messages:
            self.assertNotIn(m["client_id"], byClientId, "a client_id was stored twice")
            byClientId[m["client_id"]] = m["seq"]
        for clientId, seq in acked.items():
            self.assertEqual(byClientId.get(clientId), seq, f"acknowledged {clientId} lost")

        # Idempotency holds across the restart: the same client_id returns the original.
        some = sorted(acked)[0]
        token = alice if int(some[1:].split("-")[0]) % 2 else bob
        status, _, body = await http.request(
            "POST", f"{node.url}/v1/conversations/{CID}/messages", token,
            {"text": "again", "client_id": some})
        self.assertEqual((status, body["message"]["seq"]), (200, acked[some]))

    def test_gracefulStopAndTwoUserConversation(self):
        """
        A waiting long-poll returns the other user's message; SIGTERM shuts the node down
        cleanly (twistd re-raises the signal, as systemd expects).
        """
        return defer.ensureDeferred(self._conversation())

    async def _conversation(self):
        node, http, alice, bob = await self.solo()
        poll = defer.ensureDeferred(http.request(
            "GET", f"{node.url}/v1/conversations/{CID}/events?timeout=20", bob))
        status, _, body = await http.request(
            "POST", f"{node.url}/v1/conversations/{CID}/messages", alice, {"text": "hello bob"})
        self.assertEqual(status, 201)
        status, _, events = await poll
        self.assertEqual(status, 200)
        self.assertEqual([e["text"] for e in events["events"]], ["hello bob"])
        self.assertEqual(events["last_seq"], 1)
        self.assertEqual(await node.stop(), -15)
        log = node.log()
        self.assertIn("Main loop terminated", log)
        self.assertNotIn("Traceback", log)
