# -*- test-case-name: tests.storage.test_select -*-
"""
The configured event store, and the startup checks that let a node refuse to start with one
clear line (a L{ConfigError}) instead of failing after it has started.

C{checkStorage(config)} belongs in C{Options.postOptions}, before twistd daemonizes: it only
loads the FoundationDB client library (the binding's network thread starts later, in
C{open()}). C{makeStore(config, reactor)} belongs in C{buildNode}.
"""

from __future__ import annotations

import os

from hpchat.config import Config, ConfigError


def _given(config: Config, key: str, value: str | None) -> str:
    """
    C{value}, the [storage] setting C{key} that the configured backend requires (the config
    parser rejects a file without it; a Config built by hand may lack it).
    """
    if value is None:
        raise ConfigError(config.path, "storage", key,
                          f"is required with backend = {config.storage.backend}")
    return value


def checkStorage(config: Config) -> None:
    """
    Raise L{ConfigError} when the configured store cannot work on this machine: a SQLite
    folder that cannot be created or written, or for FoundationDB a client library that
    cannot be loaded or a cluster file that cannot be read.
    """
    storage = config.storage
    if storage.backend == "sqlite":
        folder = os.path.dirname(_given(config, "path", storage.path)) or "."
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise ConfigError(config.path, "storage", "path",
                              f"cannot create folder {folder}: {e.strerror}") from None
        if not os.access(folder, os.W_OK):
            raise ConfigError(config.path, "storage", "path", f"folder {folder} is not writable")
    elif storage.backend == "postgresql":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError(config.path, "storage", "backend",
                              "postgresql needs psycopg 3: pip install 'hpchat[postgresql]'") \
                from None
    elif storage.backend == "foundationdb":
        checkFoundationDB(config)
    else:
        raise ConfigError(config.path, "storage", "backend",
                          f"unknown backend {storage.backend!r}")


def checkFoundationDB(config: Config, importModule=None) -> None:
    """
    The FoundationDB client must load (binding and libfdb_c of the pinned minor version) and
    the cluster file must be readable.
    """
    from hpchat.storage.fdb_client import FoundationDBUnavailable, loadBinding

    try:
        if importModule is None:
            loadBinding()
        else:
            loadBinding(importModule)
    except FoundationDBUnavailable as e:
        raise ConfigError(config.path, "storage", "backend",
                          f"foundationdb cannot be used: {e}") from None
    clusterFile = _given(config, "cluster_file", config.storage.cluster_file)
    try:
        with open(clusterFile, encoding="utf-8") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(config.path, "storage", "cluster_file",
                          f"cannot be read: {e.strerror} ({clusterFile})") from None


def makeStore(config: Config, reactor):
    """
    The L{IEventStore} of C{config}, not yet opened.
    """
    storage = config.storage
    if storage.backend == "foundationdb":
        from hpchat.storage.fdb import FoundationDBStore

        return FoundationDBStore(reactor, _given(config, "cluster_file", storage.cluster_file),
                                 keyPrefix=storage.key_prefix)
    if storage.backend == "postgresql":
        from hpchat.storage.postgresql import PostgreSQLStore

        return PostgreSQLStore(reactor, _given(config, "dsn", storage.dsn))
    if storage.backend == "sqlite":
        from hpchat.storage.sqlite import SQLiteStore

        return SQLiteStore(reactor, _given(config, "path", storage.path))
    raise ConfigError(config.path, "storage", "backend", f"unknown backend {storage.backend!r}")
