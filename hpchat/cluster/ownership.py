# -*- test-case-name: tests.cluster.test_ownership -*-
"""
Group ownership through etcd: the node registry, group claims, keepalive and self-fencing.

Keys under the prefix (default C{/hpchat/}):

  - C{nodes/<id>} -> C{{"url", "started"}}, attached to the node's lease;
  - C{groups/<g>} -> the owner's node id, attached to the owner's lease, created by a txn
    comparing C{create_revision == 0}. Its create revision is the owner's fencing token.

Every node mirrors both prefixes through one watch. A group nobody owns is claimed on demand,
by whichever node first needs it, for the node that placement prefers (rendezvous hashing with
a load bound): the claim puts the key with I{that} node's lease, so every node agrees on the
owner at once and a redirect never points at a node that does not own the group.

Self-fencing: the lease is kept alive every TTL/3, and this node serves its groups only until
I{send time of the last acknowledged keepalive + TTL - margin}. etcd counts the TTL from some
moment between our send and its answer, so that deadline is the latest one that is safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from hpchat import metrics
from hpchat.cluster.etcd import Compare, Lease, LeaseNotFound, Op, WatchKeeper
from hpchat.cluster.placement import RendezvousPlacement, fairShare
from hpchat.groups import IOwnership, Local, Redirect, Unsettled
from hpchat.loops import retryDelays as backoffDelays
from hpchat.loops import startLoop


class Drains(Protocol):
    """
    Tells when the queued writes of some groups are all durable (the persister's
    L{hpchat.backlog.GroupBacklog}).
    """

    def drained(self, groups: Iterable[int]) -> defer.Deferred[None]:
        """
        Fires once no write of C{groups} is queued or in progress; cancelled on a timeout.
        """


class NothingQueued:
    """
    The L{Drains} of an ownership without a persister: every group is drained.
    """

    def drained(self, groups: Iterable[int]) -> defer.Deferred[None]:
        return defer.succeed(None)


@dataclass(frozen=True, slots=True)
class Owner:
    node: str
    token: int
    lease: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    url: str
    lease: int


class ClusterKeys:
    def __init__(self, prefix: str):
        self.prefix = prefix.encode()
        self.nodes = self.prefix + b"nodes/"
        self.groups = self.prefix + b"groups/"

    def node(self, nodeId: str) -> bytes:
        return self.nodes + nodeId.encode()

    def group(self, group: int) -> bytes:
        return self.groups + str(group).encode()

    def parseGroup(self, key: bytes) -> int | None:
        if not key.startswith(self.groups):
            return None
        rest = key[len(self.groups):]
        return int(rest) if rest.isdigit() else None

    def parseNode(self, key: bytes) -> str | None:
        if not key.startswith(self.nodes):
            return None
        return key[len(self.nodes):].decode("utf-8", "replace") or None


def readCluster(keys: ClusterKeys, kvs: Iterable) -> tuple[dict[str, NodeInfo], dict[int, Owner]]:
    """
    The live nodes and group owners described by the etcd keys C{kvs}. Malformed keys and
    values are skipped.
    """
    nodes: dict[str, NodeInfo] = {}
    owners: dict[int, Owner] = {}
    for kv in kvs:
        nodeId = keys.parseNode(kv.key)
        if nodeId is not None:
            try:
                url = json.loads(kv.value)["url"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(url, str):
                nodes[nodeId] = NodeInfo(url.rstrip("/"), kv.lease)
            continue
        group = keys.parseGroup(kv.key)
        if group is not None and kv.value:
            owners[group] = Owner(kv.value.decode("utf-8", "replace"), kv.createRevision,
                                  kv.lease)
    return nodes, owners


@implementer(IOwnership)
class EtcdOwnership(Service):
    """
    This node's membership of the cluster, and its view of who owns which group. It is the
    persister's write fence (L{mayWrite}).

    @param drains: what says when a group's queued writes are durable (the persister's
        L{GroupBacklog}); a group is released in a hand-off only once they are, or after
        C{handoffTimeout}.
    """

    log = Logger()
    handoffTimeout = 10.0

    def __init__(self, clock: Any, client: Any, nodeId: str, url: str, groups: int,
                 prefix: str = "/hpchat/", leaseTtl: int = 5, fenceMargin: float = 1.0,
                 slack: int = 1, placement: Any = None,
                 retryDelays: tuple[float, float] = (0.2, 5.0),
                 keeperFactory: Callable[..., Any] = WatchKeeper,
                 drains: Drains | None = None):
        self._clock = clock
        self._client = client
        self._nodeId = nodeId
        self._url = url
        self.groups = groups
        self.keys = ClusterKeys(prefix)
        self.leaseTtl = leaseTtl
        self.fenceMargin = fenceMargin
        self.slack = slack
        self.placement = placement or RendezvousPlacement()
        self._minDelay, self._maxDelay = retryDelays
        self._drains: Drains = drains if drains is not None else NothingQueued()
        self._lease: Lease | None = None
        self._validUntil = 0.0
        self._fenceTimer = None
        self._keepalive: task.LoopingCall | None = None
        self._registering: defer.Deferred | None = None
        self._nodes: dict[str, NodeInfo] = {}
        self._owners: dict[int, Owner] = {}
        self._claims: dict[int, defer.Deferred] = {}
        self._handingOff: set[int] = set()
        self._serving: set[int] = set()
        self._lostCallbacks: list[Callable] = []
        self._gainedCallbacks: list[Callable] = []
        self._rebalanceCall = None
        self._keeper = keeperFactory(client, self.keys.prefix, onResync=self._resynced,
                                     onEvents=self._changed, clock=clock)

    # -- IOwnership

    def nodeId(self) -> str:
        return self._nodeId

    def _leaseValid(self) -> bool:
        return self._lease is not None and self._clock.seconds() < self._validUntil

    def tokenFor(self, group: int) -> int | None:
        if group in self._handingOff:
            return None
        return self.mayWrite(group, None)

    def mayWrite(self, group: int, token: int | None) -> int | None:
        """
        The token under which this node may write C{group} now (if C{token} is given, only
        when it is that one), else None. Unlike L{tokenFor}, true during a hand-off, so
        that writes already queued can finish.
        """
        owner = self._owners.get(group)
        lease = self._lease
        if (owner is None or owner.node != self._nodeId or lease is None
                or not self._leaseValid() or owner.lease != lease.id):
            return None
        if token is not None and owner.token != token:
            return None
        return owner.token

    def route(self, group: int):
        known = self._routeKnown(group)
        if known is not None:
            return known
        if not self.ready():
            return Unsettled(1.0)
        claim = self._claims.get(group)
        if claim is None:
            claim = self._claims[group] = defer.ensureDeferred(self._claim(group))
            claim.addErrback(self._claimFailed, group)
            claim.addBoth(self._claimDone, group)
        return claim

    def _routeKnown(self, group: int):
        token = self.tokenFor(group)
        if token is not None:
            return Local(token)
        owner = self._owners.get(group)
        if owner is None:
            return None
        if owner.node == self._nodeId:
            # Ours on paper, but our lease lapsed or we are handing the group off.
            return Unsettled(1.0)
        node = self._nodes.get(owner.node)
        if node is None:
            return Unsettled(1.0)
        return Redirect(owner.node, node.url)

    def cluster(self):
        return ({n: info.url for n, info in sorted(self._nodes.items())},
                {g: o.node for g, o in sorted(self._owners.items())})

    def subscribeLost(self, callback: Callable) -> None:
        self._lostCallbacks.append(callback)

    def subscribeGained(self, callback: Callable) -> None:
        self._gainedCallbacks.append(callback)

    def ready(self) -> bool:
        return self._leaseValid() and self._keeper.resyncs > 0 and self._nodeId in self._nodes

    # -- claiming

    async def _claim(self, group: int):
        live = dict(self._nodes)
        load: dict[str, int] = {}
        for owner in self._owners.values():
            load[owner.node] = load.get(owner.node, 0) + 1
        cap = fairShare(self.groups, len(live), self.slack)
        preferred = self.placement.preferred(group, live, load, cap)
        if preferred is None:
            return Unsettled(1.0)
        lease = live[preferred].lease
        key = self.keys.group(group)
        try:
            result = await self._client.txn(
                compare=[Compare.createRevision(key, "==", 0)],
                success=[Op.put(key, preferred.encode(), lease=lease)],
                failure=[Op.range(key)])
        except LeaseNotFound:
            self.log.info("not claiming group {group} for {node}: its lease is gone",
                          group=group, node=preferred)
            return Unsettled(1.0)
        except Exception as e:
            self.log.warn("claiming group {group} failed: {error}", group=group,
                          error=str(e) or type(e).__name__)
            return Unsettled(1.0)
        if result.succeeded:
            metrics.claims.inc()
            self.log.info("claimed group {group} for {node}, token {token}", group=group,
                          node=preferred, token=result.revision)
            self._learn(group, Owner(preferred, result.revision, lease), announce=False)
        else:
            kvs = result.responses[0].kvs if result.responses else []
            if kvs:
                kv = kvs[0]
                self._learn(group, Owner(kv.value.decode("utf-8", "replace"), kv.createRevision,
                                         kv.lease))
        return self._routeKnown(group) or Unsettled(1.0)

    def _claimFailed(self, failure, group):
        self.log.failure("claiming group {group} failed", failure, group=group)
        return Unsettled(1.0)

    def _claimDone(self, result, group):
        del self._claims[group]
        return result

    def _learn(self, group: int, owner: Owner, announce: bool = True) -> None:
        known = self._owners.get(group)
        if known is None or owner.token >= known.token:
            self._owners[group] = owner
            if announce:
                self._announce(group, known, owner)
        self._settle()

    def _announce(self, group: int, known: Owner | None, owner: Owner) -> None:
        """
        One log line per ownership change on every node (the claimer logs its claim).
        """
        if known is None or known.token != owner.token:
            self.log.info("group {group} now owned by {node}", group=group, node=owner.node)

    # -- the mirror of etcd

    def _resynced(self, kvs, revision):
        nodes, owners = readCluster(self.keys, kvs.values())
        # Claims learnt from our own txns after this snapshot stay until the watch has them.
        for group, owner in self._owners.items():
            if owner.token > revision and group not in owners:
                owners[group] = owner
        self._nodes, self._owners = nodes, owners
        self._settle()
        self._scheduleRebalance()

    def _changed(self, events, revision):
        nodesChanged = False
        for event in events:
            key = event.kv.key
            group = self.keys.parseGroup(key)
            if group is not None:
                known = self._owners.get(group)
                if event.type == "DELETE":
                    if known is not None and known.token < event.kv.modRevision:
                        del self._owners[group]
                        self.log.info("group {group} released by {node}", group=group,
                                      node=known.node)
                elif event.kv.value and (known is None
                                         or event.kv.createRevision >= known.token):
                    owner = Owner(event.kv.value.decode("utf-8", "replace"),
                                  event.kv.createRevision, event.kv.lease)
                    self._owners[group] = owner
                    self._announce(group, known, owner)
                continue
            if self.keys.parseNode(key) is not None:
                nodesChanged = True
        if nodesChanged:
            self._nodes, _ = readCluster(self.keys, self._keeper.kvs.values())
            self._scheduleRebalance()
        self._settle()

    def _settle(self) -> None:
        """
        Recompute the groups this node serves; tell subscribers about the ones it lost and
        the ones it gained.
        """
        serving = {g for g in self._owners if self.tokenFor(g) is not None}
        lost, gained = self._serving - serving, serving - self._serving
        self._serving = serving
        metrics.groupsOwned.set(len(serving))
        if lost:
            self._tell(self._lostCallbacks, lost, "lost")
        if gained:
            self._tell(self._gainedCallbacks, gained, "gained")

    def _tell(self, callbacks: list[Callable], groups: set[int], what: str) -> None:
        for callback in callbacks:
            try:
                callback(sorted(groups))
            except Exception:
                self.log.failure("a {what}-groups subscriber failed", what=what)

    # -- lease, registration, keepalive, fencing

    def startService(self):
        super().startService()
        self._keeper.start()
        self._register()

    def _register(self) -> None:
        if (self._registering is None or self._registering.called) and self.running:
            self._registering = defer.ensureDeferred(self._registerLoop())
            self._registering.addErrback(
                lambda f: None if f.check(defer.CancelledError) else
                self.log.failure("registration loop failed", f))

    async def _registerLoop(self):
        policy = backoffDelays(self._minDelay, self._maxDelay)
        attempt = 0
        while self.running:
            try:
                await self._registerOnce()
                return
            except defer.CancelledError:
                raise
            except Exception as e:
                delay = policy(attempt)
                attempt += 1
                self.log.error(
                    "cannot register node {node} with etcd at {etcd}: {error}; "
                    "retrying in {delay:.1f}s", node=self._nodeId, etcd=self._client.url,
                    error=str(e) or type(e).__name__, delay=delay)
                await task.deferLater(self._clock, delay, lambda: None)

    async def _registerOnce(self):
        sent = self._clock.seconds()
        lease = await self._client.leaseGrant(self.leaseTtl)
        self._lease = lease
        self._acknowledged(sent, lease.ttl)
        value = json.dumps({"url": self._url, "started": sent}).encode()
        await self._client.put(self.keys.node(self._nodeId), value, lease=lease.id)
        self._nodes[self._nodeId] = NodeInfo(self._url, lease.id)
        if self._keepalive is None or not self._keepalive.running:
            self._keepalive = startLoop(self._clock, "keepalive", self._keepAlive,
                                        max(0.5, lease.ttl / 3))
        self.log.info("node {node} registered at {url} with lease {lease:x} (ttl {ttl}s)",
                      node=self._nodeId, url=self._url, lease=lease.id, ttl=lease.ttl)
        self._settle()
        self._scheduleRebalance()

    def _acknowledged(self, sent: float, ttl: int) -> None:
        self._validUntil = sent + ttl - self.fenceMargin
        if self._fenceTimer is not None and self._fenceTimer.active():
            self._fenceTimer.cancel()
        self._fenceTimer = self._clock.callLater(
            max(0.0, self._validUntil - self._clock.seconds()), self._selfFence)

    def _keepAlive(self):
        lease = self._lease
        if lease is None:
            return None
        sent = self._clock.seconds()
        d = self._client.leaseKeepAlive(lease.id, timeout=max(0.5, lease.ttl / 3))

        def ok(ttl):
            if self._lease is lease:
                wasFenced = not self._leaseValid()
                self._acknowledged(sent, ttl)
                if wasFenced:
                    self.log.info("keepalive acknowledged again; serving resumes")
                    self._settle()

        def failed(failure):
            metrics.keepaliveFailures.inc()
            if failure.check(LeaseNotFound):
                if self._lease is lease:
                    self._leaseLost("etcd no longer knows our lease")
                return None
            self.log.warn("lease keepalive failed: {error}",
                          error=failure.getErrorMessage() or failure.type.__name__)
            # A paused or partitioned etcd leaves the watch stream silently open: reconnect
            # it too, so that the mirror resumes as soon as etcd answers again.
            self._keeper.restart()
            return None

        return d.addCallbacks(ok, failed)

    def _selfFence(self):
        self._fenceTimer = None
        if self._lease is None or self._leaseValid():
            return
        self.log.warn("no keepalive acknowledged for {ttl}s - margin: self-fencing, "
                      "stopping service of {count} groups", ttl=self._lease.ttl,
                      count=len(self._serving))
        self._settle()

    def _leaseLost(self, why: str) -> None:
        self.log.warn("lease lost ({why}): dropping {count} groups and registering again",
                      why=why, count=len(self._serving))
        self._lease = None
        self._validUntil = 0.0
        if self._fenceTimer is not None and self._fenceTimer.active():
            self._fenceTimer.cancel()
        self._fenceTimer = None
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._settle()
        self._register()

    # -- rebalancing

    def _scheduleRebalance(self) -> None:
        if self._rebalanceCall is None and self.running:
            self._rebalanceCall = self._clock.callLater(1.0, self._rebalance)

    def _rebalance(self) -> None:
        self._rebalanceCall = None
        try:
            for group in self._handOffCandidates():
                self._handingOff.add(group)
                d = defer.ensureDeferred(self._handOff(group))
                d.addErrback(self._handOffFailed, group)
            if self._handingOff:
                self._settle()
        except Exception:
            self.log.failure("rebalancing failed")

    def _handOffCandidates(self) -> list[int]:
        if not self.ready() or self._handingOff:
            return []
        live = list(self._nodes)
        cap = fairShare(self.groups, len(live), self.slack)
        mine = sorted(self._serving)
        if len(mine) <= cap:
            return []
        load: dict[str, int] = {}
        for owner in self._owners.values():
            load[owner.node] = load.get(owner.node, 0) + 1
        candidates = [g for g in mine if self.placement.preferred(g, live, load, cap)
                      != self._nodeId]
        # Give away first the groups for which this node ranks lowest.
        candidates.sort(key=lambda g: self.placement.rank(g, live).index(self._nodeId),
                        reverse=True)
        return candidates[:len(mine) - cap]

    def _handOffFailed(self, failure: Failure, group: int) -> None:
        self.log.failure("hand-off of group {group} failed", failure, group=group)

    async def _handOff(self, group: int) -> None:
        """
        Stop serving C{group}, let its queued writes become durable, then release it.
        """
        owner = self._owners.get(group)
        try:
            try:
                await self._drains.drained([group]).addTimeout(self.handoffTimeout, self._clock)
            except defer.TimeoutError:
                self.log.warn("hand-off of group {group}: writes still queued after "
                              "{timeout}s; releasing it anyway", group=group,
                              timeout=self.handoffTimeout)
            if owner is not None and self.mayWrite(group, owner.token) is not None:
                await self._release(group, owner.token)
                self.log.info("handed off group {group}", group=group)
        finally:
            self._handingOff.discard(group)
            self._settle()

    async def _release(self, group: int, token: int) -> None:
        key = self.keys.group(group)
        result = await self._client.txn(compare=[Compare.createRevision(key, "==", token)],
                                        success=[Op.delete(key)])
        if result.succeeded:
            metrics.releases.inc()
            known = self._owners.get(group)
            if known is not None and known.token == token:
                del self._owners[group]

    # -- shutdown

    def stopService(self):
        """
        Give everything back at once: revoking the lease deletes this node's key and all its
        group claims, so other nodes take over without waiting for the TTL.
        """
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        if self._rebalanceCall is not None and self._rebalanceCall.active():
            self._rebalanceCall.cancel()
        self._rebalanceCall = None
        if self._registering is not None and not self._registering.called:
            self._registering.cancel()
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._fenceTimer is not None and self._fenceTimer.active():
            self._fenceTimer.cancel()
        lease, self._lease = self._lease, None
        self._settle()
        if lease is not None:
            try:
                await self._client.leaseRevoke(lease.id, timeout=2.0)
                self.log.info("lease revoked: groups released for takeover")
            except Exception as e:
                self.log.warn("could not revoke lease {lease:x}: {error}", lease=lease.id,
                              error=str(e) or type(e).__name__)
        await self._keeper.stop()
        await self._client.close()
