"""Running blocking work off the reactor thread, on bounded pools we own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

R = TypeVar("R")


class Runner(Protocol):
    """Runs ``f(*args)`` somewhere and returns a Deferred of its result."""

    def __call__(self, f: Callable[..., R], *args: object) -> Deferred[R]: ...


def synchronous_runner(f: Callable[..., R], *args: object) -> Deferred[R]:
    """For tests: same contract as a pool runner, no threads."""
    return maybeDeferred(f, *args)


@define(eq=False)
class ThreadPoolService(Service):
    """A named, bounded thread pool started and stopped with the service tree.

    We do not use the reactor's pool: it also serves DNS lookups, which slow password
    hashing or SDK calls would stall.
    """

    _reactor: IReactorFromThreads  # where a finished call's result is delivered
    _pool_name: str
    _max_threads: int = 2
    _pool: ThreadPool = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._pool = ThreadPool(minthreads=0, maxthreads=self._max_threads, name=self._pool_name)

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()

    def run(self, f: Callable[..., R], *args: object) -> Deferred[R]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)
