"""
A Server-Sent Events client for tests against real nodes: one GET with twisted.web's Agent
(no redirects followed, no connection pool), the body read record by record as it arrives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests.support.process import theReactor, waitFor


def parseRecord(block: bytes) -> dict[str, str]:
    record: dict[str, str] = {}
    for line in block.split(b"\n"):
        if line.startswith(b":"):
            record["comment"] = line[1:].strip().decode()
            continue
        name, _, value = line.partition(b":")
        record[name.decode()] = (value[1:] if value.startswith(b" ") else value).decode()
    return record


class EventStream(Protocol):
    """
    The body of one open stream: C{records} as they arrive, C{ended} fires when it ends.
    """

    def __init__(self, code: int, headers: Headers):
        self.code = code
        self.headers = headers
        self.records: list[dict[str, str]] = []
        self._buffer = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.reason = None

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, _, self._buffer = self._buffer.partition(b"\n\n")
            if block:
                self.records.append(parseRecord(block))

    def connectionLost(self, reason) -> None:
        # ResponseDone for an answer that ended, ResponseFailed for one cut short.
        self.reason = reason
        if not self.ended.called:
            # (The reason is kept, not passed on: a Failure would make it an errback.)
            self.ended.callback(None)

    @property
    def open(self) -> bool:
        return self.reason is None

    def events(self, kind: str | None = None) -> list[dict[str, str]]:
        return [r for r in self.records if "event" in r and (kind is None or r["event"] == kind)]

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(r["data"]) for r in self.events("message")]

    def lastId(self) -> str | None:
        ids = [r["id"] for r in self.records if "id" in r]
        return ids[-1] if ids else None

    async def waitUntil(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        await waitFor(condition, timeout, what)

    def close(self) -> None:
        if self.open and self.transport is not None:
            self.transport.stopProducing()


@dataclass
class Refused:
    """
    An answer that is not a stream (a JSON error or a redirect).
    """

    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


async def openStream(url: str, token: str | None = None, lastEventId: str | None = None,
                     timeout: float = 10.0) -> EventStream | Refused:
    """
    GET C{url} as EventSource would (C{Accept: text/event-stream}, C{Last-Event-ID} when
    resuming), the token as a bearer header if given. The stream once its head arrived, or
    the whole answer when it is not 200.
    """
    reactor = theReactor()
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    headers = Headers({b"accept": [b"text/event-stream"], b"cache-control": [b"no-cache"]})
    if token is not None:
        headers.addRawHeader(b"authorization", b"Bearer " + token.encode())
    if lastEventId is not None:
        headers.addRawHeader(b"last-event-id", lastEventId.encode())
    requested = agent.request(b"GET", url.encode(), headers)
    requested.addTimeout(timeout, reactor)
    response = await requested
    if response.code != 200:
        body = await readBody(response)
        return Refused(response.code, response.headers, body)
    stream = EventStream(response.code, response.headers)
    response.deliverBody(stream)
    return stream
