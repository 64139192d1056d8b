"""Wiring for `twistd cli-server`: builds the service tree from a ServerConfig, does no I/O."""

from __future__ import annotations

import os
import sys
from typing import Any

from attrs import define, field
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import Site

from cli_server.accounts import Accounts
from cli_server.auth.passwords import Passwords
from cli_server.auth.ratelimit import FailureLimiter
from cli_server.config import ServerConfig
from cli_server.db.embedded import EmbeddedPostgres, EmbeddedPostgresError
from cli_server.db.migrations import migrate
from cli_server.db.pool import Database, DatabaseUnavailable
from cli_server.services import OrderedMultiService, PeriodicService
from cli_server.threads import ThreadPoolService
from cli_server.web.auth_api import AuthAPI, AuthLimits
from cli_server.web.request import BoundedRequest
from cli_server.web.session import SessionCookies
from cli_server.web.site import MainSite
from cli_server.web.workspaces_api import WorkspacesAPI
from cli_server.workspaces import Workspaces


@define(eq=False)
class DatabaseService(Service):
    """Brings PostgreSQL up (embedded, or waits for an external one), migrates, closes it last.

    twistd does not wait for asynchronous start-up, so the web server listens at once and
    answers 503 until ``ready`` is true. A database that is down at start is retried with
    backoff; an embedded database that cannot start is fatal (``on_fatal``).
    """

    _reactor: Any
    db: Database
    _embedded: EmbeddedPostgres | None
    _on_fatal: Any  # (message: str) -> None
    ready: bool = field(default=False, init=False)
    _boot: Deferred[None] | None = field(default=None, init=False)
    _log = Logger()

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
        self.ready = True
        self._log.info("database ready")

    def _failed(self, failure: Any) -> None:
        if failure.check(CancelledError):
            return
        message = failure.getErrorMessage()
        if failure.check(EmbeddedPostgresError, OSError):
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


def exit_on_fatal(reactor: Any) -> Any:
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


@define(eq=False)
class Server:
    """The built service tree plus the pieces tests and siblings reach into."""

    root: OrderedMultiService
    site: Site
    database: DatabaseService


def buildServer(config: ServerConfig, reactor: Any) -> IService:
    return build(config, reactor).root


def build(
    config: ServerConfig,
    reactor: Any,
    *,
    passwords: Passwords | None = None,
    limits: AuthLimits | None = None,
    on_fatal: Any = None,
) -> Server:
    root = OrderedMultiService(reactor)

    hashing = ThreadPoolService(reactor, "password-hashing", 2)
    hashing.setName("threads")
    hashing.setServiceParent(root)

    embedded = None if config.db_url else EmbeddedPostgres(config.data_dir, reactor)
    dsn = config.db_url if config.db_url else embedded.dsn  # type: ignore[union-attr]
    db = Database(reactor, dsn)
    database = DatabaseService(reactor, db, embedded, on_fatal or exit_on_fatal(reactor))
    database.setName("database")
    database.setServiceParent(root)

    limits = limits or AuthLimits()
    accounts = Accounts(db, passwords or Passwords(hashing.run), reactor, config.session_lifetime)
    cookies = SessionCookies(
        accounts, config.secure_cookies, config.session_lifetime, config.origin
    )
    per_user = FailureLimiter(reactor, limits.login_failures_per_user, limits.login_window)
    per_address = FailureLimiter(reactor, limits.login_failures_per_address, limits.login_window)
    registrations = FailureLimiter(
        reactor, limits.registrations_per_address, limits.registration_window
    )
    auth = AuthAPI(accounts, cookies, per_user, per_address, registrations)
    site = MainSite(db, auth, WorkspacesAPI(Workspaces(db), cookies), lambda: database.ready)

    async def housekeeping() -> None:
        for limiter in (per_user, per_address, registrations):
            limiter.prune()
        if database.ready:
            await accounts.purge_expired_sessions()

    chores = PeriodicService(reactor, 600.0, housekeeping, "housekeeping")
    chores.setName("housekeeping")
    chores.setServiceParent(root)

    web = Site(site.app.resource(), requestFactory=BoundedRequest)
    web.displayTracebacks = False
    for n, description in enumerate(config.listen):
        listener = StreamServerEndpointService(serverFromString(reactor, description), web)
        listener.setName(f"http-{n}")
        listener.setServiceParent(root)
    return Server(root, web, database)
