"""A stop nobody notices: what a replica does on SIGTERM before anything else stops.

In a rolling restart the load balancer sends each request to a replica that is not stopping.
So a stopping replica, in this order: stops accepting connections at once (the balancer's
next connection is refused and goes to another replica), answers 503 ``draining`` on
``/readyz`` (on connections already open: the balancer's health check takes it out), lets
the requests under way finish (the router's, twisted.web's and the relay workers'), for at
most ``timeout`` seconds; then tells local agents ``goaway restarting`` (they reconnect at
once, through the balancer, to another replica), and closes the long streams last (event
streams, terminals: browsers reconnect to another replica by themselves). The rest of the
service tree then stops as before (the relay workers, the sandboxes, the database).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from attrs import define, field
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger


class InFlight(Protocol):
    """Something that serves requests: how many are under way (long streams not counted)."""

    @property
    def in_flight(self) -> int: ...


class Drainable(InFlight, Protocol):
    """... and which must be told (again, until it is done) that the server stops."""

    def drain(self) -> None: ...


@define(eq=False)
class Draining:
    """Whether this replica stops: made before the site that answers ``/readyz`` (which calls
    it) and the ``Drain`` that sets it, and handed to both."""

    now: bool = False

    def __call__(self) -> bool:
        return self.now


@define(eq=False)
class Drain(Service):
    _clock: IReactorTime
    timeout: float
    _listeners: Sequence[IService]  # the listening ports' services
    _serving: Sequence[InFlight]  # the router, twisted.web
    _workers: Drainable | None  # the relay workers
    _goaway: Callable[[], None]  # local agents' tunnels: reconnect elsewhere
    _close_streams: Sequence[Callable[[], None]]  # what lasts, closed last
    _on_draining: Callable[[], None] = lambda: None  # e.g. twisted.web answers say close
    poll: float = 0.05  # how often the requests under way are counted
    flag: Draining = field(factory=Draining, kw_only=True)  # what /readyz reads
    drained_in: float | None = field(default=None, init=False)  # seconds, once stopped
    _log = Logger()

    @property
    def draining(self) -> bool:
        """The stop has begun: ``/readyz`` answers 503."""
        return self.flag.now

    def in_flight(self) -> int:
        counts = [serving.in_flight for serving in self._serving]
        if self._workers is not None:
            counts.append(self._workers.in_flight)
        return sum(counts)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        began = self._clock.seconds()
        self.flag.now = True
        self._on_draining()
        # Listening stops first: nothing new arrives (each step bounded by the tree's timeout).
        stopped = [maybeDeferred(listener.stopService) for listener in self._listeners]
        await DeferredList(stopped, consumeErrors=True)
        self._log.info("stopping: no new connections; finishing the requests under way")
        while True:
            if self._workers is not None:
                self._workers.drain()  # (asked each round: its answer comes by the next)
            left = self.in_flight()  # (a worker counts until it answers a drain)
            if left == 0:
                break
            if self._clock.seconds() - began >= self.timeout:
                self._log.warn(
                    "stopping: {left} request(s) still under way after {timeout:g} s; closing them",
                    left=left,
                    timeout=self.timeout,
                )
                break
            await deferLater(self._clock, self.poll)
        self._goaway()
        for close in self._close_streams:
            close()
        self.drained_in = self._clock.seconds() - began
        self._log.info(
            "stopping: drained in {seconds:.2f} s; long streams closed", seconds=self.drained_in
        )
