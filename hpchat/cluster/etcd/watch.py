# -*- test-case-name: tests.cluster.test_etcd -*-
"""
L{Watch}: one watch stream, a single POST to C{/v3/watch}.

Over HTTP/1.1 the gateway is half-duplex: it answers only once the request
body is complete, so the create request is sent whole and the rest is a
read-only stream of newline-delimited C{{"result": ...}} objects.  Cancelling
a watch closes its connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from hpchat.cluster.etcd.errors import (
    Compacted,
    EtcdBadResponse,
    EtcdError,
    EtcdTimeout,
    EtcdUnavailable,
    WatchCanceled,
    failureToError,
)
from hpchat.cluster.etcd.transport import BodyReader, decodeJSON
from hpchat.cluster.etcd.wire import (
    JSONDict,
    KeyLike,
    ResponseHeader,
    WatchEvent,
    bad,
    getBool,
    getDict,
    getInt,
    getList,
    getStr,
    int64,
    keyRange,
    toBytes,
)
from hpchat.deferreds import fireAll, observer

if TYPE_CHECKING:
    from hpchat.cluster.etcd.client import EtcdClient

__all__ = ["EventsCallback", "ProgressCallback", "Watch"]

#: C{onEvents(events, revision)}: the events of one answer and its header revision.
EventsCallback = Callable[[list[WatchEvent], int], object]

#: C{onProgress(revision)}: nothing changed up to C{revision}.
ProgressCallback = Callable[[int], object]

# A watch line longer than this without a newline is not etcd talking.
MAX_LINE = 64 * 1024 * 1024

_PATH = "/v3/watch"


class Watch:
    """
    One watch stream (one POST to C{/v3/watch}), made by L{EtcdClient.watch}.

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
        client: EtcdClient,
        key: KeyLike,
        prefix: bool = True,
        rangeEnd: KeyLike | None = None,
        startRevision: int | None = None,
        prevKv: bool = False,
        progressNotify: bool = False,
        onEvents: EventsCallback | None = None,
        onProgress: ProgressCallback | None = None,
    ) -> None:
        self._client = client
        self.key = toBytes(key)
        create = keyRange(self.key, prefix, rangeEnd)
        if startRevision:
            create["start_revision"] = int64(startRevision, "startRevision")
        if prevKv:
            create["prev_kv"] = True
        if progressNotify:
            create["progress_notify"] = True
        self._body: JSONDict = {"create_request": create}
        self.startRevision = startRevision
        self.nextRevision: int | None = startRevision or None
        self.onEvents = onEvents
        self.onProgress = onProgress
        self.created = False
        self.createdRevision: int | None = None
        self.reason: EtcdError | None = None
        self._stopReason: EtcdError | None = None
        self._createdWaiters: list[Deferred[int]] = []
        self._doneWaiters: list[Deferred[EtcdError]] = []
        self._request: Deferred[IResponse] | None = None
        self._reader: BodyReader | None = None
        self._createTimeout: IDelayedCall | None = None
        self._buffer = b""

    def __repr__(self) -> str:
        return "<Watch {!r} next={} {}>".format(
            self.key, self.nextRevision, "ended" if self.reason else "running"
        )

    def start(self) -> None:
        """
        Send the create request (once; L{EtcdClient.watch} does it).
        """
        client = self._client
        self._createTimeout = client.reactor.callLater(client.timeout, self._timedOut)
        d = self._request = client.send(_PATH, self._body)
        # (The answer may already be there: _gotResponse then runs right now.)
        d.addCallbacks(self._gotResponse, self._requestFailed)
        d.addErrback(lambda f: self.log.failure("Bug in watch {watch!r}", f, watch=self))

    def _timedOut(self) -> None:
        self._createTimeout = None
        self._stop(EtcdTimeout("{}: not created within {}s".format(_PATH, self._client.timeout)))

    # -- waiting

    def whenCreated(self) -> Deferred[int]:
        """
        @return: a L{Deferred} firing with the header revision once etcd
            confirms the watch, or failing with the reason if it ends first.
        """
        if self.created and self.createdRevision is not None:
            return succeed(self.createdRevision)
        if self.reason is not None:
            return fail(self.reason)
        return observer(self._createdWaiters)

    def whenDone(self) -> Deferred[EtcdError]:
        """
        @return: a L{Deferred} that fires (never fails) with the reason
            (an L{EtcdError}) when the stream has ended and its connection
            is closed.
        """
        if self.reason is not None:
            return succeed(self.reason)
        return observer(self._doneWaiters)

    def cancel(self) -> Deferred[EtcdError]:
        """
        Close the stream.

        @return: L{whenDone}.
        """
        self._stop(WatchCanceled("canceled by the client", byClient=True))
        return self.whenDone()

    # -- stream

    def _stop(self, reason: EtcdError) -> None:
        if self._stopReason is None and self.reason is None:
            self._stopReason = reason
        if self._request is not None:
            self._request.cancel()
        elif self._reader is not None:
            self._reader.stop()

    def _gotResponse(self, response: IResponse) -> None:
        self._request = None
        if response.code != 200:
            code = response.code
            self._reader = BodyReader()
            response.deliverBody(self._reader)
            d: Deferred[Any] = self._reader.finished
            d.addCallback(decodeJSON, code, _PATH)
            d.addCallback(lambda doc: EtcdBadResponse("{}: HTTP {}".format(_PATH, code)))
            d.addErrback(lambda f: f.value if f.check(EtcdError) else f)
            d.addBoth(self._streamEnded)
            return
        self._reader = BodyReader(onData=self._dataReceived)
        response.deliverBody(self._reader)
        self._reader.finished.addBoth(self._streamEnded)

    def _requestFailed(self, failure: Failure) -> None:
        self._request = None
        self._streamEnded(failure)

    def _streamEnded(self, result: object) -> None:
        self._reader = None
        reason: BaseException
        if self._stopReason is not None:
            reason = self._stopReason
        elif isinstance(result, EtcdError):
            reason = result
        elif isinstance(result, Failure):
            value = failureToError(result, _PATH).value
            if isinstance(value, EtcdError):
                reason = value
            else:
                reason = EtcdUnavailable("{}: {}".format(_PATH, value))
        else:
            reason = EtcdUnavailable("{}: stream closed by the server".format(_PATH))
        self._ended(reason)

    def _ended(self, reason: EtcdError) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        if self._createTimeout is not None and self._createTimeout.active():
            self._createTimeout.cancel()
        self._createTimeout = None
        fireAll(self._createdWaiters, Failure(reason))
        fireAll(self._doneWaiters, reason)

    def _dataReceived(self, data: bytes) -> None:
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
        if len(self._buffer) > MAX_LINE:
            self._stop(EtcdBadResponse("{}: line longer than {} bytes".format(_PATH, MAX_LINE)))

    def _lineReceived(self, line: bytes) -> None:
        try:
            doc = decodeJSON(line, 200, _PATH)
            result = doc.get("result")
            if not isinstance(result, dict):
                raise bad("watch line without result")
            header = ResponseHeader.fromJSON(getDict(result, "header"))
            created = getBool(result, "created")
            canceled = getBool(result, "canceled")
            compactRevision = getInt(result, "compact_revision")
            cancelReason = getStr(result, "cancel_reason")
            events = [WatchEvent.fromJSON(e) for e in getList(result, "events")]
        except EtcdError as e:
            self._stop(e)
            return
        except (TypeError, ValueError, AttributeError) as e:
            self._stop(EtcdBadResponse("{}: unexpected answer: {}".format(_PATH, e)))
            return

        if compactRevision:
            self._stop(Compacted(compactRevision))
            return
        if canceled:
            self._stop(WatchCanceled("{}: canceled by etcd: {}".format(_PATH, cancelReason or "?")))
            return
        if created:
            self._created(header.revision)
        if events:
            self.nextRevision = events[-1].kv.modRevision + 1
            if self.onEvents is not None:
                self._deliver(self.onEvents, events, header.revision)
        elif not created and header.revision:
            # A progress notification: nothing else up to header.revision.
            if self.nextRevision is None or header.revision + 1 > self.nextRevision:
                self.nextRevision = header.revision + 1
            if self.onProgress is not None:
                self._deliver(self.onProgress, header.revision)

    def _created(self, revision: int) -> None:
        if self._createTimeout is not None and self._createTimeout.active():
            self._createTimeout.cancel()
        self._createTimeout = None
        self.created = True
        self.createdRevision = revision
        if self.nextRevision is None:
            # "From now": events start after the revision at creation.
            self.nextRevision = revision + 1
        fireAll(self._createdWaiters, revision)

    def _deliver(self, callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            self.log.failure("Watch callback {callback!r} failed", callback=callback)
