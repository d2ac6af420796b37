# -*- test-case-name: tests.web.test_social -*-
"""
The social routes of API v1: read receipts, the conversation list, blocks and presence
(DESIGN §8).

C{POST /v1/conversations/{cid}/read} is served by the conversation's owner, which keeps the
read markers with the stream. C{GET /v1/conversations} is served by the owner of the user's
inbox stream, which reads the user's conversation summaries from the shared store (written by
the conversations' owners with each message and each read marker move). Both answer 307 to
the owner elsewhere, like every stream route. Blocks are written and listed by the owner of
the blocker's inbox stream, durably under its group's fence; sends and typing in a
conversation where either participant has blocked the other are refused 403 C{blocked} by
the conversation's owner (see L{hpchat.blocks} for how soon a block is in force).

C{GET /v1/presence} is answered by any node: it asks each user's presence home (the owner of
the user's inbox stream, L{hpchat.presence}) in one internal call per home node, and shows a
user who has blocked the asker as offline and never seen.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from hpchat import metrics, strictjson
from hpchat.groups import Local, Redirect
from hpchat.storage.conversations import ConversationPage, IConversationStore
from hpchat.streamids import BadConversation, inboxStream, isUserId, parseConversation
from hpchat.streams import StreamUnavailable

DEFAULT_CONVERSATIONS = 50
MAX_CONVERSATIONS = 200
MAX_PRESENCE_USERS = 100


def _api():
    # hpchat.web.api imports this module; its names are looked up once both are loaded.
    from hpchat.web import api

    return api


def encodeCursor(updated: float, stream: str) -> str:
    raw = strictjson.dumpb([updated, stream])
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
            and abs(value[0]) < 2**53 and isinstance(value[1], str)):
        # (A huge integer would overflow the float comparisons below.)
        raise ValueError("not a cursor")
    try:
        parseConversation(value[1])
    except BadConversation:
        raise ValueError("not a cursor") from None
    return float(value[0]), value[1]


def addSocialRoutes(app) -> None:
    """
    Add the social routes to L{hpchat.web.api.ChatAPI}'s Klein C{app}: each is called with
    the ChatAPI and hands the request to its L{SocialRoutes}.
    """

    @app.route("/v1/conversations/<cid>/read", methods=["POST"])
    def markRead(api, request, cid):
        return api._social.markRead(request, cid)

    @app.route("/v1/conversations", methods=["GET"])
    def conversations(api, request):
        return api._social.conversations(request)

    @app.route("/v1/blocks/<user>", methods=["PUT", "DELETE"])
    def block(api, request, user):
        return api._social.block(request, user)

    @app.route("/v1/blocks", methods=["GET"])
    def blocksList(api, request):
        return api._social.blocksList(request)

    @app.route("/v1/presence", methods=["GET"])
    def presence(api, request):
        return api._social.presenceQuery(request)

    @app.route("/internal/v1/presence", methods=["POST"])
    def internalPresence(api, request):
        return api._social.internalPresence(request)

    @app.route("/internal/v1/presence/report", methods=["POST"])
    def internalPresenceReport(api, request):
        return api._social.internalPresenceReport(request)


class SocialRoutes:
    """
    The handlers behind L{hpchat.web.api.ChatAPI}'s social routes; C{api} lends its request
    helpers (token, ids, body, ownership).
    """

    log = Logger()

    def __init__(self, api, streams, store, ownership, blocks=None, presence=None,
                 internalClient=None):
        self._api = api
        self._streams = streams
        self._store = store
        self._ownership = ownership
        #: The L{hpchat.blocks.BlockList}, or None when the store keeps no blocks.
        self.blocks = blocks
        #: The L{hpchat.presence.Presence}, or None (no presence tracked).
        self.presence = presence
        self._internalClient = internalClient

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
            oldest = items[-1][0]
            after = encodeCursor(oldest.updated, oldest.stream)
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

        known = self.blocks.knownBetween(a, b)
        if known is not None:
            return checked(known)
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

        return self._api._onStream(request, stream, write, self._api._noContent)

    def blocksList(self, request) -> defer.Deferred:
        api = _api()
        api._route(request, "blocks")
        user = self._blocker(request)
        listed = self._api._onStream(request, inboxStream(user),
                                     lambda: self.blocks.blocksOf(user))
        return listed.addCallback(
            lambda blocked: api._json(request, 200, {"blocked": list(blocked)}))

    # -- presence

    def presenceQuery(self, request) -> defer.Deferred:
        api = _api()
        api._route(request, "presence")
        viewer = self._api._user(request)
        values = request.args.get(b"users")
        if not values or len(values) != 1:
            raise api._badRequest("users must be given once: users=a,b,...")
        try:
            users = list(dict.fromkeys(values[0].decode("ascii").split(",")))
        except UnicodeDecodeError:
            raise api._badRequest("users must be valid user ids") from None
        if not 1 <= len(users) <= MAX_PRESENCE_USERS:
            raise api._badRequest(f"users must name 1 to {MAX_PRESENCE_USERS} users")
        bad = [u for u in users if not isUserId(u)]
        if bad:
            raise api._badRequest("users must be valid user ids separated by commas")
        if self.presence is None:
            raise api.ApiError(501, "not_implemented", "this node keeps no presence")
        if self._api.draining:
            raise api.ApiError(503, "unavailable", "this node is shutting down",
                               {b"retry-after": b"1"})
        metrics.countSocial("presence_queries")
        d = defer.ensureDeferred(self._presence(viewer, users))
        d.addErrback(self._presenceFailed)
        return d.addCallback(lambda result: api._json(request, 200, {"presence": result}))

    async def _presence(self, viewer: str, users: list[str]) -> dict:
        home = self.presence.home
        byNode: dict[str, tuple[str, list[str]]] = {}
        local: list[str] = []
        unsettled: list[str] = []
        me = self._ownership.nodeId()
        for user in users:
            route = self._ownership.route(self._streams.groupOf(inboxStream(user)))
            if isinstance(route, Local):
                local.append(user)
            elif isinstance(route, Redirect) and route.node != me \
                    and self._internalClient is not None:
                byNode.setdefault(route.node, (route.url, []))[1].append(user)
            else:
                if isinstance(route, defer.Deferred):
                    route.addErrback(lambda _: None)
                unsettled.append(user)
        asked = []
        if local:
            asked.append(home.lookup(local))
        for url, some in byNode.values():
            asked.append(defer.ensureDeferred(self._internalClient.postJSON(
                url, "/internal/v1/presence", {"users": some})).addCallback(_remoteStates))
        if unsettled:
            # No home right now: offline, with the stored last-seen time.
            asked.append(defer.maybeDeferred(self._store.lastSeen, unsettled).addCallback(
                lambda stored: {u: (False, stored.get(u)) for u in unsettled}))
        if self.blocks is not None:
            blockers = defer.maybeDeferred(self._store.blockersAmong, viewer, users)
        else:
            blockers = defer.succeed(set())
        answers = await defer.gatherResults(asked + [blockers], consumeErrors=True)
        hidden = answers.pop()
        states: dict[str, tuple[bool, float | None]] = {}
        for answer in answers:
            states.update(answer)
        result = {}
        for user in users:
            online, last = states.get(user, (False, None))
            if user in hidden:
                online, last = False, None
            result[user] = {"online": bool(online), "last_seen": last}
        return result

    @staticmethod
    def _presenceFailed(failure):
        api = _api()
        if failure.check(api.ApiError, defer.CancelledError):
            return failure
        if not failure.check(defer.FirstError):
            SocialRoutes.log.warn("presence query failed: {error}",
                                  error=failure.getErrorMessage())
        raise api.ApiError(503, "unavailable", "presence is not available right now; retry",
                           {b"retry-after": b"1"})

    def _internal(self, request) -> dict:
        api = _api()
        if self._api._internalAuth is None or self.presence is None:
            raise api.ApiError(404, "not_found", "no such resource")
        try:
            self._api._internalAuth.verify(request.getHeader(b"authorization"))
        except api.InternalUnauthorized as e:
            raise api.ApiError(401, "unauthorized", str(e)) from None
        return self._api._body(request, internal=True)

    def internalPresence(self, request) -> defer.Deferred:
        """
        Another node asks for the presence of users whose home this node is.
        """
        api = _api()
        api._route(request, "internal_presence")
        body = self._internal(request)
        users = body.get("users")
        if not isinstance(users, list) or not 1 <= len(users) <= MAX_PRESENCE_USERS \
                or not all(isUserId(u) for u in users):
            raise api._badRequest(f"users must be a list of 1 to {MAX_PRESENCE_USERS} user ids")
        looked = self.presence.home.lookup(users)
        return looked.addCallback(lambda states: api._json(request, 200, {"presence": {
            user: {"online": online, "last_seen": last}
            for user, (online, last) in states.items()}}))

    def internalPresenceReport(self, request) -> bytes:
        """
        Another node reports its users' poll changes to their home (this node).
        """
        api = _api()
        api._route(request, "internal_presence_report")
        body = self._internal(request)
        node, users = body.get("node"), body.get("users")
        if not isinstance(node, str) or not node or not isinstance(users, dict):
            raise api._badRequest('the body is {"node": str, "users": {user: [bool, float]}}')
        reports = {}
        for user, report in users.items():
            if not (isUserId(user) and isinstance(report, list) and len(report) == 2
                    and isinstance(report[0], bool)
                    and isinstance(report[1], (int, float)) and not isinstance(report[1], bool)
                    and abs(report[1]) < 2**53):
                raise api._badRequest(f"bad report for {user[:64]!r}")
            reports[user] = (report[0], float(report[1]))
        self.presence.home.report(node, reports)
        return api._json(request, 200, {"taken": len(reports)})


def _remoteStates(answer: Any) -> dict:
    presence = answer.get("presence") if isinstance(answer, dict) else None
    if not isinstance(presence, dict):
        raise ValueError("a presence answer without presence")
    return {user: (bool(state.get("online")), state.get("last_seen"))
            for user, state in presence.items() if isinstance(state, dict)}
