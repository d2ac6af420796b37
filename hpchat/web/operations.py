# -*- test-case-name: tests.web.test_api -*-
"""
The node's own pages beside the chat API: the chat page and its static files, a development
login, the cluster view, the OpenAPI document, health, readiness and metrics.

Each handler is called with the L{hpchat.web.api.ChatAPI} that serves the request and uses
its state (authenticator, ownership, store, drain flag).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from hpchat import metrics
from hpchat.streamids import isUserId
from hpchat.web.static import StaticFiles

DEV_TOKEN_TTL = 24 * 3600
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


@functools.cache
def packaged(*path: str) -> bytes:
    """
    A file shipped with the package (the chat page, the OpenAPI document), read from disk
    once: when the API is built, before the reactor runs (L{ChatAPI.__init__}), not on the
    reactor thread at a request.
    """
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), *path), "rb") as f:
        return f.read()


PAGE = ("static", "index.html")
OPENAPI = ("openapi.json",)


def _api() -> Any:
    # hpchat.web.api imports this module; its names are looked up once both are loaded.
    from hpchat.web import api

    return api


def addOperationsRoutes(app: Any) -> None:
    """
    Add the node's pages to L{hpchat.web.api.ChatAPI}'s Klein C{app}.
    """

    @app.route("/", methods=["GET"])
    def page(api: Any, request: Any) -> bytes:
        web = _api()
        web._route(request, "page")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        return packaged(*PAGE)

    @app.route("/static/", branch=True, methods=["GET"])
    def static(api: Any, request: Any) -> Any:
        _api()._route(request, "static")
        return StaticFiles(STATIC)

    @app.route("/v1/dev/login", methods=["POST"])
    def devLogin(api: Any, request: Any) -> bytes:
        """
        Development only ([auth] dev_login = true): a token for any user, no password.
        """
        web = _api()
        web._route(request, "dev_login")
        if not api._devLogin:
            raise web.ApiError(404, "not_found", "no such resource")
        body = api._body(request)
        user = body.get("user")
        if not isUserId(user):
            raise web._badRequest("user must match [A-Za-z0-9_-]{1,64}")
        ttl = DEV_TOKEN_TTL
        return web._json(request, 200, {"user": user, "token": api._auth.mint(user, ttl),
                                        "expires_in": ttl})

    @app.route("/v1/cluster", methods=["GET"])
    def cluster(api: Any, request: Any) -> bytes:
        web = _api()
        web._route(request, "cluster")
        nodes, groups = api._ownership.cluster()
        return web._json(request, 200, {
            "node": api._ownership.nodeId(), "nodes": nodes,
            "groups": {str(g): n for g, n in sorted(groups.items())}})

    @app.route("/v1/openapi.json", methods=["GET"])
    def openapi(api: Any, request: Any) -> bytes:
        web = _api()
        web._route(request, "openapi")
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache")
        return packaged(*OPENAPI)

    @app.route("/healthz", methods=["GET"])
    def healthz(api: Any, request: Any) -> bytes:
        web = _api()
        web._route(request, "healthz")
        return web._json(request, 200, {"status": "ok", "node": api._ownership.nodeId()})

    @app.route("/readyz", methods=["GET"])
    def readyz(api: Any, request: Any) -> bytes:
        web = _api()
        web._route(request, "readyz")
        store = api._store
        storeProblem = getattr(store, "notReadyReason", None)
        checks = {"store": bool(store.ready) and storeProblem is None,
                  "ownership": bool(api._ownership.ready()), "accepting": not api.draining}
        if all(checks.values()):
            return web._json(request, 200, {"status": "ready", "checks": checks})
        failing = ", ".join(k if k != "store" or not storeProblem else f"store ({storeProblem})"
                            for k, v in checks.items() if not v)
        return web._json(request, 503, {"error": {"code": "unavailable",
                                                  "message": f"not ready: {failing}"},
                                        "checks": checks})

    @app.route("/metrics", methods=["GET"])
    def metricsPage(api: Any, request: Any) -> bytes:
        _api()._route(request, "metrics")
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return metrics.render()
