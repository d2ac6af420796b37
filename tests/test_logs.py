"""
The JSON-lines log observer.
"""

from __future__ import annotations

import io
import json

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from hpchat.logs import JSONLinesObserver, eventAsJSON


class JSONLogTests(SynchronousTestCase):
    def event(self, **fields):
        base = {"log_level": LogLevel.warn, "log_namespace": "hpchat.test", "log_time": 0.0,
                "log_format": "store error on {stream}: {error}", "stream": "dm:a:b",
                "error": "disk full"}
        base.update(fields)
        return base

    def test_oneObjectPerLine(self):
        """
        Each event is one line of JSON with time, level, namespace, message and fields.
        """
        out = io.StringIO()
        JSONLinesObserver(out)(self.event())
        [line] = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["namespace"], "hpchat.test")
        self.assertEqual(record["message"], "store error on dm:a:b: disk full")
        self.assertEqual(record["fields"], {"stream": "dm:a:b", "error": "disk full"})
        self.assertEqual(record["time"], "1970-01-01T00:00:00+00:00")

    def test_credentialsAreNeverWritten(self):
        """
        Fields named like credentials and access_token query values are redacted.
        """
        record = json.loads(eventAsJSON(self.event(
            token="eyJ.secret.sig", headers={"Authorization": "Bearer x"},
            log_format="GET {uri}", uri="/v1/inbox/events?access_token=eyJ.abc.def&after=1")))
        text = json.dumps(record)
        self.assertNotIn("eyJ", text)
        self.assertNotIn("Bearer x", text)
        self.assertIn("after=1", record["message"])

    def test_failures(self):
        """
        A failure's traceback is included.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        record = json.loads(eventAsJSON(self.event(log_failure=failure)))
        self.assertIn("ZeroDivisionError", record["failure"])

    def test_legacyEvents(self):
        """
        Events from the legacy log system (twistd's own) are written too.
        """
        record = json.loads(eventAsJSON({"message": ("hello",), "isError": 0, "system": "-",
                                         "log_time": 1.0, "log_format": "hello"}))
        self.assertEqual((record["message"], record["level"]), ("hello", "info"))
