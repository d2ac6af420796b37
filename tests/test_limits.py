"""
Tests for L{hpchat.limits}: token buckets per user, their memory bound, and the per-user
count of waiting polls, deterministic on a Clock; and the [limits] of a real node process.
"""

from __future__ import annotations

import os

from twisted.internet import defer, task
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from hpchat.config import LimitsConfig
from hpchat.limits import (
    FORGET_PER_TAKE,
    ConcurrencyLimit,
    RateLimiter,
    TokenBucket,
    UserLimits,
    retryAfter,
)


class TokenBucketTests(SynchronousTestCase):
    def test_takesWhileTokensLast(self):
        """
        A bucket gives one token per take while it has one, then says how long to wait for
        the next and takes nothing.
        """
        bucket = TokenBucket(2.0, 0.0)
        self.assertEqual(bucket.take(0.0, 4.0, 2), 0.0)
        self.assertEqual(bucket.take(0.0, 4.0, 2), 0.0)
        self.assertEqual(bucket.take(0.0, 4.0, 2), 0.25)
        self.assertEqual(bucket.tokens, 0.0)

    def test_refillsAtTheRateUpToTheBurst(self):
        """
        Tokens come back at the rate, but never more than the burst are saved up.
        """
        bucket = TokenBucket(0.0, 0.0)
        self.assertAlmostEqual(bucket.take(0.1, 2.0, 3), 0.4)
        self.assertEqual(bucket.take(0.5, 2.0, 3), 0.0)
        self.assertEqual(bucket.take(1000.0, 2.0, 3), 0.0)
        self.assertEqual(bucket.tokens, 2.0)

    def test_clockGoingBackGivesNothing(self):
        """
        A clock that steps back adds no tokens (and takes none away).
        """
        bucket = TokenBucket(0.5, 10.0)
        self.assertAlmostEqual(bucket.take(5.0, 1.0, 5), 0.5)
        self.assertEqual(bucket.tokens, 0.5)


class RateLimiterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.limiter = RateLimiter(self.clock, rate=2.0, burst=3)

    def takes(self, key: str = "alice", n: int = 1) -> list[float]:
        return [self.limiter.take(key) for _ in range(n)]

    def test_burstThenRate(self):
        """
        A new key may take the whole burst at once; then one token every 1/rate seconds.
        """
        self.assertEqual(self.takes(n=4), [0.0, 0.0, 0.0, 0.5])
        self.clock.advance(0.25)
        self.assertEqual(self.takes(), [0.25])
        self.clock.advance(0.25)
        self.assertEqual(self.takes(n=2), [0.0, 0.5])

    def test_refusedTakesNothing(self):
        """
        Being refused does not push the next token further away.
        """
        self.takes(n=3)
        self.assertEqual(self.takes(n=5), [0.5] * 5)
        self.clock.advance(0.5)
        self.assertEqual(self.takes(n=2), [0.0, 0.5])

    def test_keysAreIndependent(self):
        """
        One key's empty bucket does not limit another.
        """
        self.takes("alice", 3)
        self.assertEqual(self.takes("alice"), [0.5])
        self.assertEqual(self.takes("bob", 3), [0.0, 0.0, 0.0])

    def test_fullBucketsAreForgotten(self):
        """
        A bucket untouched for burst/rate seconds is full whatever it held, and is forgotten
        at the next take; one used more recently is kept.
        """
        self.takes("alice", 3)
        self.clock.advance(1.0)
        self.takes("bob", 1)
        self.assertEqual(len(self.limiter), 2)
        self.clock.advance(0.5)
        self.takes("carol", 1)
        self.assertEqual(set(self.limiter._buckets), {"bob", "carol"})
        # Forgotten is the same as full: alice may take the whole burst again.
        self.assertEqual(self.takes("alice", 4), [0.0, 0.0, 0.0, 0.5])

    def test_notForgottenBeforeFull(self):
        """
        A bucket that has not had time to refill is kept, and still limits its key.
        """
        self.takes("alice", 3)
        self.clock.advance(1.4)
        self.takes("bob", 1)
        self.assertIn("alice", self.limiter._buckets)
        waits = self.takes("alice", 3)
        self.assertEqual(waits[:2], [0.0, 0.0])
        self.assertAlmostEqual(waits[2], 0.1)

    def test_refusalKeepsTheBucket(self):
        """
        A refused take counts as use: the bucket moves to the recently used end.
        """
        self.takes("alice", 3)
        self.takes("bob", 1)
        self.clock.advance(1.4)
        self.takes("alice", 1)
        self.clock.advance(0.1)
        self.takes("carol", 1)
        self.assertEqual(list(self.limiter._buckets), ["alice", "carol"])

    def test_forgettingIsBoundedPerTake(self):
        """
        At most FORGET_PER_TAKE buckets are forgotten per take; later takes forget the rest.
        """
        for i in range(FORGET_PER_TAKE * 2 + 10):
            self.limiter.take(f"u{i}")
        self.clock.advance(10)
        self.limiter.take("new")
        self.assertEqual(len(self.limiter), FORGET_PER_TAKE + 10 + 1)
        self.limiter.take("new")
        self.limiter.take("new")
        self.assertEqual(list(self.limiter._buckets), ["new"])

    def test_memoryStaysBounded(self):
        """
        Ten thousand users, each sending once a second for a moment, leave no buckets once
        they have all been quiet for burst/rate seconds.
        """
        for second in range(10):
            for i in range(1000):
                self.limiter.take(f"user-{second}-{i}")
            self.clock.advance(1)
        self.assertLess(len(self.limiter), 10_000)
        self.clock.advance(2)
        for _ in range(200):
            self.limiter.take("last")
        self.assertEqual(list(self.limiter._buckets), ["last"])

    def test_badSettings(self):
        """
        A rate that is not positive or a burst below one is refused.
        """
        self.assertRaises(ValueError, RateLimiter, self.clock, 0, 1)
        self.assertRaises(ValueError, RateLimiter, self.clock, 1, 0)
        self.assertRaises(ValueError, RateLimiter, self.clock, float("nan"), 1)


class ConcurrencyLimitTests(SynchronousTestCase):
    def test_atMostMaximumPerKey(self):
        """
        A key may hold C{maximum} at once; another key is counted apart; a release makes
        room again, and a key back at zero leaves no entry.
        """
        limit = ConcurrencyLimit(2)
        self.assertEqual([limit.acquire("alice") for _ in range(3)], [True, True, False])
        self.assertTrue(limit.acquire("bob"))
        self.assertEqual((limit.count("alice"), limit.count("bob")), (2, 1))
        limit.release("alice")
        self.assertTrue(limit.acquire("alice"))
        limit.release("alice")
        limit.release("alice")
        limit.release("bob")
        self.assertEqual(len(limit), 0)
        self.assertEqual(limit.count("alice"), 0)

    def test_addCountsBeyondMaximum(self):
        """
        L{ConcurrencyLimit.add} counts even past the maximum, and L{exceeded} says so until
        enough are released.
        """
        limit = ConcurrencyLimit(1)
        limit.add("alice")
        self.assertFalse(limit.exceeded("alice"))
        limit.add("alice")
        self.assertTrue(limit.exceeded("alice"))
        self.assertFalse(limit.acquire("alice"))
        limit.release("alice")
        self.assertFalse(limit.exceeded("alice"))
        limit.release("alice")
        self.assertEqual(len(limit), 0)

    def test_badMaximum(self):
        self.assertRaises(ValueError, ConcurrencyLimit, 0)


class RetryAfterTests(SynchronousTestCase):
    def test_wholeSecondsAtLeastOne(self):
        """
        Retry-After is whole seconds, rounded up, never 0.
        """
        self.assertEqual([retryAfter(s) for s in (0.001, 0.5, 1.0, 1.01, 4.0)],
                         [b"1", b"1", b"1", b"2", b"4"])


class UserLimitsTests(SynchronousTestCase):
    def test_fromConfig(self):
        """
        The [limits] settings become the two buckets and the poll count.
        """
        clock = task.Clock()
        limits = UserLimits.fromConfig(clock, LimitsConfig(
            sends_per_second=3, sends_burst=4, typing_per_second=0.5, typing_burst=2,
            max_polls_per_user=5))
        self.assertEqual((limits.sends.rate, limits.sends.burst), (3.0, 4))
        self.assertEqual((limits.typing.rate, limits.typing.burst), (0.5, 2))
        self.assertEqual(limits.polls.maximum, 5)
        self.assertEqual([limits.typing.take("alice") for _ in range(3)], [0.0, 0.0, 2.0])


class NodeProcessTests(unittest.TestCase):
    """
    A real C{twistd hpchat} node takes its [limits] from the config file.
    """

    timeout = 60

    def test_limitsFromConfig(self):
        """
        Past sends_burst a send is 429 with Retry-After and not stored; past
        max_polls_per_user a poll is 429; both are counted in /metrics.
        """
        return defer.ensureDeferred(self._limits())

    async def _limits(self):
        from tests.support.node import HTTP, Node
        from tests.support.process import waitFor
        from tests.test_node_process import mintToken

        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, "limited", sections={"limits": {
            "sends_per_second": "0.01", "sends_burst": "2", "max_polls_per_user": "1"}})
        self.addCleanup(lambda: defer.ensureDeferred(node.stop()))
        http = HTTP()
        self.addCleanup(lambda: defer.ensureDeferred(http.close()))
        await node.start()
        alice = await mintToken(node, "alice")
        url = f"{node.url}/v1/conversations/dm:alice:bob"
        statuses = []
        for i in range(3):
            status, headers, body = await http.request("POST", url + "/messages", alice,
                                                       {"text": f"m{i}"})
            statuses.append(status)
        self.assertEqual(statuses, [201, 201, 429])
        self.assertEqual(body["error"]["code"], "rate_limited")
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"100"])
        status, _, body = await http.request("GET", url + "/messages", alice)
        self.assertEqual([m["text"] for m in body["messages"]], ["m0", "m1"])

        waiting = defer.ensureDeferred(http.request("GET", url + "/events?timeout=20", alice))

        async def polling():
            status, _, text = await http.request("GET", f"{node.url}/metrics")
            return b"hpchat_waiting_polls 1.0" in text

        await waitFor(polling, 10, "the conversation poll to wait")
        status, headers, body = await http.request(
            "GET", f"{node.url}/v1/inbox/events?timeout=20", alice)
        self.assertEqual((status, body["error"]["code"]), (429, "rate_limited"))
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"1"])
        waiting.cancel()
        await defer.DeferredList([waiting], consumeErrors=True)
        status, _, text = await http.request("GET", f"{node.url}/metrics")
        self.assertIn(b'hpchat_limited_total{limit="sends"} 1.0', text)
        self.assertIn(b'hpchat_limited_total{limit="polls_per_user"} 1.0', text)
