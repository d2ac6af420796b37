"""
A chaos soak on a real cluster: etcd, one nsqd (C{--mem-queue-size=0}, data kept across its
restarts) and three C{twistd hpchat} nodes, a seeded workload, and a fault injector.

The workload: writers send messages with a C{client_id} and retry the same one after any
failure, timeout, 429, 5xx or redirect until a 2xx, recording every acknowledged message;
pollers follow each conversation's cursor and record every event they see; a publisher posts
flirts straight to nsqd's HTTP C{/pub} (some ids twice, on purpose) and records those nsqd
acknowledged. The fault injector runs one fault at a time, each undone before the next: kill -9
of a node then a restart, SIGSTOP of a node past the lease TTL then SIGCONT, SIGTERM then a
restart, kill -9 of nsqd then a restart on the same data path and ports, SIGSTOP of etcd for a
few seconds then SIGCONT. After the soak everything is healed and L{tests.support.chaoscheck}
judges what the cluster kept.

Use: C{soak = ChaosSoak(scope, ChaosConfig(seed=1, duration=40)); summary = await soak.run()}
where C{scope} is a trial test case or anything with C{mktemp} and C{addCleanup}.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer, task

from tests.support.cluster import TOPIC, token
from tests.support.etcd import EtcdProcess
from tests.support.node import HTTP, Node
from tests.support.process import theReactor

FAULTS = ("kill", "stop", "term", "nsqd", "etcd")
CHANNEL = "hpchat"
#: A channel of the soak's own on the notification topic: the ids nsqd took, for diagnosis.
AUDIT_CHANNEL = "chaos-audit"


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(theReactor(), max(0.0, seconds), lambda: None)


def now() -> float:
    return theReactor().seconds()


@dataclass
class ChaosConfig:
    """
    @ivar storage: the C{[storage]} section of every node; None for a database of its own on
        the tests' PostgreSQL server (as machines of a deployment share one), C{"sqlite"} for
        one SQLite file shared by all nodes in the work folder.
    @ivar faultGap: seconds between the start of one fault and the next (min, max); with
        C{overlap} 1 the next waits for the previous one to be undone.
    @ivar overlap: how many faults may be in force at once (on different processes).
    @ivar sendGap: seconds a writer waits after an acknowledged message (min, max).
    @ivar settleTimeout: after healing, seconds within which every node must be ready and
        everything delivered (readiness, no pending writes, nothing left in nsqd).
    @ivar lateGrace: seconds more to wait for quiescence when C{settleTimeout} was missed,
        before the checker reads: tells notifications that come late from lost ones (the
        missed deadline stays a violation).
    """

    seed: int = 1
    duration: float = 40.0
    faults: tuple[str, ...] = FAULTS
    nodes: int = 3
    users: int = 6
    conversations: int = 6
    writers: int = 4
    sendGap: tuple[float, float] = (0.0, 0.15)
    flirtGap: tuple[float, float] = (0.05, 0.3)
    duplicateFlirts: float = 0.15
    repeatSends: float = 0.05
    leaseTtl: int = 3
    fenceMargin: float = 1.0
    groups: int = 16
    faultGap: tuple[float, float] = (1.0, 3.0)
    overlap: int = 1
    settleTimeout: float = 30.0
    lateGrace: float = 0.0
    sendTimeout: float = 3.0
    sendDeadline: float = 60.0
    pollTimeout: float = 3.0
    storage: dict[str, str] | str | None = None
    #: Without NSQ (C{False}): no nsqd, no flirts, and the nodes write a message's
    #: notification with the message when they hold the inbox, else through the outbox and
    #: an internal call.
    nsq: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULTS}")
        if not self.nsq and "nsqd" in self.faults:
            raise ValueError("the nsqd fault needs nsq")


@dataclass
class Ack:
    conversation: str
    clientId: str
    seq: int
    id: str
    sender: str
    recipient: str
    text: str
    status: int
    attempts: int
    sentAt: float
    ackedAt: float


@dataclass
class PollRecord:
    conversation: str
    user: str
    startAfter: int = 0
    seen: list[tuple[int, str | None]] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FaultRecord:
    kind: str
    target: str
    start: float
    end: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class ChaosClient:
    """
    Requests as a browser client of the site makes them, with every request bounded: 307s
    followed (token re-sent), a connection error, timeout, 429 or 5xx retried on another node
    after a short pause, until a deadline.
    """

    def __init__(self, soak: "ChaosSoak", rng: random.Random):
        self.soak = soak
        self.rng = rng

    async def call(self, method: str, path: str, user: str, body: Any = None,
                   deadline: float = 30.0, requestTimeout: float = 5.0,
                   onAttempt: Callable[[], None] | None = None,
                   stop: Callable[[], bool] | None = None) -> tuple[int, Any]:
        give_up = now() + deadline
        url = self.rng.choice(self.soak.nodes).url + path
        hops = 0
        while True:
            if now() > give_up or (stop is not None and stop()):
                raise TimeoutError(f"{method} {path} as {user}: no answer within {deadline}s")
            if onAttempt is not None:
                onAttempt()
            try:
                status, headers, answer = await self.soak.http.request(
                    method, url, token(user), body, timeout=requestTimeout)
            except Exception as e:
                self.soak.statuses[type(e).__name__] += 1
                url = self.rng.choice(self.soak.nodes).url + path
                hops = 0
                await sleep(self.rng.uniform(0.02, 0.1))
                continue
            self.soak.statuses[str(status)] += 1
            if status == 307 and hops < 5:
                hops += 1
                url = headers.getRawHeaders(b"location")[0].decode()
                continue
            if status in (307, 429) or status >= 500:
                url = self.rng.choice(self.soak.nodes).url + path
                hops = 0
                await sleep(self.rng.uniform(0.05, 0.25))
                continue
            return status, answer


class ChaosSoak:
    def __init__(self, scope: Any, config: ChaosConfig, out: Callable[[str], None] = print):
        self.scope = scope
        self.config = config
        self.out = out
        self.rng = random.Random(config.seed)
        self.workdir = os.path.abspath(scope.mktemp())
        os.makedirs(self.workdir)
        self.http = HTTP()
        self.pubHTTP = HTTP()
        self.statuses: Counter[str] = Counter()
        self.etcd: EtcdProcess | None = None
        self.nsqd: Any = None
        self.nodes: list[Node] = []
        self.users = [f"u{i}" for i in range(config.users)]
        pairs = [(a, b) for i, a in enumerate(self.users) for b in self.users[i + 1:]]
        self.rng.shuffle(pairs)
        self.conversations = [f"dm:{a}:{b}" for a, b in sorted(pairs[:config.conversations])]
        self.acks: list[Ack] = []
        self.polls: list[PollRecord] = []
        self.flirts: dict[str, str] = {}
        self.flirtTimes: dict[str, float] = {}
        self.audited: set[str] = set()
        self.audit: Any = None
        self.repeats = 0
        self.flirtsTwice: set[str] = set()
        self.faultLog: list[FaultRecord] = []
        self.problems: list[dict[str, Any]] = []
        self.started = 0.0
        self.startedWall = 0.0
        self.healedAt = 0.0
        self._stopWrites = False
        self._stopPolls = False
        self._stopFaults = False

    # -- the cluster

    def log(self, text: str) -> None:
        wall = time.strftime("%H:%M:%S", time.gmtime()) + f".{int(time.time() * 10) % 10}"
        line = f"[chaos {now() - self.started:7.2f}s {wall}Z] {text}"
        self.out(line)
        with open(os.path.join(self.workdir, "chaos.log"), "a") as f:
            f.write(line + "\n")

    def problem(self, kind: str, **detail: Any) -> None:
        entry = {"kind": kind, "t": round(now() - self.started, 2), **detail}
        self.problems.append(entry)
        self.log(f"VIOLATION {json.dumps(entry, default=str)[:500]}")

    async def start(self) -> None:
        from tests.support.nsqd import NSQD

        config = self.config
        self.started = now()
        self.startedWall = time.time()
        self.etcd = EtcdProcess(theReactor())
        self.scope.addCleanup(self.etcd.cleanup)
        await self.etcd.start()
        if config.nsq:
            self.nsqd = NSQD(theReactor(), extraArgs=["--mem-queue-size=0"])
            self.scope.addCleanup(self.nsqd.cleanup)
            await self.nsqd.start()
            await self.nsqd.createTopic(TOPIC)
            await self.nsqd.createChannel(TOPIC, CHANNEL)
            await self.nsqd.createChannel(TOPIC, AUDIT_CHANNEL)
            self.startAudit()
        self.scope.addCleanup(lambda: defer.ensureDeferred(self.stop()))
        if config.storage is None:
            from tests.support.postgres import freshDatabase

            storage = {"backend": "postgresql", "dsn": await freshDatabase(self.scope)}
        elif config.storage == "sqlite":
            storage = {"path": os.path.join(self.workdir, "shared.sqlite3")}
        else:
            storage = dict(config.storage)
        for i in range(config.nodes):
            sections = {
                "chat": {"groups": str(config.groups), "typing_ttl": "2"},
                "storage": dict(storage, flush_interval="0.005"),
                "cluster": {"etcd": self.etcd.clientURL, "lease_ttl": str(config.leaseTtl),
                            "fence_margin": str(config.fenceMargin)},
                "limits": {"sends_per_second": "1000", "sends_burst": "1000",
                           "max_polls_per_user": "64"},
            }
            if self.nsqd is not None:
                sections["nsq"] = {"nsqd_tcp": self.nsqd.tcpAddress, "topic": TOPIC,
                                   "channel": CHANNEL}
            self.nodes.append(Node(self.workdir, f"n{i + 1}", sections=sections))
        await defer.gatherResults([defer.ensureDeferred(n.start(timeout=60))
                                   for n in self.nodes])
        nsqd = self.nsqd.httpURL if self.nsqd is not None else "none"
        self.log(f"cluster up: etcd {self.etcd.clientURL}, nsqd {nsqd}, nodes "
                 + ", ".join(f"{n.nodeId}={n.url}" for n in self.nodes))

    def startAudit(self) -> None:
        """
        Record the id of every notification nsqd hands out on L{AUDIT_CHANNEL} (FINed at
        once): a notification missing from its inbox that nsqd never had was never published.
        """
        from hpchat.nsq.client import NSQConsumer
        from hpchat.nsq.commands import IdentifyOptions

        def handle(message: Any) -> None:
            try:
                self.audited.add(json.loads(message.body)["id"])
            except (ValueError, KeyError, TypeError):
                pass

        options = IdentifyOptions(clientId=AUDIT_CHANNEL, outputBufferTimeout=None,
                                  outputBufferSize=-1, heartbeatInterval=10_000)
        self.audit = NSQConsumer.fromAddress(theReactor(), self.nsqd.tcpAddress, TOPIC,
                                             AUDIT_CHANNEL, handle, maxInFlight=200,
                                             options=options)
        self.audit.startService()

    async def stop(self) -> None:
        if self.audit is not None and self.audit.running:
            await self.audit.stopService()
        for node in self.nodes:
            node.signal(signal.SIGCONT)
        await defer.gatherResults([defer.ensureDeferred(n.stop()) for n in self.nodes],
                                  consumeErrors=True)
        await self.http.close()
        await self.pubHTTP.close()

    def running(self, node: Node) -> bool:
        return node.process is not None and node.process.poll() is None

    # -- the workload

    def recipient(self, cid: str, sender: str) -> str:
        a, b = cid.split(":")[1:]
        return b if sender == a else a

    async def writer(self, index: int) -> None:
        rng = random.Random(f"{self.config.seed}-writer-{index}")
        client = ChaosClient(self, rng)
        n = 0
        while not self._stopWrites:
            cid = rng.choice(self.conversations)
            sender = rng.choice(cid.split(":")[1:])
            clientId = f"w{index}-{n}"
            n += 1
            text = f"{clientId} from {sender}"
            attempts: Counter[str] = Counter()
            sentAt = now()
            try:
                status, body = await client.call(
                    "POST", f"/v1/conversations/{cid}/messages", sender,
                    {"text": text, "client_id": clientId}, deadline=self.config.sendDeadline,
                    requestTimeout=self.config.sendTimeout,
                    onAttempt=lambda counter=attempts: counter.update(["sent"]))
            except TimeoutError:
                self.problem("send_not_acknowledged", conversation=cid, client_id=clientId,
                             attempts=attempts["sent"], seconds=self.config.sendDeadline)
                continue
            if status not in (200, 201):
                self.problem("send_refused", conversation=cid, client_id=clientId,
                             status=status, body=body)
                continue
            message = body["message"]
            self.acks.append(Ack(cid, clientId, message["seq"], message["id"], sender,
                                 self.recipient(cid, sender), text, status, attempts["sent"],
                                 sentAt, now()))
            if message.get("client_id") != clientId or message.get("conversation") != cid:
                self.problem("ack_mismatch", conversation=cid, client_id=clientId,
                             answer=message)
            if rng.random() < self.config.repeatSends:
                mine = [a for a in self.acks if a.clientId.startswith(f"w{index}-")]
                await self.repeat(client, rng.choice(mine))
            await sleep(rng.uniform(*self.config.sendGap))

    async def repeat(self, client: ChaosClient, ack: Ack) -> None:
        """
        Send an acknowledged message again with its client_id: 200 with the original message.
        """
        try:
            status, body = await client.call(
                "POST", f"/v1/conversations/{ack.conversation}/messages", ack.sender,
                {"text": ack.text, "client_id": ack.clientId},
                deadline=self.config.sendDeadline, requestTimeout=self.config.sendTimeout)
        except TimeoutError:
            self.problem("repeat_not_answered", conversation=ack.conversation,
                         client_id=ack.clientId)
            return
        self.repeats += 1
        message = (body or {}).get("message") if isinstance(body, dict) else None
        if status != 200 or message is None or (message["seq"], message["id"]) != \
                (ack.seq, ack.id):
            self.problem("repeat_not_original", conversation=ack.conversation,
                         client_id=ack.clientId, acked_seq=ack.seq, status=status,
                         answer=body)

    async def poller(self, record: PollRecord) -> None:
        rng = random.Random(f"{self.config.seed}-poll-{record.conversation}")
        client = ChaosClient(self, rng)
        after = record.startAfter
        timeout = self.config.pollTimeout
        while not self._stopPolls:
            try:
                status, body = await client.call(
                    "GET", f"/v1/conversations/{record.conversation}/events?after={after}"
                    f"&timeout={timeout}", record.user, deadline=30,
                    requestTimeout=timeout + 3, stop=lambda: self._stopPolls)
            except TimeoutError:
                continue
            if status != 200:
                record.violations.append({"kind": "poll_status", "after": after,
                                          "status": status, "body": body,
                                          "t": round(now() - self.started, 2)})
                await sleep(0.2)
                continue
            for event in body["events"]:
                seq = event["seq"]
                if seq != after + 1:
                    record.violations.append({"kind": "poll_order", "after": after, "got": seq,
                                              "client_id": event.get("client_id"),
                                              "t": round(now() - self.started, 2)})
                record.seen.append((seq, event.get("client_id")))
                after = max(after, seq)

    def lastPolled(self, record: PollRecord) -> int:
        return record.seen[-1][0] if record.seen else record.startAfter

    async def publisher(self) -> None:
        if self.nsqd is None:
            return
        rng = random.Random(f"{self.config.seed}-flirts")
        n = 0
        while not self._stopWrites:
            nid = f"flirt-{self.config.seed}-{n}"
            n += 1
            user = rng.choice(self.users)
            sender = rng.choice([u for u in self.users if u != user])
            body = json.dumps({"id": nid, "user": user, "type": "flirt", "from": sender,
                               "data": {"n": n}}).encode()
            times = 2 if rng.random() < self.config.duplicateFlirts else 1
            for _ in range(times):
                if not await self.publish(body, rng):
                    self.problem("flirt_not_published", id=nid)
                    break
            else:
                self.flirts[nid] = user
                self.flirtTimes[nid] = now()
                if times == 2:
                    self.flirtsTwice.add(nid)
            await sleep(rng.uniform(*self.config.flirtGap))

    async def publish(self, body: bytes, rng: random.Random) -> bool:
        give_up = now() + 60
        while now() < give_up:
            try:
                status, _, _ = await self.pubHTTP.request(
                    "POST", f"{self.nsqd.httpURL}/pub?topic={TOPIC}", body=body, timeout=2)
            except Exception:
                status = None
            if status == 200:
                return True
            await sleep(rng.uniform(0.05, 0.2))
        return False

    # -- the faults

    async def restart(self, node: Node, record: FaultRecord) -> None:
        for _ in range(3):
            try:
                await node.start(timeout=30)
                return
            except Exception as e:
                record.detail.setdefault("restart_errors", []).append(str(e)[:300])
                await node.kill()
        self.problem("node_restart_failed", node=node.nodeId, errors=record.detail)

    async def fault(self, kind: str, node: Node, rng: random.Random) -> FaultRecord:
        config = self.config
        target = node.nodeId if kind in ("kill", "stop", "term") else kind
        record = FaultRecord(kind, target, round(now() - self.started, 2))
        self.faultLog.append(record)
        self.log(f"fault {kind} on {target}")
        if kind == "kill":
            await node.kill()
            await sleep(rng.uniform(0.0, 2.0))
            await self.restart(node, record)
        elif kind == "stop":
            pause = config.leaseTtl + rng.uniform(1.0, 2.5)
            record.detail["seconds"] = round(pause, 2)
            node.signal(signal.SIGSTOP)
            await sleep(pause)
            node.signal(signal.SIGCONT)
        elif kind == "term":
            began = now()
            code = await node.stop(timeout=15)
            record.detail.update(exit=code, seconds=round(now() - began, 2))
            # twistd ends a clean SIGTERM shutdown by re-raising the signal (exit -15).
            if code not in (0, -signal.SIGTERM):
                self.problem("sigterm_exit", node=node.nodeId, exit=code,
                             seconds=record.detail["seconds"])
            await sleep(rng.uniform(0.0, 1.0))
            await self.restart(node, record)
        elif kind == "nsqd":
            await self.nsqd.kill()
            await sleep(rng.uniform(0.2, 2.0))
            await self.nsqd.start()
        elif kind == "etcd":
            pause = rng.uniform(1.0, config.leaseTtl + 1.5)
            record.detail["seconds"] = round(pause, 2)
            await self.etcd.pause()
            await sleep(pause)
            await self.etcd.resume()
        record.end = round(now() - self.started, 2)
        self.log(f"fault {kind} on {target} undone ({record.detail})")
        return record

    async def injector(self, until: float) -> None:
        """
        Faults until C{until}, every enabled kind once first (in a seeded order), then picked
        at random; up to C{overlap} at once, never two on one process, never all nodes down.
        """
        rng = random.Random(f"{self.config.seed}-faults")
        queue = list(self.config.faults)
        rng.shuffle(queue)
        running: dict[str, defer.Deferred] = {}
        await sleep(rng.uniform(*self.config.faultGap))
        while not self._stopFaults and (now() < until or queue):
            for target in [t for t, d in running.items() if d.called]:
                del running[target]
            if len(running) >= self.config.overlap:
                await sleep(0.1)
                continue
            kind = queue[0] if queue else rng.choice(self.config.faults)
            free = [n for n in self.nodes if n.nodeId not in running]
            target = kind if kind in ("nsqd", "etcd") else (
                rng.choice(free).nodeId if len(free) > 1 else None)
            if target is None or target in running:
                await sleep(0.1)
                continue
            if queue:
                queue.pop(0)
            node = next((n for n in self.nodes if n.nodeId == target), self.nodes[0])
            running[target] = defer.ensureDeferred(self.guarded(kind, node, rng))
            if self.config.overlap == 1:
                await running[target]
            await sleep(rng.uniform(*self.config.faultGap))
        await defer.gatherResults(list(running.values()))

    async def guarded(self, kind: str, node: Node, rng: random.Random) -> None:
        try:
            await self.fault(kind, node, rng)
        except Exception as e:
            self.problem("fault_failed", fault=kind, error=repr(e)[:300])

    async def heal(self) -> None:
        """
        Undo everything: continue paused processes, start the ones that are down.
        """
        record = FaultRecord("heal", "all", round(now() - self.started, 2))
        await self.etcd.resume()
        if not self.etcd.running():
            await self.etcd.start()
        if self.nsqd is not None and not self.nsqd.running:
            await self.nsqd.start()
        for node in self.nodes:
            node.signal(signal.SIGCONT)
        await defer.gatherResults([defer.ensureDeferred(self.restart(n, record))
                                   for n in self.nodes if not self.running(n)],
                                  consumeErrors=True)
        self.healedAt = now()
        self.log("healed")

    # -- the whole run

    async def run(self) -> dict[str, Any]:
        """
        Start, soak for C{duration} seconds under faults, heal, settle, check; the summary.
        """
        from tests.support.chaoscheck import check, settle

        await self.start()
        config = self.config
        until = now() + config.duration
        for cid in self.conversations:
            self.polls.append(PollRecord(cid, cid.split(":")[1]))
        pollers = [defer.ensureDeferred(self.poller(r)) for r in self.polls]
        writers = [defer.ensureDeferred(self.writer(i)) for i in range(config.writers)]
        writers.append(defer.ensureDeferred(self.publisher()))
        try:
            # The last fault is undone when the injector ends; every kind ran at least once.
            await self.injector(until)
            self._stopWrites = True
            await self.heal()
            await defer.gatherResults(writers)
            self.log(f"writes done: {len(self.acks)} messages, {len(self.flirts)} flirts "
                     "acknowledged")
            settled = await settle(self)
            self.log(f"settled: {json.dumps(settled)}")
            summary = await check(self, settled)
        finally:
            self._stopFaults = self._stopWrites = self._stopPolls = True
        await defer.gatherResults(pollers + writers)
        return summary

    def nodeLogs(self) -> dict[str, str]:
        return {n.nodeId: n.log() for n in self.nodes}

