"""
The append pipeline (L{hpchat.streams.appends}): seqs, visibility after durability, dedupe
by client id and notification id (in memory, in flight, in the store), typing cleared by a
send, commit hooks.
"""

from __future__ import annotations

from twisted.internet import defer

from hpchat.notify import messageNotification
from hpchat.storage.base import Event
from hpchat.streams import Streams, StreamUnavailable
from tests.test_streams import CID, StreamsTestCase


class SendTests(StreamsTestCase):
    def test_seqsAreConsecutiveFromOne(self) -> None:
        """
        Messages get seqs 1, 2, 3 in order, and are stored with the owner's token.
        """
        seqs = [self.sent(f"m{i}")[0].seq for i in range(3)]
        self.assertEqual(seqs, [1, 2, 3])
        self.assertEqual(self.store.fences[self.streams.groupOf(CID)], 7)

    def test_visibleOnlyOnceDurable(self) -> None:
        """
        Until the batch is durable the send is unanswered, pollers see nothing and no
        onCommitted hook has run.
        """
        self.store.hold()
        sending = self.streams.send(CID, "alice", "hi", None)
        poll = self.streams.poll(CID, 0, None, 10)
        self.clock.advance(0.005)
        self.assertNoResult(sending)
        self.assertNoResult(poll)
        self.assertEqual(self.committed, [])
        self.store.release()
        event, created = self.successResultOf(sending)
        self.assertTrue(created)
        self.assertEqual(self.successResultOf(poll).events, [event])
        self.assertEqual(self.committed, [event])

    def test_repeatedClientIdReturnsOriginal(self) -> None:
        """
        A repeated client_id from the same sender returns the original, not a new message;
        from the other participant it is a new message.
        """
        first, created = self.sent("a", clientId="k1")
        again, createdAgain = self.sent("b", clientId="k1")
        self.assertEqual((again, createdAgain), (first, False))
        other, created = self.sent("c", sender="bob", clientId="k1")
        self.assertEqual((other.seq, created), (2, True))

    def test_concurrentRepeatsShareTheFirstOutcome(self) -> None:
        """
        Two sends with one client_id in flight at once produce one message.
        """
        self.store.hold()
        one = self.streams.send(CID, "alice", "a", "k")
        two = self.streams.send(CID, "alice", "a", "k")
        self.clock.advance(0.005)
        self.store.release()
        (first, created), (second, createdAgain) = (self.successResultOf(one),
                                                    self.successResultOf(two))
        self.assertEqual((second, created, createdAgain), (first, True, False))
        self.assertEqual(len(self.store.events[CID]), 1)

    def test_clientIdFoundInStoreBeyondMemory(self) -> None:
        """
        A client_id older than the in-memory log is found in the store after a reload.
        """
        first, _ = self.sent("a", clientId="old")
        for i in range(self.history + 2):
            self.sent(f"m{i}")
        self.streams.dropGroups([self.streams.groupOf(CID)])
        again, created = self.sent("a", clientId="old")
        self.assertEqual((again, created), (first, False))

    def test_newClientIdsBeyondMemoryAskNoStore(self) -> None:
        """
        A stream that has stayed in memory since its start tells a new client_id from a
        repeat without the store, however far its log has moved on; the repeat of a message
        dropped from the log is looked up in the store and answered with the original.
        """
        first, _ = self.sent("a", clientId="old")
        for i in range(self.history * 2):
            self.assertTrue(self.sent(f"m{i}", clientId=f"k{i}")[1])
        self.assertEqual(self.store.lookups, 0)
        again, created = self.sent("a", clientId="old")
        self.assertEqual((again, created, self.store.lookups), (first, False, 1))
        self.assertEqual(self.sent("b", sender="bob", clientId="old")[0].seq,
                         self.history * 2 + 2)
        self.assertEqual(len(self.store.events[CID]), self.history * 2 + 2)

    def test_aStreamLoadedWithoutItsStartAsksTheStore(self) -> None:
        """
        Loaded again with only its recent events, a stream cannot tell a new client_id from
        one of its older messages: each new one is looked up in the store.
        """
        for i in range(self.history + 2):
            self.sent(f"m{i}", clientId=f"k{i}")
        self.streams.dropGroups([self.streams.groupOf(CID)])
        self.assertTrue(self.sent("new", clientId="new")[1])
        self.assertEqual(self.store.lookups, 1)
        again, created = self.sent("m0", clientId="k0")
        self.assertEqual((again.seq, created, self.store.lookups), (1, False, 2))

    def notify(self, nid, type="message", user="bob"):
        d = self.streams.appendNotification(user, f"inbox:{user}", nid, type, "alice",
                                            {"conversation": CID, "seq": 1})
        self.clock.advance(0.005)
        return d

    def test_redeliveredMessageNotificationIsDeduplicated(self) -> None:
        """
        A C{message} notification delivered again (NSQ redelivers, producers resend) is found
        by its id while the inbox is complete in memory: the original is returned, nothing is
        written, and other notifications of the inbox go on.
        """
        first, created = self.successResultOf(self.notify("m.1"))
        again, createdAgain = self.successResultOf(self.notify("m.1"))
        self.assertEqual((again, created, createdAgain), (first, True, False))
        flirt, _ = self.successResultOf(self.notify("f.1", type="flirt"))
        self.assertEqual(flirt.seq, 2)
        self.assertEqual([e.id for e in self.store.stored("inbox:bob")], ["m.1", "f.1"])

    def test_concurrentMessageNotificationsShareTheFirstOutcome(self) -> None:
        """
        The same C{message} notification twice while the first is being written: one event.
        """
        self.store.hold()
        one = self.notify("m.2")
        two = self.notify("m.2")
        self.store.release()
        (first, created), (second, createdAgain) = (self.successResultOf(one),
                                                    self.successResultOf(two))
        self.assertEqual((second, created, createdAgain), (first, True, False))
        self.assertEqual(len(self.store.stored("inbox:bob")), 1)

    def test_messageNotificationFoundInStoreBeyondMemory(self) -> None:
        """
        A C{message} notification older than the in-memory log is found in the store.
        """
        first, _ = self.successResultOf(self.notify("m.old"))
        for i in range(self.history + 2):
            self.successResultOf(self.notify(f"f.{i}", type="flirt"))
        self.streams.dropGroups([self.streams.groupOf("inbox:bob")])
        again, created = self.successResultOf(self.notify("m.old"))
        self.assertEqual((again, created), (first, False))
        self.assertEqual(len(self.store.stored("inbox:bob")), self.history + 3)

    def test_duplicateInTheStoreFailsOnlyItsStream(self) -> None:
        """
        A notification that the stream's memory misses but the store holds (a stale view)
        fails alone: the other streams of its group, written in the same batch, succeed and
        stay loaded; the stream reloads, and the notification again is the stored original.
        """
        group = self.streams.groupOf("inbox:bob")
        other = next(f"inbox:u{i}" for i in range(10_000)
                     if self.streams.groupOf(f"inbox:u{i}") == group)
        self.successResultOf(self.streams.get("inbox:bob"))
        self.successResultOf(self.streams.get(other))
        stale = Event(stream="inbox:bob", seq=1, id="m.9", group=group, type="message",
                      sender="alice", ts=1.0, data={})
        self.store.events["inbox:bob"] = {1: stale}
        duplicate = self.streams.appendNotification("bob", "inbox:bob", "m.9", "message",
                                                    "alice", {})
        mate = self.streams.appendNotification(other[6:], other, "f.1", "flirt", "alice", {})
        self.clock.advance(0.005)
        self.failureResultOf(duplicate)
        self.assertTrue(self.successResultOf(mate)[1])
        self.assertIn(other, self.streams._streams)
        self.assertNotIn("inbox:bob", self.streams._streams)
        again, created = self.successResultOf(self.notify("m.9"))
        self.assertEqual((again, created), (stale, False))

    def test_lostGroupFailsTheSendAndDropsTheStream(self) -> None:
        """
        A fence rejection fails the send with the store's error and forgets the stream, whose
        waiters are told to go elsewhere.
        """
        self.sent("first")
        waiting = self.streams.poll(CID, 1, None, 30)
        self.store.fences[self.streams.groupOf(CID)] = 100
        failure = self.failureResultOf(self.send("second"))
        self.assertEqual(type(failure.value).__name__, "FenceRejected")
        self.failureResultOf(waiting, StreamUnavailable)
        self.assertNotIn(CID, self.streams._streams)

    def test_typingClearedBySending(self) -> None:
        """
        Sending a message clears the sender's typing mark.
        """
        self.streams.setTyping(CID, "alice", True)
        self.sent("hi")
        result = self.successResultOf(self.streams.poll(CID, None, None, 0))
        self.assertEqual(result.typing, [])
        self.assertEqual(result.typing_version, 2)


class CommitHookTests(StreamsTestCase):
    def test_hooksRunForAStreamDroppedWhileWriting(self) -> None:
        """
        A message that becomes durable after its stream was dropped (shutdown, hand-off)
        still runs the commit hooks, so its notification is not lost.
        """
        self.store.hold()
        sending = self.streams.send(CID, "alice", "last words", None)
        self.clock.advance(0.005)
        self.streams.dropGroups([self.streams.groupOf(CID)])
        self.store.release()
        event, created = self.successResultOf(sending)
        self.assertEqual(self.committed, [event])


class InFlightTests(StreamsTestCase):
    """
    Repeats of a dedupe key being written observe the first write.
    """

    def test_aRepeatThatGivesUpLeavesTheWrite(self) -> None:
        """
        Cancelling a repeat (its client went away) fails it alone: the first send and
        another repeat get the one message.
        """
        self.store.hold()
        one = self.streams.send(CID, "alice", "a", "k")
        two = self.streams.send(CID, "alice", "a", "k")
        three = self.streams.send(CID, "alice", "a", "k")
        two.cancel()
        self.failureResultOf(two, defer.CancelledError)
        self.clock.advance(0.005)
        self.store.release()
        event, created = self.successResultOf(one)
        self.assertEqual(self.successResultOf(three), (event, False))
        self.assertTrue(created)
        self.assertEqual(len(self.store.events[CID]), 1)
        self.assertEqual(self.successResultOf(self.streams.get(CID)).inFlight, {})

    def test_aSenderThatGivesUpLeavesTheWrite(self) -> None:
        """
        Cancelling a send (its client went away), with or without a client_id, fails that
        caller alone: the message is still written, made visible and told to the hooks.
        """
        for clientId in ("k", None):
            self.store.hold()
            sending = self.streams.send(CID, "alice", f"gone {clientId}", clientId)
            poll = self.streams.poll(CID, None, None, 10)
            sending.cancel()
            self.failureResultOf(sending, defer.CancelledError)
            self.clock.advance(0.005)
            self.store.release()
            [event] = self.successResultOf(poll).events
            self.assertEqual((event.data["text"], event.client_id),
                             (f"gone {clientId}", clientId))
            self.assertEqual(self.committed[-1], event)
        self.assertEqual(self.successResultOf(self.streams.get(CID)).inFlight, {})

    def test_aFailedWriteFailsItsRepeats(self) -> None:
        """
        When the write fails, its repeats fail with it, and nothing stays in flight.
        """
        stream = self.successResultOf(self.streams.get(CID))
        self.store.fences[self.streams.groupOf(CID)] = 100
        one = self.streams.send(CID, "alice", "a", "k")
        two = self.streams.send(CID, "alice", "a", "k")
        self.assertEqual(list(stream.inFlight), [("c", "alice", "k")])
        self.clock.advance(0.005)
        self.assertEqual(type(self.failureResultOf(one).value).__name__, "FenceRejected")
        self.assertEqual(type(self.failureResultOf(two).value).__name__, "FenceRejected")
        self.assertEqual(stream.inFlight, {})
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_noKeyNothingInFlight(self) -> None:
        """
        A message without a client id has no dedupe key: nothing is kept in flight for it.
        """
        self.store.hold()
        sending = self.streams.send(CID, "alice", "a", None)
        self.assertEqual(self.successResultOf(self.streams.get(CID)).inFlight, {})
        self.clock.advance(0.005)
        self.store.release()
        self.assertTrue(self.successResultOf(sending)[1])


class CompanionTests(StreamsTestCase):
    """
    A message's notification written with it, when this node holds the recipient's inbox.
    """

    def setUp(self) -> None:
        super().setUp()
        self.streams.stopService()
        self.streams = Streams(self.clock, self.store, self.persister, self.ownership,
                               groups=16, historyInMemory=self.history, typingTtl=5,
                               idleEvict=60, notificationOf=messageNotification)
        self.persister.subscribeLost(self.streams.dropGroups)
        self.streams.startService()
        self.committed = []
        self.streams.onCommitted.append(self.committed.append)

    def test_writtenInTheMessagesTransaction(self) -> None:
        """
        With bob's inbox loaded, alice's message and bob's notification are one batch; the
        inbox's waiter is woken with the notification at the next seq, the sender's answer
        comes after both are durable, and the commit hooks do not see the message (nothing
        is left for the outbox to deliver).
        """
        self.streams.appendNotification("bob", "inbox:bob", "flirt:1", "flirt", "carol", {})
        self.clock.advance(0.005)
        waiting = self.streams.poll("inbox:bob", 1, None, 30)
        self.store.batches.clear()
        self.committed.clear()
        event, created = self.sent("hello")
        (events, fences), = self.store.batches
        self.assertEqual([(e.stream, e.seq) for e in events], [(CID, 1), ("inbox:bob", 2)])
        self.assertEqual(set(fences), {self.streams.groupOf(CID),
                                       self.streams.groupOf("inbox:bob")})
        note = self.successResultOf(waiting).events[0]
        self.assertEqual((note.id, note.type, note.sender, note.seq),
                         (f"m.{event.id}", "message", "alice", 2))
        self.assertEqual(note.data, {"conversation": CID, "seq": 1, "preview": "hello"})
        self.assertEqual(self.committed, [note])
        self.assertEqual(self.store.outbox, {})

    def test_inboxNotLoadedGoesThroughTheHooks(self) -> None:
        """
        Without bob's inbox in memory, the message is written alone and its commit hooks
        (the outbox) deliver the notification.
        """
        event, created = self.sent("hello")
        self.assertEqual(self.committed, [event])
        self.assertNotIn("inbox:bob", self.streams._streams)

    def test_failureDropsBothStreams(self) -> None:
        """
        When the pair is refused (the inbox's group is fenced elsewhere), the send fails and
        both streams are dropped, so that neither keeps a seq that was never written.
        """
        self.streams.appendNotification("bob", "inbox:bob", "flirt:1", "flirt", "carol", {})
        self.sent("first")
        self.store.fences[self.streams.groupOf("inbox:bob")] = 100
        failure = self.failureResultOf(self.send("second"))
        self.assertEqual(type(failure.value).__name__, "FenceRejected")
        self.assertNotIn(CID, self.streams._streams)
        self.assertNotIn("inbox:bob", self.streams._streams)
        self.assertEqual([e.seq for e in self.store.stored("inbox:bob")], [1, 2])
