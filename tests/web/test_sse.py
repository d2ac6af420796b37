"""
Tests for L{hpchat.web.sse}: the Server-Sent Events routes over the API harness (real
streams, persister, notifier and authenticator on a Clock), read as they are written.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from hpchat import metrics
from hpchat.config import LimitsConfig
from hpchat.groups import Redirect
from hpchat.tap import _answerPolls
from hpchat.web import sse
from tests.web.fakes import BASE, GENEROUS, Harness, fired

CID = "dm:alice:bob"
STREAM = f"/v1/conversations/{quote(CID, safe=':')}/stream"
JSON_TYPE = "application/json; charset=utf-8"


def parse(data: bytes) -> list[dict]:
    """
    The records of an event stream: each a dict of its fields (C{"comment"} for a comment).
    """
    records = []
    for block in data.split(b"\n\n"):
        if not block:
            continue
        record: dict = {}
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                record["comment"] = line[1:].strip().decode()
                continue
            name, _, value = line.partition(b":")
            record[name.decode()] = value[1:].decode() if value.startswith(b" ") else value.decode()
        records.append(record)
    return records


class _Body(Protocol):
    def __init__(self):
        self.data = b""
        self.ended = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.ended = reason


class Reader:
    """
    A client of one stream: C{response} once the head arrived, C{body} (a L{_Body}) while it
    is open, or C{answer} (status, JSON) for an answer that is not a stream.
    """

    def __init__(self, h: Harness, path: str, user: str | None = "alice",
                 headers: dict | None = None, token: str | None = None):
        self.h = h
        allHeaders = {}
        if user is not None and token is None:
            allHeaders[b"authorization"] = [b"Bearer " + h.token(user).encode()]
        for k, v in (headers or {}).items():
            allHeaders[k.encode()] = [v.encode()]
        self.response = None
        self.body: _Body | None = None
        self.answer = None
        d = h.stub.request("GET", BASE + path, headers=allHeaders, allow_redirects=False)
        d.addCallback(self._head)
        h.flush()

    def _head(self, response):
        self.response = response
        if response.code == 200:
            self.body = _Body()
            response.deliverBody(self.body)
        else:
            self.h.stub.content(response).addCallback(
                lambda content: setattr(self, "answer", (response.code, json.loads(content))))

    def header(self, name: str) -> str | None:
        values = self.response.headers.getRawHeaders(name)
        return values[0] if values else None

    def records(self) -> list[dict]:
        self.h.flush()
        return parse(self.body.data)

    def events(self, kind: str | None = None) -> list[dict]:
        return [r for r in self.records() if "event" in r and (kind is None or r["event"] == kind)]

    def lastId(self) -> str | None:
        ids = [r["id"] for r in self.records() if "id" in r]
        return ids[-1] if ids else None

    @property
    def ended(self) -> bool:
        self.h.flush()
        return self.body.ended is not None

    def disconnect(self) -> None:
        self.body.transport.stopProducing()
        self.h.flush()


class _SSEMixin:
    harnessArgs: dict = {}

    def setUp(self):
        self.h = Harness(**self.harnessArgs)
        self.addCleanup(self.h.stop)

    def open(self, path: str = STREAM + "?after=0", **kw) -> Reader:
        reader = Reader(self.h, path, **kw)
        self.assertIsNotNone(reader.response)
        self.assertEqual(reader.response.code, 200, reader.answer)
        self.addCleanup(lambda: reader.body.ended is None and reader.disconnect())
        return reader

    def send(self, count: int, user: str = "bob", text: str = "m") -> list[int]:
        sends = [self.h.send(CID, user, f"{text}{i}") for i in range(count)]
        self.h.settle()
        return [fired(d).json["message"]["seq"] for d in sends]

    def assertJSONError(self, reader: Reader, status: int, code: str):
        self.h.flush()
        self.assertEqual(reader.response.code, status)
        self.assertEqual(reader.header("content-type"), JSON_TYPE)
        got, body = reader.answer
        self.assertEqual(body["error"]["code"], code)


class FramingTests(_SSEMixin, SynchronousTestCase):
    def test_streamHead(self):
        """
        A stream is 200 text/event-stream, not cached, and starts with retry: and an id-only
        record of its starting cursor.
        """
        reader = self.open()
        self.assertEqual(reader.header("content-type"), "text/event-stream; charset=utf-8")
        self.assertEqual(reader.header("cache-control"), "no-cache")
        first = reader.records()[0]
        self.assertEqual(first, {"retry": str(sse.RETRY_MS), "id": "0"})

    def test_head(self):
        """
        HEAD answers the stream's head and ends: nothing is left waiting.
        """
        d = self.h.request("HEAD", STREAM)
        answer = self.h.answer(d)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("content-type"), "text/event-stream; charset=utf-8")
        self.assertEqual(answer.body, b"")
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(len(self.h.api.eventStreams), 0)
        self.assertEqual(len(self.h.limits.polls), 0)

    def test_snapshotAtStart(self):
        """
        A conversation stream starts with the typing and read state, carrying the cursor.
        """
        self.send(2)
        reader = self.open(STREAM + "?after=2")
        records = reader.records()
        self.assertEqual(records[1:], [
            {"event": "typing", "id": "2",
             "data": json.dumps({"typing": [], "typing_version": 0}, separators=(",", ":"))},
            {"event": "read", "id": "2",
             "data": json.dumps({"read": {"alice": 0, "bob": 2}, "read_version": 2},
                                separators=(",", ":"))},
        ])

    def test_message(self):
        """
        A message is C{event: message}, its seq the id, the data the long-poll's Message
        object on one line.
        """
        reader = self.open()
        self.send(1, text="hello\nworld")
        polled = self.h.answer(self.h.events(CID, "alice", after=0, timeout=0)).json["events"]
        [message] = reader.events("message")
        self.assertEqual(message["id"], "1")
        self.assertEqual(json.loads(message["data"]), polled[0])
        self.assertNotIn(b"hello\nworld", reader.body.data)

    def test_typing(self):
        """
        Typing marks arrive as C{event: typing} with the cursor as id; a message by the
        typist clears them.
        """
        reader = self.open()
        self.h.call("POST", f"/v1/conversations/{CID}/typing", user="bob", body={"typing": True})
        typing = reader.events("typing")
        self.assertEqual(json.loads(typing[-1]["data"]), {"typing": ["bob"], "typing_version": 1})
        self.assertEqual(typing[-1]["id"], "0")
        self.send(1)
        records = [r for r in reader.records() if r.get("event") in ("message", "typing")][-2:]
        self.assertEqual([r["event"] for r in records], ["message", "typing"])
        self.assertEqual([r["id"] for r in records], ["1", "1"])
        self.assertEqual(json.loads(records[1]["data"])["typing"], [])
        self.h.advance(self.h.chat.typing_ttl + 1)

    def test_read(self):
        """
        A moved read marker arrives as C{event: read} with the cursor as id.
        """
        self.send(1)
        reader = self.open(STREAM + "?after=1")
        marked = self.h.request("POST", f"/v1/conversations/{CID}/read", user="alice",
                                body={"seq": 1})
        self.h.settle()
        self.assertEqual(fired(marked).code, 200)
        read = reader.events("read")[-1]
        self.assertEqual(read["id"], "1")
        self.assertEqual(json.loads(read["data"])["read"], {"alice": 1, "bob": 1})

    def test_notification(self):
        """
        The inbox stream writes C{event: notification} with the InboxEvent of the long-poll.
        """
        reader = self.open("/v1/inbox/stream?after=0")
        self.send(1)
        self.h.settle()
        polled = self.h.answer(self.h.request("GET", "/v1/inbox/events?after=0&timeout=0",
                                              user="alice")).json["events"]
        [notification] = reader.events()
        self.assertEqual(notification["event"], "notification")
        self.assertEqual(notification["id"], "1")
        self.assertEqual(json.loads(notification["data"]), polled[0])

    def test_fromNow(self):
        """
        Without after, a stream starts at the last seq, and says so in its first id.
        """
        self.send(3)
        reader = self.open(STREAM)
        self.assertEqual(reader.records()[0]["id"], "3")
        self.assertEqual(reader.events("message"), [])
        self.send(1)
        self.assertEqual([r["id"] for r in reader.events("message")], ["4"])

    def test_metrics(self):
        """
        The open streams gauge and the events written counter move.
        """
        before = metrics.sseEvents._value.get()
        gauge = metrics.sseStreams._value.get()
        reader = self.open()
        self.assertEqual(metrics.sseStreams._value.get(), gauge + 1)
        self.send(3)
        # The snapshot, and each message with the read event of its sender's marker.
        self.assertEqual(metrics.sseEvents._value.get() - before, 2 + 3 * 2)
        reader.disconnect()
        self.assertEqual(metrics.sseStreams._value.get(), gauge)


class ResumeTests(_SSEMixin, SynchronousTestCase):
    # One batch for the whole burst: the in-memory store answers at once, so the persister's
    # group commit would run a later batch's callbacks before an earlier one's.
    harnessArgs = {"batchSize": 1000}

    def resume(self, path: str, headers: dict | None = None):
        reader = self.open(STREAM + "?after=0")
        self.send(5)
        seen = [int(r["id"]) for r in reader.events("message")]
        self.assertEqual(seen, [1, 2, 3, 4, 5])
        last = reader.lastId()
        reader.disconnect()
        # A burst while away, beyond one poll's batch, and more once back.
        self.send(230)
        again = self.open(path.format(last=last), headers=(
            {k: v.format(last=last) for k, v in headers.items()} if headers else None))
        self.send(10)
        seen += [int(r["id"]) for r in again.events("message")]
        self.assertEqual(seen, list(range(1, 246)))
        texts = [json.loads(r["data"])["seq"] for r in again.events("message")]
        self.assertEqual(texts, list(range(6, 246)))

    def test_lastEventId(self):
        """
        Last-Event-ID resumes after the last event seen: no gap, no repeat, across a burst.
        """
        self.resume(STREAM, {"Last-Event-ID": "{last}"})

    def test_after(self):
        """
        ?after= resumes the same way.
        """
        self.resume(STREAM + "?after={last}")

    def test_lastEventIdWins(self):
        """
        With both, Last-Event-ID wins over ?after=.
        """
        self.resume(STREAM + "?after=1", {"Last-Event-ID": "{last}"})

    def test_typingIdResumes(self):
        """
        The id of a typing event is the last message's seq, so resuming from it repeats
        nothing and skips nothing.
        """
        reader = self.open()
        self.send(2)
        self.h.call("POST", f"/v1/conversations/{CID}/typing", user="bob", body={"typing": True})
        self.assertEqual(reader.records()[-1]["event"], "typing")
        last = reader.lastId()
        self.assertEqual(last, "2")
        reader.disconnect()
        self.send(1)
        again = self.open(STREAM, headers={"Last-Event-ID": last})
        self.assertEqual([r["id"] for r in again.events("message")], ["3"])
        self.h.advance(self.h.chat.typing_ttl + 1)

    def test_inboxResume(self):
        """
        The inbox stream resumes by Last-Event-ID too.
        """
        reader = self.open("/v1/inbox/stream")
        self.send(3)
        self.h.settle()
        self.assertEqual([r["id"] for r in reader.events()], ["1", "2", "3"])
        reader.disconnect()
        self.send(2)
        self.h.settle()
        again = self.open("/v1/inbox/stream?after=0", headers={"Last-Event-ID": "3"})
        self.assertEqual([r["id"] for r in again.events()], ["4", "5"])


class HeartbeatTests(_SSEMixin, SynchronousTestCase):
    harnessArgs = {"stream_heartbeat": 15.0}

    def test_heartbeat(self):
        """
        A comment heartbeat is written before 15 s pass without anything else (at the
        loop's last tick before that: after 12 s at the soonest).
        """
        reader = self.open()

        def beats() -> int:
            return len([r for r in reader.records() if r.get("comment") == "hb"])

        self.h.advance(11.9)
        self.assertEqual(beats(), 0)
        self.h.advance(3.1)
        self.assertEqual(beats(), 1)
        self.h.advance(10)
        self.send(1)
        self.h.advance(10)
        self.assertEqual(beats(), 1)
        self.h.advance(5.1)
        self.assertEqual(beats(), 2)
        self.assertFalse(reader.ended)


class SharedHeartbeatTests(_SSEMixin, SynchronousTestCase):
    """
    One loop of the hub writes every stream's heartbeats and checks every stream's token:
    no timer and no Deferred of a stream's own, the clock run in small steps as real time.
    """

    harnessArgs = {"stream_heartbeat": 15.0}
    #: How late a heartbeat or a closing may be: one tick of the loop, and a step.
    late = 15.0 / sse.TICKS_PER_HEARTBEAT + 0.25

    def beats(self, reader: Reader) -> int:
        return len([r for r in reader.records() if r.get("comment") == "hb"])

    def test_silentBeatsBusyDoesNot(self):
        """
        A silent stream gets C{: hb} at the loop's last tick before a heartbeat of silence
        (12 s, with 5 ticks per 15 s heartbeat), and again each time; one written to more
        often than that gets none.
        """
        busy = self.open()
        silent = self.open("/v1/inbox/stream", user="carol")
        for _ in range(3):
            self.h.send(CID, "bob", "m")
            self.h.run(3.75, step=0.25)
        # 11.25 s
        self.assertEqual(self.beats(silent), 0)
        self.h.run(0.75 + self.late, step=0.25)
        self.assertEqual(self.beats(silent), 1)
        for _ in range(5):
            self.h.send(CID, "bob", "m")
            self.h.run(5, step=0.25)
        # At 40.25 s: beats at 12, 24 and 36 s, never 15 s of silence.
        self.assertEqual(self.beats(silent), 3)
        self.assertEqual(self.beats(busy), 0)
        self.assertEqual(len(busy.events("message")), 8)
        self.assertFalse(busy.ended or silent.ended)

    def test_beatsSpreadOverTicks(self):
        """
        Each tick of the loop visits a slice of the open streams, not all of them: 90
        silent streams get their first heartbeats over many ticks, each stream one.
        """
        readers = [self.open("/v1/inbox/stream", user=f"u{i}") for i in range(90)]
        self.h.run(11.9, step=0.1)
        perTick = []
        for _ in range(40):
            before = sum(self.beats(r) for r in readers)
            self.h.run(0.1, step=0.1)
            perTick.append(sum(self.beats(r) for r in readers) - before)
        self.assertEqual([self.beats(r) for r in readers], [1] * 90)
        self.assertGreater(len([n for n in perTick if n]), 10)
        self.assertLess(max(perTick), 30)

    def test_tokenExpiryWithinAHeartbeat(self):
        """
        A stream whose token expires is closed within one tick of the loop (so within one
        heartbeat), even while it is busy.
        """
        token = self.h.auth.mint("alice", 20)
        reader = self.open(STREAM + "?access_token=" + token, user=None)
        self.h.run(19.75, step=0.25)
        self.assertFalse(reader.ended)
        self.h.send(CID, "bob", "m")
        self.h.run(0.25 + self.late, step=0.25)
        self.assertTrue(reader.ended)
        self.assertEqual(len(reader.events("message")), 1)
        self.assertEqual((self.h.waiters(), len(self.h.limits.polls)), (0, 0))

    def test_noTimerPerStream(self):
        """
        The clock holds as many calls with one stream open as with ten, before and after
        deliveries; once the last stream is closed, the heartbeat loop is stopped too.
        """

        def calls() -> int:
            return len(self.h.clock.getDelayedCalls()) - len(self.h.deadlines())

        idle = calls()
        first = self.open()
        one = calls()
        self.assertEqual(one, idle + 1)
        readers = [first] + [self.open(user=("alice", "bob")[i % 2]) for i in range(9)]
        self.assertEqual(len(self.h.api.eventStreams), 10)
        self.assertEqual(calls(), one)
        self.send(3)
        self.assertEqual([len(r.events("message")) for r in readers], [3] * 10)
        self.assertEqual(calls(), one)
        for reader in readers:
            reader.disconnect()
        self.assertEqual(calls(), idle)
        self.assertEqual(self.h.waiters(), 0)


class RefusedTests(_SSEMixin, SynchronousTestCase):
    def test_noToken(self):
        reader = Reader(self.h, STREAM, user=None)
        self.assertJSONError(reader, 401, "unauthorized")

    def test_badToken(self):
        reader = Reader(self.h, STREAM + "?access_token=nonsense", user=None)
        self.assertJSONError(reader, 401, "unauthorized")

    def test_accessTokenQuery(self):
        """
        EventSource cannot send headers: the token may come as ?access_token=.
        """
        reader = self.open(STREAM + "?access_token=" + self.h.token("bob"), user=None)
        self.assertEqual(reader.records()[0]["id"], "0")

    def test_notParticipant(self):
        reader = Reader(self.h, STREAM, user="carol")
        self.assertJSONError(reader, 403, "forbidden")

    def test_badConversation(self):
        reader = Reader(self.h, "/v1/conversations/dm:bob:alice/stream")
        self.assertJSONError(reader, 400, "bad_conversation")

    def test_notFound(self):
        reader = Reader(self.h, "/v1/inbox/stream/more")
        self.assertJSONError(reader, 404, "not_found")

    def test_badCursor(self):
        reader = Reader(self.h, STREAM, headers={"Last-Event-ID": "x1"})
        self.assertJSONError(reader, 400, "bad_request")
        reader = Reader(self.h, STREAM + "?after=-1")
        self.assertJSONError(reader, 400, "bad_request")

    def test_cursorAhead(self):
        reader = Reader(self.h, STREAM, headers={"Last-Event-ID": "5"})
        self.assertJSONError(reader, 409, "cursor_ahead")
        self.assertEqual(len(self.h.limits.polls), 0)

    def test_redirect(self):
        """
        A stream served elsewhere is a 307 to its owner, the query kept.
        """
        group = self.h.streams.groupOf(CID)
        self.h.ownership.set(group, Redirect("node-b", "http://node-b.test:8080"))
        reader = Reader(self.h, STREAM + "?after=3&access_token=" + self.h.token("alice"),
                        user=None)
        self.assertJSONError(reader, 307, "moved")
        self.assertEqual(reader.header("location"),
                         "http://node-b.test:8080" + STREAM + "?after=3&access_token="
                         + self.h.token("alice"))
        self.assertEqual(reader.header("x-hpchat-owner"), "node-b")

    def test_draining(self):
        self.h.api.draining = True
        reader = Reader(self.h, "/v1/inbox/stream")
        self.assertJSONError(reader, 503, "unavailable")


class ClosingTests(_SSEMixin, SynchronousTestCase):
    def test_ownershipLost(self):
        """
        Losing the group ends the stream cleanly; a reconnection is redirected.
        """
        reader = self.open()
        self.assertEqual(self.h.waiters(), 1)
        self.h.ownership.lose([self.h.streams.groupOf(CID)])
        self.assertTrue(reader.ended)
        self.assertTrue(reader.body.ended.check(ResponseDone))
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(len(self.h.api.eventStreams), 0)
        again = Reader(self.h, STREAM, headers={"Last-Event-ID": "0"})
        self.assertJSONError(again, 307, "moved")

    def test_ownershipLostClosesOnce(self):
        """
        The stream is told twice that its group moved (its listener is lost, and the hub
        drops the group's streams): it is closed once, its places given back once.
        """
        self.open()
        self.open(user="bob")
        released: list[str] = []
        hub = self.h.api.eventStreams
        release = hub.release
        hub.release = lambda user: (released.append(user), release(user))
        self.h.ownership.lose([self.h.streams.groupOf(CID)])
        self.assertEqual(sorted(released), ["alice", "bob"])
        self.assertEqual((len(self.h.limits.polls), self.h.presence.tracker.online), (0, 0))
        self.assertEqual((self.h.waiters(), self.h.streams.waiting, len(hub)), (0, 0, 0))

    def test_otherGroupKept(self):
        reader = self.open()
        self.h.ownership.lose([(self.h.streams.groupOf(CID) + 1) % self.h.chat.groups])
        self.assertFalse(reader.ended)

    def test_drain(self):
        """
        The node's polls stage closes open streams (and answers long-polls).
        """
        reader = self.open()
        inbox = self.open("/v1/inbox/stream")
        poll = self.h.events(CID, "bob", after=0, timeout=30)
        self.h.flush()
        self.h.api.draining = True
        _answerPolls(self.h.streams, self.h.api.eventStreams)()
        self.assertTrue(reader.ended and inbox.ended)
        self.assertTrue(reader.body.ended.check(ResponseDone))
        self.assertEqual(self.h.answer(poll).code, 200)
        self.assertEqual(self.h.waiters(), 0)

    def test_drainByAnsweredPoll(self):
        """
        A stream whose wait is answered while the node drains closes too.
        """
        reader = self.open()
        self.h.api.draining = True
        self.h.streams.answerWaiting()
        self.assertTrue(reader.ended)

    def test_tokenExpiry(self):
        """
        A stream ends within one heartbeat once its token has expired; reconnecting with it
        is 401.
        """
        token = self.h.auth.mint("alice", 20)
        reader = self.open(STREAM + "?access_token=" + token, user=None)
        self.h.advance(15.1)
        self.assertFalse(reader.ended)
        self.h.advance(15)
        self.assertTrue(reader.ended)
        self.assertEqual(self.h.waiters(), 0)
        again = Reader(self.h, STREAM + "?access_token=" + token, user=None)
        self.assertJSONError(again, 401, "unauthorized")

    def test_disconnect(self):
        """
        A client that goes away frees its waiter, its place in the limits and presence.
        """
        reader = self.open()
        self.assertEqual(self.h.waiters(), 1)
        self.assertEqual(self.h.limits.polls.count("alice"), 1)
        self.assertEqual(self.h.presence.tracker.online, 1)
        reader.disconnect()
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(self.h.limits.polls.count("alice"), 0)
        self.assertEqual(self.h.presence.tracker.online, 0)
        self.assertEqual(len(self.h.api.eventStreams), 0)
        self.assertEqual(self.h.pendingCalls(), [])

    def test_slowReader(self):
        """
        A client that does not read (its transport paused the stream) is cut off once more
        than MAX_BACKLOG bytes wait for it; a paused stream under that stays open.
        """
        reader = self.open()
        [stream] = self.h.api.eventStreams.open
        stream.pauseProducing()
        self.send(5, text="x" * 100)
        self.assertFalse(reader.ended)
        stream.resumeProducing()
        stream.pauseProducing()
        limited = metrics.limited.labels("stream_backlog")._value.get()
        self.send(sse.MAX_BACKLOG // 4000 + 2, text="y" * 3990)
        self.assertTrue(stream.closed)
        self.assertTrue(reader.ended)
        self.assertEqual(metrics.limited.labels("stream_backlog")._value.get(), limited + 1)
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(len(self.h.limits.polls), 0)

    def test_resumedReaderKept(self):
        reader = self.open()
        [stream] = self.h.api.eventStreams.open
        for _ in range(3):
            stream.pauseProducing()
            self.send(sse.MAX_BACKLOG // 4000 // 2, text="y" * 3990)
            stream.resumeProducing()
        self.assertFalse(reader.ended)


class LimitTests(_SSEMixin, SynchronousTestCase):
    harnessArgs = {"limits": LimitsConfig(**{**GENEROUS.__dict__, "max_polls_per_user": 2})}

    def test_streamsCountAsPolls(self):
        """
        Open streams take places among the user's waiting long-polls: past the cap, a
        stream or a waiting long-poll is 429; a closed stream gives its place back.
        """
        first = self.open()
        self.open("/v1/inbox/stream")
        third = Reader(self.h, STREAM)
        self.assertJSONError(third, 429, "rate_limited")
        self.assertEqual(third.header("retry-after"), "1")
        poll = self.h.answer(self.h.events(CID, "alice", after=0, timeout=30))
        self.assertEqual(poll.code, 429)
        # Another user is not limited.
        self.open(user="bob")
        first.disconnect()
        self.open()


class _KleinMixin:
    """
    The same tests with the streams left to the Klein routes (twisted.web requests), as on
    a site without the edge's hot path.
    """

    def setUp(self):
        super().setUp()
        hot = self.h.site.hot
        find = hot.find
        hot.find = lambda request: None if request.path.endswith(b"/stream") else find(request)


class KleinFramingTests(_KleinMixin, FramingTests):
    def test_kleinRoute(self):
        """
        These streams are answered through twisted.web requests.
        """
        self.open()
        [stream] = self.h.api.eventStreams.open
        self.assertIsInstance(stream, sse.WebEventStream)


class KleinResumeTests(_KleinMixin, ResumeTests):
    pass


class KleinHeartbeatTests(_KleinMixin, HeartbeatTests):
    pass


class KleinSharedHeartbeatTests(_KleinMixin, SharedHeartbeatTests):
    pass


class KleinRefusedTests(_KleinMixin, RefusedTests):
    pass


class KleinClosingTests(_KleinMixin, ClosingTests):
    pass


class KleinLimitTests(_KleinMixin, LimitTests):
    pass
