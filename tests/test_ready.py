"""
The ready line a node logs once it serves.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from hpchat.config import parseConfig
from hpchat.ready import ReadyAnnouncer, readyFields
from tests.test_config import MINIMAL


def lines(events) -> list[tuple[LogLevel, str]]:
    from twisted.logger import formatEvent

    return [(e["log_level"], formatEvent(e)) for e in events]


class ReadyLineTests(SynchronousTestCase):
    def test_fields(self):
        """
        The line names the advertised URL, the store (the SQLite file, or the backend),
        single node or the etcd of the cluster, and the nsqd addresses and topic or off.
        """
        config = parseConfig(MINIMAL + "[storage]\npath = /srv/h.sqlite3\n", "/etc/h.ini")
        self.assertEqual(readyFields(config), {
            "url": "http://127.0.0.1:8080", "store": "sqlite /srv/h.sqlite3",
            "mode": "single node", "nsq": "off"})
        config = parseConfig(MINIMAL + "[storage]\nbackend = foundationdb\ncluster_file = c\n"
                             "[cluster]\netcd = http://e:2379\n"
                             "[nsq]\nnsqd_tcp = 127.0.0.1:4150, n2:4150\n", "/etc/h.ini")
        self.assertEqual(readyFields(config), {
            "url": "http://127.0.0.1:8080", "store": "foundationdb",
            "mode": "cluster of etcd http://e:2379",
            "nsq": "127.0.0.1:4150, n2:4150 topic hpchat.notifications"})

    def test_loggedOnceWhenReady(self):
        """
        The line is logged once, when the readiness check first passes; a failing check is
        logged and counts as not ready; past warnAfter one warning says it is not ready yet.
        """
        clock = Clock()
        state = {"ready": False, "fail": False}

        def isReady():
            if state["fail"]:
                raise RuntimeError("boom")
            return state["ready"]

        config = parseConfig(MINIMAL + "[storage]\npath = /srv/h.sqlite3\n", "/etc/h.ini")
        announcer = ReadyAnnouncer(config, isReady, clock)
        with capturedLogs() as events:
            announcer.startService()
            clock.advance(1)
            self.assertEqual(lines(events), [])
            state["fail"] = True
            clock.advance(announcer.interval)
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
            state["fail"] = False
            clock.advance(announcer.warnAfter)
            clock.advance(announcer.interval)
            warnings = lines(events)
            self.assertEqual(len([w for w in warnings if w[0] == LogLevel.warn]), 1, warnings)
            self.assertIn("hpchat not ready after 60 s at http://127.0.0.1:8080", warnings[-1][1])
            state["ready"] = True
            for _ in range(5):
                clock.advance(announcer.interval)
            ready = [line for level, line in lines(events) if level == LogLevel.info]
        self.assertEqual(ready, ["hpchat ready at http://127.0.0.1:8080 (store: sqlite "
                                 "/srv/h.sqlite3, mode: single node, nsq: off)"])
        self.assertEqual(clock.getDelayedCalls(), [])
        announcer.stopService()

    def test_stoppedBeforeReady(self):
        """
        Stopping the node before it was ready stops the checks and logs nothing.
        """
        clock = Clock()
        config = parseConfig(MINIMAL, "/etc/h.ini")
        announcer = ReadyAnnouncer(config, lambda: False, clock)
        with capturedLogs() as events:
            announcer.startService()
            clock.advance(1)
            announcer.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(lines(events), [])
