"""
The HTTP/1.1 channel's lane for the hot routes, byte for byte over a StringTransport: answers
as twisted.web would give them, pipelining, fallbacks to twisted.web, disconnects.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from hpchat import metrics
from hpchat.web.channel import INCOMPLETE, MAX_PARTIAL, HotChannel, parseHead
from hpchat.web.site import HPChatSite, _resources
from tests.web.fakes import Harness

CID = "dm:alice:bob"


def parseAnswers(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """
    Split the bytes written on a connection into C{(status, headers, body)} answers.
    """
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size, _, rest = rest.partition(b"\r\n")
                size = int(size, 16)
                body, rest = body + rest[:size], rest[size + 2:]
                if not size:
                    break
            answers.append((status, headers, body))
            data = rest
            continue
        length = int(headers.get(b"content-length", b"0"))
        answers.append((status, headers, rest[:length]))
        data = rest[length:]
    return answers


class ChannelTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.addCleanup(self.h.stop)
        self.token = self.h.token("alice").encode()

    def connect(self, corsOrigins=()):
        resource, hot, cors = _resources(self.h.api, corsOrigins)
        site = HPChatSite(resource, hot=hot, cors=cors, reactor=self.h.clock,
                          parsePOSTFormSubmission=False)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.assertIsInstance(channel, HotChannel)
        transport = StringTransport()
        channel.makeConnection(transport)
        self.addCleanup(lambda: channel.connectionLost(None) if transport.connected else None)
        return channel, transport

    def get(self, path: str, extra: bytes = b"") -> bytes:
        return (b"GET %s HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer %s\r\n%s\r\n"
                % (path.encode(), self.token, extra))

    def post(self, path: str, body: dict, extra: bytes = b"") -> bytes:
        data = json.dumps(body).encode()
        return (b"POST %s HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                % (path.encode(), self.token, len(data), extra, data))

    def test_hotRequestAnsweredInTheLane(self):
        """
        A whole hot request in one read is answered without a twisted.web request, with the
        status line, Date, Content-Length and the handler's headers and body.
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0"))
        [(status, headers, body)] = parseAnswers(transport.value())
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["last_seq"], 0)
        self.assertEqual(headers[b"content-type"], b"application/json; charset=utf-8")
        self.assertEqual(headers[b"cache-control"], b"no-store")
        self.assertIn(b"GMT", headers[b"date"])
        self.assertEqual(channel.requests, [])
        self.assertTrue(transport.connected)

    def test_sendAnsweredOnceDurable(self):
        """
        A send is answered 201 once its batch is written; its status is counted.
        """
        counter = metrics.requests.labels("send", "201")
        before = counter._value.get()
        channel, transport = self.connect()
        channel.dataReceived(self.post(f"/v1/conversations/{CID}/messages",
                                       {"text": "hi", "client_id": "c1"}))
        self.assertEqual(transport.value(), b"")
        self.h.settle()
        [(status, _, body)] = parseAnswers(transport.value())
        self.assertEqual((status, json.loads(body)["message"]["seq"]), (201, 1))
        self.assertEqual(counter._value.get(), before + 1)

    def test_pipelinedRequestsAnsweredInOrder(self):
        """
        Requests pipelined in one read are answered in order; one behind a waiting poll is
        held until the poll is answered.
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0")
                             + self.get(f"/v1/conversations/{CID}/events?timeout=5")
                             + self.get(f"/v1/conversations/{CID}/messages"))
        self.assertEqual([a[0] for a in parseAnswers(transport.value())], [200])
        self.assertEqual(self.h.waiters(), 1)
        self.h.clock.advance(5)
        answers = parseAnswers(transport.value())
        self.assertEqual([a[0] for a in answers], [200, 200, 200])
        self.assertEqual(json.loads(answers[2][2]), {"messages": [], "has_more": False})

    def test_requestSplitOverReads(self):
        """
        A hot request that arrives in pieces (head and body written apart) is answered in
        the lane once whole; a request for another route in pieces is twisted.web's.
        """
        channel, transport = self.connect()
        data = self.post(f"/v1/conversations/{CID}/messages", {"text": "hi"})
        channel.dataReceived(data[:30])
        channel.dataReceived(data[30:-3])
        self.assertEqual(self.h.streams._streams, {})
        self.assertEqual(channel._partial, data[:-3])
        channel.dataReceived(data[-3:])
        self.h.settle()
        [(status, headers, body)] = parseAnswers(transport.value())
        self.assertEqual((status, json.loads(body)["message"]["text"]), (201, "hi"))
        self.assertEqual(channel.requests, [])
        login = b"POST /v1/dev/login HTTP/1.1\r\nContent-Length: 13\r\n\r\n" + b'{"user":"al"}'
        channel.dataReceived(login[:40])
        channel.dataReceived(login[40:-5])
        channel.dataReceived(login[-5:])
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?after=0"))
        answers = parseAnswers(transport.value())
        self.assertEqual([a[0] for a in answers], [201, 404, 200])
        self.assertEqual(json.loads(answers[2][2])["last_seq"], 1)

    def test_largeBodyGoesThroughTwistedWeb(self):
        """
        A hot request whose body is over MAX_PARTIAL is left to twisted.web (here: 413).
        """
        channel, transport = self.connect()
        data = self.post(f"/v1/conversations/{CID}/messages", {"text": "x" * MAX_PARTIAL})
        for start in range(0, len(data), 4096):
            channel.dataReceived(data[start:start + 4096])
        [(status, _, body)] = parseAnswers(transport.value())
        self.assertEqual((status, json.loads(body)["error"]["code"]), (413, "too_large"))

    def test_otherRoutesGoThroughKlein(self):
        """
        Routes outside the lane, preflights, HTTP/1.0 and chunked bodies are twisted.web's.
        """
        channel, transport = self.connect(corsOrigins=["*"])
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        channel.dataReceived(b"OPTIONS /v1/inbox/events HTTP/1.1\r\nOrigin: https://a.example"
                             b"\r\nAccess-Control-Request-Method: GET\r\n\r\n")
        channel.dataReceived(self.post(f"/v1/conversations/{CID}/typing", {"typing": True},
                                       b"Transfer-Encoding: chunked\r\n").replace(
                                           b"Content-Length: 16\r\n", b"")[:-16]
                             + b"10\r\n" + json.dumps({"typing": True}).encode()
                             + b"\r\n0\r\n\r\n")
        answers = parseAnswers(transport.value())
        self.assertEqual([a[0] for a in answers], [200, 204, 204])
        self.assertEqual(json.loads(answers[0][2])["status"], "ok")
        self.assertEqual(answers[1][1][b"access-control-allow-methods"], b"GET, POST, OPTIONS")
        self.assertEqual(self.h.streams._streams[CID].typing.keys(), {"alice"})
        self.assertEqual(channel.requests, [])
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0").replace(
            b"HTTP/1.1", b"HTTP/1.0"))
        [(status, headers, _)] = parseAnswers(transport.value())[3:]
        self.assertEqual(status, 200)
        self.assertTrue(transport.disconnecting)

    def test_errorsAreJSON(self):
        """
        Handler errors are the API's JSON errors, with their headers.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET /v1/conversations/dm:alice:bob/events HTTP/1.1\r\n"
                             b"Authorization: Bearer nope\r\n\r\n")
        channel.dataReceived(self.post(f"/v1/conversations/{CID}/messages", {"text": ""}))
        channel.dataReceived(self.get("/v1/conversations/dm:carol:dave/events?timeout=0"))
        answers = parseAnswers(transport.value())
        self.assertEqual([(a[0], json.loads(a[2])["error"]["code"]) for a in answers],
                         [(401, "unauthorized"), (400, "bad_request"), (403, "forbidden")])
        self.assertEqual(answers[0][1][b"www-authenticate"], b'Bearer realm="hpchat"')

    def test_malformedHeaderIsTwistedWebs400(self):
        """
        A header the lane does not parse plainly is left to twisted.web, which refuses it.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET /v1/inbox/events HTTP/1.1\r\nBad Header: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))

    def test_connectionClose(self):
        """
        With C{Connection: close} the answer says so and the connection is closed after it.
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0",
                                      b"Connection: keep-alive, Close\r\n"))
        [(status, headers, _)] = parseAnswers(transport.value())
        self.assertEqual((status, headers[b"connection"]), (200, b"close"))
        self.assertTrue(transport.disconnecting)

    def test_clientGoneCancelsTheWaiter(self):
        """
        A client that disconnects while its poll waits is forgotten, and nothing is written.
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=20"))
        self.assertEqual(self.h.waiters(), 1)
        transport.loseConnection()
        channel.connectionLost(None)
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(transport.value(), b"")
        self.h.clock.advance(20)
        self.assertEqual(transport.value(), b"")

    def test_failureWritingAnAnswerDropsTheConnection(self):
        """
        Should writing an answer fail, the failure is logged and the connection dropped
        rather than left waiting.
        """
        channel, transport = self.connect()

        def broken(data):
            raise RuntimeError("broken")

        channel._send = broken
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(transport.disconnecting)

    def test_corsHeadersInTheLane(self):
        """
        With CORS configured, an allowed origin gets its headers on lane answers too.
        """
        channel, transport = self.connect(corsOrigins=["https://site.example"])
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0",
                                      b"Origin: https://site.example\r\n"))
        [(_, headers, _)] = parseAnswers(transport.value())
        self.assertEqual(headers[b"access-control-allow-origin"], b"https://site.example")
        self.assertEqual(headers[b"vary"], b"Origin")

    def test_manyPipelinedHeldBackPausesReading(self):
        """
        Over 16 KiB pipelined behind a waiting poll pauses reading until it is answered.
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=5"))
        one = self.get(f"/v1/conversations/{CID}/events?timeout=0")
        channel.dataReceived(one * (0x4000 // len(one) + 1))
        self.assertEqual(transport.producerState, "paused")
        self.h.clock.advance(5)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(parseAnswers(transport.value())), 0x4000 // len(one) + 2)


class ParseHeadTests(SynchronousTestCase):
    def test_plainRequest(self):
        """
        A whole plain request: method, target, lower-cased headers, body and what follows.
        """
        parsed = parseHead(b"POST /a?b=1 HTTP/1.1\r\nContent-Length: 2\r\nX-A:  v \r\n\r\n{}GET")
        self.assertEqual(parsed, (b"POST", b"/a?b=1", {b"content-length": b"2", b"x-a": b"v"},
                                  b"{}", b"GET"))

    def test_leftToTwistedWeb(self):
        """
        Anything not whole or not plain is C{None}: twisted.web parses it.
        """
        for data in [
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
            b"GET / HTTP/1.1\r\nA: 1\r\nA: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nA : 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: " + b"y" * 17000 + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: " + b"y" * 17000,
            b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n{" % (MAX_PARTIAL + 1),
        ]:
            self.assertIsNone(parseHead(data), data[:60])

    def test_notAllThereYet(self):
        """
        A head not complete yet is INCOMPLETE; a body not complete yet is C{None}.
        """
        self.assertIs(parseHead(b"GET / HTTP/1.1\r\nHost: x\r\n"), INCOMPLETE)
        self.assertEqual(parseHead(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}"),
                         (b"POST", b"/", {b"content-length": b"5"}, None, b""))
