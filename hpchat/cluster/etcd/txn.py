# -*- test-case-name: tests.cluster.test_etcd -*-
"""
The building blocks of requests: txn conditions (L{Compare}) and operations
(L{Op}), which the plain calls of L{EtcdClient} send as well.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpchat.cluster.etcd.wire import JSONDict, KeyLike, b64, int64, keyRange, toBytes

__all__ = ["Compare", "Op", "txnBody"]

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
    One txn condition on a key: C{target} (C{"CREATE"}, C{"MOD"},
    C{"VERSION"}, C{"VALUE"}, C{"LEASE"}) compared by C{op} (C{==}, C{!=},
    C{>}, C{<}) with C{value} in the JSON field C{field}.  The usual one::

        Compare.createRevision(key, "==", 0)       # key absent: claim it
        Compare.createRevision(key, "==", token)   # still my claim (fencing)

    Beware: on a missing key every revision compares as 0 (C{MOD < 100}
    succeeds); compare C{createRevision == token} to require existence.
    """

    def __init__(self, target: str, key: KeyLike, op: str, field: str, value: str) -> None:
        try:
            result = _COMPARE_RESULTS[op]
        except KeyError:
            raise ValueError("compare operator must be one of ==, !=, >, <: {!r}".format(op))
        self.json: JSONDict = {"target": target, "result": result, field: value}
        self.json.update(keyRange(key))

    @classmethod
    def createRevision(cls, key: KeyLike, op: str, revision: int) -> Compare:
        return cls("CREATE", key, op, "create_revision", int64(revision, "revision"))

    def __repr__(self) -> str:
        return "<Compare {}>".format(self.json)


class Op:
    """
    One txn operation, built with L{Op.put}, L{Op.range} or L{Op.delete};
    also what the plain client calls send.

    @ivar kind: C{"request_put"}, C{"request_range"}, C{"request_delete_range"}
        or C{"request_txn"}.
    @ivar body: the request's JSON object.
    """

    def __init__(self, kind: str, body: JSONDict) -> None:
        self.kind = kind
        self.body = body

    @property
    def json(self) -> JSONDict:
        return {self.kind: self.body}

    @classmethod
    def put(
        cls,
        key: KeyLike,
        value: KeyLike,
        lease: int | None = None,
        ignoreLease: bool = False,
        prevKv: bool = False,
    ) -> Op:
        """
        Without C{lease} (and without C{ignoreLease}) a put detaches the key
        from any lease it had; C{ignoreLease=True} keeps it.
        """
        body = keyRange(key)
        body["value"] = b64(toBytes(value, "value"))
        if lease:
            if ignoreLease:
                raise ValueError("lease and ignoreLease are exclusive")
            body["lease"] = int64(lease, "lease")
        if ignoreLease:
            body["ignore_lease"] = True
        if prevKv:
            body["prev_kv"] = True
        return cls("request_put", body)

    @classmethod
    def range(
        cls,
        key: KeyLike,
        prefix: bool = False,
        limit: int = 0,
        revision: int | None = None,
        keysOnly: bool = False,
        countOnly: bool = False,
        rangeEnd: KeyLike | None = None,
    ) -> Op:
        body = keyRange(key, prefix, rangeEnd)
        if limit:
            body["limit"] = int64(limit, "limit")
        if revision:
            body["revision"] = int64(revision, "revision")
        if keysOnly:
            body["keys_only"] = True
        if countOnly:
            body["count_only"] = True
        return cls("request_range", body)

    @classmethod
    def delete(
        cls,
        key: KeyLike,
        prefix: bool = False,
        prevKv: bool = False,
        rangeEnd: KeyLike | None = None,
    ) -> Op:
        body = keyRange(key, prefix, rangeEnd)
        if prevKv:
            body["prev_kv"] = True
        return cls("request_delete_range", body)

    def __repr__(self) -> str:
        return "<Op {}>".format(self.json)


def txnBody(
    compare: Iterable[Compare] = (),
    success: Iterable[Op] = (),
    failure: Iterable[Op] = (),
) -> JSONDict:
    """
    The JSON body of a txn (also of a nested C{request_txn}).

    @raise TypeError: for items that are not L{Compare} or L{Op}.
    """
    compares = list(compare)
    successOps = list(success)
    failureOps = list(failure)
    for c in compares:
        if not isinstance(c, Compare):
            raise TypeError("compare items must be Compare, not {!r}".format(c))
    for op in successOps + failureOps:
        if not isinstance(op, Op):
            raise TypeError("success/failure items must be Op, not {!r}".format(op))
    body: JSONDict = {}
    if compares:
        body["compare"] = [c.json for c in compares]
    if successOps:
        body["success"] = [op.json for op in successOps]
    if failureOps:
        body["failure"] = [op.json for op in failureOps]
    return body
