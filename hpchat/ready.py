# -*- test-case-name: tests.test_ready -*-
"""
The one line a node logs once it serves: where, on which store, alone or in which cluster,
with or without NSQ.

  hpchat ready at http://127.0.0.1:8080 (store: sqlite /srv/hpchat/var/hpchat.sqlite3,
  mode: single node, nsq: off)
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


def readyFields(config) -> dict[str, str]:
    storage = config.storage
    store = f"sqlite {storage.path}" if storage.backend == "sqlite" else storage.backend
    if config.cluster is None:
        mode = "single node"
    else:
        mode = f"cluster of etcd {config.cluster.etcd}"
    nsq = "off" if config.nsq is None else (
        f"{', '.join(config.nsq.nsqd_tcp)} topic {config.nsq.topic}")
    return {"url": config.node.advertise_url, "store": store, "mode": mode, "nsq": nsq}


class ReadyAnnouncer(Service):
    """
    Logs the ready line once C{isReady()} is true (the store open, the ownership ready: what
    C{/readyz} checks). Add it as the last service of a node, so that the HTTP listener is
    up before it starts. Past C{warnAfter} seconds without readiness it logs a warning, once,
    and goes on waiting.
    """

    log = Logger(namespace="hpchat.node")
    interval = 0.05
    warnAfter = 60.0

    def __init__(self, config, isReady: Callable[[], bool], clock):
        self.fields = readyFields(config)
        self._isReady = isReady
        self._clock = clock
        self._loop: LoopingCall | None = None
        self._started = 0.0
        self._warned = False

    def startService(self) -> None:
        super().startService()
        self._started = self._clock.seconds()
        self._loop = LoopingCall(self._check)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True)

    def _check(self) -> None:
        try:
            ready = bool(self._isReady())
        except Exception:
            self.log.failure("readiness check failed")
            ready = False
        if ready:
            self.log.info("hpchat ready at {url} (store: {store}, mode: {mode}, nsq: {nsq})",
                          **self.fields)
            self._stopLoop()
        elif not self._warned and self._clock.seconds() - self._started >= self.warnAfter:
            self._warned = True
            self.log.warn("hpchat not ready after {seconds:.0f} s at {url} (store: {store}, "
                          "mode: {mode}): see /readyz", seconds=self.warnAfter, **self.fields)

    def _stopLoop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def stopService(self) -> None:
        self._stopLoop()
        return super().stopService()
