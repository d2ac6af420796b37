# -*- test-case-name: tests.test_loops -*-
"""
Periodic loops that never die: a LoopingCall whose body's exceptions (raised, or failed
Deferreds) are logged with the loop's name, counted in C{hpchat_loop_failures_total{loop}},
and swallowed, so that the next tick runs as usual.

And the delays of every retry: L{retryDelays}, Twisted's C{backoffPolicy}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hpchat import metrics

log = Logger(namespace="hpchat.loops")


def _failed(name: str, failure: Failure) -> None:
    metrics.loopFailures.labels(name).inc()
    log.failure("loop {loop} failed; it goes on at its next tick", failure, loop=name)


def guarded(name: str, body: Callable[[], Any]) -> Callable[[], Any]:
    """
    C{body} wrapped so that nothing it raises or fails with reaches its caller: the result
    is C{None} or a Deferred that always succeeds (a LoopingCall still waits for it).
    """

    def run() -> Any:
        try:
            result = body()
        except Exception:
            _failed(name, Failure())
            return None
        if isinstance(result, defer.Deferred):
            return result.addErrback(lambda f: _failed(name, f))
        return result

    return run


def startLoop(clock: IReactorTime, name: str, body: Callable[[], Any], interval: float,
              now: bool = False) -> task.LoopingCall:
    """
    Start a L{task.LoopingCall} of the guarded C{body} every C{interval} seconds on
    C{clock}; stop it with C{stop()} as usual.
    """
    loop = task.LoopingCall(guarded(name, body))
    loop.clock = clock
    loop.start(interval, now=now).addErrback(
        lambda f: log.failure("loop {loop} stopped", f, loop=name))
    return loop


def noJitter() -> float:
    return 0.0


def retryDelays(initialDelay: float, maxDelay: float, factor: float = 2.0,
                jitter: Callable[[], float] = noJitter) -> Callable[[int], float]:
    """
    The delay before retry C{n} (from 0): Twisted's C{backoffPolicy},
    C{min(initialDelay * factor ** n, maxDelay) + jitter()}; without C{jitter} the delays
    are exact (tests, and delays another party counts on, like NSQ's requeue).
    """
    return backoffPolicy(initialDelay=initialDelay, maxDelay=maxDelay, factor=factor,
                         jitter=jitter)
