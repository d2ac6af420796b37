"""
The hot routes: matched without Klein, answered exactly as Klein would.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from hpchat.web.fast import HotRoutes
from tests.web.fakes import Harness

CID = "dm:alice:bob"


class HotRoutesTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.addCleanup(self.h.stop)

    def test_hotRouteAnswers(self):
        """
        A hot route is answered by its handler.
        """
        answer = self.h.call("GET", f"/v1/conversations/{CID}/events?timeout=0")
        self.assertEqual((answer.code, answer.json["last_seq"]), (200, 0))

    def test_percentEncodedConversation(self):
        """
        A percent-encoded conversation id is decoded as Klein would.
        """
        answer = self.h.call("GET", "/v1/conversations/dm%3Aalice%3Abob/events?timeout=0")
        self.assertEqual(answer.code, 200)

    def test_badEncodingFallsBackToAJSONError(self):
        """
        A segment that is not valid percent-encoded UTF-8 is answered with JSON, never a 500.
        """
        for path in ("/v1/conversations/dm%3Aal%FFice%3Abob/events?timeout=0", "/v1/clus%FFter"):
            answer = self.h.call("GET", path)
            self.assertEqual((answer.code, answer.json["error"]["code"]), (400, "bad_request"))

    def test_otherMethodsAndPathsGoToKlein(self):
        """
        A wrong method on a hot path is Klein's 405, a longer path its 404.
        """
        self.assertEqual(self.h.call("PUT", f"/v1/conversations/{CID}/events").code, 405)
        self.assertEqual(self.h.call("GET", f"/v1/conversations/{CID}/events/x").code, 404)
        self.assertEqual(self.h.call("GET", "/healthz", user=None).code, 200)

    def test_startTakesEveryKindOfHandler(self) -> None:
        """
        C{start} gives a Deferred for a handler that returns a Deferred, a plain value or a
        coroutine, and a failed one for a handler that raises.
        """
        async def coroutine(request: object) -> bytes:
            return b"c"

        def raises(request: object) -> bytes:
            raise ValueError("no")

        d = defer.succeed(b"d")
        self.assertIs(HotRoutes.start(None, (lambda request: d, ())), d)
        plain = HotRoutes.start(None, (lambda r, x: x.encode(), ("v",)))
        self.assertEqual(self.successResultOf(plain), b"v")
        self.assertEqual(self.successResultOf(HotRoutes.start(None, (coroutine, ()))), b"c")
        self.failureResultOf(HotRoutes.start(None, (raises, ())), ValueError)
