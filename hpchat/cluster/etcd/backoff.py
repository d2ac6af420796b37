# -*- test-case-name: tests.cluster.test_etcd -*-
"""
Retry delays for reconnecting to etcd: Twisted's exponential
L{backoffPolicy}, with each delay scaled by a random factor so that many
nodes that lost etcd at the same moment do not come back in step.
"""

from __future__ import annotations

import random
from typing import Callable

from twisted.application.internet import backoffPolicy

__all__ = ["retryPolicy"]


def retryPolicy(
    minDelay: float,
    maxDelay: float,
    factor: float = 2.0,
    spread: Callable[[], float] = lambda: random.uniform(0.5, 1.0),
) -> Callable[[int], float]:
    """
    A retry policy: attempt C{n} (from 0) waits
    C{min(maxDelay, minDelay * factor ** n)} seconds times C{spread()}.

    @param spread: the random factor (default: uniform in [0.5, 1.0]).
    @return: a function from the attempt number to the delay in seconds.
    """
    policy = backoffPolicy(initialDelay=minDelay, maxDelay=maxDelay, factor=factor,
                           jitter=lambda: 0.0)

    def delay(attempt: int) -> float:
        return policy(attempt) * spread()

    return delay
