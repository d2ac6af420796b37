# -*- test-case-name: tests.test_logs -*-
"""
Structured logs: one JSON object per line, for journald, ELK and friends.

  twistd -n --logger hpchat.logs.jsonLogger hpchat --config /etc/hpchat/hpchat.ini

Each line has C{time} (ISO 8601, UTC), C{level}, C{namespace}, the formatted C{message}, the
event's own fields under C{fields}, and C{failure} (the traceback) when there is one. Fields
whose names suggest credentials are never written, and neither is anything that looks like a
token in a query string.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

_SECRET_NAME = re.compile(r"token|authorization|secret|password|cookie", re.IGNORECASE)
_TOKEN_IN_QUERY = re.compile(r"(access_token=)[^&\s\"']+")
_REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1" + _REDACTED, text)


def _plain(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return redact(value) if isinstance(value, str) else value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _REDACTED if _SECRET_NAME.search(str(k)) else _plain(v)
                for k, v in value.items()}
    return redact(repr(value))


def eventAsJSON(event: dict) -> str:
    level = event.get("log_level")
    fields = {}
    for key, value in event.items():
        if key.startswith("log_") or key in ("message", "format", "isError", "time"):
            continue
        fields[key] = _REDACTED if _SECRET_NAME.search(key) else _plain(value)
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(),
        "level": level.name if level is not None else ("error" if event.get("isError")
                                                        else "info"),
        "namespace": event.get("log_namespace", event.get("system", "-")),
        "message": redact(formatEvent(event) or ""),
        "fields": fields,
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = redact(failure.getTraceback())
    return json.dumps(record, ensure_ascii=False, default=str)


@implementer(ILogObserver)
class JSONLinesObserver:
    def __init__(self, stream):
        self._stream = stream

    def __call__(self, event: dict) -> None:
        self._stream.write(eventAsJSON(event) + "\n")
        self._stream.flush()


def jsonLogger():
    """
    The observer factory for C{twistd --logger hpchat.logs.jsonLogger}: JSON lines on stdout.
    """
    return JSONLinesObserver(sys.stdout)
