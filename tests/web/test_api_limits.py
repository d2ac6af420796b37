"""
Tests for the per-user and per-node limits of the HTTP API (DESIGN §9): 429 rate_limited with
Retry-After for sends and typing past their token buckets and for long-polls past
max_polls_per_user, nothing stored when refused, and streams evicted past max_streams and
loaded again transparently.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from hpchat import metrics
from hpchat.groups import Redirect
from tests.web.fakes import GENEROUS, fired
from tests.web.test_api import CID, _APITestMixin, path

OTHER = "dm:alice:carol"


def limited(limit: str) -> float:
    return metrics.REGISTRY.get_sample_value("hpchat_limited_total", {"limit": limit}) or 0.0


class _LimitsMixin(_APITestMixin):
    limits: dict = {}

    def setUp(self):
        self.h = self.makeHarness(limits=replace(GENEROUS, **self.limits))

    def assertRateLimited(self, answer, retryAfter: str):
        self.assertError(answer, 429, "rate_limited")
        self.assertEqual(answer.header("retry-after"), retryAfter)


class SendLimitTests(_LimitsMixin, SynchronousTestCase):
    """
    Sends past the user's bucket (sends_per_second, sends_burst).
    """

    limits = {"sends_per_second": 0.5, "sends_burst": 2}

    def test_burstThenRefused(self):
        """
        The burst is accepted at once; the next send is 429 with Retry-After in whole
        seconds, stored nowhere, shown to no poller, notified to no inbox, and counted.
        """
        before = limited("sends")
        self.assertEqual([self.h.sent(CID, "alice", f"m{i}").code for i in range(2)],
                         [201, 201])
        waiting = self.poll("bob", after=2, timeout=30)
        self.h.flush()
        answer = self.h.sent(CID, "alice", "one too many")
        self.assertRateLimited(answer, "2")
        self.assertEqual(limited("sends") - before, 1)
        self.assertEqual([e.data["text"] for e in self.h.store.stored(CID)], ["m0", "m1"])
        self.assertEqual(len(self.h.store.stored("inbox:bob")), 2)
        self.assertEqual(self.h.persister.pending, 0)
        self.assertNoResult(waiting)
        self.assertEqual(self.h.lastSeq(CID), 2)
        # Two seconds later one more token is there; the seqs go on without a gap.
        self.h.advance(2)
        answer = self.h.sent(CID, "alice", "later")
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.json["message"]["seq"], 3)
        self.assertEqual([e["text"] for e in fired(waiting).json["events"]], ["later"])

    def test_retryAfterRoundsUp(self):
        """
        Retry-After is the wait for the next token rounded up to whole seconds.
        """
        self.h.sent(CID, "alice")
        self.h.sent(CID, "alice")
        self.h.advance(0.9)
        self.assertRateLimited(self.h.sent(CID, "alice"), "2")
        self.h.advance(0.5)
        self.assertRateLimited(self.h.sent(CID, "alice"), "1")
        self.h.advance(0.6)
        self.assertEqual(self.h.sent(CID, "alice").code, 201)

    def test_perUser(self):
        """
        One user's empty bucket, filled from two conversations, limits neither of the
        other participants.
        """
        self.h.sent(CID, "alice")
        self.h.sent(OTHER, "alice")
        self.assertRateLimited(self.h.sent(CID, "alice"), "2")
        self.assertEqual([self.h.sent(CID, "bob").code, self.h.sent(OTHER, "carol").code],
                         [201, 201])

    def test_badRequestsAreNotCharged(self):
        """
        Requests refused before sending (bad body, not a participant) take no token.
        """
        for _ in range(3):
            self.assertEqual(self.h.call("POST", path(CID, "messages"),
                                         body={"text": ""}).code, 400)
            self.assertEqual(self.h.sent(OTHER, "bob").code, 403)
        self.assertEqual([self.h.sent(CID, "alice").code for _ in range(2)], [201, 201])

    def test_repeatedClientId(self):
        """
        A repeated client_id is charged like any send: within the budget it answers 200 with
        the original message; past it, 429 and nothing stored; retried later, 200 with the
        original message again.
        """
        first = self.h.sent(CID, "alice", "original", clientId="c1")
        again = self.h.sent(CID, "alice", "original", clientId="c1")
        self.assertEqual((first.code, again.code), (201, 200))
        self.assertEqual(again.json, first.json)
        self.assertRateLimited(self.h.sent(CID, "alice", "original", clientId="c1"), "2")
        self.assertEqual(len(self.h.store.stored(CID)), 1)
        self.h.advance(2)
        retried = self.h.sent(CID, "alice", "original", clientId="c1")
        self.assertEqual(retried.code, 200, retried.body)
        self.assertEqual(retried.json, first.json)
        self.assertEqual(len(self.h.store.stored(CID)), 1)

    def test_redirectedNotCharged(self):
        """
        A send for a stream another node serves is answered 307 without taking a token
        (its owner charges it).
        """
        group = self.h.streams.groupOf(CID)
        self.h.ownership.routes[group] = Redirect("node-b", "http://node-b.test:8080")
        for _ in range(3):
            self.assertEqual(self.h.sent(CID, "alice").code, 307)
        del self.h.ownership.routes[group]
        self.assertEqual([self.h.sent(CID, "alice").code for _ in range(2)], [201, 201])


class TypingLimitTests(_LimitsMixin, SynchronousTestCase):
    """
    Typing marks past the user's bucket (typing_per_second, typing_burst).
    """

    limits = {"typing_per_second": 1, "typing_burst": 2}

    def typing(self, typing: bool, user: str = "alice"):
        return self.h.call("POST", path(CID, "typing"), user=user, body={"typing": typing})

    def test_burstThenRefused(self):
        """
        Past the burst a typing mark is 429 with Retry-After, changes nothing and is counted.
        """
        before = limited("typing")
        self.assertEqual([self.typing(True).code, self.typing(True).code], [204, 204])
        shown = self.pollNow("bob")
        answer = self.typing(False)
        self.assertRateLimited(answer, "1")
        self.assertEqual(limited("typing") - before, 1)
        after = self.pollNow("bob")
        self.assertEqual(after.json["typing"], ["alice"])
        self.assertEqual(after.json["typing_version"], shown.json["typing_version"])
        self.assertEqual(self.typing(True, "bob").code, 204)
        self.h.advance(1)
        self.assertEqual(self.typing(False).code, 204)
        self.assertEqual(self.pollNow("bob").json["typing"], ["bob"])

    def test_sendsHaveTheirOwnBucket(self):
        """
        Typing marks and sends are limited apart.
        """
        self.typing(True)
        self.typing(True)
        self.assertRateLimited(self.typing(True), "1")
        self.assertEqual(self.h.sent(CID, "alice").code, 201)


class PollLimitTests(_LimitsMixin, SynchronousTestCase):
    """
    Long-polls waiting at once per user (max_polls_per_user), conversations and inbox together.
    """

    limits = {"max_polls_per_user": 2}

    def inbox(self, user: str = "alice", **query):
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return self.h.request("GET", f"/v1/inbox/events?{q}", user=user)

    def counted(self, user: str = "alice") -> int:
        return self.h.limits.polls.count(user)

    def test_capAcrossConversationsAndInbox(self):
        """
        With a conversation poll and an inbox poll waiting, a third poll of either kind is
        429 with Retry-After, leaves no waiter behind and is counted.
        """
        before = limited("polls_per_user")
        first = self.poll("alice", after=0, timeout=30)
        second = self.inbox("alice", after=0, timeout=30)
        self.h.flush()
        self.assertEqual(self.counted(), 2)
        self.assertRateLimited(self.h.answer(self.poll("alice", cid=OTHER, timeout=30)), "1")
        self.assertRateLimited(self.h.answer(self.inbox("alice", timeout=30)), "1")
        self.assertEqual(limited("polls_per_user") - before, 2)
        self.assertEqual(self.h.waiters(), 2)
        self.assertEqual(self.h.streams.waiting, 2)
        # The two waiting polls' timeouts, on their one shared timer; the refused left none.
        self.assertEqual(len(self.h.pendingCalls()), 1)
        self.assertNoResult(first)
        self.assertNoResult(second)
        # Another user is not limited by alice's polls.
        bobs = self.poll("bob", after=0, timeout=30)
        self.h.flush()
        self.assertNoResult(bobs)
        self.h.sent(CID, "bob", "wake up")
        self.assertEqual(fired(first).code, 200)
        self.assertEqual(fired(second).code, 200)
        self.assertEqual(fired(bobs).code, 200)
        self.assertEqual(self.counted(), 0)

    def test_immediateAnswersNeverRefused(self):
        """
        At the cap, a poll that is answered at once (events behind the cursor, timeout 0)
        is still served: only waiting polls count.
        """
        self.h.sent(CID, "bob", "there already")
        waiting = [self.poll("alice", cid=OTHER, timeout=30), self.inbox("alice", timeout=30)]
        self.h.flush()
        behind = self.pollNow("alice", after=0, timeout=30)
        self.assertEqual(behind.code, 200, behind.body)
        self.assertEqual(len(behind.json["events"]), 1)
        self.assertEqual(self.pollNow("alice").code, 200)
        self.assertEqual(self.counted(), 2)
        for d in waiting:
            d.cancel()
            self.failureResultOf(d)

    def test_answeredFreesASlot(self):
        """
        A poll answered (by an event) no longer counts: a new one may wait.
        """
        a = self.poll("alice", after=0, timeout=30)
        b = self.poll("alice", cid=OTHER, after=0, timeout=30)
        self.h.flush()
        self.h.sent(CID, "bob", "hi")
        self.assertEqual(fired(a).code, 200)
        self.assertEqual(self.counted(), 1)
        c = self.poll("alice", after=1, timeout=30)
        self.h.flush()
        self.assertNoResult(c)
        self.assertEqual(self.counted(), 2)
        self.h.advance(30)
        self.assertEqual((fired(b).code, fired(c).code), (200, 200))

    def test_timeoutFreesASlot(self):
        """
        A poll that times out no longer counts.
        """
        a = self.poll("alice", after=0, timeout=5)
        b = self.inbox("alice", after=0, timeout=30)
        self.h.flush()
        self.h.advance(5)
        self.assertEqual(fired(a).json["events"], [])
        self.assertEqual(self.counted(), 1)
        c = self.poll("alice", after=0, timeout=30)
        self.h.flush()
        self.assertNoResult(c)
        self.h.advance(30)
        self.assertEqual((fired(b).code, fired(c).code), (200, 200))
        self.assertEqual(self.counted(), 0)

    def test_disconnectFreesASlot(self):
        """
        A client that goes away (the handler's Deferred is cancelled) no longer counts, and
        its waiter and timeout are gone.
        """
        a = self.poll("alice", after=0, timeout=30)
        b = self.inbox("alice", after=0, timeout=30)
        self.h.flush()
        self.assertRateLimited(self.h.answer(self.poll("alice", after=0, timeout=30)), "1")
        a.cancel()
        self.failureResultOf(a)
        self.h.flush()
        self.assertEqual(self.counted(), 1)
        self.assertEqual(self.h.waiters(), 1)
        self.assertEqual(len(self.h.pendingCalls()), 1)
        c = self.poll("alice", after=0, timeout=30)
        self.h.flush()
        self.assertNoResult(c)
        self.assertEqual(self.counted(), 2)
        for d in (b, c):
            d.cancel()
            self.failureResultOf(d)
        self.h.flush()
        self.assertEqual(self.counted(), 0)
        self.assertEqual(self.h.pendingCalls(), [])

    def test_disconnectWhileLoading(self):
        """
        A poll waiting for its stream to load counts too, and is released when its client
        goes away before the load ends.
        """
        claim = self.h.store.claim
        slow = []

        def slowClaim(*args):
            d = defer.Deferred()
            slow.append((d, args))
            return d

        self.h.store.claim = slowClaim
        a = self.poll("alice", after=0, timeout=30)
        self.h.flush()
        self.assertEqual(self.counted(), 1)
        a.cancel()
        self.failureResultOf(a)
        self.h.flush()
        self.assertEqual(self.counted(), 0)
        self.h.store.claim = claim
        for d, args in slow:
            claim(*args).chainDeferred(d)
        self.h.flush()
        self.assertEqual(self.h.waiters(), 0)

    def test_streamLostReleases(self):
        """
        Polls answered because the node lost the stream's group no longer count.
        """
        a = self.poll("alice", after=0, timeout=30)
        self.h.flush()
        self.h.ownership.lose([self.h.streams.groupOf(CID)])
        self.h.flush()
        self.assertEqual(fired(a).code, 307)
        self.assertEqual(self.counted(), 0)


class StreamEvictionTests(_LimitsMixin, SynchronousTestCase):
    """
    At most max_streams in memory: the least recently used are evicted and loaded again on
    demand, which clients do not notice.
    """

    limits = {"max_streams": 1}

    def test_pollWithCursorAfterEviction(self):
        """
        A conversation evicted (other streams used since) is loaded again for the next poll,
        which gets the events after its cursor; sends continue its seqs, and a repeated
        client_id still finds its message.
        """
        before = limited("streams_evicted")
        sent = [self.h.sent(CID, "alice", f"m{i}", clientId=f"c{i}").json["message"]
                for i in range(5)]
        self.h.sent(OTHER, "carol", "elsewhere")
        self.h.settle()
        self.assertNotIn(CID, self.h.streams._streams)
        self.assertGreater(limited("streams_evicted"), before)
        answer = self.pollNow("bob", after=2)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json["events"], sent[2:])
        self.assertEqual(answer.json["last_seq"], 5)
        self.h.sent(OTHER, "carol", "elsewhere again")
        self.h.settle()
        self.assertNotIn(CID, self.h.streams._streams)
        again = self.h.sent(CID, "alice", "m1", clientId="c1")
        self.assertEqual(again.code, 200, again.body)
        self.assertEqual(again.json["message"], sent[1])
        self.assertEqual(self.h.sent(CID, "bob", "new").json["message"]["seq"], 6)

    def test_waitingPollSurvives(self):
        """
        A conversation with a poll waiting is kept past the cap, and the poll is answered by
        the next message.
        """
        waiting = self.poll("bob", after=0, timeout=30)
        self.h.flush()
        for i in range(3):
            self.h.sent(OTHER, "carol", f"busy {i}")
        self.h.settle()
        self.assertIn(CID, self.h.streams._streams)
        self.h.sent(CID, "alice", "still there")
        self.assertEqual([e["text"] for e in fired(waiting).json["events"]], ["still there"])
