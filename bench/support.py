"""
What the benchmarks share: running the test fixtures (real etcd, nsqd and twistd nodes)
outside trial, and small statistics helpers.
"""

from __future__ import annotations

import os
import sys
import tempfile

# The repository first, for hpchat and tests.support. Its twisted/ folder holds only
# twisted/plugins (no __init__.py): an installed Twisted, a regular package, still wins over
# it; without one, `twisted` would be that folder and nothing would work, so say so.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    from twisted.internet import defer, task  # noqa: E402
except ImportError:
    raise SystemExit(f"bench: {sys.executable} has no Twisted; run the benchmarks with the "
                     f"virtualenv's python (make bench uses .venv/bin/python)") from None


class Scope:
    """
    What the fixtures need from a test case: a scratch folder and cleanups.
    """

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="hpchat-bench-")
        self.cleanups = []
        self.n = 0

    def mktemp(self):
        self.n += 1
        return os.path.join(self.base, str(self.n))

    def addCleanup(self, f, *args):
        self.cleanups.append((f, args))

    async def close(self):
        for f, args in reversed(self.cleanups):
            try:
                await defer.maybeDeferred(f, *args)
            except Exception as e:
                print("cleanup:", e, file=sys.stderr)


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


async def temporaryPostgres(cpus: str | None = None):
    """
    A started temporary PostgreSQL server of its own (tests.support.postgres), to be ended
    with its C{cleanup()}; exits when no PostgreSQL server is installed.
    """
    from tests.support.postgres import PostgresProcess, findBinaries

    binaries = findBinaries()
    if binaries is None:
        raise SystemExit("--postgresql: no PostgreSQL server installed "
                         "(apt-get install postgresql)")
    return await PostgresProcess(binaries, cpus=cpus).start()
