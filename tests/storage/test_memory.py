"""
The event store contract on the in-memory store of the unit tests, so that what they rely on
is what the real stores do.
"""

from __future__ import annotations

from twisted.trial import unittest

from tests.fakes import MemoryEventStore
from tests.storage.contract import EventStoreContract
from tests.storage.conversations_contract import BlockVersionContract, ConversationStoreContract


class MemoryContractTests(EventStoreContract, ConversationStoreContract,
                          BlockVersionContract, unittest.TestCase):
    def makeStore(self):
        return MemoryEventStore(ready=False)

    def reopenStore(self, store):
        again = MemoryEventStore(ready=False)
        again.fences, again.events, again.outbox = store.fences, store.events, store.outbox
        again.conversations, again.blocks = store.conversations, store.blocks
        again.presence, again.blockVersion = store.presence, store.blockVersion
        return again
