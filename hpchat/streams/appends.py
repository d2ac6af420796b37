# -*- test-case-name: tests.test_streams_appends -*-
"""
The append pipeline: new events (messages, notifications) and typing marks.

A new event gets the stream's next seq and goes to the batch persister (with both
participants' summary rows when it is a message of a conversation); only once durable does it
become visible: it joins the stream's log, the sender's Deferred fires, the waiters wake and
the C{onCommitted} hooks run.

A conversation message may carry its recipient's inbox notification as a companion
(C{notificationOf}, given when nothing else must see the notification first, i.e. no NSQ):
when this node holds that inbox now, the notification gets the inbox's next seq and is
written in the message's own transaction, and both become visible together. Otherwise the
message's C{onCommitted} hooks (the outbox) deliver it after the commit.

Dedupe: a message with a client id, or any notification, has a dedupe key. A repeat of a key
in the log in memory answers with the original; a repeat of a key being written observes the
first write (L{hpchat.deferreds.ObservableDeferred}); otherwise, if the log in memory does not
hold the whole stream, the store is asked first.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hpchat import metrics
from hpchat.deferreds import ObservableDeferred, shield
from hpchat.ids import newEventId
from hpchat.storage.base import Event, IEventStore
from hpchat.streamids import inboxStream
from hpchat.streams.readmarkers import conversationRows
from hpchat.streams.state import DedupeKey, Stream, StreamTable, StreamUnavailable
from hpchat.streams.waiters import Waiters

#: A new event: (event, True); a repeat: (the original event, False).
Appended = tuple[Event, bool]


def _repeat(appended: Appended) -> Appended:
    return appended[0], False


class Appends:
    """
    Appends to the streams of a L{StreamTable}, and their typing marks.

    @ivar onCommitted: callables run with each event once it is durable (a message whose
        notification was written with it as its companion excepted).
    @param notificationOf: C{notificationOf(message)} gives the recipient's notification of a
        conversation message (with C{id}, C{user}, C{type}, C{sender} and C{data}), or None:
        written with the message when this node holds the recipient's inbox (None: never).
    """

    log = Logger()

    def __init__(self, table: StreamTable, clock: IReactorTime, store: IEventStore,
                 persister: Any, waiters: Waiters, typingTtl: float,
                 notificationOf: Callable[[Event], Any] | None = None):
        self._table = table
        self._clock = clock
        self._store = store
        self._persister = persister
        self._waiters = waiters
        self.typingTtl = typingTtl
        self._notificationOf = notificationOf
        self.onCommitted: list[Callable[[Event], Any]] = []

    # -- appending

    def send(self, name: str, sender: str, text: str,
             clientId: str | None) -> defer.Deferred[Appended]:
        """
        Append a conversation message; fires with C{(event, created)} once it is durable, where
        C{created} is False for a repeated C{clientId} (the original message is returned).
        """
        return self._append(name, "message", sender, {"text": text}, clientId=clientId,
                            key=("c", sender, clientId) if clientId is not None else None)

    def appendNotification(self, user: str, stream: str, notificationId: str, type: str,
                           sender: str | None,
                           data: Mapping[str, Any]) -> defer.Deferred[Appended]:
        """
        Append a notification to an inbox stream, at most once per C{notificationId}; fires
        with C{(event, created)} once durable.
        """
        return self._append(stream, type, sender, dict(data), eventId=notificationId,
                            key=("n", notificationId))

    def _append(self, name: str, type: str, sender: str | None, data: dict[str, Any],
                clientId: str | None = None, eventId: str | None = None,
                key: DedupeKey | None = None) -> defer.Deferred[Appended]:
        # A caller that goes away does not stop the write: others will see the event. What
        # _appendTo returns is already the caller's own (see _write).
        stream = self._table.current(name)
        if stream is not None and (key is None or key in stream.inFlight
                                   or stream.findInMemory(key) is not None
                                   or stream.unused(key)):
            # The common case, decided from memory alone.
            try:
                return self._appendTo(stream, type, sender, data, clientId, eventId, key)
            except Exception:
                return defer.fail()
        return shield(defer.ensureDeferred(self._appendLoading(name, type, sender, data,
                                                               clientId, eventId, key)),
                      "an append")

    async def _appendLoading(self, name: str, type: str, sender: str | None,
                             data: dict[str, Any], clientId: str | None, eventId: str | None,
                             key: DedupeKey | None) -> Appended:
        """
        L{_append} when the stream is to be loaded or a duplicate looked up in the store.
        """
        stream = await self._table.get(name)
        if key is not None:
            duplicate = await self._findDuplicate(stream, key)
            if duplicate is not None:
                return duplicate, False
        if not self._table.isLoaded(stream):
            # Dropped while we looked for a duplicate: start again on the current state.
            return await self._appendLoading(name, type, sender, data, clientId, eventId, key)
        return await self._write(stream, type, sender, data, clientId, eventId, key)

    def _appendTo(self, stream: Stream, type: str, sender: str | None, data: dict[str, Any],
                  clientId: str | None, eventId: str | None,
                  key: DedupeKey | None) -> defer.Deferred[Appended]:
        """
        Append to a loaded stream whose duplicates (if C{key}) are all known in memory.
        """
        if key is not None:
            found = stream.findInMemory(key)
            if found is not None:
                return defer.succeed((found, False))
            writing = stream.inFlight.get(key)
            if writing is not None:
                return writing.observe().addCallback(_repeat)
        return self._write(stream, type, sender, data, clientId, eventId, key)

    def _write(self, stream: Stream, type: str, sender: str | None, data: dict[str, Any],
               clientId: str | None, eventId: str | None,
               key: DedupeKey | None) -> defer.Deferred[Appended]:
        """
        Queue a new event on C{stream}; fires with C{(event, True)} once it is durable and
        visible. The Deferred is the caller's own: cancelling it leaves the write running.
        """
        event = Event(stream=stream.name, seq=stream.nextSeq, id=eventId or newEventId(),
                      group=stream.group, type=type, sender=sender, ts=self._clock.seconds(),
                      client_id=clientId, data=data)
        durable, companion = self._handOff(stream, event)
        stream.nextSeq += 1
        stream.lastUsed = event.ts

        def written(_: object) -> Appended:
            if key is not None:
                stream.inFlight.pop(key, None)
            if companion is None:
                self._commit(stream, event)
            else:
                self._commit(stream, event, hooks=False)
                self._commit(*companion)
            return event, True

        def failed(failure: Failure) -> Failure:
            if key is not None:
                stream.inFlight.pop(key, None)
            for lost in (stream,) if companion is None else (stream, companion[0]):
                self._table.drop(lost, StreamUnavailable(
                    f"write to {lost.name} failed: {failure.value}"))
            return failure

        if key is None:
            return shield(durable.addCallbacks(written, failed), "an append")
        # Repeats of the key observe this write until it is done; this caller too, first
        # (an observer's cancellation leaves the write and the other observers be).
        writing: ObservableDeferred[Appended] = ObservableDeferred(
            durable.addCallbacks(written, failed), "an append")
        if not writing.done:
            stream.inFlight[key] = writing
        return writing.observe()

    def _handOff(self, stream: Stream, event: Event
                 ) -> tuple[defer.Deferred[Any], tuple[Stream, Event] | None]:
        """
        Queue C{event} of C{stream} with the persister, with both participants' rows when it
        is a message of a conversation (the sender's marker moves to it), and its companion
        notification when there is one (L{_companion}): the Deferred of the write, and the
        companion's stream and event.
        """
        if stream.users is None or event.type != "message" or event.sender not in stream.users:
            return self._persister.enqueue(event, stream.token), None
        queued = dict(stream.readsQueued)
        queued[event.sender] = event.seq
        rows = conversationRows(stream.name, stream.group, stream.users, event.seq, queued,
                                event.ts)
        companion = self._companion(event)
        if companion is None:
            durable = self._persister.enqueue(event, stream.token, rows)
        else:
            inbox, notification = companion
            durable = self._persister.enqueue(event, stream.token, rows,
                                              companion=(notification, inbox.token))
            inbox.nextSeq += 1
            inbox.lastUsed = event.ts
        stream.readsQueued = queued
        stream.updated = event.ts
        return durable, companion

    def _companion(self, message: Event) -> tuple[Stream, Event] | None:
        """
        The recipient's notification of C{message} as an event of their inbox, when this
        node holds that inbox now and nothing else writes the notification; else None.
        """
        if self._notificationOf is None:
            return None
        notification = self._notificationOf(message)
        if notification is None:
            return None
        inbox = self._table.current(inboxStream(notification.user))
        if inbox is None:
            return None
        key: DedupeKey = ("n", notification.id)
        if key in inbox.inFlight or inbox.findInMemory(key) is not None:
            # (Its id comes from the new message's own, so this is never the case.)
            return None
        return inbox, Event(stream=inbox.name, seq=inbox.nextSeq, id=notification.id,
                            group=inbox.group, type=notification.type,
                            sender=notification.sender, ts=message.ts, client_id=None,
                            data=dict(notification.data))

    async def _findDuplicate(self, stream: Stream, key: DedupeKey) -> Event | None:
        """
        The event already written (or being written) under dedupe C{key}, if any.
        """
        if key not in stream.inFlight and stream.findInMemory(key) is None \
                and not stream.unused(key):
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
        writing = stream.inFlight.get(key)
        if writing is not None:
            return (await writing.observe())[0]
        return None

    def _commit(self, stream: Stream, event: Event, hooks: bool = True) -> None:
        if self._table.isLoaded(stream):
            self._show(stream, event)
        if not hooks:
            return
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
        stream.remember(event)
        metrics.countCommitted(stream.name.partition(":")[0])
        if stream.users is not None and event.sender in stream.users \
                and stream.reads.get(event.sender, 0) < event.seq:
            stream.reads[event.sender] = event.seq
        timer = stream.typing.pop(event.sender, None) if event.sender is not None else None
        if timer is not None:
            if timer.active():
                timer.cancel()
            stream.typingVersion += 1
        self._waiters.wake(stream, timer is not None)

    # -- typing

    def setTyping(self, name: str, user: str, typing: bool) -> defer.Deferred[None]:
        """
        Mark C{user} as typing in C{name} for C{typingTtl} seconds, or not typing.
        """
        return self._table.get(name).addCallback(self._setTyping, user, typing)

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
        self._waiters.wake(stream, typingChanged=True)

    def _typingExpired(self, stream: Stream, user: str) -> None:
        stream.typing.pop(user, None)
        stream.typingVersion += 1
        self._waiters.wake(stream, typingChanged=True)
