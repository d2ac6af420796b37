#!/usr/bin/env python3
"""
The load generator against a real cluster on this machine: one etcd and N twistd nodes sharing
one PostgreSQL database (the test fixtures of tests/support/cluster.py), every node's URL given to
loadgen.py as an entry node (it follows the 307s to each stream's owner).

  python bench/cluster_load.py --nodes 2 -- -c 20000 -r 1000 --duration 20
  python bench/cluster_load.py --nodes 2 --pin --nsq -- -c 20000 -r 1000 --duration 20

With --pin, node i is pinned to CPU i (modulo the CPUs; every thread of its process, like
`taskset -a -p`), one node per core as etc/systemd/hpchat@.service runs them; the load
generator is not pinned. With --nsq, the nodes share an nsqd for their notifications.
Starts the cluster, runs bench/loadgen.py with `--url` and `--node-pid` for every node and
`--secret` added (plus the given arguments), prints its result, and stops the nodes and etcd.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import lg_proc  # noqa: E402
from support import Scope  # noqa: E402  (also puts the repo on sys.path)
from twisted.internet import defer, task, threads  # noqa: E402

from tests.support.cluster import Cluster  # noqa: E402
from tests.support.node import SECRET  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def pinProcess(pid: int, cpu: int) -> None:
    """
    Pin every thread of process C{pid} to C{cpu} (threads it starts later inherit it).
    """
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})
    print(f"cluster_load: pid {pid} pinned to CPU {cpu}", file=sys.stderr, flush=True)


async def main(reactor, args, rest):
    lg_proc.raiseFdLimit()  # the nodes inherit it
    scope = Scope()
    code = 1
    try:
        cluster = Cluster(scope, size=args.nodes, groups=args.groups, leaseTtl=args.lease_ttl,
                          nsq=args.nsq)
        await cluster.start()
        if args.pin:
            cpus = sorted(os.sched_getaffinity(0))
            for i, node in enumerate(cluster.nodes):
                pinProcess(node.process.pid, cpus[i % len(cpus)])
        command = [sys.executable, os.path.join(HERE, "loadgen.py"), "--secret", SECRET]
        for node in cluster.nodes:
            command += ["--url", node.url, "--node-pid", str(node.process.pid)]
        print(f"cluster_load: {args.nodes} nodes "
              f"{', '.join(f'{n.nodeId} pid {n.process.pid} {n.url}' for n in cluster.nodes)}",
              file=sys.stderr, flush=True)
        code = await threads.deferToThread(subprocess.call, command + rest)
        if code != 0:
            sys.stderr.write(cluster.logs()[-6000:] + "\n")
    finally:
        await scope.close()
        shutil.rmtree(scope.base, ignore_errors=True)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    argv = sys.argv[1:]
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--lease-ttl", type=int, default=10,
                        help="etcd lease TTL of a node (s); generous, the CPUs are busy")
    parser.add_argument("--pin", action="store_true", help="node i on CPU i")
    parser.add_argument("--nsq", action="store_true", help="the nodes share an nsqd")
    args = parser.parse_args(own)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args, rest)))
