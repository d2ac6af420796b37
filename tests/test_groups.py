"""
The single-node ownership and route resolution.
"""

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from hpchat.groups import (
    SINGLE_NODE_TOKEN,
    IOwnership,
    Local,
    Redirect,
    SingleNodeOwnership,
    resolveRoute,
)


class SingleNodeTests(SynchronousTestCase):
    def test_ownsEverything(self):
        """
        A single node serves every group under one fixed token and is always ready.
        """
        ownership = SingleNodeOwnership("n1", "http://n1", 4)
        self.assertTrue(verifyObject(IOwnership, ownership))
        self.assertEqual(ownership.route(3), Local(SINGLE_NODE_TOKEN))
        self.assertEqual(ownership.tokenFor(0), SINGLE_NODE_TOKEN)
        self.assertEqual(ownership.cluster(), ({"n1": "http://n1"},
                                               {0: "n1", 1: "n1", 2: "n1", 3: "n1"}))
        self.assertTrue(ownership.ready())


class ResolveRouteTests(SynchronousTestCase):
    def test_immediateAndDeferred(self):
        """
        A route given at once or later comes back as a Deferred; cancelling one caller's
        does not cancel a claim that others share.
        """
        claim: defer.Deferred = defer.Deferred()
        owner = type("O", (), {"route": lambda self, g: claim if g else Local(1)})()
        self.assertEqual(self.successResultOf(resolveRoute(owner, 0)), Local(1))
        first, second = resolveRoute(owner, 1), resolveRoute(owner, 1)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.assertFalse(claim.called)
        claim.callback(Redirect("n2", "http://n2"))
        self.assertEqual(self.successResultOf(second), Redirect("n2", "http://n2"))

    def test_raisingOwnership(self):
        """
        An ownership that raises gives a failed Deferred, not an exception.
        """
        owner = type("O", (), {"route": lambda self, g: 1 / 0})()
        self.failureResultOf(resolveRoute(owner, 1), ZeroDivisionError)
