# -*- test-case-name: tests.test_streams_state -*-
"""
One stream's state in memory: its seqs, the bounded log of its recent committed events with
their dedupe index, who is typing, and the work in flight that keeps it loaded.

A L{Stream} is plain state. The parts of L{hpchat.streams.Streams} mutate it: the append
pipeline (L{hpchat.streams.appends}) advances the seqs and the log, the waiters
(L{hpchat.streams.waiters}) keep their long-polls in C{waiters} and their listeners (the
open event streams) in C{listeners}, the read markers
(L{hpchat.streams.readmarkers}) the markers. They reach the other streams through
L{StreamTable}, the few methods of the facade they need.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from hpchat.storage.base import Event, StreamSnapshot
from hpchat.streamids import BadConversation, parseConversation

if TYPE_CHECKING:
    from hpchat.deferreds import ObservableDeferred
    from hpchat.streams.waiters import Listener, Waiter

#: The most events one poll answers with.
MAX_EVENTS_PER_POLL = 100

#: What makes an event a repeat: C{("c", sender, client_id)} or C{("n", id)}.
DedupeKey = tuple[str | None, ...]

#: How many dedupe keys of events dropped from a stream's log it keeps (as fingerprints), per
#: event the log holds: a fingerprint costs about a fifth of an event's memory.
DROPPED_KEYS_PER_EVENT = 5


class StreamUnavailable(Exception):
    """
    This node does not (or no longer) serve the stream's group; ask the ownership where to go.
    """


class CursorAhead(Exception):
    """
    The client's cursor is beyond the stream's last seq.
    """

    def __init__(self, lastSeq: int):
        self.lastSeq = lastSeq
        super().__init__(f"cursor is ahead of last_seq {lastSeq}")


def participants(stream: str) -> tuple[str, str] | None:
    """
    The two users of conversation C{stream}, or None for any other stream.
    """
    if not stream.startswith("dm:"):
        return None
    try:
        return parseConversation(stream)
    except BadConversation:
        return None


def dedupeKey(event: Event) -> DedupeKey | None:
    """
    What makes C{event} a repeat: an inbox event (notification) its id, whatever its type
    (C{message} notifications included); a conversation message its (sender, client_id).
    """
    if event.type != "message" or event.stream.startswith("inbox:"):
        return ("n", event.id)
    if event.client_id is None:
        return None
    return ("c", event.sender, event.client_id)


class Stream:
    """
    The in-memory state of one stream. Owned and mutated by L{hpchat.streams.Streams} and its
    parts only.
    """

    __slots__ = ("name", "group", "token", "lastSeq", "nextSeq", "recent", "dropped",
                 "waiters", "listeners", "typing", "typingVersion", "inFlight", "lastUsed", "keys",
                 "users", "reads", "readsQueued", "readsInFlight", "updated")

    def __init__(self, name: str, group: int, token: int, snapshot: StreamSnapshot,
                 historyInMemory: int, now: float):
        self.name = name
        self.group = group
        self.token = token
        self.lastSeq = snapshot.last_seq
        self.nextSeq = snapshot.last_seq + 1
        self.recent: deque[Event] = deque(snapshot.recent, maxlen=historyInMemory)
        # The dedupe keys of the events in `recent`, for lookups without a scan.
        self.keys: dict[DedupeKey, Event] = {}
        for event in self.recent:
            key = dedupeKey(event)
            if key is not None:
                self.keys[key] = event
        # While every dedupe key of the stream is known here: the fingerprints (hashes) of
        # the keys of the events dropped from `recent`, so that a send with a new client_id
        # is told from a repeat without asking the store. None when they are not all known:
        # the stream was loaded without its start, or more were dropped than the bound.
        whole = not self.recent or self.recent[0].seq == 1 or snapshot.last_seq == 0
        self.dropped: set[int] | None = set() if whole else None
        self.waiters: set[Waiter] = set()
        # (A dict for its order: the listeners are told in the order they came.)
        self.listeners: dict[Listener, None] = {}
        self.typing: dict[str, IDelayedCall] = {}
        self.typingVersion = 0
        # The events being written under a dedupe key, each observed by the repeated
        # requests that wait for the first one's outcome.
        self.inFlight: dict[DedupeKey, ObservableDeferred[tuple[Event, bool]]] = {}
        self.lastUsed = now
        # Conversations: the participants, their durable and queued read markers, the
        # number of marker writes in flight, and when the last message was sent.
        self.users = participants(name)
        self.reads: dict[str, int] = dict(snapshot.reads)
        self.readsQueued: dict[str, int] = dict(snapshot.reads)
        self.readsInFlight = 0
        self.updated = self.recent[-1].ts if self.recent else 0.0

    def eventsAfter(self, after: int) -> list[Event] | None:
        """
        Up to MAX_EVENTS_PER_POLL events after C{after} from memory, or None if memory does
        not reach back that far.
        """
        if after >= self.lastSeq:
            return []
        if not self.recent or self.recent[0].seq > after + 1:
            return None
        start = after + 1 - self.recent[0].seq
        end = min(len(self.recent), start + MAX_EVENTS_PER_POLL)
        return [self.recent[i] for i in range(start, end)]

    def eventsBefore(self, before: int | None, limit: int) -> tuple[list[Event], bool] | None:
        """
        Up to C{limit} events before seq C{before} (None: the newest), oldest first, and
        whether there are older ones; None if memory does not reach back that far.
        """
        end = self.historyEnd(before)
        start = max(1, end - limit)
        if end <= 1:
            return [], False
        if self.recent and self.recent[0].seq <= start:
            offset = self.recent[0].seq
            return [self.recent[i - offset] for i in range(start, end)], start > 1
        return None

    def historyEnd(self, before: int | None) -> int:
        """
        The seq a page of history before C{before} (None: the newest) stops short of.
        """
        return self.lastSeq + 1 if before is None else min(before, self.lastSeq + 1)

    def findInMemory(self, key: DedupeKey) -> Event | None:
        return self.keys.get(key)

    def unused(self, key: DedupeKey) -> bool:
        """
        Whether memory alone tells that no event of this stream has dedupe key C{key}: every
        key of the stream is known here and C{key} is none of them. (A fingerprint that
        matches by chance only sends the lookup to the store.)
        """
        dropped = self.dropped
        return dropped is not None and key not in self.keys and hash(key) not in dropped

    def remember(self, event: Event) -> None:
        """
        Make the committed C{event} the last one: append it to the log in memory, dropping
        the oldest when full (its dedupe key kept as a fingerprint while they are all known,
        up to DROPPED_KEYS_PER_EVENT per event of the log).
        """
        self.lastSeq = event.seq
        recent = self.recent
        if len(recent) == recent.maxlen:
            oldest = dedupeKey(recent[0])
            if oldest is not None:
                self.keys.pop(oldest, None)
                dropped = self.dropped
                if dropped is not None:
                    if len(dropped) < DROPPED_KEYS_PER_EVENT * len(recent):
                        dropped.add(hash(oldest))
                    else:
                        self.dropped = None
        recent.append(event)
        key = dedupeKey(event)
        if key is not None:
            self.keys[key] = event

    def clearTyping(self) -> None:
        """
        Forget every typing mark, their expiry timers cancelled.
        """
        for timer in self.typing.values():
            if timer.active():
                timer.cancel()
        self.typing.clear()

    def evictable(self) -> bool:
        """
        Nothing of this stream lives only in memory: no waiters, no listeners, no writes in
        flight (with or without a dedupe key), no typing marks.
        """
        return (not self.waiters and not self.listeners and not self.inFlight and not self.typing
                and self.nextSeq == self.lastSeq + 1 and not self.readsInFlight)


class StreamTable(Protocol):
    """
    What the parts of L{hpchat.streams.Streams} need of the streams this node holds.
    """

    def get(self, name: str) -> defer.Deferred[Stream]:
        """The stream called C{name}, loaded if needed (see L{hpchat.streams.Streams.get})."""

    def current(self, name: str) -> Stream | None:
        """The loaded stream called C{name} if this node still owns it."""

    def isLoaded(self, stream: Stream) -> bool:
        """Whether C{stream} is still the one in memory under its name."""

    def drop(self, stream: Stream, reason: Exception) -> None:
        """Forget C{stream}; its waiters fail with C{reason}."""


__all__ = ["DROPPED_KEYS_PER_EVENT", "MAX_EVENTS_PER_POLL", "CursorAhead", "DedupeKey", "Stream",
           "StreamTable", "StreamUnavailable", "dedupeKey", "participants"]
