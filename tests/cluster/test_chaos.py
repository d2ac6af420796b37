"""
A short chaos soak on a real cluster (etcd, nsqd, three twistd nodes): every fault kind at
least once under a seeded workload, then the checker (tests.support.chaoscheck). The long
soak is bench/chaos.py; docs/reliability.md, "Chaos soak", tells how to run it.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from twisted.trial import unittest

from tests.support.chaos import FAULTS, Ack, ChaosConfig, ChaosSoak, PollRecord
from tests.support.chaoscheck import Report, checkAcks, checkHistories, checkInboxes, checkPollers
from tests.support.trial import asyncTest


class ChaosSoakTests(unittest.TestCase):
    timeout = 240

    @asyncTest
    async def test_soak(self):
        """
        Under kill -9, SIGSTOP past the lease, SIGTERM restarts, kill -9 of nsqd and a pause
        of etcd, no acknowledged message is lost, doubled or out of order, every notification
        is in its inbox exactly once, and the cluster is ready and quiet within 30 s of
        healing.
        """
        soak = ChaosSoak(self, ChaosConfig(seed=20261201, duration=25, faultGap=(0.5, 1.5)),
                         out=lambda line: None)
        summary = await soak.run()
        path = os.path.join(soak.workdir, "summary.json")
        with open(path, "w") as f:
            json.dump(summary, f, indent=2, default=str)
        self.assertEqual(set(summary["faults"]), set(FAULTS))
        self.assertGreater(summary["acknowledged_messages"], 100)
        self.assertGreater(summary["acknowledged_flirts"], 20)
        violations = summary["violations"]
        self.assertFalse(violations, "chaos soak violations (summary in {}, soak log {}):"
                                     "\n{}\n{}".format(
            path, os.path.join(soak.workdir, "chaos.log"), json.dumps(violations, indent=1),
            json.dumps(summary["violation_details"], indent=1, default=str)[:6000]))


class CheckerTests(unittest.SynchronousTestCase):
    """
    The checker finds what it is meant to find, on histories and records made up here.
    """

    def soak(self):
        def ack(clientId, seq, mid, sender, recipient):
            return Ack("dm:a:b", clientId, seq, mid, sender, recipient,
                       f"{clientId} from {sender}", 201, 1, 1.0, 2.0)

        return SimpleNamespace(
            started=0.0, faultLog=[], flirtsTwice=set(), audited=set(),
            acks=[ack("w0-0", 1, "m1", "a", "b"), ack("w0-1", 2, "m2", "b", "a"),
                  ack("w0-2", 3, "m3", "a", "b")],
            polls=[PollRecord("dm:a:b", "a", seen=[(1, "w0-0"), (2, "w0-1"), (3, "w0-2")])],
            flirts={"f1": "a", "f2": "b"}, flirtTimes={"f1": 1.0, "f2": 1.0})

    def message(self, seq, clientId, mid, sender):
        return {"seq": seq, "client_id": clientId, "id": mid, "sender": sender,
                "text": f"{clientId} from {sender}"}

    def history(self):
        return {"dm:a:b": [self.message(1, "w0-0", "m1", "a"),
                           self.message(2, "w0-1", "m2", "b"),
                           self.message(3, "w0-2", "m3", "a")]}

    def inboxes(self):
        def event(seq, nid, type, sender=None, seqOf=None):
            data = {"conversation": "dm:a:b", "seq": seqOf} if seqOf else {}
            return {"seq": seq, "id": nid, "type": type, "from": sender, "data": data}

        return {"a": [event(1, "f1", "flirt"), event(2, "m.m2", "message", "b", 2)],
                "b": [event(1, "m.m1", "message", "a", 1), event(2, "f2", "flirt"),
                      event(3, "m.m3", "message", "a", 3)]}

    def violations(self, soak, histories, inboxes):
        report = Report()
        checkHistories(report, histories)
        checkAcks(report, soak, histories)
        checkPollers(report, soak, histories)
        checkInboxes(report, soak, inboxes, histories)
        return report.asDict()["violations"]

    def test_clean(self):
        self.assertEqual(self.violations(self.soak(), self.history(), self.inboxes()), {})

    def test_lostMessage(self):
        """
        An acknowledged message missing from the history is lost, and its seqs have a gap.
        """
        histories = self.history()
        del histories["dm:a:b"][1]
        self.assertEqual(self.violations(self.soak(), histories, self.inboxes()),
                         {"acked_message_stored": 1, "history_seqs": 1,
                          "poller_matches_history": 1, "poller_caught_up": 1})

    def test_doubledMessage(self):
        histories = self.history()
        histories["dm:a:b"].append(self.message(4, "w0-1", "m2b", "b"))
        self.assertEqual(self.violations(self.soak(), histories, self.inboxes()),
                         {"history_client_id_once": 1, "acked_message_stored": 1,
                          "poller_caught_up": 1})

    def test_otherSeq(self):
        """
        A message stored at another seq than its acknowledgement said is a violation.
        """
        soak = self.soak()
        soak.acks[2].seq = 4
        self.assertEqual(self.violations(soak, self.history(), self.inboxes()),
                         {"acked_message_stored": 1, "message_notification_once": 1})

    def test_pollerOutOfOrder(self):
        soak = self.soak()
        soak.polls[0].seen = [(1, "w0-0"), (3, "w0-2"), (2, "w0-1")]
        self.assertEqual(self.violations(soak, self.history(), self.inboxes()),
                         {"poller_ascending": 2, "poller_caught_up": 1})

    def test_notifications(self):
        """
        A flirt missing and a message notification twice are both found.
        """
        inboxes = self.inboxes()
        del inboxes["a"][0]
        inboxes["b"].append(dict(inboxes["b"][0], seq=4))
        self.assertEqual(self.violations(self.soak(), self.history(), inboxes),
                         {"inbox_seqs": 1, "flirt_in_inbox_once": 1, "inbox_id_once": 1,
                          "message_notification_once": 1})
