"""
Cross-node notification latency: published to nsqd -> delivered to a waiting inbox poll.

  python bench/notify_latency.py --rate 1000 --duration 10 --users 200

A 2-node cluster (etcd, one nsqd, two twistd nodes sharing one SQLite file) on loopback.
C{--users} users keep an inbox long-poll open through a random node (redirects followed);
notifications for random users are published over NSQ's TCP protocol (our producer, as
another service of the site would) at C{--rate} per second. Each carries its publish time;
latency is measured when the poll answer holding it arrives. About half of the
notifications are consumed by the node that does not own the inbox and are handed over.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import uuid

from support import Scope, percentile, sleep  # noqa: E402  (also puts the repo on sys.path)
from twisted.internet import defer, task  # noqa: E402

from hpchat.nsq.client import NSQProducer  # noqa: E402
from tests.support.cluster import TOPIC, Cluster  # noqa: E402


async def main(reactor, args):
    scope = Scope()
    try:
        cluster = Cluster(scope, size=2, groups=64, nsq=True)
        await cluster.start()
        users = [f"user{i:04d}" for i in range(args.users)]
        latencies: list[float] = []
        expected: set[str] = set()
        state = {"run": True}

        async def poller(user):
            start = random.choice(cluster.nodes)
            status, _, body = await cluster.client.call("GET", "/v1/inbox/events?timeout=0",
                                                        user, start=start)
            after = body["last_seq"]
            while state["run"]:
                status, _, body = await cluster.client.call(
                    "GET", f"/v1/inbox/events?after={after}&timeout=5", user, start=start,
                    deadline=30, requestTimeout=10)
                now = reactor.seconds()
                for event in body["events"]:
                    if event["id"] in expected:
                        expected.discard(event["id"])
                        latencies.append(now - event["data"]["sent"])
                after = body["last_seq"]

        pollers = [defer.ensureDeferred(poller(u)) for u in users]
        await sleep(reactor, 2.0)

        producer = NSQProducer.fromAddress(reactor, cluster.nsqd.tcpAddress)
        producer.startService()
        await producer.whenReady()
        published = 0
        began = reactor.seconds()
        interval = 1.0 / args.rate
        tick = 0.01
        perTick = max(1, int(round(args.rate * tick)))
        while reactor.seconds() - began < args.duration:
            for _ in range(perTick):
                nid = uuid.uuid4().hex
                expected.add(nid)
                body = json.dumps({"id": nid, "user": random.choice(users), "type": "visit",
                                   "from": "bench", "data": {"sent": reactor.seconds()}})
                producer.publish(TOPIC, body.encode()).addErrback(lambda f: None)
                published += 1
            await sleep(reactor, max(0.0, began + published * interval - reactor.seconds()))
        elapsed = reactor.seconds() - began
        await sleep(reactor, 3.0)
        state["run"] = False
        await producer.stopService()
        await defer.gatherResults(pollers, consumeErrors=True)
        ms = [x * 1000 for x in latencies]
        print(f"{args.users} waiting inbox polls over 2 nodes; {published} notifications "
              f"published in {elapsed:.1f}s ({published / elapsed:.0f}/s)")
        print(f"delivered {len(latencies)}, missing {len(expected)}")
        print(f"latency publish -> poll answer: p50 {statistics.median(ms):.1f} ms, "
              f"p99 {percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms")
    finally:
        await scope.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
