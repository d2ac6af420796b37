"""
Rendezvous placement with a load bound.
"""

from twisted.trial.unittest import SynchronousTestCase

from hpchat.cluster.placement import RendezvousPlacement, fairShare


class PlacementTests(SynchronousTestCase):
    def setUp(self):
        self.placement = RendezvousPlacement()

    def test_fairShare(self):
        """
        ceil(N/K) plus the slack; no nodes counts as one.
        """
        self.assertEqual(fairShare(64, 3, 1), 23)
        self.assertEqual(fairShare(16, 4, 0), 4)
        self.assertEqual(fairShare(16, 0, 0), 16)

    def test_rankIsStableAndIndependentOfOrder(self):
        """
        Every node computes the same ranking, whatever order it lists the nodes in.
        """
        nodes = ["n1", "n2", "n3", "n4"]
        for group in range(32):
            self.assertEqual(self.placement.rank(group, nodes),
                             self.placement.rank(group, list(reversed(nodes))))

    def test_joinMovesAboutOneKth(self):
        """
        A fourth node becomes the first choice for about a quarter of the groups, and every
        other group keeps its first choice.
        """
        before = {g: self.placement.preferred(g, ["n1", "n2", "n3"]) for g in range(1024)}
        after = {g: self.placement.preferred(g, ["n1", "n2", "n3", "n4"]) for g in range(1024)}
        moved = [g for g in range(1024) if before[g] != after[g]]
        self.assertTrue(all(after[g] == "n4" for g in moved))
        self.assertTrue(200 < len(moved) < 312, len(moved))

    def test_loadBoundSkipsFullNodes(self):
        """
        A node at the cap is skipped for the next node by rank; if all are full, rank wins.
        """
        ranked = self.placement.rank(5, ["a", "b", "c"])
        load = {ranked[0]: 3}
        self.assertEqual(self.placement.preferred(5, ["a", "b", "c"], load, 3), ranked[1])
        full = {n: 3 for n in ranked}
        self.assertEqual(self.placement.preferred(5, ["a", "b", "c"], full, 3), ranked[0])
        self.assertIsNone(self.placement.preferred(5, []))
