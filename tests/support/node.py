"""
Real hpchat nodes for tests: C{twistd -n hpchat --config FILE} processes on free loopback
ports, each with its own config file and log, talked to over HTTP with treq.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import treq
from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.process import freePort, terminate, theReactor, waitExit, waitFor

SECRET = "test-secret-0123456789abcdef-0123456789"


def twistdCommand() -> list[str]:
    # The twistd next to the running Python first: that is the one of this environment.
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(twistd):
        twistd = shutil.which("twistd") or twistd
    return [twistd]


class HTTP:
    """
    A treq client with its own connection pool, closed by L{close}; it never follows
    redirects by itself.
    """

    def __init__(self, persistent: bool = True):
        reactor = theReactor()
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pool.maxPersistentPerHost = 64
        self.client = HTTPClient(Agent(reactor, pool=self.pool))

    async def request(self, method: str, url: str, token: str | None = None, body=None,
                      timeout: float = 30.0):
        """
        Fire with C{(status, headers, json or None)}.
        """
        headers = {}
        if token:
            headers[b"authorization"] = [b"Bearer " + token.encode()]
        data = None
        if body is not None:
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            headers[b"content-type"] = [b"application/json"]
        response = await self.client.request(method, url, data=data, headers=headers,
                                             timeout=timeout, allow_redirects=False)
        content = await treq.content(response)
        try:
            decoded = json.loads(content) if content else None
        except ValueError:
            decoded = content
        return response.code, response.headers, decoded

    async def close(self):
        await self.pool.closeCachedConnections()


class Node:
    """
    One hpchat node process. C{sections} adds or overrides ini sections.
    """

    def __init__(self, workdir: str, nodeId: str, dbPath: str | None = None,
                 sections: dict[str, dict[str, str]] | None = None, port: int | None = None):
        self.workdir = workdir
        self.nodeId = nodeId
        self.port = port or freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        self.configPath = os.path.join(workdir, f"{nodeId}.ini")
        self.logPath = os.path.join(workdir, f"{nodeId}.log")
        self.dbPath = dbPath or os.path.join(workdir, f"{nodeId}.sqlite3")
        self.sections = sections or {}
        self.process: subprocess.Popen | None = None
        self.writeConfig()

    def writeConfig(self) -> None:
        config = {
            "node": {"id": self.nodeId, "listen": f"tcp:{self.port}:interface=127.0.0.1",
                     "advertise_url": self.url},
            "chat": {"groups": "16", "typing_ttl": "2"},
            "storage": {"path": self.dbPath, "flush_interval": "0.005"},
            "auth": {"secret": SECRET},
            # Tests and cluster benchmarks send and poll faster than one user would, over more
            # connections than the default cap; those of the limits set their own.
            "limits": {"sends_per_second": "100000", "sends_burst": "100000",
                       "typing_per_second": "100000", "typing_burst": "100000",
                       "max_polls_per_user": "100000", "max_connections": "1000000"},
        }
        for name, values in self.sections.items():
            config.setdefault(name, {}).update(values)
        if config["storage"].get("backend", "sqlite") != "sqlite":
            # Another store: no SQLite file.
            config["storage"].pop("path", None)
        with open(self.configPath, "w") as f:
            for name, values in config.items():
                f.write(f"[{name}]\n")
                for key, value in values.items():
                    f.write(f"{key} = {value}\n")

    def log(self) -> str:
        try:
            with open(self.logPath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    async def start(self, timeout: float = 20.0, ready: bool = True) -> "Node":
        logFile = open(self.logPath, "ab")
        self.process = subprocess.Popen(
            twistdCommand() + ["-n", "--pidfile=", "hpchat", "--config", self.configPath],
            stdout=logFile, stderr=subprocess.STDOUT, cwd=self.workdir,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        logFile.close()
        http = HTTP(persistent=False)
        path = "/readyz" if ready else "/healthz"

        async def answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.nodeId} exited with {self.process.returncode}:\n"
                                   f"{self.log()[-3000:]}")
            try:
                status, _, _ = await http.request("GET", self.url + path, timeout=2)
            except Exception:
                return False
            return status == 200

        try:
            await waitFor(answers, timeout, f"node {self.nodeId} {path}")
        finally:
            await http.close()
        return self

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    async def kill(self) -> None:
        """
        SIGKILL, as a crash: nothing gets a chance to run.
        """
        self.signal(signal.SIGKILL)
        await waitExit(self.process, 10)

    async def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        return await terminate(self.process, timeout)
