"""
An in-memory HTTP client for a node's production edge: requests of L{twisted.web.client.Agent}
go over L{twisted.test.iosim} to a connection of an L{HPChatSite} (L{HTTPConnection}, which
parses them with httptools and answers the hot routes itself), not to twisted.web's own
C{HTTPChannel} as L{treq.testing.StubTreq}'s do.

L{EdgeTreq} has StubTreq's interface (C{get}, C{post}, C{request}, C{content}, C{json_content},
C{flush}). The site's timers (idle, head and body deadlines) run on the site's own reactor,
typically the test's L{Clock}; the client's side and the pumps run on a memory reactor of
their own, so that pumping moves bytes without moving the test's time.
"""

from __future__ import annotations

from typing import Any

import treq
from treq.client import HTTPClient
from treq.testing import _EndpointFactory, _reject_files, _SynchronousProducer
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock
from twisted.python.urlpath import URLPath
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import directlyProvides, implementer

from hpchat.config import LimitsConfig
from hpchat.web.site import HPChatSite


@implementer(IAgent)
class EdgeAgent:
    """
    An L{IAgent} whose every request opens an in-memory connection to C{site}.
    """

    def __init__(self, site: HPChatSite):
        self.site = site
        self._memoryReactor = MemoryReactorClock()
        self._realAgent = Agent.usingEndpointFactory(
            reactor=self._memoryReactor, endpointFactory=_EndpointFactory(self._memoryReactor))
        self._pumps: set[iosim.IOPump] = set()
        #: The server side of every connection made, in order.
        self.connections: list[Any] = []

    def request(self, method: bytes, uri: bytes, headers=None,
                bodyProducer: IBodyProducer | None = None) -> defer.Deferred:
        response = self._realAgent.request(method, uri, headers, bodyProducer)
        if response.called:
            # The agent failed before it connected (a bad URL).
            return response
        host, port, factory, _timeout, _bind = self._memoryReactor.tcpClients.pop()
        serverAddress = IPv4Address("TCP", "127.0.0.1", port)
        clientAddress = IPv4Address("TCP", "127.0.0.1", 31337)
        serverProtocol = self.site.buildProtocol(clientAddress)
        serverTransport = iosim.FakeTransport(serverProtocol, isServer=True,
                                              hostAddress=serverAddress,
                                              peerAddress=clientAddress)
        clientProtocol = factory.buildProtocol(None)
        clientTransport = iosim.FakeTransport(clientProtocol, isServer=False,
                                              hostAddress=clientAddress,
                                              peerAddress=serverAddress)
        if URLPath.fromBytes(uri).scheme == b"https":
            directlyProvides(serverTransport, ISSLTransport)
            directlyProvides(clientTransport, ISSLTransport)
        self.connections.append(serverProtocol)
        self._pumps.add(iosim.connect(serverProtocol, serverTransport, clientProtocol,
                                      clientTransport))
        return response

    def flush(self) -> None:
        """
        Move every byte written so far between the clients and the site, and forget the
        connections that both sides closed.
        """
        pumps, self._pumps = self._pumps, set()
        for pump in pumps:
            pump.flush()
            if not (pump.clientIO.disconnected and pump.serverIO.disconnected):
                self._pumps.add(pump)

    def openConnections(self) -> int:
        return len(self._pumps)


class EdgeTreq:
    """
    L{treq.testing.StubTreq} for an L{HPChatSite}: the module-level functions of treq, over
    an L{EdgeAgent}.
    """

    def __init__(self, site: HPChatSite):
        self.agent = EdgeAgent(site)
        client = HTTPClient(agent=self.agent, data_to_body_producer=_SynchronousProducer)
        for name in treq.__all__:
            function = getattr(client, name, None)
            setattr(self, name, getattr(treq, name) if function is None
                    else _reject_files(function))
        self.flush = self.agent.flush


def edgeTreq(resource, reactor, limits: LimitsConfig | None = None) -> EdgeTreq:
    """
    An L{EdgeTreq} for C{resource} behind the production edge (no hot routes), with the
    site's timers on C{reactor}.
    """
    return EdgeTreq(HPChatSite(resource, reactor=reactor, limits=limits,
                               parsePOSTFormSubmission=False))
