"""
The HTTP/1.1 server protocol, byte for byte over a StringTransport: framing, pipelining,
keep-alive, smuggling attempts, the limits of [limits] and their deadlines on a Clock.
"""

from __future__ import annotations

import json
import random

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import parse_qs

from hpchat import metrics
from hpchat.config import LimitsConfig
from hpchat.groups import Redirect
from hpchat.web.channel import Exchange, HotRequest, HTTPConnection, checkTarget
from hpchat.web.hot import queryArgs
from hpchat.web.site import buildSite
from hpchat.web.wire import headerLines
from tests.web.fakes import Harness, requestsCounted

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
        if b"content-length" not in headers and headers.get(b"connection") == b"close":
            answers.append((status, headers, rest))
            break
        length = int(headers.get(b"content-length", b"0"))
        answers.append((status, headers, rest[:length]))
        data = rest[length:]
    return answers


def limited(name: str) -> float:
    return metrics.limited.labels(name)._value.get()


class CountingTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)


class ConnectionTestsBase(SynchronousTestCase):
    def setUp(self):
        self.h = Harness(max_poll_timeout=3600.0)
        self.addCleanup(self.h.stop)
        self.token = self.h.token("alice").encode()
        self.site = None

    def connect(self, corsOrigins=(), **limits):
        if self.site is None or limits or corsOrigins:
            self.site = buildSite(self.h.api, self.h.clock, corsOrigins, LimitsConfig(**limits))
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.assertIsInstance(channel, HTTPConnection)
        transport = CountingTransport()
        channel.makeConnection(transport)
        self.addCleanup(lambda: channel.connectionLost(None) if transport.connected else None)
        return channel, transport

    def get(self, path: str, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
        return (b"GET %s %s\r\nHost: node\r\nAuthorization: Bearer %s\r\n%s\r\n"
                % (path.encode(), version, self.token, extra))

    def post(self, path: str, body: dict, extra: bytes = b"") -> bytes:
        data = json.dumps(body).encode()
        return (b"POST %s HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                % (path.encode(), self.token, len(data), extra, data))

    def refused(self, data: bytes, status: int = 400, code: str = "bad_request", **limits):
        """
        Send C{data} on a new connection: it is answered only with the JSON error, and closed.
        """
        channel, transport = self.connect(**limits)
        channel.dataReceived(data)
        answers = parseAnswers(transport.value())
        self.assertEqual(len(answers), 1, (data[:80], answers))
        got, headers, body = answers[0]
        self.assertEqual((got, json.loads(body)["error"]["code"]), (status, code), data[:80])
        self.assertEqual(headers[b"content-type"], b"application/json; charset=utf-8")
        self.assertEqual(headers[b"connection"], b"close")
        self.assertTrue(transport.disconnecting)
        return channel, transport


class FramingTests(ConnectionTestsBase):
    def test_hotRequestInOneWrite(self):
        """
        A hot request is answered with the status line, Date, Content-Length and the
        handler's headers and body, in one write; the connection stays open. A small answer
        of Klein's is one write too.
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0"))
        [(status, headers, body)] = parseAnswers(transport.value())
        self.assertEqual((status, json.loads(body)["last_seq"]), (200, 0))
        self.assertEqual(headers[b"content-type"], b"application/json; charset=utf-8")
        self.assertIn(b"GMT", headers[b"date"])
        self.assertEqual(transport.writes, 1)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: n\r\n\r\n")
        self.assertEqual(parseAnswers(transport.value())[1][0], 200)
        self.assertEqual(transport.writes, 2)

    def test_sendAnsweredOnceDurable(self):
        """
        A send is answered 201 once its batch is written; its status is counted.
        """
        before = requestsCounted("send", "201")
        channel, transport = self.connect()
        channel.dataReceived(self.post(f"/v1/conversations/{CID}/messages",
                                       {"text": "hi", "client_id": "c1"}))
        self.assertEqual(transport.value(), b"")
        self.h.settle()
        [(status, _, body)] = parseAnswers(transport.value())
        self.assertEqual((status, json.loads(body)["message"]["seq"]), (201, 1))
        self.assertEqual(requestsCounted("send", "201"), before + 1)

    def test_pipelinedInOrder(self):
        """
        Pipelined requests are answered in order, Klein's among the hot ones; those behind a
        waiting poll wait for it.
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0")
                             + self.get(f"/v1/conversations/{CID}/events?timeout=5")
                             + b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n"
                             + self.get(f"/v1/conversations/{CID}/messages"))
        self.assertEqual([a[0] for a in parseAnswers(transport.value())], [200])
        self.h.clock.advance(5)
        answers = parseAnswers(transport.value())
        self.assertEqual([a[0] for a in answers], [200, 200, 200, 200])
        self.assertEqual(json.loads(answers[2][2])["status"], "ok")
        self.assertEqual(json.loads(answers[3][2]), {"messages": [], "has_more": False})

    def test_splitOverReads(self):
        """
        Requests that arrive byte by byte are answered once whole, hot or not.
        """
        channel, transport = self.connect()
        data = (self.post(f"/v1/conversations/{CID}/messages", {"text": "hi"})
                + b"POST /v1/dev/login HTTP/1.1\r\nHost: n\r\nContent-Length: 13\r\n\r\n"
                + b'{"user":"al"}')
        for i in range(len(data)):
            channel.dataReceived(data[i:i + 1])
        self.h.settle()
        answers = parseAnswers(transport.value())
        self.assertEqual([a[0] for a in answers], [201, 404])
        self.assertEqual(json.loads(answers[1][2])["error"]["code"], "not_found")

    def test_chunkedBody(self):
        """
        A chunked body is read as it arrives, for a hot route and for Klein.
        """
        channel, transport = self.connect()
        body = json.dumps({"typing": True}).encode()
        channel.dataReceived(
            b"POST /v1/conversations/%s/typing HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer %s"
            b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (CID.encode(), self.token, len(body), body))
        self.assertEqual(parseAnswers(transport.value())[0][0], 204)
        self.assertEqual(self.h.streams._streams[CID].typing.keys(), {"alice"})

    def test_http10AndConnectionClose(self):
        """
        HTTP/1.0 and C{Connection: close} get one answer saying so, then the connection closes.
        """
        for data in [self.get(f"/v1/conversations/{CID}/events?timeout=0", version=b"HTTP/1.0"),
                     self.get(f"/v1/conversations/{CID}/events?timeout=0",
                              b"Connection: keep-alive, Close\r\n"),
                     b"GET /healthz HTTP/1.0\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n"]:
            channel, transport = self.connect()
            channel.dataReceived(data)
            [(status, headers, _)] = parseAnswers(transport.value())
            self.assertEqual((status, headers[b"connection"]), (200, b"close"))
            self.assertTrue(transport.disconnecting)

    def test_expectContinue(self):
        """
        C{Expect: 100-continue} gets C{100 Continue} before the body is sent; another
        expectation is a 417.
        """
        channel, transport = self.connect()
        data = self.post(f"/v1/conversations/{CID}/typing", {"typing": True},
                         b"Expect: 100-continue\r\n")
        head, body = data.split(b"\r\n\r\n", 1)
        channel.dataReceived(head + b"\r\n\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        transport.clear()
        channel.dataReceived(body)
        self.assertEqual(parseAnswers(transport.value())[0][0], 204)
        self.refused(self.post(f"/v1/conversations/{CID}/typing", {"typing": True},
                               b"Expect: magic\r\n"), 417, "expectation_failed")

    def test_upgradeRefused(self):
        """
        A request to upgrade is answered as a plain request, and nothing after it is read.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: n\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n" + self.get("/v1/cluster"))
        [(status, headers, _)] = parseAnswers(transport.value())
        self.assertEqual((status, headers[b"connection"]), (200, b"close"))
        self.assertTrue(transport.disconnecting)
        self.refused(b"CONNECT node:443 HTTP/1.1\r\nHost: node:443\r\n\r\n", 405,
                     "method_not_allowed")

    def test_absoluteForm(self):
        """
        An absolute-form target is served as its path, its authority taking the place of Host.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET http://other/healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        [(status, _, body)] = parseAnswers(transport.value())
        self.assertEqual((status, json.loads(body)["status"]), (200, "ok"))

    def test_errorsAreJSON(self):
        """
        Handler errors, Klein's 404 and 405 and the static files' 404 are JSON, on a
        connection that stays open.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET /v1/conversations/dm:alice:bob/events HTTP/1.1\r\n"
                             b"Host: n\r\nAuthorization: Bearer nope\r\n\r\n"
                             + self.get("/nowhere") + self.get("/static/nothing.js")
                             + self.get("/static/") + b"PUT /healthz HTTP/1.1\r\nHost: n\r\n"
                             b"Content-Length: 0\r\n\r\n")
        answers = parseAnswers(transport.value())
        self.assertEqual([(a[0], json.loads(a[2])["error"]["code"]) for a in answers],
                         [(401, "unauthorized"), (404, "not_found"), (404, "not_found"),
                          (404, "not_found"), (405, "method_not_allowed")])
        self.assertFalse(transport.disconnecting)

    def test_clientGoneCancelsTheWaiter(self):
        """
        A client that disconnects while its poll waits is forgotten; nothing is written.
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=20"))
        self.assertEqual(self.h.waiters(), 1)
        transport.loseConnection()
        channel.connectionLost(None)
        self.assertEqual(self.h.waiters(), 0)
        self.h.clock.advance(20)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.site.openConnections, 0)

    def test_failureWritingAnAnswerDropsTheConnection(self):
        """
        Should writing an answer fail, the failure is logged and the connection dropped.
        """
        channel, transport = self.connect()

        def broken(*args):
            raise RuntimeError("broken")

        channel._finished = broken
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(transport.disconnecting)

    def test_manyPipelinedPausesReading(self):
        """
        Many requests pipelined behind a waiting poll pause reading until it is answered.
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=5"))
        one = self.get(f"/v1/conversations/{CID}/events?timeout=0")
        channel.dataReceived(one * 40)
        self.assertEqual(transport.producerState, "paused")
        self.h.clock.advance(5)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(parseAnswers(transport.value())), 41)


class WaitingPollTests(ConnectionTestsBase):
    def test_nothingOfTheHeadKeptWhileAPollWaits(self) -> None:
        """
        While a long-poll waits, its connection keeps none of the request's head: the header
        fields and the target live in the request being answered only, and the connection's
        state is in slots (its instance dict holds only what Twisted's factory and the site set).
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=20",
                                      b"X-Padding: " + b"p" * 200 + b"\r\n"))
        self.assertEqual(self.h.waiters(), 1)
        self.assertEqual((channel._raw, channel._url), ([], b""))
        self.assertEqual(channel._current.getHeader(b"x-padding"), b"p" * 200)
        self.assertLessEqual(set(vars(channel)),
                             {"transport", "connected", "factory", "site", "requestFactory",
                              "timeOut", "callLater"})
        # The next request on the connection parses as usual once the poll is answered.
        self.h.send(CID, "bob", "hi")
        self.h.settle()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0"))
        answers = parseAnswers(transport.value())
        self.assertEqual([status for status, _, _ in answers], [200, 200])
        self.assertEqual(json.loads(answers[0][2])["events"][0]["text"], "hi")

    def test_handlerErrorsAreAnswered(self) -> None:
        """
        A handler that raises at once, or whose Deferred fails, gets its JSON error answer
        on the connection, which stays open.
        """
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?after=x")
                             + self.get(f"/v1/conversations/{CID}/events?after=99&timeout=0"))
        answers = parseAnswers(transport.value())
        self.assertEqual([(status, json.loads(body)["error"]["code"])
                          for status, _, body in answers],
                         [(400, "bad_request"), (409, "cursor_ahead")])
        self.assertFalse(transport.disconnecting)


class SmugglingTests(ConnectionTestsBase):
    def smuggled(self, data: bytes, status: int = 400) -> None:
        """
        C{data} is refused as a whole: the send hidden in it is never run.
        """
        self.refused(data, status, "bad_request" if status == 400 else "too_large")
        self.h.settle()
        self.assertNotIn(CID, self.h.streams._streams)

    def hidden(self) -> bytes:
        return self.post(f"/v1/conversations/{CID}/messages", {"text": "smuggled"})

    def test_framingAttacks(self):
        """
        Content-Length with Transfer-Encoding, two lengths, bad chunk sizes, obs-fold, bare LF,
        a Transfer-Encoding other than chunked, chunked on HTTP/1.0: all refused.
        """
        hidden = self.hidden()
        n = len(hidden)
        for data in [
            b"POST /v1/x HTTP/1.1\r\nHost: n\r\nContent-Length: %d\r\nTransfer-Encoding: "
            b"chunked\r\n\r\n0\r\n\r\n%s" % (n + 5, hidden),
            b"POST /v1/x HTTP/1.1\r\nHost: n\r\nContent-Length: 0\r\nContent-Length: %d\r\n"
            b"\r\n%s" % (n, hidden),
            b"POST /v1/x HTTP/1.1\r\nHost: n\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"
            + hidden,
            b"POST /v1/x HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"-1\r\n" + hidden,
            b"POST /v1/x HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0x10\r\n" + hidden,
            b"POST /v1/x HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ffffffffffffffffff\r\n" + hidden,
            b"POST /v1/x HTTP/1.1\r\nHost: n\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n" + hidden,
            b"POST /v1/x HTTP/1.1\nHost: n\nContent-Length: 0\n\n" + hidden,
            b"POST /v1/x HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: identity, chunked\r\n\r\n"
            b"0\r\n\r\n" + hidden,
            b"POST /v1/x HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: Chunked, chunked\r\n\r\n"
            b"0\r\n\r\n" + hidden,
            b"POST /v1/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden,
            b"POST /v1/x HTTP/1.1\r\nHost: n\r\nContent-Length: +5\r\n\r\n" + hidden,
        ]:
            self.smuggled(data)

    def test_controlsInFields(self):
        """
        CR, LF and NUL inside a header name, value or the target are refused; an LF inside a
        value never hides a Transfer-Encoding.
        """
        hidden = self.hidden()
        for data in [
            b"GET /healthz HTTP/1.1\r\nHost: n\r\nX-Pad: a\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n" + hidden,
            b"GET /healthz HTTP/1.1\r\nHost: n\r\nX-Pad: a\rTransfer-Encoding: chunked\r\n\r\n"
            + hidden,
            b"GET /healthz HTTP/1.1\r\nHost: n\r\nX-Pad: a\0b\r\n\r\n" + hidden,
            b"GET /healthz HTTP/1.1\r\nHost: n\r\nX\0Pad: a\r\n\r\n" + hidden,
            b"GET /healthz HTTP/1.1\r\nHost: n\r\nX Pad: a\r\n\r\n" + hidden,
            b"GET /healthz HTTP/1.1\r\nHost: n\r\nX-Pad : a\r\n\r\n" + hidden,
            b"GET /a\nb HTTP/1.1\r\nHost: n\r\n\r\n" + hidden,
            b"GET /a\rb HTTP/1.1\r\nHost: n\r\n\r\n" + hidden,
            b"GET /a\0b HTTP/1.1\r\nHost: n\r\n\r\n" + hidden,
            b"GET /a\xffb HTTP/1.1\r\nHost: n\r\n\r\n" + hidden,
        ]:
            self.smuggled(data)

    def test_badTargetsHostsAndVersions(self):
        """
        Percent-encoded NUL or non-UTF-8 in the target, a Host that is not a host (or none,
        or two, on HTTP/1.1), two of a header that counts once, other targets than a path,
        HTTP/0.9 or HTTP/2 on this port: JSON 400s.
        """
        for data in [
            b"GET /static/%00 HTTP/1.1\r\nHost: n\r\n\r\n",
            b"GET /v1/clus%FFter HTTP/1.1\r\nHost: n\r\n\r\n",
            b"GET /healthz?x=%C3%28 HTTP/1.1\r\nHost: n\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: \xffnode\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: [::1\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: [::g]\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: a:b:c\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: ..\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0..1:80\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: n:\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: n:123456\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: user@n\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: " + b"a" * 64 + b".example\r\n\r\n",
            b"GET http://a:b:c/healthz HTTP/1.1\r\nHost: n\r\n\r\n",
            b"GET http://[::1/healthz HTTP/1.1\r\nHost: n\r\n\r\n",
            b"GET http://[zz]/healthz HTTP/1.1\r\nHost: n\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer a\r\n"
            b"Authorization: Bearer b\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: n\r\nOrigin: http://a\r\nOrigin: http://b\r\n\r\n",
            b"GET /v1/inbox/stream HTTP/1.1\r\nHost: n\r\nLast-Event-ID: 1\r\n"
            b"Last-Event-ID: 2\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: n\r\n\r\n",
            b"GET healthz HTTP/1.1\r\nHost: n\r\n\r\n",
            b"get /static/app.js HTTP/1.1\r\nHost: n\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ]:
            self.refused(data)
        self.refused(b"GET /healthz HTTP/2.0\r\nHost: n\r\n\r\n")
        self.refused(b"GET /healthz\r\n\r\n")
        self.refused(b"PROPFIND / HTTP/1.1\r\nHost: n\r\n\r\n", 405, "method_not_allowed")

    def test_goodHosts(self):
        """
        Names, IPv4 and bracketed IPv6 addresses, with or without a port, are served.
        """
        from hpchat.web.wire import validHost

        for host in [b"n", b"chat.example.com", b"127.0.0.1:8080", b"[::1]", b"[::1]:80",
                     b"xn--bcher-kva.example", b"a-b_c.example:1"]:
            self.assertTrue(validHost(host), host)

    def test_checkTarget(self):
        """
        The target check takes paths of visible ASCII whose decoding is UTF-8 without NUL.
        """
        self.assertIsNone(checkTarget(b"/v1/conversations/dm%3Aa%3Ab/events?x=%C3%A9"))
        for bad in [b"/a b", b"/%00", b"/%ff", b"x", b"/\x7f", b"/\xc3\xa9"]:
            self.assertIsNotNone(checkTarget(bad), bad)

    def test_noControlsInAnswerHeaders(self):
        """
        A header value with CR, LF or NUL never goes out: the Location of a 307 is built from
        a checked target, an Origin echoed back is a plain origin, and a value that could
        split the answer is dropped.
        """
        group = self.h.streams.groupOf(CID)
        self.h.ownership.set(group, Redirect("node-b", "http://node-b.test:8080"))
        channel, transport = self.connect()
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?x=%0d%0aX:1"))
        [(status, headers, _)] = parseAnswers(transport.value())
        self.assertEqual(status, 307)
        self.assertEqual(headers[b"location"], b"http://node-b.test:8080/v1/conversations/"
                                               b"dm:alice:bob/events?x=%0d%0aX:1")
        self.refused(self.get("/healthz", b"Origin: https://a.example\rSet-Cookie: x\r\n"))
        channel, transport = self.connect(corsOrigins=["*"])
        channel.dataReceived(self.get("/healthz", b"Origin: https://a.example\r\n")
                             + self.get("/healthz", b"Origin: x\x80\r\n"))
        answers = parseAnswers(transport.value())
        self.assertEqual(answers[0][1][b"access-control-allow-origin"], b"https://a.example")
        self.assertNotIn(b"access-control-allow-origin", answers[1][1])
        request = HotRequest(b"GET", b"/", b"/", {}, {}, b"")
        request.setHeader(b"x-evil", b"a\r\nSet-Cookie: x=1")
        request.setHeader(b"x-nul", b"a\0b")
        exchange = Exchange()
        exchange.keepAlive = True
        channel._current = request
        transport.clear()
        channel._answer(b"{}", request, exchange)
        self.assertEqual(parseAnswers(transport.value())[0][2], b"{}")
        self.assertNotIn(b"x-evil", transport.value().lower())
        self.assertNotIn(b"x-nul", transport.value().lower())


    def test_mutatedRequests(self):
        """
        Valid requests with random bytes changed, added or cut, fed in random pieces: every
        answer is a status the API gives (never a 5xx), and nothing is logged as an error
        (trial fails a test that logs one).
        """
        rnd = random.Random(5)
        alphabet = b"\r\n\0 :%/\t\x7f\xff0123456789abcdefABCDEF-;,\"?=&#"
        bases = [self.post(f"/v1/conversations/{CID}/messages", {"text": "hi"}),
                 self.get(f"/v1/conversations/{CID}/events?timeout=0"),
                 b"GET /static/app.js HTTP/1.1\r\nHost: n\r\n\r\n",
                 (b"POST /v1/dev/login HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked"
                  b"\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n"),
                 b"GET /healthz HTTP/1.0\r\n\r\n"]
        seen = set()
        for _ in range(600):
            data = bytearray(rnd.choice(bases) * rnd.randint(1, 2))
            for _ in range(rnd.randint(1, 3)):
                at, op = rnd.randrange(len(data)), rnd.random()
                if op < 0.4:
                    data[at] = rnd.choice(alphabet)
                elif op < 0.7:
                    data[at:at] = bytes([rnd.choice(alphabet)]) * rnd.randint(1, 3)
                else:
                    del data[at:at + rnd.randint(1, 5)]
            channel, transport = self.connect()
            data = bytes(data)
            while data:
                size = rnd.randint(1, 100)
                channel.dataReceived(data[:size])
                data = data[size:]
            self.h.clock.advance(0.02)
            for line in transport.value().split(b"\r\n"):
                if line.startswith(b"HTTP/1.1 "):
                    seen.add(int(line.split(b" ")[1]))
            channel.connectionLost(None)
        self.assertEqual(seen - {200, 201, 204, 400, 401, 403, 404, 405, 413}, set())
        self.assertIn(400, seen)


class LimitTests(ConnectionTestsBase):
    def test_hugeContentLengthRefusedAtOnce(self):
        """
        A Content-Length over the limit is a 413 before any of the body is read (the larger
        limit on /internal/ paths); counted as body_bytes.
        """
        before = limited("body_bytes")
        self.refused(b"POST /v1/dev/login HTTP/1.1\r\nHost: n\r\nContent-Length: 100000000000"
                     b"\r\n\r\n", 413, "too_large")
        self.refused(b"POST /internal/v1/notifications HTTP/1.1\r\nHost: n\r\n"
                     b"Content-Length: 2001\r\n\r\n", 413, "too_large",
                     max_internal_body_bytes=2000)
        channel, transport = self.connect(max_body_bytes=10, max_internal_body_bytes=2000)
        channel.dataReceived(b"POST /internal/v1/notifications HTTP/1.1\r\nHost: n\r\n"
                             b"Content-Length: 100\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(limited("body_bytes"), before + 2)

    def test_chunkedOverLimit(self):
        """
        A chunked body is counted as it arrives: past the limit it is a 413.
        """
        channel, transport = self.connect(max_body_bytes=100)
        channel.dataReceived(b"POST /v1/dev/login HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: "
                             b"chunked\r\n\r\n")
        for _ in range(3):
            channel.dataReceived(b"28\r\n" + b"x" * 40 + b"\r\n")
        [(status, _, body)] = parseAnswers(transport.value())
        self.assertEqual((status, json.loads(body)["error"]["code"]), (413, "too_large"))
        self.assertTrue(transport.disconnecting)

    def test_headLimits(self):
        """
        A head over max_head_bytes or with more than max_headers fields is a 431, also when it
        arrives in small reads; a target over max_target_bytes is a 414.
        """
        before = (limited("head_bytes"), limited("headers"), limited("target_bytes"))
        self.refused(b"GET / HTTP/1.1\r\nHost: n\r\nX: " + b"y" * 2000 + b"\r\n\r\n", 431,
                     "header_too_large", max_head_bytes=1000)
        self.refused(b"GET / HTTP/1.1\r\nHost: n\r\n" + b"X: y\r\n" * 11 + b"\r\n", 431,
                     "header_too_large", max_headers=10)
        self.refused(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: n\r\n\r\n", 414,
                     "uri_too_long", max_target_bytes=100)
        channel, transport = self.connect(max_head_bytes=1000)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: n\r\nX: ")
        for _ in range(30):
            if transport.disconnecting:
                break
            channel.dataReceived(b"y" * 100)
        [(status, _, _)] = parseAnswers(transport.value())
        self.assertEqual(status, 431)
        self.assertEqual((limited("head_bytes"), limited("headers"), limited("target_bytes")),
                         (before[0] + 2, before[1] + 1, before[2] + 1))

    def test_headDeadline(self):
        """
        A head that is not whole within head_timeout (one byte at a time does not extend it)
        is a 408 and the connection is closed.
        """
        before = limited("head_timeout")
        channel, transport = self.connect(head_timeout=30)
        channel.dataReceived(b"G")
        for byte in b"ET / HTTP/1.1\r\nHost: n\r\n":
            self.h.clock.advance(1)
            channel.dataReceived(bytes([byte]))
        self.assertEqual(transport.value(), b"")
        self.h.clock.advance(30 - 24)
        [(status, _, body)] = parseAnswers(transport.value())
        self.assertEqual((status, json.loads(body)["error"]["code"]), (408, "request_timeout"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(limited("head_timeout"), before + 1)

    def test_bodyDeadline(self):
        """
        A body that is not whole within body_timeout is a 408.
        """
        before = limited("body_timeout")
        channel, transport = self.connect(body_timeout=5)
        channel.dataReceived(b"POST /v1/dev/login HTTP/1.1\r\nHost: n\r\nContent-Length: 10"
                             b"\r\n\r\n{")
        self.h.clock.advance(5)
        [(status, _, _)] = parseAnswers(transport.value())
        self.assertEqual(status, 408)
        self.assertEqual(limited("body_timeout"), before + 1)

    def test_idleTimeoutSuspendedDuringALongPoll(self):
        """
        A kept-alive connection is closed after idle_timeout without a request, but never
        while a poll longer than that waits; the idle time starts again after its answer.
        """
        channel, transport = self.connect(idle_timeout=60)
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=90"))
        self.h.clock.advance(61)
        self.assertFalse(transport.disconnecting)
        self.h.clock.advance(29)
        [(status, _, _)] = parseAnswers(transport.value())
        self.assertEqual(status, 200)
        self.h.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(self.get(f"/v1/conversations/{CID}/events?timeout=0"))
        self.h.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.h.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(parseAnswers(transport.value())), 2)

    def test_maxConnections(self):
        """
        Past max_connections a connection is answered 503 overloaded with Retry-After and
        closed; a closed connection makes room.
        """
        before = limited("connections")
        first, _ = self.connect(max_connections=2)
        self.connect()
        channel, transport = self.connect()
        [(status, headers, body)] = parseAnswers(transport.value())
        self.assertEqual((status, json.loads(body)["error"]["code"]), (503, "overloaded"))
        self.assertEqual(headers[b"retry-after"], b"1")
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(None)
        first.connectionLost(None)
        _, transport = self.connect()
        self.assertEqual(transport.value(), b"")
        self.assertEqual(limited("connections"), before + 1)


class QueryArgsTests(SynchronousTestCase):
    """
    L{hpchat.web.hot.queryArgs}, the hot routes' query parser.
    """

    def test_likeTwistedWeb(self):
        """
        It gives what twisted.web's parse_qs(query, 1) gives (the parser of every other
        route), on random queries of names, values, separators, quoting and repeats.
        """
        rng = random.Random(5)
        pieces = [b"a", b"after", b"timeout", b"1", b"25", b"=", b"&", b";", b"+", b"%20",
                  b"%zz", b"%", b"", b"x y", b"\xff"]
        for _ in range(5000):
            query = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 9)))
            self.assertEqual(queryArgs(query), parse_qs(query, 1), query)

    def test_repeatsKeepTheirOrder(self):
        """
        A repeated name keeps every value, in order; a part without = is left out, one
        with an empty value is kept.
        """
        self.assertEqual(queryArgs(b"after=1&after=2&flag&timeout=&after=3"),
                         {b"after": [b"1", b"2", b"3"], b"timeout": [b""]})


class HeaderLinesTests(SynchronousTestCase):
    """
    L{hpchat.web.wire.headerLines}: an answer's own header lines.
    """

    def test_remembersOnlyConstantHeaders(self):
        """
        The lines of headers whose values come from the code are remembered and given
        again; others (a redirect's Location) are made each time; an unsafe value is
        dropped either way.
        """
        constant = {b"content-type": b"application/json; charset=utf-8",
                b"cache-control": b"no-store"}
        first = headerLines(dict(constant))
        self.assertEqual(list(first), [b"Content-Type: application/json; charset=utf-8\r\n",
                                       b"Cache-Control: no-store\r\n"])
        self.assertIs(headerLines(dict(constant)), first)
        redirect = {b"location": b"http://b/v1/x", b"retry-after": b"1"}
        self.assertEqual(list(headerLines(redirect)),
                         [b"Location: http://b/v1/x\r\n", b"Retry-After: 1\r\n"])
        self.assertIsNot(headerLines(redirect), headerLines(redirect))
        self.assertEqual(list(headerLines({b"location": b"http://b/\r\nX: y"})), [])
        self.assertEqual(list(headerLines({b"retry-after": b"1\r\nX: y"})), [])
