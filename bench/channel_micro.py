#!/usr/bin/env python3
"""
The cost of one hot request through a node's HTTP connection and its handler, in process:

  PYTHONPATH=. taskset -c 0 python bench/channel_micro.py

A connection of the node's site over a StringTransport (no sockets), the API on the test
harness's fakes; a long-poll answered at once and a typing POST, each sent 20,000 times on one
kept-alive connection, best of 5, with the cyclic collector off. Prints microseconds per request.
"""

from __future__ import annotations

import gc
import json
import time

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from hpchat.web.site import buildSite
from tests.web.fakes import Harness


def main() -> None:
    h = Harness()
    token = h.token("alice").encode()
    site = buildSite(h.api, h.clock)
    poll = (b"GET /v1/conversations/dm:alice:bob/events?timeout=0 HTTP/1.1\r\nHost: "
            b"127.0.0.1:8080\r\nAuthorization: Bearer " + token
            + b"\r\nUser-Agent: lg\r\nAccept: */*\r\n\r\n")
    body = json.dumps({"typing": True}).encode()
    typing = (b"POST /v1/conversations/dm:alice:bob/typing HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
              b"Authorization: Bearer " + token + b"\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    gc.collect()
    gc.freeze()
    gc.disable()
    connection = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    connection.makeConnection(transport)
    for name, request in (("poll answered at once", poll), ("typing POST", typing)):
        best = float("inf")
        for _ in range(5):
            n = 20000
            start = time.perf_counter()
            for _ in range(n):
                connection.dataReceived(request)
                transport.clear()
            best = min(best, (time.perf_counter() - start) / n * 1e6)
        print(f"{name}: {best:.1f} us per request (best of 5 x {n})")


if __name__ == "__main__":
    main()
