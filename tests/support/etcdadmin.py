"""
The etcd calls and txn conditions that only tests need, on top of
L{hpchat.cluster.etcd}: reading one key, deleting, compacting, looking at
leases and the server version, the other txn compare targets and nested
txns.  Tests use L{AdminClient}, L{AdminCompare} and L{AdminOp} where the
product uses L{EtcdClient}, L{Compare} and L{Op}.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from hpchat.cluster.etcd import (
    Compare,
    DeleteRangeResponse,
    EtcdClient,
    KeyValue,
    LeaseNotFound,
    Op,
)
from hpchat.cluster.etcd.errors import GRPC_NOT_FOUND
from hpchat.cluster.etcd.txn import txnBody
from hpchat.cluster.etcd.wire import (
    JSONDict,
    KeyLike,
    b64,
    bad,
    decodeBytes,
    getInt,
    getList,
    headerRevision,
    int64,
    toBytes,
)

__all__ = ["AdminClient", "AdminCompare", "AdminOp", "LeaseTimeToLive"]


@dataclass(frozen=True)
class LeaseTimeToLive:
    """
    Answer of timetolive: remaining C{ttl}, C{grantedTtl} and, when asked
    for, the C{keys} attached.
    """

    id: int
    ttl: int
    grantedTtl: int
    keys: list[bytes] = field(default_factory=list)


class AdminCompare(Compare):
    """
    L{Compare} with every target::

        AdminCompare.modRevision(key, "==", rev)        # CAS
        AdminCompare.value(key, "==", b"node-a")
        AdminCompare.version(key, ">", 0)
        AdminCompare.lease(key, "==", leaseId)
    """

    @classmethod
    def modRevision(cls, key: KeyLike, op: str, revision: int) -> AdminCompare:
        return cls("MOD", key, op, "mod_revision", int64(revision, "revision"))

    @classmethod
    def version(cls, key: KeyLike, op: str, version: int) -> AdminCompare:
        return cls("VERSION", key, op, "version", int64(version, "version"))

    @classmethod
    def value(cls, key: KeyLike, op: str, value: KeyLike) -> AdminCompare:
        return cls("VALUE", key, op, "value", b64(toBytes(value, "value")))

    @classmethod
    def lease(cls, key: KeyLike, op: str, leaseId: int) -> AdminCompare:
        return cls("LEASE", key, op, "lease", int64(leaseId, "lease"))


class AdminOp(Op):
    """
    L{Op} with nested txns.
    """

    @classmethod
    def txn(
        cls,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
    ) -> AdminOp:
        return cls("request_txn", txnBody(compare, success, failure))


class AdminClient(EtcdClient):
    """
    L{EtcdClient} with the calls that only tests make.
    """

    def get(self, key: KeyLike, timeout: float | None = None) -> Deferred[KeyValue | None]:
        """
        Read one key: L{Deferred} firing with its L{KeyValue} or L{None}.
        """
        d = self.range(key, timeout=timeout)
        return d.addCallback(lambda r: r.kvs[0] if r.kvs else None)

    def delete(
        self,
        key: KeyLike,
        prefix: bool = False,
        rangeEnd: KeyLike | None = None,
        timeout: float | None = None,
    ) -> Deferred[int]:
        """
        Delete a key, a prefix or a range.

        @return: L{Deferred} firing with the number of keys deleted.
        """
        op = Op.delete(key, prefix, rangeEnd=rangeEnd)
        return self.call(
            "/v3/kv/deleterange",
            op.body,
            lambda doc: DeleteRangeResponse.fromJSON(doc).deleted,
            timeout=timeout,
        )

    def compact(
        self, revision: int, physical: bool = False, timeout: float | None = None
    ) -> Deferred[int]:
        """
        Compact the key history up to C{revision}.

        @return: L{Deferred} firing with the header revision.
        """
        body: JSONDict = {"revision": int64(revision, "revision")}
        if physical:
            body["physical"] = True
        return self.call("/v3/kv/compaction", body, headerRevision, timeout=timeout)

    def leaseTimeToLive(
        self, leaseId: int, keys: bool = False, timeout: float | None = None
    ) -> Deferred[LeaseTimeToLive]:
        """
        @return: L{Deferred} firing with L{LeaseTimeToLive}, or failing with
            L{LeaseNotFound} (etcd answers TTL -1).
        """
        body: JSONDict = {"ID": int64(leaseId, "leaseId")}
        if keys:
            body["keys"] = True

        def parse(doc: JSONDict) -> LeaseTimeToLive:
            ttl = getInt(doc, "TTL")
            if ttl < 0:
                raise LeaseNotFound(
                    "/v3/lease/timetolive: lease {} not found".format(leaseId),
                    code=GRPC_NOT_FOUND,
                )
            return LeaseTimeToLive(
                id=getInt(doc, "ID"),
                ttl=ttl,
                grantedTtl=getInt(doc, "grantedTTL"),
                keys=[decodeBytes(k, "keys") for k in getList(doc, "keys")],
            )

        return self.call("/v3/lease/timetolive", body, parse, timeout=timeout)

    def leaseLeases(self, timeout: float | None = None) -> Deferred[list[int]]:
        """
        @return: L{Deferred} firing with the list of live lease IDs.
        """

        def parse(doc: JSONDict) -> list[int]:
            return [getInt(lease, "ID") for lease in getList(doc, "leases")]

        return self.call("/v3/lease/leases", {}, parse, timeout=timeout)

    def version(self, timeout: float | None = None) -> Deferred[JSONDict]:
        """
        C{GET /version}: L{Deferred} firing with e.g.
        C{{"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}}.
        """

        def parse(doc: JSONDict) -> JSONDict:
            if not isinstance(doc.get("etcdserver"), str):
                raise bad("no etcdserver in /version")
            return doc

        return self.call("/version", None, parse, method="GET", timeout=timeout)
