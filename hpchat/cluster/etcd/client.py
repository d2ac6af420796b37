# -*- test-case-name: tests.cluster.test_etcd -*-
"""
L{EtcdClient}: the calls of etcd's v3 JSON gateway that hpchat makes (range,
put, txn, leases, watch), each with a timeout, typed errors, and
cancellation that closes its connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Callable, TypeVar, cast

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from hpchat.cluster.etcd.errors import GRPC_NOT_FOUND, EtcdError, LeaseNotFound, failureToError
from hpchat.cluster.etcd.transport import (
    BodyReader,
    BytesProducer,
    decodeJSON,
    decodeStreamFirst,
    timedOut,
)
from hpchat.cluster.etcd.txn import Compare, Op, txnBody
from hpchat.cluster.etcd.watch import EventsCallback, ProgressCallback, Watch
from hpchat.cluster.etcd.wire import (
    JSONDict,
    KeyLike,
    Lease,
    PutResponse,
    RangeResult,
    TxnResult,
    bad,
    getInt,
    getStr,
    headerRevision,
    int64,
    parsing,
)
from hpchat.httpclient import quietPool

__all__ = ["EtcdClient"]

T = TypeVar("T")


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

    def __init__(
        self,
        reactor: IReactorTime,
        url: str,
        httpClient: HTTPClient | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.reactor = reactor
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._pool: HTTPConnectionPool | None = None
        if httpClient is None:
            self._pool = quietPool(reactor)
            # Keep enough idle connections for bursts (claims of many groups).
            self._pool.maxPersistentPerHost = 8
            agent = Agent(reactor, pool=self._pool, connectTimeout=timeout)
            httpClient = HTTPClient(agent, data_to_body_producer=BytesProducer)
        self._http = httpClient
        self._pending: set[Deferred[Any]] = set()
        self._watches: set[Watch] = set()

    def __repr__(self) -> str:
        return "<EtcdClient {}>".format(self.url)

    # -- plumbing

    def send(self, path: str, body: JSONDict | None, method: str = "POST") -> Deferred[IResponse]:
        """
        Send C{body} as JSON (or no body when it is L{None}) to C{path}.

        @return: a L{Deferred} firing with the unbuffered response.
        """
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        d = self._http.request(
            method,
            self.url + path,
            data=data,
            headers=Headers({b"Content-Type": [b"application/json"]}),
            unbuffered=True,
        )
        return cast("Deferred[IResponse]", d)

    def _readResponse(self, response: IResponse, path: str, stream: bool) -> Deferred[JSONDict]:
        reader = BodyReader()
        response.deliverBody(reader)
        decode = decodeStreamFirst if stream else decodeJSON
        return reader.finished.addCallback(decode, response.code, path)

    def call(
        self,
        path: str,
        body: JSONDict | None,
        parse: Callable[[JSONDict], T],
        stream: bool = False,
        timeout: float | None = None,
        method: str = "POST",
    ) -> Deferred[T]:
        """
        One request and its answer, parsed by C{parse}: every failure typed
        (an L{EtcdError}, or L{CancelledError} when the caller cancels), and
        bounded by C{timeout} (default: the client's).

        @param stream: the path is a stream (keepalive): parse its first
            C{result} line.
        """
        if timeout is None:
            timeout = self.timeout
        d = self.send(path, body, method)
        parsed = d.addCallback(self._readResponse, path, stream).addCallback(parsing(parse, path))
        parsed.addTimeout(timeout, self.reactor, onTimeoutCancel=timedOut(path, timeout))
        parsed.addErrback(failureToError, path)
        self._pending.add(parsed)

        def forget(result: T) -> T:
            self._pending.discard(parsed)
            return result

        return parsed.addBoth(forget)

    def close(self) -> Deferred[None]:
        """
        Cancel calls in flight and watches, close idle connections.

        @return: a L{Deferred} firing when the connections are closed.
        """
        for d in list(self._pending):
            d.cancel()
        waits: list[Deferred[Any]] = [watch.cancel() for watch in list(self._watches)]
        if self._pool is not None:
            waits.append(self._pool.closeCachedConnections())
        return gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- KV

    def range(
        self,
        key: KeyLike,
        prefix: bool = False,
        limit: int = 0,
        revision: int | None = None,
        keysOnly: bool = False,
        countOnly: bool = False,
        rangeEnd: KeyLike | None = None,
        timeout: float | None = None,
    ) -> Deferred[RangeResult]:
        """
        Read one key, a prefix (C{prefix=True}) or C{[key, rangeEnd)}.

        @param revision: read at that revision (L{Compacted} if compacted).
        @return: L{Deferred} firing with L{RangeResult}.
        """
        op = Op.range(key, prefix, limit, revision, keysOnly, countOnly, rangeEnd)
        return self.call("/v3/kv/range", op.body, RangeResult.fromJSON, timeout=timeout)

    def put(
        self,
        key: KeyLike,
        value: KeyLike,
        lease: int | None = None,
        ignoreLease: bool = False,
        timeout: float | None = None,
    ) -> Deferred[int]:
        """
        Write a key.  See L{Op.put} about leases.

        @return: L{Deferred} firing with the revision of the write.
        """
        op = Op.put(key, value, lease, ignoreLease)
        return self.call(
            "/v3/kv/put",
            op.body,
            lambda doc: PutResponse.fromJSON(doc).revision,
            timeout=timeout,
        )

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
        timeout: float | None = None,
    ) -> Deferred[TxnResult]:
        """
        If every L{Compare} holds, run C{success} ops, else C{failure} ops,
        atomically.

        @return: L{Deferred} firing with L{TxnResult}.
        """
        body = txnBody(compare, success, failure)
        return self.call("/v3/kv/txn", body, TxnResult.fromJSON, timeout=timeout)

    # -- leases

    def leaseGrant(
        self, ttl: int, leaseId: int | None = None, timeout: float | None = None
    ) -> Deferred[Lease]:
        """
        @return: L{Deferred} firing with L{Lease}.
        """
        body = {"TTL": int64(ttl, "ttl")}
        if leaseId:
            body["ID"] = int64(leaseId, "leaseId")

        def parse(doc: JSONDict) -> Lease:
            error = getStr(doc, "error")
            if error:
                raise EtcdError("/v3/lease/grant: " + error)
            lease = Lease(id=getInt(doc, "ID"), ttl=getInt(doc, "TTL"))
            if not lease.id:
                raise bad("grant without ID")
            return lease

        return self.call("/v3/lease/grant", body, parse, timeout=timeout)

    def leaseKeepAlive(self, leaseId: int, timeout: float | None = None) -> Deferred[int]:
        """
        Refresh a lease once (one POST on the keepalive stream).

        The server resets the lease to its full TTL at some moment between
        sending and answering, so a holder's safe deadline is its *send* time
        plus the TTL minus a margin; take C{reactor.seconds()} before calling.

        @return: L{Deferred} firing with the TTL (seconds) now granted, or
            failing with L{LeaseNotFound} (etcd answers HTTP 200 without TTL).
        """
        body = {"ID": int64(leaseId, "leaseId")}

        def parse(result: JSONDict) -> int:
            ttl = getInt(result, "TTL")
            if ttl <= 0:
                raise LeaseNotFound(
                    "/v3/lease/keepalive: lease {} not found".format(leaseId), code=GRPC_NOT_FOUND
                )
            return ttl

        return self.call("/v3/lease/keepalive", body, parse, stream=True, timeout=timeout)

    def leaseRevoke(self, leaseId: int, timeout: float | None = None) -> Deferred[int]:
        """
        Revoke a lease; its keys are deleted in the same revision.

        @return: L{Deferred} firing with that revision, or failing with
            L{LeaseNotFound}.
        """
        body = {"ID": int64(leaseId, "leaseId")}
        return self.call("/v3/lease/revoke", body, headerRevision, timeout=timeout)

    # -- watch

    def watch(
        self,
        key: KeyLike,
        onEvents: EventsCallback | None = None,
        prefix: bool = True,
        startRevision: int | None = None,
        prevKv: bool = False,
        progressNotify: bool = False,
        onProgress: ProgressCallback | None = None,
        rangeEnd: KeyLike | None = None,
    ) -> Watch:
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
        watch.start()
        return watch
