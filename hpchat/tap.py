# -*- test-case-name: tests.test_tap -*-
"""
C{twistd hpchat --config FILE}: command-line options and the wiring of one node's services.
"""

from __future__ import annotations

import os
import sys

from twisted.application.service import MultiService
from twisted.python import usage

from hpchat.config import ConfigError, loadConfig
from hpchat.storage.select import checkStorage


class Options(usage.Options):
    synopsis = "--config FILE"
    optParameters = [["config", "c", None, "Path to the node's ini file (see etc/hpchat.ini)."]]

    def postOptions(self):
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self["settings"] = loadConfig(self["config"])
            checkStorage(self["settings"])
        except ConfigError as e:
            # One line, no usage text and no traceback: the operator sees what to fix.
            sys.stderr.write(f"hpchat: config error: {e}\n")
            raise SystemExit(2) from None


def makeService(options, reactor=None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    raiseOpenFileLimit()
    node = buildNode(options["settings"], reactor)
    freezeStartupObjects()
    shortenThreadSwitches()
    return node


def freezeStartupObjects() -> None:
    """
    Move everything allocated so far (modules, classes, config) out of the cyclic garbage
    collector's sight: full collections then scan only what requests allocate.
    """
    import gc

    gc.collect()
    gc.freeze()
    # The hot path makes no reference cycles, so collections find next to nothing, but they
    # cost about a microsecond or two for every young object they scan, and a waiting poll's
    # objects live for seconds: with 10,000 waiting, the default collection of the middle
    # generation (every 10 young ones) scanned some 7,000 survivors and paused 15 ms, twice
    # a second. Collecting it every 2 young collections keeps each pause near 5 ms (p99 at
    # 10,000 waiting and 1,000 msgs/s: 24.6 -> 14.3 ms); full collections, which scan every
    # live object, stay rare.
    gc.set_threshold(700, 2, 5_000)


def shortenThreadSwitches() -> None:
    """
    Let the store's thread have the GIL back sooner. It gives the GIL up for every SQLite
    call and must take it back between calls; with the reactor thread busy, each take waits
    for the switch interval (5 ms by default), which made a batch of a few statements take
    50 ms under load. The interval only matters while another thread is waiting for the GIL.
    """
    import sys

    sys.setswitchinterval(0.0005)


def raiseOpenFileLimit() -> int:
    """
    Every waiting long-poll holds a socket: raise the soft limit on open files to the hard
    limit (systemd's LimitNOFILE= sets both).
    """
    import resource

    from twisted.logger import Logger

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    Logger(namespace="hpchat.tap").info("open file limit: {limit}", limit=soft)
    return soft


def buildNode(config, reactor) -> MultiService:
    """
    Wire one node: store, persister, ownership, streams, notifications, HTTP API.
    """
    from hpchat.groups import SingleNodeOwnership
    from twisted.internet import defer

    from hpchat.notify import InboxRouter, InProcessNotifier
    from hpchat.persister import BatchPersister
    from hpchat.storage.service import StoreService
    from hpchat.storage.select import makeStore
    from hpchat.streams import Streams
    from hpchat.web.api import ChatAPI
    from hpchat.web.auth import Authenticator
    from hpchat.web.internal import InternalAuth, InternalClient
    from hpchat.web.site import WebService

    node = MultiService()

    def fatal(failure):
        # twistd exits 0 after reactor.stop(); a node that could not start must not, so that
        # systemd's Restart=on-failure restarts it.
        reactor.addSystemEventTrigger("after", "shutdown", _exitNow, 1)
        if reactor.running:
            reactor.stop()

    store = makeStore(config, reactor)
    StoreService(store, fatal, reactor).setServiceParent(node)

    if config.cluster is None:
        ownership = SingleNodeOwnership(config.node.id, config.node.advertise_url,
                                        config.chat.groups)
    else:
        ownership = clusterOwnership(config, reactor)
        # Started after the store and stopped after the persister's last flush, so that
        # revoking the lease hands over only durable state.
        ownership.setServiceParent(node)

    if config.nsq is not None:
        from hpchat.nsq.bus import NSQNotifier

        bus = NSQNotifier(reactor, config.nsq,
                          lambda n: defer.ensureDeferred(router.deliver(n)), config.node.id)
        # Stops after the persister: notifications of the last batch still go out.
        bus.producer.setServiceParent(node)

    persister = BatchPersister(reactor, store, batchSize=config.storage.batch_size,
                               flushInterval=config.storage.flush_interval,
                               maxPending=config.storage.max_pending)
    persister.setServiceParent(node)
    if config.cluster is not None:
        ownership.pendingWrites = persister.pendingFor
        persister.tokenValid = lambda group, token: ownership.mayWrite(group, token) is not None

    streams = Streams(reactor, store, persister, ownership, groups=config.chat.groups,
                      historyInMemory=config.chat.history_in_memory,
                      typingTtl=config.chat.typing_ttl, idleEvict=config.chat.idle_evict)
    streams.setServiceParent(node)
    persister.onGroupsLost = lambda groups, error: streams.dropGroups(groups)
    ownership.subscribeLost(streams.dropGroups)

    internalAuth = InternalAuth(config.auth.secret, reactor)
    internalClient = InternalClient(internalAuth, config.node.id, reactor)
    reactor.addSystemEventTrigger("before", "shutdown", internalClient.close)
    router = InboxRouter(streams, ownership, internalClient.deliver)
    if config.nsq is None:
        notifier = InProcessNotifier(streams, lambda n: defer.ensureDeferred(router.deliver(n)))
        streams.onCommitted.append(notifier.messageCommitted)
    else:
        streams.onCommitted.append(bus.messageCommitted)
        # Stop before the streams: in-flight notifications finish or go back to nsqd.
        for consumer in bus.consumers:
            consumer.setServiceParent(node)

    api = ChatAPI(streams, ownership, Authenticator(config.auth.secret, reactor), store,
                  config.chat, persister, internalAuth, devLogin=config.auth.dev_login)
    WebService(api, config.node.listen, reactor,
               corsOrigins=config.http.cors_origins, limits=config.limits).setServiceParent(node)
    return node


def _exitNow(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def clusterOwnership(config, reactor):
    from hpchat.cluster.etcd import EtcdClient
    from hpchat.cluster.ownership import EtcdOwnership

    cluster = config.cluster
    client = EtcdClient(reactor, cluster.etcd, timeout=max(1.0, cluster.lease_ttl / 3))
    return EtcdOwnership(reactor, client, config.node.id, config.node.advertise_url,
                         config.chat.groups, prefix=cluster.prefix, leaseTtl=cluster.lease_ttl,
                         fenceMargin=cluster.fence_margin, slack=cluster.rebalance_slack)
