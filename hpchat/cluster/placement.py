# -*- test-case-name: tests.cluster.test_placement -*-
"""
Which live node should own a chat group: rendezvous (highest random weight) hashing with a
load bound.

Every node ranks the live nodes for a group by a hash of (group, node id), the same everywhere.
The first node in that order that holds fewer than C{cap} groups is the preferred owner, so a
node joining takes over about 1/K of the groups and no node is asked to take more than its
fair share. The ranking is pluggable: anything with C{rank(group, nodes)} will do.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, Mapping


def fairShare(groups: int, nodes: int, slack: int) -> int:
    """
    The most groups a node should hold: ceil(N/K) plus C{slack}.
    """
    return math.ceil(groups / max(1, nodes)) + slack


class RendezvousPlacement:
    @staticmethod
    def weight(group: int, node: str) -> int:
        digest = hashlib.blake2b(f"{group}\x00{node}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    def rank(self, group: int, nodes: Iterable[str]) -> list[str]:
        """
        C{nodes} in order of preference for C{group}.
        """
        return sorted(nodes, key=lambda node: (-self.weight(group, node), node))

    def preferred(self, group: int, nodes: Iterable[str], load: Mapping[str, int] | None = None,
                  cap: int | None = None) -> str | None:
        """
        The first node by rank whose C{load} is below C{cap} (the first by rank when all are
        full, or when no load is given); None when there are no nodes.
        """
        ranked = self.rank(group, nodes)
        if not ranked:
            return None
        if load is not None and cap is not None:
            for node in ranked:
                if load.get(node, 0) < cap:
                    return node
        return ranked[0]
