"""
A real node on a real PostgreSQL server that goes away under load and comes back: sends are
answered 503 with Retry-After while it is down, readiness says why, the node recovers by
itself, and every acknowledged message is stored exactly once, in order.
"""

from __future__ import annotations

import os

from twisted.internet import defer, task
from twisted.trial import unittest

from tests.support.cluster import token
from tests.support.node import HTTP, Node
from tests.support.postgres import startPostgres
from tests.support.process import theReactor, waitExit, waitFor
from tests.test_node_process import readAll

CIDS = ["dm:alice:bob", "dm:carol:dave", "dm:erin:frank"]


class Writers:
    """
    Senders that retry the same client_id until it is acknowledged, as the chat page does.
    """

    def __init__(self, http: HTTP, node: Node):
        self.http = http
        self.node = node
        self.acked: dict[str, dict[str, int]] = {cid: {} for cid in CIDS}
        self.refused: list[tuple[int, str | None]] = []
        self.running = True

    async def writer(self, cid: str, n: int) -> None:
        sender = cid.split(":")[1]
        i = 0
        reactor = theReactor()
        while self.running:
            i += 1
            clientId = f"w{n}-{i}"
            while True:
                try:
                    status, headers, body = await self.http.request(
                        "POST", f"{self.node.url}/v1/conversations/{cid}/messages",
                        token(sender), {"text": f"m {clientId}", "client_id": clientId},
                        timeout=10)
                except Exception:
                    status, headers, body = 0, None, None
                if status in (200, 201):
                    self.acked[cid][clientId] = body["message"]["seq"]
                    break
                if status == 503:
                    retry = headers.getRawHeaders(b"retry-after", [None])[0]
                    self.refused.append((status, retry.decode() if retry else None))
                elif status != 0:
                    raise AssertionError(f"unexpected answer {status}: {body}")
                await task.deferLater(reactor, 0.05, lambda: None)
            await task.deferLater(reactor, 0.01, lambda: None)

    async def prober(self, cid: str) -> None:
        """
        New messages of another user, each tried once: while the store is down they are
        refused at once (the writers above are held on what was queued before).
        """
        sender = cid.split(":")[2]
        reactor = theReactor()
        i = 0
        while self.running:
            i += 1
            clientId = f"p-{i}"
            try:
                status, headers, body = await self.http.request(
                    "POST", f"{self.node.url}/v1/conversations/{cid}/messages", token(sender),
                    {"text": "probe", "client_id": clientId}, timeout=10)
            except Exception:
                status = 0
            if status in (200, 201):
                self.acked[cid][clientId] = body["message"]["seq"]
            elif status == 503:
                retry = headers.getRawHeaders(b"retry-after", [None])[0]
                self.refused.append((status, retry.decode() if retry else None))
            elif status != 0:
                raise AssertionError(f"unexpected answer {status}: {body}")
            await task.deferLater(reactor, 0.1, lambda: None)


class PostgreSQLOutageTests(unittest.TestCase):
    timeout = 180

    async def _test(self):
        server = await startPostgres(self)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, "solo", sections={
            "storage": {"backend": "postgresql", "dsn": server.dsn},
            "limits": {"sends_per_second": "1000", "sends_burst": "1000"}})
        self.addCleanup(lambda: defer.ensureDeferred(node.stop()))
        await node.start()
        http = HTTP()
        self.addCleanup(lambda: defer.ensureDeferred(http.close()))
        writers = Writers(http, node)
        loops = [defer.ensureDeferred(writers.writer(cid, n))
                 for n, cid in enumerate(CIDS * 2)]
        loops += [defer.ensureDeferred(writers.prober(cid)) for cid in CIDS]
        reactor = theReactor()
        await task.deferLater(reactor, 1.5, lambda: None)

        server.kill()
        await waitExit(server._process, 10)

        async def refusedWithReason():
            status, _, body = await http.request("GET", node.url + "/readyz", timeout=5)
            return status == 503 and "store (unreachable" in body["error"]["message"]

        await waitFor(refusedWithReason, 15, "readyz to name the unreachable store")
        await waitFor(lambda: writers.refused, 15, "a send refused while the store is down")
        await server.start()

        async def ready():
            status, _, _ = await http.request("GET", node.url + "/readyz", timeout=5)
            return status == 200

        await waitFor(ready, 30, "the node ready again")
        before = sum(len(a) for a in writers.acked.values())
        await waitFor(lambda: sum(len(a) for a in writers.acked.values()) > before + 20, 20,
                      "sends acknowledged again")
        writers.running = False
        await defer.gatherResults(loops)

        self.assertTrue(all(retry is not None and int(retry) >= 1
                            for _, retry in writers.refused), writers.refused[:5])
        for cid in CIDS:
            sender = cid.split(":")[1]
            stored = await readAll(http, node, token(sender), cid)
            seqs = [m["seq"] for m in stored]
            self.assertEqual(seqs, list(range(1, len(seqs) + 1)), cid)
            byClientId: dict[str, list[int]] = {}
            for m in stored:
                byClientId.setdefault(m["client_id"], []).append(m["seq"])
            for clientId, seq in writers.acked[cid].items():
                self.assertEqual(byClientId.get(clientId), [seq], (cid, clientId))
        self.assertNotIn("Traceback", node.log())

    def test_restartUnderLoadLosesNothing(self):
        return defer.ensureDeferred(self._test())
