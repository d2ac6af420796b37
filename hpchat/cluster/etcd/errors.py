# -*- test-case-name: tests.cluster.test_etcd -*-
"""
The errors of the etcd client, and how gateway error bodies and transport
failures map onto them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionClosed
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
)

__all__ = [
    "Compacted",
    "EtcdBadResponse",
    "EtcdError",
    "EtcdTimeout",
    "EtcdUnavailable",
    "GRPC_NOT_FOUND",
    "LeaseNotFound",
    "WatchCanceled",
    "errorFromBody",
    "failureToError",
]

# gRPC status codes that etcd puts in error bodies as "code".
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_OUT_OF_RANGE = 11
GRPC_UNAVAILABLE = 14


class EtcdError(Exception):
    """
    Base of every error this client raises.

    @ivar message: etcd's message, or ours.
    @ivar code: the gRPC status code from the error body, if any.
    @ivar status: the HTTP status, if the error came from a response.
    """

    def __init__(self, message: str, code: int | None = None, status: int | None = None) -> None:
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

    def __init__(
        self,
        compactRevision: int | None = None,
        message: str | None = None,
        code: int | None = None,
        status: int | None = None,
    ) -> None:
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

    def __init__(self, message: str, byClient: bool = False) -> None:
        super().__init__(message)
        self.byClient = byClient


def errorFromBody(doc: dict[str, Any], status: int, path: str) -> EtcdError:
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
        httpCode = error.get("http_code", status)
        if isinstance(httpCode, int):
            status = httpCode
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


def failureToError(failure: Failure, path: str) -> Failure:
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
