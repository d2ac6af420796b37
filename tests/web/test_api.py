"""
Tests for L{hpchat.web.api}: the HTTP API v1 contract of DESIGN.md section 3, over the real
streams, persister, notifier and authenticator, an in-memory store, on a Clock.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import jwt
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from hpchat.groups import IOwnership, Local, Redirect, Unsettled
from hpchat.storage.base import (
    Event,
    FenceRejected,
    IEventStore,
    StoreError,
    StreamConflict,
)
from tests.web.fakes import BASE, NOW, FakeOwnership, Harness, MemoryEventStore, fired

CID = "dm:alice:bob"
MESSAGE_FIELDS = {"id", "conversation", "seq", "sender", "text", "ts", "client_id"}
INBOX_FIELDS = {"seq", "id", "type", "from", "ts", "data"}
JSON_TYPE = "application/json; charset=utf-8"


def path(cid: str, tail: str) -> str:
    return f"/v1/conversations/{quote(cid, safe=':')}/{tail}"


class _APITestMixin:
    """
    A fresh harness per test, stopped (and checked for leftover clock calls) afterwards.
    """

    harnessArgs: dict = {}

    def setUp(self):
        self.h = self.makeHarness(**self.harnessArgs)

    def makeHarness(self, **kw) -> Harness:
        h = Harness(**kw)
        self.addCleanup(h.stop)
        return h

    def assertError(self, answer, status: int, code: str | None = None):
        """
        C{answer} is a JSON error C{{"error": {"code", "message"}}} with C{status} (and C{code}).
        """
        self.assertEqual(answer.code, status, answer.body)
        self.assertEqual(answer.header("content-type"), JSON_TYPE)
        body = answer.json
        self.assertEqual(set(body), {"error"})
        self.assertEqual(set(body["error"]), {"code", "message"})
        self.assertIsInstance(body["error"]["code"], str)
        self.assertIsInstance(body["error"]["message"], str)
        if code is not None:
            self.assertEqual(body["error"]["code"], code)
        self.assertNotIn(b"Traceback", answer.body)
        self.assertNotIn(b"File \"", answer.body)

    def assertMessage(self, message: dict, seq: int, sender: str, text: str,
                      clientId: str | None = None, cid: str = CID):
        self.assertEqual(set(message), MESSAGE_FIELDS)
        self.assertIsInstance(message["id"], str)
        self.assertTrue(message["id"])
        self.assertEqual(message["conversation"], cid)
        self.assertEqual(message["seq"], seq)
        self.assertEqual(message["sender"], sender)
        self.assertEqual(message["text"], text)
        self.assertIsInstance(message["ts"], float)
        self.assertEqual(message["client_id"], clientId)

    def poll(self, user: str = "alice", cid: str = CID, **query):
        return self.h.events(cid, user, **query)

    def pollNow(self, user: str = "alice", cid: str = CID, **query):
        query.setdefault("timeout", 0)
        return self.h.answer(self.h.events(cid, user, **query))


class SendTests(_APITestMixin, SynchronousTestCase):
    """
    POST /v1/conversations/{cid}/messages.
    """

    def test_created(self):
        """A send answers 201 with the Message, once durable."""
        answer = self.h.sent(CID, "alice", "hello bob")
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.header("content-type"), JSON_TYPE)
        self.assertEqual(set(answer.json), {"message"})
        self.assertMessage(answer.json["message"], 1, "alice", "hello bob")
        self.assertAlmostEqual(answer.json["message"]["ts"], NOW, delta=1)
        stored = self.h.store.stored(CID)
        self.assertEqual([(e.seq, e.sender, e.data["text"], e.id) for e in stored],
                         [(1, "alice", "hello bob", answer.json["message"]["id"])])

    def test_seqAreConsecutive(self):
        """Messages of both participants get seq 1, 2, 3 in order."""
        seqs = [self.h.sent(CID, user, f"m{i}").json["message"]["seq"]
                for i, user in enumerate(["alice", "bob", "alice"])]
        self.assertEqual(seqs, [1, 2, 3])
        self.assertEqual([e.seq for e in self.h.store.stored(CID)], [1, 2, 3])

    def test_clientIdEchoed(self):
        """A client_id is stored and echoed in the Message."""
        answer = self.h.sent(CID, "bob", "hi", clientId="c-1_A")
        self.assertEqual(answer.code, 201)
        self.assertMessage(answer.json["message"], 1, "bob", "hi", clientId="c-1_A")

    def test_nullClientId(self):
        """client_id null is the same as no client_id."""
        d = self.h.request("POST", path(CID, "messages"), body={"text": "x", "client_id": None})
        self.h.settle()
        answer = fired(d)
        self.assertEqual(answer.code, 201)
        self.assertIsNone(answer.json["message"]["client_id"])

    def test_repeatedClientId(self):
        """A repeated client_id from the same sender answers 200 with the original message."""
        first = self.h.sent(CID, "alice", "original", clientId="abc")
        again = self.h.sent(CID, "alice", "changed", clientId="abc")
        self.assertEqual(first.code, 201)
        self.assertEqual(again.code, 200)
        self.assertEqual(again.json, first.json)
        self.assertEqual(len(self.h.store.stored(CID)), 1)
        self.assertEqual(self.h.lastSeq(CID), 1)

    def test_repeatedClientIdInFlight(self):
        """A repeat arriving while the first is being written gets the same message, 200."""
        self.h.store.hold()
        first = self.h.send(CID, "alice", "one", clientId="dup")
        self.h.settle()
        second = self.h.send(CID, "alice", "one", clientId="dup")
        self.h.settle()
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.h.store.release()
        self.h.settle()
        a, b = fired(first), fired(second)
        self.assertEqual((a.code, b.code), (201, 200))
        self.assertEqual(a.json, b.json)
        self.assertEqual(len(self.h.store.stored(CID)), 1)

    def test_sameClientIdOtherSender(self):
        """The same client_id from the other participant is a different message."""
        a = self.h.sent(CID, "alice", "a", clientId="same")
        b = self.h.sent(CID, "bob", "b", clientId="same")
        self.assertEqual((a.code, b.code), (201, 201))
        self.assertEqual(b.json["message"]["seq"], 2)
        self.assertNotEqual(a.json["message"]["id"], b.json["message"]["id"])

    def test_repeatedClientIdFromStore(self):
        """A client_id written before this node loaded the stream (not in memory) is found."""
        h = self.makeHarness(history_in_memory=10)
        group = h.streams.groupOf(CID)
        seeded = h.store.seed(CID, group, 30)
        answer = h.sent(CID, "alice", "again", clientId="seed2")
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json["message"]["id"], seeded[1].id)
        self.assertEqual(answer.json["message"]["seq"], 2)
        self.assertEqual(answer.json["message"]["text"], "message 2")
        self.assertEqual(h.store.lastSeq(CID), 30)

    def test_continuesStoredSeq(self):
        """A stream loaded from the store continues after its stored last seq."""
        self.h.store.seed(CID, self.h.streams.groupOf(CID), 7)
        answer = self.h.sent(CID, "bob", "next")
        self.assertEqual(answer.json["message"]["seq"], 8)

    def test_maxTextChars(self):
        """Text of exactly max_text_chars code points is accepted."""
        h = self.makeHarness(max_text_chars=10)
        answer = h.sent(CID, "alice", "\N{GRINNING FACE}" * 10)
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.json["message"]["text"], "\N{GRINNING FACE}" * 10)

    def test_unicodeText(self):
        """Non-ASCII text round-trips as UTF-8 JSON."""
        answer = self.h.sent(CID, "alice", "grüß dich \u2764")
        self.assertEqual(answer.json["message"]["text"], "grüß dich \u2764")


class DurabilityTests(_APITestMixin, SynchronousTestCase):
    """
    Sends are acknowledged only once durable; overload and store errors.
    """

    def test_notAcknowledgedBeforeDurable(self):
        """No answer, and nothing shown to pollers, until the store has the batch."""
        waiting = self.poll("bob", after=0, timeout=30)
        self.h.flush()
        self.h.store.hold()
        d = self.h.send(CID, "alice", "wait for it")
        self.h.advance(1)
        self.assertNoResult(d)
        self.assertNoResult(waiting)
        self.assertEqual(self.h.store.stored(CID), [])
        self.assertEqual(len(self.h.store.held), 1)
        self.assertEqual(self.pollNow("bob").json["last_seq"], 0)
        self.h.store.release()
        self.h.settle()
        self.assertEqual(fired(d).code, 201)
        polled = fired(waiting)
        self.assertEqual([m["text"] for m in polled.json["events"]], ["wait for it"])

    def test_overloaded(self):
        """Too many pending writes: 503 overloaded with Retry-After, and no seq used."""
        h = self.makeHarness(maxPending=1)
        h.store.hold()
        first = h.send(CID, "alice", "one")
        h.settle()
        second = h.answer(h.send(CID, "bob", "two"))
        self.assertError(second, 503, "overloaded")
        self.assertEqual(second.header("retry-after"), "1")
        h.store.release()
        h.settle()
        self.assertEqual(fired(first).json["message"]["seq"], 1)
        third = h.sent(CID, "bob", "three")
        self.assertEqual(third.json["message"]["seq"], 2)
        self.assertEqual([e.seq for e in h.store.stored(CID)], [1, 2])

    def test_storeErrorRetried(self):
        """Store errors are retried with backoff; the send then succeeds with 201."""
        self.h.store.failNext(3)
        d = self.h.send(CID, "alice", "persevere")
        self.h.run(0.3)
        self.assertNoResult(d)
        self.assertEqual(self.h.store.appendCalls, 3)
        self.h.run(0.2)
        answer = fired(d)
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.json["message"]["seq"], 1)
        self.assertEqual([e.data["text"] for e in self.h.store.stored(CID)], ["persevere"])

    def test_fencedOut(self):
        """A newer owner's fence makes the send fail with 503, writing nothing."""
        group = self.h.streams.groupOf(CID)
        self.assertEqual(self.pollNow().code, 200)
        self.h.store.claim(group, 99, CID, 0)
        answer = self.h.sent(CID, "alice", "too late")
        self.assertError(answer, 503, "unavailable")
        self.assertIsNotNone(answer.header("retry-after"))
        self.assertEqual(self.h.store.stored(CID), [])


class TypingTests(_APITestMixin, SynchronousTestCase):
    """
    POST /v1/conversations/{cid}/typing.
    """

    def typing(self, user: str, value, cid: str = CID):
        return self.h.call("POST", path(cid, "typing"), user=user, body={"typing": value})

    def test_noContent(self):
        """Typing answers 204 with an empty body."""
        answer = self.typing("bob", True)
        self.assertEqual(answer.code, 204)
        self.assertEqual(answer.body, b"")

    def test_shownInEvents(self):
        """The typing user shows up in events with a new typing_version."""
        before = self.pollNow("alice").json
        self.assertEqual((before["typing"], before["typing_version"]), ([], 0))
        self.typing("bob", True)
        after = self.pollNow("alice").json
        self.assertEqual(after["typing"], ["bob"])
        self.assertEqual(after["typing_version"], 1)
        self.assertEqual(after["events"], [])

    def test_sortedTypingUsers(self):
        """Both participants typing are listed in order."""
        self.typing("bob", True)
        self.typing("alice", True)
        self.assertEqual(self.pollNow("alice").json["typing"], ["alice", "bob"])

    def test_stopTyping(self):
        """typing false removes the user and bumps the version."""
        self.typing("bob", True)
        self.typing("bob", False)
        body = self.pollNow("alice").json
        self.assertEqual(body["typing"], [])
        self.assertEqual(body["typing_version"], 2)

    def test_stopWhenNotTyping(self):
        """typing false for a user who is not typing changes nothing."""
        self.assertEqual(self.typing("bob", False).code, 204)
        self.assertEqual(self.pollNow("alice").json["typing_version"], 0)

    def test_expires(self):
        """Typing expires after typing_ttl seconds on the clock."""
        self.typing("bob", True)
        self.h.advance(5.9)
        self.assertEqual(self.pollNow("alice").json["typing"], ["bob"])
        self.h.advance(0.2)
        body = self.pollNow("alice").json
        self.assertEqual(body["typing"], [])
        self.assertEqual(body["typing_version"], 2)
        self.assertEqual(self.h.pendingCalls(), [])

    def test_refreshed(self):
        """Typing again before the ttl restarts it."""
        self.typing("bob", True)
        self.h.advance(5)
        self.typing("bob", True)
        self.h.advance(5)
        body = self.pollNow("alice").json
        self.assertEqual(body["typing"], ["bob"])
        self.assertEqual(body["typing_version"], 1)
        self.h.advance(1.1)
        self.assertEqual(self.pollNow("alice").json["typing"], [])

    def test_messageClears(self):
        """Sending a message clears the sender's typing."""
        self.typing("bob", True)
        self.h.sent(CID, "bob", "done typing")
        body = self.pollNow("alice", after=0).json
        self.assertEqual(body["typing"], [])
        self.assertEqual(body["typing_version"], 2)
        self.assertEqual([m["text"] for m in body["events"]], ["done typing"])
        self.assertEqual(self.h.pendingCalls(), [])

    def test_otherSenderKeepsTyping(self):
        """A message from the other participant does not clear someone else's typing."""
        self.typing("bob", True)
        self.h.sent(CID, "alice", "hi")
        self.assertEqual(self.pollNow("alice").json["typing"], ["bob"])

    def test_badBody(self):
        """A typing value that is not a boolean is 400 bad_request."""
        for body in [{"typing": "yes"}, {"typing": 1}, {"typing": None}, {}]:
            answer = self.h.call("POST", path(CID, "typing"), user="bob", body=body)
            self.assertError(answer, 400, "bad_request")
        self.assertEqual(self.pollNow("alice").json["typing_version"], 0)

    def test_notJSON(self):
        """A typing body that is not JSON is 400 bad_json."""
        answer = self.h.call("POST", path(CID, "typing"), user="bob", data=b"typing=1")
        self.assertError(answer, 400, "bad_json")

    def test_tooLarge(self):
        """A typing body over 64 KiB is 413 too_large."""
        data = json.dumps({"typing": True, "pad": "x" * 65536}).encode()
        answer = self.h.call("POST", path(CID, "typing"), user="bob", data=data)
        self.assertError(answer, 413, "too_large")

    def test_nonParticipant(self):
        """Only the two participants may signal typing."""
        self.assertError(self.typing("carol", True), 403, "forbidden")


class EventsTests(_APITestMixin, SynchronousTestCase):
    """
    GET /v1/conversations/{cid}/events: the long-poll.
    """

    def test_shape(self):
        """The answer has exactly events, last_seq, typing and typing_version."""
        answer = self.pollNow()
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("content-type"), JSON_TYPE)
        self.assertEqual(answer.json, {"events": [], "last_seq": 0, "typing": [],
                                       "typing_version": 0,
                                       "read": {"alice": 0, "bob": 0}, "read_version": 0})

    def test_immediateWhenBehind(self):
        """after < last_seq answers at once with the messages after it, ascending."""
        for i in range(3):
            self.h.sent(CID, "alice" if i % 2 == 0 else "bob", f"m{i + 1}")
        answer = self.h.answer(self.poll("bob", after=1, timeout=30))
        self.assertEqual(answer.code, 200)
        events = answer.json["events"]
        self.assertEqual([e["seq"] for e in events], [2, 3])
        self.assertMessage(events[0], 2, "bob", "m2")
        self.assertMessage(events[1], 3, "alice", "m3")
        self.assertEqual(answer.json["last_seq"], 3)

    def test_waitsForOtherUser(self):
        """A poll at last_seq waits and returns when the other user sends."""
        d = self.poll("alice", after=0, timeout=30)
        self.h.advance(10)
        self.assertNoResult(d)
        self.h.sent(CID, "bob", "are you there?")
        answer = fired(d)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json["last_seq"], 1)
        self.assertEqual(len(answer.json["events"]), 1)
        self.assertMessage(answer.json["events"][0], 1, "bob", "are you there?")
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(self.h.pendingCalls(), [])

    def test_severalWaiters(self):
        """Every waiting poll of the conversation is answered."""
        polls = [self.poll("alice", after=0), self.poll("bob", after=0), self.poll("bob")]
        self.h.flush()
        self.assertEqual(self.h.waiters(), 3)
        self.h.sent(CID, "bob", "all of you")
        for d in polls:
            answer = fired(d)
            self.assertEqual((answer.code, answer.header("content-type")), (200, JSON_TYPE))
            self.assertEqual([e["seq"] for e in answer.json["events"]], [1])
        # (They share one encoded answer; the next change is encoded anew.)
        again = [self.poll("alice", after=1), self.poll("bob", after=1)]
        self.h.flush()
        self.h.sent(CID, "alice", "again")
        self.assertEqual([[e["text"] for e in fired(d).json["events"]] for d in again],
                         [["again"], ["again"]])

    def test_typingVersionChange(self):
        """A poll with typing_version returns when typing changes."""
        d = self.poll("alice", after=0, typing_version=0, timeout=30)
        self.h.flush()
        self.assertNoResult(d)
        self.h.call("POST", path(CID, "typing"), user="bob", body={"typing": True})
        answer = fired(d)
        self.assertEqual(answer.json, {"events": [], "last_seq": 0, "typing": ["bob"],
                                       "typing_version": 1,
                                       "read": {"alice": 0, "bob": 0}, "read_version": 0})

    def test_typingVersionDiffers(self):
        """A typing_version other than the current one answers at once."""
        self.h.call("POST", path(CID, "typing"), user="bob", body={"typing": True})
        answer = self.h.answer(self.poll("alice", after=0, typing_version=0, timeout=30))
        self.assertEqual(answer.json["typing"], ["bob"])
        self.assertEqual(answer.json["typing_version"], 1)

    def test_typingIgnoredWithoutVersion(self):
        """Without typing_version, a typing change does not end the wait."""
        d = self.poll("alice", after=0, timeout=30)
        self.h.call("POST", path(CID, "typing"), user="bob", body={"typing": True})
        self.h.advance(1)
        self.assertNoResult(d)
        self.h.advance(29)
        self.assertEqual(fired(d).json["events"], [])

    def test_timeout(self):
        """With nothing new, the poll answers events [] after timeout seconds."""
        d = self.poll("alice", after=0, timeout=5)
        self.h.advance(4.9)
        self.assertNoResult(d)
        self.h.advance(0.1)
        answer = fired(d)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json, {"events": [], "last_seq": 0, "typing": [],
                                       "typing_version": 0,
                                       "read": {"alice": 0, "bob": 0}, "read_version": 0})
        self.assertEqual(self.h.waiters(), 0)

    def test_defaultTimeout(self):
        """Without timeout, the poll waits 25 seconds."""
        d = self.poll("alice", after=0)
        self.h.advance(24.9)
        self.assertNoResult(d)
        self.h.advance(0.1)
        self.assertEqual(fired(d).json["events"], [])

    def test_timeoutClampedHigh(self):
        """A huge timeout is clamped to max_poll_timeout, not refused."""
        for value in ["1000", "1e300", "inf"]:
            d = self.poll("alice", after=0, timeout=value)
            self.h.advance(59.9)
            self.assertNoResult(d)
            self.h.advance(0.1)
            self.assertEqual(fired(d).code, 200)

    def test_timeoutClampedLow(self):
        """A negative timeout is clamped to 0: the poll answers at once."""
        answer = self.h.answer(self.poll("alice", after=0, timeout=-5))
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json["events"], [])
        self.assertEqual(self.h.waiters(), 0)

    def test_fractionalTimeout(self):
        """A fractional timeout is honoured."""
        d = self.poll("alice", after=0, timeout="0.5")
        self.h.advance(0.4)
        self.assertNoResult(d)
        self.h.advance(0.1)
        self.assertEqual(fired(d).code, 200)

    def test_badTimeout(self):
        """A timeout that is not a number is 400 bad_request."""
        for value in ["soon", "nan", ""]:
            self.assertError(self.h.answer(self.poll("alice", timeout=value)), 400,
                             "bad_request")

    def test_afterAbsentMeansNow(self):
        """Without after, only messages sent from now on are returned."""
        self.h.sent(CID, "bob", "old 1")
        self.h.sent(CID, "bob", "old 2")
        d = self.poll("alice", timeout=30)
        self.h.flush()
        self.assertNoResult(d)
        self.h.sent(CID, "bob", "new")
        answer = fired(d)
        self.assertEqual([(e["seq"], e["text"]) for e in answer.json["events"]], [(3, "new")])

    def test_afterAbsentTimeout(self):
        """Without after, a timed-out poll still reports last_seq."""
        self.h.sent(CID, "bob", "old")
        answer = self.h.answer(self.poll("alice", timeout=0))
        self.assertEqual(answer.json["events"], [])
        self.assertEqual(answer.json["last_seq"], 1)

    def test_cursorAhead(self):
        """after > last_seq is 409 cursor_ahead."""
        self.h.sent(CID, "bob", "only one")
        answer = self.h.answer(self.poll("alice", after=2, timeout=30))
        self.assertError(answer, 409, "cursor_ahead")
        self.assertEqual(self.h.waiters(), 0)

    def test_afterNotANumber(self):
        """after that is not an integer is 400 bad_request."""
        for value in ["abc", "1.5", "-1", "", "0x10", "9" * 30]:
            answer = self.h.answer(self.poll("alice", after=value))
            self.assertError(answer, 400, "bad_request")

    def test_typingVersionNotANumber(self):
        """typing_version that is not an integer is 400 bad_request."""
        self.assertError(self.h.answer(self.poll("alice", typing_version="x")), 400,
                         "bad_request")

    def test_atMost100(self):
        """At most 100 events are returned, the oldest after the cursor first."""
        self.h.store.seed(CID, self.h.streams.groupOf(CID), 150)
        answer = self.pollNow("alice", after=0).json
        self.assertEqual([e["seq"] for e in answer["events"]], list(range(1, 101)))
        self.assertEqual(answer["last_seq"], 150)
        rest = self.pollNow("alice", after=100).json
        self.assertEqual([e["seq"] for e in rest["events"]], list(range(101, 151)))

    def test_beyondMemory(self):
        """A cursor older than the history in memory is served from the store."""
        h = self.makeHarness(history_in_memory=10)
        seeded = h.store.seed(CID, h.streams.groupOf(CID), 150)
        answer = h.answer(h.events(CID, "alice", after=5, timeout=0)).json
        self.assertEqual([e["seq"] for e in answer["events"]], list(range(6, 106)))
        self.assertMessage(answer["events"][0], 6, "alice", "message 6", clientId="seed6")
        self.assertEqual(answer["events"][0]["id"], seeded[5].id)
        self.assertEqual(answer["last_seq"], 150)

    def test_accessTokenQuery(self):
        """The token may come in the access_token query parameter."""
        token = self.h.token("bob")
        answer = self.h.call("GET", path(CID, f"events?timeout=0&access_token={token}"),
                             user=None)
        self.assertEqual(answer.code, 200, answer.body)

    def test_nonParticipant(self):
        """Only the participants may poll a conversation."""
        self.assertError(self.pollNow("carol"), 403, "forbidden")


class DisconnectTests(_APITestMixin, SynchronousTestCase):
    """
    A client that goes away leaves nothing behind.
    """

    def test_cancelledPollForgotten(self):
        """Cancelling a waiting poll removes its waiter and its timeout call."""
        d = self.poll("alice", after=0, timeout=30)
        self.h.flush()
        self.assertEqual(self.h.waiters(), 1)
        self.assertEqual(len(self.h.pendingCalls()), 1)
        d.cancel()
        self.failureResultOf(d)
        self.h.flush()
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(self.h.streams.waiting, 0)
        self.assertEqual(self.h.pendingCalls(), [])

    def test_othersStillServed(self):
        """After one client disconnects, the other poller still gets the message."""
        gone = self.poll("alice", after=0, timeout=30)
        stays = self.poll("bob", after=0, timeout=30)
        self.h.flush()
        gone.cancel()
        self.failureResultOf(gone)
        self.h.flush()
        self.assertEqual(self.h.waiters(), 1)
        self.h.sent(CID, "alice", "still here?")
        self.assertEqual([e["seq"] for e in fired(stays).json["events"]], [1])
        self.assertEqual(self.h.waiters(), 0)

    def test_cancelledTypingPoll(self):
        """A cancelled poll with typing_version is forgotten too."""
        d = self.poll("alice", after=0, typing_version=0, timeout=30)
        self.h.flush()
        d.cancel()
        self.failureResultOf(d)
        self.h.flush()
        self.h.call("POST", path(CID, "typing"), user="bob", body={"typing": False})
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(self.h.pendingCalls(), [])


    def test_senderDisconnectStillCommitted(self):
        """A sender who goes away before the ack does not stop the message being delivered."""
        waiting = self.poll("bob", after=0, timeout=30)
        inbox = self.h.request("GET", "/v1/inbox/events?after=0&timeout=30", user="bob")
        self.h.flush()
        d = self.h.send(CID, "alice", "bye for now")
        self.h.flush()
        d.cancel()
        self.failureResultOf(d)
        self.h.flush()
        self.assertEqual(self.h.persister.pending, 1)
        self.h.settle()
        self.assertEqual([e.data["text"] for e in self.h.store.stored(CID)], ["bye for now"])
        answer = fired(waiting)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual([e["text"] for e in answer.json["events"]], ["bye for now"])
        self.assertEqual(fired(inbox).code, 200)
        self.assertEqual([e.type for e in self.h.store.stored("inbox:bob")], ["message"])

    def test_senderDisconnectOthersUnaffected(self):
        """A sender going away while its batch is being written does not break the other's send."""
        self.h.store.hold()
        d = self.h.send(CID, "alice", "gone")
        self.h.settle()
        d.cancel()
        self.failureResultOf(d)
        self.h.flush()
        other = self.h.send(CID, "bob", "still here")
        self.h.settle()
        self.h.store.release()
        self.h.settle()
        answer = fired(other)
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.json["message"]["seq"], 2)
        self.assertEqual([(e.seq, e.sender) for e in self.h.store.stored(CID)],
                         [(1, "alice"), (2, "bob")])


class HistoryTests(_APITestMixin, SynchronousTestCase):
    """
    GET /v1/conversations/{cid}/messages.
    """

    def history(self, user: str = "alice", h: Harness | None = None, **query):
        h = h or self.h
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return h.call("GET", path(CID, "messages") + (f"?{q}" if q else ""), user=user)

    def seqs(self, answer) -> list[int]:
        return [m["seq"] for m in answer.json["messages"]]

    def test_empty(self):
        """An empty conversation has no messages and no more."""
        answer = self.history()
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("content-type"), JSON_TYPE)
        self.assertEqual(answer.json, {"messages": [], "has_more": False})

    def test_sentMessages(self):
        """Sent messages come back oldest first with all Message fields."""
        self.h.sent(CID, "alice", "first", clientId="k1")
        self.h.sent(CID, "bob", "second")
        answer = self.history("bob")
        self.assertEqual(set(answer.json), {"messages", "has_more"})
        self.assertMessage(answer.json["messages"][0], 1, "alice", "first", clientId="k1")
        self.assertMessage(answer.json["messages"][1], 2, "bob", "second")
        self.assertFalse(answer.json["has_more"])

    def test_defaultLimitAndPaging(self):
        """50 newest by default; before pages back until has_more is false."""
        self.h.store.seed(CID, self.h.streams.groupOf(CID), 120)
        page = self.history()
        self.assertEqual(self.seqs(page), list(range(71, 121)))
        self.assertTrue(page.json["has_more"])
        page = self.history(before=71)
        self.assertEqual(self.seqs(page), list(range(21, 71)))
        self.assertTrue(page.json["has_more"])
        page = self.history(before=21)
        self.assertEqual(self.seqs(page), list(range(1, 21)))
        self.assertFalse(page.json["has_more"])
        self.assertEqual(self.history(before=1).json, {"messages": [], "has_more": False})

    def test_limit(self):
        """limit chooses the page size."""
        self.h.store.seed(CID, self.h.streams.groupOf(CID), 10)
        page = self.history(limit=3, before=5)
        self.assertEqual(self.seqs(page), [2, 3, 4])
        self.assertTrue(page.json["has_more"])
        page = self.history(limit=4, before=5)
        self.assertEqual(self.seqs(page), [1, 2, 3, 4])
        self.assertFalse(page.json["has_more"])

    def test_maxLimit(self):
        """limit is capped at 200."""
        self.h.store.seed(CID, self.h.streams.groupOf(CID), 250)
        page = self.history(limit=1000)
        self.assertEqual(self.seqs(page), list(range(51, 251)))
        self.assertTrue(page.json["has_more"])

    def test_beforeBeyondEnd(self):
        """before past the last seq returns the newest messages."""
        self.h.store.seed(CID, self.h.streams.groupOf(CID), 5)
        self.assertEqual(self.seqs(self.history(before=1000)), [1, 2, 3, 4, 5])

    def test_fromStore(self):
        """Pages older than the history in memory come from the store."""
        h = self.makeHarness(history_in_memory=10)
        h.store.seed(CID, h.streams.groupOf(CID), 120)
        page = self.history(h=h)
        self.assertEqual(self.seqs(page), list(range(71, 121)))
        self.assertTrue(page.json["has_more"])
        page = self.history(h=h, before=30, limit=40)
        self.assertEqual(self.seqs(page), list(range(1, 30)))
        self.assertFalse(page.json["has_more"])
        self.assertMessage(page.json["messages"][0], 1, "alice", "message 1", clientId="seed1")

    def test_badArguments(self):
        """before and limit must be positive integers: 400 bad_request."""
        for query in [{"limit": 0}, {"limit": -1}, {"limit": "many"}, {"before": 0},
                      {"before": "x"}, {"before": "1.5"}]:
            self.assertError(self.history(**query), 400, "bad_request")

    def test_nonParticipant(self):
        """Only the participants may read the history."""
        self.assertError(self.history("carol"), 403, "forbidden")


class InboxTests(_APITestMixin, SynchronousTestCase):
    """
    GET /v1/inbox/events and the message notifications that fill it.
    """

    def inbox(self, user: str, **query):
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return self.h.request("GET", "/v1/inbox/events" + (f"?{q}" if q else ""), user=user)

    def test_empty(self):
        """An empty inbox has exactly events and last_seq."""
        answer = self.h.answer(self.inbox("bob", after=0, timeout=0))
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("content-type"), JSON_TYPE)
        self.assertEqual(answer.json, {"events": [], "last_seq": 0})

    def test_messageNotification(self):
        """A message creates a message InboxEvent for the recipient."""
        sent = self.h.sent(CID, "alice", "hi bob").json["message"]
        answer = self.h.answer(self.inbox("bob", after=0, timeout=0))
        self.assertEqual(answer.json["last_seq"], 1)
        [event] = answer.json["events"]
        self.assertEqual(set(event), INBOX_FIELDS)
        self.assertEqual(event["seq"], 1)
        self.assertIsInstance(event["id"], str)
        self.assertEqual(event["type"], "message")
        self.assertEqual(event["from"], "alice")
        self.assertIsInstance(event["ts"], float)
        self.assertEqual(event["data"], {"conversation": CID, "seq": sent["seq"],
                                         "preview": "hi bob"})

    def test_notForSender(self):
        """The sender's own inbox gets nothing."""
        self.h.sent(CID, "alice", "hi bob")
        answer = self.h.answer(self.inbox("alice", after=0, timeout=0))
        self.assertEqual(answer.json, {"events": [], "last_seq": 0})

    def test_repeatedSendNotifiesOnce(self):
        """A repeated client_id does not notify twice."""
        self.h.sent(CID, "alice", "once", clientId="n1")
        self.h.sent(CID, "alice", "once", clientId="n1")
        self.assertEqual(self.h.answer(self.inbox("bob", after=0, timeout=0)).json["last_seq"], 1)

    def test_longPoll(self):
        """A waiting inbox poll returns when a notification arrives."""
        d = self.inbox("bob", timeout=30)
        self.h.advance(5)
        self.assertNoResult(d)
        self.h.sent(CID, "alice", "ping")
        answer = fired(d)
        self.assertEqual([e["data"]["preview"] for e in answer.json["events"]], ["ping"])
        self.assertEqual(answer.json["last_seq"], 1)

    def test_timeout(self):
        """An inbox poll with nothing new times out with events []."""
        d = self.inbox("bob", after=0, timeout=3)
        self.h.advance(3)
        self.assertEqual(fired(d).json, {"events": [], "last_seq": 0})

    def test_cursorAhead(self):
        """after > last_seq on the inbox is 409 cursor_ahead."""
        self.assertError(self.h.answer(self.inbox("bob", after=1)), 409, "cursor_ahead")

    def test_badAfter(self):
        """A non-integer after on the inbox is 400 bad_request."""
        self.assertError(self.h.answer(self.inbox("bob", after="x")), 400, "bad_request")

    def test_unauthorized(self):
        """The inbox needs a token."""
        answer = self.h.call("GET", "/v1/inbox/events?timeout=0", user=None)
        self.assertError(answer, 401, "unauthorized")

    def test_disconnect(self):
        """A cancelled inbox poll leaves no waiter and no clock call."""
        d = self.inbox("bob", timeout=30)
        self.h.flush()
        self.assertEqual(self.h.waiters(), 1)
        d.cancel()
        self.failureResultOf(d)
        self.h.flush()
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(self.h.pendingCalls(), [])


class AuthTests(_APITestMixin, SynchronousTestCase):
    """
    Tokens on every stream route: 401 unauthorized.
    """

    def routes(self):
        return [("POST", path(CID, "messages"), {"text": "x"}),
                ("POST", path(CID, "typing"), {"typing": True}),
                ("GET", path(CID, "events?timeout=0"), None),
                ("GET", path(CID, "messages"), None),
                ("GET", "/v1/inbox/events?timeout=0", None)]

    def assertUnauthorized(self, answer):
        self.assertError(answer, 401, "unauthorized")
        self.assertIn("Bearer", answer.header("www-authenticate") or "")

    def test_missing(self):
        """No token on any stream route is 401."""
        for method, p, body in self.routes():
            self.assertUnauthorized(self.h.call(method, p, user=None, body=body))
        self.assertEqual(self.h.store.appendCalls, 0)

    def test_expired(self):
        """An expired token is 401, on the harness clock."""
        token = self.h.auth.mint("alice", 60)
        self.assertEqual(self.h.call("GET", path(CID, "events?timeout=0"), token=token).code,
                         200)
        self.h.advance(60)
        for method, p, body in self.routes():
            self.assertUnauthorized(self.h.call(method, p, token=token, body=body))

    def test_forged(self):
        """A token signed with another secret is 401, and not echoed."""
        token = jwt.encode({"sub": "alice", "exp": int(NOW) + 3600}, b"x" * 40,
                           algorithm="HS256")
        for method, p, body in self.routes():
            answer = self.h.call(method, p, token=token, body=body)
            self.assertUnauthorized(answer)
            self.assertNotIn(token.encode(), answer.body)

    def test_garbage(self):
        """A token that is not a JWT is 401."""
        self.assertUnauthorized(self.h.call("GET", path(CID, "messages"), token="not-a-jwt"))

    def test_otherScheme(self):
        """An Authorization header that is not Bearer is 401."""
        for value in ["Basic YWxpY2U6cGFzcw==", "Bearer", "Bearer   ", "Token abc"]:
            answer = self.h.call("GET", path(CID, "messages"), user=None,
                                 headers={"authorization": value})
            self.assertUnauthorized(answer)

    def test_badAccessTokenQuery(self):
        """A forged access_token query parameter is 401."""
        answer = self.h.call("GET", path(CID, "messages?access_token=abc.def.ghi"), user=None)
        self.assertUnauthorized(answer)

    def test_accessTokenQuerySend(self):
        """access_token works for POST routes too."""
        token = self.h.token("alice")
        d = self.h.request("POST", path(CID, f"messages?access_token={token}"), user=None,
                           body={"text": "via query"})
        self.h.settle()
        self.assertEqual(fired(d).code, 201)

    def test_tokenCheckedFirst(self):
        """A missing token is 401 even when everything else is wrong too."""
        answer = self.h.call("POST", path("xx:a:b", "messages"), user=None, data=b"{{{")
        self.assertUnauthorized(answer)


class ConversationIdTests(_APITestMixin, SynchronousTestCase):
    """
    Malformed and non-canonical conversation ids are 400 bad_conversation.
    """

    bad = ["dm:bob:alice", "dm:alice:alice", "dm:al ice:bob", "xx:a:b", "dm:a",
           "dm:alice:bob:carol", "dm::bob", "DM:alice:bob", "dm:" + "a" * 65 + ":b",
           "dm:alice:b\u00f6b"]

    def test_badOnEveryRoute(self):
        """Every conversation route refuses bad ids with 400 bad_conversation."""
        for cid in self.bad:
            for method, tail, body in [("POST", "messages", {"text": "x"}),
                                       ("POST", "typing", {"typing": True}),
                                       ("GET", "events?timeout=0", None),
                                       ("GET", "messages", None)]:
                answer = self.h.call(method, path(cid, tail), user="alice", body=body)
                self.assertError(answer, 400, "bad_conversation")
        self.assertEqual(self.h.store.appendCalls, 0)
        self.assertEqual(self.h.store.claims, [])

    def test_trailingNewline(self):
        """A user id followed by a newline is not a valid user id."""
        answer = self.h.call("GET", path("dm:alice:bob\n", "events?timeout=0"), user="alice")
        self.assertError(answer, 400, "bad_conversation")

    def test_longestUserIds(self):
        """User ids of 64 characters are valid."""
        a, b = "a" * 64, "b" * 64
        answer = self.h.call("GET", path(f"dm:{a}:{b}", "events?timeout=0"), user=a)
        self.assertEqual(answer.code, 200, answer.body)

    def test_byteOrder(self):
        """Canonical order is byte order: upper case sorts before lower case."""
        self.assertEqual(self.h.call("GET", path("dm:Zed:alice", "messages"), user="Zed").code,
                         200)
        self.assertError(self.h.call("GET", path("dm:alice:Zed", "messages"), user="Zed"), 400,
                         "bad_conversation")

    def test_checkedBeforeMembership(self):
        """A bad id is 400 even for a non-participant."""
        answer = self.h.call("GET", path("dm:bob:alice", "messages"), user="carol")
        self.assertError(answer, 400, "bad_conversation")


class BodyTests(_APITestMixin, SynchronousTestCase):
    """
    Bad send bodies are 400 or 413 and change nothing.
    """

    def post(self, data: bytes, user: str = "alice"):
        d = self.h.request("POST", path(CID, "messages"), user=user, data=data)
        self.h.settle()
        return fired(d)

    def assertUnchanged(self):
        self.assertEqual(self.h.store.appendCalls, 0)
        self.assertEqual(self.h.lastSeq(CID), 0)
        self.assertEqual(self.h.persister.pending, 0)

    def test_notJSON(self):
        """Bodies that are not JSON are 400 bad_json."""
        for data in [b"", b"text=hello", b'{"text": "x"', b"\xff\xfe{}", b"{'text': 'x'}"]:
            self.assertError(self.post(data), 400, "bad_json")
        self.assertUnchanged()

    def test_nonFiniteNumbers(self):
        """NaN, Infinity and numbers out of range are not JSON: 400 bad_json."""
        for number in [b"NaN", b"Infinity", b"-Infinity", b"1e999"]:
            self.assertError(self.post(b'{"text": "x", "n": ' + number + b"}"), 400, "bad_json")
        self.assertUnchanged()

    def test_deeplyNested(self):
        """Deeply nested JSON is refused as bad input, not a server error."""
        answer = self.post(b"[" * 30000 + b"]" * 30000)
        self.assertEqual(answer.code, 400, answer.body)
        self.assertError(answer, 400)
        self.assertUnchanged()

    def test_notAnObject(self):
        """JSON that is not an object is 400 bad_request."""
        for data in [b"[]", b'"hello"', b"42", b"null", b'[{"text": "x"}]']:
            self.assertError(self.post(data), 400, "bad_request")
        self.assertUnchanged()

    def test_wrongTypes(self):
        """A text that is not a string is 400 bad_request."""
        for body in [{}, {"text": None}, {"text": 5}, {"text": ["x"]}, {"text": {"a": 1}},
                     {"text": True}]:
            self.assertError(self.post(json.dumps(body).encode()), 400, "bad_request")
        self.assertUnchanged()

    def test_emptyText(self):
        """Empty text is 400 bad_request."""
        self.assertError(self.post(b'{"text": ""}'), 400, "bad_request")
        self.assertUnchanged()

    def test_tooLongText(self):
        """Text over max_text_chars is 400 bad_request."""
        answer = self.post(json.dumps({"text": "x" * 4001}).encode())
        self.assertError(answer, 400, "bad_request")
        self.assertUnchanged()

    def test_loneSurrogate(self):
        """Text that is not valid Unicode (a lone surrogate) is 400 bad_request."""
        answer = self.post(b'{"text": "broken \\ud800 text"}')
        self.assertError(answer, 400, "bad_request")
        self.assertUnchanged()

    def test_badClientId(self):
        """A client_id outside [A-Za-z0-9_-]{1,64} is 400 bad_request."""
        for clientId in ["", "a b", "x" * 65, 12, ["a"], "caf\u00e9", "a/b", True]:
            body = json.dumps({"text": "x", "client_id": clientId}).encode()
            self.assertError(self.post(body), 400, "bad_request")
        self.assertUnchanged()

    def test_clientIdTrailingNewline(self):
        """A client_id with a trailing newline is 400 bad_request."""
        body = json.dumps({"text": "x", "client_id": "abc\n"}).encode()
        self.assertError(self.post(body), 400, "bad_request")
        self.assertUnchanged()

    def test_longestClientId(self):
        """A client_id of 64 characters is accepted."""
        answer = self.post(json.dumps({"text": "x", "client_id": "k" * 64}).encode())
        self.assertEqual(answer.code, 201)

    def test_tooLarge(self):
        """A body over 64 KiB is 413 too_large."""
        data = json.dumps({"text": "x" * 70000}).encode()
        self.assertError(self.post(data), 413, "too_large")
        data = b'{"text": "' + b"y" * (65536 - 11) + b'"}'
        self.assertEqual(len(data), 65537)
        self.assertError(self.post(data), 413, "too_large")
        self.assertUnchanged()

    def test_exactly64KiB(self):
        """A body of exactly 64 KiB is read (and here refused for its long text only)."""
        data = b'{"text":"' + b"y" * (65536 - 11) + b'"}'
        self.assertEqual(len(data), 65536)
        self.assertError(self.post(data), 400, "bad_request")
        self.assertUnchanged()

    def test_forbiddenBeforeBody(self):
        """A non-participant is 403 whatever the body."""
        self.assertError(self.post(b"not json", user="carol"), 403, "forbidden")
        self.assertUnchanged()


class OwnershipTests(_APITestMixin, SynchronousTestCase):
    """
    Streams of groups this node does not own: 307 to the owner, or 503 while unsettled.
    """

    owner = Redirect("node-b", "http://node-b.test:8080")

    def test_redirectEvents(self):
        """A poll for another node's group is 307 to the owner, same path and query."""
        self.h.ownership.set(self.h.streams.groupOf(CID), self.owner)
        token = self.h.token("alice")
        p = path(CID, f"events?after=3&timeout=20&access_token={token}")
        answer = self.h.call("GET", p, user=None)
        self.assertEqual(answer.code, 307, answer.body)
        self.assertEqual(answer.header("location"), "http://node-b.test:8080" + p)
        self.assertEqual(answer.header("x-hpchat-owner"), "node-b")
        self.assertEqual(answer.header("content-type"), JSON_TYPE)
        self.assertIsInstance(answer.json, dict)
        self.assertEqual(self.h.streams._streams, {})

    def test_redirectSend(self):
        """A send for another node's group is 307 and writes nothing here."""
        self.h.ownership.set(self.h.streams.groupOf(CID), self.owner)
        d = self.h.send(CID, "alice", "elsewhere", clientId="r1")
        self.h.settle()
        answer = fired(d)
        self.assertEqual(answer.code, 307)
        self.assertEqual(answer.header("location"),
                         "http://node-b.test:8080" + path(CID, "messages"))
        self.assertEqual(answer.header("x-hpchat-owner"), "node-b")
        self.assertEqual(self.h.store.appendCalls, 0)
        self.assertEqual(self.h.store.claims, [])

    def test_redirectTypingAndHistory(self):
        """Typing and history redirect as well."""
        self.h.ownership.set(self.h.streams.groupOf(CID), self.owner)
        typing = self.h.call("POST", path(CID, "typing"), body={"typing": True})
        history = self.h.call("GET", path(CID, "messages?before=5&limit=10"))
        self.assertEqual((typing.code, history.code), (307, 307))
        self.assertEqual(history.header("location"),
                         "http://node-b.test:8080" + path(CID, "messages?before=5&limit=10"))

    def test_redirectInbox(self):
        """The inbox of a user whose group is elsewhere redirects too."""
        self.h.ownership.set(self.h.streams.groupOf("inbox:bob"), self.owner)
        answer = self.h.call("GET", "/v1/inbox/events?after=0", user="bob")
        self.assertEqual(answer.code, 307)
        self.assertEqual(answer.header("location"),
                         "http://node-b.test:8080/v1/inbox/events?after=0")
        self.assertEqual(answer.header("x-hpchat-owner"), "node-b")

    def test_unsettled(self):
        """An unsettled group is 503 unavailable with Retry-After."""
        self.h.ownership.set(self.h.streams.groupOf(CID), Unsettled())
        answer = self.h.call("GET", path(CID, "events?timeout=0"))
        self.assertError(answer, 503, "unavailable")
        self.assertEqual(answer.header("retry-after"), "1")

    def test_unsettledRetryAfter(self):
        """Retry-After is the route's retryAfter in whole seconds, at least 1."""
        self.h.ownership.set(self.h.streams.groupOf(CID), Unsettled(2.6))
        self.assertEqual(self.h.call("GET", path(CID, "messages")).header("retry-after"), "3")
        self.h.ownership.set(self.h.streams.groupOf(CID), Unsettled(0.1))
        self.assertEqual(self.h.call("GET", path(CID, "messages")).header("retry-after"), "1")

    def test_unsettledSend(self):
        """A send to an unsettled group is 503 and writes nothing."""
        self.h.ownership.set(self.h.streams.groupOf(CID), Unsettled())
        answer = self.h.sent(CID, "alice", "nowhere")
        self.assertError(answer, 503, "unavailable")
        self.assertIsNotNone(answer.header("retry-after"))
        self.assertEqual(self.h.store.appendCalls, 0)

    def test_claimOnDemand(self):
        """A route still being claimed (a Deferred) is waited for, then served."""
        claiming: defer.Deferred = defer.Deferred()
        group = self.h.streams.groupOf(CID)
        self.h.ownership.set(group, claiming)
        d = self.h.request("GET", path(CID, "events?timeout=0"))
        self.h.flush()
        self.assertNoResult(d)
        self.h.ownership.set(group, Local(7))
        claiming.callback(Local(7))
        answer = self.h.answer(d)
        self.assertEqual(answer.code, 200)
        self.assertIn((group, 7, CID), self.h.store.claims)

    def test_sharedClaim(self):
        """Several requests waiting on the same claim are all served when it completes."""
        claiming: defer.Deferred = defer.Deferred()
        group = self.h.streams.groupOf(CID)
        self.h.ownership.set(group, claiming)
        polls = [self.h.request("GET", path(CID, "events?timeout=0"), user=u)
                 for u in ["alice", "bob"]]
        self.h.flush()
        self.h.ownership.set(group, Local(1))
        claiming.callback(Local(1))
        self.assertEqual([self.h.answer(d).code for d in polls], [200, 200])

    def test_disconnectDuringClaim(self):
        """A client leaving while its group is claimed does not cancel the claim for others."""
        claiming: defer.Deferred = defer.Deferred()
        group = self.h.streams.groupOf(CID)
        self.h.ownership.set(group, claiming)
        gone = self.h.request("GET", path(CID, "events?timeout=0"), user="alice")
        stays = self.h.request("GET", path(CID, "events?timeout=0"), user="bob")
        self.h.flush()
        gone.cancel()
        self.failureResultOf(gone)
        self.h.flush()
        self.assertFalse(claiming.called)
        self.h.ownership.set(group, Local(1))
        claiming.callback(Local(1))
        self.assertEqual(self.h.answer(stays).code, 200)

    def test_claimFailed(self):
        """A claim that fails is 503 unavailable with Retry-After, not a 500."""
        claiming: defer.Deferred = defer.Deferred()
        self.h.ownership.set(self.h.streams.groupOf(CID), claiming)
        d = self.h.request("GET", path(CID, "events?timeout=0"))
        self.h.flush()
        claiming.errback(ConnectionRefusedError("etcd is down"))
        answer = self.h.answer(d)
        self.assertError(answer, 503, "unavailable")
        self.assertIsNotNone(answer.header("retry-after"))
        # The ownership owns its shared claim Deferred and consumes its outcome.
        claiming.addErrback(lambda f: None)

    def test_lostWhileWaiting(self):
        """A waiting poll whose group is lost is answered with 307 to the new owner."""
        d = self.poll("alice", after=0, timeout=30)
        self.h.flush()
        self.assertNoResult(d)
        self.h.ownership.lose([self.h.streams.groupOf(CID)])
        answer = self.h.answer(d)
        self.assertEqual(answer.code, 307, answer.body)
        self.assertEqual(answer.header("x-hpchat-owner"), "node-b")
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(self.h.pendingCalls(), [])

    def test_draining(self):
        """A node shutting down answers stream requests with 503 and Retry-After."""
        self.h.api.draining = True
        answer = self.h.call("GET", path(CID, "events?timeout=0"))
        self.assertError(answer, 503, "unavailable")
        self.assertIsNotNone(answer.header("retry-after"))

    def test_authBeforeRedirect(self):
        """A request without a token is 401, not redirected."""
        self.h.ownership.set(self.h.streams.groupOf(CID), self.owner)
        answer = self.h.call("GET", path(CID, "events"), user=None)
        self.assertError(answer, 401, "unauthorized")


class OperationsTests(_APITestMixin, SynchronousTestCase):
    """
    /v1/cluster, /healthz, /readyz and /metrics.
    """

    def test_cluster(self):
        """The cluster view lists this node, the nodes and the owner of every group."""
        self.h.ownership.set(5, Redirect("node-b", "http://node-b.test:8080"))
        self.h.ownership.nodes["node-b"] = "http://node-b.test:8080"
        answer = self.h.call("GET", "/v1/cluster", user=None)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("content-type"), JSON_TYPE)
        body = answer.json
        self.assertEqual(set(body), {"node", "nodes", "groups"})
        self.assertEqual(body["node"], "node-a")
        self.assertEqual(body["nodes"], {"node-a": BASE, "node-b": "http://node-b.test:8080"})
        self.assertEqual(len(body["groups"]), 64)
        self.assertEqual(body["groups"]["5"], "node-b")
        self.assertEqual(body["groups"]["0"], "node-a")

    def test_healthz(self):
        """/healthz is 200 JSON."""
        answer = self.h.call("GET", "/healthz", user=None)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("content-type"), JSON_TYPE)

    def test_ready(self):
        """/readyz is 200 when the store is open and the lease held."""
        answer = self.h.call("GET", "/readyz", user=None)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json["status"], "ready")

    def test_storeNotReady(self):
        """/readyz is 503 while the store is not open."""
        h = self.makeHarness(store=MemoryEventStore(ready=False))
        answer = h.call("GET", "/readyz", user=None)
        self.assertEqual(answer.code, 503)
        self.assertEqual(answer.json["error"]["code"], "unavailable")
        self.assertIn("store", answer.json["error"]["message"])

    def test_ownershipNotReady(self):
        """/readyz is 503 without a valid lease."""
        self.h.ownership.isReady = False
        answer = self.h.call("GET", "/readyz", user=None)
        self.assertEqual(answer.code, 503)
        self.assertEqual(answer.json["error"]["code"], "unavailable")

    def test_drainingNotReady(self):
        """/readyz is 503 while the node shuts down."""
        self.h.api.draining = True
        self.assertEqual(self.h.call("GET", "/readyz", user=None).code, 503)

    def test_metrics(self):
        """/metrics is Prometheus text with hpchat_ series."""
        self.h.sent(CID, "alice", "count me")
        answer = self.h.call("GET", "/metrics", user=None)
        self.assertEqual(answer.code, 200)
        self.assertTrue(answer.header("content-type").startswith("text/plain"))
        text = answer.body.decode("utf-8")
        self.assertIn("# TYPE hpchat_messages_committed_total counter", text)
        self.assertIn('hpchat_messages_committed_total{kind="dm"}', text)
        self.assertIn("hpchat_waiting_polls", text)
        self.assertIn("hpchat_persist_pending", text)


class RoutingTests(_APITestMixin, SynchronousTestCase):
    """
    Unknown routes and wrong methods answer JSON errors.
    """

    def test_notFound(self):
        """Unknown paths are 404 not_found in JSON."""
        for p in ["/nope", "/v1/conversation", path(CID, "nope"), "/v1/inbox",
                  "/v2/cluster"]:
            self.assertError(self.h.call("GET", p), 404, "not_found")

    def test_methodNotAllowed(self):
        """A wrong method is 405 in JSON with an Allow header."""
        answer = self.h.call("PUT", path(CID, "messages"), body={"text": "x"})
        self.assertError(answer, 405)
        self.assertEqual(set(answer.header("allow").replace(" ", "").split(",")) - {"HEAD"},
                         {"GET", "POST"})
        for method, p in [("POST", "/healthz"), ("DELETE", "/v1/cluster"),
                          ("GET", path(CID, "typing")), ("POST", path(CID, "events")),
                          ("POST", "/v1/inbox/events"), ("POST", "/metrics")]:
            self.assertError(self.h.call(method, p, data=b"{}"), 405)
        self.assertEqual(self.h.store.appendCalls, 0)

    def test_doubledSlash(self):
        """A path with a doubled slash is not a server error."""
        answer = self.h.call("GET", "/v1//cluster")
        self.assertLess(answer.code, 500, answer.body)


class FakesTests(SynchronousTestCase):
    """
    The fakes behave as the interfaces say, so the tests above mean something.
    """

    def setUp(self):
        self.store = MemoryEventStore()

    def event(self, seq: int, stream: str = CID, group: int = 3, sender: str = "alice",
              clientId: str | None = None, id: str | None = None) -> Event:
        return Event(stream=stream, seq=seq, id=id or f"e{stream}{seq}", group=group,
                     type="message", sender=sender, ts=NOW, client_id=clientId,
                     data={"text": str(seq)})

    def test_provides(self):
        """The fakes provide IEventStore and IOwnership."""
        self.assertTrue(verifyObject(IEventStore, self.store))
        self.assertTrue(verifyObject(IOwnership, FakeOwnership()))

    def test_fences(self):
        """A lower token is refused by claim and append, writing nothing."""
        snapshot = self.successResultOf(self.store.claim(3, 5, CID, 10))
        self.assertEqual((snapshot.last_seq, list(snapshot.recent)), (0, []))
        self.failureResultOf(self.store.claim(3, 4, CID, 10), FenceRejected)
        failure = self.failureResultOf(self.store.append([self.event(1)], {3: 4}),
                                       FenceRejected)
        self.assertEqual(failure.value.groups, (3,))
        self.assertEqual(self.store.stored(CID), [])
        self.assertIsNone(self.successResultOf(self.store.append([self.event(1)], {3: 6})))
        self.assertEqual(self.store.fences[3], 6)

    def test_conflictsAreAtomic(self):
        """A taken seq, id or (sender, client_id) fails the whole batch."""
        self.successResultOf(self.store.append([self.event(1, clientId="c")], {3: 1}))
        for clash in [self.event(1), self.event(2, id=f"e{CID}1"),
                      self.event(2, clientId="c")]:
            f = self.failureResultOf(
                self.store.append([self.event(2, stream="dm:x:y", group=4), clash],
                                  {3: 1, 4: 1}), StreamConflict)
            self.assertEqual(f.value.groups, (3,))
        self.failureResultOf(self.store.append([self.event(2), self.event(2)], {3: 1}),
                             StreamConflict)
        self.assertEqual([e.seq for e in self.store.stored(CID)], [1])
        self.assertEqual(self.store.stored("dm:x:y"), [])
        self.successResultOf(self.store.append([self.event(2, sender="bob", clientId="c")],
                                               {3: 1}))

    def test_reads(self):
        """readAfter, readBefore and the lookups follow the interface."""
        self.successResultOf(self.store.append(
            [self.event(s, clientId=f"c{s}") for s in range(1, 8)], {3: 1}))
        seqs = lambda d: [e.seq for e in self.successResultOf(d)]  # noqa: E731
        self.assertEqual(seqs(self.store.readAfter(CID, 2, 3)), [3, 4, 5])
        self.assertEqual(seqs(self.store.readBefore(CID, 5, 2)), [3, 4])
        self.assertEqual(seqs(self.store.readBefore(CID, None, 2)), [6, 7])
        self.assertEqual(self.successResultOf(self.store.findClientId(CID, "alice", "c4")).seq, 4)
        self.assertIsNone(self.successResultOf(self.store.findClientId(CID, "bob", "c4")))
        self.assertEqual(self.successResultOf(self.store.findEventId(CID, f"e{CID}6")).seq, 6)
        snapshot = self.successResultOf(self.store.claim(3, 1, CID, 3))
        self.assertEqual((snapshot.last_seq, [e.seq for e in snapshot.recent]), (7, [5, 6, 7]))

    def test_holdAndFail(self):
        """Held appends are neither written nor fired until released; failNext fails."""
        self.store.hold()
        d = self.store.append([self.event(1)], {3: 1})
        self.assertNoResult(d)
        self.assertEqual(self.store.stored(CID), [])
        self.store.release()
        self.successResultOf(d)
        self.assertEqual(len(self.store.stored(CID)), 1)
        self.store.failNext(1)
        self.failureResultOf(self.store.append([self.event(2)], {3: 1}), StoreError)
        self.successResultOf(self.store.append([self.event(2)], {3: 1}))


class DevLoginTests(SynchronousTestCase):
    def test_offByDefault(self):
        """
        Without [auth] dev_login the endpoint does not exist.
        """
        h = Harness()
        self.addCleanup(h.stop)
        answer = h.call("POST", "/v1/dev/login", user=None, body={"user": "alice"})
        self.assertEqual(answer.code, 404)

    def test_mintsAToken(self):
        """
        With dev_login on, a token for the named user is returned and works.
        """
        h = Harness()
        self.addCleanup(h.stop)
        h.api._devLogin = True
        answer = h.call("POST", "/v1/dev/login", user=None, body={"user": "carol"})
        self.assertEqual(answer.code, 200)
        self.assertEqual(h.auth.userFor(answer.json["token"]), "carol")
        bad = h.call("POST", "/v1/dev/login", user=None, body={"user": "no way"})
        self.assertEqual(bad.code, 400)


class PageTests(SynchronousTestCase):
    def test_pageAndStaticFiles(self):
        """
        / serves the chat page; /static/ its files; a missing file is 404.
        """
        h = Harness()
        self.addCleanup(h.stop)
        page = h.call("GET", "/", user=None)
        self.assertEqual(page.code, 200)
        self.assertIn(b"<!doctype html>", page.body.lower())
        self.assertEqual(h.call("GET", "/static/nope.js", user=None).code, 404)
