# -*- test-case-name: tests.test_streams_waiters -*-
"""
Long-poll waiters, in the shape of Synapse's notifier (C{synapse/notifier.py}): each stream
keeps its listeners, each keyed by what it waits for (events after a seq, a typing version, a
read version); the cursors are compared before waiting; a waiter is woken when what it waits
for changes, or by its clock timeout, and has one Deferred whose canceller deregisters it (the
HTTP layer cancels when the client goes away). Answering a waiter forgets its timeout; the
timeouts of all waiters share one timer (L{hpchat.deadlines.Deadlines}).

Unlike Synapse's listeners, which are woken and then look again, a waiter here is answered
directly with the events that woke it: a commit wakes only the waiters whose cursor is behind,
and each gets its L{PollResult} from memory in the same turn.

Beside the one-shot waiters, a stream keeps its L{Listener}s: the open event streams. A
listener stays registered until its owner closes it; each change that concerns it calls its
C{onChange} at once with a L{PollResult} (the events after its cursor, in batches of at most
C{MAX_EVENTS_PER_POLL}, read from the store while its cursor is older than the memory) and
advances its cursor and versions, with no Deferred and no timer. The loss of the stream (its
group moved, the node stops) calls its C{onLost} once and forgets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hpchat.deadlines import Deadlines
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
    One waiting poll on C{stream}: what it waits for, its Deferred and its timeout's bucket
    (both C{None} once it is answered). It is its Deferred's canceller itself: two closures per
    poll (a canceller and a timeout) and their cells were a tenth of the objects a waiting
    poll keeps for the garbage collector to visit.
    """

    __slots__ = ("after", "typingVersion", "readVersion", "deferred", "bucket", "stream",
                 "_waiters")

    def __init__(self, after: int, typingVersion: int | None, readVersion: int | None,
                 stream: Stream, waiters: Waiters):
        self.after = after
        self.typingVersion = typingVersion
        self.readVersion = readVersion
        self.deferred: defer.Deferred[PollResult] | None = None
        self.bucket: int | None = None
        self.stream = stream
        self._waiters = waiters

    def __call__(self, d: defer.Deferred[PollResult]) -> None:
        # The canceller: the HTTP layer cancels the handler's Deferred when the client goes
        # away.
        self._waiters._finish(self.stream, self)


def _ignore(*args: Any) -> None:
    pass


class NoProgress(Exception):
    """
    The store had no events after a listener's cursor while the stream's last seq is beyond
    it.
    """


class Listener:
    """
    One open listener of a stream (see L{Waiters.listen}): its cursor, the typing and read
    versions it follows (None: it does not), and its two callables. Closed (forgotten by its
    stream) by L{close}, or once lost.
    """

    __slots__ = ("_waiters", "stream", "after", "typingVersion", "readVersion", "onChange",
                 "onLost", "reading")

    def __init__(self, waiters: Waiters, stream: Stream, after: int, typingVersion: int | None,
                 readVersion: int | None, onChange: Callable[[PollResult], object],
                 onLost: Callable[[Exception], object]):
        self._waiters: Waiters | None = waiters
        self.stream = stream
        self.after = after
        self.typingVersion = typingVersion
        self.readVersion = readVersion
        self.onChange = onChange
        self.onLost = onLost
        # True while what follows the cursor is read from the store.
        self.reading = False

    @property
    def closed(self) -> bool:
        return self._waiters is None

    def close(self) -> None:
        """
        Stop listening: the stream forgets this listener (at once, idempotent).
        """
        waiters = self._waiters
        if waiters is not None:
            waiters._forget(self)


class Waiters:
    """
    The long-polls waiting and the listeners listening on the streams of this node.

    @ivar count: how many are waiting or listening (the C{hpchat_waiting_polls} gauge).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, store: IEventStore):
        self._clock = clock
        self._store = store
        self.count = 0
        self._deadlines: Deadlines[Waiter] = Deadlines(clock, self._timedOut)

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
        waiter = Waiter(after, typingVersion, readVersion, stream, self)
        d: defer.Deferred[PollResult] = defer.Deferred(waiter)
        waiter.deferred = d
        waiter.bucket = self._deadlines.add(waiter, timeout)
        stream.waiters.add(waiter)
        self.count += 1
        return d

    def _timedOut(self, waiter: Waiter) -> None:
        waiter.bucket = None
        self._answer(waiter.stream, waiter, [])

    def _finish(self, stream: Stream, waiter: Waiter) -> defer.Deferred[PollResult] | None:
        """
        Forget C{waiter}: out of the stream's set and its timeout's bucket. Returns its
        Deferred (None if it was answered already) for the caller to fire, and drops the
        waiter's reference to it, so that no reference cycle (waiter -> Deferred ->
        canceller -> waiter) is left for the garbage collector.
        """
        if waiter in stream.waiters:
            stream.waiters.discard(waiter)
            self.count -= 1
        if waiter.bucket is not None:
            self._deadlines.discard(waiter, waiter.bucket)
            waiter.bucket = None
        stream.lastUsed = self._clock.seconds()
        d, waiter.deferred = waiter.deferred, None
        return d

    def _answer(self, stream: Stream, waiter: Waiter, events: list[Event]) -> None:
        d = self._finish(stream, waiter)
        if d is not None:
            d.callback(self.resultOf(stream, events))

    def wake(self, stream: Stream, typingChanged: bool, readChanged: bool = False) -> None:
        """
        Answer the waiters of C{stream} that what just changed concerns, and tell its
        listeners: those behind its last seq, and (when changed) those that gave an older
        typing or read version.
        """
        version = readVersionOf(stream.reads) if readChanged else None
        if stream.listeners:
            self._tellAll(stream, typingChanged, version)
        if not stream.waiters:
            return
        # Waiters with the same cursor (both participants of a conversation, nearly always)
        # share one result, as the listeners do.
        lastSeq = stream.lastSeq
        shared: dict[int, PollResult] = {}
        for waiter in list(stream.waiters):
            after = waiter.after
            if lastSeq <= after and not self._versionsMoved(waiter, stream, typingChanged,
                                                            version):
                continue
            result = shared.get(after)
            if result is None:
                result = shared[after] = self.resultOf(stream, stream.eventsAfter(after) or [])
            d = self._finish(stream, waiter)
            if d is not None:
                d.callback(result)

    def answerAll(self, streams: Iterable[Stream]) -> None:
        """
        Answer every waiter of C{streams} now with what it has (nothing new, the current last
        seq), so that its client polls again. Its listeners are told too, with nothing new:
        their owners see the node stop.
        """
        for stream in list(streams):
            for waiter in list(stream.waiters):
                self._answer(stream, waiter, [])
            if stream.listeners:
                result = self.resultOf(stream, [])
                for listener in list(stream.listeners):
                    if not listener.closed:
                        self._deliver(listener, result)

    def failAll(self, stream: Stream, reason: Exception) -> None:
        """
        Fail every waiter of C{stream} with C{reason}; its listeners are forgotten and lost
        (their C{onLost} called once with C{reason}).
        """
        for waiter in list(stream.waiters):
            d = self._finish(stream, waiter)
            if d is not None:
                d.errback(reason)
        for listener in list(stream.listeners):
            self._lose(listener, reason)

    # -- listeners

    def listen(self, stream: Stream, after: int | None, typingVersion: int | None,
               readVersion: int | None, onChange: Callable[[PollResult], object],
               onLost: Callable[[Exception], object]) -> Listener:
        """
        Listen to C{stream} from C{after} (None: its last seq) until the returned
        L{Listener} is closed or lost: C{onChange(result)} is called, in the turn of the
        change, with the events after the cursor, and when the typing or read version
        differs from C{typingVersion} or C{readVersion} (when given), which then advance.
        What is there already is given at once, before this returns (from the store for a
        cursor older than the memory, on a later turn). C{onLost(reason)} is called once if
        the stream is dropped (its group moved, the node stops) or the listener fails.
        Raises L{CursorAhead} for a cursor beyond the last seq.
        """
        if after is None:
            after = stream.lastSeq
        if after > stream.lastSeq:
            raise CursorAhead(stream.lastSeq)
        listener = Listener(self, stream, after, typingVersion, readVersion, onChange, onLost)
        stream.listeners[listener] = None
        self.count += 1
        self._catchUp(listener)
        return listener

    def _forget(self, listener: Listener) -> None:
        stream = listener.stream
        if stream.listeners.pop(listener, False) is None:
            self.count -= 1
        stream.lastUsed = self._clock.seconds()
        listener._waiters = None
        # No cycle (owner -> listener -> owner's methods) is left behind.
        listener.onChange = listener.onLost = _ignore

    def _lose(self, listener: Listener, reason: Exception) -> None:
        if listener.closed:
            return
        onLost = listener.onLost
        self._forget(listener)
        try:
            onLost(reason)
        except Exception:
            self.log.failure("a listener of {stream} failed when lost", stream=listener.stream.name)

    def _deliver(self, listener: Listener, result: PollResult) -> None:
        """
        Give C{result} to C{listener}, its cursor and versions advanced first.
        """
        if result.events:
            listener.after = result.events[-1].seq
        if listener.typingVersion is not None:
            listener.typingVersion = result.typing_version
        if listener.readVersion is not None:
            listener.readVersion = result.read_version
        try:
            listener.onChange(result)
        except Exception as e:
            self.log.failure("a listener of {stream} failed; it is dropped",
                             stream=listener.stream.name)
            self._lose(listener, e)

    def _tellAll(self, stream: Stream, typingChanged: bool, version: int | None) -> None:
        """
        Tell the listeners of C{stream} what concerns them; those with the same cursor
        share one result.
        """
        lastSeq = stream.lastSeq
        sharedAfter = -1
        shared: PollResult | None = None
        for listener in list(stream.listeners):
            if listener.reading or listener.closed:
                continue
            after = listener.after
            if lastSeq <= after and not self._versionsMoved(listener, stream, typingChanged,
                                                            version):
                continue
            if shared is None or sharedAfter != after:
                events = stream.eventsAfter(after)
                if events is None:
                    self._readFor(listener)
                    continue
                shared = self.resultOf(stream, events)
                sharedAfter = after
            self._deliver(listener, shared)
            if listener.after < lastSeq:
                # More than one batch behind.
                self._catchUp(listener)

    def _catchUp(self, listener: Listener) -> None:
        """
        Give C{listener} everything it is behind on: from memory now, in batches, or from
        the store.
        """
        stream = listener.stream
        while not listener.closed and not listener.reading:
            if stream.lastSeq > listener.after:
                events = stream.eventsAfter(listener.after)
                if events is None:
                    self._readFor(listener)
                    return
            elif self._versionsMoved(listener, stream, True, readVersionOf(stream.reads)):
                events = []
            else:
                return
            self._deliver(listener, self.resultOf(stream, events))

    def _readFor(self, listener: Listener) -> None:
        """
        Read what follows the cursor of C{listener} from the store (older than the memory);
        meanwhile the changes of its stream pass it by, and it catches up once read.
        """
        listener.reading = True
        stream = listener.stream
        after = listener.after

        def read(events: list[Event]) -> None:
            listener.reading = False
            if listener.closed:
                return
            events = [e for e in events if e.seq > after]
            if not events:
                self._lose(listener, NoProgress(
                    f"no events after {after} in the store, last seq {stream.lastSeq}"))
                return
            self._deliver(listener, self.resultOf(stream, events))
            self._catchUp(listener)

        def failed(failure: Failure) -> None:
            listener.reading = False
            reason = failure.value
            self._lose(listener, reason if isinstance(reason, Exception) else Exception(reason))

        self._store.readAfter(stream.name, after, MAX_EVENTS_PER_POLL).addCallbacks(
            read, failed).addErrback(
            lambda f: self.log.failure("catching a listener of {stream} up failed", f,
                                       stream=stream.name))

    @staticmethod
    def _versionsMoved(follower: Waiter | Listener, stream: Stream, typingChanged: bool,
                       readVersion: int | None) -> bool:
        """
        Whether C{stream}'s typing version (when C{typingChanged}) or read version (when
        given) is not the one C{follower} follows (if it follows it).
        """
        return ((typingChanged and follower.typingVersion is not None
                 and follower.typingVersion != stream.typingVersion)
                or (readVersion is not None and follower.readVersion is not None
                    and follower.readVersion != readVersion))

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
