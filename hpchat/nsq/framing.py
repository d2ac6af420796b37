# -*- test-case-name: tests.nsq.test_framing -*-
"""
NSQ V2 wire framing: frames from nsqd, message frame payloads and command encoding.

Frames are C{[size int32][frame type int32][data]}, big-endian, where size counts the frame type
plus the data. They arrive split and merged across TCP reads, so L{FrameDecoder} buffers bytes
and hands out whole frames. Anything it cannot make sense of is a L{FrameError}: the caller drops
the connection, because the stream cannot be resynchronised.

Commands are one line, C{NAME param param\\n}, optionally followed by C{[size int32][body]}.

This module does no I/O and knows nothing of Twisted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

MAGIC_V2 = b"  V2"

FRAME_TYPE_RESPONSE = 0
FRAME_TYPE_ERROR = 1
FRAME_TYPE_MESSAGE = 2
FRAME_TYPES = (FRAME_TYPE_RESPONSE, FRAME_TYPE_ERROR, FRAME_TYPE_MESSAGE)

MESSAGE_ID_LENGTH = 16
# timestamp int64 + attempts uint16 + 16-byte id
MESSAGE_HEADER_LENGTH = 8 + 2 + MESSAGE_ID_LENGTH

# nsqd's default --max-msg-size.
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
# The size field of a message frame is 4 (frame type) + 26 (header) + body.
DEFAULT_MAX_FRAME_SIZE = DEFAULT_MAX_MESSAGE_SIZE + 4 + MESSAGE_HEADER_LENGTH

# b"HTTP" read as a big-endian int32: we are talking to nsqd's HTTP port.
_HTTP_SIZE = struct.unpack(">i", b"HTTP")[0]

_INT32 = struct.Struct(">i")
_HEADER = struct.Struct(">ii")
_MESSAGE_HEADER = struct.Struct(">qH16s")


class FrameError(Exception):
    """
    The byte stream from nsqd is not a valid sequence of frames; drop the connection.
    """


class MalformedFrame(FrameError):
    """
    A frame with an impossible size or an unknown type, or a message frame too short to hold
    its header.
    """


class FrameTooLarge(FrameError):
    """
    A frame larger than the configured cap (roughly nsqd's --max-msg-size plus headers).
    """

    def __init__(self, size: int, maxFrameSize: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the cap of {maxFrameSize}")
        self.size = size
        self.maxFrameSize = maxFrameSize


@dataclass(frozen=True)
class Frame:
    """
    One frame from nsqd: a type (L{FRAME_TYPES}) and its data.
    """

    frameType: int
    data: bytes

    def encode(self) -> bytes:
        """
        The frame's wire form (what nsqd sends); used by tests.
        """
        return _HEADER.pack(len(self.data) + 4, self.frameType) + self.data


@dataclass(frozen=True)
class Message:
    """
    The payload of a message frame.

    @ivar timestamp: nanoseconds since the epoch, set by nsqd at publish time.
    @ivar attempts: delivery attempts, 1 on the first delivery.
    @ivar id: the 16-byte message id (ASCII hex) to FIN, REQ or TOUCH it with.
    """

    timestamp: int
    attempts: int
    id: bytes
    body: bytes

    def encode(self) -> bytes:
        """
        The message frame's data (what nsqd sends); used by tests.
        """
        return _MESSAGE_HEADER.pack(self.timestamp, self.attempts, self.id) + self.body


def decodeMessage(data: bytes) -> Message:
    """
    Decode the data of a message frame.

    @raise MalformedFrame: if C{data} is too short for the message header.
    """
    if len(data) < MESSAGE_HEADER_LENGTH:
        raise MalformedFrame(f"message frame of {len(data)} bytes is shorter than its header")
    timestamp, attempts, messageId = _MESSAGE_HEADER.unpack_from(data)
    return Message(timestamp, attempts, messageId, bytes(data[MESSAGE_HEADER_LENGTH:]))


class FrameDecoder:
    """
    Turns a byte stream into L{Frame}s. Feed it what arrives, then take frames with
    L{nextFrame} until it returns C{None}.

    After a L{FrameError} the decoder stays broken: the stream has lost its framing.
    """

    def __init__(self, maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.maxFrameSize = maxFrameSize
        self._buffer = bytearray()
        self._offset = 0
        self._error: FrameError | None = None

    def feed(self, data: bytes) -> None:
        """
        Append bytes read from the connection.
        """
        self._buffer += data

    def nextFrame(self) -> Frame | None:
        """
        The next complete frame, or C{None} if more bytes are needed.

        @raise FrameError: the stream is malformed (and stays so).
        """
        if self._error is not None:
            raise self._error
        try:
            return self._nextFrame()
        except FrameError as e:
            self._error = e
            self._buffer = bytearray()
            self._offset = 0
            raise

    def frames(self) -> list[Frame]:
        """
        All complete frames buffered so far.

        @raise FrameError: as L{nextFrame}; frames before the bad one are lost to the caller,
            so the protocol uses L{nextFrame} instead.
        """
        result = []
        while (frame := self.nextFrame()) is not None:
            result.append(frame)
        return result

    @property
    def buffered(self) -> int:
        """
        Bytes received but not yet returned as frames.
        """
        return len(self._buffer) - self._offset

    def _nextFrame(self) -> Frame | None:
        buf, offset = self._buffer, self._offset
        available = len(buf) - offset
        if available < 4:
            return None
        (size,) = _INT32.unpack_from(buf, offset)
        if size == _HTTP_SIZE:
            raise MalformedFrame("got an HTTP response: is this nsqd's HTTP port?")
        if size < 4:
            raise MalformedFrame(f"impossible frame size {size}")
        if size > self.maxFrameSize:
            raise FrameTooLarge(size, self.maxFrameSize)
        if available < 4 + size:
            return None
        (frameType,) = _INT32.unpack_from(buf, offset + 4)
        if frameType not in FRAME_TYPES:
            raise MalformedFrame(f"unknown frame type {frameType}")
        data = bytes(buf[offset + 8:offset + 4 + size])
        offset += 4 + size
        # Compact once the consumed prefix dominates, so a long-lived buffer stays small
        # without copying on every frame.
        if offset == len(buf):
            self._buffer = bytearray()
            offset = 0
        elif offset > 65536 and offset * 2 > len(buf):
            del buf[:offset]
            offset = 0
        self._offset = offset
        return Frame(frameType, data)


def _checkParam(param: bytes) -> bytes:
    if not param or any(c in param for c in b" \n\r"):
        raise ValueError(f"invalid command parameter {param!r}")
    return param


def encodeCommand(name: bytes, *params: bytes, body: bytes | None = None) -> bytes:
    """
    Encode a command: C{name}, then the parameters separated by single spaces, a newline, and
    the size-prefixed C{body} when given.

    @raise ValueError: for an empty parameter or one holding a space or newline (nsqd would
        read it as several parameters or commands).
    """
    line = b" ".join([_checkParam(name), *(_checkParam(p) for p in params)]) + b"\n"
    if body is None:
        return line
    return line + _INT32.pack(len(body)) + body


def encodeMultiBody(bodies: Sequence[bytes]) -> bytes:
    """
    The body of an MPUB: C{[count int32]} then C{[size int32][body]} per message. The command's
    own size prefix (L{encodeCommand}) then counts 4 + sum(4 + len(body)), as nsqd expects.
    """
    parts: list[bytes] = [_INT32.pack(len(bodies))]
    for body in bodies:
        parts.append(_INT32.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


def encodeFrames(frames: Iterable[Frame]) -> bytes:
    """
    Concatenate the wire form of C{frames}; used by tests.
    """
    return b"".join(frame.encode() for frame in frames)
