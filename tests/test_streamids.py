"""
User ids, conversation ids and group hashing.
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from hpchat.streamids import (
    BadConversation,
    conversationId,
    groupOf,
    inboxStream,
    isUserId,
    parseConversation,
    parseConversationStepwise,
)


class StreamIdTests(SynchronousTestCase):
    def test_userIds(self):
        """
        User ids are 1-64 ASCII letters, digits, _ and -.
        """
        for good in ("a", "alice_B-9", "x" * 64):
            self.assertTrue(isUserId(good), good)
        for bad in ("", "x" * 65, "al ice", "alice\n", "ålice", "a:b", None, 3):
            self.assertFalse(isUserId(bad), bad)

    def test_conversations(self):
        """
        dm:<a>:<b> with a < b in byte order; the canonical id of two users is the same
        whichever order they come in.
        """
        self.assertEqual(parseConversation("dm:Bob:alice"), ("Bob", "alice"))
        self.assertEqual(conversationId("bob", "alice"), "dm:alice:bob")
        self.assertEqual(conversationId("alice", "bob"), "dm:alice:bob")
        for bad in ("dm:bob:alice", "dm:a:a", "dm:a", "xx:a:b", "dm:a:b:c", "dm::b", "dm:a b:c"):
            self.assertRaises(BadConversation, parseConversation, bad)
        self.assertEqual(inboxStream("bob"), "inbox:bob")

    def test_conversationsLikeTheRules(self):
        """
        The one-match parse agrees with the rules checked one by one, on random ids near the
        edges (lengths 0, 1, 64, 65, separators, case, non-ASCII, line ends), refusals and
        their reasons included.
        """
        rng = random.Random(11)
        alphabet = "aAzZ09_-:é\n \x00Ǆ"

        def part() -> str:
            kind = rng.random()
            if kind < 0.2:
                return rng.choice(["", "a", "B", "x" * 64, "x" * 65, "a\n", "\u0660"])
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))

        for _ in range(5000):
            cid = rng.choice(["dm", "DM", "dm ", ""]) + rng.choice([":", ""]) + part() \
                + rng.choice([":", "", "::"]) + part()
            try:
                expected = parseConversationStepwise(cid)
            except BadConversation as e:
                with self.assertRaises(BadConversation) as refused:
                    parseConversation(cid)
                self.assertEqual(str(refused.exception), str(e), cid)
            else:
                self.assertEqual(parseConversation(cid), expected, cid)

    def test_groupsAreStableAndSpread(self):
        """
        A stream's group depends only on its name and the number of groups (the same in
        every process), and streams spread over all groups.
        """
        self.assertEqual(groupOf("dm:alice:bob", 64), groupOf("dm:alice:bob", 64))
        # Pinned: changing the hash would move every stream of a running cluster.
        self.assertEqual(groupOf("dm:alice:bob", 64), 51)
        groups = {groupOf(f"dm:u{i}:v{i}", 16) for i in range(500)}
        self.assertEqual(groups, set(range(16)))
