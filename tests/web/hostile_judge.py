"""
Sending L{tests.web.hostile} attacks over raw sockets and judging the answers.

The answers are parsed strictly here (status line, each header line, the body by its
framing) and parsed again with httptools' response parser; a node's answer is wrong when it is
a 5xx (but a 503 with Retry-After, load shedding), a 4xx that is not the JSON error of
DESIGN §3, a status the attack does not allow, a header line with CR, LF or NUL or an injected
header, a traceback, a stored message, late, or when the connection is neither closed nor
still usable afterwards. Everything runs on asyncio, so that tests run it in a thread and
the bench runs it directly.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from dataclasses import dataclass, field

import httptools

from tests.web.hostile import CLOSE, INJECTED, MARKER, OTHER, VICTIM, Attack, Context, request

_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5]\d\d) [\t\x20-\x7e\x80-\xff]*")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_CODE = re.compile(r"[a-z][a-z0-9_]*")
TRACE_ECHO = b"hpchat-trace-echo"


class BadAnswer(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def parseResponses(data: bytes, firstIsHead: bool = False, closed: bool = False):
    """
    The complete answers at the start of C{data}, and whether bytes of an incomplete one
    follow; raise L{BadAnswer} for anything malformed.
    """
    responses: list[Response] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(data) - pos > 65536:
                raise BadAnswer("an answer head over 64 KiB")
            return responses, True
        lines = data[pos:end].split(b"\r\n")
        match = _STATUS.fullmatch(lines[0])
        if match is None:
            raise BadAnswer(f"bad status line {lines[0][:80]!r}")
        status = int(match.group(1))
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise BadAnswer(f"bad header line {line[:120]!r}")
            value = value.strip(b" \t")
            if not _VALUE.fullmatch(value):
                raise BadAnswer(f"CR, LF, NUL or a control byte in header {line[:120]!r}")
            headers.append((name, value))
        start = end + 4
        response = Response(status, headers, b"", data[pos:end])
        te = response.header(b"transfer-encoding")
        lengths = [v for k, v in headers if k.lower() == b"content-length"]
        noBody = status < 200 or status in (204, 304) or (firstIsHead and not responses)
        if noBody:
            stop = start
        elif te is not None:
            if te.lower() != b"chunked":
                raise BadAnswer(f"answer Transfer-Encoding {te!r}")
            body, stop = _chunks(data, start)
            if stop < 0:
                return responses, True
            response.body = body
        elif lengths:
            if len(lengths) > 1 or not lengths[0].isdigit():
                raise BadAnswer(f"answer Content-Length {lengths!r}")
            stop = start + int(lengths[0])
            if stop > len(data):
                return responses, True
            response.body = data[start:stop]
        else:
            if not closed:
                return responses, True
            stop = len(data)
            response.body = data[start:]
        responses.append(response)
        pos = stop
    return responses, False


def _chunks(data: bytes, pos: int) -> tuple[bytes, int]:
    body = bytearray()
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return b"", -1
        size = data[pos:end].split(b";")[0]
        if not re.fullmatch(rb"[0-9a-fA-F]{1,8}", size):
            raise BadAnswer(f"bad answer chunk size {size[:20]!r}")
        n = int(size, 16)
        if n == 0:
            stop = data.find(b"\r\n\r\n", end)
            return (bytes(body), stop + 4) if stop >= 0 else (b"", -1)
        if end + 2 + n + 2 > len(data):
            return b"", -1
        body += data[end + 2:end + 2 + n]
        if data[end + 2 + n:end + 4 + n] != b"\r\n":
            raise BadAnswer("answer chunk not ended by CRLF")
        pos = end + 4 + n


def httptoolsCount(data: bytes) -> int:
    """
    How many whole answers httptools finds in C{data}; raise L{BadAnswer} if it refuses it.
    """
    done = []

    class Sink:
        def on_message_complete(self):
            done.append(1)

    parser = httptools.HttpResponseParser(Sink())
    try:
        parser.feed_data(data)
    except httptools.HttpParserError as e:
        raise BadAnswer(f"httptools refuses the answer: {e}") from None
    return len(done)


@dataclass
class Outcome:
    attack: Attack
    data: bytes = b""
    responses: list[Response] = field(default_factory=list)
    answeredAt: float | None = None
    closedAt: float | None = None
    reset: bool = False
    problems: list[str] = field(default_factory=list)
    shed: bool = False

    def status(self) -> int | None:
        final = [r for r in self.responses if r.status >= 200]
        return final[0].status if final else None


def probeRequest(host: bytes) -> bytes:
    return request(b"GET", b"/healthz", [(b"Host", host)])


class _Conn:
    def __init__(self, reader, writer, loop):
        self.reader, self.writer, self.loop = reader, writer, loop
        self.buf = bytearray()
        self.start = loop.time()
        self.closedAt: float | None = None
        self.reset = False
        self.changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self):
        try:
            while True:
                chunk = await self.reader.read(65536)
                if not chunk:
                    break
                self.buf += chunk
                self.changed.set()
        except OSError:
            self.reset = True
        finally:
            self.closedAt = self.loop.time() - self.start
            self.changed.set()

    async def waitChange(self, until: float) -> bool:
        left = until - (self.loop.time() - self.start)
        if left <= 0:
            return False
        self.changed.clear()
        try:
            await asyncio.wait_for(self.changed.wait(), left)
        except asyncio.TimeoutError:
            return False
        return True

    def finals(self, head: bool) -> tuple[list[Response], bool]:
        responses, partial = parseResponses(bytes(self.buf), head, self.closedAt is not None)
        return [r for r in responses if r.status >= 200], partial

    async def send(self, data: bytes) -> bool:
        if self.closedAt is not None:
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError:
            return False
        return True


async def runAttack(host: str, port: int, attack: Attack, hostHeader: bytes) -> Outcome:
    loop = asyncio.get_running_loop()
    out = Outcome(attack)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, asyncio.TimeoutError) as e:
        out.problems.append(f"could not connect: {e!r}")
        return out
    conn = _Conn(reader, writer, loop)
    try:
        await _drive(conn, attack, out, hostHeader)
    except BadAnswer as e:
        out.problems.append(str(e))
    finally:
        writer.transport.abort()
        conn.task.cancel()
        out.data = bytes(conn.buf)
        out.reset = conn.reset
    return out


async def _drive(conn: _Conn, attack: Attack, out: Outcome, hostHeader: bytes) -> None:
    head = attack.head
    for i, piece in enumerate(attack.pieces):
        if conn.finals(head)[0] or not await conn.send(piece):
            break
        if attack.pause and i < len(attack.pieces) - 1:
            if conn.loop.time() - conn.start > attack.deadline:
                break
            await asyncio.sleep(attack.pause)
    while len(conn.finals(head)[0]) < attack.answers and conn.closedAt is None:
        if not await conn.waitChange(attack.deadline):
            break
    finals, partial = conn.finals(head)
    now = conn.loop.time() - conn.start
    if not finals:
        out.closedAt = conn.closedAt
        if conn.closedAt is None:
            out.problems.append(f"neither answered nor closed within {attack.deadline:g} s")
        elif not attack.silentClose:
            out.problems.append("closed without an answer" + (" (reset)" if conn.reset else ""))
        elif conn.closedAt > attack.deadline:
            out.problems.append(f"closed only after {conn.closedAt:.1f} s")
        if conn.buf:
            out.responses = parseResponses(bytes(conn.buf), head, True)[0]
        return
    out.answeredAt = now
    if now > attack.deadline:
        out.problems.append(f"answered only after {now:.1f} s (deadline {attack.deadline:g})")
    if len(finals) < attack.answers:
        out.problems.append(f"{len(finals)} answers to {attack.answers} requests, then "
                            + ("closed" if conn.closedAt is not None else "nothing"))
    elif len(finals) > attack.answers and attack.category != "fuzz":
        out.problems.append(f"{len(finals)} answers to {attack.answers} request(s)")
    first = finals[min(len(finals), attack.answers) - 1]
    mustClose = attack.closeWithin
    if (first.header(b"connection") or b"").lower() == b"close" and mustClose is None:
        mustClose = CLOSE
    if mustClose is not None:
        while conn.closedAt is None and await conn.waitChange(now + mustClose):
            pass
        if conn.closedAt is None:
            out.problems.append(f"connection not closed within {mustClose:g} s of the answer")
    elif attack.probe and conn.closedAt is None:
        count = len(finals)
        if await conn.send(probeRequest(hostHeader)):
            until = now + 5.0
            while len(conn.finals(False)[0]) <= count and conn.closedAt is None:
                if not await conn.waitChange(until):
                    break
        finals = conn.finals(head)[0]
        if len(finals) > count:
            answer = finals[count]
            if answer.status != 200 or b'"status"' not in answer.body:
                out.problems.append(f"the next request got {answer.status} "
                                    f"{answer.body[:120]!r}: the connection is out of step")
        elif conn.closedAt is None:
            out.problems.append("the connection stays open but a next request gets no answer")
    out.closedAt = conn.closedAt
    out.responses = parseResponses(bytes(conn.buf), head, conn.closedAt is not None)[0]
    framed = all(r.status < 200 or r.status in (204, 304) or r.header(b"content-length")
                 or r.header(b"transfer-encoding") for r in out.responses)
    if not head and not partial and framed and conn.buf:
        counted = httptoolsCount(bytes(conn.buf))
        if counted < len(out.responses):
            out.problems.append(f"httptools finds {counted} answers, not {len(out.responses)}")


def judge(out: Outcome, secrets: tuple[bytes, ...] = ()) -> list[str]:
    """
    Everything wrong with the node's answers to one attack (empty if all is well); none may
    hold any of C{secrets}.
    """
    attack = out.attack
    problems = list(out.problems)
    for secret in secrets:
        if secret in out.data:
            problems.append("an answer discloses a secret")
    finals = [r for r in out.responses if r.status >= 200]
    for i, response in enumerate(out.responses):
        problems += _answerProblems(response, attack)
        if response.status == 201:
            problems.append("a 201: something was stored")
    if not finals:
        return problems
    for earlier in finals[:min(len(finals), attack.answers) - 1]:
        if not 200 <= earlier.status < 300:
            problems.append(f"a pipelined valid request answered {earlier.status}")
    first = finals[min(len(finals), attack.answers) - 1]
    shed = first.status in (429, 503) and first.header(b"retry-after") is not None
    if shed and first.status == 503:
        out.shed = True
    if first.status >= 500 and not shed:
        return problems
    if attack.statuses is None:
        return problems
    if first.status not in attack.statuses and not shed:
        problems.append(f"status {first.status}, expected one of {sorted(attack.statuses)}")
    elif 400 <= first.status < 500 and attack.codes is not None and not shed:
        code = _errorCode(first)
        if code is not None and code not in attack.codes:
            problems.append(f"error code {code!r}, expected one of {sorted(attack.codes)}")
    return problems


def _errorCode(response: Response) -> str | None:
    try:
        return json.loads(response.body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _answerProblems(response: Response, attack: Attack) -> list[str]:
    problems = []
    status = response.status
    if status >= 500 and not (status == 503 and response.header(b"retry-after")):
        problems.append(f"a {status} answer")
    if status == 101:
        problems.append("switched protocols")
    for name, _ in response.headers:
        if name.lower() == b"x-injected":
            problems.append("an injected header in the answer")
    if b"Traceback" in response.body or b"Traceback" in response.raw:
        problems.append("a traceback in the answer")
    if TRACE_ECHO in response.body:
        problems.append("the request is echoed back")
    if INJECTED in response.raw.split(b"\r\n", 1)[0]:
        problems.append("an injected status line")
    if 400 <= status < 600 and not (attack.head and response.body == b""):
        problems += _errorShape(response)
    return problems


def _errorShape(response: Response) -> list[str]:
    kind = (response.header(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/json":
        return [f"a {response.status} answer of type {kind.decode('latin-1')!r}, "
                f"not JSON: {response.body[:80]!r}"]
    try:
        value = json.loads(response.body)
    except ValueError:
        return [f"a {response.status} answer that is not JSON: {response.body[:80]!r}"]
    error = value.get("error") if isinstance(value, dict) else None
    if (not isinstance(error, dict) or not isinstance(error.get("code"), str)
            or not isinstance(error.get("message"), str) or not _CODE.fullmatch(error["code"])):
        return [f"a {response.status} answer not shaped {{'error': {{'code', 'message'}}}}: "
                f"{response.body[:120]!r}"]
    return []


@dataclass
class Report:
    outcomes: list[Outcome]
    violations: list[tuple[Outcome, list[str]]]

    def byCategory(self) -> dict[str, Counter]:
        counts: dict[str, Counter] = {}
        for out in self.outcomes:
            c = counts.setdefault(out.attack.category, Counter())
            c["attacks"] += 1
            c["shed"] += out.shed
        for out, _ in self.violations:
            counts[out.attack.category]["violations"] += 1
        return counts

    def describe(self, limit: int = 20) -> str:
        """
        The first violation of each kind (category and attack, whatever its route), how
        many of that kind there were, and the exact bytes sent and received.
        """
        kinds: dict[tuple[str, str], list[tuple[Outcome, list[str]]]] = {}
        for out, problems in self.violations:
            kind = (out.attack.category, out.attack.name.split(" [")[0])
            kinds.setdefault(kind, []).append((out, problems))
        lines = []
        for (category, name), found in list(kinds.items())[:limit]:
            out, problems = found[0]
            a = out.attack
            lines.append(f"#{a.index} {category}: {a.name} ({len(found)} like it)\n"
                         f"  sent: {a.data[:300]!r}\n  got:  {out.data[:300]!r}\n"
                         f"  problems: {'; '.join(problems)}")
        if len(kinds) > limit:
            lines.append(f"... and {len(kinds) - limit} more kinds")
        return "\n".join(lines)


async def runAll(host: str, port: int, attacks: list[Attack], concurrency: int,
                 hostHeader: bytes, progress=None, secrets: tuple[bytes, ...] = ()) -> Report:
    semaphore = asyncio.Semaphore(concurrency)
    done = [0]

    async def one(attack):
        if attack.pause:
            # Slow clients hold their connection, not a place in the queue.
            out = await runAttack(host, port, attack, hostHeader)
        else:
            async with semaphore:
                out = await runAttack(host, port, attack, hostHeader)
        done[0] += 1
        if progress is not None:
            progress(done[0], len(attacks))
        return out

    # Slow attacks first, so that they run alongside the rest rather than at the end.
    ordered = sorted(attacks, key=lambda a: 0 if a.category == "slow" else 1)
    outcomes = await asyncio.gather(*(one(a) for a in ordered))
    outcomes.sort(key=lambda o: o.attack.index)
    violations = [(o, p) for o in outcomes for p in [judge(o, secrets)] if p]
    return Report(outcomes, violations)


# -- the node's state around a run


def logProblems(log: str, ctx: Context) -> list[str]:
    """
    What the node's log must not hold after a run: tracebacks, unhandled errors, the secret
    or a valid token (requests carry them in headers and queries).
    """
    problems = []
    for word in ("Traceback", "Unhandled"):
        if word in log:
            at = log.index(word)
            problems.append(f"the log holds {word!r} ({log.count(word)} times), first: "
                            f"{log[max(0, at - 300):at + 1200]}")
    secrets = [("the secret", ctx.secret.decode())]
    secrets += [(f"the token of {user}", token) for user, token in ctx.tokens.items()]
    for name, secret in secrets:
        if secret in log:
            problems.append(f"the log holds {name}")
    return problems


async def call(host: str, port: int, method: bytes, target: bytes, token: str | None = None,
               body=None, timeout: float = 10.0):
    """
    One plain request on its own connection: C{(status, decoded JSON or raw body)}.
    """
    headers = [(b"Host", b"%s:%d" % (host.encode(), port)), (b"Connection", b"close")]
    if token:
        headers.append((b"Authorization", b"Bearer " + token.encode()))
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers.append((b"Content-Type", b"application/json"))

    async def go():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request(method, target, headers, data))
            raw = await reader.read(-1)
        finally:
            writer.close()
        responses, _ = parseResponses(raw, closed=True)
        response = responses[0]
        try:
            return response.status, json.loads(response.body)
        except ValueError:
            return response.status, response.body

    return await asyncio.wait_for(go(), timeout)


async def _inboxSeq(host: str, port: int, ctx: Context, user: str, after: int = 0,
                    timeout: float = 0) -> int:
    status, body = await call(host, port, b"GET", b"/v1/inbox/events?after=%d&timeout=%g"
                              % (after, timeout), ctx.tokens[user], timeout=timeout + 10)
    if status != 200:
        raise RuntimeError(f"the inbox of {user} answers {status} {body!r}")
    return body["last_seq"]


async def seed(host: str, port: int, ctx: Context) -> None:
    """
    The state a run must leave alone: messages in two conversations, and the notifications
    of them in the inboxes.
    """
    inboxes = {u: await _inboxSeq(host, port, ctx, u) for u in ("alice", "bob", "carol")}
    for user, cid, text in (("alice", VICTIM, "seeded one"), ("bob", VICTIM, "seeded two"),
                            ("alice", VICTIM, "seeded three"), ("bob", OTHER, "seeded four")):
        status, body = await call(host, port, b"POST", b"/v1/conversations/%s/messages"
                                  % cid.encode(), ctx.tokens[user], {"text": text})
        if status not in (200, 201):
            raise RuntimeError(f"seeding failed: {status} {body!r}")
    status, body = await call(host, port, b"GET", b"/v1/conversations/%s/messages?limit=200"
                              % VICTIM.encode(), ctx.tokens["alice"])
    ctx.victimLastSeq = body["messages"][-1]["seq"]
    loop = asyncio.get_running_loop()
    for user, count in (("alice", 1), ("bob", 2), ("carol", 1)):
        deadline = loop.time() + 10
        while await _inboxSeq(host, port, ctx, user) < inboxes[user] + count:
            if loop.time() > deadline:
                raise RuntimeError(f"the notifications of the seeded messages to {user} "
                                   f"did not arrive")
            await _inboxSeq(host, port, ctx, user, inboxes[user], 1)


async def snapshot(host: str, port: int, ctx: Context) -> dict:
    state = {}
    for cid, user in ((VICTIM, "alice"), (OTHER, "bob")):
        status, body = await call(host, port, b"GET", b"/v1/conversations/%s/messages"
                                  b"?limit=200" % cid.encode(), ctx.tokens[user])
        state[cid] = (status, [(m["seq"], m["sender"], m["text"]) for m in body["messages"]]
                      if status == 200 else body)
    for user in ("alice", "bob", "carol"):
        status, body = await call(host, port, b"GET", b"/v1/inbox/events?after=0&timeout=0",
                                  ctx.tokens[user])
        state["inbox:" + user] = (status, [(e["type"], e["id"]) for e in body["events"]]
                                  if status == 200 else body)
    return state


def stateProblems(before: dict, after: dict) -> list[str]:
    """
    What changed between two L{snapshot}s, and any smuggled message found.
    """
    problems = []
    for key, (status, items) in after.items():
        old = before.get(key)
        if (status, items) == old:
            continue
        if status != 200 or old is None or old[0] != 200:
            problems.append(f"{key} answers {status} {items!r:.300} (before: {old!r:.300})")
            continue
        added = [item for item in items if item not in old[1]]
        gone = [item for item in old[1] if item not in items]
        problems.append(f"{key} changed: {len(added)} new, {len(gone)} gone; new: "
                        f"{added[:8]!r:.600}")
        smuggled = [item for item in added if MARKER in repr(item) or "hostile" in repr(item)]
        if smuggled:
            problems.append(f"{key} holds {len(smuggled)} smuggled messages: "
                            f"{smuggled[:8]!r:.600}")
    return problems


async def healthy(host: str, port: int, ctx: Context) -> list[str]:
    """
    The node still serves: /healthz, and a real send seen by a poll.
    """
    problems = []
    status, body = await call(host, port, b"GET", b"/healthz")
    if status != 200:
        problems.append(f"/healthz answers {status} {body!r}")
    cid = b"/v1/conversations/dm:carol:dave"
    status, sent = await call(host, port, b"POST", cid + b"/messages", ctx.tokens["carol"],
                              {"text": "after the storm"})
    if status != 201:
        return problems + [f"a send after the run answers {status} {sent!r}"]
    seq = sent["message"]["seq"]
    status, polled = await call(host, port, b"GET", cid + b"/events?after=%d&timeout=5"
                                % (seq - 1), ctx.tokens["dave"])
    if status != 200 or [e["text"] for e in polled["events"]] != ["after the storm"]:
        problems.append(f"a poll after the run answers {status} {polled!r}")
    return problems
