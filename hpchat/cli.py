# -*- test-case-name: tests.test_cli -*-
"""
The C{hpchat} command:

  - C{hpchat token --config FILE USER [--ttl SECONDS]} prints a bearer token;
  - C{hpchat status --config FILE} prints the live nodes and the group -> node table.
"""

from __future__ import annotations

import argparse
import sys
import time

from twisted.internet import defer

from hpchat.config import ConfigError, loadConfig


class _WallClock:
    @staticmethod
    def seconds() -> float:
        return time.time()


def _token(args) -> int:
    from hpchat.web.auth import Authenticator

    config = loadConfig(args.config)
    try:
        print(Authenticator(config.auth.secret, _WallClock()).mint(args.user, args.ttl))
    except ValueError as e:
        print(f"hpchat token: {e}", file=sys.stderr)
        return 2
    return 0


async def clusterStatus(reactor, config) -> str:
    """
    The live nodes and group owners as etcd has them, as text.
    """
    from hpchat.cluster.etcd import EtcdClient
    from hpchat.cluster.ownership import ClusterKeys, readCluster

    if config.cluster is None:
        return (f"single node {config.node.id} at {config.node.advertise_url} serves all "
                f"{config.chat.groups} groups (no [cluster] in {config.path})\n")
    keys = ClusterKeys(config.cluster.prefix)
    client = EtcdClient(reactor, config.cluster.etcd, timeout=5.0)
    try:
        result = await client.range(keys.prefix, prefix=True)
    finally:
        await client.close()
    nodes, owners = readCluster(keys, result.kvs)
    lines = [f"etcd {config.cluster.etcd} revision {result.revision}",
             f"nodes ({len(nodes)}):"]
    for nodeId, info in sorted(nodes.items()):
        count = sum(1 for o in owners.values() if o.node == nodeId)
        lines.append(f"  {nodeId:<20} {info.url:<32} lease {info.lease:x}  groups {count}")
    lines.append(f"groups ({len(owners)} of {config.chat.groups} owned):")
    for group in range(config.chat.groups):
        owner = owners.get(group)
        if owner is None:
            lines.append(f"  {group:>4}  -")
        else:
            dead = "" if owner.node in nodes else "  (node not registered)"
            lines.append(f"  {group:>4}  {owner.node}  token {owner.token}{dead}")
    return "\n".join(lines) + "\n"


def _status(args) -> int:
    from twisted.internet import task

    config = loadConfig(args.config)
    outcome = {"code": 0}

    async def run(reactor):
        try:
            sys.stdout.write(await clusterStatus(reactor, config))
        except Exception as e:
            print(f"hpchat status: cannot read the cluster from etcd: {e}", file=sys.stderr)
            outcome["code"] = 1

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    return outcome["code"]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hpchat", description="hpchat command-line tools")
    commands = top.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a bearer token for a user")
    token.add_argument("--config", required=True, help="the node's ini file")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token.add_argument("user", help="the user id (the token's sub)")
    token.set_defaults(run=_token)
    status = commands.add_parser("status", help="print the cluster's nodes and group owners")
    status.add_argument("--config", required=True, help="the node's ini file")
    status.set_defaults(run=_status)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"hpchat: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
