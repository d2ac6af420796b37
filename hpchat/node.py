# -*- test-case-name: tests.test_node -*-
"""
One node's services, started and stopped in an order of their own.

L{MultiService} stops all its children at once, which lets the store close (or the lease go)
while the persister still writes the last batch. A L{NodeService} holds an ordered list of
named L{Stage}s instead, in stop order: on stop it runs each stage's C{stop} in turn and waits
for it, at most the stage's C{timeout} (an overrun is logged and the next stage goes on), and
the whole stop at most C{stopTimeout}. Services of the stages start in the reverse order, so
that each starts after everything it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

# Seconds of the stop budget kept for each stage still to come.
RESERVE = 2.0


@dataclass(frozen=True)
class Stage:
    """
    One step of a node's stop.

    @ivar name: names the stage in logs and in L{NodeService.addStage}.
    @ivar stop: called once when the node stops; may return a Deferred or a coroutine,
        which the node waits for (at most C{timeout} seconds) before the next stage.
    @ivar timeout: how long this stage may take.
    @ivar services: services started when the node starts (stages in reverse order), and
        made children of the node; C{stop} is what stops them.
    """

    name: str
    stop: Callable[[], Any]
    timeout: float
    services: tuple[IService, ...] = ()


def serviceStage(name: str, timeout: float, *services: IService) -> Stage:
    """
    A stage that starts C{services} and stops them all at once, waiting for each
    C{stopService} Deferred.
    """

    def stop() -> defer.Deferred:
        return defer.gatherResults(
            [defer.maybeDeferred(s.stopService) for s in services], consumeErrors=True)

    return Stage(name, stop, timeout, tuple(services))


def _asDeferred(result: Any) -> defer.Deferred:
    if isinstance(result, defer.Deferred):
        return result
    if hasattr(result, "__await__"):
        return defer.ensureDeferred(result)
    return defer.succeed(result)


class NodeService(MultiService):
    """
    The node: an ordered list of L{Stage}s (see the module docstring).

    @ivar stopTimeout: the bound on the whole stop; a stage gets at most what is left of it
        (a stage started after the bound gets no time, but its C{stop} is still called).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, stages: Iterable[Stage] = (),
                 stopTimeout: float = 40.0) -> None:
        super().__init__()
        self._clock = clock
        self.stopTimeout = stopTimeout
        self._stages: list[Stage] = []
        self._stopping: defer.Deferred | None = None
        for stage in stages:
            self.addStage(stage)

    @property
    def stages(self) -> Sequence[Stage]:
        """
        The stages, in stop order.
        """
        return tuple(self._stages)

    def addStage(self, stage: Stage, before: str | None = None,
                 after: str | None = None) -> None:
        """
        Add C{stage} at the end of the stop order, or just C{before} or C{after} the stage
        of that name. Only before the node starts.
        """
        if self.running:
            raise RuntimeError("stages are added before the node starts")
        if any(s.name == stage.name for s in self._stages):
            raise ValueError(f"there is already a stage {stage.name!r}")
        if before is not None and after is not None:
            raise ValueError("give before or after, not both")
        index = len(self._stages)
        if before is not None or after is not None:
            names = [s.name for s in self._stages]
            anchor = before if before is not None else after
            if anchor not in names:
                raise ValueError(f"there is no stage {anchor!r}")
            index = names.index(anchor) + (1 if after is not None else 0)
        self._stages.insert(index, stage)
        for service in stage.services:
            self.addService(service)

    def startOrder(self) -> list[IService]:
        """
        The stages' services in the order they start: the reverse of the stop order.
        """
        return [service for stage in reversed(self._stages) for service in stage.services]

    def privilegedStartService(self) -> None:
        # Service's, not MultiService's: the children go in stage order.
        Service.privilegedStartService(self)
        for service in self.startOrder():
            service.privilegedStartService()

    def startService(self) -> None:
        Service.startService(self)
        self._stopping = None
        for service in self.startOrder():
            service.startService()

    def stopService(self) -> defer.Deferred:
        """
        Run the stages' C{stop} in order; fires (never fails) when the last is done or the
        whole stop has taken C{stopTimeout}.
        """
        if self._stopping is None:
            Service.stopService(self)
            self._stopping = defer.ensureDeferred(self._stop())
        d: defer.Deferred = defer.Deferred()
        self._stopping.addBoth(lambda _: d.callback(None))
        return d

    async def _stop(self) -> None:
        start = self._clock.seconds()
        deadline = start + self.stopTimeout
        stages = list(self._stages)
        for index, stage in enumerate(stages):
            began = self._clock.seconds()
            # Every later stage keeps a little of the budget (up to RESERVE seconds each): a
            # slow persister must not leave nothing for the lease revoke and the store.
            reserved = sum(min(later.timeout, RESERVE) for later in stages[index + 1:])
            bound = max(0.0, min(stage.timeout, deadline - began - reserved))
            try:
                await self._bounded(stage, bound)
            except defer.TimeoutError:
                self.log.error("stopping: stage {stage} did not finish within {timeout:g}s; "
                               "going on", stage=stage.name, timeout=bound)
            except Exception:
                self.log.failure("stopping: stage {stage} failed; going on", Failure(),
                                 stage=stage.name)
            else:
                self.log.info("stopping: {stage} done in {elapsed:.3f}s", stage=stage.name,
                              elapsed=self._clock.seconds() - began)
        self.log.info("stopped in {elapsed:.3f}s", elapsed=self._clock.seconds() - start)

    def _bounded(self, stage: Stage, timeout: float) -> defer.Deferred:
        """
        The outcome of C{stage.stop()}, or a L{defer.TimeoutError} after C{timeout}. An
        overrunning stage is not cancelled (that could cut a lease revoke or a write in
        half): it goes on meanwhile, and a failure it ends with later is logged.
        """
        work = _asDeferred(stage.stop())
        outcome: defer.Deferred = defer.Deferred()

        def relay(result: Any) -> None:
            if not outcome.called:
                if isinstance(result, Failure):
                    outcome.errback(result)
                else:
                    outcome.callback(result)
            elif isinstance(result, Failure):
                self.log.failure("stopping: stage {stage} failed after its timeout", result,
                                 stage=stage.name)

        work.addBoth(relay)
        return outcome.addTimeout(timeout, self._clock)
