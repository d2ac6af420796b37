"""
Strict JSON in and out: no NaN, Infinity or out-of-range numbers.
"""

from __future__ import annotations

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
