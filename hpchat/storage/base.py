# -*- test-case-name: tests.storage.test_sqlite -*-
"""
The event store contract: what every storage backend provides.

A stream (a conversation or an inbox) is a sequence of L{Event}s numbered 1, 2, 3, ...
Events are written in batches. Each batch carries, per chat group, the fencing token of the
writer; the store keeps the highest token seen per group and rejects, atomically with the
append, a batch that carries a lower one. A paused or deposed owner can thus write nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from zope.interface import Attribute, Interface


@dataclass(frozen=True, slots=True)
class Event:
    """
    One stored event of a stream.

    @ivar type: C{"message"} for conversation messages, the notification type for inbox events.
    @ivar client_id: the sender's idempotency key (conversation messages), unique per
        (stream, sender); None when not given.
    @ivar data: the payload: C{{"text": ...}} for messages, the notification data for inbox events.
    """

    stream: str
    seq: int
    id: str
    group: int
    type: str
    sender: str | None
    ts: float
    client_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """
    The intent to publish a notification, written in the same batch (transaction) as the
    event it announces, and deleted once published.

    @ivar id: unique over the store (the notification id); writing an id that is already
        pending leaves the pending entry as it is.
    @ivar group: the chat group whose owner publishes it (the group of C{stream}).
    @ivar stream: the stream and C{seq} of the event it announces.
    @ivar body: what to publish (the notification's JSON text).
    @ivar created: when it was written (the owner's clock); pending entries come oldest first.
    """

    id: str
    group: int
    stream: str
    seq: int
    body: str
    created: float


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """
    What a new owner needs to serve a stream: its last seq and its most recent events.
    """

    last_seq: int
    recent: Sequence[Event]
    #: The read markers of the stream's participants (conversations): user -> read seq.
    reads: Mapping[str, int] = field(default_factory=dict)


class StoreError(Exception):
    """
    The store could not do what was asked; retrying later may succeed.
    """


class StoreBusy(StoreError):
    """
    The store could not open because another process holds it for a moment (SQLite: two
    nodes setting up one new file at once); opening again shortly will do.
    """


class FenceRejected(StoreError):
    """
    A newer owner has written to these groups: the caller is no longer their owner.
    Nothing of the batch was written.
    """

    def __init__(self, groups: Sequence[int]):
        self.groups = tuple(sorted(set(groups)))
        super().__init__(f"fenced out of groups {list(self.groups)}")


class StreamConflict(StoreError):
    """
    The batch collides with stored events (a seq, id or client_id already taken): the writer's
    view of these streams is stale. Nothing of the batch was written.

    @ivar groups: the groups of the colliding events.
    @ivar streams: the streams of the colliding events, when the store could tell (empty when
        it could not): the other events of the batch may be written again without them.
    """

    def __init__(self, groups: Sequence[int], detail: str = "",
                 streams: Sequence[str] = ()):
        self.groups = tuple(sorted(set(groups)))
        self.streams = tuple(sorted(set(streams)))
        super().__init__(f"conflict in groups {list(self.groups)}"
                         + (f" (streams {list(self.streams)})" if self.streams else "")
                         + f": {detail}")


def requireFences(events: Sequence[Event], fences: dict[int, int],
                  outbox: Sequence[OutboxEntry] = (), conversations: Sequence = ()) -> None:
    """
    Refuse (C{ValueError}) an append that has no fence token for a group it writes to: every
    store checks the tokens of exactly the groups of what it writes.
    """
    missing = ({e.group for e in events} | {o.group for o in outbox}
               | {c.group for c in conversations}) - set(fences)
    if missing:
        raise ValueError(f"no fence token for groups {sorted(missing)}")


class IEventStore(Interface):
    """
    Durable, fenced storage of stream events. Every method returns a Deferred and does its
    blocking work off the reactor thread.
    """

    ready = Attribute("True once open() has succeeded and until close().")

    def open():
        """
        Open (and create if needed) the store. Fires with None.
        """

    def close():
        """
        Finish pending work and close. Fires with None.
        """

    def claim(group, token, stream, recent):
        """
        Raise the stored fence of C{group} to C{token} and read the state of C{stream}, in one
        transaction. Fires with a L{StreamSnapshot} of up to C{recent} newest events, or fails
        with L{FenceRejected} when a higher token is stored.
        """

    def append(events, fences, outbox=()):
        """
        Write C{events} (a sequence of L{Event}) and the L{OutboxEntry}s C{outbox} atomically.
        C{fences} maps every group of the events and entries to the writer's token. Fires
        with None once durable; fails with L{FenceRejected} or L{StreamConflict} (writing
        nothing; a conflict names the colliding streams), or L{StoreError}.
        """

    def pendingOutbox(groups, limit):
        """
        Fire with up to C{limit} L{OutboxEntry}s of C{groups} not yet marked done, oldest
        first.
        """

    def markOutboxDone(entries):
        """
        Delete the L{OutboxEntry}s C{entries} (published); entries already gone are ignored.
        Fires with None once durable.
        """

    def readAfter(stream, after, limit):
        """
        Fire with up to C{limit} events of C{stream} with seq > C{after}, ascending.
        """

    def readBefore(stream, before, limit):
        """
        Fire with up to C{limit} events of C{stream} with seq < C{before} (None: the newest),
        the newest ones, ordered oldest first.
        """

    def findClientId(stream, sender, client_id):
        """
        Fire with the L{Event} that C{sender} wrote to C{stream} with C{client_id}, or None.
        """

    def findEventId(stream, id):
        """
        Fire with the L{Event} of C{stream} whose id is C{id} (a notification id), or None.
        A notification id is stored once per inbox stream (a repeat is a L{StreamConflict});
        the ids of a conversation's events are the node's own (random), and a store need not
        index them.
        """
