"""Service-tree building blocks: strict-order shutdown and periodic jobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from attrs import define, field
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel


class OrderedMultiService(MultiService):
    """Starts children in the order added; stops them one by one in reverse order.

    Twisted's MultiService stops all children at once, so "stop accepting HTTP" would race with
    "stop the database". Each child gets ``step_timeout`` seconds; a hung step is logged and
    skipped so shutdown always finishes.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, step_timeout: float = 30.0) -> None:
        super().__init__()
        self._clock = clock
        self._step_timeout = step_timeout

    @property
    def step_timeout(self) -> float:
        """Seconds each child is given to stop before the next one's turn."""
        return self._step_timeout

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            if not child.running:
                continue
            d: Deferred[object] = maybeDeferred(child.stopService)  # (a Deferred, or None)
            d.addTimeout(self._step_timeout, self._clock)
            try:
                await d
            except Exception:
                self.log.failure(
                    "stopping {name} failed", name=child.name or repr(child), level=LogLevel.error
                )


@define(eq=False)
class PeriodicService(Service):
    """Runs ``job`` every ``interval`` seconds (not at start); a failed run is logged, not fatal.

    ``stopService`` waits for a run in progress to finish.
    """

    _clock: IReactorTime
    _interval: float
    _job: Callable[[], Awaitable[None]]
    _what: str
    _loop: LoopingCall | None = field(default=None, init=False)
    _done: Deferred[LoopingCall] | None = field(default=None, init=False)
    _log = Logger()

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._done = self._loop.start(self._interval, now=False)

    async def run_now(self) -> None:
        """Run the job once, now, outside the schedule (its failure is the caller's)."""
        await self._job()

    def _tick(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(_await(self._job))
        d.addErrback(
            lambda f: self._log.failure("{what} failed", f, what=self._what, level=LogLevel.error)
        )
        return d

    def stopService(self) -> Deferred[LoopingCall] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._done


async def _await(job: Callable[[], Awaitable[None]]) -> None:
    await job()
