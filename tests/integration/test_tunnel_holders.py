"""Who holds a tunnel, in the real database: a newer holder is never released by an older
one's end nor displaced by its sweep, and a dead replica's tunnels are released once, by one
survivor."""

from __future__ import annotations

import uuid

import pytest_twisted

from cli_server.db.pool import Database
from cli_server.domain.workspaces import Workspaces
from cli_server.replicas.holders import Details, Holder, Swept, TunnelHolders

from .conftest import _reactor


async def _setup(db: Database) -> str:
    user = str(uuid.uuid4())
    await db.execute("INSERT INTO users (id, username) VALUES (%s, 'u')", (user,))
    workspace = (await Workspaces(db).create(user, "w"))["id"]
    local = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO sandboxes (id, workspace_id, name, status, is_local, backend, created_by,"
        " opencode_password) VALUES (%s, %s, 'laptop', 'offline', true, 'local', %s, 'x')",
        (local, workspace, user),
    )
    for name in ("a", "b", "c"):
        await db.execute(
            "INSERT INTO replicas (id, hostname, instance, advertise_url, backend, embedded_db)"
            " VALUES (%s, 'h', %s, %s, 'docker', false)",
            (name, name, f"http://10.0.0.{ord(name) - 96}:8080"),
        )
    return local


@pytest_twisted.ensureDeferred
async def test_holding_and_releasing(db_url: str) -> None:
    reactor = _reactor()
    db = Database(reactor, db_url)
    try:
        sid = await _setup(db)
        a, b, c = (TunnelHolders(db, name, reactor.seconds) for name in ("a", "b", "c"))

        async def status() -> str:
            (row,) = await db.query("SELECT status FROM sandboxes WHERE id = %s", (sid,))
            return str(row["status"])

        await a.hold(sid)
        assert await status() == "running"
        assert await c.holder(sid) == Holder("a", "10.0.0.1", 8080)
        assert await a.holder(sid) is None  # (held here: not relayed)
        await b.hold(sid)  # the agent moved to b
        assert not await a.release(sid)  # a's old tunnel ends: nothing changes
        assert await status() == "running"
        c.forget(sid)
        assert await c.holder(sid) == Holder("b", "10.0.0.2", 8080)
        assert await b.release(sid)
        assert await status() == "offline"
        c.forget(sid)  # (else c trusts what it found for a second)
        assert await c.holder(sid) is None

        # b holds it again and dies (its heartbeat expires): one survivor releases it, once
        await b.hold(sid)
        await db.execute(
            "UPDATE replicas SET heartbeat_at = now() - interval '1 hour' WHERE id = 'b'"
        )
        c.forget(sid)
        assert await c.holder(sid) is None  # (a dead replica is not relayed to)
        assert await a.sweep({}) == Swept([sid], [])
        assert await c.sweep({}) == Swept([], [])
        assert await status() == "offline"
        # a tunnel held on c that lost its row (say, to such a race) is said again
        assert await c.sweep({sid: Details()}) == Swept([], [])
        assert await status() == "running"
        assert await a.holder(sid) == Holder("c", "10.0.0.3", 8080)
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_a_sweep_never_takes_a_row_back(db_url: str) -> None:
    """The same agent's credentials connected to b after a: b's tunnel is newer, and a's
    sweep reports its own as lost (to close as replaced) instead of taking the row back."""
    reactor = _reactor()
    db = Database(reactor, db_url)
    try:
        sid = await _setup(db)
        a, b = (TunnelHolders(db, name, reactor.seconds) for name in ("a", "b"))

        async def holder() -> str:
            (row,) = await db.query(
                "SELECT replica_id FROM tunnel_holders WHERE sandbox_id = %s", (sid,)
            )
            return str(row["replica_id"])

        await a.hold(sid, Details((5173,), "cli-agent/26.1.0", 1))
        assert not await a.held_elsewhere(sid)
        await b.hold(sid, Details((3000, 5173), "cli-agent/26.2.0", 1))
        assert await a.held_elsewhere(sid) and not await b.held_elsewhere(sid)
        # what the holder knows of its agent, for the others (the newest tunnel's)
        assert await a.details([sid, str(uuid.uuid4())]) == {
            sid: Details((3000, 5173), "cli-agent/26.2.0", 1)
        }
        for _ in range(3):
            assert await a.sweep({sid: Details()}) == Swept([], [sid])
            assert await b.sweep({sid: Details()}) == Swept([], [])
            assert await holder() == "b"
        # a's old tunnel ends: the sandbox stays running on b
        assert not await a.release(sid)
        (row,) = await db.query("SELECT status FROM sandboxes WHERE id = %s", (sid,))
        assert row["status"] == "running"
        # a dead holder's row is released first: a tunnel held here then takes it, not lost
        await db.execute(
            "UPDATE replicas SET heartbeat_at = now() - interval '1 hour' WHERE id = 'b'"
        )
        assert await a.details([sid]) == {}  # (a dead holder's details are not shown)
        assert await a.sweep({sid: Details((5173,), "cli-agent/26.1.0", 1)}) == Swept([], [])
        assert await holder() == "a"
        assert await b.details([sid]) == {sid: Details((5173,), "cli-agent/26.1.0", 1)}
    finally:
        db.close()
