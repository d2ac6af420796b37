# -*- test-case-name: tests.cluster.test_etcd -*-
"""
A small Twisted client for etcd's v3 JSON gateway (grpc-gateway), over treq.

Only the C{/v3/} paths are used: they exist in etcd 3.4, 3.5 and 3.6, while
C{/v3alpha} is gone since 3.4 and C{/v3beta} is only a rewrite kept by accident.

Encoding rules of the gateway that this module hides from its callers:

  - every C{bytes} field (keys, values, range ends) is standard base64 with
    padding; callers pass and get C{bytes} (C{str} is encoded as UTF-8);
  - int64 fields come back as JSON strings (lease IDs go above 2**53); they
    are sent as strings too and returned as Python C{int}s;
  - zero, false and empty fields are left out of answers, so a missing field
    means its default (C{0}, C{False}, C{b""}, C{[]}).

Errors are typed (see L{EtcdError} and its subclasses), every call has a
timeout, and every call can be cancelled (which closes its connection).

Watches (L{Watch}) use one streaming POST to C{/v3/watch}.  Over HTTP/1.1 the
gateway is half-duplex: it answers only once the request body is complete, so
the create request is sent whole and the rest is a read-only stream of
newline-delimited C{{"result": ...}} objects.  Cancelling a watch closes its
connection.  L{WatchKeeper} keeps a mirror of a key prefix current across
disconnects (resuming from the next revision) and compactions (re-reading).
"""

import base64
import binascii
import json
import random
from dataclasses import dataclass, field

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionClosed
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from treq.client import HTTPClient

__all__ = [
    "Compacted",
    "Compare",
    "DeleteRangeResponse",
    "EtcdBadResponse",
    "EtcdClient",
    "EtcdError",
    "EtcdTimeout",
    "EtcdUnavailable",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "LeaseTimeToLive",
    "Op",
    "PutResponse",
    "RangeResult",
    "ResponseHeader",
    "TxnResult",
    "Watch",
    "WatchCanceled",
    "WatchEvent",
    "WatchKeeper",
    "prefixRangeEnd",
]

# gRPC status codes that etcd puts in error bodies as "code".
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_OUT_OF_RANGE = 11
GRPC_UNAVAILABLE = 14

# A watch line longer than this without a newline is not etcd talking.
_MAX_LINE = 64 * 1024 * 1024


# ---------------------------------------------------------------------------
# Errors


class EtcdError(Exception):
    """
    Base of every error this client raises.

    @ivar message: etcd's message, or ours.
    @ivar code: the gRPC status code from the error body, if any.
    @ivar status: the HTTP status, if the error came from a response.
    """

    def __init__(self, message, code=None, status=None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class EtcdTimeout(EtcdError):
    """
    No complete answer within the call's timeout; the connection was closed.
    """


class EtcdUnavailable(EtcdError):
    """
    etcd could not be reached (refused, reset, lost mid-answer) or said it
    cannot serve now (gRPC UNAVAILABLE: no leader, request timed out, ...).
    """


class LeaseNotFound(EtcdError):
    """
    The lease does not exist: never granted, expired or revoked.
    """


class Compacted(EtcdError):
    """
    The revision asked for has been compacted away.  The caller must re-read
    the state with L{EtcdClient.range} and watch again from that range's
    C{header.revision + 1}.

    @ivar compactRevision: the compaction revision etcd reported, or L{None}
        when it did not say (a plain range at a compacted revision).
    """

    def __init__(self, compactRevision=None, message=None, code=None, status=None):
        if message is None:
            message = "required revision has been compacted (compact revision {})".format(
                compactRevision
            )
        super().__init__(message, code=code, status=status)
        self.compactRevision = compactRevision


class EtcdBadResponse(EtcdError):
    """
    The answer was not what the v3 gateway sends: not JSON, not an object,
    wrong field types, bad base64, a plain-text 404 (wrong path or gateway
    disabled), ...
    """


class WatchCanceled(EtcdError):
    """
    A watch ended because it was cancelled: by L{Watch.cancel} (C{byClient}
    is C{True}) or by the server (C{cancel_reason} in C{message}).
    """

    def __init__(self, message, byClient=False):
        super().__init__(message)
        self.byClient = byClient


def _errorFromBody(doc, status, path):
    """
    Build the typed error for a gateway error body.

    Unary calls answer C{{"error": str, "message": str, "code": int}}; streams
    (keepalive, watch) answer C{{"error": {"grpc_code": int, "http_code": int,
    "message": str}}} in grpc-gateway v1 (etcd 3.4) and the unary shape in v2.
    """
    error = doc.get("error")
    if isinstance(error, dict):
        code = error.get("grpc_code", error.get("code"))
        message = error.get("message")
        status = error.get("http_code", status)
    else:
        code = doc.get("code")
        message = doc.get("message") or error
    if not isinstance(code, int) or isinstance(code, bool):
        code = None
    if not isinstance(message, str):
        message = "unknown error: {!r}".format(doc)[:500]
    message = "{}: {}".format(path, message)
    lowered = message.lower()
    if code == GRPC_NOT_FOUND and "lease not found" in lowered:
        return LeaseNotFound(message, code=code, status=status)
    if code == GRPC_OUT_OF_RANGE and "compacted" in lowered:
        return Compacted(None, message=message, code=code, status=status)
    if code == GRPC_UNAVAILABLE:
        return EtcdUnavailable(message, code=code, status=status)
    if code == GRPC_DEADLINE_EXCEEDED:
        return EtcdTimeout(message, code=code, status=status)
    return EtcdError(message, code=code, status=status)


def _failureToError(failure, path):
    """
    Turn a transport-level failure into a typed L{EtcdError}; leave our own
    errors and cancellation by the caller alone.
    """
    if failure.check(EtcdError, CancelledError):
        return failure
    if failure.check(ConnectingCancelledError):
        # The caller cancelled while we were still connecting.
        return Failure(CancelledError())
    if failure.check(ConnectError, ConnectionClosed):
        return Failure(EtcdUnavailable("{}: {}".format(path, failure.value)))
    # ResponseFailed (and its ResponseNeverReceived), RequestTransmissionFailed
    # and RequestNotSent all mean the connection broke around our request (or
    # the peer does not speak HTTP): nobody usable is there.
    if failure.check(ResponseFailed, RequestTransmissionFailed):
        return Failure(EtcdUnavailable("{}: {}".format(path, failure.value)))
    if failure.check(RequestNotSent):
        return Failure(EtcdUnavailable("{}: request not sent".format(path)))
    return failure


# ---------------------------------------------------------------------------
# Encoding helpers


def _toBytes(value, what="key"):
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError("{} must be bytes or str, not {}".format(what, type(value).__name__))


def _b64(value):
    return base64.b64encode(value).decode("ascii")


def prefixRangeEnd(prefix):
    """
    The C{range_end} that selects every key starting with C{prefix}: the prefix
    with its last byte incremented (trailing C{0xff} bytes dropped).  An empty
    or all-C{0xff} prefix gives C{b"\\0"}, etcd's "to the end of the keyspace".
    """
    prefix = _toBytes(prefix)
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def _keyRange(key, prefix=False, rangeEnd=None):
    """
    The C{key} / C{range_end} JSON fields for a key, a prefix or a range.
    """
    key = _toBytes(key)
    fields = {}
    if prefix:
        end = prefixRangeEnd(key)
        if not key:
            key = b"\x00"  # key "" with range_end "\0" means "every key"
        fields["range_end"] = _b64(end)
    elif rangeEnd is not None:
        fields["range_end"] = _b64(_toBytes(rangeEnd, "rangeEnd"))
    if not key:
        raise ValueError("an empty key needs prefix=True (every key)")
    fields["key"] = _b64(key)
    return fields


def _int64(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("{} must be an int, not {!r}".format(what, value))
    return str(value)


# Answers: every helper raises EtcdBadResponse on a wrong type.


def _bad(message):
    return EtcdBadResponse("unexpected answer: {}".format(message))


def _getInt(doc, name):
    value = doc.get(name)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise _bad("{} is a boolean".format(name))
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 10)
        except ValueError:
            raise _bad("{} is not an integer: {!r}".format(name, value[:50]))
    raise _bad("{} has type {}".format(name, type(value).__name__))


def _getBytes(doc, name):
    value = doc.get(name)
    if value is None:
        return b""
    if not isinstance(value, str):
        raise _bad("{} is not a base64 string".format(name))
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("{} is not valid base64: {!r}".format(name, value[:50]))


def _getBool(doc, name):
    value = doc.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad("{} is not a boolean".format(name))
    return value


def _getDict(doc, name):
    value = doc.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("{} is not an object".format(name))
    return value


def _getList(doc, name):
    value = doc.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("{} is not a list".format(name))
    return value


def _getStr(doc, name):
    value = doc.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad("{} is not a string".format(name))
    return value


# ---------------------------------------------------------------------------
# Results


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
    def fromJSON(cls, doc):
        return cls(
            clusterId=_getInt(doc, "cluster_id"),
            memberId=_getInt(doc, "member_id"),
            revision=_getInt(doc, "revision"),
            raftTerm=_getInt(doc, "raft_term"),
        )


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
    def fromJSON(cls, doc):
        if not isinstance(doc, dict):
            raise _bad("kv is not an object")
        return cls(
            key=_getBytes(doc, "key"),
            value=_getBytes(doc, "value"),
            createRevision=_getInt(doc, "create_revision"),
            modRevision=_getInt(doc, "mod_revision"),
            version=_getInt(doc, "version"),
            lease=_getInt(doc, "lease"),
        )


def _headerRevision(doc):
    return ResponseHeader.fromJSON(_getDict(doc, "header")).revision


def _maybeKv(doc, name):
    value = doc.get(name)
    if value is None:
        return None
    return KeyValue.fromJSON(value)


class _Answer:
    """
    What every answer has: C{revision}, the store revision it was served at (from its
    C{header}).
    """

    @property
    def revision(self):
        return self.header.revision


@dataclass(frozen=True)
class RangeResult(_Answer):
    """
    Answer of a range: C{kvs} in key order, C{count} of all matching keys
    (C{len(kvs)} may be smaller with a limit, then C{more} is true).
    """

    header: ResponseHeader
    kvs: list = field(default_factory=list)
    more: bool = False
    count: int = 0

    @classmethod
    def fromJSON(cls, doc):
        return cls(
            header=ResponseHeader.fromJSON(_getDict(doc, "header")),
            kvs=[KeyValue.fromJSON(kv) for kv in _getList(doc, "kvs")],
            more=_getBool(doc, "more"),
            count=_getInt(doc, "count"),
        )


@dataclass(frozen=True)
class PutResponse(_Answer):
    """
    Answer of a put inside a txn (C{prevKv} when it was asked for).
    """

    header: ResponseHeader
    prevKv: object = None

    @classmethod
    def fromJSON(cls, doc):
        return cls(
            header=ResponseHeader.fromJSON(_getDict(doc, "header")),
            prevKv=_maybeKv(doc, "prev_kv"),
        )


@dataclass(frozen=True)
class DeleteRangeResponse(_Answer):
    """
    Answer of a delete inside a txn.
    """

    header: ResponseHeader
    deleted: int = 0
    prevKvs: list = field(default_factory=list)

    @classmethod
    def fromJSON(cls, doc):
        return cls(
            header=ResponseHeader.fromJSON(_getDict(doc, "header")),
            deleted=_getInt(doc, "deleted"),
            prevKvs=[KeyValue.fromJSON(kv) for kv in _getList(doc, "prev_kvs")],
        )


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
    responses: list = field(default_factory=list)

    @classmethod
    def fromJSON(cls, doc):
        return cls(
            header=ResponseHeader.fromJSON(_getDict(doc, "header")),
            succeeded=_getBool(doc, "succeeded"),
            responses=[_parseOpResponse(r) for r in _getList(doc, "responses")],
        )


_OP_RESPONSES = {
    "response_range": RangeResult,
    "response_put": PutResponse,
    "response_delete_range": DeleteRangeResponse,
    "response_txn": TxnResult,
}


def _parseOpResponse(doc):
    if not isinstance(doc, dict) or len(doc) != 1:
        raise _bad("txn response is not a one-key object: {!r}".format(doc)[:200])
    [(name, body)] = doc.items()
    parser = _OP_RESPONSES.get(name)
    if parser is None:
        raise _bad("unknown txn response {!r}".format(name))
    if not isinstance(body, dict):
        raise _bad("{} is not an object".format(name))
    return parser.fromJSON(body)


@dataclass(frozen=True)
class Lease:
    """
    A granted lease.  C{ttl} is what etcd granted (it raises TTLs below its
    minimum, 2 s with default timings).
    """

    id: int
    ttl: int


@dataclass(frozen=True)
class LeaseTimeToLive:
    """
    Answer of timetolive: remaining C{ttl}, C{grantedTtl} and, when asked
    for, the C{keys} attached.
    """

    id: int
    ttl: int
    grantedTtl: int
    keys: list = field(default_factory=list)


@dataclass(frozen=True)
class WatchEvent:
    """
    One change: C{type} is C{"PUT"} or C{"DELETE"}; C{prevKv} only when the
    watch asked for it (and the previous value was still there).
    """

    type: str
    kv: KeyValue
    prevKv: object = None

    PUT = "PUT"
    DELETE = "DELETE"

    @classmethod
    def fromJSON(cls, doc):
        if not isinstance(doc, dict):
            raise _bad("event is not an object")
        kind = doc.get("type", cls.PUT)
        if kind in (0, "PUT"):
            kind = cls.PUT
        elif kind in (1, "DELETE"):
            kind = cls.DELETE
        else:
            raise _bad("unknown event type {!r}".format(kind))
        if not isinstance(doc.get("kv"), dict):
            raise _bad("event without kv")
        return cls(type=kind, kv=KeyValue.fromJSON(doc["kv"]), prevKv=_maybeKv(doc, "prev_kv"))


def _parsing(parse, path):
    """
    Wrap a parser so that any surprise in the JSON becomes L{EtcdBadResponse}.
    """

    def parseOrFail(doc):
        try:
            return parse(doc)
        except EtcdError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise EtcdBadResponse("{}: unexpected answer: {}".format(path, e))

    return parseOrFail


# ---------------------------------------------------------------------------
# Txn building blocks

_COMPARE_RESULTS = {
    "==": "EQUAL",
    "=": "EQUAL",
    "!=": "NOT_EQUAL",
    ">": "GREATER",
    "<": "LESS",
    "EQUAL": "EQUAL",
    "NOT_EQUAL": "NOT_EQUAL",
    "GREATER": "GREATER",
    "LESS": "LESS",
}


class Compare:
    """
    One txn condition, built with the class methods::

        Compare.createRevision(key, "==", 0)       # key absent: claim it
        Compare.createRevision(key, "==", token)   # still my claim (fencing)
        Compare.modRevision(key, "==", rev)        # CAS
        Compare.value(key, "==", b"node-a")
        Compare.version(key, ">", 0)
        Compare.lease(key, "==", leaseId)

    Beware: on a missing key every revision compares as 0 (C{MOD < 100}
    succeeds); compare C{createRevision == token} to require existence.
    """

    def __init__(self, target, key, op, field, value):
        try:
            result = _COMPARE_RESULTS[op]
        except KeyError:
            raise ValueError("compare operator must be one of ==, !=, >, <: {!r}".format(op))
        self.json = {"target": target, "result": result, field: value}
        self.json.update(_keyRange(key))

    @classmethod
    def createRevision(cls, key, op, revision):
        return cls("CREATE", key, op, "create_revision", _int64(revision, "revision"))

    @classmethod
    def modRevision(cls, key, op, revision):
        return cls("MOD", key, op, "mod_revision", _int64(revision, "revision"))

    @classmethod
    def version(cls, key, op, version):
        return cls("VERSION", key, op, "version", _int64(version, "version"))

    @classmethod
    def value(cls, key, op, value):
        return cls("VALUE", key, op, "value", _b64(_toBytes(value, "value")))

    @classmethod
    def lease(cls, key, op, leaseId):
        return cls("LEASE", key, op, "lease", _int64(leaseId, "lease"))

    def __repr__(self):
        return "<Compare {}>".format(self.json)


class Op:
    """
    One txn operation, built with L{Op.put}, L{Op.range}, L{Op.delete} or
    L{Op.txn}; also what the plain client calls send.
    """

    def __init__(self, kind, body):
        self.kind = kind
        self.body = body

    @property
    def json(self):
        return {self.kind: self.body}

    @classmethod
    def put(cls, key, value, lease=None, ignoreLease=False, prevKv=False):
        """
        Without C{lease} (and without C{ignoreLease}) a put detaches the key
        from any lease it had; C{ignoreLease=True} keeps it.
        """
        body = _keyRange(key)
        body["value"] = _b64(_toBytes(value, "value"))
        if lease:
            if ignoreLease:
                raise ValueError("lease and ignoreLease are exclusive")
            body["lease"] = _int64(lease, "lease")
        if ignoreLease:
            body["ignore_lease"] = True
        if prevKv:
            body["prev_kv"] = True
        return cls("request_put", body)

    @classmethod
    def range(
        cls,
        key,
        prefix=False,
        limit=0,
        revision=None,
        keysOnly=False,
        countOnly=False,
        rangeEnd=None,
    ):
        body = _keyRange(key, prefix, rangeEnd)
        if limit:
            body["limit"] = _int64(limit, "limit")
        if revision:
            body["revision"] = _int64(revision, "revision")
        if keysOnly:
            body["keys_only"] = True
        if countOnly:
            body["count_only"] = True
        return cls("request_range", body)

    @classmethod
    def delete(cls, key, prefix=False, prevKv=False, rangeEnd=None):
        body = _keyRange(key, prefix, rangeEnd)
        if prevKv:
            body["prev_kv"] = True
        return cls("request_delete_range", body)

    @classmethod
    def txn(cls, compare=(), success=(), failure=()):
        return cls("request_txn", _txnBody(compare, success, failure))

    def __repr__(self):
        return "<Op {}>".format(self.json)


def _txnBody(compare, success, failure):
    for c in compare:
        if not isinstance(c, Compare):
            raise TypeError("compare items must be Compare, not {!r}".format(c))
    for op in list(success) + list(failure):
        if not isinstance(op, Op):
            raise TypeError("success/failure items must be Op, not {!r}".format(op))
    body = {}
    if compare:
        body["compare"] = [c.json for c in compare]
    if success:
        body["success"] = [op.json for op in success]
    if failure:
        body["failure"] = [op.json for op in failure]
    return body


# ---------------------------------------------------------------------------
# HTTP plumbing


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body written in one go.  Unlike treq's default (a
    FileBodyProducer on the global cooperator) it needs no reactor.
    """

    def __init__(self, body):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer):
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _BodyReader(Protocol):
    """
    Receive a response body: buffered (C{finished} fires with the bytes) or
    streamed to C{onData} (C{finished} fires with C{b""}).

    Cancelling C{finished}, or L{stop}, closes the connection.
    """

    def __init__(self, onData=None):
        self.finished = Deferred(self._cancel)
        self._onData = onData
        self._chunks = []

    def _cancel(self, d):
        self.stop()

    def stop(self):
        """
        Close the connection; C{finished} then fires from L{connectionLost}
        (unless it was cancelled).
        """
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data):
        if self.finished.called:
            return
        if self._onData is None:
            self._chunks.append(data)
        else:
            self._onData(data)

    def connectionLost(self, reason):
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)


def _decodeJSON(body, status, path):
    """
    Parse a unary answer; raise the typed error for error answers.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        raise EtcdBadResponse(
            "{}: HTTP {} with a body that is not JSON: {!r}".format(path, status, body[:200]),
            status=status,
        )
    if not isinstance(doc, dict):
        raise EtcdBadResponse(
            "{}: HTTP {} with JSON that is not an object".format(path, status), status=status
        )
    if status != 200 or "error" in doc:
        raise _errorFromBody(doc, status, path)
    return doc


def _decodeStreamFirst(body, status, path):
    """
    Parse the first C{{"result": ...}} line of a streamed answer.
    """
    if status != 200:
        return _decodeJSON(body, status, path)
    for line in body.split(b"\n"):
        if line.strip():
            doc = _decodeJSON(line, status, path)
            result = doc.get("result")
            if not isinstance(result, dict):
                raise EtcdBadResponse("{}: stream line without result".format(path))
            return result
    raise EtcdBadResponse("{}: empty stream".format(path))


def _timedOutCall(path, timeout):
    def onTimeoutCancel(result, timeout_):
        if isinstance(result, Failure):
            return Failure(EtcdTimeout("{}: no answer within {}s".format(path, timeout)))
        return result

    return onTimeoutCancel


class EtcdClient:
    """
    A client for one etcd endpoint's v3 JSON gateway.

    @param reactor: provides C{IReactorTime} (and C{IReactorTCP} unless
        C{httpClient} is given).
    @param url: e.g. C{"http://127.0.0.1:2379"}.
    @param httpClient: a C{treq.client.HTTPClient} (or a C{StubTreq}) to use
        instead of our own persistent-connection client.
    @param timeout: default deadline of each call, in seconds.
    """

    log = Logger()

    def __init__(self, reactor, url, httpClient=None, timeout=5.0):
        self.reactor = reactor
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._pool = None
        if httpClient is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            # Keep enough idle connections for bursts (claims of many groups).
            self._pool.maxPersistentPerHost = 8
            agent = Agent(reactor, pool=self._pool, connectTimeout=timeout)
            httpClient = HTTPClient(agent, data_to_body_producer=_BytesProducer)
        self._http = httpClient
        self._pending = set()
        self._watches = set()

    def __repr__(self):
        return "<EtcdClient {}>".format(self.url)

    # -- plumbing

    def _post(self, path, body):
        """
        POST C{body} (JSON) to C{path}; fires with the unbuffered response.
        """
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        return self._http.post(
            self.url + path,
            data=data,
            headers={b"Content-Type": [b"application/json"]},
            unbuffered=True,
        )

    def _readResponse(self, response, path, stream=False):
        reader = _BodyReader()
        response.deliverBody(reader)
        decode = _decodeStreamFirst if stream else _decodeJSON
        return reader.finished.addCallback(decode, response.code, path)

    def _call(self, path, body, parse, stream=False, timeout=None, method="POST"):
        """
        One request/answer: every failure typed, bounded by C{timeout}.
        """
        if timeout is None:
            timeout = self.timeout
        if method == "POST":
            d = self._post(path, body)
        else:
            d = self._http.request(method, self.url + path, unbuffered=True)
        d.addCallback(self._readResponse, path, stream)
        d.addCallback(_parsing(parse, path))
        d.addTimeout(timeout, self.reactor, onTimeoutCancel=_timedOutCall(path, timeout))
        d.addErrback(_failureToError, path)
        self._pending.add(d)

        def forget(result):
            self._pending.discard(d)
            return result

        return d.addBoth(forget)

    def close(self):
        """
        Cancel calls in flight and watches, close idle connections.

        @return: a L{Deferred} firing when the connections are closed.
        """
        for d in list(self._pending):
            d.cancel()
        waits = [watch.cancel() for watch in list(self._watches)]
        if self._pool is not None:
            waits.append(self._pool.closeCachedConnections())
        return gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- KV

    def range(
        self,
        key,
        prefix=False,
        limit=0,
        revision=None,
        keysOnly=False,
        countOnly=False,
        rangeEnd=None,
        timeout=None,
    ):
        """
        Read one key, a prefix (C{prefix=True}) or C{[key, rangeEnd)}.

        @param revision: read at that revision (L{Compacted} if compacted).
        @return: L{Deferred} firing with L{RangeResult}.
        """
        op = Op.range(key, prefix, limit, revision, keysOnly, countOnly, rangeEnd)
        return self._call("/v3/kv/range", op.body, RangeResult.fromJSON, timeout=timeout)

    def get(self, key, timeout=None):
        """
        Read one key: L{Deferred} firing with its L{KeyValue} or L{None}.
        """
        d = self.range(key, timeout=timeout)
        return d.addCallback(lambda r: r.kvs[0] if r.kvs else None)

    def put(self, key, value, lease=None, ignoreLease=False, timeout=None):
        """
        Write a key.  See L{Op.put} about leases.

        @return: L{Deferred} firing with the revision of the write.
        """
        op = Op.put(key, value, lease, ignoreLease)
        return self._call(
            "/v3/kv/put",
            op.body,
            lambda doc: PutResponse.fromJSON(doc).revision,
            timeout=timeout,
        )

    def delete(self, key, prefix=False, rangeEnd=None, timeout=None):
        """
        Delete a key, a prefix or a range.

        @return: L{Deferred} firing with the number of keys deleted.
        """
        op = Op.delete(key, prefix, rangeEnd=rangeEnd)
        return self._call(
            "/v3/kv/deleterange",
            op.body,
            lambda doc: DeleteRangeResponse.fromJSON(doc).deleted,
            timeout=timeout,
        )

    def txn(self, compare=(), success=(), failure=(), timeout=None):
        """
        If every L{Compare} holds, run C{success} ops, else C{failure} ops,
        atomically.

        @return: L{Deferred} firing with L{TxnResult}.
        """
        body = _txnBody(compare, success, failure)
        return self._call("/v3/kv/txn", body, TxnResult.fromJSON, timeout=timeout)

    def compact(self, revision, physical=False, timeout=None):
        """
        Compact the key history up to C{revision}.

        @return: L{Deferred} firing with the header revision.
        """
        body = {"revision": _int64(revision, "revision")}
        if physical:
            body["physical"] = True
        return self._call(
            "/v3/kv/compaction",
            body,
            _headerRevision,
            timeout=timeout,
        )

    # -- leases

    def leaseGrant(self, ttl, leaseId=None, timeout=None):
        """
        @return: L{Deferred} firing with L{Lease}.
        """
        body = {"TTL": _int64(ttl, "ttl")}
        if leaseId:
            body["ID"] = _int64(leaseId, "leaseId")

        def parse(doc):
            if _getStr(doc, "error"):
                raise EtcdError("/v3/lease/grant: " + doc["error"])
            lease = Lease(id=_getInt(doc, "ID"), ttl=_getInt(doc, "TTL"))
            if not lease.id:
                raise _bad("grant without ID")
            return lease

        return self._call("/v3/lease/grant", body, parse, timeout=timeout)

    def leaseKeepAlive(self, leaseId, timeout=None):
        """
        Refresh a lease once (one POST on the keepalive stream).

        The server resets the lease to its full TTL at some moment between
        sending and answering, so a holder's safe deadline is its *send* time
        plus the TTL minus a margin; take C{reactor.seconds()} before calling.

        @return: L{Deferred} firing with the TTL (seconds) now granted, or
            failing with L{LeaseNotFound} (etcd answers HTTP 200 without TTL).
        """
        body = {"ID": _int64(leaseId, "leaseId")}

        def parse(result):
            ttl = _getInt(result, "TTL")
            if ttl <= 0:
                raise LeaseNotFound(
                    "/v3/lease/keepalive: lease {} not found".format(leaseId), code=GRPC_NOT_FOUND
                )
            return ttl

        return self._call("/v3/lease/keepalive", body, parse, stream=True, timeout=timeout)

    def leaseRevoke(self, leaseId, timeout=None):
        """
        Revoke a lease; its keys are deleted in the same revision.

        @return: L{Deferred} firing with that revision, or failing with
            L{LeaseNotFound}.
        """
        body = {"ID": _int64(leaseId, "leaseId")}
        return self._call(
            "/v3/lease/revoke",
            body,
            _headerRevision,
            timeout=timeout,
        )

    def leaseTimeToLive(self, leaseId, keys=False, timeout=None):
        """
        @return: L{Deferred} firing with L{LeaseTimeToLive}, or failing with
            L{LeaseNotFound} (etcd answers TTL -1).
        """
        body = {"ID": _int64(leaseId, "leaseId")}
        if keys:
            body["keys"] = True

        def parse(doc):
            ttl = _getInt(doc, "TTL")
            if ttl < 0:
                raise LeaseNotFound(
                    "/v3/lease/timetolive: lease {} not found".format(leaseId),
                    code=GRPC_NOT_FOUND,
                )
            return LeaseTimeToLive(
                id=_getInt(doc, "ID"),
                ttl=ttl,
                grantedTtl=_getInt(doc, "grantedTTL"),
                keys=[base64.b64decode(k, validate=True) for k in _getList(doc, "keys")],
            )

        return self._call("/v3/lease/timetolive", body, parse, timeout=timeout)

    def leaseLeases(self, timeout=None):
        """
        @return: L{Deferred} firing with the list of live lease IDs.
        """

        def parse(doc):
            return [_getInt(lease, "ID") for lease in _getList(doc, "leases")]

        return self._call("/v3/lease/leases", {}, parse, timeout=timeout)

    # -- misc

    def version(self, timeout=None):
        """
        C{GET /version}: L{Deferred} firing with e.g.
        C{{"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}}.
        """

        def parse(doc):
            if not isinstance(doc.get("etcdserver"), str):
                raise _bad("no etcdserver in /version")
            return doc

        return self._call("/version", None, parse, method="GET", timeout=timeout)

    # -- watch

    def watch(
        self,
        key,
        onEvents=None,
        prefix=True,
        startRevision=None,
        prevKv=False,
        progressNotify=False,
        onProgress=None,
        rangeEnd=None,
    ):
        """
        Start watching a prefix (default) or one key (C{prefix=False}).

        @param onEvents: C{onEvents(events, revision)} with a list of
            L{WatchEvent}s (one or more whole revisions, in order) and the
            answer's header revision.  May also be set on the watch later.
        @param startRevision: first revision to deliver; L{None} is "from now".
        @param onProgress: C{onProgress(revision)} for progress notifications.
        @return: a started L{Watch}.
        """
        watch = Watch(
            self,
            key,
            prefix=prefix,
            rangeEnd=rangeEnd,
            startRevision=startRevision,
            prevKv=prevKv,
            progressNotify=progressNotify,
            onEvents=onEvents,
            onProgress=onProgress,
        )
        self._watches.add(watch)
        watch.whenDone().addBoth(lambda _: self._watches.discard(watch))
        watch._start()
        return watch


class Watch:
    """
    One watch stream (one POST to C{/v3/watch}).

    It ends once, for a reason given to L{whenDone} waiters: L{WatchCanceled}
    (by L{cancel} or the server), L{Compacted} (C{startRevision} is
    compacted: re-read and watch again), L{EtcdUnavailable} (connection
    refused or lost), L{EtcdTimeout} (no "created" answer in time),
    L{EtcdBadResponse} or another L{EtcdError}.

    @ivar nextRevision: where to resume after this stream ends: last event's
        C{mod_revision + 1}, or after a progress notification its header
        revision + 1, or after "created" the header revision + 1 (for a watch
        "from now").  L{None} until one of those is known.
    @ivar created: has etcd confirmed the watch?
    @ivar reason: why it ended, or L{None} while it runs.
    """

    log = Logger()

    def __init__(
        self,
        client,
        key,
        prefix=True,
        rangeEnd=None,
        startRevision=None,
        prevKv=False,
        progressNotify=False,
        onEvents=None,
        onProgress=None,
    ):
        self._client = client
        self.key = _toBytes(key)
        create = _keyRange(self.key, prefix, rangeEnd)
        if startRevision:
            create["start_revision"] = _int64(startRevision, "startRevision")
        if prevKv:
            create["prev_kv"] = True
        if progressNotify:
            create["progress_notify"] = True
        self._body = {"create_request": create}
        self.startRevision = startRevision
        self.nextRevision = startRevision or None
        self.onEvents = onEvents
        self.onProgress = onProgress
        self.created = False
        self.createdRevision = None
        self.reason = None
        self._stopReason = None
        self._createdWaiters = []
        self._doneWaiters = []
        self._request = None
        self._reader = None
        self._createTimeout = None
        self._buffer = b""

    def __repr__(self):
        return "<Watch {!r} next={} {}>".format(
            self.key, self.nextRevision, "ended" if self.reason else "running"
        )

    def _start(self):
        client = self._client
        self._createTimeout = client.reactor.callLater(client.timeout, self._timedOut)
        d = self._request = client._post("/v3/watch", self._body)
        # (The answer may already be there: _gotResponse then runs right now.)
        d.addCallbacks(self._gotResponse, self._requestFailed)
        d.addErrback(lambda f: self.log.failure("Bug in watch {watch!r}", f, watch=self))

    def _timedOut(self):
        self._createTimeout = None
        self._stop(
            EtcdTimeout("/v3/watch: not created within {}s".format(self._client.timeout))
        )

    # -- waiting

    def whenCreated(self):
        """
        @return: a L{Deferred} firing with the header revision once etcd
            confirms the watch, or failing with the reason if it ends first.
        """
        if self.created:
            return succeed(self.createdRevision)
        if self.reason is not None:
            return fail(self.reason)
        d = Deferred()
        self._createdWaiters.append(d)
        return d

    def whenDone(self):
        """
        @return: a L{Deferred} that fires (never fails) with the reason
            (an L{EtcdError}) when the stream has ended and its connection
            is closed.
        """
        if self.reason is not None:
            return succeed(self.reason)
        d = Deferred()
        self._doneWaiters.append(d)
        return d

    def cancel(self):
        """
        Close the stream.

        @return: L{whenDone}.
        """
        self._stop(WatchCanceled("canceled by the client", byClient=True))
        return self.whenDone()

    # -- stream

    def _stop(self, reason):
        if self._stopReason is None and self.reason is None:
            self._stopReason = reason
        if self._request is not None:
            self._request.cancel()
        elif self._reader is not None:
            self._reader.stop()

    def _gotResponse(self, response):
        self._request = None
        path = "/v3/watch"
        if response.code != 200:
            self._reader = _BodyReader()
            response.deliverBody(self._reader)
            d = self._reader.finished
            d.addCallback(_decodeJSON, response.code, path)
            d.addCallback(
                lambda doc: EtcdBadResponse("{}: HTTP {}".format(path, response.code))
            )
            d.addErrback(lambda f: f.value if f.check(EtcdError) else f)
            d.addBoth(self._streamEnded)
            return
        self._reader = _BodyReader(onData=self._dataReceived)
        response.deliverBody(self._reader)
        self._reader.finished.addBoth(self._streamEnded)

    def _requestFailed(self, failure):
        self._request = None
        self._streamEnded(failure)

    def _streamEnded(self, result):
        self._reader = None
        if self._stopReason is not None:
            reason = self._stopReason
        elif isinstance(result, EtcdError):
            reason = result
        elif isinstance(result, Failure):
            mapped = _failureToError(result, "/v3/watch")
            reason = mapped.value
            if not isinstance(reason, EtcdError):
                reason = EtcdUnavailable("/v3/watch: {}".format(reason))
        else:
            reason = EtcdUnavailable("/v3/watch: stream closed by the server")
        self._ended(reason)

    def _ended(self, reason):
        if self.reason is not None:
            return
        self.reason = reason
        if self._createTimeout is not None and self._createTimeout.active():
            self._createTimeout.cancel()
        self._createTimeout = None
        created, self._createdWaiters = self._createdWaiters, []
        for d in created:
            d.errback(reason)
        done, self._doneWaiters = self._doneWaiters, []
        for d in done:
            d.callback(reason)

    def _dataReceived(self, data):
        if self._stopReason is not None:
            return
        self._buffer += data
        while self._stopReason is None:
            line, sep, rest = self._buffer.partition(b"\n")
            if not sep:
                break
            self._buffer = rest
            if line.strip():
                self._lineReceived(line)
        if len(self._buffer) > _MAX_LINE:
            self._stop(EtcdBadResponse("/v3/watch: line longer than {} bytes".format(_MAX_LINE)))

    def _lineReceived(self, line):
        try:
            doc = _decodeJSON(line, 200, "/v3/watch")
            result = doc.get("result")
            if not isinstance(result, dict):
                raise _bad("watch line without result")
            header = ResponseHeader.fromJSON(_getDict(result, "header"))
            created = _getBool(result, "created")
            canceled = _getBool(result, "canceled")
            compactRevision = _getInt(result, "compact_revision")
            cancelReason = _getStr(result, "cancel_reason")
            events = [WatchEvent.fromJSON(e) for e in _getList(result, "events")]
        except EtcdError as e:
            self._stop(e)
            return
        except (TypeError, ValueError, AttributeError) as e:
            self._stop(EtcdBadResponse("/v3/watch: unexpected answer: {}".format(e)))
            return

        if compactRevision:
            self._stop(Compacted(compactRevision))
            return
        if canceled:
            self._stop(WatchCanceled("/v3/watch: canceled by etcd: {}".format(cancelReason or "?")))
            return
        if created:
            self._created(header.revision)
        if events:
            self.nextRevision = events[-1].kv.modRevision + 1
            self._deliver(self.onEvents, events, header.revision)
        elif not created and header.revision:
            # A progress notification: nothing else up to header.revision.
            if self.nextRevision is None or header.revision + 1 > self.nextRevision:
                self.nextRevision = header.revision + 1
            self._deliver(self.onProgress, header.revision)

    def _created(self, revision):
        if self._createTimeout is not None and self._createTimeout.active():
            self._createTimeout.cancel()
        self._createTimeout = None
        self.created = True
        self.createdRevision = revision
        if self.nextRevision is None:
            # "From now": events start after the revision at creation.
            self.nextRevision = revision + 1
        waiters, self._createdWaiters = self._createdWaiters, []
        for d in waiters:
            d.callback(revision)

    def _deliver(self, callback, *args):
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self.log.failure("Watch callback {callback!r} failed", callback=callback)


class WatchKeeper:
    """
    Keep a local mirror of every key under a prefix, across disconnects and
    compactions.

    It reads the prefix (C{onResync(kvs, revision)} with a fresh snapshot
    C{{key: KeyValue}}), then watches from the next revision
    (C{onEvents(events, revision)} after each change, applied to L{kvs}).
    When the stream ends it reconnects with exponential backoff and resumes
    from the next unseen revision; when that revision has been compacted (or
    etcd cancels the watch) it reads the prefix again and calls C{onResync}.

    @ivar kvs: C{{key: KeyValue}}, current as of L{revision}.
    @ivar revision: the store revision the mirror reflects.
    @ivar watching: is a confirmed watch stream open right now?
    @ivar resyncs: how many snapshots were read (1 after the start).
    @ivar streams: how many watch streams were opened.
    """

    log = Logger()

    def __init__(
        self,
        client,
        prefix,
        onResync=None,
        onEvents=None,
        prevKv=False,
        clock=None,
        minDelay=0.1,
        maxDelay=5.0,
    ):
        self._client = client
        self._clock = clock if clock is not None else client.reactor
        self.prefix = _toBytes(prefix)
        self.onResync = onResync
        self.onEvents = onEvents
        self.prevKv = prevKv
        self.minDelay = minDelay
        self.maxDelay = maxDelay
        self.kvs = {}
        self.revision = 0
        self.nextRevision = None
        self.watching = False
        self.resyncs = 0
        self.streams = 0
        self._needResync = True
        self._running = False
        self._attempt = 0
        self._delayed = None
        self._inflight = None
        self._watch = None
        self._ready = False
        self._readyWaiters = []

    def __repr__(self):
        return "<WatchKeeper {!r} rev={} watching={}>".format(
            self.prefix, self.revision, self.watching
        )

    def start(self):
        """
        Start the read-and-watch loop (it retries forever until L{stop}).
        """
        if self._running:
            return
        self._running = True
        self._cycle()

    def whenReady(self):
        """
        @return: a L{Deferred} firing with C{self} after the first snapshot.
        """
        if self._ready:
            return succeed(self)
        d = Deferred()
        self._readyWaiters.append(d)
        return d

    def restart(self):
        """
        Drop the current stream and reconnect at once (resuming from
        L{nextRevision}), e.g. when the caller suspects the stream is stale.
        """
        if self._watch is not None:
            self._attempt = 0
            self._watch.cancel()
        elif self._running and self._delayed is not None:
            self._delayed.cancel()
            self._cycle()

    def stop(self):
        """
        Stop the loop and close the stream.

        @return: a L{Deferred} firing when the connection is closed.
        """
        self._running = False
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.errback(CancelledError("WatchKeeper stopped"))
        waits = []
        if self._inflight is not None:
            self._inflight.cancel()
        if self._watch is not None:
            waits.append(self._watch.cancel())
        return gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- the loop

    def _cycle(self):
        self._delayed = None
        if not self._running:
            return
        if self._needResync:
            d = self._inflight = self._client.range(self.prefix, prefix=True)
            d.addCallbacks(self._resynced, self._resyncFailed)
            d.addErrback(lambda f: self.log.failure("Bug in {keeper!r}", f, keeper=self))
        else:
            self._startWatch()

    def _resynced(self, result):
        self._inflight = None
        if not self._running:
            return
        self.kvs = {kv.key: kv for kv in result.kvs}
        self.revision = result.header.revision
        self.nextRevision = self.revision + 1
        self._needResync = False
        self.resyncs += 1
        self.log.debug(
            "Resynced {prefix!r}: {count} keys at revision {revision}",
            prefix=self.prefix,
            count=len(self.kvs),
            revision=self.revision,
        )
        self._call(self.onResync, dict(self.kvs), self.revision)
        if not self._ready:
            self._ready = True
            waiters, self._readyWaiters = self._readyWaiters, []
            for d in waiters:
                d.callback(self)
        self._startWatch()

    def _resyncFailed(self, failure):
        self._inflight = None
        if not self._running:
            return
        self.log.warn(
            "Reading {prefix!r} failed: {error}", prefix=self.prefix, error=failure.value
        )
        self._retryLater()

    def _startWatch(self):
        self.streams += 1
        watch = self._watch = self._client.watch(
            self.prefix,
            prefix=True,
            startRevision=self.nextRevision,
            prevKv=self.prevKv,
            onEvents=self._gotEvents,
            onProgress=self._gotProgress,
        )
        watch.whenCreated().addCallbacks(self._watchCreated, lambda f: None)
        watch.whenDone().addCallback(self._watchEnded, watch)

    def _watchCreated(self, revision):
        self.watching = True
        self._attempt = 0

    def _gotEvents(self, events, revision):
        for event in events:
            if event.type == WatchEvent.DELETE:
                self.kvs.pop(event.kv.key, None)
            else:
                self.kvs[event.kv.key] = event.kv
        self.revision = events[-1].kv.modRevision
        self.nextRevision = self.revision + 1
        self._call(self.onEvents, events, self.revision)

    def _gotProgress(self, revision):
        if revision > self.revision:
            self.revision = revision
            self.nextRevision = revision + 1

    def _watchEnded(self, reason, watch):
        if self._watch is watch:
            self._watch = None
        self.watching = False
        if not self._running:
            return
        if isinstance(reason, Compacted) or (
            isinstance(reason, (WatchCanceled, EtcdBadResponse)) and not getattr(reason, "byClient", False)
        ):
            self.log.info(
                "Watch on {prefix!r} ended ({reason}); reading it again",
                prefix=self.prefix,
                reason=reason,
            )
            self._needResync = True
            if isinstance(reason, Compacted):
                self._cycle()
                return
        elif isinstance(reason, WatchCanceled) and reason.byClient:
            # restart(): reconnect at once.
            self._cycle()
            return
        else:
            self.log.info(
                "Watch on {prefix!r} lost ({reason}); resuming from {revision}",
                prefix=self.prefix,
                reason=reason,
                revision=self.nextRevision,
            )
        self._retryLater()

    def _retryLater(self):
        delay = min(self.maxDelay, self.minDelay * (2 ** self._attempt))
        delay *= random.uniform(0.5, 1.0)
        self._attempt = min(self._attempt + 1, 30)
        self._delayed = self._clock.callLater(delay, self._cycle)

    def _call(self, callback, *args):
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self.log.failure("{keeper!r} callback {callback!r} failed", keeper=self, callback=callback)
