"""
Notifications: their format, the message notification, and routing to the inbox owner.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from hpchat.blocks import BlockList
from hpchat.groups import Redirect, Unsettled
from hpchat.notify import (
    BadNotification,
    Dropped,
    InboxRouter,
    NotDeliverable,
    Notification,
    messageNotification,
    parseNotification,
)
from hpchat.storage.base import Event
from hpchat.streamids import inboxStream
from tests.test_streams import StreamsTestCase


class FormatTests(SynchronousTestCase):
    def test_valid(self):
        """
        A valid body parses; from and data are optional.
        """
        n = parseNotification(b'{"id": "x", "user": "bob", "type": "visit"}')
        self.assertEqual(n, Notification("x", "bob", "visit", None, {}))
        self.assertEqual(parseNotification(n.toJSON()), n)

    def test_invalid(self):
        """
        Every documented constraint is enforced.
        """
        good = {"id": "x", "user": "bob", "type": "flirt", "from": "alice", "data": {}}
        bad = [b"", b"not json", b"[1]", b"\xff\xfe",
               json.dumps(dict(good, id="")).encode(), json.dumps(dict(good, id="x" * 65)).encode(),
               json.dumps(dict(good, user="b b")).encode(),
               json.dumps(dict(good, user=None)).encode(),
               json.dumps(dict(good, type="Flirt")).encode(),
               json.dumps(dict(good, type="x" * 33)).encode(),
               json.dumps(dict(good, **{"from": 3})).encode(),
               json.dumps(dict(good, data=[1])).encode(),
               json.dumps(dict(good, data={"x": "y" * 9000})).encode()]
        for body in bad:
            self.assertRaises(BadNotification, parseNotification, body)

    def test_nonFiniteNumbersRefused(self):
        """
        NaN, Infinity, -Infinity and numbers too large to be finite are not JSON: a body
        holding one anywhere is refused (the inbox would answer invalid JSON otherwise).
        """
        for number in [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"]:
            body = (b'{"id": "x", "user": "bob", "type": "flirt", "data": {"a": [1, '
                    + number + b']}}')
            self.assertRaises(BadNotification, parseNotification, body)

    def test_typeWithTrailingNewlineRefused(self):
        """
        The type must match [a-z0-9_.-]{1,32} whole: a trailing newline is not allowed.
        """
        for type in ["flirt\n", "\nflirt", "flirt\n\n", "fl irt"]:
            body = json.dumps({"id": "x", "user": "bob", "type": type}).encode()
            self.assertRaises(BadNotification, parseNotification, body)

    def test_idsStoresCanHold(self):
        """
        A notification id is 1 to 64 visible ASCII characters: NUL, controls, spaces and
        non-ASCII (which some stores cannot hold in a key) are refused; uuids and keys like
        flirt:123:456 are taken.
        """
        for nid in ["a\x00b", "a b", "a\tb", "\x7f", "é", "x" * 65, ""]:
            body = json.dumps({"id": nid, "user": "bob", "type": "flirt"}).encode()
            self.assertRaises(BadNotification, parseNotification, body)
        for nid in ["3f2a6c1e-9b1d-4c55-8a53-1f0e2d3c4b5a", "flirt:123:456", "~!x" * 21]:
            body = json.dumps({"id": nid, "user": "bob", "type": "flirt"}).encode()
            self.assertEqual(parseNotification(body).id, nid)

    def test_loneSurrogatesRefused(self):
        """
        A string holding a lone surrogate (escaped in the JSON) is not Unicode text that a
        store or an answer could write: the body is refused; escaped pairs are fine.
        """
        body = b'{"id": "x", "user": "bob", "type": "flirt", "data": {"t": "\\udc00"}}'
        self.assertRaises(BadNotification, parseNotification, body)
        body = b'{"id": "x", "user": "bob", "type": "flirt", "data": {"t": "\\ud83d\\ude00"}}'
        self.assertEqual(parseNotification(body).data, {"t": "\U0001f600"})

    def test_toJSONRefusesNonFinite(self):
        """
        A notification built in code with a non-finite number is not written as bad JSON.
        """
        n = Notification("x", "bob", "flirt", None, {"score": float("nan")})
        self.assertRaises(ValueError, n.toJSON)

    def test_messageNotification(self):
        """
        A committed message becomes a message notification for the other participant.
        """
        event = Event("dm:alice:bob", 7, "abc", 1, "message", "bob", 5.0, None,
                      {"text": "x" * 300})
        n = messageNotification(event)
        self.assertEqual((n.id, n.user, n.type, n.sender), ("m.abc", "alice", "message", "bob"))
        self.assertEqual(n.data, {"conversation": "dm:alice:bob", "seq": 7, "preview": "x" * 100})
        inbox = Event("inbox:bob", 1, "f", 1, "flirt", "alice", 5.0)
        self.assertIsNone(messageNotification(inbox))


class RouterTests(StreamsTestCase):
    def setUp(self):
        super().setUp()
        self.forwarded = []
        self.router = InboxRouter(self.streams, self.ownership,
                                  lambda url, n: self.forwarded.append((url, n))
                                  or defer.succeed({"ok": 1}))
        self.n = Notification("v1", "bob", "visit", "alice", {})

    def deliver(self):
        d = defer.ensureDeferred(self.router.deliver(self.n))
        self.clock.advance(0.005)
        return d

    def test_local(self):
        """
        An inbox owned here gets the notification appended, durable before success.
        """
        event, created = self.successResultOf(self.deliver())
        self.assertEqual((event.stream, event.id, created), (inboxStream("bob"), "v1", True))
        event, created = self.successResultOf(self.deliver())
        self.assertFalse(created)

    def test_forwarded(self):
        """
        An inbox owned by another node is handed to it.
        """
        group = self.streams.groupOf(inboxStream("bob"))
        self.ownership.routes[group] = Redirect("n2", "http://n2")
        self.successResultOf(self.deliver())
        self.assertEqual(self.forwarded, [("http://n2", self.n)])

    def test_unsettled(self):
        """
        No settled owner: NotDeliverable, so that the message is requeued.
        """
        group = self.streams.groupOf(inboxStream("bob"))
        self.ownership.routes[group] = Unsettled(1)
        self.failureResultOf(self.deliver(), NotDeliverable)

    def test_blockedSenderDropped(self):
        """
        With blocks, a notification from a user its recipient has blocked is dropped (done
        with, nothing appended); from others it is appended.
        """
        blocks = BlockList(self.clock, self.store)
        self.successResultOf(blocks.set("bob", "alice", True, 1, 1))
        self.router = InboxRouter(self.streams, self.ownership, None, blocks)
        result = self.successResultOf(self.deliver())
        self.assertIsInstance(result, Dropped)
        self.assertEqual(self.store.stored(inboxStream("bob")), [])
        self.n = Notification("v2", "bob", "visit", "carol", {})
        event, created = self.successResultOf(self.deliver())
        self.assertEqual((event.sender, created), ("carol", True))
