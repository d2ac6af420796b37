"""
CORS around the API.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from hpchat.web.cors import CORSPolicy, CORSResource
from tests.web.edge import edgeTreq


class Echo(Resource):
    isLeaf = True

    def render(self, request):
        request.setResponseCode(307)
        request.setHeader(b"location", b"http://other/x")
        return b"{}"


class CORSTests(SynchronousTestCase):
    def request(self, origins, method="GET", headers=None):
        stub = edgeTreq(CORSResource(Echo(), CORSPolicy(origins)), Clock())
        response = self.successResultOf(stub.request(method, "http://node/v1/x",
                                                     headers=headers or {},
                                                     allow_redirects=False))
        return response

    def test_allowedOriginMayReadRedirectHeaders(self):
        """
        An allowed origin is echoed and may read Location and X-HPChat-Owner.
        """
        r = self.request(["https://site.example"], headers={"Origin": "https://site.example"})
        self.assertEqual(r.headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://site.example"])
        self.assertIn(b"X-HPChat-Owner",
                      r.headers.getRawHeaders(b"access-control-expose-headers")[0])
        self.assertIn(b"Location", r.headers.getRawHeaders(b"access-control-expose-headers")[0])

    def test_redirectedRequestsOriginNull(self):
        """
        A request a browser redirected across origins comes with Origin: null; it is allowed
        (bearer tokens only, no cookies).
        """
        r = self.request(["https://site.example"], headers={"Origin": "null"})
        self.assertEqual(r.headers.getRawHeaders(b"access-control-allow-origin"), [b"null"])

    def test_otherOriginGetsNoHeaders(self):
        """
        An origin not listed gets no CORS headers (the browser then refuses the answer).
        """
        r = self.request(["https://site.example"], headers={"Origin": "https://evil.example"})
        self.assertIsNone(r.headers.getRawHeaders(b"access-control-allow-origin"))

    def test_preflight(self):
        """
        A preflight is answered 204 with the methods and headers the API takes.
        """
        r = self.request(["*"], "OPTIONS", {"Origin": "https://a.example",
                                            "Access-Control-Request-Method": "POST"})
        self.assertEqual(r.code, 204)
        self.assertEqual(r.headers.getRawHeaders(b"access-control-allow-headers"),
                         [b"Authorization, Content-Type, Last-Event-ID"])
        self.assertIn(b"POST", r.headers.getRawHeaders(b"access-control-allow-methods")[0])
        refused = self.request(["https://site.example"], "OPTIONS",
                               {"Origin": "https://evil.example",
                                "Access-Control-Request-Method": "POST"})
        self.assertEqual(refused.code, 403)

    def test_anyOriginEchoesOnlyAPlainOrigin(self):
        """
        With C{*}, only a serialized origin (scheme, host, port) is echoed back; anything else
        (spaces, bytes beyond ASCII, a path) gets no CORS headers.
        """
        policy = CORSPolicy(["*"])
        for origin, allowed in [(b"https://a.example", True), (b"http://127.0.0.1:8080", True),
                                (b"null", True), (b"https://a.example/x", False),
                                (b"https://a b", False), (b"https://a\xff.example", False),
                                (b"a.example", False), (b"", False)]:
            request = DummyRequest([])
            request.requestHeaders.setRawHeaders(b"origin", [origin])
            self.assertEqual(policy.apply(request), allowed, origin)
            echoed = request.responseHeaders.getRawHeaders(b"access-control-allow-origin")
            self.assertEqual(echoed, [origin] if allowed else None, origin)
