"""
The wheel: built from the source, installed into a fresh virtualenv with nothing of the
repository on its path, it runs a node as the systemd unit starts it, with the chat page.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.support.node import HTTP
from tests.support.process import freePort, terminate, theReactor, waitFor
from tests.support.trial import asyncTest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(REPO, "etc", "systemd", "hpchat.service")
TEMPLATE = os.path.join(REPO, "etc", "systemd", "hpchat@.service")
# What a checkout holds besides the source: never part of a build.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".build", "_trial_temp*", "build", "dist",
                                    "var", "*.egg-info", "__pycache__", "*.sqlite3*",
                                    "dropin.cache", "results", "screenshots")


def cleanEnvironment(**extra: str) -> dict[str, str]:
    """
    This environment without anything that would put the repository or a state folder in
    front of the installed package.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "STATE_DIRECTORY", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def unitEntries(path: str) -> list[tuple[str, str, str]]:
    """
    The (section, key, value) entries of a unit file, in order (a key may repeat).
    """
    entries, section = [], ""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, sep, value = line.partition("=")
            assert sep and section, f"{path}: not a key=value line in a section: {line!r}"
            entries.append((section, key.strip(), value.strip()))
    return entries


def unitArguments() -> list[str]:
    """
    The twistd arguments of the systemd unit's ExecStart, without the program and its
    --config value.
    """
    with open(UNIT) as f:
        line = next(line for line in f if line.startswith("ExecStart="))
    words = shlex.split(line.partition("=")[2])
    assert words[0].endswith("/twistd"), words
    assert words[-2] == "--config", words
    return words[1:-2]


async def run(executable: str, *args: str, cwd: str | None = None,
              env: dict[str, str] | None = None) -> str:
    out, err, code = await getProcessOutputAndValue(
        executable, list(args), env=env if env is not None else cleanEnvironment(),
        path=cwd, reactor=theReactor())
    if code != 0:
        raise AssertionError(f"{executable} {' '.join(args)} exited {code}:\n"
                             f"{out.decode(errors='replace')[-3000:]}\n"
                             f"{err.decode(errors='replace')[-3000:]}")
    return out.decode()


class WheelTests(unittest.TestCase):
    timeout = 180

    @asyncTest
    async def test_wheelInstallsAndServes(self):
        """
        The wheel holds the package, the twistd plugin (without a twisted/__init__.py that
        would shadow Twisted), the chat page's static files, the hpchat command and the
        license. Installed without dependencies into a new virtualenv that sees only the
        dependencies of this one, from a folder outside the repository: hpchat imports from
        it, `hpchat token` works, and twistd started with the unit's arguments serves
        /healthz, the chat page and its static files, keeps SQLite in $STATE_DIRECTORY and
        logs the ready line as JSON.
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        source = os.path.join(work, "source")
        shutil.copytree(REPO, source, ignore=NOT_SOURCE)
        wheels = os.path.join(work, "wheels")
        await run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "--no-index", "--wheel-dir", wheels, source)
        [wheelName] = os.listdir(wheels)
        wheel = os.path.join(wheels, wheelName)
        self.assertTrue(wheelName.startswith("hpchat-") and wheelName.endswith("-none-any.whl"))
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            entryPoints = next(archive.read(n).decode() for n in names
                               if n.endswith(".dist-info/entry_points.txt"))
        for expected in ("hpchat/__init__.py", "hpchat/tap.py", "hpchat/cli.py",
                         "hpchat/logs.py", "hpchat/storage/sqlite.py",
                         "hpchat/web/static/index.html", "hpchat/web/static/app.js",
                         "hpchat/web/static/style.css", "twisted/plugins/hpchat_plugin.py"):
            self.assertIn(expected, names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertFalse([n for n in names if n.startswith("tests/")])
        # dist-info/licenses/LICENSE with newer setuptools, dist-info/LICENSE with older.
        self.assertTrue([n for n in names if n.endswith("/LICENSE") and ".dist-info/" in n],
                        names)
        self.assertIn("hpchat = hpchat.cli:main", entryPoints)

        venv = os.path.join(work, "venv")
        await run(sys.executable, "-m", "venv", "--without-pip", venv)
        python = os.path.join(venv, "bin", "python")
        sitePackages = (await run(python, "-c", "import sysconfig; "
                                  "print(sysconfig.get_paths()['purelib'])")).strip()
        dependencies = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        with open(os.path.join(sitePackages, "dependencies.pth"), "w") as f:
            f.write("".join(p + "\n" for p in dependencies))
        await run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
                  "--no-deps", "--no-index", wheel)

        outside = os.path.join(work, "elsewhere")
        state = os.path.join(work, "state")
        os.makedirs(outside)
        os.makedirs(state)
        found = (await run(python, "-c", "import hpchat, hpchat.web.operations as api, "
                           "twisted.plugins.hpchat_plugin as plugin; "
                           "print(hpchat.__file__); print(api.STATIC); print(plugin.__file__)",
                           cwd=outside)).split()
        for path in found:
            self.assertTrue(path.startswith(sitePackages + os.sep), (path, sitePackages))

        port = freePort()
        url = f"http://127.0.0.1:{port}"
        config = os.path.join(outside, "hpchat.ini")
        with open(config, "w") as f:
            f.write(f"[node]\nid = wheel-1\nlisten = tcp:{port}:interface=127.0.0.1\n"
                    f"advertise_url = {url}\n[auth]\nsecret = {'s' * 40}\n")
        token = (await run(os.path.join(venv, "bin", "hpchat"), "token", "--config", config,
                           "alice", cwd=outside)).strip()
        self.assertEqual(token.count("."), 2, token)

        logPath = os.path.join(work, "node.log")
        with open(logPath, "wb") as log:
            # The virtualenv has no twistd script of its own (Twisted is not installed in it).
            node = subprocess.Popen(
                [python, "-c", "from twisted.scripts.twistd import run; run()"]
                + unitArguments() + ["--config", config],
                stdout=log, stderr=subprocess.STDOUT, cwd=outside,
                env=cleanEnvironment(STATE_DIRECTORY=state))
        self.addCleanup(lambda: defer.ensureDeferred(terminate(node, 15)))
        http = HTTP(persistent=False)
        self.addCleanup(lambda: defer.ensureDeferred(http.close()))

        def logLines() -> list[str]:
            with open(logPath, errors="replace") as f:
                return f.read().splitlines()

        async def ready():
            if node.poll() is not None:
                raise AssertionError(f"twistd exited {node.returncode}:\n"
                                     + "\n".join(logLines()[-40:]))
            try:
                status, _, _ = await http.request("GET", url + "/readyz", timeout=2)
            except Exception:
                return False
            return status == 200

        await waitFor(ready, 30, "the node installed from the wheel")
        status, _, body = await http.request("GET", url + "/healthz")
        self.assertEqual((status, body["status"]), (200, "ok"))
        for page, static in (("/", "index.html"), ("/static/app.js", "app.js"),
                             ("/static/style.css", "style.css")):
            status, _, body = await http.request("GET", url + page)
            with open(os.path.join(REPO, "hpchat", "web", "static", static), "rb") as f:
                self.assertEqual((status, body if isinstance(body, bytes) else None),
                                 (200, f.read()), page)
        self.assertTrue(os.path.exists(os.path.join(state, "hpchat.sqlite3")))

        async def readyLogged():
            for line in logLines():
                record = json.loads(line)
                if record["message"].startswith("hpchat ready at"):
                    return record
            return None

        record = await waitFor(readyLogged, 10, "the ready line")
        self.assertEqual(record["message"],
                         f"hpchat ready at {url} (store: sqlite {state}/hpchat.sqlite3, "
                         f"mode: single node, nsq: off)")
        self.assertEqual(record["level"], "info")
        # A clean stop: twistd ends by the signal it was stopped with (systemd counts that as
        # a success).
        self.assertIn(await terminate(node, 15), (0, -15))


class TemplateUnitTests(unittest.TestCase):
    """
    etc/systemd/hpchat@.service, one node per core: the instance names the core and the ini.
    """

    def test_execStartPinsTheNode(self):
        """
        ExecStart runs the main unit's twistd command line (the hpchat plugin with the same
        options) under `taskset -c %i`, with /etc/hpchat/hpchat-%i.ini.
        """
        execs = [v for s, k, v in unitEntries(TEMPLATE) if (s, k) == ("Service", "ExecStart")]
        self.assertEqual(len(execs), 1)
        words = shlex.split(execs[0])
        self.assertEqual(words[:3], ["/usr/bin/taskset", "-c", "%i"])
        self.assertEqual(words[3], "/opt/hpchat/bin/twistd")
        self.assertEqual(words[4:-2], unitArguments())
        self.assertIn("hpchat", words[4:-2])
        self.assertEqual(words[-2:], ["--config", "/etc/hpchat/hpchat-%i.ini"])

    def test_sameSettingsAsTheMainUnit(self):
        """
        Apart from its description and command line, the template has the main unit's
        settings (sandboxing, limits, restarts), so that the two do not drift apart.
        """
        differ = {("Unit", "Description"), ("Service", "ExecStart")}
        mine = [e for e in unitEntries(TEMPLATE) if e[:2] not in differ]
        main = [e for e in unitEntries(UNIT) if e[:2] not in differ]
        self.assertEqual(mine, main)

    def test_systemdAnalyzeVerify(self):
        """
        `systemd-analyze verify` of an instance (hpchat@0) reports nothing about the file:
        every key known, every value parsed.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        shutil.copy(TEMPLATE, os.path.join(folder, "hpchat@.service"))
        os.symlink("hpchat@.service", os.path.join(folder, "hpchat@0.service"))
        done = subprocess.run([analyze, "verify", os.path.join(folder, "hpchat@0.service")],
                              capture_output=True, text=True, timeout=60, cwd=folder)
        complaints = [line for line in (done.stdout + done.stderr).splitlines()
                      if "hpchat@" in line]
        self.assertEqual((done.returncode, complaints), (0, []))
