"""
The Site around the API: request metrics, no access log, draining on stop.
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from hpchat.web.site import HPChatRequest, HPChatSite, WebService
from tests.web.fakes import Harness, requestsCounted


class SiteTests(SynchronousTestCase):
    def test_requestsAreCountedByRouteAndStatus(self):
        """
        Every answered request counts in hpchat_http_requests_total{route,status}.
        """
        before = requestsCounted("events", "401")
        request = HPChatRequest(DummyChannel())
        request.hpchatRoute = "events"
        request.setResponseCode(401)
        request.finish()
        self.assertEqual(requestsCounted("events", "401"), before + 1)

    def test_noAccessLog(self):
        """
        The Site writes no access log lines (they would carry access_token values).
        """
        site = HPChatSite(None)
        self.assertIsNone(site.log(object()))

    def test_stopDrains(self):
        """
        Stopping the web service first marks the API as draining.
        """
        h = Harness()
        self.addCleanup(h.stop)
        service = WebService(h.api, "tcp:0:interface=127.0.0.1", MemoryReactorClock())
        service.startService()
        service.stopService()
        self.assertTrue(h.api.draining)
        answer = h.call("GET", "/v1/conversations/dm:alice:bob/events?timeout=0")
        self.assertEqual((answer.code, answer.json["error"]["code"]), (503, "unavailable"))


class Raises(Resource):
    isLeaf = True

    def render_GET(self, request):
        raise RuntimeError("a bug")


class SiteErrorTests(SynchronousTestCase):
    """
    What twisted.web would answer in HTML is JSON on a node's site.
    """

    def request(self, method: bytes) -> tuple[bytes, bytes]:
        site = HPChatSite(Raises(), reactor=Clock())
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"%s /x HTTP/1.1\r\nHost: n\r\nContent-Length: 0\r\n\r\n" % method)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        return head, body

    def test_unsupportedMethodIsJSON405(self):
        """
        A method the resource does not take is a JSON 405 with Allow.
        """
        head, body = self.request(b"PUT")
        self.assertIn(b" 405 ", head.split(b"\r\n")[0])
        self.assertIn(b"Allow: ", head)
        self.assertEqual(json.loads(body)["error"]["code"], "method_not_allowed")

    def test_failureIsJSON500(self):
        """
        A failure while rendering is logged and answered as a JSON 500, not a traceback.
        """
        head, body = self.request(b"GET")
        self.assertIn(b" 500 ", head.split(b"\r\n")[0])
        self.assertEqual(json.loads(body), {"error": {"code": "internal",
                                                      "message": "internal error"}})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
