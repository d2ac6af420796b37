"""
The checker of a chaos soak (L{tests.support.chaos}), run after healing: it reads what the
cluster kept through its public API and compares it with what the workload was told.

Checks, each counted, every violation listed with its details:
 - history: each conversation's stored seqs are 1..N without gap or duplicate, and each
   client_id is stored once;
 - acknowledged: every acknowledged message is stored exactly once, with the seq, id and text
   its acknowledgement gave;
 - pollers: each poller saw seqs strictly ascending without a gap from where it started, each
   (seq, client_id) as in the history, and caught up with the end of the history;
 - inboxes: each inbox's seqs are 1..N, and no notification id is in it twice;
 - flirts: every flirt nsqd acknowledged is in its user's inbox exactly once;
 - message notifications: for every acknowledged message, C{m.<message id>} of type
   C{message} is in the recipient's inbox exactly once, with the conversation and seq;
 - readiness and quiescence after healing (from the soak), and Tracebacks in the node logs.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.chaos import ChaosSoak

from tests.support.chaos import CHANNEL, TOPIC, ChaosClient, now, sleep

MAX_DETAILS = 25
#: Node log lines counted in the summary: fencing at work, refused batches, lost publishes.
LOG_MARKERS = ("self-fencing", "fenced out of groups", "batch refused", "conflict in groups",
               "not published", "lease lost")


async def observe(soak: "ChaosSoak") -> dict[str, Any]:
    """
    One look at the cluster: readiness, pending writes and what nsqd still holds.
    """
    state: dict[str, Any] = {"ready": {}, "pending": {}, "nsqd": None}
    for node in soak.nodes:
        try:
            status, _, _ = await soak.http.request("GET", node.url + "/readyz", timeout=2)
            state["ready"][node.nodeId] = status == 200
            _, _, metrics = await soak.http.request("GET", node.url + "/metrics", timeout=2)
            text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
            # Events not yet durable, and notifications taken from nsqd not yet in their inbox.
            pending = [float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith(("hpchat_persist_pending ",
                                           "hpchat_notifications_held ",
                                           "hpchat_outbox_pending "))]
            state["pending"][node.nodeId] = sum(pending) if pending else None
        except Exception as e:
            state["ready"][node.nodeId] = False
            state["pending"][node.nodeId] = repr(e)[:100]
    if soak.nsqd is None:
        state["nsqd"] = {}
    else:
        await _observeNSQD(soak, state)
    state["quiet"] = (all(state["ready"].values())
                      and all(p == 0 for p in state["pending"].values())
                      and (soak.nsqd is None or (
                          state["nsqd"].get("topic_depth") == 0
                          and all(state["nsqd"].get(k) == 0
                                  for k in ("depth", "in_flight", "deferred")))))
    return state


async def _observeNSQD(soak: "ChaosSoak", state: dict[str, Any]) -> None:
    try:
        topic = await soak.nsqd.stats(TOPIC)
        channel = next((c for c in topic.get("channels") or []
                        if c["channel_name"] == CHANNEL), {})
        state["nsqd"] = {"topic_depth": topic.get("depth"),
                         "depth": channel.get("depth"),
                         "in_flight": channel.get("in_flight_count"),
                         "deferred": channel.get("deferred_count"),
                         "consumers": channel.get("client_count")}
    except Exception as e:
        state["nsqd"] = {"error": repr(e)[:100]}


async def settle(soak: "ChaosSoak") -> dict[str, Any]:
    """
    After healing: wait until every node is ready and everything is delivered, at most
    C{settleTimeout} seconds (then a violation), plus C{lateGrace}; the last observation.
    """
    deadline = soak.healedAt + soak.config.settleTimeout
    state: dict[str, Any] = {}
    readyAt = None
    while True:
        state = await observe(soak)
        if readyAt is None and all(state["ready"].values()):
            readyAt = now()
        if state["quiet"] or now() > deadline:
            break
        await sleep(0.25)
    state["ready_after"] = None if readyAt is None else round(readyAt - soak.healedAt, 2)
    state["quiet_after"] = round(now() - soak.healedAt, 2) if state["quiet"] else None
    if readyAt is None:
        soak.problem("not_ready_after_healing", seconds=soak.config.settleTimeout,
                     state=state)
    elif not state["quiet"]:
        soak.problem("not_quiescent_after_healing", seconds=soak.config.settleTimeout,
                     state=state)
    if not state["quiet"] and soak.config.lateGrace > 0:
        late = now() + soak.config.lateGrace
        later = state
        while now() < late:
            later = await observe(soak)
            if later["quiet"]:
                break
            await sleep(1.0)
        state["quiet_after_grace"] = (round(now() - soak.healedAt, 2) if later["quiet"]
                                      else None)
        state["after_grace"] = {k: later[k] for k in ("ready", "pending", "nsqd")}
    return state


async def readHistory(client: ChaosClient, cid: str) -> list[dict[str, Any]]:
    """
    The whole history of C{cid}, oldest first, paging backwards with C{before}.
    """
    user = cid.split(":")[1]
    pages: list[list[dict[str, Any]]] = []
    before = None
    while True:
        query = "limit=200" + (f"&before={before}" if before is not None else "")
        status, body = await client.call("GET", f"/v1/conversations/{cid}/messages?{query}",
                                         user, deadline=30, requestTimeout=5)
        if status != 200:
            raise AssertionError(f"history of {cid}: {status} {body}")
        messages = body["messages"]
        pages.append(messages)
        if not body["has_more"] or not messages:
            break
        before = messages[0]["seq"]
    return [m for page in reversed(pages) for m in page]


async def readInbox(client: ChaosClient, user: str) -> list[dict[str, Any]]:
    """
    Every event of C{user}'s inbox, following the cursor from 0.
    """
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        status, body = await client.call("GET", f"/v1/inbox/events?after={after}&timeout=0",
                                         user, deadline=30, requestTimeout=5)
        if status != 200:
            raise AssertionError(f"inbox of {user}: {status} {body}")
        if not body["events"]:
            return events
        events.extend(body["events"])
        after = body["events"][-1]["seq"]


class Report:
    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.violations: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def ok(self, check: str) -> None:
        self.counts[check] += 1

    def bad(self, check: str, **detail: Any) -> None:
        self.counts[check] += 1
        self.violations[check].append(detail)

    def asDict(self) -> dict[str, Any]:
        return {
            "checked": dict(self.counts),
            "violations": {k: len(v) for k, v in self.violations.items()},
            "violation_details": {k: v[:MAX_DETAILS] for k, v in self.violations.items()},
        }


def checkHistories(report: Report, histories: dict[str, list[dict[str, Any]]]) -> None:
    for cid, messages in histories.items():
        seqs = [m["seq"] for m in messages]
        if seqs != list(range(1, len(seqs) + 1)):
            dup = [s for s, n in Counter(seqs).items() if n > 1]
            missing = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
            report.bad("history_seqs", conversation=cid, duplicate=dup[:20],
                       missing=missing[:20], count=len(seqs))
        else:
            report.ok("history_seqs")
        for clientId, n in Counter(m["client_id"] for m in messages).items():
            if n > 1:
                report.bad("history_client_id_once", conversation=cid, client_id=clientId,
                           times=n, seqs=[m["seq"] for m in messages
                                          if m["client_id"] == clientId])


def checkAcks(report: Report, soak: "ChaosSoak",
              histories: dict[str, list[dict[str, Any]]]) -> None:
    stored: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for cid, messages in histories.items():
        for m in messages:
            stored[(cid, m["client_id"])].append(m)
    acked = set()
    for ack in soak.acks:
        key = (ack.conversation, ack.clientId)
        found = stored.get(key, [])
        detail = dict(conversation=ack.conversation, client_id=ack.clientId, acked_seq=ack.seq,
                      acked_status=ack.status, attempts=ack.attempts,
                      sent_at=round(ack.sentAt - soak.started, 2),
                      acked_at=round(ack.ackedAt - soak.started, 2))
        if key in acked:
            report.bad("ack_once", **detail, problem="acknowledged twice")
            continue
        acked.add(key)
        if not found:
            report.bad("acked_message_stored", **detail, problem="lost")
        elif len(found) > 1:
            report.bad("acked_message_stored", **detail, problem="stored more than once",
                       seqs=[m["seq"] for m in found])
        elif (found[0]["seq"], found[0]["id"], found[0]["text"], found[0]["sender"]) != \
                (ack.seq, ack.id, ack.text, ack.sender):
            report.bad("acked_message_stored", **detail, problem="stored differently",
                       stored={k: found[0][k] for k in ("seq", "id", "text", "sender")})
        else:
            report.ok("acked_message_stored")
    report.counts["stored_not_acknowledged"] = len(
        [k for k in stored if k not in acked])


def checkPollers(report: Report, soak: "ChaosSoak",
                 histories: dict[str, list[dict[str, Any]]]) -> None:
    for record in soak.polls:
        for v in record.violations:
            report.bad("poller_" + v["kind"], conversation=record.conversation, **v)
        history = {m["seq"]: m["client_id"] for m in histories[record.conversation]}
        expected = record.startAfter + 1
        for seq, clientId in record.seen:
            if seq != expected:
                report.bad("poller_ascending", conversation=record.conversation,
                           expected=expected, got=seq)
                expected = seq
            if history.get(seq, "(missing)") != clientId:
                report.bad("poller_matches_history", conversation=record.conversation,
                           seq=seq, polled=clientId, stored=history.get(seq, "(missing)"))
            expected += 1
        report.ok("poller_ascending")
        last = record.seen[-1][0] if record.seen else record.startAfter
        if last != len(history):
            report.bad("poller_caught_up", conversation=record.conversation, polled=last,
                       stored=len(history))
        else:
            report.ok("poller_caught_up")
        report.counts["polled_events"] += len(record.seen)


def checkInboxes(report: Report, soak: "ChaosSoak", inboxes: dict[str, list[dict[str, Any]]],
                 histories: dict[str, list[dict[str, Any]]]) -> None:
    ids: dict[str, Counter[str]] = {}
    for user, events in inboxes.items():
        seqs = [e["seq"] for e in events]
        if seqs != list(range(1, len(seqs) + 1)):
            report.bad("inbox_seqs", user=user, count=len(seqs),
                       first_bad=next((s for i, s in enumerate(seqs, 1) if s != i), None))
        else:
            report.ok("inbox_seqs")
        ids[user] = Counter(e["id"] for e in events)
        for nid, n in ids[user].items():
            if n > 1:
                report.bad("inbox_id_once", user=user, id=nid, times=n,
                           seqs=[e["seq"] for e in events if e["id"] == nid])
        report.counts["inbox_events"] += len(events)
    for nid, user in soak.flirts.items():
        n = ids[user][nid]
        if n != 1:
            report.bad("flirt_in_inbox_once", id=nid, user=user, times=n,
                       published_twice=nid in soak.flirtsTwice,
                       acked_at=round(soak.flirtTimes[nid] - soak.started, 2))
        else:
            report.ok("flirt_in_inbox_once")
    byId = {e["id"]: e for events in inboxes.values() for e in events}
    for ack in soak.acks:
        nid = f"m.{ack.id}"
        n = ids[ack.recipient][nid]
        detail = dict(id=nid, user=ack.recipient, conversation=ack.conversation, seq=ack.seq,
                      client_id=ack.clientId, acked_at=round(ack.ackedAt - soak.started, 2))
        if n != 1:
            report.bad("message_notification_once", **detail, times=n)
            continue
        event = byId[nid]
        data = event.get("data") or {}
        if (event["type"], event["from"], data.get("conversation"), data.get("seq")) != \
                ("message", ack.sender, ack.conversation, ack.seq):
            report.bad("message_notification_once", **detail, problem="wrong content",
                       event=event)
        else:
            report.ok("message_notification_once")


def faultAt(soak: "ChaosSoak", t: float) -> str:
    """
    The fault in force at C{t} (seconds since the start), or the last one before it.
    """
    before = [f for f in soak.faultLog if f.start <= t]
    if not before:
        return "before any fault"
    f = before[-1]
    where = "during" if t <= f.end else f"{t - f.end:.2f}s after"
    return f"{where} {f.kind} of {f.target} ({f.start}-{f.end}s)"


def explain(report: Report, soak: "ChaosSoak", logs: dict[str, str]) -> None:
    """
    Add to each violation the fault it happened in or after, and for a missing or doubled
    notification the node log lines that name it (how many, and the last one).
    """
    for details in report.violations.values():
        for detail in details[:MAX_DETAILS]:
            t = detail.get("acked_at", detail.get("t"))
            if isinstance(t, (int, float)):
                detail["fault"] = faultAt(soak, t)
                # What came next: a notification held in flight or deferred by nsqd for up
                # to msg_timeout (30 s) is lost with a kill -9 of nsqd in that time.
                detail["faults_after"] = [f"{f.kind} {f.target} at {f.start}s"
                                          for f in soak.faultLog if t < f.start <= t + 35][:8]
            nid = detail.get("id")
            if isinstance(nid, str):
                # Diagnosis only: whether nsqd ever handed it out (on the soak's own channel).
                detail["nsqd_had_it"] = nid in soak.audited
                named = re.compile(r"(?<![A-Za-z0-9_.-])" + re.escape(nid) + r"(?![A-Za-z0-9_-])")
                lines = [f"{node}: {line}" for node, text in sorted(logs.items())
                         for line in text.splitlines() if named.search(line)]
                detail["log_lines"] = len(lines)
                if lines:
                    detail["last_log"] = lines[-1][:400]


def faultWindows(soak: "ChaosSoak") -> list[dict[str, Any]]:
    return [{"kind": f.kind, "target": f.target, "start": f.start, "end": f.end, **f.detail}
            for f in soak.faultLog]


async def check(soak: "ChaosSoak", settle: dict[str, Any]) -> dict[str, Any]:
    """
    Read every history and inbox, let the pollers catch up, and judge; the summary.
    """
    client = ChaosClient(soak, random.Random(f"{soak.config.seed}-check"))
    report = Report()
    histories: dict[str, list[dict[str, Any]]] = {}
    for cid in soak.conversations:
        try:
            histories[cid] = await readHistory(client, cid)
        except (AssertionError, TimeoutError) as e:
            report.bad("history_readable", conversation=cid, error=str(e)[:300])
            histories[cid] = []
    deadline = now() + 15
    while now() < deadline and any(soak.lastPolled(r) < len(histories[r.conversation])
                                   for r in soak.polls):
        await sleep(0.2)
    inboxes: dict[str, list[dict[str, Any]]] = {}
    for user in soak.users:
        try:
            inboxes[user] = await readInbox(client, user)
        except (AssertionError, TimeoutError) as e:
            report.bad("inbox_readable", user=user, error=str(e)[:300])
            inboxes[user] = []
    checkHistories(report, histories)
    checkAcks(report, soak, histories)
    checkPollers(report, soak, histories)
    checkInboxes(report, soak, inboxes, histories)
    for problem in soak.problems:
        report.bad(problem["kind"], **{k: v for k, v in problem.items() if k != "kind"})
    logs = soak.nodeLogs()
    explain(report, soak, logs)
    tracebacks = {n: text.count("Traceback") for n, text in logs.items()}
    markers = {marker: sum(text.count(marker) for text in logs.values())
               for marker in LOG_MARKERS}
    summary = {
        "seed": soak.config.seed,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soak.startedWall)),
        "duration": soak.config.duration,
        "faults": Counter(f.kind for f in soak.faultLog),
        "fault_log": faultWindows(soak),
        "acknowledged_messages": len(soak.acks),
        "stored_messages": sum(len(m) for m in histories.values()),
        "acknowledged_as_repeat": sum(1 for a in soak.acks if a.status == 200),
        "repeated_sends": soak.repeats,
        "acknowledged_flirts": len(soak.flirts),
        "flirts_published_twice": len(soak.flirtsTwice),
        "conversations": len(soak.conversations),
        "settle": settle,
        "statuses": dict(soak.statuses),
        "tracebacks": tracebacks,
        "log_markers": markers,
        **report.asDict(),
    }
    summary["ok"] = not summary["violations"]
    return summary
