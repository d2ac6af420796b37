# -*- test-case-name: tests.test_strictjson -*-
"""
JSON as RFC 8259 defines it, in and out.

Python's C{json} module reads and writes C{NaN}, C{Infinity} and C{-Infinity}, which are not
JSON: a browser's C{JSON.parse} refuses them. Every JSON input of hpchat (API bodies,
notifications, internal calls) goes through L{loads}, which refuses them and numbers too large
to be finite (C{1e999}); every output goes through L{dumps}, which refuses to write them.
"""

from __future__ import annotations

import json
import math
from typing import Any


class NotStrictJSON(ValueError):
    """
    The text is JSON to Python but not to RFC 8259: it holds a non-finite number.
    """


def _constant(name: str) -> Any:
    raise NotStrictJSON(f"{name} is not a JSON value")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotStrictJSON(f"the number {text[:40]} is out of range")
    return value


class NotUnicode(ValueError):
    """
    JSON whose strings are not all Unicode text (an escaped lone surrogate).
    """


def loads(data: bytes | str) -> Any:
    """
    Decode JSON text; raise C{ValueError} (L{NotStrictJSON} for non-finite numbers) or
    C{UnicodeDecodeError} for anything that is not strict JSON.
    """
    if isinstance(data, (bytes, bytearray)):
        # JSON between systems is UTF-8 (RFC 8259 §8.1): json.loads would guess UTF-16 or
        # UTF-32 from the first bytes and take such a body too.
        data = bytes(data).decode("utf-8")
    value = json.loads(data, parse_constant=_constant, parse_float=_float)
    if "\\u" in data or not data.isascii():
        # An escaped lone surrogate ("\ud800") decodes to a string that no UTF-8 encoder
        # (the stores' drivers, the answers) can write.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise NotUnicode("a string holds a lone surrogate (not Unicode text)") from None
    return value


def _finiteOrNone(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def loadsStored(data: bytes | str) -> Any:
    """
    Decode JSON that hpchat itself stored. Data stored before inputs were strict may hold
    NaN or Infinity: those read as null, so that what is served is JSON.
    """
    return json.loads(data, parse_constant=lambda name: None, parse_float=_finiteOrNone)


def dumps(value: Any, **kwargs: Any) -> str:
    """
    Encode C{value} compactly as JSON text, raising C{ValueError} for a non-finite float.
    """
    kwargs.setdefault("separators", (",", ":"))
    kwargs.setdefault("ensure_ascii", False)
    return json.dumps(value, allow_nan=False, **kwargs)
