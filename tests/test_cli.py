"""
The hpchat command.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

import jwt
from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from hpchat import cli
from tests.support.cluster import Cluster
from tests.support.node import HTTP, SECRET, Node
from tests.support.process import theReactor
from tests.support.trial import asyncTest
from tests.test_config import MINIMAL


class TokenCommandTests(SynchronousTestCase):
    def setUp(self):
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write(MINIMAL)
        self.out, self.err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def test_printsAVerifiableToken(self):
        """
        hpchat token prints an HS256 JWT for the user with the asked lifetime.
        """
        self.assertEqual(cli.main(["token", "--config", self.path, "--ttl", "60", "alice"]), 0)
        claims = jwt.decode(self.out.getvalue().strip(), "0123456789abcdef0123456789abcdef",
                            algorithms=["HS256"])
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["exp"] - claims["iat"], 60)

    def test_badUser(self):
        """
        An invalid user id is refused with exit status 2.
        """
        self.assertEqual(cli.main(["token", "--config", self.path, "not valid"]), 2)
        self.assertIn("user ids match", self.err.getvalue())

    def test_badConfig(self):
        """
        A missing config gives one line and exit status 2.
        """
        self.assertEqual(cli.main(["token", "--config", os.path.join("nope", "x.ini"), "a"]), 2)
        self.assertIn("config error", self.err.getvalue())

    def test_refusesALifetimeOfZeroOrLess(self):
        """
        A lifetime of 0 or less would print a token that is already expired: refused with
        one line and exit status 2.
        """
        for ttl in ("0", "-5"):
            self.err.truncate(0)
            self.err.seek(0)
            self.assertEqual(cli.main(["token", "--config", self.path, "--ttl", ttl, "a"]), 2)
            self.assertEqual(self.out.getvalue(), "")
            self.assertEqual(self.err.getvalue(),
                             f"hpchat token: --ttl must be a positive number of seconds "
                             f"(got {ttl})\n")

    def test_helpStatesTheDefaultLifetime(self):
        """
        hpchat token --help says how long a token lives without --ttl.
        """
        self.assertEqual(cli.DEFAULT_TOKEN_TTL, 86400)
        self.assertRaises(SystemExit, cli.main, ["token", "--help"])
        self.assertIn("default: 86400", " ".join(self.out.getvalue().split()))


async def runCLI(*args: str) -> tuple[int, str, str]:
    """
    Run C{hpchat ARGS...} as its own process: C{(exit status, stdout, stderr)}.
    """
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "hpchat.cli", *args], env=dict(os.environ),
        reactor=theReactor())
    return code, out.decode(), err.decode()


class StatusAndNotifySingleNodeTests(unittest.TestCase):
    """
    hpchat status and hpchat notify against a real single node.
    """

    timeout = 60

    async def startNode(self) -> Node:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        node = Node(workdir, "solo")
        self.addCleanup(lambda: defer.ensureDeferred(node.stop()))
        await node.start()
        http = HTTP()
        self.addCleanup(lambda: defer.ensureDeferred(http.close()))
        return node, http

    @asyncTest
    async def test_statusOfARunningAndAStoppedNode(self):
        """
        hpchat status says a single node that answers /readyz is ready (exit 0); once it is
        stopped, it says in one line that the node is not reachable and exits 1.
        """
        node, _ = await self.startNode()
        code, out, err = await runCLI("status", "--config", node.configPath)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, f"single node solo at {node.url} is ready, serving all 16 groups "
                              f"(no [cluster] in {node.configPath})\n")
        await node.stop()
        code, out, err = await runCLI("status", "--config", node.configPath)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith(f"hpchat status: node at {node.url} is not reachable: "),
                        err)

    @asyncTest
    async def test_notifyStoresAnInboxEvent(self):
        """
        hpchat notify hands a flirt to the node; it prints the stored inbox event, which the
        user's inbox poll then returns. Without --id every call is a new notification; the
        same --id is stored once.
        """
        node, http = await self.startNode()
        code, out, err = await runCLI("notify", "--config", node.configPath, "bob", "flirt",
                                      "--from", "alice", "--data", '{"note": "hi \\u00e9"}')
        self.assertEqual((code, err), (0, ""))
        event = json.loads(out)
        self.assertEqual((event["seq"], event["type"], event["from"], event["data"]),
                         (1, "flirt", "alice", {"note": "hi \u00e9"}))
        self.assertTrue(event["id"].startswith("cli."), event)
        code, out, _ = await runCLI("notify", "--config", node.configPath, "bob", "visit")
        self.assertEqual((code, json.loads(out)["seq"]), (0, 2))
        code, out, _ = await runCLI("notify", "--config", node.configPath, "bob", "visit",
                                    "--id", "v-1")
        self.assertEqual((code, json.loads(out)["seq"]), (0, 3))
        code, out, err = await runCLI("notify", "--config", node.configPath, "bob", "visit",
                                      "--id", "v-1")
        self.assertEqual((code, json.loads(out)["seq"]), (0, 3))
        self.assertIn("v-1 was delivered before", err)

        token = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, SECRET,
                           algorithm="HS256")
        status, _, body = await http.request(
            "GET", node.url + "/v1/inbox/events?after=0&timeout=0", token)
        self.assertEqual(status, 200, body)
        self.assertEqual([(e["seq"], e["type"]) for e in body["events"]],
                         [(1, "flirt"), (2, "visit"), (3, "visit")])
        self.assertEqual(body["events"][0]["id"], event["id"])

    @asyncTest
    async def test_notifyRefusesBadInput(self):
        """
        A bad user, type, sender or data is refused before the node is called: one line and
        exit status 2, nothing on stdout.
        """
        node, _ = await self.startNode()
        cases = [
            (["not valid", "flirt"], "USER must match"),
            (["bob", "Flirt"], "TYPE must match"),
            (["bob", "flirt\n"], "TYPE must match"),
            (["bob", "x" * 33], "TYPE must match"),
            (["bob", "flirt", "--from", "a b"], "--from must match"),
            (["bob", "flirt", "--data", '{"x": NaN}'], "--data is not valid JSON: NaN"),
            (["bob", "flirt", "--data", '{"x": Infinity}'], "--data is not valid JSON"),
            (["bob", "flirt", "--data", "[1]"], "--data must be a JSON object"),
            (["bob", "flirt", "--data", "{"], "--data is not valid JSON"),
            (["bob", "flirt", "--id", "x" * 65], "id must be 1 to 64 visible ASCII"),
            (["bob", "flirt", "--id", "a b"], "id must be 1 to 64 visible ASCII"),
            (["bob", "flirt", "--data", json.dumps({"x": "y" * 9000})], "over 8192"),
        ]
        for args, message in cases:
            code, out, err = await runCLI("notify", "--config", node.configPath, *args)
            self.assertEqual((code, out), (2, ""), (args, err))
            self.assertEqual(len(err.splitlines()), 1, (args, err))
            self.assertIn(message, err, args)

    @asyncTest
    async def test_notifyToAStoppedNode(self):
        """
        A node that cannot be reached: one line naming it and exit status 1.
        """
        node, _ = await self.startNode()
        await node.stop()
        code, out, err = await runCLI("notify", "--config", node.configPath, "bob", "flirt",
                                      "--timeout", "3")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(f"not delivered: {node.url}/internal/v1/notifications: Connection", err)


class StatusAndNotifyClusterTests(unittest.TestCase):
    """
    hpchat status and hpchat notify against a real cluster of two nodes (etcd).
    """

    timeout = 90

    @asyncTest
    async def test_statusFoldsUnownedGroupsAndNotifyFollowsTheOwner(self):
        """
        hpchat status lists both nodes and the owned groups, folds the unowned ones into one
        line, and fails for a config whose node is not registered. hpchat notify given the
        config of the node that does not own the inbox is redirected to the owner, where
        the event is stored.
        """
        cluster = await Cluster(self, size=2).start()
        owner = await cluster.owner("inbox:bob")
        other = next(n for n in cluster.nodes if n is not owner)
        group = cluster.group("inbox:bob")

        code, out, err = await runCLI("status", "--config", other.configPath)
        self.assertEqual((code, err), (0, ""), out)
        lines = out.splitlines()
        self.assertIn("nodes (2):", lines)
        self.assertEqual(sum(1 for line in lines if line.split()[:1] in (["n1"], ["n2"])), 2,
                         out)
        owned = [line for line in lines if "token" in line]
        unowned = [line for line in lines if "unowned" in line]
        self.assertIn(f"{group:>4}  {owner.nodeId}  token", "\n".join(owned))
        self.assertEqual(len(unowned), 1, out)
        self.assertTrue(unowned[0].strip().startswith(f"{cluster.groups - len(owned)} groups "
                                                      f"unowned ("), out)
        self.assertNotIn("  -", out)
        self.assertEqual(lines[-1], f"node {other.nodeId} at {other.url} is ready")

        code, out, _ = await runCLI("notify", "--config", other.configPath, "bob", "flirt",
                                    "--from", "alice", "--id", "f-1")
        self.assertEqual(code, 0, out)
        self.assertEqual(json.loads(out)["id"], "f-1")
        status, _, body = await cluster.client.call(
            "GET", "/v1/inbox/events?after=0&timeout=0", "bob", start=owner)
        self.assertEqual(status, 200, body)
        self.assertEqual([e["id"] for e in body["events"]], ["f-1"])

        stray = Node(cluster.workdir, "n9", sections={"cluster": {"etcd": cluster.etcd.clientURL}})
        code, _, err = await runCLI("status", "--config", stray.configPath)
        self.assertEqual(code, 1)
        self.assertIn("hpchat status: node n9 of ", err)
        self.assertIn("is not registered in etcd", err)
