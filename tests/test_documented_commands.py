"""
The commands README.md documents, run as written: the curl walk-through against a real node
(its URL and config file put in for the README's http://127.0.0.1:8080 and etc/hpchat.ini),
the config-error examples, and the Makefile targets it names (make run with Ctrl-C in a
terminal; make bench and make dist as dry runs, one bench script through BENCH_PY).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys

from twisted.internet import defer, protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.support.node import Node
from tests.support.process import freePort, theReactor, waitFor
from tests.support.trial import asyncTest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
BIN = os.path.dirname(sys.executable)
README_URL = "http://127.0.0.1:8080"
README_CONFIG = "etc/hpchat.ini"


def readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def codeBlock(after: str, fence: str = "```") -> str:
    """
    The first fenced block of README.md after the text C{after}.
    """
    text = readme()
    start = text.index(fence, text.index(after))
    start = text.index("\n", start) + 1
    return text[start:text.index("```", start)]


def expectedOutputs(script: str) -> list[str]:
    """
    The outputs the README shows as a comment right below a command.
    """
    lines = script.splitlines()
    return [line[2:] for previous, line in zip(lines, lines[1:])
            if line.startswith("# ") and previous.strip() and not previous.startswith("#")]


def outputPattern(shown: str) -> re.Pattern:
    """
    A shown output as a pattern: the README writes "…" for what differs from run to run.
    """
    return re.compile(".*?".join(re.escape(part) for part in shown.split("…")))


def withoutMakeFlags() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


async def make(*args: str) -> tuple[int, str, str]:
    out, err, code = await getProcessOutputAndValue(
        "make", ["-C", REPO, *args], env=withoutMakeFlags(), reactor=theReactor())
    return code, out.decode(), err.decode()


class WalkThroughTests(unittest.TestCase):
    timeout = 90

    def setUp(self):
        if shutil.which("curl") is None or shutil.which("bash") is None:
            raise unittest.SkipTest("the walk-through needs curl and bash")

    @asyncTest
    async def test_curlWalkThrough(self):
        """
        The README's curl walk-through, run with bash against a node like the one of
        `make run` (node-1, 64 groups), prints what the README shows below its commands.
        """
        script = codeBlock("## A walk-through with curl", "```sh")
        for written in (README_URL, README_CONFIG, ".venv/bin/hpchat"):
            self.assertIn(written, script)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, "node-1", sections={"chat": {"groups": "64"}})
        self.addCleanup(lambda: defer.ensureDeferred(node.stop()))
        await node.start()
        ours = (script.replace(README_URL, node.url)
                .replace(README_CONFIG, node.configPath)
                .replace(".venv/bin/hpchat", os.path.join(BIN, "hpchat")))
        out, err, code = await getProcessOutputAndValue(
            "bash", ["-c", "set -eo pipefail\n" + ours + "\nwait\n"], env=dict(os.environ),
            path=workdir, reactor=theReactor())
        out, err = out.decode(), err.decode()
        self.assertEqual(code, 0, err)
        shown = [o.replace(README_URL, node.url).replace(README_CONFIG, node.configPath)
                 for o in expectedOutputs(script)]
        self.assertEqual(len(shown), 7, shown)
        for output in shown:
            self.assertRegex(out, outputPattern(output), output)
        # Bob's long-poll (in the background) got the message (as did the send, the history
        # and the conversation list), and his inbox both notifications.
        self.assertEqual(out.count('"text":"hi bob"'), 4, out)
        self.assertRegex(out, r'"events":\[\{"seq":1,[^]]*"type":"message".*?'
                              r'\{"seq":2,[^]]*"type":"flirt","from":"alice"')
        self.assertIn('{"status":"ok","node":"node-1"}', out)
        self.assertIn("hpchat_http_requests_total", out)


class ConfigErrorExampleTests(unittest.TestCase):
    @asyncTest
    async def test_configErrorExamples(self):
        """
        The README's config-error examples print the line it shows, alone, with exit
        status 2: the shipped config with [chat] groups = 0, and a missing config file.
        """
        block = codeBlock("A missing or invalid config stops startup")
        lines = block.splitlines()
        examples = [(line[2:], lines[i + 1]) for i, line in enumerate(lines)
                    if line.startswith("$ ")]
        self.assertEqual(len(examples), 2, block)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(workdir, "etc"))
        with open(os.path.join(REPO, "etc", "hpchat.ini")) as f:
            shipped = f.read()
        self.assertIn("\ngroups = 64\n", shipped)
        with open(os.path.join(workdir, README_CONFIG), "w") as f:
            f.write(shipped.replace("\ngroups = 64\n", "\ngroups = 0\n"))
        for command, shown in examples:
            words = command.split()
            words[0] = os.path.join(BIN, os.path.basename(words[0]))
            out, err, code = await getProcessOutputAndValue(
                words[0], words[1:], env=dict(os.environ), path=workdir,
                reactor=theReactor())
            self.assertEqual((code, out, err.decode()), (2, b"", shown + "\n"), command)


class MakeRunProtocol(protocol.ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.ended: defer.Deferred = defer.Deferred()

    def childDataReceived(self, fd, data):
        self.output += data

    def processEnded(self, reason):
        self.ended.callback(reason.value)


class MakefileTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        if shutil.which("make") is None:
            raise unittest.SkipTest("make is not installed")

    def venvLike(self) -> str:
        """
        A virtualenv folder for make whose bin/ is this interpreter's and whose runtime is
        marked as installed, so that make runs the node without setting anything up.
        """
        venv = os.path.abspath(self.mktemp())
        os.makedirs(venv)
        os.symlink(BIN, os.path.join(venv, "bin"))
        with open(os.path.join(venv, ".runtime"), "w"):
            pass
        return venv

    @asyncTest
    async def test_ctrlCEndsMakeRunCleanly(self):
        """
        make run CONFIG=FILE, in a terminal, starts the node on FILE, which logs its ready
        line; Ctrl-C there stops the node, and make ends with status 0 and no error.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, "try-1", port=freePort())
        run = MakeRunProtocol()
        process = theReactor().spawnProcess(
            run, shutil.which("make"),
            ["make", "-C", REPO, "run", f"VENV={self.venvLike()}", f"CONFIG={node.configPath}"],
            env=withoutMakeFlags(), usePTY=True)

        def stopIfRunning():
            if not run.ended.called:
                # Hanging up the terminal sends SIGHUP to the node (the foreground group).
                process.loseConnection()
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return run.ended
        self.addCleanup(stopIfRunning)

        await waitFor(lambda: b"hpchat ready at" in run.output or run.ended.called, 30,
                      "the node's ready line")
        self.assertIn(f"hpchat ready at {node.url} (store: sqlite {node.dbPath}, mode: single "
                      f"node, nsq: off)".encode(), run.output)
        process.write(b"\x03")
        ended = await run.ended
        output = run.output.decode(errors="replace")
        self.assertEqual(getattr(ended, "exitCode", None), 0, output)
        self.assertIn("Received SIGINT, shutting down.", output)
        self.assertIn("stopped (Ctrl-C)", output)
        self.assertNotIn("make: ***", output)

    @asyncTest
    async def test_runAndTestVirtualenvs(self):
        """
        make run sets up the runtime only (no test extra) and uses CONFIG, etc/hpchat.ini by
        default; make test adds the test extra.
        """
        venv = os.path.abspath(self.mktemp())
        code, out, err = await make("-n", "run", f"VENV={venv}")
        self.assertEqual(code, 0, err)
        self.assertIn(f"{venv}/bin/pip install -q -e .\n", out)
        self.assertNotIn("[test]", out)
        self.assertIn(f"{venv}/bin/twistd -n --pidfile= hpchat --config etc/hpchat.ini", out)
        code, out, _ = await make("-n", "run", f"VENV={venv}", "CONFIG=/srv/x.ini")
        self.assertIn("hpchat --config /srv/x.ini", out)
        code, out, err = await make("-n", "test", f"VENV={venv}")
        self.assertEqual(code, 0, err)
        self.assertIn(f"{venv}/bin/pip install -q -e '.[test]'", out)

    @asyncTest
    async def test_benchWithItsDefaults(self):
        """
        make bench runs its scripts with the virtualenv's python (BENCH_PY); one of them,
        through that BENCH_PY, starts and answers --help from the repository.
        """
        venv = sys.prefix
        code, out, err = await make("-n", "bench", f"VENV={venv}")
        self.assertEqual(code, 0, err)
        scripts = re.findall(r"^\s*(\S+) (bench/\w+\.py)", out, re.MULTILINE)
        self.assertEqual({s for _, s in scripts},
                         {"bench/lg_node.py", "bench/lg_nchan.py", "bench/notify_latency.py"})
        self.assertEqual({python for python, _ in scripts}, {f"{venv}/bin/python"})
        out, err, code = await getProcessOutputAndValue(
            f"{venv}/bin/python", ["bench/notify_latency.py", "--help"],
            env=dict(os.environ), path=REPO, reactor=theReactor())
        self.assertEqual(code, 0, err)
        self.assertIn(b"usage: notify_latency.py", out)

    @asyncTest
    async def test_dist(self):
        """
        make dist builds an sdist and a wheel into dist/ with `build`.
        """
        code, out, err = await make("-n", "dist", f"VENV={os.path.abspath(self.mktemp())}")
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"/bin/python -m build --outdir dist \.\n")
