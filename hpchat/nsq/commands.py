# -*- test-case-name: tests.nsq.test_framing -*-
"""
NSQ commands as bytes, nsqd's replies and errors as values.

Builders check what nsqd would otherwise answer with a fatal error (topic and channel names,
message ids, empty bodies, negative numbers), so a bug here fails fast at the caller instead of
costing a reconnect.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any, Sequence

from hpchat import strictjson
from hpchat.nsq.framing import MESSAGE_ID_LENGTH, encodeCommand, encodeMultiBody

OK = b"OK"
CLOSE_WAIT = b"CLOSE_WAIT"
HEARTBEAT = b"_heartbeat_"

# The only errors after which nsqd keeps the connection open (protocol_v2.go ClientErr).
NON_FATAL_ERRORS = frozenset({b"E_FIN_FAILED", b"E_REQ_FAILED", b"E_TOUCH_FAILED"})

_NAME = re.compile(r"[.a-zA-Z0-9_-]+(#ephemeral)?", re.ASCII)


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("hpchat")
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover
        pass
    import hpchat
    return getattr(hpchat, "__version__", "0")


USER_AGENT = f"hpchat/{_version()}"


class NSQError(Exception):
    """
    An error frame from nsqd: C{code} such as C{E_INVALID}, and its description.
    """

    def __init__(self, code: str, description: str = "") -> None:
        super().__init__(f"{code} {description}".rstrip())
        self.code = code
        self.description = description

    @property
    def fatal(self) -> bool:
        """
        nsqd closes the connection after every error but E_FIN/REQ/TOUCH_FAILED.
        """
        return self.code.encode("ascii", "replace") not in NON_FATAL_ERRORS


def parseError(data: bytes) -> NSQError:
    """
    Parse the data of an error frame (C{E_CODE description}). Never raises: an odd frame gives
    an L{NSQError} whose code is whatever came first, which counts as fatal.
    """
    text = data.decode("utf-8", "replace")
    code, _, description = text.partition(" ")
    return NSQError(code or "E_UNKNOWN", description)


def validName(name: str) -> bool:
    """
    Whether nsqd accepts C{name} as a topic or channel name.
    """
    return 1 <= len(name) <= 64 and _NAME.fullmatch(name) is not None


def _name(kind: str, name: str) -> bytes:
    if not isinstance(name, str) or not validName(name):
        raise ValueError(f"invalid {kind} name {name!r}")
    return name.encode("ascii")


def _messageId(messageId: bytes) -> bytes:
    if not isinstance(messageId, bytes) or len(messageId) != MESSAGE_ID_LENGTH:
        raise ValueError(f"invalid message id {messageId!r}")
    return messageId


def _count(kind: str, n: int) -> bytes:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"invalid {kind} {n!r}")
    return str(n).encode("ascii")


def _body(body: bytes) -> bytes:
    if not isinstance(body, (bytes, bytearray)) or not body:
        raise ValueError("a message body must be non-empty bytes")
    return bytes(body)


@dataclass(frozen=True)
class IdentifyOptions:
    """
    What we ask for in IDENTIFY (reference/nsq.md §1.3). Times are in milliseconds; C{None}
    leaves the server default.

    The defaults are tuned for chat latency: nsqd flushes its per-client output buffer after
    25 ms (its minimum) instead of 250 ms.
    """

    clientId: str | None = None
    hostname: str | None = None
    userAgent: str = USER_AGENT
    heartbeatInterval: int = 30000
    outputBufferTimeout: int | None = 25
    outputBufferSize: int | None = None
    msgTimeout: int | None = None

    def toJSON(self) -> dict[str, Any]:
        hostname = self.hostname if self.hostname is not None else socket.gethostname()
        clientId = self.clientId if self.clientId is not None else hostname.split(".")[0]
        body: dict[str, Any] = {
            "client_id": clientId,
            "hostname": hostname,
            "user_agent": self.userAgent,
            "feature_negotiation": True,
            "heartbeat_interval": self.heartbeatInterval,
            "tls_v1": False,
            "snappy": False,
            "deflate": False,
        }
        if self.outputBufferTimeout is not None:
            body["output_buffer_timeout"] = self.outputBufferTimeout
        if self.outputBufferSize is not None:
            body["output_buffer_size"] = self.outputBufferSize
        if self.msgTimeout is not None:
            body["msg_timeout"] = self.msgTimeout
        return body


def identify(options: IdentifyOptions) -> bytes:
    return encodeCommand(b"IDENTIFY", body=strictjson.dumpb(options.toJSON()))


def parseIdentifyResponse(data: bytes) -> dict[str, Any]:
    """
    The negotiated settings from the reply to IDENTIFY: a JSON object, or C{{}} for a plain C{OK}
    (a server without feature negotiation).

    @raise ValueError: the reply is neither.
    """
    if data == OK:
        return {}
    if data[:1] != b"{":
        raise ValueError(f"unexpected IDENTIFY response {data[:64]!r}")
    result = strictjson.loads(data)
    if not isinstance(result, dict):  # pragma: no cover - starts with "{"
        raise ValueError("IDENTIFY response is not an object")
    return result


def sub(topic: str, channel: str) -> bytes:
    return encodeCommand(b"SUB", _name("topic", topic), _name("channel", channel))


def rdy(count: int) -> bytes:
    return encodeCommand(b"RDY", _count("RDY count", count))


def fin(messageId: bytes) -> bytes:
    return encodeCommand(b"FIN", _messageId(messageId))


def req(messageId: bytes, delayMs: int = 0) -> bytes:
    """
    Requeue: nsqd delivers the message again after C{delayMs} (clamped to --max-req-timeout).
    """
    return encodeCommand(b"REQ", _messageId(messageId), _count("REQ delay", delayMs))


def touch(messageId: bytes) -> bytes:
    return encodeCommand(b"TOUCH", _messageId(messageId))


def pub(topic: str, body: bytes) -> bytes:
    return encodeCommand(b"PUB", _name("topic", topic), body=_body(body))


def mpub(topic: str, bodies: Sequence[bytes]) -> bytes:
    if not bodies:
        raise ValueError("MPUB needs at least one message")
    return encodeCommand(b"MPUB", _name("topic", topic),
                         body=encodeMultiBody([_body(b) for b in bodies]))


def dpub(topic: str, delayMs: int, body: bytes) -> bytes:
    return encodeCommand(b"DPUB", _name("topic", topic), _count("DPUB delay", delayMs),
                         body=_body(body))


def nop() -> bytes:
    return b"NOP\n"


def cls() -> bytes:
    return b"CLS\n"
