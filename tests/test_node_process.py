"""
End to end: a real C{twistd -n hpchat} process on a free port with a temporary SQLite file.
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import defer, threads
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.support.node import HTTP, Node, twistdCommand
from tests.support.process import theReactor, waitExit, waitFor
from tests.support.trial import sleep

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


async def readInbox(http: HTTP, node: Node, token: str) -> list[dict]:
    """
    Every event of the token's inbox, oldest first.
    """
    events: list[dict] = []
    after = 0
    while True:
        status, _, body = await http.request(
            "GET", f"{node.url}/v1/inbox/events?after={after}&timeout=0", token)
        assert status == 200, (status, body)
        events += body["events"]
        if not body["events"] or after >= body["last_seq"]:
            return events
        after = body["events"][-1]["seq"]


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
        # Both inboxes in memory: each message's notification is written with it.
        for token in (alice, bob):
            status, _, _ = await http.request("GET", f"{node.url}/v1/inbox/events?timeout=0",
                                              token)
            self.assertEqual(status, 200)

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

        # Each stored message notified its recipient once, in order, with no gap in the
        # inboxes' seqs, across the kill and the restart's outbox sweep.
        for token, recipient, sender in ((alice, "alice", "bob"), (bob, "bob", "alice")):
            inbox = await readInbox(http, node, token)
            self.assertEqual([e["seq"] for e in inbox], list(range(1, len(inbox) + 1)))
            sent = [m["seq"] for m in messages if m["sender"] == sender]
            self.assertEqual([e["data"]["seq"] for e in inbox if e["type"] == "message"], sent,
                             f"{recipient}'s notifications")

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


async def pendingWrites(http: HTTP, node: Node) -> float:
    """
    The node's C{hpchat_persist_pending} gauge, read from /metrics.
    """
    status, _, body = await http.request("GET", node.url + "/metrics", timeout=5)
    assert status == 200, status
    text = body.decode() if isinstance(body, bytes) else str(body)
    for line in text.splitlines():
        if line.startswith("hpchat_persist_pending "):
            return float(line.split()[1])
    raise AssertionError("no hpchat_persist_pending in /metrics")


class WriteLock:
    """
    Another process's write transaction on the node's SQLite file (taken and given back
    in a thread): while it is held, the node's batch waits in the store.
    """

    def __init__(self, path: str):
        import sqlite3

        self.connection = sqlite3.connect(path, timeout=5, isolation_level=None,
                                          check_same_thread=False)

    def take(self) -> defer.Deferred:
        return threads.deferToThreadPool(theReactor(), theReactor().getThreadPool(),
                                         self.connection.execute, "BEGIN IMMEDIATE")

    def release(self) -> defer.Deferred:
        def rollback():
            self.connection.execute("ROLLBACK")
            self.connection.close()

        return threads.deferToThreadPool(theReactor(), theReactor().getThreadPool(),
                                         rollback)


class QueuedAtSigtermTests(unittest.TestCase):
    """
    SIGTERM while sends wait for the persister: one batch (of one event) held in the store by
    another writer's lock, the others queued behind it. Each send is acknowledged 201 once
    durable or refused 503, and after a restart every acknowledged one is in the history.
    """

    timeout = 120
    queued = 6
    slowStore = {"storage": {"flush_interval": "10", "batch_size": "1"}}

    async def sendDuringStop(self, node: Node, http: HTTP, token: str, recipientToken: str):
        """
        Queue C{queued} sends behind a held batch, SIGTERM the node, keep sending while it
        stops, then let the store go. Returns the acknowledged client_ids and every answer.
        """
        answers: list = []
        acked: set[str] = set()

        async def send(clientId: str):
            try:
                status, _, body = await http.request(
                    "POST", f"{node.url}/v1/conversations/{CID}/messages", token,
                    {"text": f"message {clientId}", "client_id": clientId}, timeout=30)
            except Exception as e:
                answers.append((clientId, type(e).__name__))
                return
            answers.append((clientId, status))
            if status == 201:
                acked.add(clientId)
            else:
                self.assertEqual((status, body["error"]["code"]), (503, "unavailable"))

        await send("warm")  # loads the conversation: no claim waits on the lock below
        self.assertEqual(answers, [("warm", 201)])

        async def notified():
            # The warm message's inbox notification, durable too: nothing else is queued.
            status, _, body = await http.request(
                "GET", f"{node.url}/v1/inbox/events?timeout=0", recipientToken, timeout=5)
            return status == 200 and body["last_seq"] >= 1

        await waitFor(notified, 15, "the inbox notification of the first message")
        lock = WriteLock(node.dbPath)
        await lock.take()
        try:
            first = [defer.ensureDeferred(send(f"q{i}")) for i in range(self.queued)]
            await waitFor(lambda: defer.ensureDeferred(pendingWrites(http, node))
                          .addCallback(lambda n: n >= self.queued), 15, "queued sends")
            self.assertEqual(await pendingWrites(http, node), self.queued)
            node.signal(signal.SIGTERM)
            late = [defer.ensureDeferred(send(f"late{i}")) for i in range(4)]
            await sleep(0.5)
        finally:
            await lock.release()
        await defer.gatherResults(first + late)
        self.assertEqual(await waitExit(node.process, 40), -signal.SIGTERM, node.log()[-3000:])
        return acked, answers

    def assertAllQueuedDurable(self, acked, answers, messages, log):
        queued = {f"q{i}" for i in range(self.queued)}
        self.assertEqual(queued - acked, set(),
                         f"queued sends not acknowledged: {sorted(answers)}\n{log[-3000:]}")
        stored = {m["client_id"] for m in messages}
        self.assertEqual(acked - stored, set(), "acknowledged sends lost")
        self.assertNotIn("Traceback", log)

    def test_singleNode(self):
        """
        One node on SQLite: the store closes only once the queued sends are all durable.
        """
        return defer.ensureDeferred(self._singleNode())

    async def _singleNode(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, "solo", sections=self.slowStore)
        self.addCleanup(lambda: defer.ensureDeferred(node.stop()))
        http = HTTP()
        self.addCleanup(lambda: defer.ensureDeferred(http.close()))
        await node.start()
        alice = await mintToken(node, "alice")
        bob = await mintToken(node, "bob")
        acked, answers = await self.sendDuringStop(node, http, alice, bob)
        await node.start()
        messages = await readAll(http, node, alice, CID)
        self.assertAllQueuedDurable(acked, answers, messages, node.log())

    def test_cluster(self):
        """
        A node of a cluster (real etcd): the lease is revoked only once the queued sends
        are durable, so none fails as no longer owned.
        """
        return defer.ensureDeferred(self._cluster())

    async def _cluster(self):
        from tests.support.cluster import Cluster, token

        # On SQLite: the test holds a batch in the store with SQLite's write lock.
        cluster = await Cluster(self, size=1, sections=self.slowStore, store="sqlite").start()
        node = cluster.nodes[0]
        await cluster.owner(CID)
        acked, answers = await self.sendDuringStop(node, cluster.http, token("alice"),
                                                   token("bob"))
        self.assertIn("lease revoked", node.log())
        await node.start()
        messages = await readAll(cluster.http, node, token("alice"), CID)
        self.assertAllQueuedDurable(acked, answers, messages, node.log())


class ListenErrorTests(unittest.TestCase):
    """
    A [node] listen that cannot work ends twistd with one line on stderr and exit 2.
    """

    timeout = 60

    async def twistd(self, node: Node):
        out, err, code = await getProcessOutputAndValue(
            twistdCommand()[0], ["-n", "--pidfile=", "hpchat", "--config", node.configPath],
            env=dict(os.environ), reactor=theReactor(), path=node.workdir)
        return out.decode(), err.decode(), code

    def node(self, listen: str) -> Node:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        return Node(workdir, "solo", sections={"node": {"listen": listen}})

    def test_invalidEndpoints(self):
        """
        A port that is not a number, an unknown argument or an unknown endpoint type is
        reported before anything starts.
        """
        return defer.ensureDeferred(self._invalid())

    async def _invalid(self):
        for listen, detail in [("tcp:notaport", "'notaport'"),
                               ("tcp:8080:interfce=127.0.0.1", "unknown argument 'interfce'"),
                               ("tpc:8080", "Unknown endpoint type")]:
            node = self.node(listen)
            out, err, code = await self.twistd(node)
            self.assertEqual(code, 2, out + err)
            lines = err.strip().splitlines()
            self.assertEqual(len(lines), 1, err)
            self.assertTrue(lines[0].startswith(
                f"hpchat: config error: {node.configPath} [node] listen: is not a valid "
                f"endpoint ({listen!r})"), lines[0])
            self.assertIn(detail, lines[0])
            self.assertNotIn("Traceback", out + err)

    def test_portInUse(self):
        """
        A port another process listens on is reported as one line naming [node] listen,
        with exit 2 (systemd does not restart it in a loop), not a traceback.
        """
        return defer.ensureDeferred(self._portInUse())

    async def _portInUse(self):
        from twisted.internet.protocol import Factory

        port = theReactor().listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        listen = f"tcp:{port.getHost().port}:interface=127.0.0.1"
        node = self.node(listen)
        out, err, code = await self.twistd(node)
        self.assertEqual(code, 2, out + err)
        self.assertEqual(err.strip().splitlines(),
                         [f"hpchat: config error: {node.configPath} [node] listen: cannot "
                          f"listen on {listen}: Address already in use"])
        self.assertNotIn("Traceback", out + err)
