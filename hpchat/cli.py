# -*- test-case-name: tests.test_cli -*-
"""
The C{hpchat} command: C{hpchat token --config FILE USER [--ttl SECONDS]} prints a bearer token.
"""

from __future__ import annotations

import argparse
import sys
import time

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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hpchat", description="hpchat command-line tools")
    commands = top.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a bearer token for a user")
    token.add_argument("--config", required=True, help="the node's ini file")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token.add_argument("user", help="the user id (the token's sub)")
    token.set_defaults(run=_token)
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
