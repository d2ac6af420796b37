# -*- test-case-name: tests.cluster.test_etcd -*-
"""
Run a real, single-member etcd for tests.

The binary is C{$HPCHAT_ETCD}, else C{/usr/bin/etcd}, else C{etcd} on C{PATH}.
On Debian and Ubuntu it comes from the C{etcd-server} package.  Without it,
L{findEtcd} raises L{SkipTest} so the tests say plainly why they did not run.

Typical use from a trial test::

    @inlineCallbacks
    def test_something(self):
        etcd = yield startEtcd(self)
        client = EtcdClient(reactor, etcd.clientURL)
        ...
        yield etcd.stop()      # "etcd lost while running"
        yield etcd.start()     # back on the same ports and data dir

Every wait here is asynchronous and has a deadline; the process is started
and signalled with L{subprocess.Popen}, its exit is polled on the reactor.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile

from twisted.internet import task
from twisted.internet.defer import inlineCallbacks, returnValue
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest

from tests.support.process import freePort as _freeLoopbackPort

ENV_VAR = "HPCHAT_ETCD"
DEFAULT_PATH = "/usr/bin/etcd"
INSTALL_HINT = (
    "install it with `apt-get install -y etcd-server` (Debian/Ubuntu), or "
    "point ${} at an etcd >= 3.4 binary".format(ENV_VAR)
)

_POLL_INTERVAL = 0.05


def findEtcd():
    """
    Return the path of the etcd binary to use, or raise L{SkipTest} naming
    what is missing and how to install it.
    """
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise SkipTest(
            "etcd binary ${}={!r} is missing or not executable; {}".format(
                ENV_VAR, explicit, INSTALL_HINT
            )
        )
    if os.path.isfile(DEFAULT_PATH) and os.access(DEFAULT_PATH, os.X_OK):
        return DEFAULT_PATH
    found = shutil.which("etcd")
    if found:
        return found
    raise SkipTest(
        "etcd binary not found (${} unset, no {}, no etcd on PATH); {}".format(
            ENV_VAR, DEFAULT_PATH, INSTALL_HINT
        )
    )


def freePort(host="127.0.0.1"):
    """
    Ask the kernel for a free TCP port on C{host}.

    There is a small window in which another process could take it; L{EtcdProcess}
    retries with new ports if etcd then fails to bind.
    """
    if host == "127.0.0.1":
        return _freeLoopbackPort()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def _sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class EtcdStartError(Exception):
    """
    etcd did not become ready before the deadline, or exited during start.
    """


class EtcdProcess:
    """
    One etcd member on 127.0.0.1, with its own ports and temporary data dir.

    L{start} and L{stop} may be called repeatedly: a restart keeps the ports
    and the data dir, like a real member coming back after a crash.
    L{cleanup} stops it and removes the temporary directory.

    @ivar clientURL: C{http://127.0.0.1:<clientPort>}, for L{EtcdClient}.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        binary=None,
        clientPort=None,
        peerPort=None,
        name="hpchat-test",
        extraArgs=(),
        startTimeout=30.0,
        stopTimeout=10.0,
    ):
        self._reactor = reactor
        self.binary = binary or findEtcd()
        self._fixedPorts = clientPort is not None or peerPort is not None
        self.clientPort = clientPort or freePort()
        self.peerPort = peerPort or freePort()
        while self.peerPort == self.clientPort:
            self.peerPort = freePort()
        self.name = name
        self.extraArgs = list(extraArgs)
        self.startTimeout = startTimeout
        self.stopTimeout = stopTimeout
        self.baseDir = tempfile.mkdtemp(prefix="hpchat-etcd-")
        self.dataDir = os.path.join(self.baseDir, "data")
        self.logPath = os.path.join(self.baseDir, "etcd.log")
        self._process = None
        self._logFile = None
        self._paused = False
        self._started = False  # has the data dir been initialised?

    @property
    def clientURL(self):
        return "http://127.0.0.1:{}".format(self.clientPort)

    @property
    def peerURL(self):
        return "http://127.0.0.1:{}".format(self.peerPort)

    @property
    def pid(self):
        return self._process.pid if self._process is not None else None

    def running(self):
        """
        Is the process alive (possibly paused)?
        """
        return self._process is not None and self._process.poll() is None

    def _arguments(self):
        return [
            self.binary,
            "--name", self.name,
            "--data-dir", self.dataDir,
            "--listen-client-urls", self.clientURL,
            "--advertise-client-urls", self.clientURL,
            "--listen-peer-urls", self.peerURL,
            "--initial-advertise-peer-urls", self.peerURL,
            "--initial-cluster", "{}={}".format(self.name, self.peerURL),
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-level", "warn",
        ] + self.extraArgs

    def _environment(self):
        # ETCD_* variables would override our flags (and etcd refuses to start
        # when a flag and its variable are both set).
        return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}

    @inlineCallbacks
    def start(self):
        """
        Spawn etcd and wait until C{/v3/kv/range} answers.

        @return: a L{Deferred} firing with C{self}, or failing with
            L{EtcdStartError} (after killing the process).
        """
        if self.running():
            returnValue(self)
        attempts = 1 if (self._fixedPorts or self._started) else 3
        for attempt in range(attempts):
            try:
                yield self._startOnce()
            except EtcdStartError as e:
                if attempt + 1 < attempts and "address already in use" in str(e):
                    self.log.warn("etcd ports taken, retrying with new ones")
                    self.clientPort = freePort()
                    self.peerPort = freePort()
                    shutil.rmtree(self.dataDir, ignore_errors=True)
                    continue
                raise
            break
        self._started = True
        returnValue(self)

    @inlineCallbacks
    def _startOnce(self):
        self._logFile = open(self.logPath, "ab")
        self._process = subprocess.Popen(
            self._arguments(),
            stdin=subprocess.DEVNULL,
            stdout=self._logFile,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            cwd=self.baseDir,
            close_fds=True,
        )
        self._paused = False
        deadline = self._reactor.seconds() + self.startTimeout
        try:
            while True:
                if self._process.poll() is not None:
                    raise EtcdStartError(
                        "etcd exited with {} during start; log:\n{}".format(
                            self._process.returncode, self.logTail()
                        )
                    )
                ready = yield self._probe()
                if ready:
                    return
                if self._reactor.seconds() > deadline:
                    raise EtcdStartError(
                        "etcd not ready after {}s; log:\n{}".format(
                            self.startTimeout, self.logTail()
                        )
                    )
                yield _sleep(self._reactor, _POLL_INTERVAL)
        except BaseException:
            yield self._terminate(signal.SIGKILL)
            raise

    @inlineCallbacks
    def _probe(self):
        """
        One readiness check: a linearizable range, which needs a leader.
        """
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(self._reactor, persistent=True)
        client = HTTPClient(Agent(self._reactor, pool=pool))
        try:
            response = yield client.post(
                self.clientURL + "/v3/kv/range",
                data=b'{"key":"AA=="}',
                timeout=1.0,
                reactor=self._reactor,
            )
            body = yield response.content()
            return response.code == 200 and b'"header"' in body
        except Exception:
            return False
        finally:
            # Wait until the socket is really closed: nothing left in the reactor.
            yield pool.closeCachedConnections()

    def logTail(self, lines=30):
        try:
            with open(self.logPath, "rb") as f:
                data = f.read()
        except OSError:
            return "(no log)"
        return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")

    def stop(self):
        """
        SIGTERM, then SIGKILL if it has not exited after C{stopTimeout}.
        Keeps the data dir, so L{start} brings the same member back.

        @return: a L{Deferred} firing when the process has exited.
        """
        return self._terminate(signal.SIGTERM)

    def kill(self):
        """
        SIGKILL: a crash, no graceful shutdown.  Keeps the data dir.
        """
        return self._terminate(signal.SIGKILL)

    def pause(self):
        """
        SIGSTOP: the process keeps its sockets but answers nothing.

        @return: a L{Deferred} firing once every thread of etcd is stopped
            (signal delivery is asynchronous: a thread running on another
            CPU could still answer a request sent right after the kill).
        """
        if self.running() and not self._paused:
            self._process.send_signal(signal.SIGSTOP)
            self._paused = True
            return self._waitState(stopped=True)
        return _sleep(self._reactor, 0)

    def resume(self):
        """
        SIGCONT after L{pause}.

        @return: a L{Deferred} firing once etcd runs again.
        """
        if self.running() and self._paused:
            self._process.send_signal(signal.SIGCONT)
            self._paused = False
            return self._waitState(stopped=False)
        self._paused = False
        return _sleep(self._reactor, 0)

    def _threadStates(self):
        states = []
        taskDir = "/proc/{}/task".format(self._process.pid)
        try:
            tids = os.listdir(taskDir)
        except OSError:
            return states
        for tid in tids:
            try:
                with open(os.path.join(taskDir, tid, "stat"), "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # "pid (comm) S ...": the state follows the last ")".
            states.append(stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3])
        return states

    @inlineCallbacks
    def _waitState(self, stopped, timeout=5.0):
        if not os.path.isdir("/proc/self/task"):
            # No procfs: give the signal a moment instead.
            yield _sleep(self._reactor, 0.2)
            return
        deadline = self._reactor.seconds() + timeout
        while self.running():
            states = self._threadStates()
            allStopped = bool(states) and all(state in (b"T", b"t") for state in states)
            if allStopped == stopped:
                return
            if self._reactor.seconds() > deadline:
                raise RuntimeError(
                    "etcd pid {} did not {} within {}s (thread states {!r})".format(
                        self._process.pid, "stop" if stopped else "resume", timeout, states
                    )
                )
            yield _sleep(self._reactor, 0.01)

    @inlineCallbacks
    def restart(self):
        """
        Stop and start again on the same ports and data dir.
        """
        yield self.stop()
        yield self.start()
        returnValue(self)

    @inlineCallbacks
    def _terminate(self, sig):
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            if self._paused:
                process.send_signal(signal.SIGCONT)
                self._paused = False
            deadline = self._reactor.seconds() + self.stopTimeout
            while process.poll() is None:
                if sig != signal.SIGKILL and self._reactor.seconds() > deadline:
                    self.log.warn(
                        "etcd pid {pid} ignored SIGTERM for {timeout}s; killing",
                        pid=process.pid,
                        timeout=self.stopTimeout,
                    )
                    sig = signal.SIGKILL
                    process.send_signal(sig)
                    deadline = self._reactor.seconds() + self.stopTimeout
                elif sig == signal.SIGKILL and self._reactor.seconds() > deadline:
                    raise RuntimeError(
                        "etcd pid {} survived SIGKILL".format(process.pid)
                    )
                yield _sleep(self._reactor, _POLL_INTERVAL)
        if self._logFile is not None:
            self._logFile.close()
            self._logFile = None
        self._process = None

    @inlineCallbacks
    def cleanup(self):
        """
        Stop the process (if any) and remove the temporary directory.
        """
        try:
            yield self.stop()
        finally:
            shutil.rmtree(self.baseDir, ignore_errors=True)


def startEtcd(testcase, **kwargs):
    """
    Start an etcd for C{testcase} and register its cleanup.

    @param testcase: a trial C{TestCase}; its C{addCleanup} stops etcd and
        removes the data dir when the test ends, pass or fail.
    @param kwargs: passed to L{EtcdProcess}.
    @return: a L{Deferred} firing with the running L{EtcdProcess}.
    @raise SkipTest: if no etcd binary is installed.
    """
    from twisted.internet import reactor

    process = EtcdProcess(reactor, **kwargs)
    testcase.addCleanup(process.cleanup)
    return process.start()


__all__ = [
    "EtcdProcess",
    "EtcdStartError",
    "findEtcd",
    "freePort",
    "startEtcd",
]
