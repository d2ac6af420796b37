#!/usr/bin/env python3
"""
The node's work for one delivered message, in process and without sockets:

  PYTHONPATH=. taskset -c 0 python bench/deliver_micro.py [--pairs 50] [--rounds 200]

Two users per conversation, each with a long-poll waiting on a connection of the node's site
(over a StringTransport); each round, one message per conversation is sent on a third
connection, the persister's batch is written (the in-memory store of the test harness), both
participants' polls are answered and both poll again. That is the node's whole path for a
message (send: parse, auth, route, append, commit; two poll answers; two re-polls; the inbox
notification), without the kernel's share. Best of 5, cyclic collector off; prints
microseconds of CPU per delivered message.

Two parts of the test harness that cost far more than their counterparts in a node are made
cheap here: its Clock sorts all its calls at every callLater (the reactor keeps a heap), and
its in-memory store scans every stored event at each append (SQLite does that work on the
writer thread); the store here only checks the fences.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from hpchat.web.site import buildSite
from tests.fakes import MemoryEventStore
from tests.web.fakes import FLUSH, Harness


def _callLater(self: task.Clock, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
    dc = task.DelayedCall(self.seconds() + delay, f, args, kw, self.calls.remove,
                          lambda c: None, self.seconds)
    bisect.insort(self.calls, dc, key=lambda c: c.getTime())
    return dc


class _AppendOnly(MemoryEventStore):
    def append(self, events: Any, fences: Any, outbox: Any = (), conversations: Any = ()
               ) -> defer.Deferred:
        rejected = self._rejected(fences)
        if rejected:
            return defer.fail(ValueError(f"fenced: {rejected}"))
        return defer.succeed(None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    task.Clock.callLater = _callLater  # type: ignore[method-assign, assignment]
    h = Harness(max_poll_timeout=3600.0, batchSize=1000, store=_AppendOnly())
    site = buildSite(h.api, h.clock)

    def connect() -> tuple:
        connection = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        connection.makeConnection(transport)
        return connection, transport

    def head(method: str, path: str, token: bytes, extra: bytes = b"") -> bytes:
        return (b"%s %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer %s\r\n"
                b"User-Agent: lg\r\nAccept: */*\r\n%s\r\n" % (method.encode(), path.encode(),
                                                               token, extra))

    users = []
    for i in range(args.pairs):
        a, b = f"a{i:04d}", f"b{i:04d}"
        cid = f"dm:{a}:{b}"
        for user in (a, b):
            token = h.token(user).encode()
            connection, transport = connect()
            users.append({"cid": cid, "token": token, "c": connection, "t": transport,
                          "after": 0, "user": user})
    senders = [connect() for _ in range(args.pairs)]

    def poll(u: dict) -> None:
        u["c"].dataReceived(head("GET", f"/v1/conversations/{u['cid']}/events?timeout=3000"
                                 f"&after={u['after']}", u["token"]))

    for u in users:
        poll(u)
    n = 0
    best = float("inf")
    gc.collect()
    gc.freeze()
    gc.disable()
    for _ in range(5):
        start = time.process_time()
        for _ in range(args.rounds):
            for i, (connection, transport) in enumerate(senders):
                u = users[2 * i]
                n += 1
                body = json.dumps({"text": f"lg c{n} 1700000000.0", "client_id": f"c{n}"}
                                  ).encode()
                connection.dataReceived(
                    head("POST", f"/v1/conversations/{u['cid']}/messages", u["token"],
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                         % len(body)) + body)
            h.clock.advance(FLUSH)
            for connection, transport in senders:
                if b" 201 " not in transport.value()[:16]:
                    raise SystemExit(f"send failed: {transport.value()[:300]!r}")
                transport.clear()
            for u in users:
                answer = u["t"].value()
                if not answer:
                    raise SystemExit("a poll was not answered")
                u["after"] = json.loads(answer.partition(b"\r\n\r\n")[2])["last_seq"]
                u["t"].clear()
                poll(u)
        elapsed = time.process_time() - start
        best = min(best, elapsed / (args.rounds * args.pairs) * 1e6)
    print(f"delivered message (send + 2 poll answers + 2 re-polls): {best:.1f} us "
          f"(best of 5 x {args.rounds * args.pairs})")


if __name__ == "__main__":
    main()
