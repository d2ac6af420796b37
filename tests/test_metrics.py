"""
The node's metrics (L{hpchat.metrics}): the hot path's tallies as /metrics shows them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from hpchat.metrics import Tally


class TallyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tally = Tally("hpchat_things", "Things, by kind and code", ("kind", "code"),
                           self.registry)

    def value(self, kind: str, code: str) -> float | None:
        return self.registry.get_sample_value("hpchat_things_total",
                                              {"kind": kind, "code": code})

    def test_countsByLabelValues(self) -> None:
        """
        Each call counts one for its label values, which are shown as text: the same
        values given as a number and as text are one sample.
        """
        self.assertIsNone(self.value("a", "200"))
        self.tally("a", 200)
        self.tally("a", 200)
        self.tally("a", "200")
        self.tally("b", 404)
        self.assertEqual((self.value("a", "200"), self.value("b", "404")), (3.0, 1.0))

    def test_exposition(self) -> None:
        """
        The text format names it a counter, with its help and a C{_total} sample per label
        set; a second collector of the same name is refused, as for any counter.
        """
        self.tally("a", 1)
        text = generate_latest(self.registry).decode()
        self.assertIn("# HELP hpchat_things_total Things, by kind and code", text)
        self.assertIn("# TYPE hpchat_things_total counter", text)
        self.assertIn('hpchat_things_total{code="1",kind="a"} 1.0', text)
        self.assertRaises(ValueError, Tally, "hpchat_things", "again", ("kind",),
                          self.registry)
