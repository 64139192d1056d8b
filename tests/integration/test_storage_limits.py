"""Issue 16, class 7 (disk): one account cannot make disk images without end — workspaces per
person, and sandboxes that exist (paused ones keep their home) per workspace, are capped.

Real PostgreSQL; a FAKE backend (no processes: the limits are counted in the database).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import attrs
import pytest_twisted
from twisted.internet.defer import gatherResults

from .conftest import Running, server_config, start_server, stop_server
from .test_sandbox_limits import person, running, workspace
from .test_sandboxes_api import wait_status


@pytest_twisted.async_yield_fixture
async def limited(db_url: str) -> AsyncIterator[Running]:
    """A server where one person may own 3 workspaces, and a workspace hold 2 sandboxes."""
    config = attrs.evolve(
        server_config(db_url), max_workspaces_per_user=3, max_sandboxes_stored_per_workspace=2
    )
    app = await start_server(db_url, config=config)
    yield app
    await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_workspaces_per_person(limited: Running) -> None:
    """The fourth workspace is refused with a sentence; giving one away does not make room;
    deleting one does; another person is not affected."""
    greedy = await person(limited, "greedy")
    first = await workspace(greedy, "w0")
    await workspace(greedy, "w1")
    await workspace(greedy, "w2")
    refused = await greedy.call("POST", "/api/workspaces", {"name": "w3"})
    assert (refused.code, refused.error_code) == (409, "user_workspace_limit")
    message = refused.body["error"]["message"]
    assert "limit of 3 per person" in message and "--max-workspaces-per-user" in message

    # Handing a workspace to a second account and leaving it still counts (created_by).
    puppet = await person(limited, "puppet")
    await greedy.add_member(first, puppet)
    (row,) = await limited.db.query("SELECT id FROM users WHERE username = 'puppet'")
    made_owner = await greedy.call(
        "PUT", f"/api/workspaces/{first}/members/{row['id']}", {"role": "owner"}
    )
    assert made_owner.code == 200, made_owner
    (me,) = await limited.db.query("SELECT id FROM users WHERE username = 'greedy'")
    left = await greedy.call("DELETE", f"/api/workspaces/{first}/members/{me['id']}")
    assert left.code == 204, left
    again = await greedy.call("POST", "/api/workspaces", {"name": "w3"})
    assert (again.code, again.error_code) == (409, "user_workspace_limit")

    (second,) = await limited.db.query(
        "SELECT id FROM workspaces WHERE name = 'w1' AND created_by = %s", (me["id"],)
    )
    assert (await greedy.call("DELETE", f"/api/workspaces/{second['id']}")).code == 204
    assert (await greedy.call("POST", "/api/workspaces", {"name": "w3"})).code == 201

    other = await person(limited, "other")
    assert (await other.call("POST", "/api/workspaces", {"name": "mine"})).code == 201


@pytest_twisted.ensureDeferred
async def test_concurrent_workspace_creates_never_pass_the_limit(limited: Running) -> None:
    """Ten creates at once by one person: exactly three workspaces."""
    greedy = await person(limited, "greedy")
    replies = await gatherResults(
        [greedy.call("POST", "/api/workspaces", {"name": f"w{n}"}) for n in range(10)]
    )
    assert Counter(r.code for r in replies) == {201: 3, 409: 7}
    (row,) = await limited.db.query(
        "SELECT count(*) AS n FROM workspaces w JOIN users u ON u.id = w.created_by"
        " WHERE u.username = 'greedy'"
    )
    assert row["n"] == 3


@pytest_twisted.ensureDeferred
async def test_paused_sandboxes_count_as_stored(limited: Running) -> None:
    """Create, pause, create again: the third sandbox of a workspace is refused although
    none runs; deleting one makes room; creates at once never pass the limit."""
    owner = await person(limited, "owner")
    wid = await workspace(owner, "w")
    made = []
    for name in ("a", "b"):
        sid = await running(owner, wid, name)
        assert (await owner.call("POST", f"/api/sandboxes/{sid}/pause")).code == 200
        await wait_status(owner, sid, "paused")
        made.append(sid)
    refused = await owner.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "c"})
    assert (refused.code, refused.error_code) == (409, "workspace_sandbox_storage_limit")
    message = refused.body["error"]["message"]
    assert "limit of 2" in message and "--max-sandboxes-stored-per-workspace" in message

    assert (await owner.call("DELETE", f"/api/sandboxes/{made[0]}")).code in (200, 202, 204)
    await running(owner, wid, "c")

    other = await workspace(owner, "x")
    replies = await gatherResults(
        [
            owner.call("POST", f"/api/workspaces/{other}/sandboxes", {"name": f"s{n}"})
            for n in range(6)
        ]
    )
    assert Counter(r.code for r in replies) == {201: 2, 409: 4}
