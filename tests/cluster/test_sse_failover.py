"""
Event streams across failover, for real: one etcd, three C{twistd hpchat} nodes on one
PostgreSQL database. A reader holds a conversation stream as a browser's EventSource would:
it follows the 307 to the owner, and when the stream ends (the owner killed or stopped)
reconnects with C{Last-Event-ID}, on any live node, until the new owner serves it.
"""

from __future__ import annotations

import random
import signal
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.trial import unittest

from tests.cluster.test_cluster import readAll
from tests.support.cluster import Cluster, token
from tests.support.node import Node
from tests.support.process import theReactor, waitExit, waitFor
from tests.support.sse import EventStream, Refused, openStream
from tests.support.trial import asyncTest, sleep

CID = "dm:alice:bob"
PATH = f"/v1/conversations/{CID}/stream?after=0"


class Reader:
    """
    One EventSource-like reader of C{PATH}: C{streams} are the responses it held, in order.
    """

    def __init__(self, cluster: Cluster, user: str):
        self.cluster = cluster
        self.user = user
        self.streams: list[EventStream] = []
        self.redirects = 0
        self.running = True
        self.errors: list[str] = []
        self.done: defer.Deferred | None = None

    def messages(self) -> list[dict]:
        return [m for s in self.streams for m in s.messages()]

    def lastId(self) -> str | None:
        for stream in reversed(self.streams):
            if stream.lastId() is not None:
                return stream.lastId()
        return None

    def start(self, node: Node) -> None:
        self.done = defer.ensureDeferred(self._run(node))

    async def _run(self, node: Node) -> None:
        url = node.url + PATH
        while self.running:
            try:
                answer = await openStream(url, token(self.user), lastEventId=self.lastId(),
                                          timeout=3)
            except Exception:
                # A dead node (or one that stopped listening): any live one.
                url = random.choice(self.cluster.live()).url + PATH
                await sleep(0.1)
                continue
            if isinstance(answer, Refused):
                if answer.code == 307:
                    self.redirects += 1
                    location = answer.header("location")
                    # The query is kept, token and cursor included.
                    if urlsplit(location).query != urlsplit(url).query:
                        self.errors.append(f"redirect lost the query: {url} -> {location}")
                    url = location
                elif answer.code == 503:
                    await sleep(0.1)
                else:
                    self.errors.append(f"{answer.code} {answer.body!r}")
                    await sleep(0.5)
                continue
            self.streams.append(answer)
            await answer.ended
            if not self.running:
                return
            # EventSource reconnects to the same URL after `retry`; a test need not wait.
            await sleep(0.05)

    def stop(self) -> defer.Deferred:
        self.running = False
        for stream in self.streams:
            stream.close()
        return self.done


class StreamFailoverTests(unittest.TestCase):
    timeout = 240

    async def send(self, cluster: Cluster, start: int, count: int, acked: dict[str, int]):
        for i in range(start, start + count):
            status, _, body = await cluster.client.call(
                "POST", f"/v1/conversations/{CID}/messages", "bob",
                {"text": f"m{i}", "client_id": f"c{i}"}, deadline=30)
            self.assertIn(status, (200, 201), body)
            acked[f"c{i}"] = body["message"]["seq"]

    @asyncTest
    async def test_resumeAcrossKillAndStop(self):
        """
        Every message arrives exactly once, in order, across a SIGKILL of the owner and a
        graceful stop of the next one; each time the stream ends and the reader resumes on
        the new owner with Last-Event-ID.
        """
        cluster = await Cluster(self).start()
        owner = await cluster.owner(CID)
        other = next(n for n in cluster.live() if n is not owner)
        reader = Reader(cluster, "alice")
        self.addCleanup(reader.stop)
        reader.start(other)
        await waitFor(lambda: reader.streams, 10, "the stream opened")
        self.assertGreaterEqual(reader.redirects, 1)
        acked: dict[str, int] = {}

        async def received(count: int, what: str) -> None:
            await waitFor(lambda: len(reader.messages()) >= count, 45, what)

        await self.send(cluster, 0, 20, acked)
        await received(20, "20 messages from the first owner")

        await owner.kill()
        await self.send(cluster, 20, 20, acked)
        await received(40, "40 messages after the owner was killed")
        self.assertGreaterEqual(len(reader.streams), 2)

        second = await cluster.owner(CID)
        self.assertIsNot(second, owner)
        opened = len(reader.streams)
        began = theReactor().seconds()
        second.signal(signal.SIGTERM)
        await waitFor(lambda: not reader.streams[opened - 1].open, 10,
                      "the stream closed by the stop")
        self.assertLess(theReactor().seconds() - began, 5)
        await waitExit(second.process, 30)
        await self.send(cluster, 40, 20, acked)
        await received(60, "60 messages after the second owner stopped")

        messages = reader.messages()
        self.assertEqual([m["seq"] for m in messages], list(range(1, 61)),
                         "every message once, in order")
        self.assertEqual({m["client_id"]: m["seq"] for m in messages}, acked)
        stored = await readAll(cluster, CID)
        self.assertEqual([m["id"] for m in stored], [m["id"] for m in messages])
        self.assertEqual(reader.errors, [])
        for stream in reader.streams:
            ids = [int(r["id"]) for r in stream.events("message")]
            self.assertEqual(ids, sorted(ids))
        await reader.stop()
