# -*- test-case-name: tests.test_streams -*-
"""
L{Streams}: the streams this node serves, loaded on first use and evicted when idle, and the
one object the API talks to about them; composed of the waiters, the append pipeline and the
read markers.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from hpchat import metrics
from hpchat.deferreds import ObservableDeferred
from hpchat.loops import startLoop
from hpchat.storage.base import Event
from hpchat.streamids import groupOf
from hpchat.streams.appends import Appended, Appends
from hpchat.streams.readmarkers import ReadMarkers
from hpchat.streams.state import Stream, StreamUnavailable
from hpchat.streams.waiters import Listener, PollResult, Waiters

#: Streams looked at per turn of the reactor when evicting beyond C{maxStreams}.
TRIM_BATCH = 1024


class Streams(Service):
    """
    All streams this node serves.

    At most C{maxStreams} (C{None}: no limit) are held in memory: past it, the least recently
    used are evicted on the next turn of the reactor and loaded again from the store when
    next asked for. A stream with long-polls waiting, listeners, writes in flight or someone
    typing is never evicted, so the cap is soft while more than C{maxStreams} are busy.
    Evicting on a later turn, not during a load, keeps every stream handed out by L{get} in
    memory for the rest of the turn, so the caller's waiter, listener or typing mark lands on
    the live stream.

    @ivar onCommitted: callables run with each event once it is durable (see
        L{hpchat.streams.appends.Appends}).
    @param notificationOf: the recipient's notification of a conversation message, written
        in the message's own transaction when this node holds their inbox (see
        L{hpchat.streams.appends}); None: notifications go through C{onCommitted} only.
    """

    log = Logger()

    def __init__(self, clock: Any, store: Any, persister: Any, ownership: Any, groups: int,
                 historyInMemory: int = 200, typingTtl: float = 6.0, idleEvict: float = 300.0,
                 maxStreams: int | None = None,
                 notificationOf: Callable[[Event], Any] | None = None):
        if maxStreams is not None and maxStreams < 1:
            raise ValueError("maxStreams must be at least 1")
        self._clock = clock
        self._store = store
        self._ownership = ownership
        self.groups = groups
        self.historyInMemory = historyInMemory
        self.idleEvict = idleEvict
        self.maxStreams = maxStreams
        # Least recently used first.
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        self._trimming: IDelayedCall | None = None
        self._loading: dict[str, ObservableDeferred[Stream]] = {}
        self._evictor: task.LoopingCall | None = None
        self._waiters = Waiters(clock, store)
        self._appends = Appends(self, clock, store, persister, self._waiters, typingTtl,
                                notificationOf)
        self._readMarkers = ReadMarkers(self, persister, self._waiters)

    @property
    def onCommitted(self) -> list[Callable[[Event], Any]]:
        return self._appends.onCommitted

    @property
    def clock(self) -> Any:
        """
        The clock the streams run on.
        """
        return self._clock

    @property
    def waiting(self) -> int:
        """
        How many long-polls are waiting (and listeners listening).
        """
        return self._waiters.count

    # -- service

    def startService(self) -> None:
        super().startService()
        # Read when /metrics is scraped, not set on every change of the hot path.
        metrics.waitingPolls.set_function(lambda: self._waiters.count)
        metrics.streamsInMemory.set_function(lambda: len(self._streams))
        self._evictor = startLoop(self._clock, "evictor", self._evictIdle,
                                  max(1.0, min(30.0, self.idleEvict / 2)))

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._evictor is not None and self._evictor.running:
            self._evictor.stop()
        if self._trimming is not None and self._trimming.active():
            self._trimming.cancel()
        self._trimming = None
        # Waiting polls are answered now so that their clients retry elsewhere or later.
        for stream in list(self._streams.values()):
            self.drop(stream, StreamUnavailable("this node is shutting down"))
        return defer.succeed(None)

    def answerWaiting(self) -> None:
        """
        Answer every waiting poll now with what it has (nothing new, the current last seq),
        so that its client polls again, elsewhere while this node stops.
        """
        self._waiters.answerAll(self._streams.values())

    # -- the streams in memory

    def groupOf(self, name: str) -> int:
        # A stream in memory knows its group: a dictionary lookup instead of the hash (about
        # a microsecond, and several per message).
        stream = self._streams.get(name)
        return stream.group if stream is not None else groupOf(name, self.groups)

    def current(self, name: str) -> Stream | None:
        """
        The loaded L{Stream} called C{name} if this node still owns it (then it becomes the
        most recently used), else C{None}.
        """
        stream = self._streams.get(name)
        if stream is None:
            return None
        if self._ownership.tokenFor(stream.group) == stream.token:
            stream.lastUsed = self._clock.seconds()
            self._streams.move_to_end(name)
            return stream
        self.drop(stream, StreamUnavailable(f"group {stream.group} is no longer owned here"))
        return None

    def isLoaded(self, stream: Stream) -> bool:
        """
        Whether C{stream} is the one in memory under its name (not dropped or evicted).
        """
        return self._streams.get(stream.name) is stream

    def get(self, name: str) -> defer.Deferred[Stream]:
        """
        The L{Stream} called C{name}, loaded from the store if needed. Fails with
        L{StreamUnavailable} when this node does not own its group.
        """
        stream = self.current(name)
        if stream is not None:
            return defer.succeed(stream)
        loading = self._loading.get(name)
        if loading is None:
            work = defer.ensureDeferred(self._load(name)).addBoth(self._loaded, name)
            if work.called:
                # Loaded (or refused) at once: nobody else can be waiting for it.
                return work
            # Everyone asking while it loads waits for this load.
            loading = self._loading[name] = ObservableDeferred(work, f"loading {name}")
        return loading.observe()

    def _loaded(self, result: Any, name: str) -> Any:
        self._loading.pop(name, None)
        return result

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

    def dropGroups(self, groups: Iterable[int]) -> None:
        """
        Forget every stream of C{groups} (this node no longer owns them): their waiters are
        answered with L{StreamUnavailable} so that clients go to the new owner.
        """
        groups = set(groups)
        for stream in [s for s in self._streams.values() if s.group in groups]:
            self.drop(stream, StreamUnavailable(f"group {stream.group} is no longer owned here"))

    def drop(self, stream: Stream, reason: Exception) -> None:
        """
        Forget C{stream}: out of memory, its typing marks cleared, its waiters failed with
        C{reason} and its listeners lost.
        """
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
        stream.clearTyping()
        self._waiters.failAll(stream, reason)

    def _evictIdle(self) -> None:
        # Run by a guarded loop: an exception is logged and counted, and the loop goes on.
        cutoff = self._clock.seconds() - self.idleEvict
        idle = [s for s in self._streams.values() if s.lastUsed < cutoff and s.evictable()]
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
            if stream.evictable():
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

    # -- writing (L{hpchat.streams.appends}, L{hpchat.streams.readmarkers})

    def send(self, name: str, sender: str, text: str,
             clientId: str | None) -> defer.Deferred[Appended]:
        """
        Append a conversation message; fires with C{(event, created)} once it is durable, where
        C{created} is False for a repeated C{clientId} (the original message is returned).
        """
        return self._appends.send(name, sender, text, clientId)

    def appendNotification(self, user: str, stream: str, notificationId: str, type: str,
                           sender: str | None,
                           data: Mapping[str, Any]) -> defer.Deferred[Appended]:
        """
        Append a notification to an inbox stream, at most once per C{notificationId}; fires
        with C{(event, created)} once durable.
        """
        return self._appends.appendNotification(user, stream, notificationId, type, sender,
                                                data)

    def setTyping(self, name: str, user: str, typing: bool) -> defer.Deferred[None]:
        """
        Mark C{user} as typing in C{name} for C{typingTtl} seconds, or not typing.
        """
        return self._appends.setTyping(name, user, typing)

    def markRead(self, name: str, user: str, seq: int) -> defer.Deferred[int]:
        """
        Move C{user}'s read marker in conversation C{name} forward to C{seq}; fires with the
        marker once durable (L{hpchat.streams.readmarkers.ReadMarkers.markRead}).
        """
        return self._readMarkers.markRead(name, user, seq)

    # -- reading (L{hpchat.streams.waiters})

    def poll(self, name: str, after: int | None, typingVersion: int | None,
             timeout: float, readVersion: int | None = None) -> defer.Deferred[PollResult]:
        """
        Fire with a L{PollResult} as soon as there are events after C{after}, or the typing
        version differs from C{typingVersion} (when given), or the read version from
        C{readVersion} (when given), or C{timeout} seconds have passed. Cancelling the
        Deferred forgets the waiter.
        """
        stream = self.current(name)
        if stream is None:
            return self.get(name).addCallback(self._waiters.poll, after, typingVersion,
                                              timeout, readVersion)
        # Loaded (nearly always): no Deferred for the stream itself.
        try:
            return self._waiters.poll(stream, after, typingVersion, timeout, readVersion)
        except Exception:
            return defer.fail()

    def listen(self, name: str, after: int | None, typingVersion: int | None,
               readVersion: int | None, onChange: Callable[[PollResult], object],
               onLost: Callable[[Exception], object]) -> defer.Deferred[Listener]:
        """
        Fire with a L{hpchat.streams.waiters.Listener} of stream C{name} from C{after}, the
        stream loaded first if needed: C{onChange} is called with each change after the
        cursor (and of the typing or read version, when given) until the listener is closed,
        C{onLost} once if the stream is dropped (L{hpchat.streams.waiters.Waiters.listen}).
        While it listens, the stream stays in memory.
        """
        stream = self.current(name)
        if stream is None:
            return self.get(name).addCallback(self._waiters.listen, after, typingVersion,
                                              readVersion, onChange, onLost)
        try:
            return defer.succeed(self._waiters.listen(stream, after, typingVersion,
                                                      readVersion, onChange, onLost))
        except Exception:
            return defer.fail()

    def history(self, name: str, before: int | None,
                limit: int) -> defer.Deferred[tuple[list[Event], bool]]:
        """
        Fire with C{(events, hasMore)}: up to C{limit} events before seq C{before} (None: the
        newest), oldest first.
        """
        stream = self.current(name)
        if stream is None:
            return self.get(name).addCallback(self._history, before, limit)
        return self._history(stream, before, limit)

    def _history(self, stream: Stream, before: int | None,
                 limit: int) -> defer.Deferred[tuple[list[Event], bool]]:
        page = stream.eventsBefore(before, limit)
        if page is not None:
            return defer.succeed(page)
        d = self._store.readBefore(stream.name, stream.historyEnd(before), limit + 1)
        return d.addCallback(lambda events: (events[-limit:], len(events) > limit))
