"""
Conversation list benchmark: how long one node takes to answer the first page of
C{GET /v1/conversations} for a user with many conversations.

  python bench/conversations.py                     # SQLite (a temporary file on this disk)
  python bench/conversations.py --postgresql        # and PostgreSQL (a temporary server)
  python bench/conversations.py --pg-dsn "host=db dbname=bench user=hpchat"

The store is seeded directly with --conversations conversations of the measured user (one
message each, with both participants' summary rows, as the conversations' owners write them)
and --others other users with --others-conversations each, so that the table is not the
measured user's alone. Then one node's API (the real Twisted web server, streams, persister and
routes, single-node ownership) listens on 127.0.0.1, and a keep-alive HTTP client in the same
process asks --requests times, one at a time, for the first page (--limit, default 50). Latency
is from the request to the whole body read, client included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import uuid

from support import percentile, temporaryPostgres  # noqa: E402  (also puts the repo on sys.path)
from twisted.internet import defer, task  # noqa: E402

from hpchat.config import ChatConfig  # noqa: E402
from hpchat.groups import SingleNodeOwnership  # noqa: E402
from hpchat.persister import BatchPersister  # noqa: E402
from hpchat.storage.base import Event  # noqa: E402
from hpchat.storage.conversations import ConversationRow  # noqa: E402
from hpchat.streamids import conversationId, groupOf  # noqa: E402
from hpchat.streams import Streams  # noqa: E402
from hpchat.web.api import ChatAPI  # noqa: E402
from hpchat.web.auth import Authenticator  # noqa: E402
from hpchat.web.site import HPChatSite, _resources  # noqa: E402

GROUPS = 64
SECRET = b"hpchat-bench-secret-of-32-bytes-or-more"


def conversation(user: str, partner: str, ts: float) -> tuple[Event, list[ConversationRow]]:
    """
    One message from C{partner} to C{user}, and both rows as its owner writes them.
    """
    cid = conversationId(user, partner)
    group = groupOf(cid, GROUPS)
    event = Event(stream=cid, seq=1, id=uuid.uuid4().hex, group=group, type="message",
                  sender=partner, ts=ts, client_id=None, data={"text": "hi " * 20})
    rows = [ConversationRow(user=user, stream=cid, group=group, partner=partner, last_seq=1,
                            read_seq=0, partner_read_seq=1, updated=ts),
            ConversationRow(user=partner, stream=cid, group=group, partner=user, last_seq=1,
                            read_seq=1, partner_read_seq=0, updated=ts)]
    return event, rows


async def seed(store, user: str, count: int, others: int, perOther: int) -> None:
    now = time.time()
    pairs = [(user, f"{user}-p{i:05d}") for i in range(count)]
    pairs += [(f"o{o:05d}", f"o{o:05d}-p{i:04d}") for o in range(others) for i in range(perOther)]
    for start in range(0, len(pairs), 500):
        events, rows = [], []
        for n, (a, b) in enumerate(pairs[start:start + 500]):
            e, r = conversation(a, b, now - 86400 + start + n)
            events.append(e)
            rows.extend(r)
        await store.append(events, {g: 1 for g in range(GROUPS)}, conversations=rows)


async def measure(reactor, store, user: str, requests: int, limit: int) -> dict:
    import treq
    from twisted.web.client import HTTPConnectionPool

    chat = ChatConfig(groups=GROUPS, max_text_chars=4000, typing_ttl=6.0, max_poll_timeout=60.0,
                      history_in_memory=200, idle_evict=300.0)
    ownership = SingleNodeOwnership("bench", "http://127.0.0.1", GROUPS)
    persister = BatchPersister(reactor, store)
    streams = Streams(reactor, store, persister, ownership, groups=GROUPS)
    auth = Authenticator(SECRET, reactor)
    api = ChatAPI(streams, ownership, auth, store, chat, persister)
    resource, hot, cors = _resources(api, ())
    site = HPChatSite(resource, hot=hot, cors=cors, reactor=reactor,
                      parsePOSTFormSubmission=False)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=True)
    url = f"http://127.0.0.1:{port.getHost().port}/v1/conversations?limit={limit}"
    headers = {b"authorization": [b"Bearer " + auth.mint(user, 3600).encode()]}
    latencies = []
    try:
        persister.startService()
        streams.startService()
        for n in range(requests + 50):
            began = time.perf_counter()
            response = await treq.get(url, headers=headers, pool=pool)
            body = await response.content()
            took = time.perf_counter() - began
            if response.code != 200:
                raise SystemExit(f"GET /v1/conversations: {response.code} {body[:200]!r}")
            if n == 0:
                page = json.loads(body)
                assert len(page["conversations"]) == limit, page["next"]
            if n >= 50:  # the first ones warm up connections and caches
                latencies.append(took)
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()
        await streams.stopService()
        await persister.stopService()
    latencies.sort()
    return {"requests": len(latencies), "bytes": len(body),
            "p50_ms": round(percentile(latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 99) * 1000, 2),
            "max_ms": round(latencies[-1] * 1000, 2)}


async def main(reactor, args):
    from hpchat.storage.sqlite import SQLiteStore

    backends = []
    base = tempfile.mkdtemp(prefix="hpchat-bench-conv-", dir=os.getcwd())
    backends.append(("SQLite", lambda: SQLiteStore(reactor, os.path.join(base, "c.sqlite3"))))
    pgServer = None
    if args.postgresql or args.pg_dsn:
        from hpchat.storage.postgresql import PostgreSQLStore

        dsn = args.pg_dsn
        if dsn is None:
            pgServer = await temporaryPostgres()
            dsn = pgServer.dsn
        backends.append(("PostgreSQL", lambda: PostgreSQLStore(reactor, dsn)))
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; "
          f"{args.conversations} conversations of the user, {args.others} other users with "
          f"{args.others_conversations} each; first page of {args.limit}")
    try:
        for name, makeStore in backends:
            store = makeStore()
            await store.open()
            try:
                user = f"u{uuid.uuid4().hex[:8]}"
                began = time.perf_counter()
                await seed(store, user, args.conversations, args.others,
                           args.others_conversations)
                seeded = time.perf_counter() - began
                result = await measure(reactor, store, user, args.requests, args.limit)
            finally:
                await store.close()
            result.update(store=name, seed_s=round(seeded, 1))
            print(json.dumps(result))
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if pgServer is not None:
            await pgServer.cleanup()


def parse():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--others", type=int, default=200)
    parser.add_argument("--others-conversations", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--postgresql", action="store_true",
                        help="also measure a temporary PostgreSQL server of its own")
    parser.add_argument("--pg-dsn", help="also measure this PostgreSQL database")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
