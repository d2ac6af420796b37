"""
The load generator's event-stream client (bench/lg_sse.py): the text/event-stream parser and
the streaming HTTP/1.1 connection, fed bytes the way a socket delivers them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from twisted.trial import unittest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import lg_sse  # noqa: E402
from loadgen import centrifugoConnectPath, centrifugoMetrics  # noqa: E402

STREAM = (b"event: message\nid: 7\ndata: {\"seq\": 7, \"text\": \"hi\"}\n\n"
          b": a comment, ignored\n\n"
          b"data: line one\r\ndata: line two\r\n\r\n"
          b"event: message\rid: 8\rdata: {\"seq\": 8}\r\r")


def parse(pieces: list[bytes]) -> tuple[list[tuple], lg_sse.SSEParser]:
    events: list[tuple] = []
    parser = lg_sse.SSEParser(lambda *e: events.append(e))
    for piece in pieces:
        parser.feed(piece)
    return events, parser


EXPECTED = [("message", "7", '{"seq": 7, "text": "hi"}'),
            ("message", "7", "line one\nline two"),
            ("message", "8", '{"seq": 8}')]


class SSEParserTests(unittest.TestCase):
    def test_wholeStream(self) -> None:
        """
        Events end at a blank line, with LF, CRLF or CR line ends; data lines are joined
        with LF, comments are skipped, the id carries over to later events, and the last id
        seen is kept for Last-Event-ID.
        """
        events, parser = parse([STREAM])
        self.assertEqual(events, EXPECTED)
        self.assertEqual(parser.lastEventId, "8")

    def test_byteByByte(self) -> None:
        """
        Split anywhere, even between a CR and its LF, the stream gives the same events.
        """
        events, _ = parse([STREAM[i:i + 1] for i in range(len(STREAM))])
        self.assertEqual(events, EXPECTED)

    def test_noDataNoEvent(self) -> None:
        """
        A blank line with nothing gathered (Centrifugo's first CRLF) dispatches nothing; an
        event without data or with empty data neither; a field without a colon has an empty
        value, so two of them make one line break.
        """
        events, _ = parse([b"\r\n", b"event: ping\n\n", b"data\n\n", b"data\ndata\n\n"])
        self.assertEqual(events, [("message", None, "\n")])


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def get_extra_info(self, name: str):
        return None

    def abort(self) -> None:
        self.aborted = True


class StreamConnTests(unittest.TestCase):
    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.body: list[bytes] = []
        self.conn = lg_sse.StreamConn(self.loop, self.body.append)
        self.transport = FakeTransport()
        self.conn.connection_made(self.transport)

    def test_chunked(self) -> None:
        """
        The headers resolve once they are complete; a chunked body reaches the callback
        without its framing, however the chunks are split; the last chunk closes.
        """
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        payload = b"data: {\"a\": 1}\n\n"
        framed = head + b"%x\r\n" % len(payload) + payload + b"\r\n" + b"4\r\n\r\n\r\n\r\n"
        for i in range(len(framed)):
            self.conn.data_received(framed[i:i + 1])
        status, headers = self.conn.headers.result()
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-type"], b"text/event-stream")
        self.assertEqual(b"".join(self.body), payload + b"\r\n\r\n")
        self.assertFalse(self.transport.aborted)
        self.conn.data_received(b"0\r\n\r\n")
        self.assertTrue(self.transport.aborted)

    def test_unframed(self) -> None:
        """
        Without Transfer-Encoding the body is everything up to the close, bytes that came
        with the headers included.
        """
        self.conn.data_received(b"HTTP/1.1 200 OK\r\n\r\ndata: x\n")
        self.conn.data_received(b"\n")
        self.assertEqual(b"".join(self.body), b"data: x\n\n")
        self.conn.connection_lost(None)
        self.assertTrue(self.conn.closed.done())

    def test_closedBeforeHeaders(self) -> None:
        """
        A connection lost before the headers fails the headers future with HTTPFailure.
        """
        self.conn.data_received(b"HTTP/1.1 200 OK\r\n")
        self.conn.connection_lost(None)
        self.assertIsInstance(self.conn.headers.exception(), lg_sse.HTTPFailure)


class CentrifugoTests(unittest.TestCase):
    def test_connectPath(self) -> None:
        """
        The uni_sse connect path carries the connect request as cf_connect, whose HS256 token
        names the user and subscribes it to its conversation channel.
        """
        from urllib.parse import parse_qs, urlsplit

        import jwt

        path = centrifugoConnectPath(jwt, b"s" * 32, 2_000_000_000, "u1", "dm:u1:u2")
        parts = urlsplit(path)
        self.assertEqual(parts.path, "/connection/uni_sse")
        request = json.loads(parse_qs(parts.query)["cf_connect"][0])
        claims = jwt.decode(request["token"], b"s" * 32, algorithms=["HS256"])
        self.assertEqual((claims["sub"], claims["channels"]), ("u1", ["dm:u1:u2"]))

    def test_metrics(self) -> None:
        """
        Centrifugo's messages sent to clients count as the committed messages.
        """
        text = ('centrifugo_node_messages_sent_count{type="publication"} 12\n'
                'centrifugo_node_messages_sent_count{type="join"} 3\n')
        self.assertEqual(centrifugoMetrics(text), {"hpchat_messages_committed_total": 15.0})
