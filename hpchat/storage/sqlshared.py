"""
What the two SQL event stores (SQLite and PostgreSQL) share: their reads, which differ only
in the parameter marker, how a refused batch's colliding streams are found, the event row,
and closing their two connections.

A store mixes in L{SQLReads} and gives C{marker}, C{_read(f, *args)} (run on its reader
thread) and C{_select(sql, params, reverse)} (the events of a query); every query here writes
C{?} where the store's marker goes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from twisted.internet import defer

from hpchat import strictjson
from hpchat.storage.base import Event
from hpchat.storage.conversations import ROW_COLUMNS

COLUMNS = "stream, seq, id, grp, type, sender, ts, client_id, data"
OUTBOX_COLUMNS = "id, grp, stream, seq, body, created"
# A conversation row (c) with its last message (e), for the conversation list.
LIST_COLUMNS = (", ".join(f"c.{c.strip()}" for c in ROW_COLUMNS.split(",")) + ", "
                + ", ".join(f"e.{c.strip()}" for c in COLUMNS.split(",")))


def row(values: Sequence) -> Event:
    """
    The L{Event} of a row in L{COLUMNS} order.
    """
    stream, seq, id, grp, type, sender, ts, client_id, data = values
    return Event(stream=stream, seq=seq, id=id, group=grp, type=type, sender=sender, ts=ts,
                 client_id=client_id, data=strictjson.loadsStored(data))
# Whether an event of a batch collides with a stored one: its seq, its id, or its sender's
# client_id. (The sender comparison is NULL-safe in both dialects: `IS` and
# `IS NOT DISTINCT FROM`.)
_STORED_COLLISION = (
    "SELECT 1 FROM events WHERE stream = ? AND (seq = ? OR id = ? OR "
    "(client_id IS NOT NULL AND sender {same} ? AND client_id = ?)) LIMIT 1"
)


class SQLReads:
    marker = "?"
    sameSender = "IS"

    _read: Callable[..., defer.Deferred]

    def _sql(self, text: str) -> str:
        return text if self.marker == "?" else text.replace("?", self.marker)

    def readAfter(self, stream: str, after: int, limit: int) -> defer.Deferred:
        return self._read(self._select, self._sql(
            f"SELECT {COLUMNS} FROM events WHERE stream = ? AND seq > ? "
            "ORDER BY seq ASC LIMIT ?"), (stream, after, limit), False)

    def readBefore(self, stream: str, before: int | None, limit: int) -> defer.Deferred:
        if before is None:
            before = 2**62
        return self._read(self._select, self._sql(
            f"SELECT {COLUMNS} FROM events WHERE stream = ? AND seq < ? "
            "ORDER BY seq DESC LIMIT ?"), (stream, before, limit), True)

    def findClientId(self, stream: str, sender: str, client_id: str) -> defer.Deferred:
        d = self._read(self._select, self._sql(
            f"SELECT {COLUMNS} FROM events WHERE stream = ? AND sender = ? "
            "AND client_id = ?"), (stream, sender, client_id), False)
        return d.addCallback(lambda events: events[0] if events else None)

    def findEventId(self, stream: str, id: str) -> defer.Deferred:
        d = self._read(self._select, self._sql(
            f"SELECT {COLUMNS} FROM events WHERE stream = ? AND id = ?"
            f"{self._idIndexCondition(stream)}"), (stream, id), False)
        return d.addCallback(lambda events: events[0] if events else None)

    def _idIndexCondition(self, stream: str) -> str:
        """
        More of the WHERE clause of L{findEventId} for C{stream}: the condition of a partial
        index of event ids, repeated so that the query may use it (none here).
        """
        return ""

    def _select(self, sql: str, params: tuple, reverse: bool) -> list[Event]:
        rows = self._fetchAll(sql, params)
        if reverse:
            rows.reverse()
        return [row(r) for r in rows]

    def _fetchAll(self, sql: str, params: tuple) -> list:
        """
        The rows of C{sql} on the reader connection (on the reader's thread).
        """
        raise NotImplementedError

    # -- blocks

    #: How user ids are ordered: by their bytes, in every store.
    byteOrder = ""

    def blocksOf(self, blocker: str) -> defer.Deferred:
        sql = self._sql(f"SELECT blocked FROM blocks WHERE blocker = ? ORDER BY blocked"
                        f"{self.byteOrder}")
        return self._read(lambda: [b for (b,) in self._fetchAll(sql, (blocker,))])

    def blocksBetween(self, a: str, b: str) -> defer.Deferred:
        sql = self._sql("SELECT blocker, blocked FROM blocks WHERE (blocker = ? AND blocked = ?)"
                        " OR (blocker = ? AND blocked = ?)")
        return self._read(lambda: set(self._fetchAll(sql, (a, b, b, a))))

    def blocksVersion(self) -> defer.Deferred:
        sql = "SELECT version FROM blocks_version WHERE id = 0"
        return self._read(lambda: int(self._fetchAll(sql, ())[0][0]))

    def _closeConnections(self) -> defer.Deferred:
        """
        Close the writer's and the reader's connection, each on its thread, then end both
        threads; fires once they have ended (whatever closing a connection did).
        """
        store: Any = self

        def closeWriter() -> None:
            if store._writer is not None:
                store._writer.close()
                store._writer = None

        def closeReader() -> None:
            if store._reader is not None:
                store._reader.close()
                store._reader = None

        def stopThreads(result: Any) -> defer.Deferred:
            stopped = defer.gatherResults([store._writerThread.stop(),
                                           store._readerThread.stop()])
            return stopped.addCallback(lambda _: result)

        d = store._write(closeWriter)
        d.addBoth(lambda _: store._readerThread.submit(closeReader))
        d.addBoth(stopThreads)
        return d

    def _conflicting(self, execute: Callable[[str, tuple], Any],
                     rows: Iterable[Sequence]) -> tuple[list[int], list[str]]:
        """
        The groups and streams of the events of C{rows} (in L{COLUMNS} order) that collide
        with stored events or with each other (all of the batch's groups, and no streams, if
        none is found). C{execute(sql, params)} returns a cursor on the writer's connection.
        """
        probe = self._sql(_STORED_COLLISION.format(same=self.sameSender))
        groups: set[int] = set()
        streams: set[str] = set()
        allGroups: set[int] = set()
        seen: set[tuple] = set()
        for stream, seq, id, grp, _type, sender, _ts, clientId, _data in rows:
            allGroups.add(grp)
            keys: list[tuple] = [("seq", stream, seq), ("id", stream, id)]
            if clientId is not None:
                keys.append(("client", stream, sender, clientId))
            collides = any(k in seen for k in keys)
            seen.update(keys)
            if collides or execute(probe, (stream, seq, id, sender, clientId)).fetchone():
                groups.add(grp)
                streams.add(stream)
        if not groups:
            return sorted(allGroups), []
        return sorted(groups), sorted(streams)
