"""PostgreSQL: embedded or external, the service that brings it up and runs the start-up
steps, and the supervisor of an embedded one."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Sequence

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from cli_server.compose.reactor import IServerReactor
from cli_server.config import ServerConfig
from cli_server.db.embedded import EmbeddedPostgres, EmbeddedPostgresError, Supervisor
from cli_server.db.migrations import migrate
from cli_server.db.pool import Database, DatabaseUnavailable
from cli_server.plumbing.services import PeriodicService
from cli_server.replicas.registry import ReplicaRefused

Step = Callable[[], Awaitable[None]]  # a start-up step, run once the schema is current


@define(eq=False)
class Readiness:
    """Whether the database is migrated and the start-up steps are done: made before what
    reads it (the web answers 503 until then; periodic jobs wait for it), set by
    ``DatabaseService``."""

    ready: bool = False

    def __call__(self) -> bool:
        return self.ready


@define(eq=False)
class DatabaseService(Service):
    """Brings PostgreSQL up (embedded, or waits for an external one), migrates, runs the
    start-up ``steps`` in order, closes it last.

    twistd does not wait for asynchronous start-up, so the web server listens at once and
    answers 503 until ``ready`` is true. A database that is down at start is retried with
    backoff; an embedded database that cannot start is fatal (``on_fatal``).
    """

    _reactor: IReactorTime
    db: Database
    _embedded: EmbeddedPostgres | None
    _on_fatal: Callable[[str], None]
    _steps: Sequence[Step] = ()  # run after migrations, before ``ready``
    readiness: Readiness = field(factory=Readiness)
    _boot: Deferred[None] | None = field(default=None, init=False)
    _log = Logger()

    @property
    def ready(self) -> bool:
        return self.readiness.ready

    def startService(self) -> None:
        super().startService()
        self._boot = Deferred.fromCoroutine(self._start())
        self._boot.addErrback(self._failed)

    async def _start(self) -> None:
        if self._embedded is not None:
            await self._embedded.start()
        delay = 0.5
        while True:
            try:
                await migrate(self.db)
                break
            except DatabaseUnavailable as e:
                self._log.warn(
                    "database not ready ({why}); retrying in {delay}s", why=e, delay=delay
                )
                await deferLater(self._reactor, delay)
                delay = min(delay * 2, 10.0)
        for step in self._steps:
            await step()
        self.readiness.ready = True
        self._log.info("database ready")

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        message = failure.getErrorMessage()
        if failure.check(EmbeddedPostgresError, OSError, ReplicaRefused):
            self._log.error("start-up failed: {message}", message=message)
        else:
            self._log.failure("start-up failed: {message}", failure, message=message)
        self._on_fatal(message)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._boot is not None and not self._boot.called:
            self._boot.cancel()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.db.close()
        if self._embedded is not None:
            await self._embedded.stop()


def exit_on_fatal(reactor: IReactorCore) -> Callable[[str], None]:
    """Print one line, stop the reactor, and make the process exit with status 1."""

    def fatal(message: str) -> None:
        print(f"cli-server: cannot start: {message}", file=sys.stderr, flush=True)
        # twistd has no way to set the exit status, so leave with 1 once shutdown is done.
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if reactor.running:
            reactor.stop()
        else:  # failed before the reactor started turning
            reactor.callWhenRunning(reactor.stop)

    return fatal


@define(frozen=True)
class Store:
    """The database the rest is built on; its service comes last (it runs their steps)."""

    db: Database
    dsn: str
    embedded: EmbeddedPostgres | None  # None: an external PostgreSQL (--db-url)
    readiness: Readiness
    supervisor: PeriodicService | None  # restarts an embedded PostgreSQL that died


def build_store(config: ServerConfig, reactor: IServerReactor) -> Store:
    embedded = None
    if config.db_url:
        dsn = config.db_url
    else:
        embedded = EmbeddedPostgres(config.data_dir, reactor)
        dsn = embedded.dsn
    supervisor = None
    if embedded is not None:
        supervisor = PeriodicService(
            reactor, 1.0, Supervisor(embedded, reactor).check, "database supervisor"
        )
        supervisor.setName("database-supervisor")
    return Store(Database(reactor, dsn), dsn, embedded, Readiness(), supervisor)


def database_service(
    store: Store,
    reactor: IReactorTime,
    on_fatal: Callable[[str], None],
    steps: Sequence[Step],
) -> DatabaseService:
    database = DatabaseService(reactor, store.db, store.embedded, on_fatal, steps, store.readiness)
    database.setName("database")
    return database
