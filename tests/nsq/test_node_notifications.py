"""
Notifications through a real nsqd into a real C{twistd -n hpchat} node (SQLite, no cluster):
a message notification survives a crash of the node while nsqd is down, and a notification
delivered twice is held once.
"""

from __future__ import annotations

import json
import os
import time

import jwt
from twisted.internet import defer
from twisted.trial import unittest

from tests.support.node import HTTP, SECRET, Node
from tests.support.nsqd import NSQD
from tests.support.process import theReactor, waitFor
from tests.support.trial import asyncTest, sleep

TOPIC = "hpchat.notifications"
CID = "dm:alice:bob"


def token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, SECRET.encode(),
                      algorithm="HS256")


class NodeNotificationTests(unittest.TestCase):
    timeout = 120

    async def setUpNode(self) -> None:
        self.nsqd = NSQD(theReactor(), ["--msg-timeout=10s"])
        self.addCleanup(self.nsqd.cleanup)
        await self.nsqd.start()
        # The node's durable channel exists before anything is published.
        await self.nsqd.createTopic(TOPIC)
        await self.nsqd.createChannel(TOPIC, "hpchat")
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        self.node = Node(workdir, "solo", sections={"nsq": {"nsqd_tcp": self.nsqd.tcpAddress}})
        self.addCleanup(lambda: defer.ensureDeferred(self.node.stop()))
        self.http = HTTP(persistent=False)
        self.addCleanup(lambda: defer.ensureDeferred(self.http.close()))

    async def inbox(self, user: str = "bob", timeout: float = 0) -> list[dict]:
        status, _, body = await self.http.request(
            "GET", f"{self.node.url}/v1/inbox/events?after=0&timeout={timeout}", token(user),
            timeout=timeout + 10)
        self.assertEqual(status, 200, body)
        return body["events"]

    async def settledInbox(self, count: int, what: str) -> list[dict]:
        """
        Bob's inbox once it holds C{count} events, and again two seconds later (time for a
        second delivery to show up, were it appended).
        """
        async def arrived():
            return len(await self.inbox()) >= count

        await waitFor(arrived, 30, what, interval=0.2)
        await sleep(2.0)
        return await self.inbox()

    @asyncTest
    async def test_messageSentWhileNsqdDownSurvivesAKill(self):
        """
        With nsqd down, a message is sent (201) and the node is killed before nsqd is back:
        once nsqd and the node run again, bob's inbox gets the message notification, once.
        """
        await self.setUpNode()
        await self.node.start()
        await self.nsqd.stop()
        status, _, sent = await self.http.request(
            "POST", f"{self.node.url}/v1/conversations/{CID}/messages", token("alice"),
            {"text": "while nsqd is down"})
        self.assertEqual(status, 201, sent)
        await self.node.kill()
        await self.nsqd.start()
        await self.node.start()
        events = await self.settledInbox(1, "the message notification")
        self.assertEqual([(e["type"], e["from"], e["data"]) for e in events],
                         [("message", "alice", {"conversation": CID,
                                                "seq": sent["message"]["seq"],
                                                "preview": "while nsqd is down"})])
        self.assertIn("publishing pending notification", self.node.log())

    @asyncTest
    async def test_sameNotificationTwiceIsHeldOnce(self):
        """
        A flirt and a message notification, each published twice to nsqd (as NSQ and the
        site's producers may deliver them), are each in the inbox once, also when the repeat
        comes after the first is durable; every delivery is FINed, none fails and none is
        requeued, and a notification published with the repeat arrives too.
        """
        await self.setUpNode()
        await self.node.start()
        flirt = {"id": "flirt-twice", "user": "bob", "type": "flirt", "from": "alice",
                 "data": {"hearts": 3}}
        message = {"id": "m.twice", "user": "bob", "type": "message", "from": "alice",
                   "data": {"conversation": CID, "seq": 1, "preview": "hi"}}
        for body in (flirt, flirt, message):
            await self.nsqd.pub(TOPIC, json.dumps(body).encode())
        await self.settledInbox(2, "both notifications")
        for body in (message, flirt, dict(flirt, id="flirt-after")):
            await self.nsqd.pub(TOPIC, json.dumps(body).encode())
        events = await self.settledInbox(3, "the later flirt")
        self.assertEqual(sorted(e["id"] for e in events),
                         ["flirt-after", "flirt-twice", "m.twice"])
        stats = await self.nsqd.channelStats(TOPIC, "hpchat")
        self.assertEqual({k: stats[k] for k in ("message_count", "requeue_count", "depth",
                                                "in_flight_count", "deferred_count")},
                         {"message_count": 6, "requeue_count": 0, "depth": 0,
                          "in_flight_count": 0, "deferred_count": 0})
