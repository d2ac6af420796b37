#!/usr/bin/env python3
"""
Load generator for hpchat: C users in one-to-one conversations (pairs) keep long-polls open,
senders post R messages per second in total, and the delivery latency is measured.

  python bench/loadgen.py --url http://127.0.0.1:8080 --config etc/hpchat.ini \\
      --clients 1000 --rate 100 --duration 30

Each user keeps a long-poll open on its conversation (GET /v1/conversations/{cid}/events,
re-polled with the returned last_seq) and, with --inbox, on its inbox. Senders post R messages
per second in total (open loop: on a fixed schedule, whatever the answers) to random
conversations, each from one of its two participants, with a unique client_id.

Delivery latency is the time from a send's scheduled start to the arrival of the partner's
poll answer holding that message (matched by client_id; both participants of a pair live in
the same worker process, so one monotonic clock serves both ends).

The connections are spread over several worker processes (asyncio, uvloop when installed, one
keep-alive HTTP/1.1 connection per long-poll and a small pool per worker for the sends; no
thread per client), at most --max-conns-per-proc each, because a process here may hold at most
20,000 open files. Each worker raises its RLIMIT_NOFILE soft limit to the hard limit.

Phases: ramp up the polls at --ramp-rate connections/s, wait until the node(s) report the
waiting polls, send for --warmup seconds, measure for --duration seconds, stop sending and
let the last deliveries arrive for --grace seconds. The result is one JSON line on stdout
(also appended to --json-out) and a human summary on stderr.

Node figures come from /proc of the node processes (--node-pid, or found by the listening
port): CPU% over the measured window, RSS, open files and fd limit; and from /metrics:
hpchat_waiting_polls, committed messages, requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import lg_proc  # noqa: E402
import lg_sse  # noqa: E402
from lg_http import HTTPFailure, Pool, connect, encodeRequest, parseURL  # noqa: E402

perf = time.perf_counter


def installLoop(kind: str) -> str:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise SystemExit("loadgen: --loop uvloop but uvloop is not installed")
            return "asyncio"
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    return "asyncio"


# ---------------------------------------------------------------------------------------------
# worker process


class User:
    __slots__ = ("idx", "name", "auth", "entry", "cid", "partner", "connect")

    def __init__(self, idx, name, auth, entry):
        self.idx = idx
        self.name = name
        self.auth = auth
        self.entry = entry
        self.cid = ""
        self.partner = None
        self.connect = ""  # Centrifugo: the uni_sse path with its connection token


class Worker:
    def __init__(self, spec: dict):
        import jwt

        self.spec = spec
        self.wid = spec["wid"]
        self.target = spec.get("target", "hpchat")
        self.nchan = self.target == "nchan"
        self.centrifugo = self.target == "centrifugo"
        self.apiKey = f"X-API-Key: {spec.get('api_key') or ''}\r\n".encode()
        self.loop = asyncio.get_event_loop()
        self.entries = [tuple(e) for e in spec["entries"]]
        self.pollTimeout = spec["poll_timeout"]
        self.inbox = spec["inbox"]
        self.localHosts = spec["local_hosts"] or [None]
        self.rng = random.Random(spec["seed"])
        secret = spec["secret"].encode()
        exp = int(time.time()) + spec["token_ttl"]
        self.users: list[User] = []
        for pair in range(spec["pair_lo"], spec["pair_hi"]):
            a = self._user(2 * pair, jwt, secret, exp)
            b = self._user(2 * pair + 1, jwt, secret, exp)
            a.cid = b.cid = f"dm:{a.name}:{b.name}"
            a.partner, b.partner = b, a
            if self.centrifugo:
                for u in (a, b):
                    u.connect = centrifugoConnectPath(jwt, secret, exp, u.name, u.cid)
            self.users += [a, b]
        self.npairs = len(self.users) // 2
        self.owner: dict[str, tuple] = {}  # stream -> (host, port) of its owner, from 307s
        self.pool = Pool(self.loop, spec["send_conns"], spec["connect_timeout"], self.localHosts)
        self.pollConns: set = set()
        self._nextLocal = 0
        self.running = True
        self.sending = False
        self.measuring = False
        self.tasks: list[asyncio.Task] = []
        # counters
        self.firstSent = 0
        self.outstanding = 0
        self.pollAnswers = 0
        self.pollEmpty = 0
        self.redirects = 0
        self.sent = 0
        self.acked = 0
        self.inflight = 0
        self.errors: dict[str, int] = {}
        self.errorsWindow: dict[str, int] = {}
        self.pending: dict[str, list] = {}
        self.lat: list[float] = []
        self.inboxLat: list[float] = []
        self.ackLat: list[float] = []
        self.windowSent = 0
        self.windowSkipped = 0
        self.sendTasks: set[asyncio.Task] = set()
        self.windowAcked = 0        # acks of sends started in the window
        self.windowAckedByTime = 0  # acks that arrived in the window
        self.undelivered = 0
        self.duplicates = 0
        self.unmatched = 0
        self.cpuStart = None
        self.cpuWindow = None
        self.outstandingSamples: list[int] = []

    def _user(self, idx, jwt, secret, exp) -> User:
        name = f"{self.spec['prefix']}{idx:06d}"
        if self.spec.get("target") in ("nchan", "centrifugo"):  # no hpchat token
            return User(idx, name, b"", self.entries[idx % len(self.entries)])
        token = jwt.encode({"sub": name, "exp": exp}, secret, algorithm="HS256")
        if isinstance(token, bytes):
            token = token.decode()
        auth = f"Authorization: Bearer {token}\r\n".encode()
        return User(idx, name, auth, self.entries[idx % len(self.entries)])

    # -- bookkeeping

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.measuring:
            self.errorsWindow[kind] = self.errorsWindow.get(kind, 0) + 1

    def localHost(self):
        host = self.localHosts[self._nextLocal % len(self.localHosts)]
        self._nextLocal += 1
        return host

    @staticmethod
    def hostHeader(addr) -> str:
        return f"{addr[0]}:{addr[1]}"

    def followRedirect(self, stream: str, response) -> bool:
        location = response.headers.get(b"location")
        if not location:
            self.error("redirect_without_location")
            return False
        try:
            self.owner[stream] = parseURL(location.decode("latin-1"))
        except ValueError:
            self.error("redirect_bad_location")
            return False
        self.redirects += 1
        return True

    @staticmethod
    def errorCode(response) -> str:
        try:
            return json.loads(response.body)["error"]["code"]
        except Exception:
            return "?"

    # -- polls

    async def backOff(self, backoff: float) -> float:
        """
        Wait about C{backoff} seconds (jittered); the next, doubled delay (at most 5 s).
        """
        await asyncio.sleep(backoff * (0.5 + self.rng.random()))
        return min(5.0, backoff * 2)

    async def pollConnection(self, conn, addr, prefix: str, backoff: float):
        """
        C{(connection, backoff)}: C{conn} while it is open to C{addr}, else a new one. The
        connection is C{None} after a failed attempt (once backed off) or when the run ended.
        """
        if conn is not None and not conn.closed and conn.addr == addr:
            return conn, backoff
        if conn is not None:
            conn.close()
            self.pollConns.discard(conn)
        try:
            conn = await connect(self.loop, addr, self.spec["connect_timeout"], self.localHost())
        except HTTPFailure as e:
            self.error(prefix + e.kind)
            return None, await self.backOff(backoff)
        if not self.running:
            conn.close()
            return None, backoff
        self.pollConns.add(conn)
        return conn, backoff

    async def pollLoop(self, user: User, inbox: bool) -> None:
        if self.nchan:
            return await self.nchanPollLoop(user)
        if self.target in lg_sse.STREAM_TARGETS:
            return await lg_sse.streamLoop(self, user)
        timeout = self.pollTimeout
        if inbox:
            stream = f"inbox:{user.name}"
            base = f"/v1/inbox/events?timeout={timeout:g}"
        else:
            stream = user.cid
            base = f"/v1/conversations/{user.cid}/events?timeout={timeout:g}"
        prefix = "inbox_" if inbox else "poll_"
        after = None
        conn = None
        hops = 0
        first = True
        backoff = 0.25
        while self.running:
            addr = self.owner.get(stream, user.entry)
            conn, backoff = await self.pollConnection(conn, addr, prefix, backoff)
            if conn is None:
                continue
            path = base if after is None else f"{base}&after={after}"
            data = encodeRequest("GET", path, self.hostHeader(addr), user.auth)
            self.outstanding += 1
            if first:
                first = False
                self.firstSent += 1
            try:
                response = await conn.request(data, timeout + 15.0)
            except HTTPFailure as e:
                self.outstanding -= 1
                if self.running:
                    self.error(prefix + e.kind)
                    backoff = await self.backOff(backoff)
                conn = None
                continue
            self.outstanding -= 1
            now = perf()
            status = response.status
            if status == 200:
                hops = 0
                backoff = 0.25
                body = json.loads(response.body)
                after = body["last_seq"]
                events = body["events"]
                self.pollAnswers += 1
                if events:
                    self.delivered(user, events, now, inbox)
                else:
                    self.pollEmpty += 1
            elif status == 307:
                hops += 1
                if hops > 5 or not self.followRedirect(stream, response):
                    self.error(prefix + "redirect_loop")
                    await asyncio.sleep(1.0)
                    hops = 0
            elif status == 409:
                self.error(prefix + "http_409_cursor_ahead")
                after = None
            else:
                self.error(f"{prefix}http_{status}_{self.errorCode(response)}")
                retry = response.headers.get(b"retry-after", b"1")
                try:
                    delay = min(10.0, float(retry))
                except ValueError:
                    delay = 1.0
                await asyncio.sleep(delay * (0.5 + self.rng.random()))
        if conn is not None:
            conn.close()

    async def nchanPollLoop(self, user: User) -> None:
        """
        Nchan's long-poll protocol: GET /sub/<cid>; each 200 carries one message with
        Last-Modified and Etag, sent back as If-Modified-Since and If-None-Match on the next
        poll; 304 or 408 when the subscriber timeout passes without a message.
        """
        path = f"/sub/{user.cid}"
        cursor = b""
        conn = None
        first = True
        backoff = 0.25
        prefix = "poll_"
        while self.running:
            addr = user.entry
            conn, backoff = await self.pollConnection(conn, addr, prefix, backoff)
            if conn is None:
                continue
            data = encodeRequest("GET", path, self.hostHeader(addr), cursor)
            self.outstanding += 1
            if first:
                first = False
                self.firstSent += 1
            try:
                response = await conn.request(data, self.pollTimeout + 15.0)
            except HTTPFailure as e:
                self.outstanding -= 1
                if self.running:
                    self.error(prefix + e.kind)
                    backoff = await self.backOff(backoff)
                conn = None
                continue
            self.outstanding -= 1
            now = perf()
            status = response.status
            if status == 200:
                backoff = 0.25
                h = response.headers
                cursor = (b"If-Modified-Since: " + h.get(b"last-modified", b"") +
                          b"\r\nIf-None-Match: " + h.get(b"etag", b"") + b"\r\n")
                self.pollAnswers += 1
                try:
                    event = json.loads(response.body)
                except ValueError:
                    self.unmatched += 1
                    continue
                self.delivered(user, [event], now, False)
            elif status in (304, 408):
                self.pollAnswers += 1
                self.pollEmpty += 1
            else:
                self.error(f"{prefix}http_{status}")
                await asyncio.sleep(1.0 * (0.5 + self.rng.random()))
        if conn is not None:
            conn.close()

    def delivered(self, user: User, events: list, now: float, inbox: bool) -> None:
        slot = 3 if inbox else 2
        for event in events:
            if inbox:
                if event.get("type") != "message":
                    continue
                preview = (event.get("data") or {}).get("preview") or ""
                if not preview.startswith("lg "):
                    self.unmatched += 1
                    continue
                clientId = preview.split(" ", 2)[1]
            else:
                if event.get("sender") == user.name:
                    continue  # one's own message, echoed to one's own poll
                clientId = event.get("client_id")
            record = self.pending.get(clientId)
            if record is None:
                self.unmatched += 1
                continue
            if record[slot]:
                self.duplicates += 1
                continue
            record[slot] = True
            if record[1]:
                (self.inboxLat if inbox else self.lat).append((now - record[0]) * 1000.0)
            if record[2] and record[3] and record[4] is not None:
                del self.pending[clientId]

    # -- sends

    async def sendLoop(self, rate: float) -> None:
        if rate <= 0 or not self.npairs:
            return
        start = perf()
        n = 0
        maxInflight = self.spec["max_inflight"]
        while self.sending:
            # Send n is due at start + n / rate; the latency counts from then (open loop).
            due = int((perf() - start) * rate) + 1
            while n < due and self.sending:
                scheduled = start + n / rate
                n += 1
                if self.inflight >= maxInflight:
                    self.error("send_skipped_inflight_cap")
                    if self.measuring:
                        self.windowSkipped += 1
                    continue
                task = self.loop.create_task(self.sendOne(scheduled))
                self.sendTasks.add(task)
                task.add_done_callback(self.sendTasks.discard)
            await asyncio.sleep(0.002)

    async def sendOne(self, scheduled: float) -> None:
        pair = self.rng.randrange(self.npairs)
        sender = self.users[2 * pair + self.rng.getrandbits(1)]
        self.sent += 1
        clientId = f"w{self.wid}n{self.sent}"
        measured = self.measuring
        if measured:
            self.windowSent += 1
        # [scheduled start, measured, delivered to the partner's poll, to its inbox, acked]
        record = [scheduled, measured, False, not self.inbox, None]
        self.pending[clientId] = record
        if self.nchan:
            # What the partner's poll gets back is this body as published.
            body = json.dumps({"text": f"lg {clientId} {time.time():.6f}",
                               "client_id": clientId, "sender": sender.name}).encode()
            path = f"/pub/{sender.cid}"
        elif self.centrifugo:
            # Centrifugo's HTTP API; the partner's stream gets "data" back as published.
            body = json.dumps({"channel": sender.cid, "data": {
                "text": f"lg {clientId} {time.time():.6f}", "client_id": clientId,
                "sender": sender.name}}).encode()
            path = "/api/publish"
        else:
            body = json.dumps({"text": f"lg {clientId} {time.time():.6f}",
                               "client_id": clientId}).encode()
            path = f"/v1/conversations/{sender.cid}/messages"
        self.inflight += 1
        try:
            for _hop in range(6):
                addr = self.owner.get(sender.cid, sender.entry)
                try:
                    conn = await self.pool.acquire(addr)
                except HTTPFailure as e:
                    self.error("send_" + e.kind)
                    self.pending.pop(clientId, None)
                    return
                try:
                    response = await conn.request(
                        encodeRequest("POST", path, self.hostHeader(addr),
                                      self.apiKey if self.centrifugo else sender.auth, body),
                        self.spec["send_timeout"])
                except HTTPFailure as e:
                    self.pool.release(conn)
                    self.error("send_" + e.kind)
                    self.pending.pop(clientId, None)
                    return
                self.pool.release(conn)
                status = response.status
                if self.centrifugo and status == 200 and b'"error"' in response.body:
                    status = 502  # the API answers its errors with 200 and an error object
                if status in (200, 201) or (status == 202 and self.nchan):
                    now = perf()
                    self.acked += 1
                    record[4] = now
                    if measured:
                        self.windowAcked += 1
                        self.ackLat.append((now - scheduled) * 1000.0)
                    if self.measuring:
                        self.windowAckedByTime += 1
                    if record[2] and record[3]:
                        self.pending.pop(clientId, None)
                    return
                if status == 307:
                    if not self.followRedirect(sender.cid, response):
                        break
                    continue
                self.error(f"send_http_{status}_{self.errorCode(response)}")
                self.pending.pop(clientId, None)
                return
            self.error("send_redirect_loop")
            self.pending.pop(clientId, None)
        finally:
            self.inflight -= 1

    async def sweeper(self) -> None:
        """
        Forget sends older than a minute that never arrived (counted as undelivered).
        """
        while self.running:
            await asyncio.sleep(5.0)
            cutoff = perf() - 60.0
            for clientId, record in list(self.pending.items()):
                if record[0] < cutoff:
                    del self.pending[clientId]
                    if record[1] and record[4] is not None:
                        self.undelivered += 1
            if self.measuring:
                self.outstandingSamples.append(self.outstanding)

    # -- phases

    async def ramp(self) -> None:
        rate = max(1.0, self.spec["ramp_rate"])
        order = [(u, False) for u in self.users]
        if self.inbox:
            order += [(u, True) for u in self.users]
        start = perf()
        for k, (user, inbox) in enumerate(order):
            delay = start + k / rate - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            if not self.running:
                return
            self.tasks.append(self.loop.create_task(self.pollLoop(user, inbox)))
        deadline = perf() + 60.0
        while self.firstSent < len(order) and perf() < deadline:
            await asyncio.sleep(0.05)
        self.emit({"ev": "ramped", "polls": len(order), "first_sent": self.firstSent,
                   "ramp_s": round(perf() - start, 2)})

    def status(self) -> dict:
        return {"ev": "status", "wid": self.wid, "outstanding": self.outstanding,
                "first_sent": self.firstSent, "sent": self.sent, "acked": self.acked,
                "inflight": self.inflight, "errors": sum(self.errors.values()),
                "poll_conns": len(self.pollConns), "send_conns": self.pool.openCount()}

    def report(self) -> dict:
        undeliveredEnd = sum(1 for r in self.pending.values()
                             if r[1] and r[4] is not None and not (r[2] and r[3]))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"ev": "report", "wid": self.wid, "users": len(self.users),
                "lat": [round(x, 3) for x in self.lat],
                "inbox_lat": [round(x, 3) for x in self.inboxLat],
                "ack_lat": [round(x, 3) for x in self.ackLat],
                "window_sent": self.windowSent, "window_skipped": self.windowSkipped,
                "window_acked": self.windowAcked,
                "window_acked_by_time": self.windowAckedByTime,
                "sent": self.sent, "acked": self.acked,
                "undelivered": self.undelivered + undeliveredEnd,
                "duplicates": self.duplicates, "unmatched": self.unmatched,
                "poll_answers": self.pollAnswers, "poll_empty": self.pollEmpty,
                "redirects": self.redirects, "errors": self.errors,
                "errors_window": self.errorsWindow,
                "outstanding": self.outstanding,
                "outstanding_min": min(self.outstandingSamples, default=self.outstanding),
                "cpu_window_s": self.cpuWindow,
                "cpu_total_s": ru.ru_utime + ru.ru_stime,
                "maxrss_kb": ru.ru_maxrss,
                "fd_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE))}

    @staticmethod
    def emit(message: dict) -> None:
        sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    @staticmethod
    def cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    async def run(self) -> None:
        reader = asyncio.StreamReader()
        await self.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self.tasks.append(self.loop.create_task(self.sweeper()))
        rampTask = self.loop.create_task(self.ramp())
        sendTask = None
        while True:
            line = await reader.readline()
            if not line:
                break
            command = json.loads(line)
            cmd = command["cmd"]
            if cmd == "status":
                self.emit(self.status())
            elif cmd == "send":
                self.sending = True
                sendTask = self.loop.create_task(self.sendLoop(command["rate"]))
            elif cmd == "measure":
                self.measuring = True
                self.cpuStart = self.cpu()
            elif cmd == "stop_measure":
                self.measuring = False
                self.sending = False
                self.cpuWindow = self.cpu() - self.cpuStart if self.cpuStart is not None else None
            elif cmd == "report":
                self.emit(self.report())
            elif cmd == "quit":
                break
        self.running = False
        self.sending = False
        rampTask.cancel()
        if sendTask is not None:
            sendTask.cancel()
        for conn in list(self.pollConns):
            conn.close()
        self.pool.closeAll()
        pending = list(self.tasks) + list(self.sendTasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def workerMain() -> None:
    spec = json.loads(sys.stdin.readline())
    installLoop(spec["loop"])
    lg_proc.raiseFdLimit()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(spec)
    try:
        loop.run_until_complete(worker.run())
    finally:
        loop.close()


# ---------------------------------------------------------------------------------------------
# parent process


def findListeningPid(port: int) -> int | None:
    """
    The pid of the process listening on TCP C{port} (IPv4 or IPv6), from /proc.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{inode}]")
        except OSError:
            continue
    if not inodes:
        return None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return int(pid)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def centrifugoConnectPath(jwt, secret: bytes, exp: int, user: str, channel: str) -> str:
    """
    Centrifugo's uni_sse connect path: the connect request as the C{cf_connect} parameter,
    its HS256 token naming the user (C{sub}) and the channel to subscribe to server-side.
    """
    from urllib.parse import quote

    token = jwt.encode({"sub": user, "exp": exp, "channels": [channel]}, secret,
                       algorithm="HS256")
    if isinstance(token, bytes):
        token = token.decode()
    return "/connection/uni_sse?cf_connect=" + quote(json.dumps({"token": token}), safe="")


def centrifugoMetrics(text: str) -> dict[str, float]:
    """
    Centrifugo's Prometheus metrics under the names the generator reads: messages sent to
    clients as committed messages (the open streams are counted by the workers).
    """
    metrics = lg_proc.parseMetrics(text)
    return {"hpchat_messages_committed_total": lg_proc.metricSum(
        metrics, "centrifugo_node_messages_sent_count")}


def nchanStatus(text: str) -> dict[str, float]:
    """
    nchan_stub_status, under the names of hpchat's metrics that the generator reads:
    subscribers as waiting polls, published messages as committed messages.
    """
    names = {"subscribers": "hpchat_waiting_polls",
             "total published messages": "hpchat_messages_committed_total"}
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in names:
            try:
                out[names[key.strip()]] = float(value.split()[0])
            except (ValueError, IndexError):
                pass
    return out


def nodeVersion() -> dict:
    """
    The repository's commit and whether hpchat/ has local changes (read-only git calls).
    """
    import subprocess

    root = os.path.dirname(HERE)
    out = {}
    try:
        out["commit"] = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "hpchat"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        out["hpchat_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memKb = 0
    try:
        with open("/proc/meminfo") as f:
            memKb = int(f.readline().split()[1])
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gb": round(memKb / 1048576, 1),
            "kernel": platform.release(), "python": platform.python_version()}


class Parent:
    def __init__(self, args):
        self.args = args
        self.entries = [parseURL(u) for u in args.url]
        self.workers: list = []
        self.readers: list[asyncio.Queue] = []
        self.loop = asyncio.get_event_loop()

    def log(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[loadgen {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    async def scrape(self) -> dict[str, float]:
        """
        /metrics of every node, summed per sample name.
        """
        total: dict[str, float] = {}
        nchan = self.args.target == "nchan"
        for addr in self.entries:
            try:
                conn = await connect(self.loop, addr, 5.0)
                try:
                    response = await conn.request(
                        encodeRequest("GET", "/nchan_status" if nchan else "/metrics",
                                      f"{addr[0]}:{addr[1]}"), 10.0)
                finally:
                    conn.close()
            except HTTPFailure:
                continue
            if response.status != 200:
                continue
            text = response.body.decode("utf-8", "replace")
            if nchan:
                metrics = nchanStatus(text)
            elif self.args.target == "centrifugo":
                metrics = centrifugoMetrics(text)
            else:
                metrics = lg_proc.parseMetrics(text)
            for name, value in metrics.items():
                total[name] = total.get(name, 0.0) + value
        return total

    async def waitingPolls(self, ramping: bool = False) -> float | None:
        """
        The polls the node(s) hold; for the stream targets the streams the workers hold open
        (not while ramping: the workers' answers are awaited for the ramp then).
        """
        if self.args.target in lg_sse.STREAM_TARGETS and not ramping:
            # Open streams, counted by the workers (established: headers or connect push).
            if not self.workers:
                return 0.0
            return float(sum(s["outstanding"] for s in await self.statusAll()))
        metrics = await self.scrape()
        if "hpchat_waiting_polls" not in metrics:
            return None
        return metrics["hpchat_waiting_polls"]

    async def spawn(self, specs: list[dict]) -> None:
        for spec in specs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, os.path.abspath(__file__), "--_worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=1 << 28)
            proc.stdin.write((json.dumps(spec) + "\n").encode())
            await proc.stdin.drain()
            queue: asyncio.Queue = asyncio.Queue()
            self.workers.append(proc)
            self.readers.append(queue)
            self.loop.create_task(self._read(proc, queue))

    async def _read(self, proc, queue) -> None:
        while True:
            line = await proc.stdout.readline()
            if not line:
                await queue.put(None)
                return
            await queue.put(json.loads(line))

    async def broadcast(self, command: dict, rates: list[float] | None = None) -> None:
        for i, proc in enumerate(self.workers):
            message = dict(command)
            if rates is not None:
                message["rate"] = rates[i]
            if proc.returncode is None:
                proc.stdin.write((json.dumps(message) + "\n").encode())
                try:
                    await proc.stdin.drain()
                except (ConnectionError, BrokenPipeError):
                    pass

    async def expect(self, event: str, timeout: float) -> list[dict]:
        async def one(queue):
            while True:
                message = await queue.get()
                if message is None:
                    raise RuntimeError("a worker process exited early")
                if message.get("ev") == event:
                    return message

        return await asyncio.wait_for(asyncio.gather(*(one(q) for q in self.readers)), timeout)

    async def statusAll(self) -> list[dict]:
        await self.broadcast({"cmd": "status"})
        return await self.expect("status", 30.0)

    def nodeSample(self, pids) -> list[dict]:
        out = []
        for pid in pids:
            st = lg_proc.status(pid)
            out.append({"pid": pid, "cpu_s": lg_proc.cpuSeconds(pid), "t": perf(),
                        "rss_kb": st.get("VmRSS"), "hwm_kb": st.get("VmHWM"),
                        "threads": st.get("Threads"), "open_files": lg_proc.openFiles(pid),
                        "fd_limit": lg_proc.fdLimits(pid)})
        return out

    async def run(self) -> dict:
        args = self.args
        soft, hard = lg_proc.raiseFdLimit()
        pairsTotal = args.clients // 2
        clients = pairsTotal * 2
        connsPerUser = 2 if args.inbox else 1
        polls = clients * connsPerUser
        procs = max(args.procs, math.ceil((polls + args.send_conns) / args.max_conns_per_proc))
        procs = max(1, min(procs, pairsTotal))
        pids = list(args.node_pid)
        if not pids:
            for addr in self.entries:
                pid = findListeningPid(addr[1])
                if pid is not None and pid not in pids:
                    pids.append(pid)
        self.log(f"{clients} users in {pairsTotal} conversations, {polls} long-polls, "
                 f"{args.rate} msgs/s, {procs} worker processes; node pids {pids or 'unknown'}")
        if polls > 25000 * max(1, len(args.local_hosts or [None])) * len(self.entries):
            self.log("warning: over ~28k connections to one address exhaust the ephemeral "
                     "ports; give --local-host 127.0.0.2 --local-host 127.0.0.3 ...")
        secret = args.secret
        if args.target in ("nchan", "centrifugo") and secret is None:
            secret = ""
        elif secret is None:
            sys.path.insert(0, os.path.dirname(HERE))
            from hpchat.config import loadConfig
            secret = loadConfig(args.config).auth.secret.decode("utf-8")
        prefix = args.prefix or f"lg{random.randrange(36 ** 4):04x}"
        for addr in self.entries:
            try:
                conn = await connect(self.loop, addr, 5.0)
                conn.close()
            except HTTPFailure as e:
                raise SystemExit(f"loadgen: no node answers at {addr[0]}:{addr[1]} ({e})")
        baseline = self.nodeSample(pids)
        metrics0 = await self.scrape()
        waiting0 = metrics0.get("hpchat_waiting_polls")
        if args.target in lg_sse.STREAM_TARGETS:
            waiting0 = 0.0  # counted by the workers
        specs = []
        bounds = [round(i * pairsTotal / procs) for i in range(procs + 1)]
        for wid in range(procs):
            specs.append({
                "wid": wid, "pair_lo": bounds[wid], "pair_hi": bounds[wid + 1],
                "prefix": prefix, "secret": secret, "token_ttl": args.token_ttl,
                "entries": self.entries, "poll_timeout": args.poll_timeout,
                "inbox": args.inbox, "ramp_rate": args.ramp_rate / procs,
                "send_conns": args.send_conns, "max_inflight": args.max_inflight,
                "connect_timeout": 10.0, "send_timeout": args.send_timeout,
                "local_hosts": args.local_hosts, "seed": args.seed * 1000 + wid,
                "loop": args.loop, "target": args.target, "api_key": args.api_key})
        rates = [args.rate * (s["pair_hi"] - s["pair_lo"]) / pairsTotal for s in specs]
        result: dict = {}
        try:
            await self.spawn(specs)
            # -- ramp
            rampStart = perf()
            rampBudget = polls / args.ramp_rate * 2 + 90
            rampDone = self.loop.create_task(self.expect("ramped", rampBudget))
            while not rampDone.done():
                await asyncio.wait([rampDone], timeout=5.0)
                if not rampDone.done():
                    waiting = await self.waitingPolls(ramping=True)
                    self.log(f"ramping: node waiting polls {waiting}")
            rampDone.result()
            # -- wait for the node to hold the polls
            target = (waiting0 or 0) + polls * args.min_waiting
            waited = perf()
            waiting = await self.waitingPolls()
            while waiting is not None and waiting < target and perf() - waited < args.settle:
                await asyncio.sleep(1.0)
                waiting = await self.waitingPolls()
            rampSeconds = perf() - rampStart
            self.log(f"ramped in {rampSeconds:.1f}s: node waiting polls {waiting} "
                     f"(expected {polls})")
            waitingAtStart = waiting
            idleSample = self.nodeSample(pids)
            # -- warm-up and measure
            await self.broadcast({"cmd": "send"}, rates)
            self.log(f"sending {args.rate} msgs/s; warm-up {args.warmup}s")
            await asyncio.sleep(args.warmup)
            m0 = await self.scrape()
            start = self.nodeSample(pids)
            await self.broadcast({"cmd": "measure"})
            t0 = perf()
            hook = None
            if args.on_measure:
                command = args.on_measure.replace("{pid}", str(pids[0] if pids else "")) \
                    .replace("{pids}", ",".join(map(str, pids))).replace("{url}", args.url[0])
                self.log(f"on-measure: {command}")
                hook = await asyncio.create_subprocess_shell(command)
            waitingSamples = []
            rssPeak = [0] * len(pids)
            while perf() - t0 < args.duration:
                await asyncio.sleep(min(1.0, max(0.0, args.duration - (perf() - t0))))
                sample = self.nodeSample(pids)
                for i, s in enumerate(sample):
                    rssPeak[i] = max(rssPeak[i], s["rss_kb"] or 0)
                if int(perf() - t0) % 5 == 0:
                    w = await self.waitingPolls()
                    if w is not None:
                        waitingSamples.append(w)
                    st = await self.statusAll()
                    self.log(f"t={perf() - t0:4.0f}s node waiting {w} sent "
                             f"{sum(s['sent'] for s in st)} acked {sum(s['acked'] for s in st)} "
                             f"errors {sum(s['errors'] for s in st)}")
            await self.broadcast({"cmd": "stop_measure"})
            elapsed = perf() - t0
            end = self.nodeSample(pids)
            m1 = await self.scrape()
            waitingEnd = m1.get("hpchat_waiting_polls")
            self.log(f"measured {elapsed:.1f}s; grace {args.grace}s for the last deliveries")
            await asyncio.sleep(args.grace)
            await self.broadcast({"cmd": "report"})
            reports = await self.expect("report", 120.0)
            if hook is not None:
                try:
                    await asyncio.wait_for(hook.wait(), 120.0)
                except asyncio.TimeoutError:
                    self.log("on-measure command still running after 120 s: killing it")
                    hook.kill()
                    await hook.wait()
            result = self.aggregate(args, reports, clients, polls, procs, pids, baseline,
                                    idleSample, start, end, rssPeak, elapsed, metrics0, m0, m1,
                                    waitingAtStart, waitingSamples, waitingEnd, rampSeconds,
                                    (soft, hard))
        finally:
            await self.broadcast({"cmd": "quit"})
            for proc in self.workers:
                try:
                    await asyncio.wait_for(proc.wait(), 15.0)
                except asyncio.TimeoutError:
                    proc.kill()
                    await proc.wait()
        return result

    def aggregate(self, args, reports, clients, polls, procs, pids, baseline, idleSample,
                  start, end, rssPeak, elapsed, metrics0, m0, m1, waitingAtStart,
                  waitingSamples, waitingEnd, rampSeconds, fdLimit) -> dict:
        lat, inboxLat, ackLat = [], [], []
        errors: dict[str, int] = {}
        errorsWindow: dict[str, int] = {}
        for r in reports:
            lat += r["lat"]
            inboxLat += r["inbox_lat"]
            ackLat += r["ack_lat"]
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
            for k, v in r["errors_window"].items():
                errorsWindow[k] = errorsWindow.get(k, 0) + v
        total = lambda key: sum(r[key] for r in reports)  # noqa: E731
        nodes = []
        waitingForRss = waitingEnd or waitingAtStart or 0
        for i, pid in enumerate(pids):
            b, idle, s, e = baseline[i], idleSample[i], start[i], end[i]
            cpu = None
            if s["cpu_s"] is not None and e["cpu_s"] is not None:
                cpu = round(100.0 * (e["cpu_s"] - s["cpu_s"]) / (e["t"] - s["t"]), 1)
            nodes.append({"pid": pid, "cpu_pct": cpu, "rss_kb_before": b["rss_kb"],
                          "rss_kb_idle_waiting": idle["rss_kb"], "rss_kb_end": e["rss_kb"],
                          "rss_kb_peak": rssPeak[i], "threads": e["threads"],
                          "open_files": e["open_files"], "fd_limit": e["fd_limit"]})
        rssEnd = sum(n["rss_kb_end"] or 0 for n in nodes)
        rssBefore = sum(n["rss_kb_before"] or 0 for n in nodes)
        rssIdle = sum(n["rss_kb_idle_waiting"] or 0 for n in nodes)
        per = lambda kb, n: round(kb / n, 2) if n else None  # noqa: E731
        committed = lambda m: lg_proc.metricSum(m, "hpchat_messages_committed_total")  # noqa
        requests = lambda m: lg_proc.metricSum(m, "hpchat_http_requests_total")  # noqa
        window = lambda key: sum(r[key] for r in reports)  # noqa: E731
        cpuWindow = [r["cpu_window_s"] or 0.0 for r in reports]
        return {
            "tool": "hpchat-loadgen",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "source": nodeVersion(),
            "params": {"target": args.target, "clients": clients, "rate": args.rate,
                       "inbox": args.inbox,
                       "duration": args.duration, "warmup": args.warmup,
                       "poll_timeout": args.poll_timeout, "procs": procs,
                       "ramp_rate": args.ramp_rate, "urls": args.url, "loop": args.loop,
                       "send_conns_per_proc": args.send_conns},
            "latency_ms": lg_proc.summarize(lat),
            "inbox_latency_ms": lg_proc.summarize(inboxLat) if args.inbox else None,
            "ack_latency_ms": lg_proc.summarize(ackLat),
            "sends": {"scheduled_in_window": window("window_sent"),
                      "acked_of_window": window("window_acked"),
                      "acked_per_s": round(window("window_acked_by_time") / elapsed, 1),
                      "offered_per_s": round((window("window_sent")
                                              + window("window_skipped")) / elapsed, 1),
                      "skipped_in_window": window("window_skipped"),
                      "undelivered": total("undelivered"), "duplicates": total("duplicates"),
                      "unmatched": total("unmatched"), "total_sent": total("sent"),
                      "total_acked": total("acked")},
            "polls": {"expected": polls, "node_waiting_at_start": waitingAtStart,
                      "node_waiting_min": min(waitingSamples, default=None),
                      "node_waiting_max": max(waitingSamples, default=None),
                      "node_waiting_end": waitingEnd,
                      "client_outstanding_min": total("outstanding_min"),
                      "answers": total("poll_answers"), "empty_answers": total("poll_empty"),
                      "redirects": total("redirects"), "ramp_s": round(rampSeconds, 1)},
            "errors": errors,
            "errors_in_window": errorsWindow,
            "node": nodes,
            "node_total": {
                "cpu_pct": round(sum(n["cpu_pct"] or 0 for n in nodes), 1),
                "rss_kb": rssEnd,
                "rss_kb_per_waiting_poll": per(rssEnd, waitingForRss),
                "rss_kb_per_client": per(rssEnd, clients),
                "rss_delta_kb_per_waiting_poll": per(rssIdle - rssBefore, waitingAtStart),
                "rss_delta_kb_per_client": per(rssIdle - rssBefore, clients),
                "committed_per_s": round((committed(m1) - committed(m0)) / elapsed, 1),
                "requests_per_s": round((requests(m1) - requests(m0)) / elapsed, 1)},
            "loadgen": {"procs": procs,
                        "cpu_pct_total": round(100.0 * sum(cpuWindow) / elapsed, 1),
                        "cpu_pct_max_proc": round(100.0 * max(cpuWindow, default=0) / elapsed, 1),
                        "fd_limit": list(fdLimit),
                        "worker_fd_limit": reports[0]["fd_limit"] if reports else None,
                        "worker_maxrss_kb": max((r["maxrss_kb"] for r in reports), default=0)},
        }


def human(result: dict) -> str:
    p = result["params"]
    lat, ack, s, pol, nt, lg = (result["latency_ms"], result["ack_latency_ms"], result["sends"],
                                result["polls"], result["node_total"], result["loadgen"])
    m = result["machine"]
    f = lambda v: "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa
    lines = [
        f"hpchat loadgen: target={p.get('target', 'hpchat')} C={p['clients']} R={p['rate']}/s "
        f"inbox={p['inbox']} "
        f"duration={p['duration']}s poll_timeout={p['poll_timeout']}s procs={p['procs']} "
        f"loop={p['loop']}",
        f"  machine: {m['cpus']} x {m['cpu_model']}, {m['mem_gb']} GB, Linux {m['kernel']}, "
        f"Python {m['python']}",
        f"  delivery latency ms: p50 {f(lat['p50'])}  p90 {f(lat['p90'])}  p99 {f(lat['p99'])}  "
        f"p99.9 {f(lat['p999'])}  max {f(lat['max'])}  (n={lat['count']})",
    ]
    if result.get("inbox_latency_ms"):
        il = result["inbox_latency_ms"]
        lines.append(f"  inbox latency ms:    p50 {f(il['p50'])}  p99 {f(il['p99'])}  "
                     f"max {f(il['max'])}  (n={il['count']})")
    lines += [
        f"  send ack latency ms: p50 {f(ack['p50'])}  p99 {f(ack['p99'])}  max {f(ack['max'])}",
        f"  sends: offered {s['offered_per_s']}/s, acked {s['acked_per_s']}/s "
        f"({s['skipped_in_window']} skipped at the in-flight cap); undelivered "
        f"{s['undelivered']}, duplicates {s['duplicates']}",
        f"  waiting polls on the node: {f(pol['node_waiting_at_start'])} at start, min "
        f"{f(pol['node_waiting_min'])} (expected {pol['expected']}); ramp {pol['ramp_s']}s; "
        f"{pol['redirects']} redirects",
        f"  node: CPU {nt['cpu_pct']}%, RSS {nt['rss_kb'] / 1024:.1f} MB = "
        f"{f(nt['rss_kb_per_waiting_poll'])} KB per waiting poll "
        f"({f(nt['rss_delta_kb_per_waiting_poll'])} KB above the idle node); "
        f"{nt['committed_per_s']} committed events/s, {nt['requests_per_s']} requests/s",
    ]
    for n in result["node"]:
        lines.append(f"    pid {n['pid']}: CPU {n['cpu_pct']}%, RSS {n['rss_kb_end']} KB, "
                     f"{n['open_files']} open files, fd limit {n['fd_limit']}, "
                     f"{n['threads']} threads")
    lines.append(f"  loadgen: {lg['procs']} procs, CPU {lg['cpu_pct_total']}% in total, "
                 f"busiest proc {lg['cpu_pct_max_proc']}%")
    lines.append(f"  errors: {result['errors'] or 'none'}; in the window: "
                 f"{result['errors_in_window'] or 'none'}")
    return "\n".join(lines)


def parseArgs(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", action="append", default=[],
                   help="a node's base URL (repeat for several entry nodes; users are spread "
                        "over them). Default http://127.0.0.1:8080")
    p.add_argument("--target", choices=("hpchat", "hpchat-sse", "nchan", "centrifugo"),
                   default="hpchat",
                   help="hpchat-sse: hpchat's event streams (GET /v1/conversations/{cid}/"
                        "stream); nchan: the same pattern against nginx + Nchan (GET "
                        "/sub/<cid> long-polls, POST /pub/<cid>, no auth; lg_nchan.py); "
                        "centrifugo: Centrifugo's uni_sse streams and HTTP API publish "
                        "(lg_centrifugo.py)")
    p.add_argument("--api-key", help="Centrifugo's HTTP API key (--target centrifugo)")
    p.add_argument("--config", help="the node's ini file, to read [auth] secret from")
    p.add_argument("--secret", help="the HS256 secret (instead of --config)")
    p.add_argument("--clients", "-c", type=int, default=1000, help="users C (even; pairs)")
    p.add_argument("--rate", "-r", type=float, default=100.0, help="messages per second R")
    p.add_argument("--inbox", action="store_true", help="each user also long-polls its inbox")
    p.add_argument("--duration", "-d", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of sending before")
    p.add_argument("--grace", type=float, default=3.0,
                   help="seconds to wait after the window for the last deliveries")
    p.add_argument("--poll-timeout", type=float, default=25.0, help="long-poll timeout T")
    p.add_argument("--ramp-rate", type=float, default=500.0, help="new connections per second")
    p.add_argument("--settle", type=float, default=60.0,
                   help="longest wait for the node to report the waiting polls after the ramp")
    p.add_argument("--min-waiting", type=float, default=0.99,
                   help="fraction of the polls the node must report waiting before sending")
    p.add_argument("--procs", type=int, default=2, help="least number of worker processes")
    p.add_argument("--max-conns-per-proc", type=int, default=9000)
    p.add_argument("--send-conns", type=int, default=512,
                   help="most keep-alive send connections per worker and node")
    p.add_argument("--max-inflight", type=int, default=5000,
                   help="sends in flight per worker beyond which scheduled sends are skipped")
    p.add_argument("--send-timeout", type=float, default=30.0)
    p.add_argument("--token-ttl", type=int, default=6 * 3600)
    p.add_argument("--node-pid", type=int, action="append", default=[],
                   help="node process to watch (repeat); default: found by listening port")
    p.add_argument("--local-host", dest="local_hosts", action="append", default=[],
                   help="source address(es) to spread connections over (127.0.0.x)")
    p.add_argument("--prefix", help="user name prefix (default: random, so each run starts "
                                    "on fresh conversations)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    p.add_argument("--on-measure", metavar="CMD",
                   help="shell command started when the measured window starts ({pid}: the "
                        "first node pid, {pids}: all, comma-separated, {url}: the first URL), "
                        "e.g. a py-spy record")
    p.add_argument("--json-out", help="append the JSON result line to this file")
    p.add_argument("--quiet", "-q", action="store_true")
    args = p.parse_args(argv)
    if not args.url:
        args.url = ["http://127.0.0.1:8080"]
    if args.secret is None and args.config is None and args.target != "nchan":
        p.error("give --config FILE (the node's ini) or --secret (Centrifugo: its token "
                "HMAC secret)")
    if args.target == "centrifugo" and not args.api_key:
        p.error("--target centrifugo needs --api-key")
    if args.clients < 2:
        p.error("--clients must be at least 2")
    for url in args.url:
        host = parseURL(url)[0]
        if not host.startswith("127."):
            p.error("this bench tool only talks to loopback (127.x) addresses")
    return args


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--_worker"]:
        workerMain()
        return 0
    args = parseArgs(argv)
    args.loop = installLoop(args.loop)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        result = loop.run_until_complete(Parent(args).run())
    finally:
        loop.close()
    print(human(result), file=sys.stderr, flush=True)
    line = json.dumps(result, separators=(",", ":"))
    print(line, flush=True)
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
