#!/usr/bin/env python3
"""
The load generator against a real cluster on this machine: one etcd and N twistd nodes sharing
one SQLite file (the test fixtures of tests/support/cluster.py), every node's URL given to
loadgen.py as an entry node (it follows the 307s to each stream's owner).

  python bench/cluster_load.py --nodes 2 -- -c 20000 -r 1000 --duration 20

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


async def main(reactor, args, rest):
    lg_proc.raiseFdLimit()  # the nodes inherit it
    scope = Scope()
    code = 1
    try:
        cluster = Cluster(scope, size=args.nodes, groups=args.groups, leaseTtl=args.lease_ttl)
        await cluster.start()
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
    args = parser.parse_args(own)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args, rest)))
