"""
Helpers for trial tests written as coroutines.
"""

from __future__ import annotations

from twisted.internet import defer, task

from tests.support.process import theReactor


def asyncTest(f):
    """
    Run the coroutine test method C{f} as a Deferred-returning trial test.
    """

    def test(self):
        return defer.ensureDeferred(f(self))

    test.__name__ = f.__name__
    test.__doc__ = f.__doc__
    return test


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(theReactor(), seconds, lambda: None)
