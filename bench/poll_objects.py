#!/usr/bin/env python3
"""
What a waiting long-poll keeps alive for the garbage collector, in process:

  PYTHONPATH=. python bench/poll_objects.py [--polls 1000]

Opens --polls long-polls (one per conversation, each on its own connection of the node's
site over a StringTransport, as in bench/deliver_micro.py), lets them wait, and prints the
objects the collector tracks per waiting poll (its stream, loaded for it, included), by
type, and the callbacks on a waiting poll's Deferred. Every tracked object of a waiting poll
is visited by each collection of the generation it is in, and most of them stay for the
poll's whole wait.
"""

from __future__ import annotations

import argparse
import gc
import types
import warnings
from collections import Counter

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from bench.deliver_micro import _AppendOnly, _callLater
from hpchat.web.site import buildSite
from tests.web.fakes import Harness


def _name(f) -> str:
    return getattr(f, "__qualname__", type(f).__qualname__)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--polls", type=int, default=1000)
    args = parser.parse_args()
    task.Clock.callLater = _callLater  # type: ignore[method-assign, assignment]
    h = Harness(max_poll_timeout=3600.0, batchSize=1000, store=_AppendOnly())
    site = buildSite(h.api, h.clock)
    polls = []
    for i in range(args.polls):
        connection = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        connection.makeConnection(StringTransport())
        polls.append((connection, h.token(f"a{i:05d}").encode(), f"dm:a{i:05d}:b{i:05d}"))
    gc.collect()
    before = Counter(type(o).__qualname__ for o in gc.get_objects())
    for connection, token, cid in polls:
        connection.dataReceived(
            b"GET /v1/conversations/%s/events?timeout=3000&after=0 HTTP/1.1\r\n"
            b"Host: 127.0.0.1:8080\r\nAuthorization: Bearer %s\r\n\r\n" % (cid.encode(), token))
    h.clock.advance(0.01)
    if h.waiters() != args.polls:
        raise SystemExit(f"{h.waiters()} polls wait, not {args.polls}")
    gc.collect()
    new = Counter(type(o).__qualname__ for o in gc.get_objects()) - before
    print(f"tracked objects per waiting poll: {sum(new.values()) / args.polls:.1f}")
    for kind, count in new.most_common(16):
        print(f"  {count / args.polls:6.2f} {kind}")
    closures = Counter(f.__qualname__ for f in gc.get_objects()
                       if isinstance(f, types.FunctionType) and f.__closure__)
    print("closures alive:", ", ".join(f"{k} x{v}" for k, v in closures.most_common(4)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        chains = Counter(
            tuple(f"{_name(cb[0][0])} / {_name(cb[1][0])}" for cb in d.callbacks)
            for d in gc.get_objects() if isinstance(d, defer.Deferred) and d.callbacks)
    chain, count = chains.most_common(1)[0]
    print(f"callbacks of the {count} waiting polls' Deferreds: " + "; ".join(chain))


if __name__ == "__main__":
    main()
