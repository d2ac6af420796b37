# -*- test-case-name: tests.nsq.test_integration -*-
"""
A real nsqd for integration tests.

The binary comes from C{$HPCHAT_NSQD}, else C{<repo>/.build/bin/nsqd} (built by
C{tools/nsqd/build.sh}); without it the tests are skipped. Each L{NSQD} listens on 127.0.0.1 with
free TCP and HTTP ports and a temporary C{--data-path}, and can be restarted on the same ports
and data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from typing import Any, Sequence
from unittest import SkipTest
from urllib.parse import urlencode

from treq.client import HTTPClient
from twisted.internet import defer, protocol, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.process import freePort

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_SCRIPT = "tools/nsqd/build.sh"


def nsqdPath() -> str:
    """
    The nsqd binary to run.

    @raise SkipTest: there is none.
    """
    path = os.environ.get("HPCHAT_NSQD") or os.path.join(REPO, ".build", "bin", "nsqd")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise SkipTest(f"no nsqd binary at {path}: run {BUILD_SCRIPT} (needs Go and the Go "
                       f"module proxy) or set HPCHAT_NSQD")
    return path


class _PortTaken(RuntimeError):
    pass


class _NSQDProcess(protocol.ProcessProtocol):
    def __init__(self, log: list[bytes]) -> None:
        self.output = log
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        self.ended.callback(code)


class NSQD:
    """
    One nsqd process. Use from a trial test: C{yield nsqd.start()}, and
    C{self.addCleanup(nsqd.cleanup)} (stops it and removes its data).

    @ivar tcpAddress: C{"127.0.0.1:port"} for the TCP protocol.
    @ivar httpURL: C{"http://127.0.0.1:port"}.
    """


    def __init__(self, reactor: Any, extraArgs: Sequence[str] = (),
                 startTimeout: float = 10.0, stopTimeout: float = 5.0) -> None:
        self.reactor = reactor
        self.binary = nsqdPath()
        self.extraArgs = list(extraArgs)
        self.startTimeout = startTimeout
        self.stopTimeout = stopTimeout
        self._choosePorts()
        self._started = False
        self.output: list[bytes] = []
        self._process: _NSQDProcess | None = None
        self._transport: Any = None
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 2
        self._pool.retryAutomatically = False
        self.http = HTTPClient(Agent(reactor, pool=self._pool))
        self.dataPath = tempfile.mkdtemp(prefix="hpchat-nsqd-")

    def _choosePorts(self) -> None:
        self.tcpPort = freePort()
        self.httpPort = freePort()
        self.tcpAddress = f"127.0.0.1:{self.tcpPort}"
        self.httpURL = f"http://127.0.0.1:{self.httpPort}"

    @property
    def running(self) -> bool:
        return self._process is not None and not self._process.ended.called

    def arguments(self) -> list[str]:
        return [
            self.binary,
            f"--tcp-address={self.tcpAddress}",
            f"--http-address=127.0.0.1:{self.httpPort}",
            "--https-address=",
            "--broadcast-address=127.0.0.1",
            f"--data-path={self.dataPath}",
            # As deployments run it: every message goes through the disk queue, so that what
            # nsqd has acknowledged survives a kill -9 of nsqd.
            "--mem-queue-size=0",
            "--log-level=warn",
            *self.extraArgs,
        ]

    @defer.inlineCallbacks
    def start(self) -> Any:
        """
        Start nsqd and wait until C{/ping} answers C{OK}.

        On the first start, ports taken in the meantime (e.g. by a parallel trial worker) are
        replaced by new free ones; a restart keeps its ports.
        """
        for attempt in range(3):
            try:
                yield self._start()
            except _PortTaken:
                if self._started or attempt == 2:
                    raise
                self._choosePorts()
            else:
                self._started = True
                return

    @defer.inlineCallbacks
    def _start(self) -> Any:
        if self.running:
            raise RuntimeError("nsqd is already running")
        self.output.clear()
        self._process = _NSQDProcess(self.output)
        args = self.arguments()
        self._transport = self.reactor.spawnProcess(
            self._process, args[0], args, env={"PATH": os.environ.get("PATH", "")},
            childFDs={0: "w", 1: "r", 2: "r"})
        deadline = self.reactor.seconds() + self.startTimeout
        while True:
            if not self.running:
                if "address already in use" in self.logText():
                    raise _PortTaken(self.logText())
                raise RuntimeError(f"nsqd exited at startup:\n{self.logText()}")
            if (yield self._pinged()):
                return
            if self.reactor.seconds() > deadline:
                yield self.stop()
                raise RuntimeError(f"nsqd not ready after {self.startTimeout} s:\n"
                                   f"{self.logText()}")
            yield task.deferLater(self.reactor, 0.02, lambda: None)

    @defer.inlineCallbacks
    def _pinged(self) -> Any:
        try:
            response = yield self.http.get(f"{self.httpURL}/ping", timeout=1.0,
                                           reactor=self.reactor)
            body = yield response.content()
        except Exception:
            return False
        return response.code == 200 and body == b"OK"

    def stop(self) -> defer.Deferred[int | None]:
        """
        SIGTERM (nsqd saves its queues to the data path), SIGKILL after C{stopTimeout}.
        Fires with the exit code.
        """
        process = self._process
        if process is None or process.ended.called:
            return defer.succeed(None)
        self._signal(signal.SIGTERM)
        killer = self.reactor.callLater(self.stopTimeout, self._signal, signal.SIGKILL)

        def ended(code: int | None) -> int | None:
            if killer.active():
                killer.cancel()
            return code

        return process.ended.addCallback(ended)

    def kill(self) -> defer.Deferred[int | None]:
        """
        SIGKILL: everything nsqd holds in memory is lost.
        """
        process = self._process
        if process is None or process.ended.called:
            return defer.succeed(None)
        self._signal(signal.SIGKILL)
        return process.ended

    def _signal(self, sig: int) -> None:
        try:
            self._transport.signalProcess(sig)
        except Exception:  # already gone
            pass

    @defer.inlineCallbacks
    def restart(self) -> Any:
        """
        Stop, then start again on the same ports and data path.
        """
        yield self.stop()
        yield self._pool.closeCachedConnections()
        yield self.start()

    @defer.inlineCallbacks
    def cleanup(self) -> Any:
        yield self.stop()
        yield self._pool.closeCachedConnections()
        shutil.rmtree(self.dataPath, ignore_errors=True)

    def logText(self) -> str:
        return b"".join(self.output).decode("utf-8", "replace")

    # -- HTTP API

    @defer.inlineCallbacks
    def _post(self, path: str, params: dict[str, str], body: bytes = b"") -> Any:
        response = yield self.http.post(f"{self.httpURL}{path}?{urlencode(params)}",
                                        data=body, timeout=5.0, reactor=self.reactor)
        content = yield response.content()
        if response.code != 200:
            raise RuntimeError(f"nsqd {path} {params}: {response.code} {content!r}")
        return content

    def pub(self, topic: str, body: bytes) -> defer.Deferred[bytes]:
        """
        Publish through nsqd's HTTP C{/pub}.
        """
        return self._post("/pub", {"topic": topic}, body)

    def createTopic(self, topic: str) -> defer.Deferred[bytes]:
        return self._post("/topic/create", {"topic": topic})

    def createChannel(self, topic: str, channel: str) -> defer.Deferred[bytes]:
        return self._post("/channel/create", {"topic": topic, "channel": channel})

    @defer.inlineCallbacks
    def stats(self, topic: str) -> Any:
        """
        C{/stats} for one topic, as a dict (C{{}} if nsqd has no such topic).
        """
        response = yield self.http.get(
            f"{self.httpURL}/stats?{urlencode({'format': 'json', 'topic': topic})}",
            timeout=5.0, reactor=self.reactor)
        stats = json.loads((yield response.content()))
        for t in stats.get("topics") or []:
            if t["topic_name"] == topic:
                return t
        return {}

    @defer.inlineCallbacks
    def channelStats(self, topic: str, channel: str) -> Any:
        t = yield self.stats(topic)
        for c in t.get("channels") or []:
            if c["channel_name"] == channel:
                return c
        return {}
