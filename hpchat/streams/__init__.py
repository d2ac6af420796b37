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

The parts, one module each:

  - L{hpchat.streams.state}: one stream's state and its log in memory (L{Stream});
  - L{hpchat.streams.waiters}: the long-poll waiters, in the shape of Synapse's notifier;
  - L{hpchat.streams.appends}: the append pipeline (sends, notifications, typing, dedupe);
  - L{hpchat.streams.readmarkers}: the read markers of conversations;
  - L{hpchat.streams.service}: L{Streams}, the facade the API uses, which loads and evicts
    streams and is composed of the others.

This package knows nothing of HTTP, etcd or NSQ.
"""

from hpchat.streams.service import TRIM_BATCH, Streams
from hpchat.streams.state import MAX_EVENTS_PER_POLL, CursorAhead, Stream, StreamUnavailable
from hpchat.streams.waiters import PollResult

__all__ = ["MAX_EVENTS_PER_POLL", "TRIM_BATCH", "CursorAhead", "PollResult", "Stream",
           "Streams", "StreamUnavailable"]
