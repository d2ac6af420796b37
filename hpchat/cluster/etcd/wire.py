# -*- test-case-name: tests.cluster.test_etcd -*-
"""
How etcd's v3 JSON gateway spells things, both ways: keys and values as
standard base64 with padding, int64 fields as strings, and answers whose zero,
false and empty fields are left out; and the typed answers built from them.

The encoding helpers (L{toBytes}, L{keyRange}, L{getInt}, ...) are for the
other modules of this package; callers see only the answer types.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, TypeVar, Union

from hpchat.cluster.etcd.errors import EtcdBadResponse, EtcdError

__all__ = [
    "DeleteRangeResponse",
    "JSONDict",
    "KeyLike",
    "KeyValue",
    "Lease",
    "OpResponse",
    "PutResponse",
    "RangeResult",
    "ResponseHeader",
    "TxnResult",
    "WatchEvent",
    "prefixRangeEnd",
]

#: A key or value as callers may give it (C{str} is encoded as UTF-8).
KeyLike = Union[bytes, bytearray, memoryview, str]

#: A JSON object as C{json.loads} gives it.
JSONDict = dict[str, Any]

T = TypeVar("T")


# ---------------------------------------------------------------------------
# Requests


def toBytes(value: KeyLike, what: str = "key") -> bytes:
    """
    C{value} as C{bytes}; C{str} is encoded as UTF-8.

    @raise TypeError: for anything else.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError("{} must be bytes or str, not {}".format(what, type(value).__name__))


def b64(value: bytes) -> str:
    """
    C{value} as the gateway wants C{bytes} fields: standard base64, padded.
    """
    return base64.b64encode(value).decode("ascii")


def prefixRangeEnd(prefix: KeyLike) -> bytes:
    """
    The C{range_end} that selects every key starting with C{prefix}: the prefix
    with its last byte incremented (trailing C{0xff} bytes dropped).  An empty
    or all-C{0xff} prefix gives C{b"\\0"}, etcd's "to the end of the keyspace".
    """
    end = bytearray(toBytes(prefix))
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def keyRange(key: KeyLike, prefix: bool = False, rangeEnd: KeyLike | None = None) -> JSONDict:
    """
    The C{key} / C{range_end} JSON fields for a key, a prefix or a range.

    @raise ValueError: for an empty key without C{prefix}.
    """
    raw = toBytes(key)
    fields: JSONDict = {}
    if prefix:
        end = prefixRangeEnd(raw)
        if not raw:
            raw = b"\x00"  # key "" with range_end "\0" means "every key"
        fields["range_end"] = b64(end)
    elif rangeEnd is not None:
        fields["range_end"] = b64(toBytes(rangeEnd, "rangeEnd"))
    if not raw:
        raise ValueError("an empty key needs prefix=True (every key)")
    fields["key"] = b64(raw)
    return fields


def int64(value: int, what: str) -> str:
    """
    An int64 request field, sent as a string (lease IDs go above 2**53).

    @raise TypeError: if C{value} is not an C{int} (C{bool} is refused).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("{} must be an int, not {!r}".format(what, value))
    return str(value)


# ---------------------------------------------------------------------------
# Answers: every getter treats a missing field as its default and raises
# EtcdBadResponse on a wrong type.


def bad(message: str) -> EtcdBadResponse:
    """
    The error for an answer that is not shaped as the gateway's.
    """
    return EtcdBadResponse("unexpected answer: {}".format(message))


def getInt(doc: JSONDict, name: str) -> int:
    value = doc.get(name)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise bad("{} is a boolean".format(name))
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 10)
        except ValueError:
            raise bad("{} is not an integer: {!r}".format(name, value[:50]))
    raise bad("{} has type {}".format(name, type(value).__name__))


def decodeBytes(value: object, name: str) -> bytes:
    """
    A base64 C{bytes} field's value, decoded.
    """
    if not isinstance(value, str):
        raise bad("{} is not a base64 string".format(name))
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad("{} is not valid base64: {!r}".format(name, value[:50]))


def getBytes(doc: JSONDict, name: str) -> bytes:
    value = doc.get(name)
    if value is None:
        return b""
    return decodeBytes(value, name)


def getBool(doc: JSONDict, name: str) -> bool:
    value = doc.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad("{} is not a boolean".format(name))
    return value


def getDict(doc: JSONDict, name: str) -> JSONDict:
    value = doc.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad("{} is not an object".format(name))
    return value


def getList(doc: JSONDict, name: str) -> list[Any]:
    value = doc.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad("{} is not a list".format(name))
    return value


def getStr(doc: JSONDict, name: str) -> str:
    value = doc.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad("{} is not a string".format(name))
    return value


def parsing(parse: Callable[[JSONDict], T], path: str) -> Callable[[JSONDict], T]:
    """
    Wrap a parser so that any surprise in the JSON becomes L{EtcdBadResponse}.
    """

    def parseOrFail(doc: JSONDict) -> T:
        try:
            return parse(doc)
        except EtcdError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise EtcdBadResponse("{}: unexpected answer: {}".format(path, e))

    return parseOrFail


# ---------------------------------------------------------------------------
# Answer types


@dataclass(frozen=True)
class ResponseHeader:
    """
    C{header} of every answer.  C{revision} is the store revision when the
    request was served (0 when etcd leaves it out, e.g. a compaction cancel).
    """

    clusterId: int = 0
    memberId: int = 0
    revision: int = 0
    raftTerm: int = 0

    @classmethod
    def fromJSON(cls, doc: JSONDict) -> ResponseHeader:
        return cls(
            clusterId=getInt(doc, "cluster_id"),
            memberId=getInt(doc, "member_id"),
            revision=getInt(doc, "revision"),
            raftTerm=getInt(doc, "raft_term"),
        )


def headerRevision(doc: JSONDict) -> int:
    """
    The store revision of an answer, from its C{header}.
    """
    return ResponseHeader.fromJSON(getDict(doc, "header")).revision


@dataclass(frozen=True)
class KeyValue:
    """
    One key.  C{createRevision} of a claim key is its owner's fencing token.
    A DELETE event's C{kv} has only C{key} and C{modRevision}.
    """

    key: bytes
    value: bytes = b""
    createRevision: int = 0
    modRevision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def fromJSON(cls, doc: object) -> KeyValue:
        if not isinstance(doc, dict):
            raise bad("kv is not an object")
        return cls(
            key=getBytes(doc, "key"),
            value=getBytes(doc, "value"),
            createRevision=getInt(doc, "create_revision"),
            modRevision=getInt(doc, "mod_revision"),
            version=getInt(doc, "version"),
            lease=getInt(doc, "lease"),
        )


def maybeKv(doc: JSONDict, name: str) -> KeyValue | None:
    value = doc.get(name)
    if value is None:
        return None
    return KeyValue.fromJSON(value)


class _Answer:
    """
    What every answer has: C{revision}, the store revision it was served at (from its
    C{header}).
    """

    header: ResponseHeader

    @property
    def revision(self) -> int:
        return self.header.revision


@dataclass(frozen=True)
class RangeResult(_Answer):
    """
    Answer of a range: C{kvs} in key order, C{count} of all matching keys
    (C{len(kvs)} may be smaller with a limit, then C{more} is true).
    """

    header: ResponseHeader
    kvs: list[KeyValue] = field(default_factory=list)
    more: bool = False
    count: int = 0

    @classmethod
    def fromJSON(cls, doc: JSONDict) -> RangeResult:
        return cls(
            header=ResponseHeader.fromJSON(getDict(doc, "header")),
            kvs=[KeyValue.fromJSON(kv) for kv in getList(doc, "kvs")],
            more=getBool(doc, "more"),
            count=getInt(doc, "count"),
        )


@dataclass(frozen=True)
class PutResponse(_Answer):
    """
    Answer of a put (C{prevKv} when it was asked for).
    """

    header: ResponseHeader
    prevKv: KeyValue | None = None

    @classmethod
    def fromJSON(cls, doc: JSONDict) -> PutResponse:
        return cls(
            header=ResponseHeader.fromJSON(getDict(doc, "header")),
            prevKv=maybeKv(doc, "prev_kv"),
        )


@dataclass(frozen=True)
class DeleteRangeResponse(_Answer):
    """
    Answer of a delete.
    """

    header: ResponseHeader
    deleted: int = 0
    prevKvs: list[KeyValue] = field(default_factory=list)

    @classmethod
    def fromJSON(cls, doc: JSONDict) -> DeleteRangeResponse:
        return cls(
            header=ResponseHeader.fromJSON(getDict(doc, "header")),
            deleted=getInt(doc, "deleted"),
            prevKvs=[KeyValue.fromJSON(kv) for kv in getList(doc, "prev_kvs")],
        )


#: One parsed answer in L{TxnResult.responses}.
OpResponse = Union["RangeResult", "PutResponse", "DeleteRangeResponse", "TxnResult"]


@dataclass(frozen=True)
class TxnResult(_Answer):
    """
    Answer of a txn.  C{responses} are parsed (L{RangeResult}, L{PutResponse},
    L{DeleteRangeResponse}, L{TxnResult}), one per op of the branch that ran.
    C{revision} is the store revision after the txn: for a successful claim,
    the claim's create revision, i.e. the fencing token.
    """

    header: ResponseHeader
    succeeded: bool = False
    responses: list[OpResponse] = field(default_factory=list)

    @classmethod
    def fromJSON(cls, doc: JSONDict) -> TxnResult:
        return cls(
            header=ResponseHeader.fromJSON(getDict(doc, "header")),
            succeeded=getBool(doc, "succeeded"),
            responses=[_parseOpResponse(r) for r in getList(doc, "responses")],
        )


_OP_RESPONSES: dict[str, Callable[[JSONDict], OpResponse]] = {
    "response_range": RangeResult.fromJSON,
    "response_put": PutResponse.fromJSON,
    "response_delete_range": DeleteRangeResponse.fromJSON,
    "response_txn": TxnResult.fromJSON,
}


def _parseOpResponse(doc: object) -> OpResponse:
    if not isinstance(doc, dict) or len(doc) != 1:
        raise bad("txn response is not a one-key object: {!r}".format(doc)[:200])
    [(name, body)] = doc.items()
    parser = _OP_RESPONSES.get(name)
    if parser is None:
        raise bad("unknown txn response {!r}".format(name))
    if not isinstance(body, dict):
        raise bad("{} is not an object".format(name))
    return parser(body)


@dataclass(frozen=True)
class Lease:
    """
    A granted lease.  C{ttl} is what etcd granted (it raises TTLs below its
    minimum, 2 s with default timings).
    """

    id: int
    ttl: int


@dataclass(frozen=True)
class WatchEvent:
    """
    One change: C{type} is C{"PUT"} or C{"DELETE"}; C{prevKv} only when the
    watch asked for it (and the previous value was still there).
    """

    type: str
    kv: KeyValue
    prevKv: KeyValue | None = None

    PUT: ClassVar[str] = "PUT"
    DELETE: ClassVar[str] = "DELETE"

    @classmethod
    def fromJSON(cls, doc: object) -> WatchEvent:
        if not isinstance(doc, dict):
            raise bad("event is not an object")
        kind = doc.get("type", cls.PUT)
        if kind in (0, "PUT"):
            kind = cls.PUT
        elif kind in (1, "DELETE"):
            kind = cls.DELETE
        else:
            raise bad("unknown event type {!r}".format(kind))
        if not isinstance(doc.get("kv"), dict):
            raise bad("event without kv")
        return cls(type=kind, kv=KeyValue.fromJSON(doc["kv"]), prevKv=maybeKv(doc, "prev_kv"))
