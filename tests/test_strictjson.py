"""
Strict JSON in and out: no NaN, Infinity or out-of-range numbers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from hpchat import strictjson


class StrictJSONTests(SynchronousTestCase):
    def test_loadsRefusesNonFinite(self):
        """
        NaN, Infinity, -Infinity and numbers that overflow a float are refused anywhere.
        """
        for text in ["NaN", "[Infinity]", '{"a": {"b": -Infinity}}', "1e999", "[-1e400]"]:
            self.assertRaises(strictjson.NotStrictJSON, strictjson.loads, text)

    def test_loadsTakesJSON(self):
        """
        Everything RFC 8259 allows still parses, including large exponents within range.
        """
        text = b'{"a": [1, 2.5, -3e10, 1.7e308, true, null, "\\u00e9"]}'
        self.assertEqual(strictjson.loads(text),
                         {"a": [1, 2.5, -3e10, 1.7e308, True, None, "\u00e9"]})

    def test_bytesAreUTF8Only(self):
        """
        Bytes are UTF-8 JSON: UTF-16 and UTF-32 texts (which json.loads would guess from
        their first bytes) and a UTF-8 byte order mark are refused.
        """
        text = '{"text": "hi"}'
        for data in [text.encode("utf-16"), text.encode("utf-16-le"), text.encode("utf-32"),
                     text.encode("utf-32-be"), b"\xef\xbb\xbf" + text.encode()]:
            self.assertRaises(ValueError, strictjson.loads, data)
        self.assertEqual(strictjson.loads(text.encode("utf-8")), {"text": "hi"})

    def test_dumpsRefusesNonFinite(self):
        """
        A non-finite float is never written.
        """
        for value in [float("nan"), [float("inf")], {"a": -float("inf")}]:
            self.assertRaises(ValueError, strictjson.dumps, value)
        self.assertEqual(strictjson.dumps({"a": "\u00e9", "b": [1]}), '{"a":"\u00e9","b":[1]}')

    def test_storedNonFiniteReadsAsNull(self):
        """
        Data stored before inputs were strict reads with its non-finite numbers as null.
        """
        stored = '{"a": NaN, "b": [Infinity, -Infinity, 1e999, 2.5]}'
        self.assertEqual(strictjson.loadsStored(stored), {"a": None, "b": [None, None, None, 2.5]})


def _outcome(f: Callable[..., Any], *args: Any) -> tuple:
    """
    What C{f(*args)} did, comparable across implementations: the repr of its result (which
    tells 1 from 1.0 and True, and keeps key order), or the class and text of its error.
    """
    try:
        return ("value", repr(f(*args)))
    except Exception as e:
        return ("error", type(e), str(e))


# Texts on the edges of what orjson and json agree on.
_TRICKY = [
    b"", b" ", b"null", b"true", b"1", b"-0", b"-0.0", b"1.0", b"1e2", b"1E-2", b"01", b"1.",
    b".5", b"+1", b"-", b"1e309", b"-1e400", b"1e-400", b"NaN", b"-Infinity", b"[1,]",
    b'{"a":1,}', b'{"a":1,"a":2,"b":3}', b'{"b":1,"a":2,"b":3}', b"[1] x", b'"\\ud800"',
    b'"\\udc00\\ud800"', b'"\\ud83d\\ude00"', b'"\\u0000"', b'"\x00"', b'"\x1f"', b'"\x7f"',
    b'"\\x41"', b'"\xff"', b'"\xed\xa0\x80"', b"\xef\xbb\xbf{}", b"{}\xef\xbb\xbf",
    b"9223372036854775807", b"9223372036854775808", b"18446744073709551616",
    b"-9223372036854775809", b"123456789012345678901234567890", b"1.2345678901234567890123",
    b'"12345678901234567890"', b"[" * 1100 + b"]" * 1100, b"[" * 900 + b"]" * 900,
    b'{"text": "caf\xc3\xa9 \xe2\x80\xa8", "client_id": "c1"}', b"\t\n\r 1 \t\n\r", b"\x0c1",
    '{"a": "\u00e9"}'.encode("utf-16"), b"[1e-5, 5e-324, 1.7976931348623157e308]",
]


class FastPathTests(SynchronousTestCase):
    """
    orjson does the work; Python's json module with the strict rules is the reference, and
    the two must agree on every text and value: same results, same errors.
    """

    def assertAgree(self, data: bytes | str) -> None:
        self.assertEqual(_outcome(strictjson.loads, data),
                         _outcome(strictjson._loadsJSON, data), data[:60])

    def test_trickyTexts(self) -> None:
        for data in _TRICKY:
            self.assertAgree(data)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.assertAgree(text)
        self.assertAgree('"\ud800"')

    def test_randomTexts(self) -> None:
        """
        Random texts made of JSON's pieces (and a few that are not) read the same.
        """
        rng = random.Random(20261201)
        pieces = [b"{", b"}", b"[", b"]", b",", b":", b'"', b'"a"', b'"\\u00e9"', b'"\\ud800"',
                  b"\\", b"1", b"-", b"0", b".", b"e", b"9" * 20, b"1e999", b"true", b"nul",
                  b"null", b" ", b"\n", b"\xc3\xa9", b"\xff", b"NaN", b"\x00", b'""']
        for _ in range(4000):
            self.assertAgree(b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
        for _ in range(1000):
            value = _randomValue(rng, 4)
            self.assertAgree(json.dumps(value).encode("utf-8"))
            self.assertAgree(json.dumps(value, ensure_ascii=False))

    def test_dumpsAgrees(self) -> None:
        """
        Writing: the same text as json (floats may be spelt differently, e.g. 1e-05 and
        0.00001, but read back the same), the same refusals.
        """
        rng = random.Random(7)
        values = [None, {"a": None}, [1, 2.5, True, False], {"é": "\u2028\x7f\x1f\"\\/"},
                  {1: "x"}, {(1, 2): "x"}, 2 ** 70, [2 ** 64], "\ud800", {"a": "\udfff"}, b"x",
                  {1, 2}, float("nan"), [1e-5, 1e16, 5e-324, -0.0], ("a", 1),
                  {"a": [float("-inf")]}, {True: 1, None: 2}, {"a": None, "b": 1.5},
                  ({"x": None}, (1, [float("nan")])), [None, _Float("inf")]]
        values += [_randomValue(rng, 4) for _ in range(1000)]
        for value in values:
            fast, reference = (_outcome(strictjson.dumps, value),
                               _outcome(strictjson._dumpsJSON, value))
            self.assertEqual(fast[0], reference[0], value)
            # dumpb is dumps then UTF-8, which refuses a lone surrogate.
            fastBytes = _outcome(strictjson.dumpb, value)
            referenceBytes = _outcome(lambda v: strictjson._dumpsJSON(v).encode("utf-8"), value)
            self.assertEqual(fastBytes[0], referenceBytes[0], value)
            if fastBytes[0] == "error":
                self.assertEqual(fastBytes[1:], referenceBytes[1:])
            if fast[0] == "error":
                self.assertEqual(fast[1:], reference[1:])
                continue
            text = strictjson.dumps(value)
            if fastBytes[0] == "value":
                self.assertEqual(strictjson.dumpb(value), text.encode("utf-8"))
            self.assertEqual(json.loads(text), json.loads(strictjson._dumpsJSON(value)))
            if not _hasFloat(value):
                self.assertEqual(text, strictjson._dumpsJSON(value))

    def test_answersAreFast(self) -> None:
        """
        A typical answer is written by orjson itself (no null in it), a typical body read
        by it: the fallback is for the rare text only.
        """
        answer = {"events": [{"id": "e" * 32, "seq": 3, "text": "hi \u00e9", "ts": 1.5}],
                  "last_seq": 3, "typing": [], "read": {"alice": 1}}
        self.assertEqual(strictjson.dumpb(answer), orjsonDumps(answer))
        self.assertEqual(strictjson._fastLoads(b'{"text": "hi", "client_id": "c1"}'),
                         (True, {"text": "hi", "client_id": "c1"}))
        self.assertEqual(strictjson.loads(b'{"text": "lg c1 1764619773.123456"}'),
                         {"text": "lg c1 1764619773.123456"})


class _Float(float):
    pass


def orjsonDumps(value: Any) -> bytes:
    import orjson
    return orjson.dumps(value)


def _hasFloat(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_hasFloat(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_hasFloat(v) for v in value)
    return False


def _randomValue(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(9 if depth else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2 ** 63 - 1, -2 ** 63, 2 ** 64, 10 ** 25, rng.randint(-9, 9)])
    if kind == 2:
        return rng.choice([0.5, -2.25, 1e300, 1e-300, 1764619773.123456, rng.random()])
    if kind in (3, 4, 5):
        return "".join(chr(rng.choice([0x41, 0x7f, 0x1f, 0x22, 0x5c, 0xe9, 0x2028, 0x1f600,
                                       0x10ffff, 0xfeff, rng.randrange(0x20, 0x3000)]))
                       for _ in range(rng.randrange(6)))
    if kind in (6, 7):
        return [_randomValue(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {_randomValue(rng, 0) if rng.random() < 0.1 else str(rng.randrange(5)):
            _randomValue(rng, depth - 1) for _ in range(rng.randrange(4))}
