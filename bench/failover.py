"""
Failover and redirect benchmark on a real 3-node cluster (etcd + twistd nodes on loopback).

  python bench/failover.py --kills 10 --lease-ttl 5

Failover time: from kill -9 of a conversation's owner, while a sender posts every 20 ms
through the cluster, to the first send acknowledged by another node. The killed node is
restarted before the next round. Redirect cost: median time of a request straight to the owner
versus one to a non-owner that answers 307 and is followed to the owner (a read answered at
once, so that the batch flush interval does not hide the extra hop).
"""

from __future__ import annotations

import argparse
import statistics
import time

from support import Scope, sleep  # noqa: E402  (also puts the repo on sys.path)
from twisted.internet import defer, task  # noqa: E402

from tests.support.cluster import Cluster  # noqa: E402


async def failoverRound(reactor, cluster: Cluster, cid: str, round: int) -> float:
    owner = await cluster.owner(cid)
    acks: list[float] = []
    state = {"run": True}

    async def sender():
        n = 0
        while state["run"]:
            clientId = f"r{round}-{n}"
            await cluster.client.call(
                "POST", f"/v1/conversations/{cid}/messages", "alice",
                {"text": clientId, "client_id": clientId}, deadline=60, requestTimeout=2)
            acks.append(reactor.seconds())
            n += 1
            await sleep(reactor, 0.02)

    running = defer.ensureDeferred(sender())
    await sleep(reactor, 0.5)
    await owner.kill()
    killed = reactor.seconds()
    while not any(t > killed for t in acks):
        await sleep(reactor, 0.005)
    first = min(t for t in acks if t > killed)
    state["run"] = False
    await running
    await owner.start()
    return first - killed


async def redirectCost(reactor, cluster: Cluster, cid: str, n: int) -> tuple[float, float]:
    owner = await cluster.owner(cid)
    other = next(node for node in cluster.nodes if node is not owner)

    async def timed(start):
        # A read answered at once, so that the batch flush does not hide the extra hop.
        began = time.perf_counter()
        status, _, _ = await cluster.client.call(
            "GET", f"/v1/conversations/{cid}/events?timeout=0", "bob", start=start)
        assert status == 200, status
        return time.perf_counter() - began

    direct, redirected = [], []
    for _ in range(n):
        direct.append(await timed(owner))
        redirected.append(await timed(other))
    return statistics.median(direct), statistics.median(redirected)


async def main(reactor, args):
    scope = Scope()
    try:
        cluster = Cluster(scope, size=3, groups=64, leaseTtl=args.lease_ttl,
                          fenceMargin=args.fence_margin)
        await cluster.start()
        direct, redirected = await redirectCost(reactor, cluster, "dm:bob:carol", args.sends)
        times = []
        for i in range(args.kills):
            took = await failoverRound(reactor, cluster, f"dm:alice:z{i:03d}", i)
            times.append(took)
            print(f"kill {i + 1}: first acknowledged send on the new owner after {took:.2f}s",
                  flush=True)
        print()
        print(f"lease_ttl {args.lease_ttl}s, fence margin {args.fence_margin}s, "
              f"{args.kills} kills")
        print(f"failover: median {statistics.median(times):.2f}s, max {max(times):.2f}s, "
              f"min {min(times):.2f}s")
        print(f"request latency, median of {args.sends}: direct {direct * 1000:.2f} ms, "
              f"through one redirect {redirected * 1000:.2f} ms "
              f"(+{(redirected - direct) * 1000:.2f} ms)")
    finally:
        await scope.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease-ttl", type=int, default=5)
    parser.add_argument("--fence-margin", type=float, default=1.0)
    parser.add_argument("--sends", type=int, default=300)
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
