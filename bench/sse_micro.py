#!/usr/bin/env python3
"""
The cost of delivering over event streams, in process:

  PYTHONPATH=. taskset -c 0 python bench/sse_micro.py [--streams 1000]

The API on the test harness's fakes, its site's connections over StringTransports (no
sockets): C{--streams} conversation streams open (both participants of half as many
conversations), then one message committed in each conversation per round, 20 rounds, best
of 5, the cyclic collector off (and the test Clock's timers kept in order by bisection, not
sorted on each call). The time of a round (the commits, the wakes, the records
written) is printed per delivery, for streams on the hot path, the same streams through
twisted.web requests and Klein (the site without its hot routes for them), and with no
streams open (what the commits cost alone). Also the memory the open streams hold
(tracemalloc, per stream, connection included).
"""

from __future__ import annotations

import argparse
import bisect
import gc
import time
import tracemalloc

from twisted.internet import base
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from tests.web.fakes import GENEROUS, Harness


def _callLater(clock, delay, callable, *args, **kw):
    # Clock.callLater sorts all its calls each time (a thousand waiters' timers): in order
    # by bisection instead, as the reactor's heap would be cheap.
    call = base.DelayedCall(clock.seconds() + delay, callable, args, kw, clock.calls.remove,
                            lambda c: None, clock.seconds)
    bisect.insort(clock.calls, call, key=lambda c: c.getTime())
    return call


def run(kind: str, streams: int, rounds: int = 20, repeats: int = 5) -> tuple[float, float]:
    h = Harness(limits=GENEROUS)
    h.clock.callLater = _callLater.__get__(h.clock)
    if kind == "web":
        # The hot routes leave the streams to Klein.
        hot = h.site.hot
        hot._streamed = {hot._api.eventStreams.hotConversation,
                         hot._api.eventStreams.hotInbox}
        del hot._conversation[(b"GET", b"stream")]
        del hot._conversation[(b"HEAD", b"stream")]
    conversations = [(f"u{2 * i:05d}", f"u{2 * i + 1:05d}") for i in range(streams // 2)]
    for a, b in conversations:
        h.token(a), h.token(b)
    transports = []
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    if kind != "none":
        for a, b in conversations:
            for user in (a, b):
                connection = h.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
                transport = StringTransport()
                connection.makeConnection(transport)
                connection.dataReceived(
                    f"GET /v1/conversations/dm:{a}:{b}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {h.token(user)}\r\nAccept: text/event-stream\r\n"
                    f"\r\n".encode())
                transports.append(transport)
        assert len(h.api.eventStreams) == streams, len(h.api.eventStreams)
    gc.collect()
    held = (tracemalloc.get_traced_memory()[0] - before) / max(1, streams)
    tracemalloc.stop()
    gc.disable()
    best = float("inf")
    for _ in range(repeats):
        elapsed = 0.0
        for r in range(rounds):
            for a, b in conversations:
                h.streams.send(f"dm:{a}:{b}", a if r % 2 else b, "hello there", None)
            start = time.perf_counter()
            # The persister's flush: the commits, and every wake they cause.
            h.clock.advance(0.005)
            h.clock.advance(0.005)
            elapsed += time.perf_counter() - start
            for transport in transports:
                transport.clear()
        best = min(best, elapsed / (rounds * len(conversations)))
    gc.enable()
    return best * 1e6, held


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--streams", type=int, default=1000)
    args = p.parse_args()
    alone, _ = run("none", args.streams)
    print(f"no streams: {alone:.1f} us per message committed")
    for kind, label in (("web", "twisted.web + Klein"), ("hot", "hot path")):
        cost, held = run(kind, args.streams)
        print(f"{label}: {cost:.1f} us per message committed, "
              f"{(cost - alone) / 2:.1f} us per delivery (2 per message) beyond the commit; "
              f"{held / 1024:.1f} KiB traced per open stream")


if __name__ == "__main__":
    main()
