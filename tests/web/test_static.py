"""
The page's static files behind the production edge: every error a JSON answer, no listings
(a large file served over a real socket is in tests.web.test_edge_node).
"""

from __future__ import annotations

import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hpchat.web.operations import STATIC
from hpchat.web.static import StaticFiles
from tests.web.edge import edgeTreq


class StaticFilesTests(SynchronousTestCase):
    def get(self, path: str):
        stub = edgeTreq(StaticFiles(STATIC), Clock())
        d = stub.get("http://node/" + path)
        stub.flush()
        response = self.successResultOf(d)
        content = stub.content(response)
        stub.flush()
        return response.code, response.headers, self.successResultOf(content)

    def test_errorsAreJSON(self):
        """
        A missing file, a folder (no listing) or a path below a file are JSON 404s; a target
        with an encoded NUL is refused by the edge before any resource sees it (400).
        """
        for path, status, code in [("nothing.js", 404, "not_found"), ("", 404, "not_found"),
                                   ("app.js/x", 404, "not_found"),
                                   ("../setup.cfg", 404, "not_found"),
                                   ("a%00b", 400, "bad_request")]:
            answered, headers, body = self.get(path)
            self.assertEqual((answered, json.loads(body)["error"]["code"]), (status, code), path)
            self.assertEqual(headers.getRawHeaders(b"content-type"),
                             [b"application/json; charset=utf-8"])

    def test_fileServed(self):
        """
        A file is served whole (its producer writes through the edge's connection), with its
        type.
        """
        with open(f"{STATIC}/app.js", "rb") as f:
            expected = f.read()
        code, headers, body = self.get("app.js")
        self.assertEqual((code, body), (200, expected))
        self.assertIn(b"javascript", headers.getRawHeaders(b"content-type")[0])

    def test_headHasTheFilesLength(self):
        """
        A HEAD answer has the length of the file a GET would send (RFC 9110 8.6), and no
        body.
        """
        size = os.path.getsize(os.path.join(STATIC, "app.js"))
        stub = edgeTreq(StaticFiles(STATIC), Clock())
        d = stub.head("http://node/app.js")
        stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"%d" % size])
        content = stub.content(response)
        stub.flush()
        self.assertEqual(self.successResultOf(content), b"")
