# -*- test-case-name: tests.test_streams_waiters -*-
"""
Long-poll waiters, in the shape of Synapse's notifier (C{synapse/notifier.py}): each stream
keeps its listeners, each keyed by what it waits for (events after a seq, a typing version, a
read version); the cursors are compared before waiting; a waiter is woken when what it waits
for changes, or by its clock timeout, and has one Deferred whose canceller deregisters it (the
HTTP layer cancels when the client goes away). Answering a waiter cancels its timeout.

Unlike Synapse's listeners, which are woken and then look again, a waiter here is answered
directly with the events that woke it: a commit wakes only the waiters whose cursor is behind,
and each gets its L{PollResult} from memory in the same turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from hpchat.storage.base import Event, IEventStore
from hpchat.streams.readmarkers import readVersion as readVersionOf
from hpchat.streams.state import MAX_EVENTS_PER_POLL, CursorAhead, Stream


@dataclass(frozen=True, slots=True)
class PollResult:
    events: list[Event]
    last_seq: int
    typing: list[str]
    typing_version: int
    #: Conversations: each participant's durable read marker, and their version.
    read: dict[str, int] = field(default_factory=dict)
    read_version: int = 0


class Waiter:
    """
    One waiting poll: what it waits for, its Deferred and its timeout (both C{None} once it
    is answered).
    """

    __slots__ = ("after", "typingVersion", "readVersion", "deferred", "timer")

    def __init__(self, after: int, typingVersion: int | None, readVersion: int | None = None):
        self.after = after
        self.typingVersion = typingVersion
        self.readVersion = readVersion
        self.deferred: defer.Deferred[PollResult] | None = None
        self.timer: IDelayedCall | None = None


class Waiters:
    """
    The long-polls waiting on the streams of this node.

    @ivar count: how many are waiting (the C{hpchat_waiting_polls} gauge).
    """

    def __init__(self, clock: IReactorTime, store: IEventStore):
        self._clock = clock
        self._store = store
        self.count = 0

    def poll(self, stream: Stream, after: int | None, typingVersion: int | None,
             timeout: float, readVersion: int | None = None) -> defer.Deferred[PollResult]:
        """
        Fire with a L{PollResult} as soon as C{stream} has events after C{after} (None: its
        last seq), or its typing version differs from C{typingVersion} (when given), or its
        read version from C{readVersion} (when given), or C{timeout} seconds have passed.
        Answers from memory are already fired; a cursor older than the memory is read from
        the store. Fails with L{CursorAhead} for a cursor beyond the last seq.
        """
        if after is None:
            after = stream.lastSeq
        if after > stream.lastSeq:
            return defer.fail(CursorAhead(stream.lastSeq))
        if after < stream.lastSeq:
            events = stream.eventsAfter(after)
            if events is None:
                return self._store.readAfter(stream.name, after, MAX_EVENTS_PER_POLL).addCallback(
                    lambda events: self.resultOf(stream, events))
            return defer.succeed(self.resultOf(stream, events))
        if (timeout <= 0
                or (typingVersion is not None and typingVersion != stream.typingVersion)
                or (readVersion is not None and readVersion != readVersionOf(stream.reads))):
            return defer.succeed(self.resultOf(stream, []))
        return self._wait(stream, after, typingVersion, timeout, readVersion)

    def _wait(self, stream: Stream, after: int, typingVersion: int | None, timeout: float,
              readVersion: int | None) -> defer.Deferred[PollResult]:
        waiter = Waiter(after, typingVersion, readVersion)

        def cancel(d: defer.Deferred[PollResult]) -> None:
            # The HTTP layer cancels the handler's Deferred when the client goes away.
            self._finish(stream, waiter)

        def timedOut() -> None:
            waiter.timer = None
            self._answer(stream, waiter, [])

        d: defer.Deferred[PollResult] = defer.Deferred(cancel)
        waiter.deferred = d
        waiter.timer = self._clock.callLater(timeout, timedOut)
        stream.waiters.add(waiter)
        self.count += 1
        return d

    def _finish(self, stream: Stream, waiter: Waiter) -> defer.Deferred[PollResult] | None:
        """
        Forget C{waiter}: out of the stream's set, its timer cancelled. Returns its Deferred
        (None if it was answered already) for the caller to fire, and drops the waiter's
        references to it and to its timer, so that no reference cycle (waiter -> Deferred ->
        canceller -> waiter) is left for the garbage collector.
        """
        if waiter in stream.waiters:
            stream.waiters.discard(waiter)
            self.count -= 1
        if waiter.timer is not None:
            if waiter.timer.active():
                waiter.timer.cancel()
            waiter.timer = None
        stream.lastUsed = self._clock.seconds()
        d, waiter.deferred = waiter.deferred, None
        return d

    def _answer(self, stream: Stream, waiter: Waiter, events: list[Event]) -> None:
        d = self._finish(stream, waiter)
        if d is not None:
            d.callback(self.resultOf(stream, events))

    def wake(self, stream: Stream, typingChanged: bool, readChanged: bool = False) -> None:
        """
        Answer the waiters of C{stream} that what just changed concerns: those behind its
        last seq, and (when changed) those that gave an older typing or read version.
        """
        version = readVersionOf(stream.reads) if readChanged else None
        for waiter in list(stream.waiters):
            if stream.lastSeq > waiter.after:
                events = stream.eventsAfter(waiter.after) or []
            elif typingChanged and waiter.typingVersion is not None \
                    and waiter.typingVersion != stream.typingVersion:
                events = []
            elif readChanged and waiter.readVersion is not None \
                    and waiter.readVersion != version:
                events = []
            else:
                continue
            self._answer(stream, waiter, events)

    def answerAll(self, streams: Iterable[Stream]) -> None:
        """
        Answer every waiter of C{streams} now with what it has (nothing new, the current last
        seq), so that its client polls again.
        """
        for stream in list(streams):
            for waiter in list(stream.waiters):
                self._answer(stream, waiter, [])

    def failAll(self, stream: Stream, reason: Exception) -> None:
        """
        Fail every waiter of C{stream} with C{reason}.
        """
        for waiter in list(stream.waiters):
            d = self._finish(stream, waiter)
            if d is not None:
                d.errback(reason)

    @staticmethod
    def resultOf(stream: Stream, events: list[Event]) -> PollResult:
        """
        The answer to a poll of C{stream}: C{events} and the stream's current state.
        """
        if stream.users is None:
            return PollResult(events=events, last_seq=stream.lastSeq,
                              typing=sorted(stream.typing), typing_version=stream.typingVersion)
        reads = stream.reads
        return PollResult(events=events, last_seq=stream.lastSeq, typing=sorted(stream.typing),
                          typing_version=stream.typingVersion,
                          read={user: reads.get(user, 0) for user in stream.users},
                          read_version=readVersionOf(reads))
