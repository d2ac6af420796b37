"""
Memory of open event streams: the RSS of a fresh node (SQLite, one process) with N streams
open (N users, one conversation stream each, N/2 conversations) minus its RSS when idle, next
to the same with N waiting long-polls instead.

    .venv/bin/python bench/sse_memory.py [--streams 1000]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

import support  # noqa: F401  (the repository on the path)
from support import Scope, sleep
from twisted.internet import defer, task
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from tests.support.cluster import token
from tests.support.node import Node
from tests.support.process import waitFor
from tests.support.sse import EventStream, openStream


def rss(pid: int) -> int:
    """
    The resident set of process C{pid}, in bytes.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def users(count: int) -> list[tuple[str, str]]:
    """
    (user, conversation) for C{count} users paired into conversations.
    """
    out = []
    for i in range(count):
        a, b = f"m{i // 2 * 2:05d}", f"m{i // 2 * 2 + 1:05d}"
        out.append((a if i % 2 == 0 else b, f"dm:{a}:{b}"))
    return out


async def settledRSS(reactor, pid: int) -> int:
    # A few samples after the last change, the lowest one.
    samples = []
    for _ in range(5):
        await sleep(reactor, 0.4)
        samples.append(rss(pid))
    return min(samples)


async def measure(reactor, scope: Scope, count: int, kind: str) -> dict:
    workdir = scope.mktemp()
    os.makedirs(workdir)
    node = Node(workdir, "n1", sections={"chat": {"stream_heartbeat": "15",
                                                  "max_poll_timeout": "120"}})
    scope.addCleanup(node.stop)
    await node.start()
    pid = node.process.pid
    pairs = users(count)
    # Warm up the code paths (one of each), then the idle baseline.
    warm = await openStream(f"{node.url}/v1/conversations/dm:w0:w1/stream", token("w0"))
    warm.close()
    await sleep(reactor, 0.5)
    idle = await settledRSS(reactor, pid)
    opened: list = []
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool)
    polls: list[defer.Deferred] = []
    for start in range(0, count, 100):
        batch = pairs[start:start + 100]
        if kind == "sse":
            streams = await defer.gatherResults([defer.ensureDeferred(openStream(
                f"{node.url}/v1/conversations/{cid}/stream", token(user), timeout=30))
                for user, cid in batch])
            assert all(isinstance(s, EventStream) for s in streams), streams
            opened += streams
        else:
            for user, cid in batch:
                d = agent.request(b"GET", f"{node.url}/v1/conversations/{cid}/events"
                                  f"?timeout=110".encode(),
                                  Headers({b"authorization": [f"Bearer {token(user)}".encode()]}))
                d.addErrback(lambda f: None)
                polls.append(d)
    if kind == "sse":
        await waitFor(lambda: all(len(s.records) >= 3 for s in opened), 30, "stream heads")

    async def waiting():
        status, _, body = await node_http.request("GET", node.url + "/metrics")
        for line in body.decode().splitlines():
            if line.startswith("hpchat_waiting_polls "):
                return float(line.split()[1]) >= count
        return False

    from tests.support.node import HTTP

    node_http = HTTP()
    await waitFor(waiting, 60, f"{count} waiting")
    busy = await settledRSS(reactor, pid)
    await node_http.close()
    for s in opened:
        s.close()
    for d in polls:
        d.cancel()
    await node.stop()
    return {"kind": kind, "count": count, "idle_rss": idle, "busy_rss": busy,
            "per_stream_bytes": (busy - idle) / count}


async def main(reactor, args) -> None:
    scope = Scope()
    try:
        for kind in ("sse", "poll"):
            result = await measure(reactor, scope, args.streams, kind)
            print(f"{kind:4s}: {result['count']} open, "
                  f"idle RSS {result['idle_rss'] / 2**20:.1f} MiB, "
                  f"with them {result['busy_rss'] / 2**20:.1f} MiB: "
                  f"{result['per_stream_bytes'] / 1024:.1f} KiB each", flush=True)
            gc.collect()
    finally:
        await scope.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
    sys.exit(0)
