"""
The hostile-input suite at scale: C{--attacks 60000 --seed N --concurrency K} raw-socket
attacks (tests/web/hostile.py) against a node this starts (single node, SQLite, short head,
body and idle timeouts) or against C{--url} of a running one, which must then use the secret
of C{--secret} and the limits given here. Prints the counts per category and the verdict;
exits 1 on any violation: a wrong answer, a stored smuggled message, a traceback in the
node's log (when started here), or a node no longer serving afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jwt  # noqa: E402

from tests.web import hostile_judge as judge  # noqa: E402
from tests.web.hostile import Context, build, categories  # noqa: E402

SECRET = "test-secret-0123456789abcdef-0123456789"
LIMITS = {"head_timeout": "1.5", "body_timeout": "5", "idle_timeout": "3",
          "sends_per_second": "1000000", "sends_burst": "1000000",
          "typing_per_second": "1000000", "typing_burst": "1000000",
          "max_polls_per_user": "100000"}
USERS = ("alice", "bob", "carol", "dave")


def context(host: bytes, secret: str, limits: dict[str, str]) -> Context:
    exp = int(time.time()) + 24 * 3600
    tokens = {u: jwt.encode({"sub": u, "exp": exp}, secret, algorithm="HS256") for u in USERS}
    return Context(host=host, tokens=tokens, secret=secret.encode(),
                   head_timeout=float(limits["head_timeout"]),
                   body_timeout=float(limits["body_timeout"]),
                   idle_timeout=float(limits["idle_timeout"]),
                   max_poll_timeout=float(limits.get("max_poll_timeout", 5)))


def nodeSections() -> dict[str, dict[str, str]]:
    return {"limits": dict(LIMITS), "http": {"cors_origins": "*"},
            "chat": {"max_poll_timeout": "5"}}


async def attack(host: str, port: int, ctx: Context, args) -> int:
    await judge.seed(host, port, ctx)
    before = await judge.snapshot(host, port, ctx)
    only = set(args.only.split(",")) if args.only else None
    attacks = build(ctx, args.attacks, args.seed, only, args.slowloris)
    print(f"{len(attacks)} attacks, seed {args.seed}, concurrency {args.concurrency}",
          flush=True)
    started = time.monotonic()

    def progress(done, total):
        if done % 5000 == 0:
            print(f"  {done}/{total} in {time.monotonic() - started:.0f} s", flush=True)

    report = await judge.runAll(host, port, attacks, args.concurrency, ctx.host, progress,
                                secrets=(ctx.secret,))
    elapsed = time.monotonic() - started
    after = await judge.snapshot(host, port, ctx)
    problems = judge.stateProblems(before, after) + await judge.healthy(host, port, ctx)
    print(f"\n{'category':<11} {'attacks':>8} {'violations':>11} {'shed':>6}")
    for name, counts in sorted(report.byCategory().items()):
        print(f"{name:<11} {counts['attacks']:>8} {counts['violations']:>11} "
              f"{counts['shed']:>6}")
    print(f"\n{len(attacks)} attacks in {elapsed:.1f} s; {len(report.violations)} violations")

    if report.violations:
        print(report.describe(args.show))
    if args.dump:
        with open(args.dump, "w") as f:
            for out, found in report.violations:
                a = out.attack
                f.write(json.dumps({"index": a.index, "category": a.category, "name": a.name,
                                    "sent": a.data.decode("latin-1"),
                                    "got": out.data.decode("latin-1"),
                                    "problems": found}) + "\n")
        print(f"every violation, as JSON lines (bytes as Latin-1): {args.dump}")
    for problem in problems:
        print("after the run:", problem)
    return len(report.violations) + len(problems)


async def main(args) -> int:
    if args.url:
        url = urlsplit(args.url)
        host, port = url.hostname, url.port or 80
        limits = dict(LIMITS, head_timeout=str(args.head_timeout),
                      body_timeout=str(args.body_timeout), idle_timeout=str(args.idle_timeout),
                      max_poll_timeout=str(args.max_poll_timeout))
        ctx = context(b"%s:%d" % (host.encode(), port), args.secret, limits)
        return await attack(host, port, ctx, args)
    return await _withNode(args)


async def _withNode(args) -> int:
    import subprocess
    import tempfile

    from tests.support.node import Node
    from tests.support.process import freePort

    workdir = tempfile.mkdtemp(prefix="hpchat-hostile-")
    node = Node(workdir, "hostile", sections=nodeSections(), port=freePort())
    log = open(node.logPath, "ab")
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
         "hpchat", "--config", node.configPath], stdout=log, stderr=subprocess.STDOUT,
        cwd=workdir, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log.close()
    try:
        port = node.port
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = await judge.call("127.0.0.1", port, b"GET", b"/readyz", timeout=2)
                if status == 200:
                    break
            except (OSError, asyncio.TimeoutError, IndexError):
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                print(node.log()[-3000:])
                raise SystemExit("the node did not start")
            await asyncio.sleep(0.1)
        ctx = context(b"127.0.0.1:%d" % port, SECRET, LIMITS)
        failures = await attack("127.0.0.1", port, ctx, args)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
    for problem in judge.logProblems(node.log(), ctx):
        failures += 1
        print(problem)
    print(f"node log: {node.logPath}")
    return failures


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attacks", type=int, default=60000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--url", help="a running node (else one is started)")
    p.add_argument("--secret", default=SECRET, help="the [auth] secret of --url")
    p.add_argument("--head-timeout", type=float, default=float(LIMITS["head_timeout"]))
    p.add_argument("--body-timeout", type=float, default=float(LIMITS["body_timeout"]))
    p.add_argument("--idle-timeout", type=float, default=float(LIMITS["idle_timeout"]))
    p.add_argument("--max-poll-timeout", type=float, default=5.0,
                   help="[chat] max_poll_timeout of --url")
    p.add_argument("--only", help="comma-separated categories: " + ",".join(categories()))
    p.add_argument("--slowloris", type=int, default=200,
                   help="connections trickling a head alongside the attacks")
    p.add_argument("--show", type=int, default=40, help="kinds of violation to print")
    p.add_argument("--dump", help="write every violation to this file, one JSON per line")
    return p.parse_args(argv)


def run(argv=None) -> int:
    failures = asyncio.run(main(parse(argv)))
    print("verdict:", "FAIL" if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run())
