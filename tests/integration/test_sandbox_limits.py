"""Issue 16, class 7 (counts): one account or one workspace cannot take every sandbox slot.

Real PostgreSQL; a FAKE backend (no processes: the limits are counted in the database).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import attrs
import pytest_twisted
from twisted.internet.defer import gatherResults

from .conftest import Running, server_config, start_server, stop_server
from .helpers import Api
from .test_sandboxes_api import wait_status


@pytest_twisted.async_yield_fixture
async def limited(db_url: str) -> AsyncIterator[Running]:
    """A server with room for 6 sandboxes, 3 per workspace, 2 per person."""
    config = attrs.evolve(
        server_config(db_url),
        max_sandboxes=6,
        max_sandboxes_per_workspace=3,
        max_sandboxes_per_user=2,
    )
    app = await start_server(db_url, config=config)
    yield app
    await stop_server(app)


async def person(app: Running, name: str) -> Api:
    client = app.client()
    await client.register_and_login(name)
    return client


async def workspace(owner: Api, name: str) -> str:
    return str((await owner.call("POST", "/api/workspaces", {"name": name})).body["id"])


async def running(client: Api, wid: str, name: str) -> str:
    made = await client.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": name})
    assert made.code == 201, made
    await wait_status(client, made.body["id"], "running")
    return str(made.body["id"])


async def occupying(app: Running) -> int:
    (row,) = await app.db.query(
        "SELECT count(*) AS n FROM sandboxes"
        " WHERE status IN ('creating', 'running', 'resuming', 'pausing')"
    )
    return int(row["n"])


@pytest_twisted.ensureDeferred
async def test_one_account_cannot_take_every_slot(limited: Running) -> None:
    """A greedy account spreading starts over many workspaces of its own stops at its own
    limit; someone else still gets sandboxes."""
    greedy = await person(limited, "greedy")
    refused = []
    for n in range(6):
        wid = await workspace(greedy, f"hoard-{n}")
        reply = await greedy.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "x"})
        if reply.code != 201:
            refused.append(reply)
    assert len(refused) == 4 and await occupying(limited) == 2
    for reply in refused:
        assert (reply.code, reply.error_code) == (409, "user_sandbox_limit")
        message = reply.body["error"]["message"]
        assert "2 per person" in message and "--max-sandboxes-per-user" in message
        assert "pause or delete" in message
    other = await person(limited, "other")
    await running(other, await workspace(other, "mine"), "fair share")


@pytest_twisted.ensureDeferred
async def test_limit_is_per_workspace_and_per_user(limited: Running) -> None:
    """Three people in one workspace: the workspace fills at 3 whoever starts them; each
    person still has their own 2 elsewhere."""
    a, b, c = [await person(limited, n) for n in ("ann", "bob", "cat")]
    team = await workspace(a, "team")
    await a.add_member(team, b)
    await a.add_member(team, c)
    await running(a, team, "a1")
    await running(a, team, "a2")
    third = await a.call("POST", f"/api/workspaces/{team}/sandboxes", {"name": "a3"})
    assert (third.code, third.error_code) == (409, "user_sandbox_limit")
    await running(b, team, "b1")
    full = await c.call("POST", f"/api/workspaces/{team}/sandboxes", {"name": "c1"})
    assert (full.code, full.error_code) == (409, "workspace_sandbox_limit")
    message = full.body["error"]["message"]
    assert "limit of 3" in message and "--max-sandboxes-per-workspace" in message
    # Neither limit is the other's: c and b can still start in a workspace of their own.
    elsewhere = await workspace(c, "c's")
    await running(c, elsewhere, "c1")
    await running(c, elsewhere, "c2")
    await running(b, await workspace(b, "b's"), "b2")
    assert await occupying(limited) == 6


@pytest_twisted.ensureDeferred
async def test_resume_counts_for_whoever_resumes(limited: Running) -> None:
    """Resuming takes a slot like creating; it counts against the person who resumed it, so a
    full account cannot dodge its limit by resuming, and pausing frees the slot."""
    a, b = await person(limited, "ann"), await person(limited, "bob")
    team = await workspace(a, "team")
    await a.add_member(team, b)
    first = await running(a, team, "first")
    await running(a, team, "second")
    assert (await a.call("POST", f"/api/sandboxes/{first}/pause")).code == 200
    await wait_status(a, first, "paused")
    await running(b, team, "b's")
    await running(b, await workspace(b, "b's own"), "b's other")  # b: 2 of 2
    blocked = await b.call("POST", f"/api/sandboxes/{first}/resume")
    assert (blocked.code, blocked.error_code) == (409, "user_sandbox_limit")
    await running(a, await workspace(a, "a's own"), "third")  # a: 2 of 2 again
    mine_too = await a.call("POST", f"/api/sandboxes/{first}/resume")
    assert (mine_too.code, mine_too.error_code) == (409, "user_sandbox_limit")
    assert (await a.call("GET", f"/api/sandboxes/{first}")).body["status"] == "paused"

    (row,) = await limited.db.query("SELECT id FROM sandboxes WHERE name = 'b''s other'")
    assert (await b.call("POST", f"/api/sandboxes/{row['id']}/pause")).code == 200
    await wait_status(b, str(row["id"]), "paused")
    resumed = await b.call("POST", f"/api/sandboxes/{first}/resume")
    assert resumed.code == 200, resumed
    await wait_status(b, first, "running")
    (started,) = await limited.db.query(
        "SELECT u.username FROM sandboxes s JOIN users u ON u.id = s.started_by WHERE s.id = %s",
        (first,),
    )
    assert started["username"] == "bob"


@pytest_twisted.ensureDeferred
async def test_concurrent_starts_never_exceed_a_limit(limited: Running) -> None:
    """Twelve creates at once by one person, then by three people in one workspace: exactly
    the allowed number pass, however the requests interleave."""
    a, b, c = [await person(limited, n) for n in ("ann", "bob", "cat")]
    own = await workspace(a, "own")
    burst = await gatherResults(
        [a.call("POST", f"/api/workspaces/{own}/sandboxes", {"name": f"s{n}"}) for n in range(12)]
    )
    assert Counter(r.code for r in burst) == {201: 2, 409: 10}
    assert await occupying(limited) == 2

    team = await workspace(b, "team")
    await b.add_member(team, c)
    await b.add_member(team, a)
    burst = await gatherResults(
        [
            client.call("POST", f"/api/workspaces/{team}/sandboxes", {"name": f"t{n}"})
            for n in range(4)
            for client in (a, b, c)
        ]
    )
    assert Counter(r.code for r in burst) == {201: 3, 409: 9}
    made = Counter(r.body["id"] for r in burst if r.code == 201)
    assert len(made) == 3
    (row,) = await limited.db.query(
        "SELECT count(*) AS n FROM sandboxes WHERE workspace_id = %s", (team,)
    )
    assert row["n"] == 3
    (row,) = await limited.db.query(
        "SELECT count(*) AS n FROM sandboxes s JOIN users u ON u.id = s.started_by"
        " WHERE u.username = 'ann'"
    )
    assert row["n"] == 2  # a had no slot left for the team: its 2 are in "own"
