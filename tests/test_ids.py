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
        A forked child does not reuse the pool's bytes: its ids differ from the parent's
        next ones.
        """
        ids.newEventId()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its next id, to the parent, and out at once
            try:
                os.write(write, ids.newEventId().encode())
            finally:
                os._exit(0)
        os.close(write)
        try:
            child = os.read(read, 64).decode()
        finally:
            os.close(read)
            os.waitpid(pid, 0)
        self.assertRegex(child, "^[0-9a-f]{32}$")
        self.assertNotEqual(child, ids.newEventId())
