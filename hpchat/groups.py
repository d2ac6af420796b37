# -*- test-case-name: tests.test_groups -*-
"""
Who serves a chat group: the interface the streams and the HTTP API ask, and the
single-node implementation that owns every group.

A L{Route} says where a group's requests go: served here under a fencing token, redirected to
another node, or unsettled for now (the caller answers 503 and the client retries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from twisted.internet import defer
from zope.interface import Interface, implementer

from hpchat import metrics
from hpchat.deferreds import shield


@dataclass(frozen=True, slots=True)
class Local:
    token: int


@dataclass(frozen=True, slots=True)
class Redirect:
    node: str
    url: str


@dataclass(frozen=True, slots=True)
class Unsettled:
    retryAfter: float = 1.0


Route = Union[Local, Redirect, Unsettled]


class IOwnership(Interface):
    """
    The node's view of group ownership.
    """

    def nodeId():
        """
        This node's id.
        """

    def tokenFor(group):
        """
        The fencing token under which this node may write C{group} right now, or None.
        """

    def route(group):
        """
        Where requests for C{group} go: a L{Route}, or a Deferred firing with one when the
        group must be claimed first (it may be shared by several callers).
        """

    def cluster():
        """
        C{(nodes, groups)}: live node id -> advertised URL, and group -> owning node id.
        """

    def subscribeLost(callback):
        """
        Call C{callback(groups)} whenever this node stops owning some groups.
        """

    def subscribeGained(callback):
        """
        Call C{callback(groups)} whenever this node starts owning some groups.
        """

    def ready():
        """
        True when this node can serve requests (registered and holding a valid lease).
        """


SINGLE_NODE_TOKEN = 1


@implementer(IOwnership)
class SingleNodeOwnership:
    """
    Without a cluster, this node owns every group under one fixed token.
    """

    def __init__(self, nodeId: str, url: str, groups: int):
        self._nodeId = nodeId
        self._url = url
        self._groups = groups
        self._local = Local(SINGLE_NODE_TOKEN)
        metrics.groupsOwned.set(groups)

    def nodeId(self) -> str:
        return self._nodeId

    def tokenFor(self, group: int) -> int:
        return SINGLE_NODE_TOKEN

    def mayWrite(self, group: int, token: int | None) -> int | None:
        """
        The persister's write fence: the one token is always valid.
        """
        return SINGLE_NODE_TOKEN if token in (None, SINGLE_NODE_TOKEN) else None

    def route(self, group: int) -> Route:
        return self._local

    def cluster(self):
        return {self._nodeId: self._url}, {g: self._nodeId for g in range(self._groups)}

    def subscribeLost(self, callback: Callable) -> None:
        pass

    def subscribeGained(self, callback: Callable) -> None:
        # Every group is this node's from the start, and stays so.
        pass

    def ready(self) -> bool:
        return True


_ASK = object()


def resolveRoute(ownership, group: int, route=_ASK) -> defer.Deferred:
    """
    C{ownership.route(group)} (or the C{route} it already gave) as a Deferred of the caller's
    own, whether it answered at once or not: cancelling it (the client went away) does not
    cancel a claim others wait for.
    """
    if route is _ASK:
        try:
            route = ownership.route(group)
        except Exception:
            return defer.fail()
    if isinstance(route, defer.Deferred):
        return shield(route, "a group claim", shared=True)
    return defer.succeed(route)
