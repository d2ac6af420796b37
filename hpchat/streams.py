# -*- test-case-name: tests.test_streams -*-
"""
Streams in memory: for each conversation or inbox this node serves, its committed seq, a
bounded log of recent events, the long-poll waiters and who is typing.

A stream is loaded from the store on first use (raising the group's fence in the same
transaction, so a former owner can write nothing more) and evicted when idle, or when more
than C{maxStreams} are loaded (the least recently used first; loaded again on demand). New
events get the next seq, go to the batch persister, and only once durable become visible: the
sender's Deferred fires, waiters wake, and the C{onCommitted} hooks run (the notifier listens
there).

Waiters follow Synapse's notifier: compare cursors before waiting; one Deferred per waiter whose
canceller deregisters it; a clock timeout cancelled when the waiter is answered.

This module knows nothing of HTTP, etcd or NSQ.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from hpchat import metrics
from hpchat.deferreds import shield
from hpchat.loops import startLoop
from hpchat.readmarkers import CursorAhead, ReadMarkers, StreamUnavailable, participants
from hpchat.readmarkers import readVersion as readVersion_
from hpchat.storage.base import Event, StreamSnapshot
from hpchat.streamids import groupOf

MAX_EVENTS_PER_POLL = 100
#: Streams looked at per turn of the reactor when evicting beyond C{maxStreams}.
TRIM_BATCH = 1024


@dataclass(frozen=True, slots=True)
class PollResult:
    events: list[Event]
    last_seq: int
    typing: list[str]
    typing_version: int
    #: Conversations: each participant's durable read marker, and their version.
    read: dict[str, int] = field(default_factory=dict)
    read_version: int = 0


class _Waiter:
    __slots__ = ("after", "typingVersion", "readVersion", "deferred", "timer")

    def __init__(self, after: int, typingVersion: int | None, readVersion: int | None = None):
        self.after = after
        self.typingVersion = typingVersion
        self.readVersion = readVersion
        self.deferred: defer.Deferred | None = None
        self.timer = None


class Stream:
    """
    The in-memory state of one stream. Owned and mutated by L{Streams} only.
    """

    __slots__ = ("name", "group", "token", "lastSeq", "nextSeq", "recent", "complete",
                 "waiters", "typing", "typingVersion", "inFlight", "lastUsed", "keys",
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
        self.keys: dict[tuple, Event] = {}
        for event in self.recent:
            key = _dedupeKey(event)
            if key is not None:
                self.keys[key] = event
        # True while the log in memory starts at seq 1, i.e. it holds the whole stream.
        self.complete = not self.recent or self.recent[0].seq == 1
        if snapshot.last_seq == 0:
            self.complete = True
        self.waiters: set[_Waiter] = set()
        self.typing: dict[str, Any] = {}
        self.typingVersion = 0
        # Dedupe keys (("c", sender, client_id) or ("n", id)) of events being written, each
        # with the Deferreds of repeated requests waiting for the first one's outcome.
        self.inFlight: dict[tuple, list[defer.Deferred]] = {}
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

    def findInMemory(self, key: tuple) -> Event | None:
        return self.keys.get(key)

    def remember(self, event: Event) -> None:
        """
        Append a committed event to the log in memory (dropping the oldest when full).
        """
        if len(self.recent) == self.recent.maxlen:
            oldest = _dedupeKey(self.recent[0])
            if oldest is not None:
                self.keys.pop(oldest, None)
        self.recent.append(event)
        key = _dedupeKey(event)
        if key is not None:
            self.keys[key] = event


def _dedupeKey(event: Event) -> tuple | None:
    """
    What makes C{event} a repeat: an inbox event (notification) its id, whatever its type
    (C{message} notifications included); a conversation message its (sender, client_id).
    """
    if event.type != "message" or event.stream.startswith("inbox:"):
        return ("n", event.id)
    if event.client_id is None:
        return None
    return ("c", event.sender, event.client_id)


class Streams(ReadMarkers, Service):
    """
    All streams this node serves.

    At most C{maxStreams} (C{None}: no limit) are held in memory: past it, the least recently
    used are evicted on the next turn of the reactor and loaded again from the store when
    next asked for. A stream with long-polls waiting, writes in flight or someone typing is
    never evicted, so the cap is soft while more than C{maxStreams} are busy. Evicting on a
    later turn, not during a load, keeps every stream handed out by L{get} in memory for the
    rest of the turn, so the caller's waiter or typing mark lands on the live stream.

    @ivar onCommitted: callables run with each event once it is durable.
    """

    log = Logger()

    def __init__(self, clock, store, persister, ownership, groups: int,
                 historyInMemory: int = 200, typingTtl: float = 6.0, idleEvict: float = 300.0,
                 maxStreams: int | None = None):
        if maxStreams is not None and maxStreams < 1:
            raise ValueError("maxStreams must be at least 1")
        self._clock = clock
        self._store = store
        self._persister = persister
        self._ownership = ownership
        self.groups = groups
        self.historyInMemory = historyInMemory
        self.typingTtl = typingTtl
        self.idleEvict = idleEvict
        self.maxStreams = maxStreams
        self.onCommitted: list[Callable[[Event], Any]] = []
        # Least recently used first.
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        self._trimming: IDelayedCall | None = None
        self._loading: dict[str, defer.Deferred] = {}
        self._evictor: task.LoopingCall | None = None
        self._waiting = 0

    # -- service

    def startService(self):
        super().startService()
        # Read when /metrics is scraped, not set on every change of the hot path.
        metrics.waitingPolls.set_function(lambda: self._waiting)
        metrics.streamsInMemory.set_function(lambda: len(self._streams))
        self._evictor = startLoop(self._clock, "evictor", self._evictIdle,
                                  max(1.0, min(30.0, self.idleEvict / 2)))

    def stopService(self):
        super().stopService()
        if self._evictor is not None and self._evictor.running:
            self._evictor.stop()
        if self._trimming is not None and self._trimming.active():
            self._trimming.cancel()
        self._trimming = None
        # Waiting polls are answered now so that their clients retry elsewhere or later.
        for stream in list(self._streams.values()):
            self._drop(stream, StreamUnavailable("this node is shutting down"))
        return defer.succeed(None)

    def answerWaiting(self) -> None:
        """
        Answer every waiting poll now with what it has (nothing new, the current last seq),
        so that its client polls again, elsewhere while this node stops.
        """
        for stream in list(self._streams.values()):
            for waiter in list(stream.waiters):
                self._finishWaiter(stream, waiter).callback(self._result(stream, []))

    # -- loading

    def groupOf(self, name: str) -> int:
        return groupOf(name, self.groups)

    def _current(self, name: str) -> Stream | None:
        """
        The loaded L{Stream} called C{name} if this node still owns it, else C{None}.
        """
        stream = self._streams.get(name)
        if stream is None:
            return None
        if self._ownership.tokenFor(stream.group) == stream.token:
            stream.lastUsed = self._clock.seconds()
            self._streams.move_to_end(name)
            return stream
        self._drop(stream, StreamUnavailable(f"group {stream.group} is no longer owned here"))
        return None

    def get(self, name: str) -> defer.Deferred:
        """
        The L{Stream} called C{name}, loaded from the store if needed. Fails with
        L{StreamUnavailable} when this node does not own its group.
        """
        stream = self._current(name)
        if stream is not None:
            return defer.succeed(stream)
        follower: defer.Deferred = defer.Deferred()
        followers = self._loading.get(name)
        if followers is not None:
            followers.append(follower)
        else:
            self._loading[name] = [follower]
            defer.ensureDeferred(self._load(name)).addBoth(self._loaded, name)
        return follower

    def _loaded(self, result, name):
        for follower in self._loading.pop(name):
            follower.callback(result)
        return None

    async def _load(self, name: str) -> Stream:
        group = self.groupOf(name)
        token = self._ownership.tokenFor(group)
        if token is None:
            raise StreamUnavailable(f"group {group} is not owned here")
        snapshot = await self._store.claim(group, token, name, self.historyInMemory)
        if self._ownership.tokenFor(group) != token:
            raise StreamUnavailable(f"group {group} changed hands while loading {name}")
        stream = Stream(name, group, token, snapshot, self.historyInMemory, self._clock.seconds())
        self._streams[name] = stream
        if self.maxStreams is not None and len(self._streams) > self.maxStreams \
                and self._trimming is None and self.running:
            self._trimming = self._clock.callLater(0, self._trimLater)
        return stream

    def dropGroups(self, groups) -> None:
        """
        Forget every stream of C{groups} (this node no longer owns them): their waiters are
        answered with L{StreamUnavailable} so that clients go to the new owner.
        """
        groups = set(groups)
        for stream in [s for s in self._streams.values() if s.group in groups]:
            self._drop(stream, StreamUnavailable(f"group {stream.group} is no longer owned here"))

    def _drop(self, stream: Stream, reason: Exception) -> None:
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
        for timer in stream.typing.values():
            if timer.active():
                timer.cancel()
        stream.typing.clear()
        for waiter in list(stream.waiters):
            self._finishWaiter(stream, waiter).errback(reason)

    @staticmethod
    def _evictable(stream: Stream) -> bool:
        """
        Nothing of C{stream} lives only in memory: no waiters, no writes in flight (with or
        without a dedupe key), no typing marks.
        """
        return (not stream.waiters and not stream.inFlight and not stream.typing
                and stream.nextSeq == stream.lastSeq + 1 and not stream.readsInFlight)

    def _evictIdle(self):
        # Run by a guarded loop: an exception is logged and counted, and the loop goes on.
        cutoff = self._clock.seconds() - self.idleEvict
        idle = [s for s in self._streams.values()
                if s.lastUsed < cutoff and self._evictable(s)]
        for stream in idle:
            del self._streams[stream.name]
        self._trim()

    def _trim(self) -> bool:
        """
        Evict the least recently used streams beyond C{maxStreams}, looking at no more than
        C{TRIM_BATCH}. Busy ones are passed over and moved to the recently used end, so that
        the next trim does not look at them first, and a node whose streams are all busy does
        not scan them all on every load. Returns True when some were evicted and the node is
        still over the cap (another batch may get further).
        """
        if self.maxStreams is None:
            return False
        streams = self._streams
        evicted = 0
        for _ in range(TRIM_BATCH):
            if len(streams) <= self.maxStreams:
                return False
            name, stream = next(iter(streams.items()))
            if self._evictable(stream):
                del streams[name]
                evicted += 1
                metrics.countLimited("streams_evicted")
            else:
                streams.move_to_end(name)
        return evicted > 0 and len(streams) > self.maxStreams

    def _trimLater(self) -> None:
        self._trimming = None
        try:
            if self._trim() and self.running:
                self._trimming = self._clock.callLater(0, self._trimLater)
        except Exception:
            self.log.failure("evicting the least recently used streams failed")

    # -- writing

    def send(self, name: str, sender: str, text: str, clientId: str | None) -> defer.Deferred:
        """
        Append a conversation message; fires with C{(event, created)} once it is durable, where
        C{created} is False for a repeated C{clientId} (the original message is returned).
        """
        return self._append(name, "message", sender, {"text": text}, clientId=clientId,
                            key=("c", sender, clientId) if clientId is not None else None)

    def appendNotification(self, user: str, stream: str, notificationId: str, type: str,
                           sender: str | None, data: Mapping[str, Any]) -> defer.Deferred:
        """
        Append a notification to an inbox stream, at most once per C{notificationId}; fires
        with C{(event, created)} once durable.
        """
        return self._append(stream, type, sender, dict(data), eventId=notificationId,
                            key=("n", notificationId))

    def _append(self, name: str, type: str, sender: str | None, data: dict,
                clientId: str | None = None, eventId: str | None = None,
                key: tuple | None = None) -> defer.Deferred:
        # A caller that goes away does not stop the write: others will see the event.
        stream = self._current(name)
        if stream is not None and (key is None or stream.complete or key in stream.inFlight
                                   or stream.findInMemory(key) is not None):
            # The common case, decided from memory alone.
            try:
                d = self._appendTo(stream, type, sender, data, clientId, eventId, key)
            except Exception:
                d = defer.fail()
        else:
            d = defer.ensureDeferred(self._appendLoading(name, type, sender, data, clientId,
                                                         eventId, key))
        return shield(d, "an append")

    async def _appendLoading(self, name: str, type: str, sender: str | None, data: dict,
                             clientId: str | None, eventId: str | None,
                             key: tuple | None) -> tuple[Event, bool]:
        """
        L{_append} when the stream is to be loaded or a duplicate looked up in the store.
        """
        stream = await self.get(name)
        if key is not None:
            duplicate = await self._findDuplicate(stream, key)
            if duplicate is not None:
                return duplicate, False
        if self._streams.get(name) is not stream:
            # Dropped while we looked for a duplicate: start again on the current state.
            return await self._appendLoading(name, type, sender, data, clientId, eventId, key)
        return await self._write(stream, type, sender, data, clientId, eventId, key)

    def _appendTo(self, stream: Stream, type: str, sender: str | None, data: dict,
                  clientId: str | None, eventId: str | None,
                  key: tuple | None) -> defer.Deferred:
        """
        Append to a loaded stream whose duplicates (if C{key}) are all known in memory.
        """
        if key is not None:
            found = stream.findInMemory(key)
            if found is not None:
                return defer.succeed((found, False))
            followers = stream.inFlight.get(key)
            if followers is not None:
                follower: defer.Deferred = defer.Deferred()
                followers.append(follower)
                return follower.addCallback(lambda event: (event, False))
        return self._write(stream, type, sender, data, clientId, eventId, key)

    def _write(self, stream: Stream, type: str, sender: str | None, data: dict,
               clientId: str | None, eventId: str | None, key: tuple | None) -> defer.Deferred:
        """
        Queue a new event on C{stream}; fires with C{(event, True)} once it is durable and
        visible.
        """
        event = Event(stream=stream.name, seq=stream.nextSeq, id=eventId or uuid.uuid4().hex,
                      group=stream.group, type=type, sender=sender, ts=self._clock.seconds(),
                      client_id=clientId, data=data)
        durable = self._enqueueEvent(stream, event)
        stream.nextSeq += 1
        stream.lastUsed = event.ts
        followers: list[defer.Deferred] = []
        if key is not None:
            stream.inFlight[key] = followers

        def written(_):
            stream.inFlight.pop(key, None)
            self._commit(stream, event)
            for follower in followers:
                follower.callback(event)
            return event, True

        def failed(failure):
            stream.inFlight.pop(key, None)
            for follower in followers:
                follower.errback(failure.value)
            self._drop(stream, StreamUnavailable(f"write to {stream.name} failed: "
                                                 f"{failure.value}"))
            return failure

        return durable.addCallbacks(written, failed)

    async def _findDuplicate(self, stream: Stream, key: tuple) -> Event | None:
        """
        The event already written (or being written) under dedupe C{key}, if any.
        """
        if not stream.complete and key not in stream.inFlight \
                and stream.findInMemory(key) is None:
            if key[0] == "c":
                stored = await self._store.findClientId(stream.name, key[1], key[2])
            else:
                stored = await self._store.findEventId(stream.name, key[1])
            if stored is not None:
                return stored
        # Checked after the store lookup too: the same key may have been written meanwhile.
        found = stream.findInMemory(key)
        if found is not None:
            return found
        followers = stream.inFlight.get(key)
        if followers is not None:
            follower: defer.Deferred = defer.Deferred()
            followers.append(follower)
            return await follower
        return None

    def _commit(self, stream: Stream, event: Event) -> None:
        if self._streams.get(stream.name) is stream:
            self._show(stream, event)
        # Durable either way: the hooks (notifications) run even for a stream dropped meanwhile.
        for hook in self.onCommitted:
            try:
                hook(event)
            except Exception:
                self.log.failure("onCommitted hook failed for {stream} seq {seq}",
                                 stream=event.stream, seq=event.seq)

    def _show(self, stream: Stream, event: Event) -> None:
        """
        Make the durable C{event} visible: advance the stream and wake its waiters.
        """
        stream.lastSeq = event.seq
        stream.remember(event)
        if stream.complete and stream.recent[0].seq != 1:
            stream.complete = False
        metrics.countCommitted(stream.name.partition(":")[0])
        if stream.users is not None and event.sender in stream.users \
                and stream.reads.get(event.sender, 0) < event.seq:
            stream.reads[event.sender] = event.seq
        typingChanged = event.sender is not None and event.sender in stream.typing
        if typingChanged:
            timer = stream.typing.pop(event.sender)
            if timer.active():
                timer.cancel()
            stream.typingVersion += 1
        self._wake(stream, typingChanged)

    # -- typing

    def setTyping(self, name: str, user: str, typing: bool) -> defer.Deferred:
        """
        Mark C{user} as typing in C{name} for C{typingTtl} seconds, or not typing.
        """
        return self.get(name).addCallback(self._setTyping, user, typing)

    def _setTyping(self, stream: Stream, user: str, typing: bool) -> None:
        timer = stream.typing.get(user)
        if typing:
            if timer is not None and timer.active():
                timer.reset(self.typingTtl)
                return
            stream.typing[user] = self._clock.callLater(self.typingTtl, self._typingExpired,
                                                        stream, user)
        else:
            if timer is None:
                return
            del stream.typing[user]
            if timer.active():
                timer.cancel()
        stream.typingVersion += 1
        self._wake(stream, typingChanged=True)

    def _typingExpired(self, stream: Stream, user: str) -> None:
        stream.typing.pop(user, None)
        stream.typingVersion += 1
        self._wake(stream, typingChanged=True)

    # -- reading

    def poll(self, name: str, after: int | None, typingVersion: int | None,
             timeout: float, readVersion: int | None = None) -> defer.Deferred:
        """
        Fire with a L{PollResult} as soon as there are events after C{after}, or the typing
        version differs from C{typingVersion} (when given), or the read version from
        C{readVersion} (when given), or C{timeout} seconds have passed. Cancelling the
        Deferred forgets the waiter.
        """
        stream = self._current(name)
        if stream is None:
            return self.get(name).addCallback(self._poll, after, typingVersion, timeout,
                                              readVersion)
        # Loaded (nearly always): no Deferred for the stream itself.
        try:
            result = self._poll(stream, after, typingVersion, timeout, readVersion)
        except Exception:
            return defer.fail()
        return result if isinstance(result, defer.Deferred) else defer.succeed(result)

    def _poll(self, stream: Stream, after: int | None, typingVersion: int | None,
              timeout: float, readVersion: int | None = None):
        if after is None:
            after = stream.lastSeq
        if after > stream.lastSeq:
            raise CursorAhead(stream.lastSeq)
        if after < stream.lastSeq:
            events = stream.eventsAfter(after)
            if events is None:
                return self._store.readAfter(stream.name, after, MAX_EVENTS_PER_POLL).addCallback(
                    lambda events: self._result(stream, events))
            return self._result(stream, events)
        if typingVersion is not None and typingVersion != stream.typingVersion:
            return self._result(stream, [])
        if readVersion is not None and readVersion != readVersion_(stream.reads):
            return self._result(stream, [])
        if timeout <= 0:
            return self._result(stream, [])
        return self._wait(stream, after, typingVersion, timeout, readVersion)

    def _wait(self, stream: Stream, after: int, typingVersion: int | None, timeout: float,
              readVersion: int | None = None):
        waiter = _Waiter(after, typingVersion, readVersion)

        def cancel(d):
            # The HTTP layer cancels the handler's Deferred when the client goes away.
            self._finishWaiter(stream, waiter)

        def timedOut():
            waiter.timer = None
            self._finishWaiter(stream, waiter).callback(self._result(stream, []))

        waiter.deferred = defer.Deferred(cancel)
        waiter.timer = self._clock.callLater(timeout, timedOut)
        stream.waiters.add(waiter)
        self._waiting += 1
        return waiter.deferred

    def _finishWaiter(self, stream: Stream, waiter: _Waiter) -> defer.Deferred | None:
        """
        Forget C{waiter}: out of the stream's set, its timer cancelled. Returns its Deferred
        for the caller to fire, and drops the waiter's references to it and to its timer, so
        that no reference cycle (waiter -> Deferred -> canceller -> waiter) is left for the
        garbage collector.
        """
        if waiter in stream.waiters:
            stream.waiters.discard(waiter)
            self._waiting -= 1
        if waiter.timer is not None:
            if waiter.timer.active():
                waiter.timer.cancel()
            waiter.timer = None
        stream.lastUsed = self._clock.seconds()
        d, waiter.deferred = waiter.deferred, None
        return d

    def _wake(self, stream: Stream, typingChanged: bool, readChanged: bool = False) -> None:
        version = readVersion_(stream.reads) if readChanged else None
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
            self._finishWaiter(stream, waiter).callback(self._result(stream, events))

    def _result(self, stream: Stream, events: list[Event]) -> PollResult:
        if stream.users is None:
            return PollResult(events=events, last_seq=stream.lastSeq,
                              typing=sorted(stream.typing), typing_version=stream.typingVersion)
        reads = stream.reads
        return PollResult(events=events, last_seq=stream.lastSeq, typing=sorted(stream.typing),
                          typing_version=stream.typingVersion,
                          read={user: reads.get(user, 0) for user in stream.users},
                          read_version=readVersion_(reads))

    def history(self, name: str, before: int | None, limit: int) -> defer.Deferred:
        """
        Fire with C{(events, hasMore)}: up to C{limit} events before seq C{before} (None: the
        newest), oldest first.
        """
        return self.get(name).addCallback(self._history, before, limit)

    def _history(self, stream: Stream, before: int | None, limit: int):
        end = stream.lastSeq + 1 if before is None else min(before, stream.lastSeq + 1)
        start = max(1, end - limit)
        if end <= 1:
            return [], False
        if stream.recent and stream.recent[0].seq <= start:
            offset = stream.recent[0].seq
            events = [stream.recent[i - offset] for i in range(start, end)]
            return events, start > 1
        d = self._store.readBefore(stream.name, end, limit + 1)
        return d.addCallback(lambda events: (events[-limit:], len(events) > limit))
