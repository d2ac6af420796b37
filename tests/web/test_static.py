"""
The page's static files: every error a JSON answer, no listings (a file served over a real
socket is in tests.web.test_edge_node: its producer needs a real transport).
"""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from hpchat.web.api import STATIC
from hpchat.web.static import StaticFiles


class StaticFilesTests(SynchronousTestCase):
    def get(self, path: str):
        stub = StubTreq(StaticFiles(STATIC))
        d = stub.get("http://node/" + path)
        stub.flush()
        response = self.successResultOf(d)
        content = stub.content(response)
        stub.flush()
        return response.code, response.headers, self.successResultOf(content)

    def test_errorsAreJSON(self):
        """
        A missing file, a folder (no listing), a NUL or a path below a file are JSON 404s.
        """
        for path in ["nothing.js", "", "app.js/x", "a%00b", "../setup.cfg"]:
            code, headers, body = self.get(path)
            self.assertEqual((code, json.loads(body)["error"]["code"]), (404, "not_found"),
                             path)
            self.assertEqual(headers.getRawHeaders(b"content-type"),
                             [b"application/json; charset=utf-8"])
