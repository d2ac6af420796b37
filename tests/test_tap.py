"""
The twistd plugin, its Options and the wiring in makeService; startup failures as an operator
sees them; the plugin found after a normal (non-editable) install.
"""

from __future__ import annotations

import glob
import os
import sys
import zipfile

from twisted.application.service import IService, IServiceCollection, IServiceMaker
from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.plugin import IPlugin, getPlugins
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from hpchat import tap
from hpchat.node import NodeService
from hpchat.outbox import OutboxPublisher
from hpchat.persister import BatchPersister
from hpchat.presence import Presence
from hpchat.ready import ReadyAnnouncer
from hpchat.storage.service import StoreService
from hpchat.streams import Streams
from hpchat.web.site import WebService
from tests.support.node import twistdCommand
from tests.support.process import theReactor
from tests.test_config import MINIMAL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PluginTests(unittest.SynchronousTestCase):
    def test_pluginIsFound(self):
        """
        getPlugins finds the hpchat service maker, a valid IServiceMaker.
        """
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "hpchat"]
        self.assertEqual(len(makers), 1)
        self.assertTrue(verifyObject(IServiceMaker, makers[0]))
        self.assertTrue(IPlugin.providedBy(makers[0]))

    def test_noInitInPluginFolders(self):
        """
        twisted/ and twisted/plugins/ have no __init__.py (it would shadow Twisted's own).
        """
        self.assertFalse(os.path.exists(os.path.join(REPO, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(REPO, "twisted", "plugins", "__init__.py")))


class OptionsTests(unittest.SynchronousTestCase):
    def test_configRequired(self):
        """
        Without --config, parsing fails with a usage error.
        """
        from twisted.python.usage import UsageError

        self.assertRaises(UsageError, tap.Options().parseOptions, [])

    def test_badConfigExitsWithOneLine(self):
        """
        An invalid config exits with status 2 after one line on stderr naming the key.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(MINIMAL + "[chat]\ngroups = -1\n")
        stderr = []
        self.patch(sys, "stderr", type("E", (), {"write": lambda self, s: stderr.append(s)})())
        error = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", path])
        self.assertEqual(error.code, 2)
        self.assertEqual(len("".join(stderr).splitlines()), 1)
        self.assertIn("[chat] groups", "".join(stderr))

    def test_makeServiceWiresTheNode(self):
        """
        makeService builds a node whose stages stop the web first and close the store last,
        the persister's flush and the outbox before them, and whose services start in the
        reverse order.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "hpchat.ini")
        with open(path, "w") as f:
            f.write(MINIMAL + "[storage]\npath = data/x.sqlite3\n")
        options = tap.Options()
        options.parseOptions(["--config", path])
        from twisted.internet.testing import MemoryReactorClock

        service = tap.makeService(options, MemoryReactorClock())
        self.assertIsInstance(service, NodeService)
        self.assertTrue(IServiceCollection.providedBy(service))
        self.assertEqual([stage.name for stage in service.stages],
                         ["ready line", "accepting", "polls", "streams", "presence",
                          "persister", "outbox", "internal client", "store"])
        self.assertEqual([type(s) for s in service.startOrder()],
                         [StoreService, OutboxPublisher, BatchPersister, Presence, Streams,
                          WebService, ReadyAnnouncer])
        for child in service:
            self.assertTrue(IService.providedBy(child))
        self.assertTrue(os.path.isdir(os.path.join(folder, "data")))

    def test_clusterWiring(self):
        """
        In a cluster the persister's write fence is the etcd ownership, whose hand-offs wait
        on the persister's backlog; the streams hear of the groups either of them loses.
        """
        from twisted.internet.testing import MemoryReactorClock

        from hpchat.cluster.ownership import EtcdOwnership
        from hpchat.config import loadConfig

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "hpchat.ini")
        with open(path, "w") as f:
            f.write(MINIMAL + "[storage]\npath = data/x.sqlite3\n"
                    "[cluster]\netcd = http://127.0.0.1:1\n")
        node = tap.buildNode(loadConfig(path), MemoryReactorClock(), path)
        services = {type(s): s for s in node.startOrder()}
        persister, streams = services[BatchPersister], services[Streams]
        ownership = services[EtcdOwnership]
        self.assertIs(persister._fence, ownership)
        self.assertIs(ownership._drains, persister._backlog)
        self.assertIn(streams.dropGroups, persister._lostCallbacks)
        self.assertIn(streams.dropGroups, ownership._lostCallbacks)


class StartupTests(unittest.TestCase):
    timeout = 60

    def twistd(self, *args):
        return getProcessOutputAndValue(twistdCommand()[0], ["-n", "--pidfile=", *args],
                                        env=dict(os.environ), reactor=theReactor(),
                                        path=self.mktemp() if False else None)

    @defer.inlineCallbacks
    def test_missingConfigFile(self):
        """
        twistd with a missing config file exits non-zero with one line and no traceback.
        """
        out, err, code = yield self.twistd("hpchat", "--config", "/nonexistent/hpchat.ini")
        output = (out + err).decode()
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", output)
        self.assertEqual(output.strip().splitlines(),
                         ["hpchat: config error: /nonexistent/hpchat.ini: "
                          "cannot read config file: No such file or directory"])

    @defer.inlineCallbacks
    def test_invalidKey(self):
        """
        twistd with an invalid value names file, section and key in one line.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(MINIMAL + "[storage]\nflush_interval = often\n")
        out, err, code = yield self.twistd("hpchat", "--config", path)
        output = (out + err).decode()
        self.assertNotEqual(code, 0)
        self.assertEqual(output.strip().splitlines(),
                         [f"hpchat: config error: {path} [storage] flush_interval: "
                          "must be a number (got 'often')"])

    @defer.inlineCallbacks
    def test_helpListsPlugin(self):
        """
        twistd --help lists the hpchat subcommand.
        """
        out, err, code = yield self.twistd("--help")
        self.assertIn(b"hpchat", out)


class PackagingTests(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_wheelShipsThePluginAndTwistdFindsIt(self):
        """
        A wheel built from the tree contains twisted/plugins/hpchat_plugin.py (and no
        twisted/__init__.py); installed into a fresh folder, twistd --help lists hpchat.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "-w", folder, REPO], env=env, reactor=theReactor(), path=folder)
        self.assertEqual(code, 0, err.decode()[-2000:])
        [wheel] = glob.glob(os.path.join(folder, "hpchat-*.whl"))
        names = zipfile.ZipFile(wheel).namelist()
        self.assertIn("twisted/plugins/hpchat_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("hpchat/tap.py", names)
        target = os.path.join(folder, "site")
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "pip", "install", "--no-deps", "--target", target, wheel],
            env=env, reactor=theReactor(), path=folder)
        self.assertEqual(code, 0, err.decode()[-2000:])
        # Only the installed copy may be visible: run from the install folder, not the tree.
        script = ("import os, sys; sys.path = [p for p in sys.path if os.path.abspath(p or '.')"
                  " != %r]; sys.path.insert(0, %r); sys.argv = ['twistd', '--help'];"
                  "import hpchat; assert hpchat.__file__.startswith(%r), hpchat.__file__;"
                  "from twisted.scripts.twistd import run; run()" % (REPO, target, target))
        clean = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", script], env=clean, reactor=theReactor(), path=folder)
        self.assertIn(b"hpchat", out, err.decode()[-2000:])
