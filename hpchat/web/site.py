# -*- test-case-name: tests.web.test_site -*-
"""
The HTTP server around the API: a Site without access log whose connections are
L{HTTPConnection}s (one strict parser, the limits of C{[limits]}), JSON answers for whatever
twisted.web itself would answer in HTML, per-route request metrics, and a listening service
that marks the API as draining before it stops.
"""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.web import server
from twisted.web.error import UnsupportedMethod

from hpchat import metrics
from hpchat.config import LimitsConfig
from hpchat.web.channel import HTTPConnection
from hpchat.web.cors import CORSPolicy, CORSResource
from hpchat.web.fast import HotRoutes
from hpchat.web.wire import errorJSON


class HPChatRequest(server.Request):
    """
    Counts every answered request by route and status; a method a resource does not take
    and a failure in rendering are JSON answers.
    """

    hpchatRoute = "unknown"
    _log = Logger()

    def finish(self):
        metrics.countRequest(self.hpchatRoute, self.code)
        return super().finish()

    def _jsonError(self, status: int, code: str, message: str) -> None:
        body = errorJSON(code, message)
        self.setResponseCode(status)
        self.setHeader(b"content-type", b"application/json; charset=utf-8")
        self.setHeader(b"cache-control", b"no-store")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def render(self, resrc):
        try:
            body = resrc.render(self)
        except UnsupportedMethod as e:
            if e.allowedMethods:
                self.setHeader(b"allow", b", ".join(e.allowedMethods))
            self._jsonError(405, "method_not_allowed", "method not allowed here")
            return
        if body is server.NOT_DONE_YET:
            return
        if not isinstance(body, bytes):
            raise TypeError(f"{resrc!r} rendered {type(body).__name__}, not bytes")
        if self.method == b"HEAD":
            # A HEAD answer's length is the GET answer's (RFC 9110 8.6): the body rendered
            # for it, or else the length the resource set itself (a file's), never 0.
            if body:
                self.setHeader(b"content-length", b"%d" % len(body))
            self.write(b"")
        else:
            self.setHeader(b"content-length", b"%d" % len(body))
            self.write(body)
        self.finish()

    def processingFailed(self, reason):
        self._log.failure("unexpected error answering {method} {path}", reason,
                          method=self.method.decode("latin-1"),
                          path=self.path.decode("latin-1"))
        if not self.startedWriting and not self._disconnected:
            self.responseHeaders.removeHeader(b"content-length")
            self._jsonError(500, "internal", "internal error")
        elif not self._disconnected:
            self.loseConnection()
        return reason


class HPChatSite(server.Site):
    """
    A Site without the access log: it would write C{access_token} query values to the log,
    and per-request lines cost too much at this request rate. Metrics count requests instead.

    Its connections (L{HTTPConnection}) answer the hot routes (C{hot}) directly, with the
    CORS headers of C{cors} (a L{CORSPolicy} or C{None}), and hold to C{limits} (a
    L{LimitsConfig}); C{openConnections} counts them.
    """

    # The ready line says where the node listens; factory start and stop lines are noise.
    noisy = False

    requestFactory = HPChatRequest
    # Site's annotations fix its protocol to twisted.web's HTTPChannel; Site.buildProtocol
    # needs only the requestFactory and site attributes, which HTTPConnection has.
    protocol = HTTPConnection  # type: ignore[assignment]

    def __init__(self, resource, hot=None, cors=None, limits: LimitsConfig | None = None,
                 **kwargs):
        super().__init__(resource, **kwargs)
        self.hot = hot
        self.cors = cors
        self.limits = limits if limits is not None else LimitsConfig()
        self.openConnections = 0

    def log(self, request):
        pass


def _resources(api, corsOrigins):
    hot = HotRoutes(api, api.resource())
    if not corsOrigins:
        return hot, hot, None
    cors = CORSPolicy(corsOrigins)
    return CORSResource(hot, cors), hot, cors


def apiResource(api, corsOrigins=()):
    """
    The whole HTTP resource tree of a node: CORS (if configured) around the hot routes,
    which leave every other path to the Klein app.
    """
    return _resources(api, corsOrigins)[0]


def buildSite(api, reactor, corsOrigins=(), limits: LimitsConfig | None = None) -> HPChatSite:
    """
    The Site of a node for C{api}.
    """
    resource, hot, cors = _resources(api, corsOrigins)
    # The API takes JSON bodies only: no form parsing (it costs an email-header parse of
    # the Content-Type on every POST).
    return HPChatSite(resource, hot=hot, cors=cors, limits=limits, reactor=reactor,
                      parsePOSTFormSubmission=False)


class WebService(MultiService):
    """
    Listens on the configured endpoint; on stop, the API first refuses new work (503).
    """

    def __init__(self, api, listen: str, reactor, corsOrigins=(),
                 limits: LimitsConfig | None = None):
        super().__init__()
        self.api = api
        self.site = buildSite(api, reactor, corsOrigins, limits)
        # strports.service fails startup on a bind error instead of only logging it.
        strports.service(listen, self.site, reactor=reactor).setServiceParent(self)

    def stopService(self):
        self.api.draining = True
        return super().stopService()
