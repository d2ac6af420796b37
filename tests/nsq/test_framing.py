# -*- test-case-name: tests.nsq.test_framing -*-
"""
L{hpchat.nsq.framing} and L{hpchat.nsq.commands}: bytes in, values out, and back.
"""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hpchat.nsq import commands
from hpchat.nsq.commands import IdentifyOptions, NSQError
from hpchat.nsq.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_TYPE_ERROR,
    FRAME_TYPE_MESSAGE,
    FRAME_TYPE_RESPONSE,
    Frame,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    MalformedFrame,
    Message,
    decodeMessage,
    encodeCommand,
    encodeFrames,
    encodeMultiBody,
)

MESSAGE = Message(1700000000123456789, 1, b"0a1b2c3d4e5f6a7b", b"hello")


def decodeAll(data: bytes, maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE) -> list[Frame]:
    decoder = FrameDecoder(maxFrameSize)
    decoder.feed(data)
    return decoder.frames()


class FrameDecoderTests(SynchronousTestCase):
    """
    L{FrameDecoder} cuts a byte stream into frames.
    """

    def test_frameTypes(self) -> None:
        """
        Response, error and message frames decode to their type and data.
        """
        frames = [
            Frame(FRAME_TYPE_RESPONSE, b"OK"),
            Frame(FRAME_TYPE_RESPONSE, b"_heartbeat_"),
            Frame(FRAME_TYPE_ERROR, b"E_INVALID invalid command FOO"),
            Frame(FRAME_TYPE_MESSAGE, MESSAGE.encode()),
        ]
        self.assertEqual(decodeAll(encodeFrames(frames)), frames)

    def test_wireFormat(self) -> None:
        """
        The size field counts the frame type plus the data; integers are big-endian.
        """
        self.assertEqual(Frame(FRAME_TYPE_RESPONSE, b"OK").encode(),
                         b"\x00\x00\x00\x06\x00\x00\x00\x00OK")
        self.assertEqual(decodeAll(b"\x00\x00\x00\x04\x00\x00\x00\x01"),
                         [Frame(FRAME_TYPE_ERROR, b"")])

    def test_splitFrames(self) -> None:
        """
        A frame fed one byte at a time comes out once, when complete.
        """
        data = encodeFrames([Frame(FRAME_TYPE_RESPONSE, b"OK"),
                             Frame(FRAME_TYPE_MESSAGE, MESSAGE.encode())])
        decoder = FrameDecoder()
        out = []
        for i in range(len(data)):
            decoder.feed(data[i:i + 1])
            out.extend(decoder.frames())
            if i < 9:
                self.assertEqual(out, [])
        self.assertEqual([f.data for f in out], [b"OK", MESSAGE.encode()])
        self.assertEqual(decoder.buffered, 0)

    def test_mergedFrames(self) -> None:
        """
        Several frames and the start of another in one read: the whole ones come out and the
        rest waits.
        """
        frames = [Frame(FRAME_TYPE_RESPONSE, b"OK")] * 3
        data = encodeFrames(frames) + b"\x00\x00\x00\x06\x00"
        decoder = FrameDecoder()
        decoder.feed(data)
        self.assertEqual(decoder.frames(), frames)
        self.assertEqual(decoder.buffered, 5)
        decoder.feed(b"\x00\x00\x00OK")
        self.assertEqual(decoder.nextFrame(), frames[0])
        self.assertIsNone(decoder.nextFrame())

    def test_manyFramesCompact(self) -> None:
        """
        A long stream in one buffer decodes completely (the buffer is compacted on the way).
        """
        frames = [Frame(FRAME_TYPE_MESSAGE, MESSAGE.encode() + bytes([i % 256]) * 100)
                  for i in range(2000)]
        data = encodeFrames(frames)
        decoder = FrameDecoder()
        decoder.feed(data[:-1])
        self.assertEqual(decoder.frames(), frames[:-1])
        decoder.feed(data[-1:])
        self.assertEqual(decoder.frames(), frames[-1:])

    def test_tooLarge(self) -> None:
        """
        A size above the cap is a L{FrameTooLarge} as soon as the size is read, before the body.
        """
        decoder = FrameDecoder(maxFrameSize=100)
        decoder.feed(struct.pack(">ii", 101, FRAME_TYPE_MESSAGE))
        error = self.assertRaises(FrameTooLarge, decoder.nextFrame)
        self.assertEqual((error.size, error.maxFrameSize), (101, 100))
        self.assertEqual(decodeAll(Frame(0, b"x" * 96).encode(), 100), [Frame(0, b"x" * 96)])

    def test_impossibleSize(self) -> None:
        """
        A size below 4 (no room for the frame type) or negative is malformed.
        """
        for size in (0, 3, -1, -(2 ** 31)):
            self.assertRaises(MalformedFrame, decodeAll, struct.pack(">ii", size, 0))

    def test_unknownFrameType(self) -> None:
        self.assertRaises(MalformedFrame, decodeAll, struct.pack(">ii", 4, 3))

    def test_httpPort(self) -> None:
        """
        An HTTP response (we connected to nsqd's HTTP port) is malformed and says so.
        """
        error = self.assertRaises(MalformedFrame, decodeAll, b"HTTP/1.1 400 Bad Request\r\n")
        self.assertIn("HTTP", str(error))

    def test_staysBroken(self) -> None:
        """
        After an error the decoder raises again, even if valid frames follow.
        """
        decoder = FrameDecoder()
        decoder.feed(struct.pack(">ii", 4, 9))
        self.assertRaises(MalformedFrame, decoder.nextFrame)
        decoder.feed(Frame(0, b"OK").encode())
        self.assertRaises(MalformedFrame, decoder.nextFrame)

    def test_framesBeforeError(self) -> None:
        """
        L{FrameDecoder.nextFrame} hands out the good frames before the bad one.
        """
        decoder = FrameDecoder()
        decoder.feed(Frame(0, b"OK").encode() + struct.pack(">ii", 1, 0))
        self.assertEqual(decoder.nextFrame(), Frame(0, b"OK"))
        self.assertRaises(MalformedFrame, decoder.nextFrame)


class MessageTests(SynchronousTestCase):
    """
    L{decodeMessage}: timestamp, attempts, id, body.
    """

    def test_decode(self) -> None:
        data = struct.pack(">qH", 1700000000123456789, 3) + b"0a1b2c3d4e5f6a7b" + b"body \x00\xff"
        self.assertEqual(decodeMessage(data),
                         Message(1700000000123456789, 3, b"0a1b2c3d4e5f6a7b", b"body \x00\xff"))

    def test_roundTrip(self) -> None:
        self.assertEqual(decodeMessage(MESSAGE.encode()), MESSAGE)

    def test_emptyBody(self) -> None:
        """
        The header alone is a message with an empty body (nsqd never sends one, but it parses).
        """
        self.assertEqual(decodeMessage(MESSAGE.encode()[:26]).body, b"")

    def test_tooShort(self) -> None:
        self.assertRaises(MalformedFrame, decodeMessage, MESSAGE.encode()[:25])


class EncodeTests(SynchronousTestCase):
    """
    Command encoding.
    """

    def test_command(self) -> None:
        self.assertEqual(encodeCommand(b"SUB", b"t", b"c"), b"SUB t c\n")
        self.assertEqual(encodeCommand(b"NOP"), b"NOP\n")

    def test_body(self) -> None:
        self.assertEqual(encodeCommand(b"PUB", b"t", body=b"hello"),
                         b"PUB t\n\x00\x00\x00\x05hello")

    def test_badParameters(self) -> None:
        """
        A parameter nsqd would split or read as a new command is refused.
        """
        for bad in (b"", b"a b", b"a\nb", b"a\r"):
            self.assertRaises(ValueError, encodeCommand, b"SUB", bad, b"c")
        self.assertRaises(ValueError, encodeCommand, b"")

    def test_multiBody(self) -> None:
        """
        MPUB's body: count, then size-prefixed messages; the outer size counts all of it.
        """
        body = encodeMultiBody([b"ab", b"cde"])
        self.assertEqual(body, b"\x00\x00\x00\x02" b"\x00\x00\x00\x02ab" b"\x00\x00\x00\x03cde")
        command = encodeCommand(b"MPUB", b"t", body=body)
        self.assertEqual(command[:7], b"MPUB t\n")
        self.assertEqual(struct.unpack(">i", command[7:11])[0], 4 + (4 + 2) + (4 + 3))


class CommandTests(SynchronousTestCase):
    """
    L{hpchat.nsq.commands} builders, checks and parsers.
    """

    ID = b"0a1b2c3d4e5f6a7b"

    def test_simpleCommands(self) -> None:
        self.assertEqual(commands.sub("chat.events", "hpchat"), b"SUB chat.events hpchat\n")
        self.assertEqual(commands.rdy(2), b"RDY 2\n")
        self.assertEqual(commands.rdy(0), b"RDY 0\n")
        self.assertEqual(commands.fin(self.ID), b"FIN " + self.ID + b"\n")
        self.assertEqual(commands.req(self.ID, 1500), b"REQ " + self.ID + b" 1500\n")
        self.assertEqual(commands.req(self.ID), b"REQ " + self.ID + b" 0\n")
        self.assertEqual(commands.touch(self.ID), b"TOUCH " + self.ID + b"\n")
        self.assertEqual(commands.nop(), b"NOP\n")
        self.assertEqual(commands.cls(), b"CLS\n")

    def test_publishCommands(self) -> None:
        self.assertEqual(commands.pub("t", b"hi"), b"PUB t\n\x00\x00\x00\x02hi")
        self.assertEqual(commands.mpub("t", [b"a", b"bc"]),
                         b"MPUB t\n\x00\x00\x00\x0f\x00\x00\x00\x02"
                         b"\x00\x00\x00\x01a\x00\x00\x00\x02bc")
        self.assertEqual(commands.dpub("t", 250, b"x"), b"DPUB t 250\n\x00\x00\x00\x01x")

    def test_refusedBeforeSending(self) -> None:
        """
        What nsqd would answer with a fatal error is refused here with a ValueError.
        """
        self.assertRaises(ValueError, commands.sub, "bad topic", "c")
        self.assertRaises(ValueError, commands.sub, "t", "bad#channel")
        self.assertRaises(ValueError, commands.sub, "t" * 65, "c")
        self.assertRaises(ValueError, commands.pub, "", b"x")
        self.assertRaises(ValueError, commands.pub, "t", b"")
        self.assertRaises(ValueError, commands.mpub, "t", [])
        self.assertRaises(ValueError, commands.mpub, "t", [b"a", b""])
        self.assertRaises(ValueError, commands.fin, b"short")
        self.assertRaises(ValueError, commands.fin, "0a1b2c3d4e5f6a7b")
        self.assertRaises(ValueError, commands.req, self.ID, -1)
        self.assertRaises(ValueError, commands.rdy, -1)

    def test_names(self) -> None:
        """
        Topic and channel names: nsqd's regex and 64-character limit, #ephemeral included.
        """
        self.assertTrue(commands.validName("a" * 64))
        self.assertTrue(commands.validName("a" * 54 + "#ephemeral"))
        self.assertFalse(commands.validName("a" * 55 + "#ephemeral"))
        self.assertTrue(commands.validName("hpchat.notifications"))
        self.assertTrue(commands.validName("A-b_c.9"))
        for bad in ("", "a b", "a#b", "#ephemeral", "é", "a/b"):
            self.assertFalse(commands.validName(bad), bad)

    def test_identify(self) -> None:
        """
        IDENTIFY asks for feature negotiation, our user agent, the heartbeat, output buffering
        tuned for latency and, when set, a message timeout; TLS and compression stay off.
        """
        options = IdentifyOptions(clientId="node1", hostname="node1.example",
                                  heartbeatInterval=5000, msgTimeout=10000)
        data = commands.identify(options)
        self.assertTrue(data.startswith(b"IDENTIFY\n"))
        (size,) = struct.unpack(">i", data[9:13])
        body = json.loads(data[13:])
        self.assertEqual(size, len(data) - 13)
        self.assertEqual(body, {
            "client_id": "node1", "hostname": "node1.example",
            "user_agent": commands.USER_AGENT, "feature_negotiation": True,
            "heartbeat_interval": 5000, "output_buffer_timeout": 25, "msg_timeout": 10000,
            "tls_v1": False, "snappy": False, "deflate": False,
        })
        self.assertTrue(commands.USER_AGENT.startswith("hpchat/"))

    def test_identifyDefaults(self) -> None:
        """
        Without a msg_timeout or buffer size the server defaults stay; the host name comes from
        the machine.
        """
        body = IdentifyOptions().toJSON()
        self.assertNotIn("msg_timeout", body)
        self.assertNotIn("output_buffer_size", body)
        self.assertTrue(body["hostname"])
        self.assertEqual(body["client_id"], body["hostname"].split(".")[0])
        self.assertEqual(IdentifyOptions(outputBufferSize=-1).toJSON()["output_buffer_size"], -1)

    def test_identifyResponse(self) -> None:
        self.assertEqual(commands.parseIdentifyResponse(b"OK"), {})
        self.assertEqual(commands.parseIdentifyResponse(b'{"max_rdy_count": 2500}'),
                         {"max_rdy_count": 2500})
        self.assertRaises(ValueError, commands.parseIdentifyResponse, b"E_WHAT")
        self.assertRaises(ValueError, commands.parseIdentifyResponse, b"{not json")

    def test_errors(self) -> None:
        """
        Only E_FIN_FAILED, E_REQ_FAILED and E_TOUCH_FAILED are non-fatal.
        """
        error = commands.parseError(b"E_FIN_FAILED FIN 0a1b failed ID not in flight")
        self.assertIsInstance(error, NSQError)
        self.assertEqual(error.code, "E_FIN_FAILED")
        self.assertEqual(error.description, "FIN 0a1b failed ID not in flight")
        self.assertFalse(error.fatal)
        for code in ("E_REQ_FAILED", "E_TOUCH_FAILED"):
            self.assertFalse(commands.parseError(code.encode() + b" x").fatal)
        for code in ("E_INVALID", "E_BAD_TOPIC", "E_BAD_MESSAGE", "E_PUB_FAILED",
                     "E_BAD_BODY", "E_IDENTIFY_FAILED", "E_SUB_FAILED", "E_MPUB_FAILED"):
            self.assertTrue(commands.parseError(code.encode() + b" x").fatal, code)
        self.assertEqual(str(commands.parseError(b"E_INVALID invalid command FOO")),
                         "E_INVALID invalid command FOO")

    def test_oddErrors(self) -> None:
        """
        An error frame without a description, empty, or not UTF-8 still parses (as fatal).
        """
        self.assertEqual(commands.parseError(b"E_INVALID").code, "E_INVALID")
        self.assertEqual(commands.parseError(b"").code, "E_UNKNOWN")
        self.assertTrue(commands.parseError(b"\xff\xfe junk").fatal)


validFrames = st.lists(
    st.one_of(
        st.builds(Frame, st.just(FRAME_TYPE_RESPONSE), st.binary(max_size=64)),
        st.builds(Frame, st.just(FRAME_TYPE_ERROR), st.binary(max_size=64)),
        st.builds(lambda ts, attempts, mid, body: Frame(
            FRAME_TYPE_MESSAGE, Message(ts, attempts, mid, body).encode()),
            st.integers(-(2 ** 63), 2 ** 63 - 1), st.integers(0, 65535),
            st.binary(min_size=16, max_size=16), st.binary(max_size=200)),
    ),
    max_size=20,
)


class FrameDecoderPropertyTests(SynchronousTestCase):
    """
    Hypothesis properties of the frame parser.
    """

    @settings(max_examples=300, deadline=None)
    @given(validFrames, st.lists(st.integers(0, 10000), max_size=30))
    def test_anySplit(self, frames: list[Frame], cuts: list[int]) -> None:
        """
        However a valid stream is split into reads, the same frames come out.
        """
        data = encodeFrames(frames)
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        decoder = FrameDecoder()
        out: list[Frame] = []
        for start, end in zip(points, points[1:]):
            decoder.feed(data[start:end])
            out.extend(decoder.frames())
        self.assertEqual(out, frames)
        self.assertEqual(decoder.buffered, 0)
        for frame in out:
            if frame.frameType == FRAME_TYPE_MESSAGE:
                self.assertEqual(decodeMessage(frame.data).encode(), frame.data)

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=10), st.integers(4, 2 ** 31 - 1))
    def test_randomBytes(self, chunks: list[bytes], maxFrameSize: int) -> None:
        """
        Random bytes never raise anything but a L{FrameError}, and message frames never raise
        anything but a L{MalformedFrame}.
        """
        decoder = FrameDecoder(maxFrameSize)
        for chunk in chunks:
            decoder.feed(chunk)
            try:
                frames = decoder.frames()
            except FrameError:
                self.assertRaises(FrameError, decoder.nextFrame)
                return
            for frame in frames:
                self.assertIn(frame.frameType, (0, 1, 2))
                if frame.frameType == FRAME_TYPE_MESSAGE:
                    try:
                        decodeMessage(frame.data)
                    except MalformedFrame:
                        pass
                else:
                    commands.parseError(frame.data)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=0, max_size=40))
    def test_randomMessageData(self, data: bytes) -> None:
        """
        Message frame data of any length decodes or raises L{MalformedFrame}.
        """
        try:
            message = decodeMessage(data)
        except MalformedFrame:
            self.assertLess(len(data), 26)
        else:
            self.assertEqual(message.encode(), data)
