"""
shield: a caller's cancellation must not stop shared or committed work.
"""

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from hpchat.deferreds import shield


class ShieldTests(SynchronousTestCase):
    def test_cancelLeavesTheWorkRunning(self):
        """
        Cancelling the shielded Deferred fails it alone; the work goes on.
        """
        work: defer.Deferred = defer.Deferred()
        shielded = shield(work)
        shielded.cancel()
        self.failureResultOf(shielded, defer.CancelledError)
        self.assertFalse(work.called)
        work.callback("done")
        self.assertEqual(self.successResultOf(work), None)

    def test_lateFailureIsLogged(self):
        """
        A private work's failure after its caller left is logged, not lost.
        """
        work: defer.Deferred = defer.Deferred()
        shielded = shield(work, "a send")
        shielded.cancel()
        self.failureResultOf(shielded, defer.CancelledError)
        work.errback(RuntimeError("disk"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_sharedKeepsTheResult(self):
        """
        Shared work keeps its result for its other callers.
        """
        work: defer.Deferred = defer.Deferred()
        one, two = shield(work, shared=True), shield(work, shared=True)
        work.callback(7)
        self.assertEqual((self.successResultOf(one), self.successResultOf(two)), (7, 7))
        self.assertEqual(self.successResultOf(work), 7)
