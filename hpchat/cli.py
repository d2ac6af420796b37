# -*- test-case-name: tests.test_cli -*-
"""
The C{hpchat} command:

  - C{hpchat token --config FILE USER [--ttl SECONDS]} prints a bearer token;
  - C{hpchat status --config FILE} checks the node and prints the live nodes and the
    group -> node table;
  - C{hpchat notify --config FILE USER TYPE [--from U] [--data JSON] [--id ID]} hands a
    notification to the node that owns the user's inbox, as other nodes do.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from typing import Any, Awaitable, Callable

from twisted.internet import defer

from hpchat.config import ConfigError, loadConfig

DEFAULT_TOKEN_TTL = 24 * 3600
_TYPE = re.compile(r"[a-z0-9_.-]{1,32}", re.ASCII)


class _WallClock:
    @staticmethod
    def seconds() -> float:
        return time.time()


def _token(args) -> int:
    from hpchat.web.auth import Authenticator

    if args.ttl <= 0:
        print(f"hpchat token: --ttl must be a positive number of seconds (got {args.ttl})",
              file=sys.stderr)
        return 2
    config = loadConfig(args.config)
    try:
        print(Authenticator(config.auth.secret, _WallClock()).mint(args.user, args.ttl))
    except ValueError as e:
        print(f"hpchat token: {e}", file=sys.stderr)
        return 2
    return 0


def _ranges(numbers: list[int]) -> str:
    """
    C{[0, 1, 2, 5, 7, 8]} as C{"0-2, 5, 7-8"}.
    """
    parts: list[str] = []
    start = previous = None
    for n in numbers + [None]:
        if previous is not None and n == previous + 1:
            previous = n
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = n
    return ", ".join(parts)


class StatusProblem(Exception):
    """
    The node of the config is unreachable, not ready or not registered: C{str()} is one
    line, the status text so far is C{text}.
    """

    def __init__(self, message: str, text: str = ""):
        super().__init__(message)
        self.text = text


async def _nodeHealth(reactor, url: str, timeout: float = 5.0) -> str:
    """
    C{"ready"} if the node at C{url} answers C{/readyz} with 200; raise L{StatusProblem}
    if it cannot be reached or is not ready.
    """
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool, connectTimeout=timeout))
    try:
        response = await client.get(url + "/readyz", timeout=timeout)
        body = await treq.content(response)
    except Exception as e:
        raise StatusProblem(f"node at {url} is not reachable: "
                            f"{e.__class__.__name__}: {e}") from None
    finally:
        await pool.closeCachedConnections()
    if response.code == 200:
        return "ready"
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"answered {response.code}"
    raise StatusProblem(f"node at {url} is {message}")


async def clusterStatus(reactor, config) -> str:
    """
    The node of C{config} and, in a cluster, the live nodes and group owners as etcd has
    them, as text; raises L{StatusProblem} when that node is unreachable, not ready (its
    C{/readyz}) or, in a cluster, not registered.
    """
    from hpchat.cluster.etcd import EtcdClient
    from hpchat.cluster.ownership import ClusterKeys, readCluster

    if config.cluster is None:
        health = await _nodeHealth(reactor, config.node.advertise_url)
        return (f"single node {config.node.id} at {config.node.advertise_url} is {health}, "
                f"serving all {config.chat.groups} groups (no [cluster] in {config.path})\n")
    keys = ClusterKeys(config.cluster.prefix)
    client = EtcdClient(reactor, config.cluster.etcd, timeout=5.0)
    try:
        result = await client.range(keys.prefix, prefix=True)
    except Exception as e:
        raise StatusProblem(f"cannot read the cluster from etcd {config.cluster.etcd}: "
                            f"{e.__class__.__name__}: {e}") from None
    finally:
        await client.close()
    nodes, owners = readCluster(keys, result.kvs)
    lines = [f"etcd {config.cluster.etcd} revision {result.revision}",
             f"nodes ({len(nodes)}):"]
    for nodeId, info in sorted(nodes.items()):
        count = sum(1 for o in owners.values() if o.node == nodeId)
        lines.append(f"  {nodeId:<20} {info.url:<32} lease {info.lease:x}  groups {count}")
    lines.append(f"groups ({len(owners)} of {config.chat.groups} owned):")
    unowned = []
    for group in range(config.chat.groups):
        owner = owners.get(group)
        if owner is None:
            unowned.append(group)
        else:
            dead = "" if owner.node in nodes else "  (node not registered)"
            lines.append(f"  {group:>4}  {owner.node}  token {owner.token}{dead}")
    if unowned:
        lines.append(f"  {len(unowned)} groups unowned ({_ranges(unowned)})")
    text = "\n".join(lines) + "\n"
    if config.node.id not in nodes:
        raise StatusProblem(f"node {config.node.id} of {config.path} is not registered in "
                            f"etcd (not running, or its lease expired)", text)
    try:
        health = await _nodeHealth(reactor, config.node.advertise_url)
    except StatusProblem as e:
        raise StatusProblem(str(e), text) from None
    return text + f"node {config.node.id} at {config.node.advertise_url} is {health}\n"


def _react(main: Callable[[Any], Awaitable[int]]) -> int:
    """
    Run C{main(reactor)} in a reactor of its own; its result is the exit status.
    """
    from twisted.internet import task

    outcome = {"code": 1}

    async def run(reactor):
        outcome["code"] = await main(reactor)

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    return outcome["code"]


def _status(args) -> int:
    config = loadConfig(args.config)

    async def run(reactor) -> int:
        try:
            sys.stdout.write(await clusterStatus(reactor, config))
        except StatusProblem as e:
            sys.stdout.write(e.text)
            print(f"hpchat status: {e}", file=sys.stderr)
            return 1
        return 0

    return _react(run)


class NotifyError(Exception):
    pass


def _notification(args):
    """
    The L{Notification} the arguments describe, or raise L{NotifyError}.
    """
    from hpchat.notify import BadNotification, parseNotification
    from hpchat.streamids import isUserId

    if not isUserId(args.user):
        raise NotifyError(f"USER must match [A-Za-z0-9_-]{{1,64}} (got {args.user!r})")
    if _TYPE.fullmatch(args.type) is None:
        raise NotifyError(f"TYPE must match [a-z0-9_.-]{{1,32}} (got {args.type!r})")
    if args.sender is not None and not isUserId(args.sender):
        raise NotifyError(f"--from must match [A-Za-z0-9_-]{{1,64}} (got {args.sender!r})")

    def noConstants(name: str):
        raise ValueError(f"{name} is not JSON")

    try:
        data = json.loads(args.data, parse_constant=noConstants)
    except ValueError as e:
        raise NotifyError(f"--data is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise NotifyError("--data must be a JSON object")
    nid = args.id if args.id is not None else f"cli.{uuid.uuid4().hex}"
    body = json.dumps({"id": nid, "user": args.user, "type": args.type, "from": args.sender,
                       "data": data}, separators=(",", ":"), ensure_ascii=False)
    try:
        return parseNotification(body.encode("utf-8"))
    except BadNotification as e:
        raise NotifyError(str(e)) from None


def _notify(args) -> int:
    from hpchat.web.internal import DeliveryFailed, InternalAuth, InternalClient

    try:
        notification = _notification(args)
    except NotifyError as e:
        print(f"hpchat notify: {e}", file=sys.stderr)
        return 2
    config = loadConfig(args.config)

    async def run(reactor) -> int:
        client = InternalClient(InternalAuth(config.auth.secret, reactor), config.node.id,
                                reactor, timeout=args.timeout)
        try:
            answer = await client.deliver(config.node.advertise_url, notification)
        except DeliveryFailed as e:
            print(f"hpchat notify: not delivered: {e}", file=sys.stderr)
            return 1
        finally:
            await client.close()
        print(json.dumps(answer.get("event"), ensure_ascii=False, separators=(",", ":")))
        if not answer.get("created", True):
            print(f"hpchat notify: {notification.id} was delivered before; this is the stored "
                  f"event", file=sys.stderr)
        return 0

    return _react(run)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hpchat", description="hpchat command-line tools")
    commands = top.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a bearer token for a user")
    token.add_argument("--config", required=True, help="the node's ini file")
    token.add_argument("--ttl", type=int, default=DEFAULT_TOKEN_TTL,
                       help="lifetime in seconds, more than 0 (default: %(default)s, one day)")
    token.add_argument("user", help="the user id (the token's sub)")
    token.set_defaults(run=_token)
    status = commands.add_parser(
        "status", help="check the node; print the cluster's nodes and group owners",
        description="Exits 1 if the node of the config cannot be reached, is not ready or "
                    "(in a cluster) is not registered in etcd.")
    status.add_argument("--config", required=True, help="the node's ini file")
    status.set_defaults(run=_status)
    notify = commands.add_parser(
        "notify", help="hand a notification (flirt, visit, ...) to the owner of an inbox",
        description="Delivers a notification as other nodes do (POST "
                    "/internal/v1/notifications with a node token, following redirects to "
                    "the owner of the user's inbox) and prints the stored inbox event.")
    notify.add_argument("--config", required=True, help="the node's ini file (its node is "
                                                         "called, and its secret signs)")
    notify.add_argument("user", metavar="USER", help="the user whose inbox gets it")
    notify.add_argument("type", metavar="TYPE",
                        help="the notification type, [a-z0-9_.-]{1,32} (flirt, visit)")
    notify.add_argument("--from", dest="sender", default=None, help="the user it is from")
    notify.add_argument("--data", default="{}", help="a JSON object (default: {})")
    notify.add_argument("--id", default=None,
                        help="its id, 1-64 visible ASCII characters, the same id is stored once "
                             "(default: a new unique id)")
    notify.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the node (default: %(default)s)")
    notify.set_defaults(run=_notify)
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
