"""
shield: a caller's cancellation must not stop shared or committed work.
"""

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from hpchat.deferreds import ObservableDeferred, fireAll, observer, shield


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


class ObservableDeferredTests(SynchronousTestCase):
    def test_everyObserverGetsTheResult(self):
        work = defer.Deferred()
        shared = ObservableDeferred(work)
        first, second = shared.observe(), shared.observe()
        self.assertNoResult(first)
        work.callback(7)
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (7, 7))
        self.assertTrue(shared.done)
        self.assertEqual(self.successResultOf(shared.observe()), 7)

    def test_cancelOneObserver(self):
        work = defer.Deferred()
        shared = ObservableDeferred(work)
        first, second = shared.observe(), shared.observe()
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.assertFalse(work.called)
        work.callback("x")
        self.assertEqual(self.successResultOf(second), "x")

    def test_errorReachesEveryObserver(self):
        work = defer.Deferred()
        shared = ObservableDeferred(work)
        first, second = shared.observe(), shared.observe()
        work.errback(ValueError("boom"))
        self.failureResultOf(first, ValueError)
        self.failureResultOf(second, ValueError)
        self.failureResultOf(shared.observe(), ValueError)
        self.assertEqual(self.flushLoggedErrors(ValueError), [])

    def test_unobservedErrorIsLogged(self):
        work = defer.Deferred()
        ObservableDeferred(work, "a claim")
        work.errback(ValueError("boom"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class ObserverListTests(SynchronousTestCase):
    def test_fireAllAndCancel(self):
        waiting: list = []
        first, second = observer(waiting), observer(waiting)
        second.cancel()
        self.failureResultOf(second, defer.CancelledError)
        self.assertEqual(waiting, [first])
        fireAll(waiting, 3)
        self.assertEqual(self.successResultOf(first), 3)
        self.assertEqual(waiting, [])
