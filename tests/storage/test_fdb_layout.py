"""
The FoundationDB key layout and batch splitting (L{hpchat.storage.fdb_layout}): pure encoding,
no server and no libfdb_c.

These need only the binding's pure-Python tuple layer (C{fdb.tuple} imports and packs
without the C library; checked on a machine without it). The binding comes with the test
extra; where it is missing the tests are skipped with the command that installs it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.storage.contract import event

try:
    import fdb.tuple as fdbtuple  # type: ignore[import-untyped]
except ImportError:
    fdbtuple = None


def layout(prefix="hpchat"):
    from hpchat.storage.fdb_layout import KeyLayout

    return KeyLayout(prefix)


class KeyLayoutTests(SynchronousTestCase):
    if fdbtuple is None:
        skip = "the FoundationDB binding is not installed (pip install 'hpchat[foundationdb]')"

    def test_documentedKeys(self):
        """
        Each key is the tuple the module docstring and docs/deployment.md document, and the
        bytes are the tuple layer's.
        """
        L = layout()
        self.assertEqual(L.version(), b"\x02hpchat\x00\x02v\x00")
        self.assertEqual(L.fence(7), b"\x02hpchat\x00\x02f\x00\x15\x07")
        self.assertEqual(L.event("dm:a:b", 300),
                         b"\x02hpchat\x00\x02e\x00\x02dm:a:b\x00\x16\x01\x2c")
        self.assertEqual(fdbtuple.unpack(L.eventId("inbox:bob", "n-1")),
                         ("hpchat", "i", "inbox:bob", "n-1"))
        self.assertEqual(fdbtuple.unpack(L.clientId("dm:a:b", "a", "c1")),
                         ("hpchat", "c", "dm:a:b", "a", "c1"))
        self.assertEqual(L.unpack(L.event("dm:a:b", 3)), ("e", "dm:a:b", 3))
        self.assertEqual(layout("other").fence(1)[:7], b"\x02other\x00")

    def test_foreignKeysAreRejected(self):
        """
        unpack refuses a key from another prefix.
        """
        self.assertRaises(ValueError, layout("one").unpack, layout("two").fence(1))
        self.assertRaises(ValueError, layout().decodeEvent, layout().fence(1), b"")

    def test_eventKeysSortBySeqNumerically(self):
        """
        Event keys of a stream sort by seq as numbers (9 < 10 < 100 < 2**40), so history pages
        are range reads.
        """
        L = layout()
        seqs = [1, 2, 9, 10, 11, 99, 100, 255, 256, 65536, 2**40]
        keys = [L.event("dm:a:b", s) for s in seqs]
        self.assertEqual(sorted(keys), keys)

    def test_streamRangesAreDisjoint(self):
        """
        A stream's event range holds all its seqs and nothing of a stream whose name extends
        or precedes it.
        """
        L = layout()
        begin, end = L.eventRange("inbox:al")
        for seq in (0, 1, 2**60):
            self.assertTrue(begin <= L.event("inbox:al", seq) < end)
        for other in ("inbox:alice", "inbox:a", "inbox:al\x00x", "inbox:am"):
            for seq in (1, 2**60):
                key = L.event(other, seq)
                self.assertFalse(begin <= key < end, other)
        # The half-open bounds used by readAfter / readBefore.
        self.assertTrue(begin < L.event("inbox:al", 1) < L.event("inbox:al", 2) < end)

    def test_whereEachKindLives(self):
        """
        The kinds of key are separate ranges under the prefix, all inside everything().
        """
        L = layout()
        begin, end = L.everything()
        keys = [L.version(), L.fence(0), L.event("s", 1), L.eventId("s", "x"),
                L.clientId("s", "a", "c")]
        for key in keys:
            self.assertTrue(begin <= key < end)
        other = layout("hpchat2")
        self.assertFalse(begin <= other.fence(0) < end)
        self.assertEqual(len({L.unpack(k)[0] for k in keys}), 5)

    def test_eventRoundTrip(self):
        """
        An event's value decodes to the same event: unicode, nested data, a null sender, a
        float timestamp exactly.
        """
        L = layout()
        for e in [event(1, client_id="c", data={"text": "ünï 😀 \u0000 \\ \""}),
                  event(2, sender=None, type="flirt", data={"nested": {"a": [1, 2.5, None]}}),
                  event(3, ts=1732623456.123456789, data={})]:
            self.assertEqual(L.decodeEvent(L.event(e.stream, e.seq), L.encodeValue(e)), e)

    def test_valueFormat(self):
        """
        The value is the tuple (1, id, group, type, sender, ts, client_id, data as JSON).
        """
        L = layout()
        e = event(4, client_id="k", group=9)
        self.assertEqual(fdbtuple.unpack(L.encodeValue(e)),
                         (1, e.id, 9, "message", "alice", e.ts, "k", '{"text":"m4"}'))
        self.assertEqual(fdbtuple.unpack(L.packInt(12345)), (12345,))

    def test_indexKeys(self):
        """
        Every event has an id index key; only events with a sender and a client_id have a
        client_id index key.
        """
        L = layout()
        self.assertEqual(L.indexKeys(event(1)), (L.eventId("dm:alice:bob", "dm:alice:bob-1"),))
        self.assertEqual(L.indexKeys(event(1, client_id="k"))[1],
                         L.clientId("dm:alice:bob", "alice", "k"))
        self.assertEqual(len(L.indexKeys(event(1, client_id="k", sender=None))), 1)

    def test_encodeRefusesWhatFoundationDBWouldRefuse(self):
        """
        A value over 100,000 bytes or a key over 10,000 bytes is refused with ValueError.
        """
        L = layout()
        L.encode(event(1, data={"text": "x" * 60000}))
        self.assertRaises(ValueError, L.encode, event(1, data={"text": "x" * 100_001}))
        self.assertRaises(ValueError, L.encode, event(1, stream="s" * 10_001))

    def test_costCoversWritesAndReads(self):
        """
        The estimated cost of an event is at least its written bytes plus its read keys.
        """
        L = layout()
        item = L.encode(event(1, client_id="k", data={"text": "y" * 200}))
        written = len(item.key) + len(item.value) + sum(len(k) + len(item.indexValue)
                                                         for k in item.indexKeys)
        read = len(item.key) + sum(len(k) for k in item.indexKeys)
        self.assertGreaterEqual(item.cost, written + read)


class SplitBatchTests(SynchronousTestCase):
    if fdbtuple is None:
        skip = KeyLayoutTests.skip

    def encoded(self, events):
        L = layout()
        return [L.encode(e) for e in events]

    def split(self, events, maxBytes=10**9, maxEvents=10**9):
        from hpchat.storage.fdb_layout import splitBatch

        return [[i.event for i in part]
                for part in splitBatch(self.encoded(events), maxBytes, maxEvents)]

    def test_smallBatchIsOnePart(self):
        """
        A batch under the limits is one part, in its order; an empty batch is no part.
        """
        events = [event(1), event(1, stream="dm:c:d", group=2), event(2)]
        self.assertEqual(self.split(events), [[events[0], events[2], events[1]]])
        self.assertEqual(self.split([]), [])

    def test_groupsStayTogether(self):
        """
        Parts are cut between groups when a group fits in a part.
        """
        events = [event(s, stream=f"dm:g{g}:h", group=g) for s in range(1, 5) for g in range(3)]
        parts = self.split(events, maxEvents=8)
        self.assertEqual([len(p) for p in parts], [8, 4])
        for part in parts:
            for g in {e.group for e in part}:
                self.assertEqual(len([e for e in part if e.group == g]), 4)

    def test_limitsHold(self):
        """
        No part exceeds the byte or event limit unless one event alone does.
        """
        events = [event(s, stream=f"dm:g{g}:h", group=g, data={"text": "x" * (s * 37 % 500)})
                  for g in range(5) for s in range(1, 60)]
        costs = {(i.event.stream, i.event.seq): i.cost for i in self.encoded(events)}
        for maxBytes, maxEvents in [(5000, 1000), (100_000, 17), (700, 3)]:
            parts = self.split(events, maxBytes, maxEvents)
            self.assertEqual(sorted(e.seq for p in parts for e in p),
                             sorted(e.seq for e in events))
            for part in parts:
                self.assertLessEqual(len(part), maxEvents)
                size = sum(costs[(e.stream, e.seq)] for e in part)
                self.assertTrue(size <= maxBytes or len(part) == 1, (size, len(part)))

    def test_bigGroupIsCutInSeqOrder(self):
        """
        A group bigger than a part is cut in batch order: each stream's seqs ascend across
        parts, with no gap.
        """
        events = [event(s, stream=f"dm:s{n}:t", group=1) for s in range(1, 31) for n in (1, 2)]
        parts = self.split(events, maxEvents=7)
        flat = [e for part in parts for e in part]
        for n in (1, 2):
            self.assertEqual([e.seq for e in flat if e.stream == f"dm:s{n}:t"],
                             list(range(1, 31)))
        self.assertEqual(len(parts), 9)


class ClashTests(SynchronousTestCase):
    def test_clashesInsideABatch(self):
        """
        uniqueKeyClashes finds repeated seqs, ids and (sender, client_id) per stream only.
        """
        from hpchat.storage.fdb_layout import uniqueKeyClashes

        a, b = event(1), event(2)
        self.assertEqual(uniqueKeyClashes([a, b]), [])
        self.assertEqual(uniqueKeyClashes([a, event(1, id="z")]), [event(1, id="z")])
        self.assertEqual(uniqueKeyClashes([a, event(2, id=a.id)]), [event(2, id=a.id)])
        c1, c2 = event(1, client_id="k"), event(2, client_id="k")
        self.assertEqual(uniqueKeyClashes([c1, c2]), [c2])
        self.assertEqual(uniqueKeyClashes([c1, event(2, client_id="k", sender="bob")]), [])
        self.assertEqual(uniqueKeyClashes([c1, event(2, client_id="k", sender=None),
                                           event(3, client_id="k", sender=None)]), [])
        self.assertEqual(uniqueKeyClashes([a, event(1, stream="dm:x:y", id=a.id)]), [])
