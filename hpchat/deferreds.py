# -*- test-case-name: tests.test_deferreds -*-
"""
Small Deferred helpers.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")

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


class ObservableDeferred(Generic[T]):
    """
    One piece of in-flight work that any number of callers wait for (in the spirit of
    Synapse's C{ObservableDeferred}): each L{observe} gets a Deferred of its own with the
    work's result, and cancelling one observer cancels neither the work nor the others.

    Once the work is done, C{observe} answers at once with its result. An error reaches every
    observer; if nobody observed it, it is logged instead of being left unhandled.
    """

    def __init__(self, work: defer.Deferred, what: str = "shared work"):
        self._observers: list[defer.Deferred] = []
        self._result: Any = None
        self._done = False
        self._what = what
        work.addBoth(self._finished)

    def _finished(self, outcome: Any) -> None:
        self._done = True
        self._result = outcome
        observers, self._observers = self._observers, []
        delivered = False
        for d in observers:
            if not d.called:
                delivered = True
                d.callback(outcome) if not isinstance(outcome, Failure) else d.errback(outcome)
        if isinstance(outcome, Failure) and not delivered:
            log.failure("{what} failed with nobody waiting", outcome, what=self._what)
        return None

    @property
    def done(self) -> bool:
        """Whether the work has finished."""
        return self._done

    def observe(self) -> defer.Deferred:
        """
        A new Deferred with the work's result (already fired if the work is done).
        """
        if self._done:
            if isinstance(self._result, Failure):
                return defer.fail(self._result)
            return defer.succeed(self._result)

        def cancelled(d: defer.Deferred) -> None:
            if d in self._observers:
                self._observers.remove(d)

        d: defer.Deferred = defer.Deferred(cancelled)
        self._observers.append(d)
        return d


def observer(waiting: list[defer.Deferred[T]]) -> defer.Deferred[T]:
    """
    A Deferred added to C{waiting} that removes itself from it when cancelled; for an event
    that has no Deferred of its own (a connection becoming ready, a queue becoming empty),
    fired by L{fireAll}.
    """
    def cancelled(d: defer.Deferred[T]) -> None:
        if d in waiting:
            waiting.remove(d)

    d: defer.Deferred[T] = defer.Deferred(cancelled)
    waiting.append(d)
    return d


def fireAll(waiting: list[defer.Deferred[T]], result: Any = None) -> None:
    """
    Fire every Deferred of C{waiting} (taken from L{observer}) with C{result}, and empty it;
    one that was already called (cancelled) is skipped.
    """
    ready, waiting[:] = list(waiting), []
    for d in ready:
        if not d.called:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
