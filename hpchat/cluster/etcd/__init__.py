# -*- test-case-name: tests.cluster.test_etcd -*-
"""
A small Twisted client for etcd's v3 JSON gateway (grpc-gateway), over treq.

Only the C{/v3/} paths are used: they exist in etcd 3.4, 3.5 and 3.6, while
C{/v3alpha} is gone since 3.4 and C{/v3beta} is only a rewrite kept by accident.

Encoding rules of the gateway that this package hides from its callers
(L{hpchat.cluster.etcd.wire}):

  - every C{bytes} field (keys, values, range ends) is standard base64 with
    padding; callers pass and get C{bytes} (C{str} is encoded as UTF-8);
  - int64 fields come back as JSON strings (lease IDs go above 2**53); they
    are sent as strings too and returned as Python C{int}s;
  - zero, false and empty fields are left out of answers, so a missing field
    means its default (C{0}, C{False}, C{b""}, C{[]}).

Errors are typed (L{hpchat.cluster.etcd.errors}), every call of
L{EtcdClient} has a timeout, and every call can be cancelled (which closes
its connection).  L{Watch} is one watch stream; L{WatchKeeper} keeps a mirror
of a key prefix current across disconnects and compactions.
"""

from hpchat.cluster.etcd.backoff import retryPolicy
from hpchat.cluster.etcd.client import EtcdClient
from hpchat.cluster.etcd.errors import (
    Compacted,
    EtcdBadResponse,
    EtcdError,
    EtcdTimeout,
    EtcdUnavailable,
    LeaseNotFound,
    WatchCanceled,
)
from hpchat.cluster.etcd.keeper import WatchKeeper
from hpchat.cluster.etcd.txn import Compare, Op
from hpchat.cluster.etcd.watch import Watch
from hpchat.cluster.etcd.wire import (
    DeleteRangeResponse,
    KeyValue,
    Lease,
    PutResponse,
    RangeResult,
    ResponseHeader,
    TxnResult,
    WatchEvent,
    prefixRangeEnd,
)

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
    "retryPolicy",
]
