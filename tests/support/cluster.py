"""
A real cluster for tests: one etcd and several C{twistd hpchat} nodes on one store (a
database of its own on a real PostgreSQL server, as machines of a real deployment would share;
or, with C{store="sqlite"}, one SQLite file, which only nodes on one machine can share), and a
client that behaves like a browser of the site (follows redirects, re-sends the token,
retries on 503 and on a dead node).
"""

from __future__ import annotations

import os
import random

import jwt
from twisted.internet import defer, task

from hpchat.streamids import groupOf
from tests.support.etcd import startEtcd
from tests.support.node import HTTP, SECRET, Node
from tests.support.process import theReactor, waitFor

GROUPS = 16
TOPIC = "hpchat.notifications"
LEASE_TTL = 3


def token(user: str, ttl: int = 3600) -> str:
    now = int(theReactor().seconds())
    return jwt.encode({"sub": user, "exp": now + ttl}, SECRET, algorithm="HS256")


class Cluster:
    def __init__(self, testcase, size: int = 3, groups: int = GROUPS, leaseTtl: int = LEASE_TTL,
                 fenceMargin: float = 1.0, slack: int = 1, nsq: bool = False,
                 sections: dict[str, dict[str, str]] | None = None, store: str = "postgresql"):
        self.testcase = testcase
        # Extra ini sections (or keys) given to every node, e.g. {"auth": {"dev_login": "true"}}.
        self.sections = sections or {}
        self.size = size
        self.groups = groups
        self.leaseTtl = leaseTtl
        self.fenceMargin = fenceMargin
        self.slack = slack
        self.withNSQ = nsq
        self.nsqd = None
        self.workdir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.workdir)
        self.dbPath = os.path.join(self.workdir, "shared.sqlite3")
        if store not in ("postgresql", "sqlite"):
            raise ValueError(f"unknown store {store!r}")
        self.store = store
        self.dsn: str | None = None
        self.nodes: list[Node] = []
        self.etcd = None
        self.http = HTTP()
        self.client = ClusterClient(self)

    async def start(self) -> "Cluster":
        if self.store == "postgresql":
            from tests.support.postgres import freshDatabase

            self.dsn = await freshDatabase(self.testcase)
        self.etcd = await startEtcd(self.testcase)
        if self.withNSQ:
            from tests.support.nsqd import NSQD

            self.nsqd = NSQD(theReactor(), extraArgs=["--msg-timeout=10s"])
            await self.nsqd.start()
            self.testcase.addCleanup(self.nsqd.cleanup)
            await self.nsqd.createTopic(TOPIC)
            await self.nsqd.createChannel(TOPIC, "hpchat")
        self.testcase.addCleanup(lambda: defer.ensureDeferred(self.stop()))
        await defer.gatherResults([defer.ensureDeferred(self.addNode().start())
                                   for _ in range(self.size)])
        return self

    def addNode(self) -> Node:
        sections = {
            "chat": {"groups": str(self.groups), "typing_ttl": "2"},
            "cluster": {"etcd": self.etcd.clientURL, "lease_ttl": str(self.leaseTtl),
                        "fence_margin": str(self.fenceMargin),
                        "rebalance_slack": str(self.slack)},
        }
        if self.nsqd is not None:
            sections["nsq"] = {"nsqd_tcp": self.nsqd.tcpAddress, "topic": TOPIC}
        if self.dsn is not None:
            sections["storage"] = {"backend": "postgresql", "dsn": self.dsn}
        for name, values in self.sections.items():
            sections.setdefault(name, {}).update(values)
        node = Node(self.workdir, f"n{len(self.nodes) + 1}", dbPath=self.dbPath,
                    sections=sections)
        self.nodes.append(node)
        return node

    async def stop(self):
        await defer.gatherResults([defer.ensureDeferred(n.stop()) for n in self.nodes],
                                  consumeErrors=True)
        await self.http.close()

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def byId(self, nodeId: str) -> Node:
        return next(n for n in self.nodes if n.nodeId == nodeId)

    def group(self, stream: str) -> int:
        return groupOf(stream, self.groups)

    async def view(self, node: Node | None = None) -> dict:
        node = node or self.live()[0]
        status, _, body = await self.http.request("GET", node.url + "/v1/cluster", timeout=5)
        assert status == 200, (status, body)
        return body

    async def owner(self, stream: str) -> Node:
        """
        The node that owns C{stream}'s group, claiming it first if nobody does.
        """
        kind, _, rest = stream.partition(":")
        if kind == "inbox":
            await self.client.call("GET", "/v1/inbox/events?timeout=0", rest)
        else:
            await self.client.call("GET", f"/v1/conversations/{stream}/events?timeout=0",
                                   rest.split(":")[0])
        group = str(self.group(stream))

        async def known():
            return (await self.view())["groups"].get(group)

        return self.byId(await waitFor(known, 5, f"the owner of {stream} in every view"))

    def logs(self) -> str:
        return "\n".join(f"--- {n.nodeId}\n{n.log()[-4000:]}" for n in self.nodes)


class ClusterClient:
    """
    Requests as a browser client makes them: redirects followed with the token re-sent, a
    503 retried after a short pause, a dead node replaced by another live one.
    """

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.redirects = 0

    async def call(self, method: str, path: str, user: str, body=None, start: Node | None = None,
                   deadline: float = 15.0, maxRedirects: int = 5, requestTimeout: float = 5.0):
        reactor = theReactor()
        give_up = reactor.seconds() + deadline
        node = start or random.choice(self.cluster.live())
        url = node.url + path
        hops = 0
        while True:
            if reactor.seconds() > give_up:
                raise TimeoutError(f"{method} {path} not answered within {deadline}s")
            try:
                status, headers, answer = await self.cluster.http.request(
                    method, url, token(user), body, timeout=requestTimeout)
            except Exception:
                live = self.cluster.live()
                if not live:
                    raise
                url = random.choice(live).url + path
                hops = 0
                await task.deferLater(reactor, 0.05, lambda: None)
                continue
            if status == 307:
                location = headers.getRawHeaders(b"location")[0].decode()
                assert not location.startswith(url.split("/v1/")[0] + "/"), \
                    f"redirect to itself: {url} -> {location}"
                self.redirects += 1
                hops += 1
                assert hops <= maxRedirects, f"redirect loop at {url} -> {location}"
                url = location
                continue
            if status == 503:
                await task.deferLater(reactor, 0.05, lambda: None)
                continue
            return status, headers, answer
