"""
The type checker and the linter over the tree, as the suite's own tests: C{mypy hpchat} (its
configuration in setup.cfg) and C{ruff check hpchat tests bench} (pyproject.toml) must find
nothing.

Both run as child processes of the reactor, from the virtualenv of the interpreter running
the tests (the C{[test]} extra pins them); the tests skip only when they are not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys

from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.support.process import theReactor
from tests.support.trial import asyncTest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A cold mypy run takes a few seconds; this bounds a hung or starved one.
TIMEOUT = 300.0

# "path:line: error: message  [code]" (mypy), "path:line:col: CODE message" (ruff concise).
_MYPY_FINDING = re.compile(r"^(?P<path>[^\s:]+\.py):\d+(?::\d+)?: error: ")
_RUFF_FINDING = re.compile(r"^(?P<path>[^\s:]+\.py):\d+:\d+: [A-Z]+[0-9]+ ")


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output: list[bytes] = []
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output.append(data)

    def errReceived(self, data: bytes) -> None:
        self.output.append(data)

    def processEnded(self, reason: Failure) -> None:
        exitCode = reason.value.exitCode if isinstance(reason.value, error.ProcessTerminated) \
            else 0
        self.ended.callback(exitCode)


async def run(*args: str, timeout: float = TIMEOUT) -> tuple[int | None, str]:
    """
    Run C{python -m args} of this interpreter in the repository; its exit code (None when
    it was killed) and its output (stdout and stderr together).
    """
    reactor = theReactor()
    collect = _Collect()
    process = reactor.spawnProcess(collect, sys.executable, [sys.executable, "-m", *args],
                                   env=os.environ.copy(), path=REPO)
    timedOut: list[bool] = []

    def kill() -> None:
        timedOut.append(True)
        try:
            process.signalProcess(signal.SIGKILL)
        except error.ProcessExitedAlready:
            pass

    killer = reactor.callLater(timeout, kill)
    code = await collect.ended
    if killer.active():
        killer.cancel()
    output = b"".join(collect.output).decode("utf-8", "replace")
    if timedOut:
        raise TimeoutError(f"{' '.join(args)} did not end in {timeout}s:\n{output}")
    return code, output


def findings(output: str, pattern: re.Pattern[str]) -> dict[str, list[str]]:
    """
    The findings in a tool's C{output}, by file (relative to the repository).
    """
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        match = pattern.match(line)
        if match is not None:
            path = os.path.relpath(os.path.join(REPO, match.group("path")), REPO)
            found.setdefault(path, []).append(line)
    return found


def requireModules(*names: str) -> None:
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise unittest.SkipTest(f"not installed: {', '.join(missing)} (pip install -e '.[test]')")


async def mypyFindings() -> dict[str, list[str]]:
    # mypy_zope: the plugin setup.cfg names; mypy cannot check the tree without it.
    requireModules("mypy", "mypy_zope")
    code, output = await run("mypy", "hpchat")
    found = findings(output, _MYPY_FINDING)
    # 0: clean; 1: findings, all of them in lines we parsed; anything else (2: a crash or a
    # bad configuration, or an error line we could not attribute to a file) is a failure.
    if code not in (0, 1) or (code == 1 and not found) or "unused section" in output:
        raise AssertionError(f"mypy hpchat ended with {code}:\n{output}")
    return found


async def ruffFindings() -> dict[str, list[str]]:
    requireModules("ruff")
    code, output = await run("ruff", "check", "--output-format", "concise",
                             "hpchat", "tests", "bench")
    found = findings(output, _RUFF_FINDING)
    if code not in (0, 1) or (code == 1 and not found):
        raise AssertionError(f"ruff check ended with {code}:\n{output}")
    return found


def report(tool: str, found: dict[str, list[str]]) -> str:
    lines = [line for path in sorted(found) for line in found[path]]
    return f"{tool}: {len(lines)} findings in {len(found)} files:\n" + "\n".join(lines)


class TypeCheckTests(unittest.TestCase):
    """
    C{mypy hpchat} finds nothing.
    """

    timeout = TIMEOUT + 30

    @asyncTest
    async def test_clean(self) -> None:
        found = await mypyFindings()
        if found:
            self.fail(report("mypy hpchat", found))


class LintTests(unittest.TestCase):
    """
    C{ruff check hpchat tests bench} finds nothing.
    """

    timeout = TIMEOUT + 30

    @asyncTest
    async def test_clean(self) -> None:
        found = await ruffFindings()
        if found:
            self.fail(report("ruff check hpchat tests bench", found))


class ToolsFindTests(unittest.TestCase):
    """
    The runs and the parsing above see a finding where there is one.
    """

    timeout = TIMEOUT + 30

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.bad = os.path.join(self.folder, "bad.py")
        self.relative = os.path.relpath(self.bad, REPO)
        with open(self.bad, "w", encoding="utf-8") as f:
            f.write("import os\n\n\ndef f() -> int:\n    return 'not an int'\n")

    @asyncTest
    async def test_mypy(self) -> None:
        requireModules("mypy", "mypy_zope")
        code, output = await run("mypy", "--config-file", os.path.join(REPO, "setup.cfg"),
                                 "--cache-dir", os.path.join(self.folder, "cache"), self.bad)
        self.assertEqual(code, 1, output)
        found = findings(output, _MYPY_FINDING)
        self.assertEqual(list(found), [self.relative], output)
        self.assertIn("[return-value]", found[self.relative][0])

    @asyncTest
    async def test_ruff(self) -> None:
        requireModules("ruff")
        code, output = await run("ruff", "check", "--output-format", "concise", "--config",
                                 os.path.join(REPO, "pyproject.toml"), self.bad)
        self.assertEqual(code, 1, output)
        found = findings(output, _RUFF_FINDING)
        self.assertEqual(list(found), [self.relative], output)
        self.assertIn("F401", found[self.relative][0])
