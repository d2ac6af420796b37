# -*- test-case-name: tests.test_tap -*-
"""
Process-wide settings of a node (open file limit, garbage collector, thread switch
interval) and the ways a node process ends early: a one-line config error, an exit status.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import NoReturn, TextIO

from twisted.logger import Logger

log = Logger(namespace="hpchat.process")

#: The exit status of a config error: systemd's Restart=on-failure does not help there, and
#: RestartPreventExitStatus=2 in the unit stops the restart loop.
CONFIG_ERROR_STATUS = 2


def exitWithConfigError(error: Exception, stream: TextIO | None = None) -> NoReturn:
    """
    Write C{hpchat: config error: ...} as one line on C{stream} (the process's real standard
    error by default, even after twistd has redirected C{sys.stderr} to the log) and exit
    with status 2: no usage text and no traceback, the operator sees what to fix.
    """
    if stream is None:
        stream = sys.__stderr__ or sys.stderr
    message = " ".join(str(error).split())
    stream.write(f"hpchat: config error: {message}\n")
    getattr(stream, "flush", lambda: None)()
    raise SystemExit(CONFIG_ERROR_STATUS)


def exitNow(status: int) -> NoReturn:
    """
    End the process at once with C{status}, after flushing standard output and error.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def raiseOpenFileLimit() -> int:
    """
    Every waiting long-poll holds a socket: raise the soft limit on open files to the hard
    limit (systemd's LimitNOFILE= sets both).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    log.info("open file limit: {limit}", limit=soft)
    return soft


def freezeStartupObjects() -> None:
    """
    Move everything allocated so far (modules, classes, config) out of the cyclic garbage
    collector's sight: full collections then scan only what requests allocate.
    """
    gc.collect()
    gc.freeze()
    # The hot path makes no reference cycles, so collections find next to nothing, but they
    # cost about a microsecond or two for every young object they scan, and a waiting poll's
    # objects live for seconds: with 10,000 waiting, the default collection of the middle
    # generation (every 10 young ones) scanned some 7,000 survivors and paused 15 ms, twice
    # a second. Collecting it every 2 young collections keeps each pause near 5 ms (p99 at
    # 10,000 waiting and 1,000 msgs/s: 24.6 -> 14.3 ms); full collections, which scan every
    # live object, stay rare.
    gc.set_threshold(700, 2, 5_000)


def shortenThreadSwitches() -> None:
    """
    Let the store's thread have the GIL back sooner. It gives the GIL up for every SQLite
    call and must take it back between calls; with the reactor thread busy, each take waits
    for the switch interval (5 ms by default), which made a batch of a few statements take
    50 ms under load. The interval only matters while another thread is waiting for the GIL.
    """
    sys.setswitchinterval(0.0005)
