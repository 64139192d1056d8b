"""``GET /api/workspaces/{id}`` names what deleting the workspace takes with it: how many
sandboxes and how many of them run (the dashboard's delete confirmation shows both). Against
real PostgreSQL with the in-process server's sandbox backend."""

from __future__ import annotations

import pytest_twisted

from .conftest import Running
from .test_sandboxes_api import team, wait_status

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest_twisted.ensureDeferred
async def test_sandbox_counts_follow_the_sandboxes(app: Running) -> None:
    people, wid = await team(app)
    owner = people["owner"]
    empty = await owner.call("GET", f"/api/workspaces/{wid}")
    assert empty.code == 200
    assert empty.body["sandbox_counts"] == {"total": 0, "running": 0}

    ids = []
    for name in ("one", "two", "three"):
        made = await owner.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": name})
        assert made.code == 201, made
        ids.append(made.body["id"])
    for sid in ids:
        await wait_status(owner, sid, "running")
    paused = await owner.call("POST", f"/api/sandboxes/{ids[0]}/pause")
    assert paused.code == 200, paused
    await wait_status(owner, ids[0], "paused")

    # Every member sees the same counts (the numbers are no secret inside the workspace).
    for who in ("owner", "maintainer", "developer", "guest"):
        reply = await people[who].call("GET", f"/api/workspaces/{wid}")
        assert reply.code == 200, (who, reply)
        assert reply.body["sandbox_counts"] == {"total": 3, "running": 2}, (who, reply.body)
        assert reply.body["id"] == wid and reply.body["name"]

    # Other workspaces' sandboxes do not count.
    other = (await owner.call("POST", "/api/workspaces", {"name": "other"})).body["id"]
    reply = await owner.call("GET", f"/api/workspaces/{other}")
    assert reply.body["sandbox_counts"] == {"total": 0, "running": 0}


@pytest_twisted.ensureDeferred
async def test_sandbox_counts_leak_nothing_to_outsiders(app: Running) -> None:
    people, wid = await team(app)
    made = await people["owner"].call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "x"})
    assert made.code == 201, made
    for who, path, code in [
        ("outsider", f"/api/workspaces/{wid}", 404),
        ("anonymous", f"/api/workspaces/{wid}", 401),
        ("owner", f"/api/workspaces/{UNKNOWN}", 404),
        ("owner", "/api/workspaces/not-an-id", 404),
    ]:
        reply = await people[who].call("GET", path)
        assert reply.code == code, (who, path, reply)
        assert "sandbox_counts" not in (reply.body or {}), reply.body
