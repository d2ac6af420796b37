# -*- test-case-name: tests.web.test_static -*-
"""
The page's static files (C{/static/...}): twisted.web's File, with JSON errors instead of its
HTML pages and no directory listings.
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.static import File

from hpchat.web.wire import errorJSON


class JSONError(Resource):
    """
    A resource that answers every request (and every child) with one JSON error.
    """

    isLeaf = True

    def __init__(self, status: int, code: str, message: str):
        super().__init__()
        self._status = status
        self._body = errorJSON(code, message)

    def getChild(self, path, request):
        return self

    def render(self, request):
        request.setResponseCode(self._status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return self._body


NOT_FOUND = JSONError(404, "not_found", "no such resource")
FORBIDDEN = JSONError(403, "forbidden", "not readable")


class StaticFiles(File):
    """
    Files under one folder, without listings; a missing or unreadable file is a JSON error.
    """

    # File declares these as any Resource; its annotations infer the classes of its defaults.
    childNotFound = NOT_FOUND  # type: ignore[assignment]
    forbidden = FORBIDDEN  # type: ignore[assignment]

    def __init__(self, path: str, *args, **kwargs):
        super().__init__(path, *args, **kwargs)
        self.indexNames = []

    def directoryListing(self):
        return NOT_FOUND

    def getChild(self, path, request):
        if b"\0" in path:
            return NOT_FOUND
        return super().getChild(path, request)
