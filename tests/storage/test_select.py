"""
Choosing the event store from the config, and the startup check that refuses FoundationDB
with one clear line on a machine without its client library (this one has no libfdb_c).
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from hpchat.config import ConfigError, parseConfig
from hpchat.storage import select
from tests.test_config import MINIMAL


def fdbConfig(folder: str, extra: str = ""):
    return parseConfig(MINIMAL + "[storage]\nbackend = foundationdb\ncluster_file = fdb.cluster\n"
                       + extra, os.path.join(folder, "hpchat.ini"))


def clientMissingHere() -> bool:
    from hpchat.storage.fdb_client import FoundationDBUnavailable, loadBinding

    try:
        loadBinding()
    except FoundationDBUnavailable:
        return True
    return False


def tapCallsTheCheck() -> bool:
    from hpchat import tap

    return getattr(tap, "checkStorage", None) is select.checkStorage


class MakeStoreTests(unittest.SynchronousTestCase):
    def test_sqliteByDefault(self):
        """
        Without a backend, the store is SQLite on the configured path.
        """
        from hpchat.storage.sqlite import SQLiteStore

        config = parseConfig(MINIMAL + "[storage]\npath = var/hpchat.sqlite3\n",
                             "/srv/hpchat/etc/hpchat.ini")
        store = select.makeStore(config, MemoryReactorClock())
        self.assertIsInstance(store, SQLiteStore)
        self.assertEqual(store.path, "/srv/hpchat/etc/var/hpchat.sqlite3")
        self.assertFalse(store.ready)

    def test_requiredSettingMissing(self):
        """
        A config built without the setting its backend needs (the parser would refuse the
        file) is a ConfigError naming the setting, not a store on None.
        """
        from dataclasses import replace

        config = parseConfig(MINIMAL, "/srv/hpchat/etc/hpchat.ini")
        for backend, key in [("sqlite", "path"), ("postgresql", "dsn"),
                             ("foundationdb", "cluster_file")]:
            storage = replace(config.storage, backend=backend, path=None, dsn=None,
                              cluster_file=None)
            error = self.assertRaises(ConfigError, select.makeStore,
                                      replace(config, storage=storage), MemoryReactorClock())
            self.assertEqual((error.section, error.key), ("storage", key))

    def test_foundationdb(self):
        """
        backend = foundationdb gives an unopened FoundationDB store on the cluster file (taken
        relative to the config file) and key prefix; building it loads nothing.
        """
        from hpchat.storage.fdb import FoundationDBStore

        config = fdbConfig("/etc/hpchat", "key_prefix = chat-prod\n")
        store = select.makeStore(config, MemoryReactorClock())
        self.assertIsInstance(store, FoundationDBStore)
        self.assertEqual((store.clusterFile, store.keyPrefix),
                         ("/etc/hpchat/fdb.cluster", "chat-prod"))
        self.assertFalse(store.ready)


class CheckStorageTests(unittest.SynchronousTestCase):
    def folder(self) -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        return folder

    def test_sqliteFolderIsCreated(self):
        """
        For SQLite the check creates the database's folder.
        """
        folder = self.folder()
        config = parseConfig(MINIMAL + "[storage]\npath = data/x.sqlite3\n",
                             os.path.join(folder, "hpchat.ini"))
        select.checkStorage(config)
        self.assertTrue(os.path.isdir(os.path.join(folder, "data")))

    def test_sqliteFolderCannotBeCreated(self):
        """
        A SQLite path below a plain file is reported against [storage] path.
        """
        folder = self.folder()
        with open(os.path.join(folder, "file"), "w"):
            pass
        config = parseConfig(MINIMAL + "[storage]\npath = file/sub/x.sqlite3\n",
                             os.path.join(folder, "hpchat.ini"))
        error = self.assertRaises(ConfigError, select.checkStorage, config)
        self.assertIn("[storage] path: cannot create folder", str(error))

    def test_noClientLibraryOnThisMachine(self):
        """
        Here there is no libfdb_c: the check fails with one line that names the key and what
        to install (the client package of the pinned minor version and the pip extra).
        """
        if not clientMissingHere():
            raise unittest.SkipTest("the FoundationDB client library is installed here")
        folder = self.folder()
        error = self.assertRaises(ConfigError, select.checkStorage, fdbConfig(folder))
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(os.path.join(folder, "hpchat.ini")
                                           + " [storage] backend: foundationdb cannot be used: "),
                        message)
        self.assertIn("foundationdb-clients 7.3.x", message)
        self.assertIn("libfdb_c.so", message)
        self.assertIn("pip install 'hpchat[foundationdb]'", message)
        self.assertIn("foundationdb==7.3.*", message)

    def fakeModule(self, apiVersion):
        module = SimpleNamespace(is_api_version_selected=lambda: False, api_version=apiVersion)
        return lambda name: module

    def test_bindingNotInstalled(self):
        """
        Without the Python binding, the line says so and gives the same install hint.
        """
        def missing(name):
            raise ImportError(f"No module named {name!r}")

        error = self.assertRaises(ConfigError, select.checkFoundationDB,
                                  fdbConfig(self.folder()), missing)
        self.assertIn("binding (package foundationdb) is not installed", str(error))
        self.assertIn("foundationdb-clients 7.3.x", str(error))

    def test_libraryMissing(self):
        """
        The binding's "Unable to locate the FoundationDB API shared library!" (raised from
        an OSError) is reported as libfdb_c missing.
        """
        def apiVersion(version):
            try:
                raise OSError("libfdb_c.so: cannot open shared object file")
            except OSError:
                raise Exception("Unable to locate the FoundationDB API shared library!")

        error = self.assertRaises(ConfigError, select.checkFoundationDB,
                                  fdbConfig(self.folder()), self.fakeModule(apiVersion))
        self.assertIn("libfdb_c.so cannot be loaded", str(error))

    def test_libraryTooOld(self):
        """
        A libfdb_c older than the binding (error 2203 in the binding) is named as such.
        """
        def apiVersion(version):
            raise RuntimeError(
                "This version of the FoundationDB Python binding is not supported by the "
                "installed FoundationDB C library. The binding requires a library that supports "
                "API version 730, but the installed library supports a maximum version of 710.")

        error = self.assertRaises(ConfigError, select.checkFoundationDB,
                                  fdbConfig(self.folder()), self.fakeModule(apiVersion))
        self.assertIn("the installed libfdb_c is older than the binding", str(error))
        self.assertIn("maximum version of 710", str(error))
        self.assertNotIn("\n", str(error))

    def test_clusterFileUnreadable(self):
        """
        With a working client, a missing cluster file is reported against [storage]
        cluster_file; a readable one passes.
        """
        try:
            from tests.storage.fakefdb import FakeBinding
        except ImportError:
            raise unittest.SkipTest("the FoundationDB binding is not installed "
                                    "(pip install 'hpchat[foundationdb]')")
        binding = FakeBinding()
        folder = self.folder()
        error = self.assertRaises(ConfigError, select.checkFoundationDB, fdbConfig(folder),
                                  lambda name: binding)
        self.assertIn("[storage] cluster_file: cannot be read: No such file or directory",
                      str(error))
        with open(os.path.join(folder, "fdb.cluster"), "w") as f:
            f.write("test:abc@127.0.0.1:4500\n")
        select.checkFoundationDB(fdbConfig(folder), lambda name: binding)


class StartupTests(unittest.TestCase):
    """
    The operator's view: twistd refuses to start with one line and no traceback.
    """

    timeout = 60

    def setUp(self):
        if not tapCallsTheCheck():
            raise unittest.SkipTest("hpchat/tap.py does not call "
                                    "hpchat.storage.select.checkStorage yet")
        if not clientMissingHere():
            raise unittest.SkipTest("the FoundationDB client library is installed here")

    def configFile(self) -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "fdb.cluster"), "w") as f:
            f.write("test:abc@127.0.0.1:4500\n")
        path = os.path.join(folder, "hpchat.ini")
        with open(path, "w") as f:
            f.write(MINIMAL + "[storage]\nbackend = foundationdb\ncluster_file = fdb.cluster\n")
        return path

    def test_optionsExitWithOneLine(self):
        """
        Options.postOptions exits with status 2 after one line naming what to install.
        """
        from hpchat import tap

        lines = []
        self.patch(sys, "stderr", SimpleNamespace(write=lines.append))
        error = self.assertRaises(SystemExit, tap.Options().parseOptions,
                                  ["--config", self.configFile()])
        self.assertEqual(error.code, 2)
        output = "".join(lines)
        self.assertEqual(len(output.splitlines()), 1, output)
        self.assertIn("foundationdb-clients 7.3.x", output)

    @defer.inlineCallbacks
    def test_twistdExitsWithOneLine(self):
        """
        twistd -n hpchat with backend = foundationdb on this machine exits non-zero, printing
        one line and no traceback.
        """
        from tests.support.node import twistdCommand
        from tests.support.process import theReactor

        path = self.configFile()
        out, err, code = yield getProcessOutputAndValue(
            twistdCommand()[0], ["-n", "--pidfile=", "hpchat", "--config", path],
            env=dict(os.environ), reactor=theReactor())
        output = (out + err).decode()
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", output)
        lines = output.strip().splitlines()
        self.assertEqual(len(lines), 1, output)
        self.assertTrue(lines[0].startswith(f"hpchat: config error: {path} [storage] backend: "
                                            "foundationdb cannot be used: "), lines[0])
        self.assertIn("install foundationdb-clients 7.3.x", lines[0])
        self.assertIn("pip install 'hpchat[foundationdb]'", lines[0])
