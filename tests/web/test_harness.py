"""
The API test harness speaks to the node's production edge: its requests are parsed and
bounded by L{HTTPConnection}, hot routes are answered by L{HotRequest}, and the connections'
deadlines run on the harness' clock.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from hpchat.web.channel import HTTPConnection
from hpchat.web.wire import HotRequest
from tests.web.fakes import GENEROUS, Harness
from tests.web.test_api import CID, path


class HarnessEdgeTests(SynchronousTestCase):
    def harness(self, **kw) -> Harness:
        h = Harness(**kw)
        self.addCleanup(h.stop)
        return h

    def test_connectionsAreTheEdges(self):
        """
        Every request opens one connection of the site of C{buildSite}.
        """
        h = self.harness()
        self.assertEqual(h.call("GET", path(CID, "events") + "?timeout=0").code, 200)
        self.assertEqual(h.call("GET", "/v1/conversations").code, 200)
        connections = h.stub.agent.connections
        self.assertEqual([type(c) for c in connections], [HTTPConnection, HTTPConnection])
        self.assertTrue(all(c.site is h.site for c in connections))

    def test_edgeLimitsApply(self):
        """
        The harness' limits are the edge's: more header fields than C{max_headers} are
        refused with the edge's 431 before the API sees the request.
        """
        h = self.harness(limits=replace(GENEROUS, max_headers=8))
        answer = h.call("GET", path(CID, "events") + "?timeout=0",
                        headers={f"x-extra-{i}": "1" for i in range(10)})
        self.assertEqual((answer.code, answer.json["error"]["code"]),
                         (431, "header_too_large"))

    def test_hotRouteOnTheHarnessClock(self):
        """
        A long poll is a L{HotRequest} of the edge; the connection's deadline is a call on
        the harness' clock, and the poll ends when that clock reaches its timeout.
        """
        h = self.harness()
        d = h.request("GET", path(CID, "events") + "?timeout=5")
        h.flush()
        self.assertNoResult(d)
        (connection,) = h.stub.agent.connections
        self.assertIsInstance(connection._current, HotRequest)
        self.assertEqual(len(h.deadlines()), 1)
        h.advance(5)
        answer = self.successResultOf(d)
        self.assertEqual((answer.code, answer.json["events"]), (200, []))
