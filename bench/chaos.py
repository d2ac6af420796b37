"""
The chaos soak on a real 3-node cluster (etcd, nsqd with --mem-queue-size=0, twistd nodes on
loopback), ending in the checker; prints its JSON summary and exits 1 on any violation.

  python bench/chaos.py --seed 7 --duration 300 --faults kill,stop,term,nsqd,etcd
  python bench/chaos.py --seed 7 --duration 150 --no-nsq     # notifications without NSQ

See docs/reliability.md, "Chaos soak".
"""

from __future__ import annotations

import argparse
import json
import sys

from support import Scope  # noqa: E402  (also puts the repo on sys.path)
from twisted.internet import defer, task  # noqa: E402

from tests.support.chaos import FAULTS, ChaosConfig, ChaosSoak  # noqa: E402


def storage(spec: str) -> dict[str, str] | str | None:
    if not spec:
        return None
    if spec == "sqlite":
        return spec
    return dict(item.split("=", 1) for item in spec.split(",") if item)


async def main(reactor, args) -> None:
    scope = Scope()
    config = ChaosConfig(seed=args.seed, duration=args.duration,
                         faults=tuple(f for f in args.faults.split(",") if f),
                         writers=args.writers, conversations=args.conversations,
                         users=args.users, leaseTtl=args.lease_ttl, lateGrace=args.grace,
                         storage=storage(args.storage), overlap=args.overlap,
                         nsq=not args.no_nsq)
    summary = None
    try:
        soak = ChaosSoak(scope, config, out=lambda line: print(line, file=sys.stderr,
                                                               flush=True))
        summary = await soak.run()
        print(json.dumps(summary, indent=2, default=str), flush=True)
        print(f"node logs: {soak.workdir}", file=sys.stderr)
    finally:
        await scope.close()
    if summary is None or not summary["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=300.0,
                        help="seconds of faults (the last one is undone after it)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated fault kinds among {','.join(FAULTS)}")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--lease-ttl", type=int, default=3)
    parser.add_argument("--overlap", type=int, default=1,
                        help="faults in force at once (on different processes)")
    parser.add_argument("--grace", type=float, default=0.0,
                        help="seconds more to wait for quiescence after the 30 s, to tell "
                             "late notifications from lost ones")
    parser.add_argument("--storage", default="",
                        help="the nodes' [storage] section as key=value,key=value, or "
                             "'sqlite' for one SQLite file shared by the nodes (default: a "
                             "temporary PostgreSQL server)")
    parser.add_argument("--no-nsq", action="store_true",
                        help="no nsqd (and no flirts, no nsqd fault): a message's notification "
                             "is written with it where its inbox is held, else sent by the "
                             "outbox over an internal call")
    args = parser.parse_args()
    if args.no_nsq:
        args.faults = ",".join(f for f in args.faults.split(",") if f != "nsqd")
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
