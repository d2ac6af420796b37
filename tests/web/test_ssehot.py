"""
Tests for L{hpchat.web.ssehot}: event streams on the hot path of the production edge, read
byte for byte from a connection of the node's L{HPChatSite} (the API harness' site), and a
slow reader cut off on a real TCP connection.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import quote

from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hpchat import metrics
from hpchat.web import sse
from hpchat.web.ssehot import HotEventStream
from tests.web.fakes import Harness, fired
from tests.web.test_edge_node import selfSigned

CID = "dm:alice:bob"
STREAM = f"/v1/conversations/{quote(CID, safe=':')}/stream"


def chunks(data: bytes) -> tuple[list[bytes], bytes]:
    """
    The chunks of a chunked body C{data} (the last, empty one included once it came), and
    what follows them.
    """
    out = []
    while data:
        size, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        length = int(size, 16)
        if rest[length:length + 2] != b"\r\n":
            raise AssertionError(f"bad chunk framing: {data[:80]!r}")
        out.append(rest[:length])
        data = rest[length + 2:]
        if length == 0:
            break
    return out, data


class Connection:
    """
    One connection to the harness' site over a L{StringTransport}: requests written raw,
    everything the site wrote read raw.
    """

    def __init__(self, h: Harness):
        self.h = h
        self.protocol = h.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 31337))
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, method: str, path: str, user: str | None = "alice",
             version: str = "1.1", extra: str = "") -> None:
        auth = f"Authorization: Bearer {self.h.token(user)}\r\n" if user else ""
        self.protocol.dataReceived(
            f"{method} {path} HTTP/{version}\r\nHost: chat.example\r\n{auth}{extra}\r\n"
            .encode())

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data


class HotStreamTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.addCleanup(self.h.stop)
        self.created = 0
        factory = self.h.site.requestFactory

        def counted(*a, **kw):
            self.created += 1
            return factory(*a, **kw)

        self.h.site.requestFactory = counted
        self.connections: list[Connection] = []
        # (Before the harness stops.)
        self.addCleanup(lambda: [c.protocol.connectionLost(None) for c in self.connections])

    def connect(self) -> Connection:
        connection = Connection(self.h)
        self.connections.append(connection)
        return connection

    def open(self, path: str = STREAM + "?after=0", **kw) -> tuple[Connection, bytes, bytes]:
        connection = self.connect()
        connection.send("GET", path, **kw)
        head, _, body = connection.take().partition(b"\r\n\r\n")
        return connection, head, body

    def sendMessages(self, count: int, text: str = "m") -> None:
        sends = [self.h.send(CID, "bob", f"{text}{i}") for i in range(count)]
        self.h.settle()
        for d in sends:
            self.assertEqual(fired(d).code, 201)

    def test_head(self):
        """
        A stream's head is written by the connection itself (no twisted.web request): 200,
        text/event-stream, not cached, not buffered by proxies, chunked.
        """
        connection, head, body = self.open()
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 200 OK")
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        self.assertEqual(fields[b"Content-Type"], b"text/event-stream; charset=utf-8")
        self.assertEqual(fields[b"Cache-Control"], b"no-cache")
        self.assertEqual(fields[b"X-Accel-Buffering"], b"no")
        self.assertEqual(fields[b"Transfer-Encoding"], b"chunked")
        self.assertNotIn(b"Content-Length", fields)
        self.assertNotIn(b"Connection", fields)
        self.assertEqual(self.created, 0)
        [stream] = self.h.api.eventStreams.open
        self.assertIsInstance(stream, HotEventStream)
        self.assertIs(connection.transport.producer, stream)
        [first], rest = chunks(body)
        self.assertEqual(rest, b"")
        self.assertTrue(first.startswith(b"retry: %d\nid: 0\n\n" % sse.RETRY_MS))
        self.assertEqual(self.h.waiters(), 1)

    def test_messageIsOneChunk(self):
        """
        Messages committed together reach an open stream as chunks of whole records, each
        record an C{event: message} with its seq as id.
        """
        connection, _, _ = self.open()
        self.sendMessages(3)
        got, rest = chunks(connection.take())
        self.assertEqual(rest, b"")
        records = [r for c in got for r in c.split(b"\n\n") if r]
        # (Each message moves its sender's read marker too.)
        records = [r for r in records if r.startswith(b"event: message")]
        self.assertEqual([r.split(b"\n")[:2] for r in records],
                         [[b"event: message", b"id: %d" % i] for i in (1, 2, 3)])
        # Every chunk holds whole records.
        self.assertTrue(all(c.endswith(b"\n\n") for c in got))

    def test_endThenNextRequest(self):
        """
        A stream that ends (the group is lost) writes the last chunk; the connection stays
        open and answers the next request, queued behind the stream meanwhile.
        """
        connection, _, _ = self.open()
        connection.send("GET", f"/v1/conversations/{quote(CID, safe=':')}/events?timeout=0")
        self.assertEqual(connection.take(), b"")
        self.h.ownership.lose([self.h.streams.groupOf(CID)])
        data = connection.take()
        self.assertTrue(data.startswith(b"0\r\n\r\nHTTP/1.1 307 "), data[:80])
        self.assertFalse(connection.transport.disconnecting)
        self.assertIsNone(connection.transport.producer)
        self.assertEqual(len(self.h.api.eventStreams), 0)
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(len(self.h.limits.polls), 0)

    def test_connectionClose(self):
        """
        A request with C{Connection: close} gets a chunked stream that says so; once it
        ends the connection closes.
        """
        connection = self.connect()
        connection.send("GET", STREAM + "?after=0", extra="Connection: close\r\n")
        head, _, _ = connection.take().partition(b"\r\n\r\n")
        self.assertIn(b"\r\nTransfer-Encoding: chunked", head)
        self.assertIn(b"\r\nConnection: close", head)
        self.h.api.eventStreams.closeAll()
        self.assertTrue(connection.take().endswith(b"0\r\n\r\n"))
        self.assertTrue(connection.transport.disconnecting)

    def test_http10(self):
        """
        An HTTP/1.0 request gets the stream delimited by the connection's end, unframed.
        """
        connection = self.connect()
        connection.send("GET", STREAM + "?after=0", version="1.0")
        head, _, body = connection.take().partition(b"\r\n\r\n")
        self.assertIn(b"\r\nConnection: close", head)
        self.assertNotIn(b"Transfer-Encoding", head)
        self.assertTrue(body.startswith(b"retry: "))
        self.sendMessages(1)
        self.assertTrue(connection.take().startswith(b"event: message\nid: 1\n"))
        self.h.api.eventStreams.closeAll()
        self.assertEqual(connection.take(), b"")
        self.assertTrue(connection.transport.disconnecting)

    def test_headMethod(self):
        """
        HEAD gets the head only; nothing is left open and the connection serves the next
        request.
        """
        connection = self.connect()
        connection.send("HEAD", STREAM)
        head, sep, body = connection.take().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"\r\nContent-Type: text/event-stream; charset=utf-8", head)
        self.assertEqual((sep, body), (b"\r\n\r\n", b""))
        self.assertEqual(len(self.h.api.eventStreams), 0)
        self.assertEqual(len(self.h.limits.polls), 0)
        self.assertEqual(self.h.waiters(), 0)
        self.assertIsNone(connection.transport.producer)
        connection.send("HEAD", "/v1/inbox/stream")
        self.assertTrue(connection.take().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(self.created, 0)

    def test_errorBeforeTheStream(self):
        """
        A refused stream is the JSON error of the other hot routes, on the same connection.
        """
        connection = self.connect()
        connection.send("GET", STREAM, user=None)
        head, _, body = connection.take().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 401 "))
        self.assertIn(b'"unauthorized"', body)
        self.assertEqual(self.created, 0)
        self.assertFalse(connection.transport.disconnecting)

    def test_disconnect(self):
        """
        A connection lost frees the stream's waiter, its place in the limits, the gauge.
        """
        connection, _, _ = self.open()
        gauge = metrics.sseStreams._value.get()
        connection.protocol.connectionLost(None)
        self.assertEqual(metrics.sseStreams._value.get(), gauge - 1)
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(len(self.h.limits.polls), 0)
        self.assertEqual(len(self.h.api.eventStreams), 0)

    def test_slowReader(self):
        """
        The transport pauses the stream (its producer); past MAX_BACKLOG bytes written
        while paused the connection is cut.
        """
        connection, _, _ = self.open()
        stream = connection.transport.producer
        stream.pauseProducing()
        limited = metrics.limited.labels("stream_backlog")._value.get()
        self.sendMessages(sse.MAX_BACKLOG // 4000 + 2, text="y" * 3990)
        self.assertTrue(stream.closed)
        self.assertEqual(connection.transport.producer, None)
        self.assertEqual(metrics.limited.labels("stream_backlog")._value.get(), limited + 1)
        self.assertEqual(self.h.waiters(), 0)
        self.assertEqual(len(self.h.limits.polls), 0)


class _Stalled(protocol.Protocol):
    """
    A client that sends a request, reads the head, and then stops reading.
    """

    def __init__(self, request: bytes):
        self.request = request
        self.data = b""
        self.headed: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        _raw(self.transport).socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and not self.headed.called:
            self.transport.pauseProducing()
            self.headed.callback(None)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class RealTCPSlowReaderTests(TestCase):
    timeout = 60

    def test_cutOff(self):
        """
        On a real TCP connection, a client that stops reading is cut off by the transport's
        back-pressure: the stream is paused once the transport's buffer is full, and closed
        past MAX_BACKLOG.
        """
        return defer.ensureDeferred(self.cutOff(tls=False))

    def test_cutOffTLS(self):
        """
        The same over TLS, where the stream writes through the TLS transport and its
        producer is paused through it.
        """
        return defer.ensureDeferred(self.cutOff(tls=True))

    async def cutOff(self, tls: bool) -> None:
        h = Harness()
        self.addCleanup(h.stop)
        request = (f"GET {STREAM}?after=0 HTTP/1.1\r\nHost: chat.example\r\n"
                   f"Authorization: Bearer {h.token('alice')}\r\n\r\n").encode()
        client = _Stalled(request)
        creator = protocol.ClientCreator(reactor, lambda: client)
        if tls:
            keyPath, certPath, certPEM = selfSigned(self.mktemp_folder())
            with open(keyPath, "rb") as f:
                key = f.read()
            server = ssl.PrivateCertificate.loadPEM(key + certPEM).options()
            port = reactor.listenSSL(0, h.site, server, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            options = ssl.optionsForClientTLS("localhost", ssl.Certificate.loadPEM(certPEM))
            await creator.connectSSL("127.0.0.1", port.getHost().port, options)
        else:
            port = reactor.listenTCP(0, h.site, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            await creator.connectTCP("127.0.0.1", port.getHost().port)
        await _within(client.headed, 10)
        [stream] = h.api.eventStreams.open
        self.assertEqual(ISSLTransport.providedBy(stream._transport), tls)
        sock = _raw(stream._transport).socket
        # Events go out as they are written, never held for the client's delayed ACK.
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        limited = metrics.limited.labels("stream_backlog")._value.get()
        paused = False
        for _ in range(400):
            d = h.send(CID, "bob", "z" * 3990)
            h.settle()
            self.assertEqual(fired(d).code, 201)
            paused = paused or stream._paused
            if stream.closed:
                break
            # The reactor writes what the socket takes meanwhile.
            await deferLater(reactor, 0.001, lambda: None)
        self.assertTrue(paused)
        self.assertTrue(stream.closed)
        self.assertEqual(metrics.limited.labels("stream_backlog")._value.get(), limited + 1)
        client.transport.resumeProducing()
        await _within(client.lost, 10)
        self.assertEqual(h.waiters(), 0)
        self.assertEqual(len(h.limits.polls), 0)

    def mktemp_folder(self) -> str:
        folder = self.mktemp()
        os.makedirs(folder)
        return folder


def _raw(transport):
    """
    The TCP transport under C{transport} (itself, or the one under TLS).
    """
    return getattr(transport, "transport", None) or transport


def _within(d: defer.Deferred, seconds: float) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)
