"""PostgreSQL going away: 503 JSON while it is gone, recovery by itself when it is back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_twisted
from twisted.internet.defer import Deferred

from cli_server.db.embedded import EmbeddedPostgres

from .conftest import _reactor, start_server, stop_server
from .helpers import remove_dir, scratch_dir, wait_until


@pytest_twisted.async_yield_fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL of its own (used like an external one, via --db-url) that we can stop."""
    root = scratch_dir("cli-test-outage-")
    pg = EmbeddedPostgres(root, _reactor())
    await Deferred.fromCoroutine(pg.start())
    yield pg
    await Deferred.fromCoroutine(pg.stop())
    remove_dir(root)


@pytest_twisted.ensureDeferred
async def test_database_outage_and_recovery(own_postgres: EmbeddedPostgres) -> None:
    """Requests fail with 503 JSON while PostgreSQL is down; the same server recovers."""
    reactor = _reactor()
    running = await start_server(own_postgres.dsn)
    try:
        client = running.client()
        await client.register_and_login("steady")
        assert (await client.call("GET", "/readyz")).code == 200

        await own_postgres.stop()
        me = await client.call("GET", "/api/auth/me")
        assert (me.code, me.error_code) == (503, "database_unavailable")
        assert me.headers.getRawHeaders("retry-after") == ["5"]
        ready = await client.call("GET", "/readyz")
        assert ready.code == 503
        made = await client.call("POST", "/api/workspaces", {"name": "during outage"})
        assert made.code == 503
        assert (await client.call("GET", "/healthz")).code == 200

        await own_postgres.start()

        async def recovered() -> bool:
            return (await client.call("GET", "/api/auth/me")).code == 200

        await wait_until(reactor, recovered, timeout=20)
        listed = await client.call("GET", "/api/workspaces")
        assert listed.code == 200 and listed.body == []
        assert (await client.call("GET", "/readyz")).code == 200
    finally:
        await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_start_while_database_is_down(own_postgres: EmbeddedPostgres) -> None:
    """A server started before its database waits, answers 503 meanwhile, then serves."""
    reactor = _reactor()
    await own_postgres.stop()
    running = await start_server(own_postgres.dsn, wait_ready=False)
    try:
        client = running.client()
        early = await client.call("GET", "/api/auth/me")
        assert (early.code, early.error_code) == (503, "starting")
        assert (await client.call("GET", "/readyz")).code == 503
        await own_postgres.start()
        await wait_until(reactor, lambda: running.server.database.ready, timeout=30)
        await client.register_and_login("patient")
    finally:
        await stop_server(running)
