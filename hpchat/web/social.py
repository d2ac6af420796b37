# -*- test-case-name: tests.web.test_social -*-
"""
The social routes of API v1: read receipts, the conversation list and blocks (DESIGN §8).

C{POST /v1/conversations/{cid}/read} is served by the conversation's owner, which keeps the
read markers with the stream. C{GET /v1/conversations} is served by the owner of the user's
inbox stream, which reads the user's conversation summaries from the shared store (written by
the conversations' owners with each message and each read marker move). Both answer 307 to
the owner elsewhere, like every stream route. Blocks are written and listed by the owner of
the blocker's inbox stream, durably under its group's fence; sends and typing in a
conversation where either participant has blocked the other are refused 403 C{blocked} by
the conversation's owner (see L{hpchat.blocks} for how soon a block is in force).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from twisted.internet import defer

from hpchat import metrics, strictjson
from hpchat.storage.conversations import ConversationPage, IConversationStore
from hpchat.streamids import BadConversation, inboxStream, isUserId, parseConversation
from hpchat.streams import StreamUnavailable

DEFAULT_CONVERSATIONS = 50
MAX_CONVERSATIONS = 200


def _api():
    # hpchat.web.api imports this module; its names are looked up once both are loaded.
    from hpchat.web import api

    return api


def encodeCursor(updated: float, stream: str) -> str:
    raw = strictjson.dumps([updated, stream]).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decodeCursor(text: str) -> tuple[float, str]:
    """
    The (updated, stream) of a cursor made by L{encodeCursor}; ValueError if it is not one.
    """
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = strictjson.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("not a cursor") from None
    if not (isinstance(value, list) and len(value) == 2
            and isinstance(value[0], (int, float)) and not isinstance(value[0], bool)
            and math.isfinite(value[0]) and isinstance(value[1], str)):
        raise ValueError("not a cursor")
    try:
        parseConversation(value[1])
    except BadConversation:
        raise ValueError("not a cursor") from None
    return float(value[0]), value[1]


class SocialRoutes:
    """
    The handlers behind L{hpchat.web.api.ChatAPI}'s social routes; C{api} lends its request
    helpers (token, ids, body, ownership).
    """

    def __init__(self, api, streams, store, ownership, blocks=None, presence=None):
        self._api = api
        self._streams = streams
        self._store = store
        self._ownership = ownership
        #: The L{hpchat.blocks.BlockList}, or None when the store keeps no blocks.
        self.blocks = blocks
        self.presence = presence

    # -- read receipts

    def markRead(self, request, cid: str) -> defer.Deferred:
        api = _api()
        api._route(request, "read")
        user = self._api._user(request)
        cid = self._api._conversation(cid, user)
        body = self._api._body(request)
        seq = body.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**62:
            raise api._badRequest("seq must be an integer >= 0")
        done = self._api._onStream(request, cid,
                                   lambda: self._streams.markRead(cid, user, seq))
        return done.addCallback(
            lambda readSeq: api._json(request, 200, {"read_seq": readSeq}))

    # -- the conversation list

    def conversations(self, request) -> defer.Deferred:
        api = _api()
        api._route(request, "conversations")
        user = self._api._user(request)
        limit = self._api._intArg(request, "limit", low=1)
        if limit is None:
            limit = DEFAULT_CONVERSATIONS
        elif limit > MAX_CONVERSATIONS:
            raise api._badRequest(f"limit must be at most {MAX_CONVERSATIONS}")
        before = None
        values = request.args.get(b"before")
        if values:
            try:
                before = decodeCursor(values[0].decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                raise api._badRequest("before must be a cursor from an earlier answer") \
                    from None
        if not IConversationStore.providedBy(self._store):
            raise api.ApiError(501, "not_implemented",
                               "this node's event store keeps no conversation list")
        listed = self._api._onStream(
            request, inboxStream(user),
            lambda: self._store.listConversations(user, limit + 1, before))
        return listed.addCallback(self._listed, request, limit)

    @staticmethod
    def _listed(page: ConversationPage, request, limit: int) -> bytes:
        api = _api()
        summaries: list[dict[str, Any]] = []
        items = page.items[:limit]
        for row, last in items:
            summaries.append({
                "conversation": row.stream, "with": row.partner,
                "last_message": api.messageJSON(last) if last is not None else None,
                "unread": max(0, row.last_seq - row.read_seq), "read_seq": row.read_seq,
                "partner_read_seq": row.partner_read_seq, "updated": row.updated})
        after = None
        if len(page.items) > limit:
            last = items[-1][0]
            after = encodeCursor(last.updated, last.stream)
        return api._json(request, 200, {"conversations": summaries,
                                        "unread_total": page.unread_total, "next": after})

    # -- blocks

    def unlessBlocked(self, cid: str, what: str, call) -> defer.Deferred:
        """
        C{call()}, unless either participant of C{cid} has blocked the other: then fail
        with the 403 C{blocked} answer, having done nothing.
        """
        if self.blocks is None:
            return call()
        a, b = parseConversation(cid)

        def checked(blocked: bool):
            if blocked:
                metrics.countSocial(f"{what}_blocked")
                raise _api().ApiError(403, "blocked",
                                      "a participant of this conversation has blocked the other")
            return call()

        return self.blocks.between(a, b).addCallback(checked)

    def _blocker(self, request) -> str:
        user = self._api._user(request)
        if self.blocks is None:
            raise _api().ApiError(501, "not_implemented", "this node's event store keeps no blocks")
        return user

    def block(self, request, other: str) -> defer.Deferred:
        api = _api()
        api._route(request, "block")
        user = self._blocker(request)
        if not isUserId(other):
            raise api._badRequest("the user must match [A-Za-z0-9_-]{1,64}")
        if other == user:
            raise api._badRequest("users cannot block themselves")
        on = request.method == b"PUT"
        stream = inboxStream(user)

        def write():
            group = self._streams.groupOf(stream)
            token = self._ownership.tokenFor(group)
            if token is None:
                raise StreamUnavailable(f"group {group} is not owned here")
            return self.blocks.set(user, other, on, group, token)

        done = self._api._onStream(request, stream, write)
        return done.addCallback(self._api._noContent, request)

    def blocksList(self, request) -> defer.Deferred:
        api = _api()
        api._route(request, "blocks")
        user = self._blocker(request)
        listed = self._api._onStream(request, inboxStream(user),
                                     lambda: self.blocks.blocksOf(user))
        return listed.addCallback(
            lambda blocked: api._json(request, 200, {"blocked": list(blocked)}))
