#!/usr/bin/env python3
"""
Run the load generator against a fresh, temporary hpchat node on the embedded default.

  python bench/lg_node.py [--node-setting chat.max_poll_timeout=60] -- -c 1000 -r 100
  python bench/lg_node.py --postgresql -- -c 1000 -r 100    # the node on a temporary PostgreSQL

Writes an ini in a temporary folder (a free loopback port, [storage] path in that folder, a
random 48-byte [auth] secret), starts `twistd -n --pidfile= hpchat --config FILE` from the
repository root with the installed package, waits for /healthz, runs bench/loadgen.py with
the given arguments (plus --url, --config and --node-pid), then stops the node (SIGTERM, then
SIGKILL after 15 s) and removes the folder. The node's log is printed if anything failed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistdCommand() -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c",
            "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def writeIni(folder: str, port: int, settings: list[str]) -> str:
    sections: dict[str, dict[str, str]] = {
        "node": {"id": "bench-1", "listen": f"tcp:{port}:interface=127.0.0.1",
                 "advertise_url": f"http://127.0.0.1:{port}"},
        "storage": {"path": os.path.join(folder, "var", "hpchat.sqlite3")},
        "auth": {"secret": secrets.token_hex(24)},
        # The load generator's users send and poll faster than people do, and its runs go
        # past the default connection cap (--node-setting limits.KEY=VALUE measures the node
        # with other limits).
        "limits": {"sends_per_second": "1000000", "sends_burst": "1000000",
                   "typing_per_second": "1000000", "typing_burst": "1000000",
                   "max_polls_per_user": "100000", "max_connections": "1000000"},
    }
    for setting in settings:
        key, _, value = setting.partition("=")
        section, _, name = key.partition(".")
        if not name or not _:
            raise SystemExit(f"lg_node: --node-setting wants section.key=value (got {setting!r})")
        sections.setdefault(section, {})[name] = value
    if sections["storage"].get("backend", "sqlite") != "sqlite":
        del sections["storage"]["path"]
    path = os.path.join(folder, "node.ini")
    with open(path, "w") as f:
        for section, values in sections.items():
            f.write(f"[{section}]\n")
            for name, value in values.items():
                f.write(f"{name} = {value}\n")
    return path


class TempServer:
    """
    A server in a temporary folder for one benchmark run, used as a context manager:
    subclasses start it in C{__enter__} and give C{stop()} and C{_dumpLog()}. On exit it is
    stopped, its log shown if anything failed, and its folder removed unless C{keep}.
    """

    name = "server"

    def __init__(self, keep: bool, prefix: str):
        self.keep = keep
        self.folder = tempfile.mkdtemp(prefix=prefix)
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.failed = False

    def awaitHealthy(self, path: str, seconds: float, what: str) -> None:
        """
        Wait until C{path} answers 200; exit (after stopping the process and showing its
        log) if the process ends first or C{seconds} pass.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.failed = True
                self._dumpLog()
                raise SystemExit(f"{self.name}: {what} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.failed = True
        self.stop()
        self._dumpLog()
        raise SystemExit(f"{self.name}: {what} did not answer {path} within {seconds:g} s")

    def stopProcess(self, grace: float) -> None:
        """
        SIGTERM, then SIGKILL after C{grace} seconds.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __exit__(self, *exc):
        self.stop()
        if exc[0] is not None or self.failed:
            self._dumpLog()
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            sys.stderr.write(f"{self.name}: kept {self.folder}\n")
        return False


def splitArgs(argv):
    """
    A runner's own arguments and, after C{--}, the load generator's.
    """
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def runLoadgen(server: TempServer, args: list[str]) -> int:
    """
    Run bench/loadgen.py with C{args} against C{server}; a failed run marks it failed.
    """
    code = subprocess.call([sys.executable, os.path.join(HERE, "loadgen.py")] + args)
    if code != 0:
        server.failed = True
    return code


class Node(TempServer):
    """
    A temporary node process.
    """

    name = "lg_node"

    def __init__(self, settings=(), keep=False, wrapper=()):
        super().__init__(keep, "hpchat-bench-")
        self.settings = list(settings)
        self.wrapper = list(wrapper)
        self.ini = writeIni(self.folder, self.port, self.settings)
        self.log = os.path.join(self.folder, "node.log")

    def __enter__(self):
        logFile = open(self.log, "wb")
        command = self.wrapper + twistdCommand() + ["-n", "--pidfile=", "hpchat",
                                                    "--config", self.ini]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=logFile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logFile.close()
        self.awaitHealthy("/healthz", 30, "the node")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.stopProcess(15)

    def _dumpLog(self) -> None:
        try:
            with open(self.log, errors="replace") as f:
                sys.stderr.write("---- node log (tail) ----\n" + "".join(f.readlines()[-40:]))
        except OSError:
            pass


def main(argv=None) -> int:
    own, rest = splitArgs(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--node-setting", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra ini setting for the node, e.g. chat.max_poll_timeout=60")
    p.add_argument("--keep", action="store_true", help="keep the node's folder (ini, db, log)")
    p.add_argument("--postgresql", action="store_true",
                   help="run the node on a temporary PostgreSQL server started for the run")
    p.add_argument("--wrap", default="",
                   help="command prefix for the node, e.g. 'pyinstrument -o prof.html' ")
    args = p.parse_args(own)
    if args.postgresql:
        sys.path.insert(0, ROOT)
        from tests.support.postgres import PostgresProcess, findBinaries

        binaries = findBinaries()
        if binaries is None:
            raise SystemExit("lg_node: --postgresql needs PostgreSQL (apt-get install postgresql)")
        server = startPostgresBlocking(PostgresProcess(binaries))
        try:
            return run(args.node_setting + ["storage.backend=postgresql",
                                            f"storage.dsn={server.dsn}"], args, rest)
        finally:
            server.stopNow()
    return run(args.node_setting, args, rest)


def startPostgresBlocking(server):
    """
    Start the tests' temporary PostgreSQL server from this program, which runs no reactor.
    """
    from tests.support.postgres import PostgresStartError

    server._initdb()
    server._spawn()
    deadline = time.monotonic() + server.startTimeout
    while not server._probe():
        if not server.running() or time.monotonic() > deadline:
            server.kill()
            raise PostgresStartError(f"postgres did not start; log:\n{server.logTail()}")
        time.sleep(0.1)
    server._createDatabase()
    server._initialised = True
    return server


def run(settings: list[str], args, rest: list[str]) -> int:
    with Node(settings, args.keep, args.wrap.split()) as node:
        sys.stderr.write(f"lg_node: node pid {node.pid} at {node.url} (folder {node.folder})\n")
        return runLoadgen(node, ["--url", node.url, "--config", node.ini,
                                 "--node-pid", str(node.pid)] + rest)


if __name__ == "__main__":
    sys.exit(main())
