# -*- test-case-name: tests.nsq.test_protocol -*-
"""
L{hpchat.nsq.protocol.NSQProtocol} over a L{StringTransport}, on a L{task.Clock}.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from hpchat.nsq import commands
from hpchat.nsq.commands import IdentifyOptions, NSQError
from hpchat.nsq.framing import (
    FRAME_TYPE_ERROR,
    FRAME_TYPE_MESSAGE,
    FRAME_TYPE_RESPONSE,
    MAGIC_V2,
    Frame,
    Message,
)
from hpchat.nsq.protocol import (
    NotConnected,
    NSQConnectionLost,
    NSQMessage,
    NSQProtocol,
    UnexpectedResponse,
    defaultRequeueDelay,
)
from tests.nsq.wire import Wire

ID1 = b"0000000000000001"
ID2 = b"0000000000000002"
ID3 = b"0000000000000003"
IDENTIFY_RESPONSE = {"max_rdy_count": 100, "version": "1.3.0", "msg_timeout": 60000}


def response(data: bytes) -> bytes:
    return Frame(FRAME_TYPE_RESPONSE, data).encode()


def error(data: bytes) -> bytes:
    return Frame(FRAME_TYPE_ERROR, data).encode()


def message(messageId: bytes = ID1, body: bytes = b"body", attempts: int = 1) -> bytes:
    return Frame(FRAME_TYPE_MESSAGE, Message(123, attempts, messageId, body).encode()).encode()


OK = response(b"OK")
HEARTBEAT = response(b"_heartbeat_")


class ProtocolTestCase(Wire, SynchronousTestCase):
    """
    Builds a connected L{NSQProtocol} and reads what it wrote.
    """

    heartbeatInterval = 10000

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.messages: list[NSQMessage] = []
        self.results: dict[bytes, defer.Deferred[None]] = {}

    def handler(self, msg: NSQMessage) -> defer.Deferred[None]:
        self.messages.append(msg)
        d: defer.Deferred[None] = defer.Deferred()
        self.results[msg.id] = d
        return d

    def connect(self, identified: bool = True, **kwargs: Any) -> NSQProtocol:
        options = IdentifyOptions(clientId="c", hostname="h",
                                  heartbeatInterval=self.heartbeatInterval)
        self.protocol = NSQProtocol(self.clock, options, **kwargs)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        if identified:
            self.written()
            self.receive(response(json.dumps(IDENTIFY_RESPONSE).encode()))
            self.assertEqual(self.successResultOf(self.protocol.identified), IDENTIFY_RESPONSE)
        return self.protocol

    def subscribed(self, **kwargs: Any) -> NSQProtocol:
        kwargs.setdefault("handler", self.handler)
        p = self.connect(**kwargs)
        d = p.subscribe("topic", "channel")
        self.assertEqual(self.written(), b"SUB topic channel\n")
        self.receive(OK)
        self.successResultOf(d)
        return p

    def tearDown(self) -> None:
        if not hasattr(self, "protocol"):
            return
        if self.protocol.connected:
            self.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Whatever was waiting for the handshake has heard the outcome.
        self.protocol.identified.addErrback(lambda f: None)


class HandshakeTests(ProtocolTestCase):
    """
    Magic, IDENTIFY and its response.
    """

    def test_magicAndIdentify(self) -> None:
        """
        The connection starts with the V2 magic, then IDENTIFY with a JSON body.
        """
        self.connect(identified=False)
        data = self.written()
        self.assertEqual(data[:4], MAGIC_V2)
        self.assertEqual(data[4:13], b"IDENTIFY\n")
        (size,) = struct.unpack(">i", data[13:17])
        body = json.loads(data[17:])
        self.assertEqual(size, len(data) - 17)
        self.assertEqual(body["feature_negotiation"], True)
        self.assertEqual(body["heartbeat_interval"], 10000)
        self.assertEqual(body["user_agent"], commands.USER_AGENT)
        self.assertNoResult(self.protocol.identified)

    def test_negotiated(self) -> None:
        """
        The IDENTIFY JSON response is kept and fires L{NSQProtocol.identified}.
        """
        p = self.connect()
        self.assertEqual(p.negotiated, IDENTIFY_RESPONSE)
        self.assertEqual(p.counters.connections, 1)

    def test_plainOK(self) -> None:
        """
        A plain C{OK} (no feature negotiation) means no negotiated settings.
        """
        p = self.connect(identified=False)
        self.receive(OK)
        self.assertEqual(self.successResultOf(p.identified), {})

    def test_badIdentifyResponse(self) -> None:
        """
        Anything else is rejected and the connection dropped.
        """
        p = self.connect(identified=False)
        self.receive(response(b"what"))
        self.failureResultOf(p.identified, UnexpectedResponse)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(p.counters.rejectedFrames, 1)

    def test_identifyRefused(self) -> None:
        """
        A fatal error to IDENTIFY fails L{NSQProtocol.identified} and closes the connection.
        """
        p = self.connect(identified=False)
        self.receive(error(b"E_BAD_BODY IDENTIFY heartbeat interval (5) is invalid"))
        f = self.failureResultOf(p.identified, NSQError)
        self.assertEqual(f.value.code, "E_BAD_BODY")
        self.assertTrue(self.transport.disconnecting)

    def test_lostBeforeIdentified(self) -> None:
        p = self.connect(identified=False)
        self.lose()
        self.failureResultOf(p.identified, NSQConnectionLost)
        self.assertIsInstance(self.successResultOf(p.disconnected), ConnectionDone)


class HeartbeatTests(ProtocolTestCase):
    """
    Heartbeats are answered; silence is not tolerated.
    """

    def test_answered(self) -> None:
        """
        Each heartbeat gets a NOP, from the same C{dataReceived} call.
        """
        p = self.connect()
        self.receive(HEARTBEAT + HEARTBEAT)
        self.assertEqual(self.written(), b"NOP\nNOP\n")
        self.assertEqual(p.counters.heartbeats, 2)

    def test_betweenPublishAndOK(self) -> None:
        """
        A heartbeat between a PUB and its C{OK} is not taken for the reply.
        """
        p = self.connect()
        d = p.publish("t", b"x")
        self.written()
        self.receive(HEARTBEAT)
        self.assertNoResult(d)
        self.assertEqual(self.written(), b"NOP\n")
        self.receive(OK)
        self.assertIsNone(self.successResultOf(d))

    def test_silence(self) -> None:
        """
        No data for two heartbeat intervals aborts the connection.
        """
        p = self.connect()
        self.clock.advance(19.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(p.counters.livenessTimeouts, 1)

    def test_dataResetsWatchdog(self) -> None:
        """
        Any frame, or even part of one, restarts the two-interval count.
        """
        p = self.connect()
        for i in range(0, len(HEARTBEAT), 3):
            self.clock.advance(15)
            self.receive(HEARTBEAT[i:i + 3])
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(p.counters.heartbeats, 1)
        self.clock.advance(20)
        self.assertTrue(self.transport.disconnecting)

    def test_stoppedOnDisconnect(self) -> None:
        """
        The watchdog goes away with the connection (tearDown checks the clock is empty).
        """
        self.connect()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HeartbeatDefaultTests(ProtocolTestCase):
    """
    heartbeat_interval 0 means nsqd's default (30 s).
    """

    heartbeatInterval = 0

    def test_default(self) -> None:
        self.connect()
        self.clock.advance(59.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)


class ProducerTests(ProtocolTestCase):
    """
    PUB and MPUB, their replies in FIFO order, and errors.
    """

    def test_publish(self) -> None:
        p = self.connect()
        d = p.publish("topic", b"hello")
        self.assertEqual(self.written(), b"PUB topic\n\x00\x00\x00\x05hello")
        self.assertNoResult(d)
        self.receive(OK)
        self.successResultOf(d)
        self.assertEqual(p.counters.published, 1)

    def test_multiPublish(self) -> None:
        p = self.connect()
        d = p.multiPublish("topic", [b"a", b"bc"])
        self.assertEqual(self.written(), commands.mpub("topic", [b"a", b"bc"]))
        self.receive(OK)
        self.successResultOf(d)
        self.assertEqual(p.counters.published, 2)

    def test_fifo(self) -> None:
        """
        Replies are matched to publishes in order, split and merged as they come.
        """
        p = self.connect()
        ds = [p.publish("t", b"%d" % i) for i in range(3)]
        data = OK + HEARTBEAT + OK
        self.receive(data[:5])
        self.assertEqual([d.called for d in ds], [False, False, False])
        self.receive(data[5:])
        self.assertEqual([d.called for d in ds], [True, True, False])
        self.receive(OK)
        for d in ds:
            self.successResultOf(d)

    def test_fatalError(self) -> None:
        """
        A fatal error fails the publish it answers and closes the connection; the publishes
        after it fail with L{NSQConnectionLost} when the connection is gone.
        """
        p = self.connect()
        first = p.publish("t", b"ok")
        second = p.publish("t", b"x" * 10)
        third = p.publish("t", b"more")
        self.receive(OK + error(b"E_BAD_MESSAGE PUB message too big 10 > 5") + OK)
        self.successResultOf(first)
        f = self.failureResultOf(second, NSQError)
        self.assertEqual((f.value.code, f.value.description),
                         ("E_BAD_MESSAGE", "PUB message too big 10 > 5"))
        self.assertTrue(self.transport.disconnecting)
        # The frame after the error is ignored; the connection is going away.
        self.assertNoResult(third)
        self.lose()
        self.failureResultOf(third, NSQConnectionLost)
        self.assertEqual(p.counters.fatalErrors, 1)
        self.assertEqual(p.counters.publishFailed, 1)
        self.assertEqual(p.counters.published, 1)

    def test_notConnected(self) -> None:
        """
        Publishing on a closed or failing connection fails at once.
        """
        p = self.connect()
        self.receive(error(b"E_INVALID bad"))
        self.failureResultOf(p.publish("t", b"x"), NotConnected)
        self.lose()
        self.failureResultOf(p.publish("t", b"x"), NotConnected)
        self.assertEqual(self.written(), b"")

    def test_invalid(self) -> None:
        """
        An invalid topic or empty body raises before anything is sent.
        """
        p = self.connect()
        self.assertRaises(ValueError, p.publish, "no spaces", b"x")
        self.assertRaises(ValueError, p.publish, "t", b"")
        self.assertRaises(ValueError, p.multiPublish, "t", [])
        self.assertEqual(self.written(), b"")

    def test_cancelledPublish(self) -> None:
        """
        A publish cancelled by its caller still takes its reply from the FIFO.
        """
        p = self.connect()
        first = p.publish("t", b"1")
        second = p.publish("t", b"2")
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.receive(OK + OK)
        self.successResultOf(second)

    def test_unexpectedResponse(self) -> None:
        """
        A response with nothing waiting for it is rejected and the connection dropped.
        """
        p = self.connect()
        self.receive(OK)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(p.counters.rejectedFrames, 1)

    def test_wrongResponse(self) -> None:
        """
        A PUB answered with something other than C{OK} fails and drops the connection.
        """
        p = self.connect()
        d = p.publish("t", b"x")
        self.receive(response(b"CLOSE_WAIT"))
        self.failureResultOf(d, UnexpectedResponse)
        self.assertTrue(self.transport.disconnecting)

    def test_messageWithoutSubscription(self) -> None:
        """
        A message frame on a connection that did not subscribe is rejected.
        """
        p = self.connect()
        self.receive(message())
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(p.counters.rejectedFrames, 1)


class MalformedTests(ProtocolTestCase):
    """
    Malformed frames are counted and drop the connection; nothing raises.
    """

    def test_badSize(self) -> None:
        p = self.connect()
        d = p.publish("t", b"x")
        self.receive(struct.pack(">ii", 2, 0) + OK)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(p.counters.malformedFrames, 1)
        self.assertNoResult(d)
        self.lose()
        self.failureResultOf(d, NSQConnectionLost)

    def test_oversized(self) -> None:
        """
        A frame over the cap is refused from its size alone.
        """
        p = self.connect(maxFrameSize=1000)
        self.receive(struct.pack(">ii", 1001, FRAME_TYPE_MESSAGE))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(p.counters.malformedFrames, 1)

    def test_unknownType(self) -> None:
        p = self.connect()
        self.receive(struct.pack(">ii", 6, 7) + b"OK")
        self.assertEqual(p.counters.malformedFrames, 1)
        self.assertTrue(self.transport.disconnecting)

    def test_shortMessage(self) -> None:
        p = self.subscribed()
        self.receive(Frame(FRAME_TYPE_MESSAGE, b"\x00" * 20).encode())
        self.assertEqual(p.counters.malformedFrames, 1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.messages, [])

    def test_ignoredAfterDrop(self) -> None:
        """
        Once dropped, nothing more is read: no handler runs, no NOP is sent.
        """
        p = self.subscribed()
        self.receive(struct.pack(">ii", 2, 0))
        self.receive(message() + HEARTBEAT)
        self.assertEqual(self.messages, [])
        self.assertEqual(self.written(), b"")
        self.assertEqual(p.counters.malformedFrames, 1)

    def test_frameHandlingBug(self) -> None:
        """
        An exception while handling a frame (a bug) is logged and drops the connection instead
        of escaping C{dataReceived}.
        """
        p = self.connect()
        p._responseReceived = lambda data: 1 / 0  # type: ignore[method-assign]
        self.receive(OK)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(p.counters.rejectedFrames, 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ConsumerTests(ProtocolTestCase):
    """
    SUB, RDY, FIN, REQ, TOUCH.
    """

    def test_subscribe(self) -> None:
        p = self.connect(handler=self.handler)
        d = p.subscribe("topic", "channel#ephemeral")
        self.assertEqual(self.written(), b"SUB topic channel#ephemeral\n")
        self.assertFalse(p.subscribed)
        self.receive(OK)
        self.successResultOf(d)
        self.assertTrue(p.subscribed)

    def test_subscribeRefused(self) -> None:
        p = self.connect(handler=self.handler)
        d = p.subscribe("topic", "channel")
        self.receive(error(b"E_SUB_FAILED too many consumers"))
        self.failureResultOf(d, NSQError)
        self.assertFalse(p.subscribed)
        self.assertTrue(self.transport.disconnecting)

    def test_ready(self) -> None:
        """
        RDY is sent as asked, capped at the server's max_rdy_count.
        """
        p = self.subscribed()
        p.setReady(2)
        self.assertEqual(self.written(), b"RDY 2\n")
        p.setReady(1000)
        self.assertEqual(self.written(), b"RDY 100\n")
        self.assertEqual(p.readyCount, 100)
        p.setReady(0)
        self.assertEqual(self.written(), b"RDY 0\n")

    def test_finishOnSuccess(self) -> None:
        """
        The handler's success FINs the message.
        """
        p = self.subscribed()
        self.receive(message(ID1, b"hello", attempts=1))
        [msg] = self.messages
        self.assertEqual((msg.id, msg.body, msg.attempts, msg.timestamp), (ID1, b"hello", 1, 123))
        self.assertEqual(list(p.inFlight), [ID1])
        self.assertEqual(self.written(), b"")
        self.results[ID1].callback(None)
        self.assertEqual(self.written(), b"FIN " + ID1 + b"\n")
        self.assertEqual(p.inFlight, {})
        self.assertEqual((p.counters.consumed, p.counters.finished), (1, 1))

    def test_requeueOnFailure(self) -> None:
        """
        The handler's failure REQs the message with a delay that grows with the attempts.
        """
        p = self.subscribed()
        self.receive(message(ID1, attempts=1) + message(ID2, attempts=3))
        self.results[ID2].errback(RuntimeError("owner unreachable"))
        self.assertEqual(self.written(), b"REQ " + ID2 + b" 4000\n")
        self.results[ID1].errback(RuntimeError("owner unreachable"))
        self.assertEqual(self.written(), b"REQ " + ID1 + b" 1000\n")
        self.assertEqual((p.counters.requeued, p.counters.handlerFailures), (2, 2))
        self.assertEqual(p.inFlight, {})

    def test_requeueDelayPolicy(self) -> None:
        self.subscribed(requeueDelay=lambda attempts: attempts * 7)
        self.receive(message(ID1, attempts=5))
        self.results[ID1].errback(RuntimeError())
        self.assertEqual(self.written(), b"REQ " + ID1 + b" 35\n")

    def test_defaultRequeueDelay(self) -> None:
        self.assertEqual([defaultRequeueDelay(a) for a in (0, 1, 2, 3, 7, 8, 100)],
                         [1000, 1000, 2000, 4000, 60000, 60000, 60000])

    def test_synchronousHandler(self) -> None:
        """
        A handler that returns a value FINs at once; one that raises REQs.
        """
        def handler(msg: NSQMessage) -> None:
            if msg.body == b"bad":
                raise ValueError("bad")

        p = self.subscribed(handler=handler)
        self.receive(message(ID1, b"good") + message(ID2, b"bad"))
        self.assertEqual(self.written(), b"FIN " + ID1 + b"\nREQ " + ID2 + b" 1000\n")
        self.assertEqual(p.counters.finished, 1)

    def test_touch(self) -> None:
        p = self.subscribed()
        self.receive(message(ID1))
        self.messages[0].touch()
        self.assertEqual(self.written(), b"TOUCH " + ID1 + b"\n")
        self.results[ID1].callback(None)
        self.written()
        self.messages[0].touch()  # no longer ours
        self.assertEqual(self.written(), b"")
        self.assertEqual(p.counters.touched, 1)

    def test_nonFatalErrors(self) -> None:
        """
        E_FIN_FAILED, E_REQ_FAILED and E_TOUCH_FAILED leave the connection and the pending
        replies alone.
        """
        p = self.subscribed()
        d = p.publish("t", b"x")
        self.receive(error(b"E_FIN_FAILED FIN 1 failed ID not in flight")
                     + error(b"E_REQ_FAILED REQ 1 failed ID not in flight")
                     + error(b"E_TOUCH_FAILED TOUCH 1 failed client does not own message"))
        self.assertFalse(self.transport.disconnecting)
        self.assertNoResult(d)
        self.receive(OK)
        self.successResultOf(d)
        self.assertEqual(p.counters.nonFatalErrors, 3)
        self.assertEqual(p.counters.fatalErrors, 0)

    def test_fatalErrorOnConsumer(self) -> None:
        """
        A fatal error with no command waiting (e.g. to a bad RDY) closes the connection.
        """
        p = self.subscribed()
        self.receive(error(b"E_INVALID RDY count 99999 out of range 0-2500"))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(p.counters.fatalErrors, 1)

    def test_maxAttempts(self) -> None:
        """
        Beyond maxAttempts the message is FINed without running the handler.
        """
        p = self.subscribed(maxAttempts=3)
        self.receive(message(ID1, attempts=3) + message(ID2, attempts=4))
        self.assertEqual([m.id for m in self.messages], [ID1])
        self.assertEqual(self.written(), b"FIN " + ID2 + b"\n")
        self.assertEqual(p.counters.discarded, 1)

    def test_lostWhileHandling(self) -> None:
        """
        A handler finishing after the connection is gone sends nothing.
        """
        p = self.subscribed()
        self.receive(message(ID1))
        self.lose()
        self.results[ID1].callback(None)
        self.assertEqual(self.written(), b"")
        self.assertEqual(p.counters.finished, 0)

    def test_mergedAndSplitMessages(self) -> None:
        """
        Messages split across reads and merged with other frames all reach the handler.
        """
        self.subscribed()
        data = message(ID1, b"a") + HEARTBEAT + message(ID2, b"b" * 100) + message(ID3, b"c")
        for i in range(0, len(data), 7):
            self.receive(data[i:i + 7])
        self.assertEqual([m.body for m in self.messages], [b"a", b"b" * 100, b"c"])
        self.assertEqual(self.written(), b"NOP\n")


class CloseTests(ProtocolTestCase):
    """
    The CLS handshake.
    """

    def test_cls(self) -> None:
        """
        CLS, then on CLOSE_WAIT the in-flight messages are REQed at once (not FINed) and the
        connection closed; close() fires once it is gone.
        """
        p = self.subscribed()
        self.receive(message(ID1) + message(ID2))
        d = p.close(timeout=5)
        self.assertEqual(self.written(), b"CLS\n")
        self.assertTrue(p.closing)
        self.assertFalse(self.transport.disconnecting)
        self.receive(response(b"CLOSE_WAIT"))
        self.assertEqual(self.written(), b"REQ " + ID1 + b" 0\nREQ " + ID2 + b" 0\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(d)
        self.lose()
        self.successResultOf(d)
        # A handler finishing now is too late.
        self.results[ID1].callback(None)
        self.assertEqual(p.counters.finished, 0)
        self.assertEqual(p.counters.requeued, 2)

    def test_messageDuringClose(self) -> None:
        """
        A message sent before nsqd saw the CLS goes straight back, unhandled.
        """
        p = self.subscribed()
        p.close()
        self.written()
        self.receive(message(ID3))
        self.assertEqual(self.messages, [])
        self.assertEqual(self.written(), b"REQ " + ID3 + b" 0\n")
        p.setReady(5)
        self.assertEqual(self.written(), b"")

    def test_handlerDoneBeforeCloseWait(self) -> None:
        """
        Handlers finishing before CLOSE_WAIT still FIN (nsqd accepts FIN after CLS).
        """
        self.subscribed()
        self.receive(message(ID1))
        self.protocol.close()
        self.written()
        self.results[ID1].callback(None)
        self.assertEqual(self.written(), b"FIN " + ID1 + b"\n")
        self.receive(response(b"CLOSE_WAIT"))
        self.assertEqual(self.written(), b"")

    def test_noCloseWait(self) -> None:
        """
        Without CLOSE_WAIT the close goes on after the timeout; a connection that does not
        close is aborted after another one.
        """
        p = self.subscribed()
        self.receive(message(ID1))
        d = p.close(timeout=2)
        self.written()
        self.clock.advance(2)
        self.assertEqual(self.written(), b"REQ " + ID1 + b" 0\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(d)
        self.clock.advance(2)
        self.assertTrue(self.transport.disconnected)
        self.assertNoResult(d)
        self.lose()
        self.successResultOf(d)

    def test_notSubscribed(self) -> None:
        """
        A connection that never subscribed (a producer) just closes: CLS before SUB would be a
        fatal error.
        """
        p = self.connect()
        d = p.close()
        self.assertEqual(self.written(), b"")
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.successResultOf(d)

    def test_twice(self) -> None:
        """
        Closing again waits for the same close; closing a lost connection is immediate.
        """
        p = self.subscribed()
        d1 = p.close()
        d2 = p.close()
        self.assertEqual(self.written(), b"CLS\n")
        self.receive(response(b"CLOSE_WAIT"))
        self.lose()
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.successResultOf(p.close())

    def test_lostDuringClose(self) -> None:
        p = self.subscribed()
        d = p.close()
        self.lose()
        self.successResultOf(d)

    def test_fatalErrorToCLS(self) -> None:
        """
        An error instead of CLOSE_WAIT still ends in a closed connection and a fired close().
        """
        p = self.subscribed()
        self.receive(message(ID1))
        d = p.close()
        self.receive(error(b"E_INVALID cannot CLS in current state"))
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        self.successResultOf(d)
