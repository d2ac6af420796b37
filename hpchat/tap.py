# -*- test-case-name: tests.test_tap -*-
"""
C{twistd hpchat --config FILE}: command-line options and the wiring of one node's services.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.error import CannotListenError
from twisted.python import usage

from hpchat import process
from hpchat.config import Config, ConfigError, loadConfig
from hpchat.node import NodeService, Stage, serviceStage
from hpchat.ready import ReadyAnnouncer
from hpchat.storage.select import checkStorage

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from hpchat.cluster.ownership import Drains, EtcdOwnership
    from hpchat.notify import Notification
    from hpchat.storage.base import OutboxEntry


class Options(usage.Options):
    synopsis = "--config FILE"
    optParameters = [["config", "c", None, "Path to the node's ini file (see etc/hpchat.ini)."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self["settings"] = loadConfig(self["config"])
            checkStorage(self["settings"])
        except ConfigError as e:
            process.exitWithConfigError(e, sys.stderr)


def makeService(options: Options, reactor: Any = None) -> NodeService:
    if reactor is None:
        from twisted.internet import reactor
    process.raiseOpenFileLimit()
    node = buildNode(options["settings"], reactor, options["config"])
    process.freezeStartupObjects()
    process.shortenThreadSwitches()
    return node


class HPChatNode(NodeService):
    """
    The node, whose listening port failing to open (in use, not permitted) is a config
    error of C{[node] listen}: one line and exit status 2, not a traceback.
    """

    def __init__(self, clock: Any, configPath: str, listen: str, **kwargs: Any):
        super().__init__(clock, **kwargs)
        self.configPath = configPath
        self.listen = listen

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            process.exitWithConfigError(ConfigError(
                self.configPath, "node", "listen", f"cannot listen on {self.listen}: {reason}"))


def buildNode(config: Config, reactor: Any, configPath: str = "<config>") -> HPChatNode:
    """
    Wire one node: store, persister, ownership, streams, notifications, HTTP API, and the
    stages of its stop (see L{nodeStages}).
    """
    from twisted.internet import defer

    from hpchat.backlog import GroupBacklog
    from hpchat.blocks import BlockList
    from hpchat.groups import SingleNodeOwnership
    from hpchat.limits import UserLimits
    from hpchat.notify import InboxRouter, messageNotification, outboxEntry, parseNotification
    from hpchat.outbox import OutboxPublisher
    from hpchat.pacing import CommitPacing
    from hpchat.persister import BatchPersister
    from hpchat.presence import Presence
    from hpchat.storage.blocklist import IBlockStore
    from hpchat.storage.presence import IPresenceStore
    from hpchat.storage.select import makeStore
    from hpchat.storage.service import StoreService
    from hpchat.streams import Streams
    from hpchat.web.api import ChatAPI
    from hpchat.web.auth import Authenticator
    from hpchat.web.internal import InternalAuth, InternalClient
    from hpchat.web.site import WebService

    def fatal(failure: Failure) -> None:
        # twistd exits 0 after reactor.stop(); a node that could not start must not, so that
        # systemd's Restart=on-failure restarts it.
        reactor.addSystemEventTrigger("after", "shutdown", process.exitNow, 1)
        if reactor.running:
            reactor.stop()

    store = makeStore(config, reactor)
    storeService = StoreService(store, fatal, reactor)
    blocks = BlockList(reactor, store) if IBlockStore.providedBy(store) else None

    # The persister counts its queued writes in the backlog; a hand-off waits on it.
    backlog = GroupBacklog()
    ownership: SingleNodeOwnership | EtcdOwnership
    if config.cluster is None:
        ownership = SingleNodeOwnership(config.node.id, config.node.advertise_url,
                                        config.chat.groups)
    else:
        ownership = clusterOwnership(config, reactor, backlog)
    persister = BatchPersister(reactor, store, batchSize=config.storage.batch_size,
                               flushInterval=config.storage.flush_interval,
                               maxPending=config.storage.max_pending, fence=ownership,
                               outboxFor=outboxEntry, backlog=backlog,
                               pacing=CommitPacing(config.storage.min_flush_interval,
                                                   config.storage.flush_interval))

    streams = Streams(reactor, store, persister, ownership, groups=config.chat.groups,
                      historyInMemory=config.chat.history_in_memory,
                      typingTtl=config.chat.typing_ttl, idleEvict=config.chat.idle_evict,
                      maxStreams=config.limits.max_streams,
                      # Without NSQ nothing else sees a message's notification first: it
                      # is written with the message when this node holds the inbox.
                      notificationOf=messageNotification if config.nsq is None else None)
    persister.subscribeLost(streams.dropGroups)
    ownership.subscribeLost(streams.dropGroups)

    internalAuth = InternalAuth(config.auth.secret, reactor)
    internalClient = InternalClient(internalAuth, config.node.id, reactor)
    router = InboxRouter(streams, ownership, internalClient.deliver, blocks)

    def deliver(notification: Notification) -> Deferred[Any]:
        return defer.ensureDeferred(router.deliver(notification))

    bus = None
    if config.nsq is not None:
        from hpchat.nsq.bus import NSQNotifier

        bus = NSQNotifier(reactor, config.nsq, deliver, config.node.id)
        publish = bus.publishEntry
    else:
        # Without NSQ the outbox is done once the inbox append is durable.
        def publish(entry: OutboxEntry) -> Deferred[Any]:
            return deliver(parseNotification(entry.body.encode("utf-8")))

    outbox = OutboxPublisher(reactor, store, publish, outboxEntry, ownership, config.chat.groups)
    streams.onCommitted.append(outbox.committed)
    ownership.subscribeGained(outbox.groupsGained)

    presence = None
    if IPresenceStore.providedBy(store):
        def report(url: str, node: str, reports: dict[str, Any]) -> Deferred[Any]:
            return defer.ensureDeferred(internalClient.postJSON(
                url, "/internal/v1/presence/report",
                {"node": node, "users": {u: list(r) for u, r in reports.items()}}))

        presence = Presence(reactor, store, ownership, config.chat.groups, report,
                            grace=config.chat.presence_grace)
        ownership.subscribeLost(presence.home.dropGroups)

    api = ChatAPI(streams, ownership, Authenticator(config.auth.secret, reactor), store,
                  config.chat, persister, internalAuth, devLogin=config.auth.dev_login,
                  limits=UserLimits.fromConfig(reactor, config.limits), blocks=blocks,
                  presence=presence, internalClient=internalClient,
                  maxBody=config.limits.max_body_bytes,
                  maxInternalBody=config.limits.max_internal_body_bytes)
    web = WebService(api, config.node.listen, reactor, corsOrigins=config.http.cors_origins,
                     limits=config.limits)

    node = HPChatNode(reactor, configPath, config.node.listen)
    for stage in nodeStages(web=web, streams=streams, persister=persister, outbox=outbox,
                            internalClient=internalClient, store=storeService,
                            ownership=ownership if config.cluster is not None else None,
                            consumers=bus.consumers if bus is not None else (),
                            producer=bus.producer if bus is not None else None,
                            presence=presence, eventStreams=api.eventStreams):
        node.addStage(stage)
    node.addStage(serviceStage("ready line", 1.0, ReadyAnnouncer(
        config, lambda: store.ready and ownership.ready(), reactor)), before="accepting")
    return node


def nodeStages(web, streams, persister, internalClient, store, ownership=None, consumers=(),
               producer=None, outbox=None, presence=None, eventStreams=None) -> list[Stage]:
    """
    The stages of a node in stop order (they start in the reverse order):

      1. C{accepting}: the API answers new requests 503 and the port stops listening;
      2. C{polls}: waiting long-polls are answered with what they have, and open event
         streams (C{eventStreams}) closed, so that their clients poll or reconnect again
         (elsewhere);
      3. C{nsq consumers}: no more notifications taken; those in flight finish or go back;
      4. C{streams}: what is left in memory is dropped;
         C{presence}: the last poll changes are reported, last-seen times written;
      5. C{persister}: every queued event is written (or fails after its C{stopTimeout});
      6. C{outbox}: what the last batches published is marked done (what is not stays
         pending in the store, for the group's next owner to publish);
      7. C{nsq producer}: the notifications of the last batches are published;
      8. C{internal client}: connections to other nodes are closed;
      9. C{lease}: the group claims and the lease are given back (cluster), so that other
         nodes take over at once, with everything durable;
     10. C{store}: the store is closed.
    """
    stages = [serviceStage("accepting", 5.0, web),
              Stage("polls", _answerPolls(streams, eventStreams), 1.0)]
    if consumers:
        stages.append(serviceStage("nsq consumers",
                                   max(c.closeTimeout for c in consumers) + 2.0, *consumers))
    stages.append(serviceStage("streams", 2.0, streams))
    if presence is not None:
        stages.append(serviceStage("presence", 5.0, presence))
    stages.append(serviceStage("persister", persister.stopTimeout + 2.0, persister))
    if outbox is not None:
        stages.append(serviceStage("outbox", outbox.stopTimeout + 2.0, outbox))
    if producer is not None:
        stages.append(serviceStage("nsq producer", producer.stopTimeout + 2.0, producer))
    stages.append(Stage("internal client", internalClient.close, 2.0))
    if ownership is not None:
        stages.append(serviceStage("lease", 5.0, ownership))
    stages.append(serviceStage("store", 5.0, store))
    return stages


def _answerPolls(streams: Any, eventStreams: Any = None) -> Callable[[], None]:
    """
    The C{polls} stage: waiting long-polls answered, open event streams closed.
    """

    def answer() -> None:
        streams.answerWaiting()
        if eventStreams is not None:
            eventStreams.closeAll()

    return answer


def clusterOwnership(config: Config, reactor: Any, drains: Drains) -> EtcdOwnership:
    from hpchat.cluster.etcd import EtcdClient
    from hpchat.cluster.ownership import EtcdOwnership

    cluster = config.cluster
    if cluster is None:
        raise ValueError("clusterOwnership needs a [cluster] section")
    client = EtcdClient(reactor, cluster.etcd, timeout=max(1.0, cluster.lease_ttl / 3))
    return EtcdOwnership(reactor, client, config.node.id, config.node.advertise_url,
                         config.chat.groups, prefix=cluster.prefix, leaseTtl=cluster.lease_ttl,
                         fenceMargin=cluster.fence_margin, slack=cluster.rebalance_slack,
                         drains=drains)
