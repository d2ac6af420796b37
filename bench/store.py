"""
Event store benchmark: the seed's table (200-byte events, 10/50/100/250 concurrent writers,
one event per transaction) against our stores, and the same writers through the batch
persister.

  python bench/store.py                                   # SQLite, every cell, 5 s each
  python bench/store.py --fdb-cluster-file /etc/foundationdb/fdb.cluster   # and FoundationDB
  python bench/store.py --postgresql          # and PostgreSQL (a temporary server of its own)
  python bench/store.py --pg-dsn "host=db dbname=bench user=hpchat"          # or an existing one

Each writer owns one conversation and appends to it in a loop, one event at a time, waiting
for each to be durable: "direct" calls C{store.append([event], fences)} (one event, one
transaction), "persister" calls C{BatchPersister.enqueue} (batches of up to --batch-size,
flushed every --flush-interval) on the real reactor. Throughput counts the appends acknowledged
after a warm-up; latency is from the call to the durable acknowledgement. The SQLite file is
new for every cell and lives in --dir (default: a temporary folder in the current directory,
so on the disk under test, not a tmpfs); the FoundationDB cells use a fresh key prefix,
cleared afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid

from support import percentile, temporaryPostgres  # noqa: E402  (also puts the repo on sys.path)
from twisted.internet import defer, task  # noqa: E402

from hpchat.persister import BatchPersister  # noqa: E402
from hpchat.storage.base import Event  # noqa: E402

PAYLOAD_BYTES = 200
SEED = {10: (1000, 10), 50: (3500, 12), 100: (5000, 20), 250: (7000, 35)}


def payload() -> dict:
    # {"text":"..."} serialises to exactly PAYLOAD_BYTES bytes.
    return {"text": "x" * (PAYLOAD_BYTES - len('{"text":""}'))}


class Cell:
    """
    One measurement: C{writers} loops for C{seconds} (after C{warmup}) through C{write}.
    """

    def __init__(self, reactor, writers: int, seconds: float, warmup: float):
        self.reactor = reactor
        self.writers = writers
        self.seconds = seconds
        self.warmup = warmup
        self.latencies: list[float] = []
        self.errors = 0

    async def run(self, write) -> dict:
        data = payload()
        start = time.perf_counter()
        measureFrom = start + self.warmup
        stopAt = measureFrom + self.seconds

        async def writer(n: int):
            stream = f"dm:w{n:04d}:x{n:04d}"
            group = n % 64
            seq = 0
            while True:
                began = time.perf_counter()
                if began >= stopAt:
                    return
                seq += 1
                event = Event(stream=stream, seq=seq, id=uuid.uuid4().hex, group=group,
                              type="message", sender=f"w{n:04d}", ts=self.reactor.seconds(),
                              client_id=None, data=data)
                try:
                    await write(event)
                except Exception:
                    self.errors += 1
                    return
                done = time.perf_counter()
                if began >= measureFrom and done <= stopAt:
                    self.latencies.append(done - began)

        await defer.gatherResults([defer.ensureDeferred(writer(n))
                                   for n in range(self.writers)], consumeErrors=True)
        return {"rate": len(self.latencies) / self.seconds,
                "p50": percentile(self.latencies, 50) * 1000,
                "p99": percentile(self.latencies, 99) * 1000,
                "count": len(self.latencies), "errors": self.errors}


async def runCell(reactor, makeStore, cleanup, mode: str, writers: int, args) -> dict:
    store = makeStore(writers)
    await store.open()
    try:
        cell = Cell(reactor, writers, args.seconds, args.warmup)
        if mode == "direct":
            async def write(event):
                await store.append([event], {event.group: 1})

            return await cell.run(write)
        persister = BatchPersister(reactor, store, batchSize=args.batch_size,
                                   flushInterval=args.flush_interval, maxPending=1_000_000)
        persister.startService()
        try:
            async def write(event):
                await persister.enqueue(event, 1)

            return await cell.run(write)
        finally:
            # Not from inside the persister's own acknowledgement callbacks (where the last
            # writer finishes): stopService's drain would spin until its stopTimeout there.
            await task.deferLater(reactor, 0, lambda: None)
            await persister.stopService()
    finally:
        await cleanup(store)
        await store.close()


def machine(folder: str) -> list[str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    disk = "unknown"
    try:
        out = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", folder],
                             capture_output=True, text=True, check=False).stdout.split()
        if out:
            source, fstype = out[0], out[1] if len(out) > 1 else "?"
            name = os.path.basename(source)
            rotational = f"/sys/block/{name}/queue/rotational"
            kind = ""
            if os.path.exists(rotational):
                with open(rotational) as f:
                    kind = ", rotational" if f.read().strip() == "1" else ", non-rotational"
            disk = f"{source} ({fstype}{kind})"
    except OSError:
        pass
    return [f"machine: {os.cpu_count()} CPUs ({cpu}), disk {disk}",
            f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"]


async def main(reactor, args):
    from hpchat.storage.sqlite import SQLiteStore

    base = args.dir or tempfile.mkdtemp(prefix="hpchat-bench-store-", dir=os.getcwd())
    os.makedirs(base, exist_ok=True)
    backends = []
    counter = iter(range(1_000_000))

    def sqliteStore(writers):
        return SQLiteStore(reactor, os.path.join(base, f"cell-{next(counter)}.sqlite3"))

    async def sqliteCleanup(store):
        pass

    backends.append(("SQLite", sqliteStore, sqliteCleanup))
    if args.fdb_cluster_file:
        from hpchat.storage.fdb import FoundationDBStore

        def fdbStore(writers):
            return FoundationDBStore(reactor, args.fdb_cluster_file,
                                     keyPrefix=f"hpchat-bench-{uuid.uuid4().hex[:12]}",
                                     threads=max(16, writers))

        async def fdbCleanup(store):
            await store.clearAll()

        backends.append(("FoundationDB", fdbStore, fdbCleanup))

    pgServer = None
    if args.postgresql or args.pg_dsn:
        from hpchat.storage.postgresql import PostgreSQLStore

        dsn = args.pg_dsn
        if dsn is None:
            pgServer = await temporaryPostgres(cpus=args.pg_cpus)
            dsn = pgServer.dsn

        def pgStore(writers):
            return PostgreSQLStore(reactor, dsn)

        async def pgCleanup(store):
            await store._write(lambda: store._writer.execute("TRUNCATE events, fences"))

        backends.append(("PostgreSQL", pgStore, pgCleanup))

    rows = []
    try:
        for name, makeStore, cleanup in backends:
            for mode in args.modes:
                for writers in args.writers:
                    result = await runCell(reactor, makeStore, cleanup, mode, writers, args)
                    rows.append((name, writers, mode, result))
                    print(f"{name:12} {mode:9} {writers:4} writers: {result['rate']:9.0f}/s  "
                          f"p50 {result['p50']:7.2f} ms  p99 {result['p99']:7.2f} ms  "
                          f"errors {result['errors']}", file=sys.stderr)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
        if pgServer is not None:
            await pgServer.cleanup()

    print()
    for line in machine(base if args.dir else os.getcwd()):
        print(line)
    print(f"{PAYLOAD_BYTES}-byte events, {args.seconds:g} s per cell after {args.warmup:g} s "
          f"warm-up; persister batch_size {args.batch_size}, flush_interval "
          f"{args.flush_interval:g} s; SQLite WAL, synchronous=FULL"
          + ("; PostgreSQL fsync=on, synchronous_commit=on" if pgServer or args.pg_dsn else ""))
    print()
    print("| store | writers | mode | durable appends/s | p50 ms | p99 ms |")
    print("|---|---:|---|---:|---:|---:|")
    for name, writers, mode, r in rows:
        what = "1 event per transaction" if mode == "direct" else "batch persister"
        errors = f" ({r['errors']} errors)" if r["errors"] else ""
        print(f"| {name} | {writers} | {what} | {r['rate']:,.0f}{errors} | {r['p50']:.1f} | "
              f"{r['p99']:.1f} |")
    for writers in args.writers:
        if writers in SEED:
            rate, p99 = SEED[writers]
            print(f"| seed: FoundationDB, 2014 | {writers} | 1 event per transaction | "
                  f"{rate:,} | | {p99} |")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument("--writers", default="10,50,100,250",
                        type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--modes", default="direct,persister",
                        type=lambda v: [m for m in v.split(",") if m])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--flush-interval", type=float, default=0.005)
    parser.add_argument("--dir", help="folder for the SQLite files (kept)")
    parser.add_argument("--fdb-cluster-file", help="also run against this FoundationDB cluster")
    parser.add_argument("--postgresql", action="store_true",
                        help="also run against a temporary PostgreSQL server started here")
    parser.add_argument("--pg-cpus", help="CPUs (a taskset list) for the temporary PostgreSQL "
                                          "server, e.g. 1 with the benchmark on 0")
    parser.add_argument("--pg-dsn", help="also run against this PostgreSQL database (its "
                                         "events and fences tables are emptied per cell)")
    args = parser.parse_args(argv)
    for mode in args.modes:
        if mode not in ("direct", "persister"):
            parser.error(f"unknown mode {mode!r}")
    return args


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
