#!/usr/bin/env python3
"""
The SQLite writer thread's cost per batch, by WAL checkpoint size: the node's own append
transaction (hpchat.storage.sqlite) on a new file, fed batches shaped like the chat's (10
messages, or --sizes, of 500 conversations, each with its recipient's inbox notification and both
participants' conversation rows), run on this thread: CPU time (user + system) and wall
time per batch.

  PYTHONPATH=. taskset -c 1 python bench/sqlite_writer.py [--batches 2000] [--pages 1000,3000,10000]
  PYTHONPATH=. taskset -c 1 python bench/sqlite_writer.py --pages 3000 \
      --variants current,file-journals,all-ids,before
  PYTHONPATH=. taskset -c 1 python bench/sqlite_writer.py --pages 3000 --sizes 12 \
      --variants current,no-notification-ids,no-activity-index,synchronous-normal
  PYTHONPATH=. taskset -c 1 python bench/sqlite_writer.py --pages 3000 --sizes 12 --without inbox

The file is made in --dir (default: var/ of the repository, so on the disk under test) and
removed afterwards. Rounds alternate the checkpoint sizes, batch sizes and --variants,
--rounds times. The variants put back what schema 6 changed, on top of the current code:
statement journals in a file (file-journals: temp_store=FILE), every event's id indexed
(all-ids: the index of schema 5), or both (before); or take one index away, or the fsync of
each commit (synchronous-normal, which is not durable: a reference only). --without leaves a
part of each message out of the batches (the inbox notification, both conversation rows, the
client_id), to show what that part costs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
import uuid

from hpchat import strictjson
from hpchat.storage import sqlite as S

HERE = os.path.dirname(os.path.abspath(__file__))


#: What --without can leave out of the batches, to see its share of the cost.
PARTS = ("inbox", "conversations", "client-ids")


def batches(count: int, size: int = 10, seed: int = 1,
            without: frozenset[str] = frozenset()) -> list[tuple]:
    rng = random.Random(seed)
    seqs: dict[str, int] = {}
    work = []
    for _ in range(count):
        events, rows = [], []
        for _ in range(size):
            c = rng.randrange(500)
            a, b = f"u{2 * c:05d}", f"u{2 * c + 1:05d}"
            cid = f"dm:{a}:{b}"
            seq = seqs[cid] = seqs.get(cid, 0) + 1
            mid = uuid.uuid4().hex
            now = time.time()
            events.append([cid, seq, mid, c % 64, "message", a, now,
                           None if "client-ids" in without else f"k{mid[:8]}",
                           strictjson.dumps({"text": "x" * 40})])
            if "inbox" in without:
                continue
            inbox = f"inbox:{b}"
            iseq = seqs[inbox] = seqs.get(inbox, 0) + 1
            events.append([inbox, iseq, "m." + mid, (c + 7) % 64, "message", a, now, None,
                           strictjson.dumps({"conversation": cid, "seq": seq,
                                             "preview": "x" * 40})])
            for user, partner in () if "conversations" in without else ((a, b), (b, a)):
                rows.append([user, cid, c % 64, partner, seq, seq if user == a else 0, 0, now])
        work.append((strictjson.dumps(events), {g: 1 for g in range(64)}, None,
                     strictjson.dumps(rows) if rows else None))
    return work


_FILE_JOURNALS = ["PRAGMA temp_store=FILE"]
_ALL_IDS = ["CREATE UNIQUE INDEX events_by_id ON events (stream, id)"]
VARIANTS = {
    "current": [],
    "file-journals": _FILE_JOURNALS,
    "all-ids": _ALL_IDS,
    "before": _FILE_JOURNALS + _ALL_IDS,
    # Where the time goes: one index less, or no fsync at commit (not safe: a reference).
    "no-notification-ids": ["DROP INDEX events_by_notification_id"],
    "no-activity-index": ["DROP INDEX conversations_by_activity"],
    "synchronous-normal": ["PRAGMA synchronous=NORMAL"],
}


def run(pages: int, work: list[tuple], folder: str,
        variant: str = "current") -> tuple[float, float]:
    path = os.path.join(tempfile.mkdtemp(dir=folder), "bench.sqlite3")
    try:
        db = S._connect(path)
        db.executescript(S._SCHEMA)
        S._migrate(db)
        for statement in VARIANTS[variant]:
            db.execute(statement)
        db.execute(f"PRAGMA wal_autocheckpoint={pages}")
        store = S.SQLiteStore(None, path)
        store._writer = db
        cpu, wall = time.thread_time(), time.perf_counter()
        for batch in work:
            store._appendTxn(*batch)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        db.close()
        n = len(work)
        return 1e6 * cpu / n, 1e6 * wall / n
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--batches", type=int, default=2000)
    p.add_argument("--pages", default="1000,3000,10000")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sizes", default="10", help="messages per batch, e.g. 5,10,40")
    p.add_argument("--variants", default="current", help=", ".join(VARIANTS))
    p.add_argument("--without", default="",
                   help="parts of each message left out, of: " + ", ".join(PARTS))
    p.add_argument("--dir", default=os.path.join(os.path.dirname(HERE), "var"))
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    sizes = [int(x) for x in args.sizes.split(",")]
    without = frozenset(x for x in args.without.split(",") if x)
    if not without <= set(PARTS):
        p.error(f"--without takes {', '.join(PARTS)}")
    # The same number of messages for every size.
    work = {size: batches(args.batches * 10 // size, size, without=without) for size in sizes}
    for r in range(args.rounds):
        for pages in (int(x) for x in args.pages.split(",")):
            for size in sizes:
                for variant in args.variants.split(","):
                    cpu, wall = run(pages, work[size], args.dir, variant)
                    print(f"round {r + 1}, wal_autocheckpoint={pages}, {size} per batch, "
                          f"{variant}: {cpu:.0f} us CPU, {wall:.0f} us wall per batch, "
                          f"{cpu / size:.0f} us CPU per message", flush=True)


if __name__ == "__main__":
    main()
