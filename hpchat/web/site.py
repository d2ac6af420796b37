# -*- test-case-name: tests.web.test_site -*-
"""
The HTTP server around the API: a Site without access log, per-route request metrics, and a
listening service that marks the API as draining before it stops.
"""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.web import server

from hpchat import metrics
from hpchat.web.channel import HotChannel
from hpchat.web.cors import CORSPolicy, CORSResource
from hpchat.web.fast import HotRoutes


class HPChatRequest(server.Request):
    """
    Counts every answered request by route and status.
    """

    hpchatRoute = "unknown"

    def finish(self):
        metrics.countRequest(self.hpchatRoute, self.code)
        return super().finish()


class HPChatSite(server.Site):
    """
    A Site without the access log: it would write C{access_token} query values to the log,
    and per-request lines cost too much at this request rate. Metrics count requests instead.

    Its connections answer the hot routes (C{hot}) in a lane of their own, with the CORS
    headers of C{cors} (a L{CORSPolicy} or C{None}); see L{HotChannel}.
    """

    requestFactory = HPChatRequest
    protocol = HotChannel

    def __init__(self, resource, hot=None, cors=None, **kwargs):
        super().__init__(resource, **kwargs)
        self.hot = hot
        self.cors = cors

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


class WebService(MultiService):
    """
    Listens on the configured endpoint; on stop, the API first refuses new work (503).
    """

    def __init__(self, api, listen: str, reactor, corsOrigins=()):
        super().__init__()
        self.api = api
        resource, hot, cors = _resources(api, corsOrigins)
        # The API takes JSON bodies only: no form parsing (it costs an email-header parse of
        # the Content-Type on every POST).
        self.site = HPChatSite(resource, hot=hot, cors=cors, reactor=reactor,
                               parsePOSTFormSubmission=False)
        # strports.service fails startup on a bind error instead of only logging it.
        strports.service(listen, self.site, reactor=reactor).setServiceParent(self)

    def stopService(self):
        self.api.draining = True
        return super().stopService()
