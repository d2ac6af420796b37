# -*- test-case-name: tests.storage.test_sqlite -*-
"""
The per-user conversation summaries a store keeps for the social features: one row per
(user, conversation) with the conversation's last seq, the user's read marker, the partner's
read marker and when the last message was sent.

The owner of a conversation writes both participants' rows in the same batch (transaction)
as each message and each move of a read marker, fenced by the conversation's group like its
events. A row is written whole (the owner is the only writer of its conversations); the last
row of a batch for a (user, conversation) wins. The read markers of a conversation come back
with its stream on L{IEventStore.claim} (L{StreamSnapshot.reads}).

The list of a user's conversations is read from these rows, newest activity first, by
whichever node serves the user (not the conversations' owners).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from zope.interface import Interface

from hpchat.storage.base import Event


@dataclass(frozen=True, slots=True)
class ConversationRow:
    """
    What C{user} sees of conversation C{stream} in their list.

    @ivar group: the chat group of C{stream} (the fence the row is written under).
    @ivar updated: when the last message was sent (the owner's clock).
    """

    user: str
    stream: str
    group: int
    partner: str
    last_seq: int
    read_seq: int
    partner_read_seq: int
    updated: float


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """
    One page of a user's conversations, newest activity first, each with its last message
    (None if the store no longer has it), and the user's unread count over all of them.
    """

    items: Sequence[tuple[ConversationRow, Event | None]]
    unread_total: int


class IConversationStore(Interface):
    """
    An L{IEventStore} that also keeps conversation summaries.
    """

    def append(events, fences, outbox=(), conversations=()):
        """
        L{IEventStore.append}, writing the L{ConversationRow}s C{conversations} in the same
        transaction (their groups are fenced like the events' groups).
        """

    def listConversations(user, limit, before):
        """
        Fire with a L{ConversationPage} of up to C{limit} of C{user}'s conversations ordered
        by (updated, stream) descending, those before C{before} (an C{(updated, stream)}
        pair; None: from the newest).
        """


def latestRows(rows: Iterable[ConversationRow]) -> list[ConversationRow]:
    """
    The last of C{rows} for each (user, stream), in the order of their first appearance.
    """
    latest: dict[tuple[str, str], ConversationRow] = {}
    for row in rows:
        latest[(row.user, row.stream)] = row
    return list(latest.values())


def rowColumns(row: ConversationRow) -> tuple:
    return (row.user, row.stream, row.group, row.partner, row.last_seq, row.read_seq,
            row.partner_read_seq, row.updated)


ROW_COLUMNS = "usr, stream, grp, partner, last_seq, read_seq, partner_read_seq, updated"


def rowFrom(values: Sequence) -> ConversationRow:
    user, stream, group, partner, lastSeq, readSeq, partnerReadSeq, updated = values
    return ConversationRow(user=user, stream=stream, group=group, partner=partner,
                           last_seq=lastSeq, read_seq=readSeq, partner_read_seq=partnerReadSeq,
                           updated=updated)
