# -*- test-case-name: tests.test_streamids -*-
"""
Names of users and streams, and which chat group a stream belongs to.

A conversation between users a < b (byte order) is the stream C{dm:a:b}; the inbox of user u
is C{inbox:u}. Every stream hashes to one of N chat groups; a group is the unit of ownership.
"""

from __future__ import annotations

import hashlib
import re
from typing import TypeGuard

_USER = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
# A well-formed conversation id in one match (a message's path parses its id five times).
_CONVERSATION = re.compile(r"dm:([A-Za-z0-9_-]{1,64}):([A-Za-z0-9_-]{1,64})", re.ASCII)


class BadConversation(ValueError):
    """
    A conversation id that is malformed or not in canonical form.
    """


def isUserId(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _USER.fullmatch(value) is not None


def parseConversation(cid: str) -> tuple[str, str]:
    """
    Return the two participants of conversation C{cid}, or raise L{BadConversation}.
    """
    found = _CONVERSATION.fullmatch(cid) if type(cid) is str else None
    if found is not None:
        a, b = found.groups()
        # (ASCII: the order of the text is the order of its bytes.)
        if a < b:
            return a, b
    # Refused, or not a plain str: the checks one by one, for the reason.
    return parseConversationStepwise(cid)


def parseConversationStepwise(cid: str) -> tuple[str, str]:
    """
    L{parseConversation} by its rules one at a time, as the API document states them: what
    it does for an id its single match refuses (and the reference its tests compare it to).
    """
    parts = cid.split(":")
    if len(parts) != 3 or parts[0] != "dm":
        raise BadConversation("conversation ids look like dm:<a>:<b>")
    a, b = parts[1], parts[2]
    if not (isUserId(a) and isUserId(b)):
        raise BadConversation("conversation participants must be valid user ids")
    if a.encode() >= b.encode():
        raise BadConversation(
            "conversation ids name two different users in byte order: dm:<a>:<b> with a < b")
    return a, b


def conversationId(user1: str, user2: str) -> str:
    a, b = sorted((user1, user2), key=str.encode)
    return f"dm:{a}:{b}"


def inboxStream(user: str) -> str:
    return f"inbox:{user}"


def groupOf(stream: str, groups: int) -> int:
    """
    The chat group of C{stream}: a stable hash, the same on every node and Python process.
    """
    digest = hashlib.blake2b(stream.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % groups
