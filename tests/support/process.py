"""
Real processes for tests: free loopback ports, waiting with deadlines on the reactor, and
stopping a child with SIGTERM then SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess

from twisted.internet import defer, task

#: Where test servers listen: below Linux's default ephemeral range (32768-60999), from which
#: the kernel gives every outgoing connection its local port. A port the kernel handed out for
#: a bind to port 0 and that was closed again may be taken by any connection made before the
#: server binds it ("Address already in use"); one from here only by another explicit bind.
_PORTS = range(20_000, 32_000)
_random = random.Random()


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range.
    """
    for _ in range(200):
        port = _random.choice(_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


def theReactor():
    from twisted.internet import reactor

    return reactor


async def waitFor(condition, timeout: float, what: str, interval: float = 0.05):
    """
    Call C{condition()} (which may return a Deferred) until it is truthy; raise
    C{TimeoutError} naming C{what} after C{timeout} seconds. An error of C{condition} ends
    the wait with that error.
    """
    reactor = theReactor()
    deadline = reactor.seconds() + timeout
    while True:
        result = await defer.maybeDeferred(condition)
        if result:
            return result
        if reactor.seconds() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await task.deferLater(reactor, interval, lambda: None)


async def waitExit(process: subprocess.Popen, timeout: float) -> int | None:
    """
    Wait up to C{timeout} seconds for C{process} to exit; its return code, or None.
    """
    try:
        await waitFor(lambda: process.poll() is not None, timeout, "process exit")
    except TimeoutError:
        return None
    return process.returncode


async def terminate(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """
    SIGTERM C{process}, then SIGKILL it if it is still there after C{timeout} seconds.
    """
    if process.poll() is None:
        try:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
        except ProcessLookupError:
            pass
    code = await waitExit(process, timeout)
    if code is None:
        process.kill()
        code = await waitExit(process, 5.0)
    return code
