"""
New event ids (L{hpchat.ids}).
"""

from __future__ import annotations

import os
import uuid

from twisted.trial.unittest import SynchronousTestCase

from hpchat import ids


class NewEventIdTests(SynchronousTestCase):
    def test_shapeOfAUUID4(self) -> None:
        """
        Ids are 32 lowercase hexadecimal digits that read back as version 4 UUIDs of the
        RFC 4122 variant, like C{uuid.uuid4().hex}.
        """
        for _ in range(1000):
            value = ids.newEventId()
            self.assertRegex(value, "^[0-9a-f]{32}$")
            parsed = uuid.UUID(hex=value)
            self.assertEqual((parsed.version, parsed.variant), (4, uuid.RFC_4122))

    def test_unique(self) -> None:
        """
        Ids do not repeat, across refills of the pool of random bytes.
        """
        count = 3 * ids._POOL_BYTES // 16
        self.assertEqual(len({ids.newEventId() for _ in range(count)}), count)

    def test_freshBytesAfterFork(self) -> None:
        """
        A process with another pid (a forked child) does not reuse the pool's bytes.
        """
        ids.newEventId()
        before = (ids._pool.data, ids._pool.offset)
        self.patch(os, "getpid", lambda: -1)
        ids.newEventId()
        self.assertNotEqual(ids._pool.data, before[0])
        self.assertEqual(ids._pool.offset, 16)
