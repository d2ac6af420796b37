"""
Event streams of a real node: C{twistd -n hpchat} on a free port, read by a plain Twisted
HTTP client while messages are sent, closed by the node's stop.
"""

from __future__ import annotations

import json
import os
import signal

from twisted.trial import unittest
from twisted.web.client import ResponseDone

from tests.support.cluster import token
from tests.support.node import HTTP, Node
from tests.support.process import theReactor, waitExit, waitFor
from tests.support.sse import EventStream, Refused, openStream
from tests.support.trial import asyncTest, sleep

CID = "dm:alice:bob"


class NodeStreamTests(unittest.TestCase):
    timeout = 120

    async def node(self, heartbeat: float = 0.5, idle: float | None = None) -> Node:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        sections = {"chat": {"stream_heartbeat": str(heartbeat)}}
        if idle is not None:
            sections["limits"] = {"idle_timeout": str(idle)}
        node = Node(workdir, "n1", sections=sections)
        self.addCleanup(node.stop)
        await node.start()
        self.http = HTTP()
        self.addCleanup(self.http.close)
        return node

    async def send(self, node: Node, count: int, start: int = 0) -> list[int]:
        seqs = []
        for i in range(start, start + count):
            status, _, body = await self.http.request(
                "POST", f"{node.url}/v1/conversations/{CID}/messages", token("bob"),
                {"text": f"m{i}", "client_id": f"c{i}"})
            self.assertEqual(status, 201, body)
            seqs.append(body["message"]["seq"])
        return seqs

    async def metric(self, node: Node, name: str) -> float:
        status, _, body = await self.http.request("GET", node.url + "/metrics")
        text = body.decode() if isinstance(body, bytes) else str(body)
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no {name} in /metrics")

    @asyncTest
    async def test_streamWhileSending(self):
        """
        A conversation stream and an inbox stream (token as ?access_token=) get every
        message and notification as it is sent, in order, each once, with heartbeats in
        between; a client that goes away is forgotten.
        """
        node = await self.node()
        stream = await openStream(
            f"{node.url}/v1/conversations/{CID}/stream?after=0&access_token={token('alice')}")
        self.assertIsInstance(stream, EventStream)
        self.assertEqual(stream.header("content-type"), "text/event-stream; charset=utf-8")
        self.assertEqual(stream.header("cache-control"), "no-cache")
        inbox = await openStream(f"{node.url}/v1/inbox/stream?after=0", token("alice"))
        self.assertIsInstance(inbox, EventStream)
        await waitFor(lambda: len(stream.records) >= 3, 5, "the head of the stream")
        self.assertEqual(stream.records[0], {"retry": "2000", "id": "0"})
        self.assertEqual(await self.metric(node, "hpchat_sse_streams_open"), 2)
        seqs = await self.send(node, 30)
        await stream.waitUntil(lambda: len(stream.messages()) >= 30, 10, "30 messages")
        self.assertEqual([m["seq"] for m in stream.messages()], seqs)
        self.assertEqual([m["text"] for m in stream.messages()], [f"m{i}" for i in range(30)])
        self.assertEqual([int(r["id"]) for r in stream.events("message")], seqs)
        await inbox.waitUntil(lambda: len(inbox.events("notification")) >= 30, 10,
                              "30 notifications")
        self.assertEqual([int(r["id"]) for r in inbox.events()], list(range(1, 31)))
        data = json.loads(inbox.events()[0]["data"])
        self.assertEqual((data["type"], data["from"]), ("message", "bob"))
        status, _, _ = await self.http.request(
            "POST", f"{node.url}/v1/conversations/{CID}/typing", token("bob"), {"typing": True})
        self.assertEqual(status, 204)
        await stream.waitUntil(
            lambda: json.loads(stream.events("typing")[-1]["data"])["typing"] == ["bob"], 5,
            "the typing event")
        self.assertEqual(stream.events("typing")[-1]["id"], "30")
        await stream.waitUntil(lambda: stream.records[-1].get("comment") == "hb", 5,
                               "a heartbeat")
        self.assertTrue(stream.open and inbox.open)
        stream.close()
        inbox.close()
        async def forgotten():
            return await self.metric(node, "hpchat_sse_streams_open") == 0

        await waitFor(forgotten, 5, "the closed streams forgotten")
        self.assertNotIn("Traceback", node.log())
        self.assertNotIn("access_token", node.log())

    @asyncTest
    async def test_refusedBeforeTheStream(self):
        """
        A stream that is not allowed is a JSON error, not a stream.
        """
        node = await self.node()
        answer = await openStream(f"{node.url}/v1/conversations/{CID}/stream")
        self.assertIsInstance(answer, Refused)
        self.assertEqual((answer.code, answer.json["error"]["code"]), (401, "unauthorized"))
        answer = await openStream(f"{node.url}/v1/conversations/{CID}/stream", token("carol"))
        self.assertEqual((answer.code, answer.json["error"]["code"]), (403, "forbidden"))
        answer = await openStream(f"{node.url}/v1/conversations/{CID}/stream", token("alice"),
                                  lastEventId="7")
        self.assertEqual((answer.code, answer.json["error"]["code"]), (409, "cursor_ahead"))

    @asyncTest
    async def test_stopClosesStreams(self):
        """
        SIGTERM closes open streams at once (the polls stage), before the node is gone.
        """
        node = await self.node()
        stream = await openStream(f"{node.url}/v1/conversations/{CID}/stream", token("alice"))
        await self.send(node, 2)
        await stream.waitUntil(lambda: len(stream.messages()) == 2, 5, "2 messages")
        began = theReactor().seconds()
        node.signal(signal.SIGTERM)
        await stream.ended
        self.assertTrue(stream.reason.check(ResponseDone), stream.reason)
        self.assertLess(theReactor().seconds() - began, 5)
        self.assertEqual(stream.lastId(), "2")
        await waitExit(node.process, 20)

    @asyncTest
    async def test_idleTimeoutSpared(self):
        """
        The edge's idle timeout (here 0.3 s) does not close a stream that stays silent for
        longer (heartbeats every 2 s).
        """
        node = await self.node(heartbeat=2, idle=0.3)
        stream = await openStream(f"{node.url}/v1/inbox/stream", token("alice"))
        await sleep(1.5)
        self.assertTrue(stream.open)
        self.assertEqual([r for r in stream.records if "comment" in r], [])
        await stream.waitUntil(lambda: any(r.get("comment") == "hb" for r in stream.records),
                               5, "a heartbeat")
        self.assertTrue(stream.open)
