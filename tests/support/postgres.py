"""
A real PostgreSQL server for tests: Debian's C{initdb} into a temporary folder, C{postgres}
on a free loopback port, started, stopped, killed, paused and restarted by the tests.

    pg = await startPostgres(self)      # skips the test where PostgreSQL is not installed
    dsn = pg.dsn                        # host=127.0.0.1 port=... user=hpchat dbname=hpchat

PostgreSQL refuses to run as root: under root (CI) the server runs as the C{postgres} user
that Debian's package creates, on a folder handed to that user.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile

from twisted.internet import defer, threads
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from tests.support.process import freePort, theReactor, waitExit, waitFor

DATABASE = "hpchat"
USER = "hpchat"


def findBinaries() -> str | None:
    """
    The folder of C{initdb} and C{postgres}: C{$HPCHAT_PG_BIN}, else the newest Debian
    /usr/lib/postgresql/<version>/bin.
    """
    override = os.environ.get("HPCHAT_PG_BIN")
    if override:
        return override if os.path.exists(os.path.join(override, "postgres")) else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def _runAs() -> dict:
    """
    Popen arguments that drop to the postgres user when running as root.
    """
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class PostgresStartError(Exception):
    pass


class PostgresProcess:
    """
    One PostgreSQL server with its own port and data folder; L{start} after L{stop} or
    L{kill} brings the same data back, like a real server restarting.
    """

    def __init__(self, binaries: str, startTimeout: float = 30.0, cpus: str | None = None):
        self.binaries = binaries
        # For benchmarks: the CPUs (a taskset list) the server and its backends run on.
        self.cpus = cpus
        self.startTimeout = startTimeout
        self.port = freePort()
        self.baseDir = tempfile.mkdtemp(prefix="hpchat-pg-")
        self.dataDir = os.path.join(self.baseDir, "data")
        self.logPath = os.path.join(self.baseDir, "postgres.log")
        self._process: subprocess.Popen | None = None
        self._initialised = False
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.baseDir, entry.pw_uid, entry.pw_gid)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} dbname={DATABASE} connect_timeout=5"

    @property
    def adminDsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres connect_timeout=5"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _initdb(self) -> None:
        subprocess.run(
            [os.path.join(self.binaries, "initdb"), "-D", self.dataDir, "-U", USER,
             "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.baseDir,
            timeout=120, **_runAs())

    async def start(self) -> "PostgresProcess":
        if self.running():
            return self
        if not self._initialised:
            # initdb takes a second or two: off the reactor thread.
            await threads.deferToThread(self._initdb)
        self._spawn()
        try:
            await waitFor(self._accepting, self.startTimeout, "postgres to accept connections",
                          interval=0.1)
        except TimeoutError:
            self.kill()
            raise PostgresStartError(f"postgres did not start; log:\n{self.logTail()}")
        if not self._initialised:
            await threads.deferToThread(self._createDatabase)
            self._initialised = True
        return self

    def _spawn(self) -> None:
        log = open(self.logPath, "ab")
        try:
            self._process = subprocess.Popen(
                (["taskset", "-c", self.cpus] if self.cpus else [])
                + [os.path.join(self.binaries, "postgres"), "-D", self.dataDir,
                 "-p", str(self.port), "-k", self.baseDir, "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=on", "-c", "max_connections=100", "-c", "shared_buffers=32MB"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.baseDir, close_fds=True, **_runAs())
        finally:
            log.close()

    def _accepting(self):
        if self._process is None or self._process.poll() is not None:
            raise PostgresStartError(f"postgres exited; log:\n{self.logTail()}")
        return threads.deferToThread(self._probe)

    def _probe(self) -> bool:
        import psycopg

        try:
            psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres "
                            "connect_timeout=2").close()
        except psycopg.OperationalError:
            return False
        return True

    def _createDatabase(self) -> None:
        import psycopg

        with psycopg.connect(self.adminDsn, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {DATABASE}")

    def logTail(self, lines: int = 30) -> str:
        try:
            with open(self.logPath, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def _signal(self, sig: int) -> None:
        if self.running():
            try:
                os.kill(self._process.pid, sig)
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float = 15.0) -> None:
        """
        A fast shutdown (SIGINT: active transactions rolled back), SIGKILL past C{timeout}.
        """
        if not self.running():
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGINT)
        if await waitExit(self._process, timeout) is None:
            self.kill()
            await waitExit(self._process, 5.0)

    def kill(self) -> None:
        """
        SIGKILL the postmaster. Its backends notice and exit on their own; the next start
        recovers from the write-ahead log.
        """
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def stopNow(self) -> None:
        """
        Stop it at once, blocking: for the end of the test process only (atexit).
        """
        if self.running():
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGINT)
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        shutil.rmtree(self.baseDir, ignore_errors=True)

    async def cleanup(self) -> None:
        try:
            await self.stop()
            if self._process is not None and self._process.poll() is None:
                self._process.kill()
        finally:
            shutil.rmtree(self.baseDir, ignore_errors=True)


async def startPostgres(testcase) -> PostgresProcess:
    """
    Start a PostgreSQL server for C{testcase}, stopped and removed when it ends; the test is
    skipped where PostgreSQL's server or psycopg is not installed (C{make test} installs both).
    """
    server = PostgresProcess(_binariesOrSkip())
    testcase.addCleanup(lambda: defer.ensureDeferred(server.cleanup()))
    return await server.start()


def _binariesOrSkip() -> str:
    binaries = findBinaries()
    missing = None
    if binaries is None:
        missing = "PostgreSQL server not installed (apt-get install postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "psycopg not installed (pip install 'psycopg[binary]')"
    if missing is not None:
        if os.environ.get("CI"):
            # CI installs both: a skip there would hide a broken setup.
            raise PostgresStartError(missing)
        raise SkipTest(missing)
    assert binaries is not None
    return binaries


_shared: PostgresProcess | None = None
_sharedStarting: defer.Deferred | None = None
_databases = itertools.count(1)


async def sharedPostgres(testcase) -> PostgresProcess:
    """
    One PostgreSQL server for every test of this process that only needs a database of its
    own (L{freshDatabase}), started on first use and stopped when the process exits.
    """
    global _shared, _sharedStarting
    if _shared is not None and _shared.running():
        return _shared
    if _sharedStarting is None:
        binaries = _binariesOrSkip()
        server = PostgresProcess(binaries)
        atexit.register(server.stopNow)
        _sharedStarting = defer.ensureDeferred(server.start())

        def started(result):
            global _shared, _sharedStarting
            _shared, _sharedStarting = server, None
            return result

        def failed(failure):
            global _sharedStarting
            _sharedStarting = None
            return failure

        _sharedStarting.addCallbacks(started, failed)
    waiting: defer.Deferred = defer.Deferred()
    _sharedStarting.addBoth(lambda r: (waiting.callback(r) if not isinstance(r, Failure)
                                       else waiting.errback(r), r)[1])
    return await waiting


async def freshDatabase(testcase) -> str:
    """
    The DSN of a new, empty database on the shared server, dropped when the test ends.
    """
    server = await sharedPostgres(testcase)
    name = f"t{os.getpid()}_{next(_databases)}"

    def create():
        import psycopg

        with psycopg.connect(server.adminDsn, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")

    def drop():
        import psycopg

        with psycopg.connect(server.adminDsn, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    await threads.deferToThread(create)
    testcase.addCleanup(lambda: threads.deferToThread(drop) if server.running() else None)
    return f"host=127.0.0.1 port={server.port} user={USER} dbname={name} connect_timeout=5"


__all__ = ["PostgresProcess", "PostgresStartError", "findBinaries", "startPostgres",
           "theReactor"]
