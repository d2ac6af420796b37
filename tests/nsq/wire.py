"""
Test helpers for one NSQ connection over a StringTransport.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure


class Wire:
    """
    Mixed into whatever holds C{protocol} and its StringTransport C{transport}.
    """

    def receive(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def written(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))
