# -*- test-case-name: tests.test_notify -*-
"""
Inbox notifications: what they are, how a committed conversation message becomes one, and
their in-process delivery on a node without NSQ.

A notification goes to the inbox stream of its user, once per notification id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.logger import Logger

from hpchat import metrics, strictjson
from hpchat.groups import Local, Redirect, resolveRoute
from hpchat.storage.base import Event, OutboxEntry
from hpchat.streamids import inboxStream, isUserId, parseConversation

MAX_BODY = 8 * 1024
PREVIEW_CHARS = 100
_TYPE = re.compile(r"[a-z0-9_.-]{1,32}", re.ASCII)
# A dedupe key of the site's services (uuids, "flirt:123:456"): no controls, spaces or NUL,
# which some stores cannot hold.
_ID = re.compile(r"[\x21-\x7e]{1,64}")


class BadNotification(ValueError):
    """
    A notification body that does not follow the documented format.
    """


@dataclass(frozen=True, slots=True)
class Notification:
    id: str
    user: str
    type: str
    sender: str | None
    data: Mapping[str, Any] = field(default_factory=dict)

    def toJSON(self) -> bytes:
        return strictjson.dumps({"id": self.id, "user": self.user, "type": self.type,
                                 "from": self.sender, "data": dict(self.data)}).encode("utf-8")


def parseNotification(body: bytes) -> Notification:
    """
    Validate a notification body: C{{"id", "user", "type", "from", "data"}}, at most 8 KiB.
    """
    if len(body) > MAX_BODY:
        raise BadNotification(f"body is {len(body)} bytes, over {MAX_BODY}")
    try:
        value = strictjson.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadNotification("body is not strict JSON (UTF-8 text; no NaN, Infinity or lone "
                              "surrogates)") from None
    return notificationFrom(value)


def notificationFrom(value: Any) -> Notification:
    """
    Validate a decoded notification body (one already within L{MAX_BODY} as it arrived: its
    size is not checked again, re-encoding may change it).
    """
    if not isinstance(value, dict):
        raise BadNotification("body is not a JSON object")
    nid, user, type = value.get("id"), value.get("user"), value.get("type")
    sender, data = value.get("from"), value.get("data", {})
    if not isinstance(nid, str) or not _ID.fullmatch(nid):
        raise BadNotification("id must be 1 to 64 visible ASCII characters")
    if not isUserId(user):
        raise BadNotification("user must be a valid user id")
    if not isinstance(type, str) or not _TYPE.fullmatch(type):
        raise BadNotification("type must match [a-z0-9_.-]{1,32}")
    if sender is not None and not isUserId(sender):
        raise BadNotification("from must be a valid user id or null")
    if not isinstance(data, dict):
        raise BadNotification("data must be a JSON object")
    return Notification(id=nid, user=user, type=type, sender=sender, data=data)


def messageNotification(event: Event) -> Notification | None:
    """
    The C{message} notification for the recipient of a committed conversation message.
    """
    if event.type != "message" or not event.stream.startswith("dm:") or event.sender is None:
        return None
    a, b = parseConversation(event.stream)
    recipient = b if event.sender == a else a
    return Notification(
        id=f"m.{event.id}", user=recipient, type="message", sender=event.sender,
        data={"conversation": event.stream, "seq": event.seq,
              "preview": event.data.get("text", "")[:PREVIEW_CHARS]})


def outboxEntry(event: Event) -> OutboxEntry | None:
    """
    The outbox entry written with a conversation message: its recipient's C{message}
    notification, published by the owner of the message's group.
    """
    notification = messageNotification(event)
    if notification is None:
        return None
    return OutboxEntry(id=notification.id, group=event.group, stream=event.stream,
                       seq=event.seq, body=notification.toJSON().decode("utf-8"),
                       created=event.ts)


class Dropped:
    """
    What a delivery fires with when the inbox did not take the notification: its user has
    blocked its sender. It is done with (FINed, answered 200), and counted.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def deliverToInbox(streams, notification: Notification, blocks=None) -> defer.Deferred:
    """
    Append C{notification} to its user's inbox on this node (which must own it), unless the
    user has blocked its sender (C{blocks}, a L{hpchat.blocks.BlockList}): then fire with a
    L{Dropped}.
    """
    if blocks is None or notification.sender is None:
        return _append(streams, notification)
    checked = blocks.hasBlocked(notification.user, notification.sender)
    return checked.addCallback(
        lambda blocked: _dropped(notification) if blocked else _append(streams, notification))


def _append(streams, notification: Notification) -> defer.Deferred:
    return streams.appendNotification(notification.user, inboxStream(notification.user),
                                      notification.id, notification.type, notification.sender,
                                      notification.data)


def _dropped(notification: Notification) -> Dropped:
    metrics.countSocial("notification_blocked")
    return Dropped("blocked")


class InProcessNotifier:
    """
    Turns committed conversation messages into inbox notifications delivered on this node at
    once, with no outbox behind them (a notification is lost if the node stops first). A node
    uses L{hpchat.outbox.OutboxPublisher} instead; this serves setups without a store outbox.
    """

    log = Logger()

    def __init__(self, streams, deliver: Callable[[Notification], defer.Deferred] | None = None,
                 blocks=None):
        self._deliver = deliver or (lambda n: deliverToInbox(streams, n, blocks))

    def messageCommitted(self, event: Event) -> None:
        notification = messageNotification(event)
        if notification is None:
            return
        d = defer.maybeDeferred(self._deliver, notification)
        d.addErrback(lambda f: self.log.warn(
            "inbox notification {id} for {user} not delivered: {error}",
            id=notification.id, user=notification.user, error=f.getErrorMessage()))


class NotDeliverable(Exception):
    """
    The notification's inbox has no settled owner right now; try again later.
    """


class InboxRouter:
    """
    Delivers a notification to the node that owns its user's inbox: appended here when this
    node owns it, else handed to the owner through C{forward(url, notification)}. Fires once
    the notification is durable in the inbox (or was already there).
    """

    def __init__(self, streams, ownership, forward: Callable[[str, Notification], Any],
                 blocks=None):
        self._streams = streams
        self._ownership = ownership
        self._forward = forward
        self._blocks = blocks

    async def deliver(self, notification: Notification):
        group = self._streams.groupOf(inboxStream(notification.user))
        route = await resolveRoute(self._ownership, group)
        if isinstance(route, Local):
            return await deliverToInbox(self._streams, notification, self._blocks)
        if isinstance(route, Redirect) and route.node != self._ownership.nodeId():
            return await self._forward(route.url, notification)
        raise NotDeliverable(f"the owner of inbox group {group} is not settled")
