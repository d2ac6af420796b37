# -*- test-case-name: tests.test_deferreds -*-
"""
Small Deferred helpers.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


def shield(work: defer.Deferred, what: str = "shielded work", shared: bool = False):
    """
    A new Deferred with C{work}'s result, whose cancellation leaves C{work} running.

    Used where a caller (an HTTP request whose client went away) may cancel but the work must
    finish for everybody else: a message being written, a claim that many requests wait for.
    With C{shared}, C{work}'s result is left in place for its other callers; otherwise this
    is its only consumer, and an error that arrives after the caller cancelled is logged.
    """
    result: defer.Deferred = defer.Deferred()

    def forward(outcome):
        if not result.called:
            result.callback(outcome)
        elif isinstance(outcome, defer.Failure) and not shared:
            log.failure("{what} failed after its caller went away", outcome, what=what)
        return outcome if shared else None

    work.addBoth(forward)
    return result
