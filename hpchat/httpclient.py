"""
HTTP connection pools for the node's own calls (etcd's gateway, other nodes) whose
connections do not log "Starting factory" and "Stopping factory" for every connection.
"""

from __future__ import annotations

from typing import Any

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


def quietPool(reactor: Any, persistent: bool = True) -> HTTPConnectionPool:
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    # The pool builds each connection's factory from this class (twisted.web.client).
    pool._factory = _QuietFactory
    return pool
