"""
The Site around the API: request metrics, no access log, draining on stop.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel

from hpchat import metrics
from hpchat.web.site import HPChatRequest, HPChatSite, WebService
from tests.web.fakes import Harness


class SiteTests(SynchronousTestCase):
    def test_requestsAreCountedByRouteAndStatus(self):
        """
        Every answered request counts in hpchat_http_requests_total{route,status}.
        """
        counter = metrics.requests.labels("events", "401")
        before = counter._value.get()
        request = HPChatRequest(DummyChannel())
        request.hpchatRoute = "events"
        request.setResponseCode(401)
        request.finish()
        self.assertEqual(counter._value.get(), before + 1)

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
