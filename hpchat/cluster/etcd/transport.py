# -*- test-case-name: tests.cluster.test_etcd -*-
"""
The HTTP side of gateway calls: sending a JSON body, reading an answer
(whole or as a stream) and turning it into JSON or a typed error.
"""

from __future__ import annotations

import json
from typing import Callable, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from hpchat.cluster.etcd.errors import EtcdBadResponse, EtcdTimeout, errorFromBody
from hpchat.cluster.etcd.wire import JSONDict

__all__ = ["BodyReader", "BytesProducer", "decodeJSON", "decodeStreamFirst", "timedOut"]


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body written in one go.  Unlike treq's default (a
    FileBodyProducer on the global cooperator) it needs no reactor.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class BodyReader(Protocol):
    """
    Receive a response body: buffered (C{finished} fires with the bytes) or
    streamed to C{onData} (C{finished} fires with C{b""}).

    Cancelling C{finished}, or L{stop}, closes the connection.
    """

    def __init__(self, onData: Callable[[bytes], None] | None = None) -> None:
        self.finished: Deferred[bytes] = Deferred(self._cancel)
        self._onData = onData
        self._chunks: list[bytes] = []

    def _cancel(self, d: Deferred[bytes]) -> None:
        self.stop()

    def stop(self) -> None:
        """
        Close the connection; C{finished} then fires from L{connectionLost}
        (unless it was cancelled).
        """
        if self.transport is not None:
            # A response body's transport is a producer of the connection.
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        if self._onData is None:
            self._chunks.append(data)
        else:
            self._onData(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)


def decodeJSON(body: bytes, status: int, path: str) -> JSONDict:
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
        raise errorFromBody(doc, status, path)
    return doc


def decodeStreamFirst(body: bytes, status: int, path: str) -> JSONDict:
    """
    Parse the first C{{"result": ...}} line of a streamed answer.
    """
    if status != 200:
        return decodeJSON(body, status, path)
    for line in body.split(b"\n"):
        if line.strip():
            doc = decodeJSON(line, status, path)
            result = doc.get("result")
            if not isinstance(result, dict):
                raise EtcdBadResponse("{}: stream line without result".format(path))
            return result
    raise EtcdBadResponse("{}: empty stream".format(path))


def timedOut(path: str, timeout: float) -> Callable[[object, float], object]:
    """
    An C{onTimeoutCancel} for L{Deferred.addTimeout} that fails with
    L{EtcdTimeout}.
    """

    def onTimeoutCancel(result: object, timeout_: float) -> object:
        if isinstance(result, Failure):
            return Failure(EtcdTimeout("{}: no answer within {}s".format(path, timeout)))
        return result

    return onTimeoutCancel
