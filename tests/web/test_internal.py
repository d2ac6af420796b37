"""
Node-to-node calls: the internal token and POST /internal/v1/notifications.
"""

from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from hpchat.groups import Redirect, Unsettled
from hpchat.notify import Notification
from hpchat.streamids import inboxStream
from hpchat.web.internal import (
    DeliveryFailed,
    InternalAuth,
    InternalClient,
    InternalUnauthorized,
)
from tests.web.fakes import SECRET, Harness

FLIRT = {"id": "flirt-1", "user": "bob", "type": "flirt", "from": "alice", "data": {"n": 1}}


class InternalAuthTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.auth = InternalAuth(SECRET, self.clock)

    def test_roundTrip(self):
        """
        A node token names the calling node.
        """
        token = self.auth.mint("n1")
        self.assertEqual(self.auth.verify(b"Bearer " + token.encode()), "n1")

    def test_expires(self):
        """
        Node tokens live one minute, on the injected clock.
        """
        token = self.auth.mint("n1").encode()
        self.clock.advance(61)
        self.assertRaises(InternalUnauthorized, self.auth.verify, b"Bearer " + token)

    def test_nonFiniteExpiryRefused(self):
        """
        A node token whose exp is NaN, Infinity or not a number is refused, even when it is
        signed with the node key.
        """
        import jwt

        from hpchat.web.internal import AUDIENCE

        key = self.auth._key
        for exp in ["NaN", "Infinity", "1e999", '"soon"', "true"]:
            header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
            payload = jwt.utils.base64url_encode(
                ('{"sub":"n2","aud":"%s","exp":%s}' % (AUDIENCE, exp)).encode())
            signing = header + b"." + payload
            import hashlib
            import hmac

            signature = jwt.utils.base64url_encode(hmac.new(key, signing, hashlib.sha256).digest())
            self.assertRaises(InternalUnauthorized, self.auth.verify,
                              b"Bearer " + signing + b"." + signature)

    def test_reusedAndRemembered(self):
        """
        A node reuses its token for half its life, then makes a new one; a verified token
        stays valid (from memory) until it expires, and not after.
        """
        token = self.auth.mint("n1")
        self.assertEqual(self.auth.verify(b"Bearer " + token.encode()), "n1")
        self.clock.advance(29)
        self.assertEqual(self.auth.mint("n1"), token)
        self.assertEqual(self.auth.verify(b"Bearer " + token.encode()), "n1")
        self.clock.advance(2)
        fresh = self.auth.mint("n1")
        self.assertNotEqual(fresh, token)
        self.assertEqual(self.auth.verify(b"Bearer " + fresh.encode()), "n1")
        self.clock.advance(30)
        self.assertRaises(InternalUnauthorized, self.auth.verify, b"Bearer " + token.encode())
        self.assertEqual(self.auth.verify(b"Bearer " + fresh.encode()), "n1")

    def test_userTokensDoNotPass(self):
        """
        A user's token, signed with the site secret itself, is not a node token.
        """
        from hpchat.web.auth import Authenticator

        userToken = Authenticator(SECRET, self.clock).mint("alice", 60).encode()
        self.assertRaises(InternalUnauthorized, self.auth.verify, b"Bearer " + userToken)
        self.assertRaises(InternalUnauthorized, self.auth.verify, None)
        self.assertRaises(InternalUnauthorized, self.auth.verify, b"Basic abc")


class InternalEndpointTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.addCleanup(self.h.stop)

    def post(self, body, token=None):
        token = token if token is not None else self.h.internalAuth.mint("n2")
        raw = {"data": body} if isinstance(body, bytes) else {"body": body}
        d = self.h.request("POST", "/internal/v1/notifications", token=token, **raw)
        self.h.settle()
        return self.h.answer(d)

    def test_nonFiniteDataRefused(self):
        """
        A notification whose data holds NaN or Infinity is 400, and nothing is appended.
        """
        for number in [float("nan"), float("inf"), float("-inf")]:
            # The harness writes these as NaN, Infinity and -Infinity.
            answer = self.post({"id": "f", "user": "bob", "type": "flirt", "data": {"x": number}})
            self.assertEqual(answer.code, 400, answer.body)
        self.assertEqual(self.h.store.stored(inboxStream("bob")), [])

    def test_appendsOnceDurable(self):
        """
        The owner appends the notification to the inbox and answers 201 with the event;
        the same id again is 200 with the original.
        """
        answer = self.post(FLIRT)
        self.assertEqual(answer.code, 201)
        event = answer.json["event"]
        self.assertEqual((event["seq"], event["id"], event["type"], event["from"], event["data"]),
                         (1, "flirt-1", "flirt", "alice", {"n": 1}))
        again = self.post(FLIRT)
        self.assertEqual((again.code, again.json["event"]["seq"]), (200, 1))
        self.assertEqual(len(self.h.store.stored(inboxStream("bob"))), 1)

    def test_sizeCheckedAsItArrived(self):
        """
        A notification within 8 KiB as it arrived is taken though it would be longer written
        out again (1e5 is 100000.0 once decoded): the owner does not check the size of its
        own re-encoding, which would refuse it forever.
        """
        body = (b'{"id":"big-1","user":"bob","type":"flirt","from":"alice","data":{"n":['
                + b",".join([b"1e5"] * 1800) + b"]}}")
        self.assertLess(len(body), 8192)
        self.assertGreater(len(json.dumps(json.loads(body))), 8192)
        answer = self.post(body)
        self.assertEqual(answer.code, 201, answer.json)

    def test_needsANodeToken(self):
        """
        Without a node token (or with a user's), the call is 401 and nothing is appended.
        """
        self.assertEqual(self.post(FLIRT, token=self.h.token("bob")).code, 401)
        self.assertEqual(self.h.store.stored(inboxStream("bob")), [])

    def test_badNotification(self):
        """
        A body that is not a valid notification is 400.
        """
        answer = self.post(dict(FLIRT, user="not valid"))
        self.assertEqual((answer.code, answer.json["error"]["code"]), (400, "bad_request"))

    def test_notOwner(self):
        """
        A node that does not own the inbox redirects the caller, or says 503 while unsettled.
        """
        group = self.h.streams.groupOf(inboxStream("bob"))
        self.h.ownership.set(group, Redirect("n3", "http://n3.test"))
        answer = self.post(FLIRT)
        self.assertEqual(answer.code, 307)
        self.assertEqual(answer.header("location"),
                         "http://n3.test/internal/v1/notifications")
        self.h.ownership.set(group, Unsettled(1))
        self.assertEqual(self.post(FLIRT).code, 503)

    def test_batch(self):
        """
        A batch gets one result per notification, in order, each with its own status: stored,
        stored before, served elsewhere (with the location), invalid.
        """
        group = self.h.streams.groupOf(inboxStream("carol"))
        self.h.ownership.set(group, Redirect("n3", "http://n3.test"))
        self.post(FLIRT)
        answer = self.post({"notifications": [
            dict(FLIRT, id="flirt-2"), FLIRT, dict(FLIRT, id="c", user="carol"),
            dict(FLIRT, user="not valid")]})
        self.assertEqual(answer.code, 200)
        results = answer.json["results"]
        self.assertEqual([r["status"] for r in results], [201, 200, 307, 400])
        self.assertEqual([results[0]["event"]["seq"], results[1]["event"]["seq"]], [2, 1])
        self.assertEqual(results[2]["location"], "http://n3.test/internal/v1/notifications")
        self.assertEqual(results[3]["error"]["code"], "bad_request")
        self.assertEqual(len(self.h.store.stored(inboxStream("bob"))), 2)

    def test_batchLimits(self):
        """
        A batch holds 1 to 100 notifications.
        """
        for batch in ([], [FLIRT] * 101, "x"):
            answer = self.post({"notifications": batch})
            self.assertEqual((answer.code, answer.json["error"]["code"]), (400, "bad_request"))


class FakeResponse:
    def __init__(self, code, body=b"{}", location=None):
        from twisted.web.iweb import UNKNOWN_LENGTH

        self.code = code
        self.length = UNKNOWN_LENGTH
        self._body = body
        from twisted.web.http_headers import Headers

        self.headers = Headers({b"location": [location.encode()]} if location else {})

    def deliverBody(self, protocol):
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


class ScriptedHTTP:
    def __init__(self, *responses):
        self.responses = list(responses)
        self.posts = []

    def post(self, url, data=None, headers=None, timeout=None, allow_redirects=True):
        self.posts.append((url, data, headers))
        answer = self.responses.pop(0)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


class HeldHTTP:
    """
    Answers each POST when the test says so.
    """

    def __init__(self):
        self.posts = []

    def post(self, url, data=None, headers=None, timeout=None, allow_redirects=True):
        d = defer.Deferred()
        self.posts.append((url, json.loads(data), d))
        return d


class InternalClientTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.auth = InternalAuth(SECRET, self.clock)
        self.notification = Notification("f1", "bob", "flirt", "alice", {})

    def client(self, http):
        return InternalClient(self.auth, "n1", self.clock, httpClient=http)

    def test_deliversAndFollowsRedirects(self):
        """
        The notification is POSTed with a node token; a 307 is followed.
        """
        http = ScriptedHTTP(FakeResponse(307, location="http://n3/internal/v1/notifications"),
                            FakeResponse(201, b'{"created": true}'))
        result = self.successResultOf(defer.ensureDeferred(
            self.client(http).deliver("http://n2", self.notification)))
        self.assertEqual(result, {"created": True})
        self.assertEqual([p[0] for p in http.posts], ["http://n2/internal/v1/notifications",
                                                      "http://n3/internal/v1/notifications"])
        self.assertEqual(json.loads(http.posts[0][1])["id"], "f1")
        token = http.posts[0][2][b"authorization"][0]
        self.assertEqual(self.auth.verify(token), "n1")

    def test_failures(self):
        """
        A refused connection or an error status is DeliveryFailed.
        """
        for answer in (ConnectionRefusedError("down"), FakeResponse(503)):
            d = defer.ensureDeferred(self.client(ScriptedHTTP(answer)).deliver(
                "http://n2", self.notification))
            self.failureResultOf(d, DeliveryFailed)

    def test_batchesWhileCallsAreInFlight(self):
        """
        A notification leaves at once while fewer than two calls are on their way to its
        node; those that come meanwhile leave together as one batch, whose results are
        dealt out: delivered, moved (followed alone), refused.
        """
        http = HeldHTTP()
        client = self.client(http)
        notifications = [Notification(f"f{i}", "bob", "flirt", "alice", {}) for i in range(5)]
        results = [client.deliver("http://n2/", n) for n in notifications]
        self.assertEqual([p[1].get("id") for p in http.posts], ["f0", "f1"])
        http.posts[0][2].callback(FakeResponse(201, b'{"created": true}'))
        self.assertEqual(self.successResultOf(results[0]), {"created": True})
        url, body, answer = http.posts[2]
        self.assertEqual(url, "http://n2/internal/v1/notifications")
        self.assertEqual([n["id"] for n in body["notifications"]], ["f2", "f3", "f4"])
        answer.callback(FakeResponse(200, json.dumps({"results": [
            {"status": 200, "event": {"seq": 3}, "created": False},
            {"status": 307, "location": "http://n3/internal/v1/notifications",
             "error": {"code": "moved", "message": "m"}},
            {"status": 503, "error": {"code": "unavailable", "message": "u"}}]}).encode()))
        self.assertEqual(self.successResultOf(results[2]), {"event": {"seq": 3},
                                                           "created": False})
        self.failureResultOf(results[4], DeliveryFailed)
        self.assertEqual((http.posts[3][0], http.posts[3][1]["id"]),
                         ("http://n3/internal/v1/notifications", "f3"))
        http.posts[3][2].callback(FakeResponse(201, b'{"created": true}'))
        self.successResultOf(results[3])
        http.posts[1][2].errback(ConnectionRefusedError("down"))
        self.failureResultOf(results[1], DeliveryFailed)
        self.assertEqual((client._queues, client._inFlight), ({}, {}))

    def test_nodeTakingOneAtATime(self):
        """
        A node that refuses a batch as a bad request (an earlier release) gets its
        notifications one per call.
        """
        http = HeldHTTP()
        client = self.client(http)
        notifications = [Notification(f"f{i}", "bob", "flirt", "alice", {}) for i in range(4)]
        results = [client.deliver("http://n2", n) for n in notifications]
        for post in http.posts[:2]:
            post[2].callback(FakeResponse(201, b'{"created": true}'))
        http.posts[2][2].callback(FakeResponse(400, b'{"error": {}}'))
        http.posts[3][2].callback(FakeResponse(201, b'{"created": true}'))
        http.posts[4][2].callback(FakeResponse(201, b'{"created": true}'))
        self.assertEqual([p[1].get("id") for p in http.posts], ["f0", "f1", None, "f2", "f3"])
        for result in results:
            self.assertEqual(self.successResultOf(result), {"created": True})
