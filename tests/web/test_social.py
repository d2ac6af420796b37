"""
Tests for L{hpchat.web.social}: read receipts and the conversation list (DESIGN §8), over the
real streams, persister and API on a Clock with the in-memory store.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from hpchat.groups import Redirect
from hpchat.web.social import decodeCursor, encodeCursor
from tests.web.fakes import NOW, fired
from tests.web.test_api import CID, _APITestMixin, path

OWNER = Redirect("node-b", "http://node-b.test:8080")


class ReadReceiptTests(_APITestMixin, SynchronousTestCase):
    def read(self, seq, user: str = "bob", cid: str = CID, body=None):
        d = self.h.request("POST", path(cid, "read"), user=user,
                           body={"seq": seq} if body is None else body)
        self.h.settle()
        return fired(d)

    def test_markerMovesForwardOnly(self):
        """
        The marker moves to the given seq, a lower seq leaves it, and it is durable (written
        as conversation rows of both participants).
        """
        for _ in range(3):
            self.h.sent(CID, "alice")
        answer = self.read(2)
        self.assertEqual((answer.code, answer.json), (200, {"read_seq": 2}))
        self.assertEqual(self.read(1).json, {"read_seq": 2})
        self.assertEqual(self.read(3).json, {"read_seq": 3})
        rows = self.h.store.conversations
        self.assertEqual(rows[("bob", CID)].read_seq, 3)
        self.assertEqual(rows[("alice", CID)].partner_read_seq, 3)
        self.assertEqual(rows[("alice", CID)].read_seq, 3)

    def test_sendingMovesTheSendersMarker(self):
        """
        Sending moves the sender's marker to the message, in the message's own batch.
        """
        self.h.sent(CID, "alice")
        self.h.sent(CID, "bob")
        self.assertIn([("alice", CID, 2), ("bob", CID, 2)],
                      [[(r.user, r.stream, r.last_seq) for r in rows]
                       for events, rows in self.h.store.rowBatches
                       if [(e.stream, e.seq) for e in events] == [(CID, 2)]])
        rows = self.h.store.conversations
        self.assertEqual((rows[("bob", CID)].read_seq, rows[("alice", CID)].read_seq), (2, 1))
        answer = self.h.answer(self.h.events(CID, "alice", timeout=0))
        self.assertEqual((answer.json["read"], answer.json["read_version"]),
                         ({"alice": 1, "bob": 2}, 3))

    def test_cursorAheadAndBadSeq(self):
        """
        A seq beyond last_seq is 409 cursor_ahead; a seq that is not an integer >= 0 is 400;
        a bad body or a non-participant is refused; nothing is stored.
        """
        self.h.sent(CID, "alice")
        self.assertError(self.read(2), 409, "cursor_ahead")
        for bad in (-1, 1.5, "1", True, None, 2**70):
            self.assertError(self.read(bad), 400, "bad_request")
        self.assertError(self.read(0, body={}), 400, "bad_request")
        self.assertError(self.read(1, user="carol"), 403, "forbidden")
        self.assertError(self.read(1, cid="dm:bob:alice"), 400, "bad_conversation")
        self.assertError(self.read(1, user=None), 401, "unauthorized")
        self.assertEqual(self.h.store.conversations[("bob", CID)].read_seq, 0)

    def test_readZeroOnAnEmptyConversation(self):
        """
        Marking seq 0 read in a conversation without messages is 200 and writes nothing.
        """
        answer = self.read(0)
        self.assertEqual((answer.code, answer.json), (200, {"read_seq": 0}))
        self.assertEqual(self.h.store.conversations, {})

    def test_redirectedToTheOwner(self):
        """
        Another node's conversation is 307 to its owner, and nothing is written here.
        """
        self.h.ownership.set(self.h.streams.groupOf(CID), OWNER)
        answer = self.read(0)
        self.assertEqual(answer.code, 307)
        self.assertEqual(answer.header("location"), OWNER.url + path(CID, "read"))
        self.assertEqual(self.h.store.appendCalls, 0)

    def test_readVersionAnswersAtOnceAndWakes(self):
        """
        A poll passing a read_version that differs is answered at once; one passing the
        current version waits and is woken by the partner's marker move.
        """
        self.h.sent(CID, "alice")
        stale = self.h.answer(self.h.events(CID, "alice", after=1, read_version=0, timeout=20))
        self.assertEqual((stale.json["events"], stale.json["read_version"]), ([], 1))
        d = self.h.events(CID, "alice", after=1, read_version=1, timeout=20)
        self.h.flush()
        self.assertNoResult(d)
        plain = self.h.events(CID, "alice", after=1, timeout=20)
        self.read(1)
        answer = fired(d)
        self.assertEqual(answer.json["read"], {"alice": 1, "bob": 1})
        self.assertEqual(answer.json["read_version"], 2)
        # A poll that did not ask for read receipts keeps waiting.
        self.assertNoResult(plain)
        self.h.advance(20)
        self.assertEqual(fired(plain).json["events"], [])

    def test_badReadVersion(self):
        """
        read_version must be an integer >= 0.
        """
        for bad in ("x", "-1"):
            self.assertError(self.h.answer(self.h.events(CID, "alice", read_version=bad)),
                             400, "bad_request")

    def test_markersSurviveAReload(self):
        """
        A new owner (the stream loaded again from the store) serves the same markers.
        """
        self.h.sent(CID, "alice")
        self.h.sent(CID, "alice")
        self.read(1)
        self.h.streams.dropGroups([self.h.streams.groupOf(CID)])
        answer = self.h.answer(self.h.events(CID, "bob", timeout=0))
        self.assertEqual((answer.json["read"], answer.json["read_version"]),
                         ({"alice": 2, "bob": 1}, 3))


class ConversationListTests(_APITestMixin, SynchronousTestCase):
    def list(self, user: str = "alice", query: str = ""):
        return self.h.call("GET", "/v1/conversations" + (f"?{query}" if query else ""),
                           user=user)

    def test_summaries(self):
        """
        Each conversation a user sent or received a message in is listed, newest activity
        first, with its last message, unread count and both read markers.
        """
        self.h.sent(CID, "alice", "first")
        self.h.advance(1)
        self.h.sent("dm:alice:carol", "carol", "hi alice")
        self.h.advance(1)
        self.h.sent(CID, "bob", "back")
        answer = self.list()
        self.assertEqual(answer.code, 200)
        body = answer.json
        self.assertEqual(body["unread_total"], 2)
        self.assertIsNone(body["next"])
        first, second = body["conversations"]
        self.assertEqual({k: v for k, v in first.items() if k != "last_message"},
                         {"conversation": CID, "with": "bob", "unread": 1, "read_seq": 1,
                          "partner_read_seq": 2, "updated": first["last_message"]["ts"]})
        self.assertEqual((first["last_message"]["seq"], first["last_message"]["text"]),
                         (2, "back"))
        self.assertEqual((second["conversation"], second["with"], second["unread"]),
                         ("dm:alice:carol", "carol", 1))
        self.assertEqual(self.list("bob").json["conversations"][0]["unread"], 0)
        self.assertEqual(self.list("dave").json,
                         {"conversations": [], "unread_total": 0, "next": None})

    def test_readingClearsUnread(self):
        """
        Moving the read marker brings unread down without reordering the list.
        """
        self.h.sent(CID, "alice")
        self.h.sent(CID, "alice")
        d = self.h.request("POST", path(CID, "read"), user="bob", body={"seq": 1})
        self.h.settle()
        fired(d)
        summary = self.list("bob").json["conversations"][0]
        self.assertEqual((summary["unread"], summary["read_seq"]), (1, 1))
        self.assertEqual(self.list("alice").json["conversations"][0]["partner_read_seq"], 1)

    def test_paging(self):
        """
        limit and next page through every conversation once, newest first.
        """
        partners = [f"p{i:02d}" for i in range(5)]
        for partner in partners:
            self.h.sent(f"dm:alice:{partner}", partner)
            self.h.advance(1)
        seen, query = [], "limit=2"
        while True:
            body = self.list(query=query).json
            self.assertEqual(body["unread_total"], 5)
            seen.extend(s["with"] for s in body["conversations"])
            if body["next"] is None:
                break
            query = f"limit=2&before={body['next']}"
        self.assertEqual(seen, list(reversed(partners)))

    def test_badArguments(self):
        """
        limit must be 1..200; before must be a cursor of an earlier answer.
        """
        import base64

        huge = base64.urlsafe_b64encode(b'[' + b"9" * 400 + b', "dm:a:b"]').decode()
        for query in ("limit=0", "limit=201", "limit=x", "before=nope", "before=" +
                      encodeCursor(1.0, "dm:b:a"), "before=WzEsMl0", "before=" + huge):
            self.assertError(self.list(query=query), 400, "bad_request")
        self.assertEqual(self.list(query="limit=200").code, 200)
        self.assertError(self.list(user=None), 401, "unauthorized")

    def test_cursorRoundTrip(self):
        self.assertEqual(decodeCursor(encodeCursor(12.5, CID)), (12.5, CID))

    def test_servedByTheInboxOwner(self):
        """
        The list is served by the owner of the user's inbox stream: 307 elsewhere.
        """
        self.h.ownership.set(self.h.streams.groupOf("inbox:alice"), OWNER)
        answer = self.list(query="limit=5")
        self.assertEqual(answer.code, 307)
        self.assertEqual(answer.header("location"), OWNER.url + "/v1/conversations?limit=5")


class BlockTests(_APITestMixin, SynchronousTestCase):
    def block(self, other: str, user: str = "alice", method: str = "PUT"):
        d = self.h.request(method, f"/v1/blocks/{other}", user=user)
        self.h.settle()
        return fired(d)

    def blocked(self, user: str = "alice"):
        return self.h.call("GET", "/v1/blocks", user=user)

    def test_putDeleteList(self):
        """
        PUT and DELETE are 204 and idempotent; GET lists the user's blocks; they are durable
        in the store.
        """
        for _ in range(2):
            answer = self.block("bob")
            self.assertEqual((answer.code, answer.body), (204, b""))
        self.assertEqual(self.block("Zed").code, 204)
        self.assertEqual(self.blocked().json, {"blocked": ["Zed", "bob"]})
        self.assertEqual(set(self.h.store.blocks), {("alice", "bob"), ("alice", "Zed")})
        for _ in range(2):
            self.assertEqual(self.block("Zed", method="DELETE").code, 204)
        self.assertEqual(self.blocked().json, {"blocked": ["bob"]})
        self.assertEqual(self.blocked("bob").json, {"blocked": []})

    def test_badUsers(self):
        """
        Blocking oneself or an invalid user id is 400; no token is 401; nothing is stored.
        """
        self.assertError(self.block("alice"), 400, "bad_request")
        for bad in ("a%20b", "x" * 65, "%C3%A9"):
            self.assertError(self.block(bad), 400, "bad_request")
        self.assertError(self.block("bob", user=None), 401, "unauthorized")
        self.assertError(self.h.call("POST", "/v1/blocks/bob"), 405)
        self.assertEqual(self.h.store.blocks, {})

    def test_servedByTheBlockersInboxOwner(self):
        """
        Another node's inbox group: 307 to its owner, for writes and the list.
        """
        self.h.ownership.set(self.h.streams.groupOf("inbox:alice"), OWNER)
        answer = self.block("bob")
        self.assertEqual(answer.code, 307)
        self.assertEqual(answer.header("location"), OWNER.url + "/v1/blocks/bob")
        self.assertEqual(self.blocked().code, 307)
        self.assertEqual(self.h.store.blocks, {})

    def test_sendsAndTypingRefusedBothWays(self):
        """
        While either has blocked the other, sends and typing are 403 blocked and store
        nothing; history stays readable; unblocking lets them through again.
        """
        self.h.sent(CID, "alice", "before")
        self.block("bob")
        for sender in ("alice", "bob"):
            self.assertError(self.h.sent(CID, sender, "no"), 403, "blocked")
            typing = self.h.call("POST", path(CID, "typing"), user=sender,
                                 body={"typing": True})
            self.assertError(typing, 403, "blocked")
        self.assertEqual([e.data["text"] for e in self.h.store.stored(CID)], ["before"])
        self.assertEqual(self.h.streams._streams[CID].typing, {})
        history = self.h.call("GET", path(CID, "messages"), user="bob")
        self.assertEqual([m["text"] for m in history.json["messages"]], ["before"])
        self.block("bob", method="DELETE")
        self.assertEqual(self.h.sent(CID, "bob", "again").code, 201)

    def test_blockFromAnotherNodeWithinASecond(self):
        """
        A block written by another node (straight to the store) is in force here within one
        second, though this node had the pair cached as unblocked.
        """
        self.assertEqual(self.h.sent(CID, "bob", "one").code, 201)
        self.h.store.blocks[("alice", "bob")] = 0.0
        self.h.store.blockVersion += 1
        self.h.advance(1.0)
        self.assertError(self.h.sent(CID, "bob", "two"), 403, "blocked")

    def test_blockedSendersNotificationsDropped(self):
        """
        The blocker's inbox takes no notification from the blocked user (dropped, answered
        200 so that its sender is done with it); others get through.
        """
        self.block("bob")
        token = self.h.internalAuth.mint("node-b")
        for n, sender in enumerate(["bob", "carol"]):
            d = self.h.request("POST", "/internal/v1/notifications", token=token,
                               body={"id": f"f{n}", "user": "alice", "type": "flirt",
                                     "from": sender, "data": {}})
            self.h.settle()
            answer = fired(d)
            self.assertIn(answer.code, (200, 201))
        self.assertEqual(answer.json["created"], True)
        self.assertEqual([e.sender for e in self.h.store.stored("inbox:alice")], ["carol"])
        # Bob's own inbox is not filtered by alice's block.
        d = self.h.request("POST", "/internal/v1/notifications", token=token,
                           body={"notifications": [{"id": "g", "user": "bob", "type": "flirt",
                                                    "from": "alice", "data": {}},
                                                   {"id": "h", "user": "alice",
                                                    "type": "visit", "from": "bob",
                                                    "data": {}}]})
        self.h.settle()
        results = fired(d).json["results"]
        self.assertEqual([r["status"] for r in results], [201, 200])
        self.assertEqual(results[1]["dropped"], "blocked")
        self.assertEqual([e.sender for e in self.h.store.stored("inbox:bob")], ["alice"])


class PresenceTests(_APITestMixin, SynchronousTestCase):
    harnessArgs = {"presence_grace": 30.0}

    def presence(self, users: str, viewer: str = "dave"):
        return self.h.call("GET", f"/v1/presence?users={users}", user=viewer)

    def test_onlineWhilePollingThenLastSeen(self):
        """
        A user is online while a long-poll waits and for presence_grace after it ended;
        then offline, last seen when it ended, durably.
        """
        self.assertEqual(self.presence("alice,bob").json, {"presence": {
            "alice": {"online": False, "last_seen": None},
            "bob": {"online": False, "last_seen": None}}})
        poll = self.h.events(CID, "alice", timeout=20)
        self.h.advance(1)
        body = self.presence("alice").json
        self.assertEqual(body["presence"]["alice"]["online"], True)
        self.assertEqual(body["presence"]["alice"]["last_seen"], self.h.clock.seconds())
        self.h.advance(19)
        fired(poll)
        ended = self.h.clock.seconds()
        self.h.advance(29)
        self.assertEqual(self.presence("alice").json["presence"]["alice"],
                         {"online": True, "last_seen": ended})
        self.h.advance(2)
        self.assertEqual(self.presence("alice").json["presence"]["alice"],
                         {"online": False, "last_seen": ended})
        self.assertEqual(self.h.store.presence, {"alice": ended})

    def test_inboxPollCounts(self):
        """
        An inbox long-poll counts as well.
        """
        poll = self.h.request("GET", "/v1/inbox/events?timeout=5", user="bob")
        self.h.advance(1)
        self.assertTrue(self.presence("bob").json["presence"]["bob"]["online"])
        self.h.advance(5)
        fired(poll)

    def test_remoteHomesAskedOncePerNode(self):
        """
        Users whose presence home is another node are asked for in one call per node.
        """
        for user in ("carol", "erin"):
            self.h.ownership.set(self.h.streams.groupOf(f"inbox:{user}"), OWNER)
        self.h.remotePresence[OWNER.url] = {"carol": {"online": True, "last_seen": 5.0}}
        body = self.presence("carol,alice,erin,carol").json
        self.assertEqual(body["presence"], {
            "carol": {"online": True, "last_seen": 5.0},
            "alice": {"online": False, "last_seen": None},
            "erin": {"online": False, "last_seen": None}})
        self.assertEqual(self.h.internalClient.calls,
                         [(OWNER.url, "/internal/v1/presence", {"users": ["carol", "erin"]})])

    def test_remoteHomeDown(self):
        """
        A home node that does not answer makes the query 503, retry later.
        """
        self.h.ownership.set(self.h.streams.groupOf("inbox:carol"), OWNER)
        self.assertError(self.presence("carol"), 503, "unavailable")

    def test_blockerLooksOfflineToTheBlocked(self):
        """
        A user who blocked the asker is shown offline and never seen; to others as usual.
        """
        poll = self.h.events(CID, "alice", timeout=20)
        self.h.advance(1)
        d = self.h.request("PUT", "/v1/blocks/dave", user="alice")
        self.h.settle()
        self.assertEqual(fired(d).code, 204)
        self.assertEqual(self.presence("alice", viewer="dave").json["presence"]["alice"],
                         {"online": False, "last_seen": None})
        self.assertTrue(self.presence("alice", viewer="erin").json["presence"]["alice"]
                        ["online"])
        self.h.advance(20)
        fired(poll)

    def test_badQueries(self):
        """
        users must name 1 to 100 valid ids, given once; a token is needed.
        """
        many = ",".join(f"u{i}" for i in range(101))
        for query in ("", "?users=", "?users=a,,b", "?users=a%20b", f"?users={many}",
                      "?users=a&users=b", "?users=%C3%A9"):
            self.assertError(self.h.call("GET", "/v1/presence" + query, user="dave"),
                             400, "bad_request")
        self.assertEqual(self.presence(",".join(f"u{i}" for i in range(100))).code, 200)
        self.assertError(self.h.call("GET", "/v1/presence?users=a", user=None), 401,
                         "unauthorized")

    def test_internalRoutes(self):
        """
        The node-to-node presence routes need the internal token and valid bodies.
        """
        token = self.h.internalAuth.mint("node-b")
        report = self.h.call("POST", "/internal/v1/presence/report", token=token,
                             body={"node": "node-b", "users": {"alice": [True, NOW]}})
        self.assertEqual(report.code, 200)
        looked = self.h.call("POST", "/internal/v1/presence", token=token,
                             body={"users": ["alice", "bob"]})
        self.assertEqual(looked.json["presence"]["alice"]["online"], True)
        self.assertEqual(looked.json["presence"]["bob"], {"online": False, "last_seen": None})
        self.assertError(self.h.call("POST", "/internal/v1/presence", user="alice",
                                     body={"users": ["a"]}), 401, "unauthorized")
        for bad in ({"users": []}, {"users": ["a b"]}, {"users": "a"}):
            self.assertError(self.h.call("POST", "/internal/v1/presence", token=token,
                                         body=bad), 400, "bad_request")
        for bad in ({"node": "n", "users": {"a": [1, 2]}}, {"node": "", "users": {}},
                    {"node": "n", "users": {"a": [True, "x"]}}):
            self.assertError(self.h.call("POST", "/internal/v1/presence/report", token=token,
                                         body=bad), 400, "bad_request")
