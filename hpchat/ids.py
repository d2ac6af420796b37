# -*- test-case-name: tests.test_ids -*-
"""
New event ids: random version 4 UUIDs as 32 hexadecimal digits (what C{uuid.uuid4().hex}
gives), from the operating system's random bytes read 4 KiB at a time instead of one
system call per id.
"""

from __future__ import annotations

import os

_POOL_BYTES = 4096
_VERSION_MASK = ~(0xF000 << 64) & ~(0xC000 << 48)
_VERSION_BITS = (0x4000 << 64) | (0x8000 << 48)


class _Pool:
    __slots__ = ("data", "offset")

    def __init__(self) -> None:
        self.data = b""
        self.offset = 0

    def drop(self) -> None:
        self.data, self.offset = b"", 0


_pool = _Pool()
# A forked child reads bytes of its own, never its parent's: the pool is emptied in the child
# (a getpid() per id, to notice a fork, was a system call per message).
os.register_at_fork(after_in_child=_pool.drop)


def newEventId() -> str:
    """
    A new random id, formatted as C{uuid.uuid4().hex} (version and variant bits set).
    """
    pool = _pool
    offset = pool.offset
    if offset + 16 > len(pool.data):
        pool.data, offset = os.urandom(_POOL_BYTES), 0
    pool.offset = offset + 16
    value = int.from_bytes(pool.data[offset:offset + 16], "big")
    return "%032x" % ((value & _VERSION_MASK) | _VERSION_BITS)
