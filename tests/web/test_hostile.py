"""
Hostile input against one real node: a few thousand raw-socket attacks (tests/web/hostile.py)
must leave no 5xx, no traceback, no stored message and a node that still serves; and the
generators and the judge themselves do what they claim.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time

import jwt
from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.node import SECRET, Node
from tests.support.trial import asyncTest
from tests.web import hostile_api
from tests.web import hostile_judge as judge
from tests.web.hostile import (
    INJECTED,
    MARKER,
    Attack,
    Context,
    build,
    categories,
    coreSize,
    request,
)

LIMITS = {"head_timeout": "1.5", "body_timeout": "5", "idle_timeout": "3",
          "sends_per_second": "1000000", "sends_burst": "1000000",
          "typing_per_second": "1000000", "typing_burst": "1000000",
          "max_polls_per_user": "100000"}
USERS = ("alice", "bob", "carol", "dave")
ATTACKS = int(os.environ.get("HPCHAT_HOSTILE_ATTACKS", "3000"))
SEED = int(os.environ.get("HPCHAT_HOSTILE_SEED", "20261201"))


def makeContext(host: bytes = b"127.0.0.1:1", now: float | None = None) -> Context:
    now = time.time() if now is None else now
    exp = int(now) + 3600
    tokens = {u: jwt.encode({"sub": u, "exp": exp}, SECRET, algorithm="HS256") for u in USERS}
    return Context(host=host, tokens=tokens, secret=SECRET.encode(),
                   head_timeout=float(LIMITS["head_timeout"]),
                   body_timeout=float(LIMITS["body_timeout"]),
                   idle_timeout=float(LIMITS["idle_timeout"]), max_poll_timeout=5.0, now=now)


class HostileNodeTests(TestCase):
    """
    One node (SQLite, short timeouts) under a bounded hostile suite.
    """

    timeout = 300

    @asyncTest
    async def test_hostileSuite(self):
        """
        When a few thousand attacks of every category hit a node from several connections
        at once, every answer is right, nothing stored changes, the log holds no traceback,
        and the node still answers /healthz and a real send and poll.
        """
        node = Node(_dir(self), "hostile",
                    sections={"limits": LIMITS, "http": {"cors_origins": "*"},
                              "chat": {"max_poll_timeout": "5"}})
        await node.start()
        self.addCleanup(node.stop)
        ctx = makeContext(b"127.0.0.1:%d" % node.port)
        report, problems = await threads.deferToThread(
            asyncio.run, _run("127.0.0.1", node.port, ctx))
        problems += judge.logProblems(node.log(), ctx)
        counts = report.byCategory()
        self.assertEqual(set(counts), set(categories()))
        if report.violations or problems:
            self.fail(f"{len(report.violations)} of {len(report.outcomes)} attacks wrongly "
                      f"answered (seed {SEED}):\n{report.describe(25)}\n" + "\n".join(problems))


def _dir(case) -> str:
    path = os.path.abspath(case.mktemp())
    os.makedirs(path)
    return path


async def _run(host: str, port: int, ctx: Context):
    await judge.seed(host, port, ctx)
    before = await judge.snapshot(host, port, ctx)
    attacks = build(ctx, ATTACKS, SEED, slowloris=40)
    report = await judge.runAll(host, port, attacks, 24, ctx.host, secrets=(ctx.secret,))
    after = await judge.snapshot(host, port, ctx)
    return report, judge.stateProblems(before, after) + await judge.healthy(host, port, ctx)


class GeneratorTests(SynchronousTestCase):
    """
    The attack generators make what they claim.
    """

    def setUp(self):
        self.now = time.time()
        self.ctx = makeContext(now=self.now)
        self.attacks = build(self.ctx, 3000, 7)

    def byCategory(self, name: str) -> list[Attack]:
        return [a for a in self.attacks if a.category == name]

    def test_everyCategory(self):
        """
        Every category yields attacks of its own name, all its fixed cases first.
        """
        for name, (generator, share) in categories().items():
            made = self.byCategory(name)
            self.assertTrue(made, name)
            self.assertGreaterEqual(len(made), coreSize(self.ctx, name), name)
            first = next(iter(generator(self.ctx, random.Random(1))))
            self.assertEqual(first.category, name)
        self.assertGreaterEqual(len(self.attacks), 2900)

    def test_deterministic(self):
        """
        The same seed builds the same bytes; another seed builds other variants.
        """
        again = build(makeContext(now=self.now), 3000, 7)
        self.assertEqual([a.data for a in again if a.marker is None],
                         [a.data for a in self.attacks if a.marker is None])
        other = build(makeContext(now=self.now), 3000, 8)
        self.assertNotEqual([a.data for a in other], [a.data for a in self.attacks])

    def test_validOnlyWithReason(self):
        """
        An attack that allows a 2xx or 3xx answer says why; every other allows only 4xx.
        """
        for attack in self.attacks:
            if attack.statuses is None:
                self.assertEqual(attack.category, "fuzz")
                continue
            self.assertTrue(attack.statuses, attack.name)
            self.assertFalse([s for s in attack.statuses if s >= 500], attack.name)
            if [s for s in attack.statuses if s < 400]:
                self.assertTrue(attack.why, attack.name)

    def test_smuggledSendsAreHidden(self):
        """
        A smuggling attack hides a whole send of its marker behind the first request, and
        never expects that send to be answered.
        """
        smuggling = self.byCategory("smuggling")
        self.assertGreater(len(smuggling), 50)
        for attack in smuggling:
            self.assertIsNotNone(attack.marker, attack.name)
            self.assertTrue(attack.marker.startswith(MARKER))
            data = attack.data
            self.assertIn(json.dumps({"text": attack.marker}).encode(), data)
            self.assertGreater(data.index(b"POST /v1/conversations/dm:alice:bob/messages"), 0)
            self.assertNotIn(201, attack.statuses)

    def test_limitsExceedWhatTheyClaim(self):
        """
        The limit attacks are over (or, for the valid ones, under) the node's limits.
        """
        named = {a.name.split(" [")[0]: a for a in self.byCategory("limits")}
        ctx = self.ctx
        self.assertGreater(named["one header over max_head_bytes"].data.find(b"\r\n\r\n"),
                           ctx.max_head_bytes)
        self.assertGreater(named["more than max_headers headers"].data.count(b"\r\n") - 2,
                           ctx.max_headers)
        self.assertLess(named["headers under max_headers"].data.count(b"\r\n") - 2,
                        ctx.max_headers)
        target = named[f"target of {ctx.max_target_bytes + 1} bytes"].data.split(b" ")[1]
        self.assertEqual(len(target), ctx.max_target_bytes + 1)
        huge = named["Content-Length 1000000000000 on /v1/conversations/dm:alice:bob/messages"]
        self.assertTrue(huge.data.endswith(b"\r\n\r\n"))
        self.assertEqual(huge.closeWithin, 3.0)
        chunked = named["chunked body over max_body_bytes"]
        self.assertGreater(len(chunked.data), ctx.max_body_bytes + 8192)
        exact = named["a body of exactly max_body_bytes, bad JSON"]
        self.assertEqual(len(exact.data.partition(b"\r\n\r\n")[2]), ctx.max_body_bytes)

    def test_slowAttacksOutlastTheTimeouts(self):
        """
        A trickled head takes longer to send than head_timeout, and the deadline leaves the
        node time to close it.
        """
        slow = {a.name: a for a in self.byCategory("slow")}
        trickle = slow["head trickled a byte at a time"]
        self.assertGreater(trickle.pause * (len(trickle.pieces) - 1), self.ctx.head_timeout)
        self.assertGreater(trickle.deadline, self.ctx.head_timeout)
        self.assertTrue(trickle.silentClose)

    def test_fuzzMutates(self):
        """
        Fuzz attacks are valid requests with bytes changed.
        """
        fuzz = self.byCategory("fuzz")
        self.assertGreater(len(fuzz), 100)
        originals = {route.build(self.ctx) for route in hostile_api.ROUTES}
        self.assertFalse([a for a in fuzz if a.data in originals])


def _out(raw: bytes, attack: Attack | None = None, closed: bool = True) -> judge.Outcome:
    attack = attack or Attack("framing", "x", (b"",), frozenset({400}), frozenset({"bad_json"}))
    responses, _ = judge.parseResponses(raw, closed=closed)
    return judge.Outcome(attack, raw, responses, answeredAt=0.1, closedAt=0.2)


def _answer(status: int, body: bytes, headers: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (status, len(body), headers) + body)


ERROR = b'{"error": {"code": "bad_json", "message": "the body must be JSON"}}'


class JudgeTests(SynchronousTestCase):
    """
    The judge accepts right answers and names what is wrong with the others.
    """

    def test_jsonErrorAccepted(self):
        """
        A JSON 400 with the documented shape and an allowed code is right.
        """
        self.assertEqual(judge.judge(_out(_answer(400, ERROR))), [])

    def test_wrongAnswers(self):
        """
        HTML errors, 500s, wrong statuses and codes, tracebacks and stored messages are
        each reported.
        """
        html = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n"
                b"Content-Length: 4\r\n\r\n<p/>")
        cases = {
            html: "not JSON",
            _answer(500, b'{"error": {"code": "internal", "message": "x"}}'): "a 500",
            _answer(404, b'{"error": {"code": "not_found", "message": "x"}}'): "status 404",
            _answer(400, b'{"error": {"code": "other", "message": "x"}}'): "error code",
            _answer(400, b'{"error": "bad_json"}'): "not shaped",
            _answer(400, b'{"error": {"code": "bad_json", "message": "Traceback"}}'):
                "traceback",
            _answer(201, b'{"message": {}}'): "201",
        }
        for raw, expected in cases.items():
            problems = judge.judge(_out(raw))
            self.assertTrue([p for p in problems if expected in p], (raw, problems))

    def test_shedding(self):
        """
        A 503 with Retry-After is load shedding, not a violation; without it, it is one.
        """
        body = b'{"error": {"code": "overloaded", "message": "x"}}'
        shed = _out(_answer(503, body, b"Retry-After: 1\r\n"))
        self.assertEqual(judge.judge(shed), [])
        self.assertTrue(shed.shed)
        self.assertTrue(judge.judge(_out(_answer(503, body))))

    def test_injectedHeaders(self):
        """
        A header line holding a bare CR, LF or NUL is refused, and an injected header is
        reported.
        """
        for bad in (b"X-A: a\rb\r\n", b"X-A: a\nb\r\n", b"X-A: a\x00b\r\n", b"X A: b\r\n"):
            self.assertRaises(judge.BadAnswer, judge.parseResponses, _answer(400, ERROR, bad))
        problems = judge.judge(_out(_answer(400, ERROR, b"X-Injected: " + INJECTED + b"\r\n")))
        self.assertTrue([p for p in problems if "injected" in p], problems)

    def test_framing(self):
        """
        Answers are split by their Content-Length or chunks; one without either runs to
        the close, and is incomplete while the connection is open.
        """
        chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\n\r\n")
        two = chunked + _answer(400, ERROR)
        responses, partial = judge.parseResponses(two)
        self.assertEqual([(r.status, r.body) for r in responses], [(200, b"abc"),
                                                                    (400, ERROR)])
        self.assertFalse(partial)
        self.assertEqual(judge.httptoolsCount(two), 2)
        unframed = b"HTTP/1.1 200 OK\r\n\r\nrest"
        self.assertEqual(judge.parseResponses(unframed), ([], True))
        self.assertEqual(judge.parseResponses(unframed, closed=True)[0][0].body, b"rest")

    def test_runAttackAgainstAServer(self):
        """
        Against a server that answers a JSON 400 and keeps the connection in step, an
        attack passes; against one that answers twice, or that keeps the connection open
        when it must close it, it does not. Pipelined requests expect one answer each.
        """
        async def serve(answer: bytes | list[bytes], attack: Attack | None = None):
            # The i-th request gets the i-th answer, and any further one a /healthz answer.
            answers = answer if isinstance(answer, list) else [answer]
            handlers = []

            async def handle(reader, writer):
                handlers.append(asyncio.current_task())
                for i in itertools.count():
                    try:
                        await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, OSError):
                        break
                    writer.write(answers[i] if i < len(answers)
                                 else _answer(200, b'{"status": "ok"}'))
                writer.close()

            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            if attack is None:
                attack = Attack("framing", "x", (request(b"GET", b"/x"),), frozenset({400}))
            try:
                out = await judge.runAttack("127.0.0.1", port, attack, b"h")
            finally:
                await asyncio.wait_for(asyncio.gather(*handlers), 5)
                server.close()
                await server.wait_closed()
            return judge.judge(out)

        self.assertEqual(asyncio.run(serve(_answer(400, ERROR))), [])
        problems = asyncio.run(serve(_answer(400, ERROR) + _answer(400, ERROR)))
        self.assertTrue([p for p in problems if "2 answers" in p], problems)
        closing = Attack("framing", "x", (request(b"GET", b"/x"),), frozenset({400}),
                         closeWithin=0.5)
        problems = asyncio.run(serve(_answer(400, ERROR), closing))
        self.assertTrue([p for p in problems if "not closed" in p], problems)
        two = Attack("pipelining", "x", (request(b"GET", b"/x") * 2,), frozenset({400}),
                     why="test", answers=2)
        ok = _answer(200, b'{"status": "ok"}')
        self.assertEqual(asyncio.run(serve([ok, _answer(400, ERROR)], two)), [])
        problems = asyncio.run(serve([_answer(400, ERROR), _answer(400, ERROR)], two))
        self.assertTrue([p for p in problems if "pipelined" in p], problems)

    def test_secretsAndLogs(self):
        """
        An answer holding the secret is a violation; a log holding a traceback, the secret
        or a token is reported.
        """
        ctx = makeContext()
        out = _out(_answer(400, b'{"error": {"code": "bad_json", "message": "%s"}}'
                           % ctx.secret))
        self.assertTrue(judge.judge(out, (ctx.secret,)))
        self.assertEqual(judge.logProblems("started\nstopped\n", ctx), [])
        for log in ("Traceback (most recent call last):", "Unhandled error in Deferred",
                    "GET /x?access_token=" + ctx.tokens["bob"], ctx.secret.decode()):
            self.assertTrue(judge.logProblems(log, ctx), log)
