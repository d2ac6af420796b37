"""
The HTTP edge of a real C{twistd hpchat} node over real sockets: every hot route over TLS,
smuggling and oversized requests refused, deadlines and the connection limit of [limits].
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet.error import ConnectError
from twisted.trial import unittest

from hpchat.web.auth import Authenticator
from hpchat.web.internal import InternalAuth
from tests.support.node import SECRET, Node, twistdCommand
from tests.support.process import theReactor, waitFor
from tests.support.trial import asyncTest, sleep
from tests.web.test_channel import parseAnswers

CID = "dm:alice:bob"


def selfSigned(folder: str) -> tuple[str, str, bytes]:
    """
    A key and a self-signed certificate for localhost and 127.0.0.1, written to C{folder}:
    their paths and the certificate's PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    certPEM = cert.public_bytes(serialization.Encoding.PEM)
    keyPath, certPath = os.path.join(folder, "key.pem"), os.path.join(folder, "cert.pem")
    with open(keyPath, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    with open(certPath, "wb") as f:
        f.write(certPEM)
    return keyPath, certPath, certPEM


class RawClient(protocol.Protocol):
    """
    Writes raw bytes and collects what comes back until the connection closes.
    """

    def __init__(self):
        self.data = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.closed.callback(self.data)


class EdgeNodeTests(unittest.TestCase):
    timeout = 60

    async def startNode(self, tls: bool = False, **limits) -> Node:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, "edge", sections={"limits": {k: str(v) for k, v in limits.items()}})
        self.tls = None
        if tls:
            keyPath, certPath, certPEM = selfSigned(workdir)
            node.sections["node"] = {
                "listen": f"ssl:{node.port}:interface=127.0.0.1:privateKey={keyPath}"
                          f":certKey={certPath}",
                "advertise_url": f"https://127.0.0.1:{node.port}"}
            node.writeConfig()
            self.tls = ssl.optionsForClientTLS(
                "localhost", trustRoot=ssl.Certificate.loadPEM(certPEM))
        self.addCleanup(lambda: defer.ensureDeferred(node.stop()))
        self.node = node
        if tls:
            await self.startTLS(node)
        else:
            await node.start()
        auth = Authenticator(SECRET.encode(), theReactor())
        self.tokens = {u: auth.mint(u, 3600).encode() for u in ("alice", "bob")}
        return node

    async def startTLS(self, node: Node) -> None:
        """
        Start C{node} and wait until it answers /readyz over TLS (ready: its store open).
        """
        with open(node.logPath, "ab") as log:  # noqa: ASYNC230 (opening a local file)
            node.process = subprocess.Popen(  # noqa: ASYNC220 (as Node.start does)
                twistdCommand() + ["-n", "--pidfile=", "hpchat", "--config", node.configPath],
                stdout=log, stderr=subprocess.STDOUT, cwd=node.workdir,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))

        async def answers():
            if node.process.poll() is not None:
                raise RuntimeError(f"the node exited:\n{node.log()[-3000:]}")
            try:
                data = await self.exchange(b"GET /readyz HTTP/1.1\r\nHost: n\r\n"
                                           b"Connection: close\r\n\r\n", timeout=2)
            except (OSError, ConnectError, SSL.Error):
                return False
            return data.startswith(b"HTTP/1.1 200 ")

        await waitFor(answers, 20, "the node over TLS")

    async def connect(self) -> RawClient:
        reactor = theReactor()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.node.port, timeout=5)
        if self.tls is not None:
            endpoint = endpoints.wrapClientTLS(self.tls, endpoint)
        client = RawClient()
        await endpoint.connect(protocol.Factory.forProtocol(lambda: client))
        return client

    async def exchange(self, data: bytes, timeout: float = 10.0) -> bytes:
        """
        Write C{data} on a new connection; fire with all that came back once it is closed
        (by the node, or by the client after C{timeout}).
        """
        client = await self.connect()
        client.transport.write(data)
        timer = theReactor().callLater(timeout, client.transport.loseConnection)
        data = await client.closed
        if timer.active():
            timer.cancel()
        return data

    def request(self, method: str, path: str, body=None, user: str = "alice",
                close: bool = False, auth: bytes | None = None) -> bytes:
        data = b"" if body is None else json.dumps(body).encode()
        head = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n" % (
            method.encode(), path.encode(), auth or b"Bearer " + self.tokens[user])
        if body is not None:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        if close:
            head += b"Connection: close\r\n"
        return head + b"\r\n" + data

    def assertNoTraceback(self) -> None:
        log = self.node.log()
        self.assertNotIn("Traceback", log)

    @asyncTest
    async def test_hotRoutesOverTLS(self):
        """
        Over TLS, every hot route (and Klein's) is answered inside the TLS stream: send,
        typing, events, history, the inbox and a notification between nodes, pipelined on
        one connection.
        """
        await self.startNode(tls=True)
        internal = InternalAuth(SECRET.encode(), theReactor()).mint("other").encode()
        notification = {"id": "n1", "user": "bob", "type": "ping", "from": "alice", "data": {}}
        data = (self.request("POST", f"/v1/conversations/{CID}/messages", {"text": "hi"})
                + self.request("POST", f"/v1/conversations/{CID}/typing", {"typing": True})
                + self.request("GET", f"/v1/conversations/{CID}/events?after=0&timeout=0")
                + self.request("GET", f"/v1/conversations/{CID}/messages")
                + self.request("GET", "/v1/inbox/events?timeout=0", user="bob")
                + self.request("POST", "/internal/v1/notifications", notification,
                               auth=b"Bearer " + internal)
                + self.request("GET", "/healthz", close=True))
        answers = parseAnswers(await self.exchange(data))
        self.assertEqual([a[0] for a in answers], [201, 204, 200, 200, 200, 201, 200])
        self.assertEqual(json.loads(answers[2][2])["events"][0]["text"], "hi")
        self.assertEqual(json.loads(answers[3][2])["messages"][0]["text"], "hi")
        self.assertEqual(json.loads(answers[5][2])["event"]["type"], "ping")
        self.assertNoTraceback()

    @asyncTest
    async def test_smugglingAndJunkRefused(self):
        """
        A Transfer-Encoding hidden behind a bare LF is refused and the send smuggled in the
        body never runs; bad methods, %00 and non-UTF-8 hosts are JSON 400s without a
        traceback in the log; a static file is served.
        """
        await self.startNode()
        hidden = self.request("POST", f"/v1/conversations/{CID}/messages", {"text": "smuggled"})
        smuggle = (b"POST /v1/dev/login HTTP/1.1\r\nHost: n\r\nX-Pad: a\nTransfer-Encoding: "
                   b"chunked\r\nContent-Length: %d\r\n\r\n0\r\n\r\n%s"
                   % (len(hidden) + 5, hidden))
        for data in [smuggle, b"get /static/app.js HTTP/1.1\r\nHost: n\r\n\r\n",
                     b"GET /static/%00 HTTP/1.1\r\nHost: n\r\n\r\n",
                     b"GET /healthz HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n",
                     b"GET /v1/cluster%ff HTTP/1.1\r\nHost: n\r\n\r\n"]:
            [(status, _, body)] = parseAnswers(await self.exchange(data))
            self.assertEqual((status, json.loads(body)["error"]["code"]), (400, "bad_request"))
        await sleep(0.2)
        [(status, _, body)] = parseAnswers(await self.exchange(
            self.request("GET", f"/v1/conversations/{CID}/messages", close=True)))
        self.assertEqual((status, json.loads(body)["messages"]), (200, []))
        answers = parseAnswers(await self.exchange(
            b"GET /static/app.js HTTP/1.1\r\nHost: n\r\n\r\n"
            b"GET /static/none.js HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n"))
        self.assertEqual([a[0] for a in answers], [200, 404])
        self.assertGreater(len(answers[0][2]), 100)
        self.assertNoTraceback()

    @asyncTest
    async def test_limits(self):
        """
        A huge Content-Length is a 413 at once; a head sent slowly is a 408 after
        head_timeout; past max_connections the node answers 503 overloaded.
        """
        await self.startNode(head_timeout=1, max_connections=4)
        [(status, _, _)] = parseAnswers(await self.exchange(
            b"POST /v1/dev/login HTTP/1.1\r\nHost: n\r\nContent-Length: 100000000000\r\n\r\n"))
        self.assertEqual(status, 413)
        client = await self.connect()
        for byte in b"GET /healthz HTTP/1.1\r\n":
            client.transport.write(bytes([byte]))
            await sleep(0.05)
            if client.data:
                break
        [(status, _, body)] = parseAnswers(await client.closed)
        self.assertEqual((status, json.loads(body)["error"]["code"]), (408, "request_timeout"))
        held = [await self.connect() for _ in range(4)]
        await sleep(0.2)
        [(status, headers, body)] = parseAnswers(await self.exchange(b"", timeout=5))
        self.assertEqual((status, json.loads(body)["error"]["code"]), (503, "overloaded"))
        self.assertEqual(headers[b"retry-after"], b"1")
        for client in held:
            client.transport.loseConnection()
            await client.closed
        self.assertNoTraceback()
