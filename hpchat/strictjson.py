# -*- test-case-name: tests.test_strictjson -*-
"""
JSON as RFC 8259 defines it, in and out.

Python's C{json} module reads and writes C{NaN}, C{Infinity} and C{-Infinity}, which are not
JSON: a browser's C{JSON.parse} refuses them. Every JSON input of hpchat (API bodies,
notifications, internal calls) goes through L{loads}, which refuses them and numbers too large
to be finite (C{1e999}); every output goes through L{dumps}, which refuses to write them.

orjson does the work where it agrees with these rules, and Python's C{json} module (the
reference here) decides everything else: a text orjson refuses is read again by C{json},
so what is refused, and with which error, is exactly what C{json} with these rules refuses
(orjson refuses NaN, Infinity, infinite numbers, lone surrogates, a byte order mark, invalid
UTF-8, and nesting deeper than 1024, all of which are errors here too, or, for deep nesting,
left to C{json}'s recursion limit as before). orjson reads integers beyond 64 bits as floats,
so a text with a run of 19 or more digits goes to C{json} directly. Out, orjson writes NaN
and Infinity as C{null}: when an output has C{null} in it, the value is searched for them,
and one that holds any is left to C{json}, which refuses it. A value orjson cannot write (a
key that is not a string, an integer beyond 64 bits, a lone surrogate) is left to C{json}
too, which writes it or raises as before.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# Integers orjson would read as floats (it reads up to 64 bits exactly).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")
# Types orjson would write where json refuses them are passed to default=None (it raises).
_OPTIONS = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_SUBCLASS)


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


def _fastLoads(data: bytes | bytearray | str) -> tuple[bool, Any]:
    """
    C{(True, value)} when orjson reads C{data} as C{json} would, else C{(False, None)}.
    """
    if isinstance(data, str):
        if _LONG_DIGITS_TEXT.search(data) is not None:
            return False, None
    elif _LONG_DIGITS.search(data) is not None:
        return False, None
    try:
        return True, orjson.loads(data)
    except orjson.JSONDecodeError:
        return False, None


def loads(data: bytes | bytearray | str) -> Any:
    """
    Decode JSON text; raise C{ValueError} (L{NotStrictJSON} for non-finite numbers) or
    C{UnicodeDecodeError} for anything that is not strict JSON.
    """
    done, value = _fastLoads(data)
    if done:
        return value
    return _loadsJSON(data)


def _loadsJSON(data: bytes | bytearray | str) -> Any:
    """
    L{loads} by Python's json module alone: the reference for what L{loads} takes.
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
    done, value = _fastLoads(data)
    if done:
        return value
    return json.loads(data, parse_constant=lambda name: None, parse_float=_finiteOrNone)


def _fastDumps(value: Any) -> bytes | None:
    """
    orjson's encoding of C{value} where it is the json module's strict one; else None.
    """
    try:
        data = orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        # (orjson.JSONEncodeError is a TypeError.)
        return None
    if b"null" in data and _nonFinite(value):
        return None
    return data


def dumpb(value: Any) -> bytes:
    """
    L{dumps} as UTF-8 bytes.
    """
    data = _fastDumps(value)
    return data if data is not None else _dumpsJSON(value).encode("utf-8")


def dumps(value: Any, **kwargs: Any) -> str:
    """
    Encode C{value} compactly as JSON text, raising C{ValueError} for a non-finite float.
    """
    if kwargs:
        return _dumpsJSON(value, **kwargs)
    data = _fastDumps(value)
    return data.decode("utf-8") if data is not None else _dumpsJSON(value)


def _nonFinite(value: Any) -> bool:
    """
    Whether C{value} (which orjson wrote) holds a NaN or infinite float, which orjson writes
    as null and json refuses.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return True
    return False


def _dumpsJSON(value: Any, **kwargs: Any) -> str:
    """
    L{dumps} by Python's json module alone: the reference for what L{dumps} writes.
    """
    kwargs.setdefault("separators", (",", ":"))
    kwargs.setdefault("ensure_ascii", False)
    return json.dumps(value, allow_nan=False, **kwargs)
