#!/usr/bin/env python3
"""
Delivery over Server-Sent Events, per core: C open conversation streams (both participants
of C/2 conversations) on one node, R messages a second sent to those conversations with
POST /v1/conversations/{cid}/messages, open loop; the latency of each delivery is its
receipt on a stream minus the send's due time.

    python bench/sse_load.py --streams 1000 --rate 1000 --rate 2000 --rate 4000

Starts a fresh node (bench/lg_node.py's, SQLite) pinned with C{--node-cpus} (default core 0)
and runs the generator's processes (asyncio, uvloop when installed) pinned with
C{--gen-cpus} (default core 1); C{--url} and C{--config} measure a running node instead. For
each rate: the streams are opened, C{--warmup} seconds of sends, then C{--duration} seconds
measured (latencies of the sends due in that window, the node's CPU over it). Prints one
JSON line per rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from lg_http import HTTPFailure, Pool, encodeRequest, parseURL  # noqa: E402
from lg_proc import cpuSeconds, raiseFdLimit, summarize  # noqa: E402


def pairs(streams: int) -> list[tuple[str, str, str]]:
    """
    (user a, user b, conversation) for C{streams} streams.
    """
    out = []
    for i in range(streams // 2):
        a, b = f"s{2 * i:06d}", f"s{2 * i + 1:06d}"
        out.append((a, b, f"dm:{a}:{b}"))
    return out


class StreamReader(asyncio.Protocol):
    """
    One event stream: its head, then chunked (or close-delimited) records; every
    C{event: message} record's text is its due time.
    """

    def __init__(self, request: bytes, worker: Worker):
        self.request = request
        self.worker = worker
        self.buf = bytearray()
        self.body = bytearray()
        self.headed = False
        self.chunked = False
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.headed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            del self.buf[:end + 4]
            if not head.startswith(b"http/1.1 200"):
                if not self.opened.done():
                    self.opened.set_exception(HTTPFailure("status", head[:40].decode()))
                self.transport.close()
                return
            self.headed = True
            self.chunked = b"transfer-encoding: chunked" in head
            self.opened.set_result(self)
        if self.chunked:
            self._unchunk()
        else:
            self.body += self.buf
            del self.buf[:]
        self._records()

    def _unchunk(self) -> None:
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            size = int(buf[:eol], 16)
            if len(buf) < eol + 2 + size + 2:
                return
            if size == 0:
                self.worker.ended += 1
                del buf[:]
                return
            self.body += buf[eol + 2:eol + 2 + size]
            del buf[:eol + 2 + size + 2]

    def _records(self) -> None:
        body = self.body
        end = body.rfind(b"\n\n")
        if end < 0:
            return
        now = time.time()
        worker = self.worker
        for record in bytes(body[:end]).split(b"\n\n"):
            if record.startswith(b"event: message"):
                data = record[record.index(b"\ndata: ") + 7:]
                due = float(json.loads(data)["text"])
                worker.received += 1
                if worker.measureFrom <= due < worker.measureTo:
                    worker.latencies.append((now - due) * 1000)
        del body[:end + 2]

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(HTTPFailure("closed"))
        self.worker.lost += 1


class Worker:
    ready: Any
    go: Any
    go_at: Any

    def __init__(self, args, slice_: list[tuple[str, str, str]], tokens: dict[str, str]):
        self.args = args
        self.slice = slice_
        self.tokens = tokens
        self.addr = parseURL(args.url)
        self.host = f"{self.addr[0]}:{self.addr[1]}"
        self.latencies: list[float] = []
        self.received = self.sent = self.errors = self.lost = self.ended = 0
        self.measureFrom = self.measureTo = 0.0
        self.lags: list[float] = []
        self.cpu = 0.0

    async def run(self, rate: float) -> dict:
        loop = asyncio.get_running_loop()
        readers = []
        for start_ in range(0, len(self.slice) if self.args.open_streams else 0, 50):
            batch = []
            for a, b, cid in self.slice[start_:start_ + 50]:
                for user in (a, b):
                    request = encodeRequest(
                        "GET", f"/v1/conversations/{cid}/stream", self.host,
                        f"Authorization: Bearer {self.tokens[user]}\r\n".encode())
                    _, reader = await loop.create_connection(
                        lambda request=request: StreamReader(request, self), *self.addr)
                    batch.append(reader.opened)
            readers += await asyncio.wait_for(asyncio.gather(*batch), 60)
        self.ready.set()
        self.go.wait()
        begin = self.go_at.value
        self.measureFrom = begin + self.args.warmup
        self.measureTo = self.measureFrom + self.args.duration
        pool = Pool(loop, self.args.connections, 10.0)
        cpu = time.process_time()
        interval = 1.0 / rate
        n = 0
        pending: set[asyncio.Future] = set()
        while True:
            due = begin + n * interval
            if due >= self.measureTo:
                break
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            a, b, cid = self.slice[n % len(self.slice)]
            sender = a if (n // len(self.slice)) % 2 == 0 else b
            task = loop.create_task(self._send(pool, cid, sender, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        if pending:
            await asyncio.wait(pending, timeout=10)
        self.cpu = (time.process_time() - cpu) / (time.time() - begin)
        # The last deliveries.
        await asyncio.sleep(1.0)
        lost = self.lost
        for reader in readers:
            reader.transport.close()
        pool.closeAll()
        return {"latencies": self.latencies, "received": self.received, "sent": self.sent,
                "errors": self.errors, "lost": lost, "ended": self.ended, "lags": self.lags,
                "cpu": self.cpu}

    async def _send(self, pool: Pool, cid: str, sender: str, due: float) -> None:
        body = json.dumps({"text": repr(due)}).encode()
        data = encodeRequest("POST", f"/v1/conversations/{cid}/messages", self.host,
                             f"Authorization: Bearer {self.tokens[sender]}\r\n".encode(), body)
        if self.measureFrom <= due < self.measureTo:
            self.lags.append((time.time() - due) * 1000)
        try:
            conn = await pool.acquire(self.addr)
        except HTTPFailure:
            self.errors += 1
            return
        try:
            response = await conn.request(data, 10.0)
        except HTTPFailure:
            self.errors += 1
            return
        finally:
            pool.release(conn)
        if response.status == 201:
            self.sent += 1
        else:
            self.errors += 1


def work(args, slice_, tokens, rate, ready, go, goAt, results) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    raiseFdLimit()
    worker = Worker(args, slice_, tokens)
    worker.ready, worker.go, worker.go_at = ready, go, goAt
    try:
        results.put(asyncio.run(worker.run(rate)))
    except Exception as e:
        results.put({"failed": repr(e)})
        ready.set()


def measureRate(args, nodePid: int | None, everyPair, tokens, rate: float) -> dict:
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    go = ctx.Event()
    goAt = ctx.Value("d", 0.0)
    procs, readies = [], []
    for i in range(args.procs):
        ready = ctx.Event()
        p = ctx.Process(target=work, args=(args, everyPair[i::args.procs], tokens,
                                           rate / args.procs, ready, go, goAt, results))
        p.start()
        procs.append(p)
        readies.append(ready)
    for ready in readies:
        if not ready.wait(120):
            raise SystemExit("sse_load: the streams did not open within 120 s")
    goAt.value = time.time() + 0.5
    go.set()
    time.sleep(0.5)
    cpuGo = cpuSeconds(nodePid) if nodePid else None
    time.sleep(max(0.0, goAt.value + args.warmup - time.time()))
    cpu0 = cpuSeconds(nodePid) if nodePid else None
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    time.sleep(args.duration)
    cpu1 = cpuSeconds(nodePid) if nodePid else None
    outs = [results.get(timeout=60) for _ in procs]
    cpu2 = cpuSeconds(nodePid) if nodePid else None
    for p in procs:
        p.join(30)
    failed = [o["failed"] for o in outs if "failed" in o]
    if failed:
        raise SystemExit(f"sse_load: a worker failed: {failed[0]}")
    latencies = [x for o in outs for x in o["latencies"]]
    return {"streams": len(everyPair) * 2 if args.open_streams else 0, "rate": rate,
            "duration": args.duration,
            "sent": sum(o["sent"] for o in outs), "errors": sum(o["errors"] for o in outs),
            "delivered": sum(o["received"] for o in outs),
            "delivered_per_s_measured": round(len(latencies) / args.duration, 1),
            "streams_lost": sum(o["lost"] for o in outs),
            "latency_ms": summarize(latencies),
            "send_lag_ms": summarize([x for o in outs for x in o["lags"]]),
            "generator_cpu": [round(o["cpu"], 3) for o in outs],
            "node_cpu": round((cpu1 - cpu0) / args.duration, 3) if cpu0 is not None
            and cpu1 is not None else None,
            # All of the node's CPU from the first send to the last delivery, per message.
            "node_cpu_ms_per_msg": round((cpu2 - cpuGo) * 1000 / max(1, sum(
                o["sent"] for o in outs)), 3) if cpuGo is not None and cpu2 is not None
            else None,
            "load_average_1m": float(load)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--rate", type=float, action="append", help="messages a second (repeat)")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--procs", type=int, default=2, help="generator processes")
    p.add_argument("--connections", type=int, default=64,
                   help="keep-alive connections for sends, per generator process")
    p.add_argument("--node-cpus", default="0", help="taskset list for the node ('' : none)")
    p.add_argument("--gen-cpus", default="1", help="CPUs of the generator ('' : any)")
    p.add_argument("--no-streams", dest="open_streams", action="store_false",
                   help="send without opening the streams (the cost of sending alone)")
    p.add_argument("--url", help="a running node instead of a fresh one")
    p.add_argument("--config", help="its ini (for the [auth] secret)")
    p.add_argument("--node-pid", type=int, help="its pid (for its CPU)")
    args = p.parse_args()
    rates = args.rate or [1000.0]
    raiseFdLimit()
    if args.gen_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.gen_cpus.split(",")})
    import jwt

    from hpchat.config import loadConfig

    everyPair = pairs(args.streams)

    def run(url: str, ini: str, pid: int | None) -> None:
        args.url = url
        secret = loadConfig(ini).auth.secret
        exp = int(time.time()) + 3600
        tokens = {u: jwt.encode({"sub": u, "exp": exp}, secret, algorithm="HS256")
                  for a, b, _ in everyPair for u in (a, b)}
        for rate in rates:
            print(json.dumps(measureRate(args, pid, everyPair, tokens, rate)), flush=True)

    if args.url:
        run(args.url, args.config, args.node_pid)
        return 0
    from lg_node import Node

    wrapper = ["taskset", "-c", args.node_cpus] if args.node_cpus else []
    with Node(["chat.stream_heartbeat=15"], wrapper=wrapper) as node:
        sys.stderr.write(f"sse_load: node pid {node.pid} at {node.url}\n")
        run(node.url, node.ini, node.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
