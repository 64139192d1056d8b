"""The sandbox API and state machine against real PostgreSQL, with a FAKE backend (no
processes; the real one is exercised in test_process_backend.py)."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import attrs
import pytest_twisted
from twisted.internet.defer import gatherResults

from .conftest import Running, _reactor, server_config, start_server, stop_server
from .helpers import Api, wait_until


async def status_of(client: Api, sandbox_id: str) -> str | None:
    reply = await client.call("GET", f"/api/sandboxes/{sandbox_id}")
    return reply.body["status"] if reply.code == 200 else None


async def wait_status(client: Api, sandbox_id: str, wanted: str) -> None:
    async def reached() -> bool:
        return await status_of(client, sandbox_id) == wanted

    await wait_until(_reactor(), reached, timeout=10)


async def team(app: Running) -> tuple[dict[str, Api], str]:
    """owner, developer, guest and an outsider; one workspace."""
    people: dict[str, Api] = {"anonymous": app.client()}
    for name in ("owner", "maintainer", "developer", "guest", "outsider"):
        people[name] = app.client()
        await people[name].register_and_login(name)
    wid = (await people["owner"].call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    for name in ("maintainer", "developer", "guest"):
        await people["owner"].add_member(wid, people[name], name)
    return people, wid


@pytest_twisted.ensureDeferred
async def test_lifecycle(app: Running) -> None:
    """create -> running -> pause -> paused -> resume -> running -> delete, with 409s between."""
    people, wid = await team(app)
    dev = people["developer"]
    made = await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "first"})
    assert made.code == 201 and made.body["status"] == "creating"
    assert set(made.body) == {
        "id",
        "workspace_id",
        "name",
        "status",
        "error",
        "is_local",
        "created_at",
        "last_activity_at",
        "paused_at",
        "url",
        "usage",
        "short_id",
        "created_by",
        "started_at",
        "paused_by",
    }
    sid = made.body["id"]
    await wait_status(dev, sid, "running")
    again = await dev.call("POST", f"/api/sandboxes/{sid}/resume")
    assert (again.code, again.error_code, again.body["error"]["sandbox_status"]) == (
        409,
        "invalid_state",
        "running",
    )
    paused = await dev.call("POST", f"/api/sandboxes/{sid}/pause")
    assert paused.code == 200 and paused.body["status"] in ("pausing", "paused")
    await wait_status(dev, sid, "paused")
    twice = await dev.call("POST", f"/api/sandboxes/{sid}/pause")
    assert (twice.code, twice.body["error"]["sandbox_status"]) == (409, "paused")
    got = (await dev.call("GET", f"/api/sandboxes/{sid}")).body
    assert got["paused_at"] is not None
    resumed = await dev.call("POST", f"/api/sandboxes/{sid}/resume")
    assert resumed.code == 200
    await wait_status(dev, sid, "running")
    listed = await people["guest"].call("GET", f"/api/workspaces/{wid}/sandboxes")
    assert [s["id"] for s in listed.body] == [sid]
    spec = app.server.backend.specs[sid]
    assert spec.password not in str(listed.body) and spec.proxy_token not in str(listed.body)
    assert "password" not in str(listed.body)
    assert (await dev.call("DELETE", f"/api/sandboxes/{sid}")).code == 204
    assert (await dev.call("GET", f"/api/sandboxes/{sid}")).code == 404
    backend = app.server.backend
    assert sid not in backend.running and sid not in backend.specs


@pytest_twisted.ensureDeferred
async def test_failed_start_is_kept_and_retried(app: Running) -> None:
    """A failed start leaves the row failed with a readable error; resume retries it."""
    people, wid = await team(app)
    dev, backend = people["developer"], app.server.backend
    backend.fail_next = "opencode exited: port in use"
    sid = (await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "x"})).body["id"]
    await wait_status(dev, sid, "failed")
    failed = (await dev.call("GET", f"/api/sandboxes/{sid}")).body
    assert failed["error"] == "opencode exited: port in use"
    assert (await dev.call("POST", f"/api/sandboxes/{sid}/resume")).code == 200
    await wait_status(dev, sid, "running")
    assert (await dev.call("GET", f"/api/sandboxes/{sid}")).body["error"] is None


@pytest_twisted.ensureDeferred
async def test_each_start_rotates_the_proxy_token(app: Running) -> None:
    """Only a hash of the sandbox's proxy token is stored, and a resume issues a new one."""
    from cli_server.auth.tokens import token_hash

    people, wid = await team(app)
    dev, backend = people["developer"], app.server.backend
    sid = (await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "x"})).body["id"]
    await wait_status(dev, sid, "running")
    first = backend.specs[sid].proxy_token
    (row,) = await app.db.query("SELECT proxy_token_hash FROM sandboxes")
    assert bytes(row["proxy_token_hash"]) == token_hash(first)
    await dev.call("POST", f"/api/sandboxes/{sid}/pause")
    await wait_status(dev, sid, "paused")
    await dev.call("POST", f"/api/sandboxes/{sid}/resume")
    await wait_status(dev, sid, "running")
    assert backend.specs[sid].proxy_token != first
    assert backend.specs[sid].password == backend.specs[sid].password  # stable across runs


SANDBOX_ACTORS = ("anonymous", "outsider", "guest", "developer", "maintainer", "owner")
SANDBOX_CASES: list[tuple[str, str, Any, tuple[int, ...]]] = [
    ("GET", "/api/workspaces/{w}/sandboxes", None, (401, 404, 200, 200, 200, 200)),
    ("POST", "/api/workspaces/{w}/sandboxes", {"name": "n"}, (401, 404, 403, 201, 201, 201)),
    ("GET", "/api/sandboxes/{s}", None, (401, 404, 200, 200, 200, 200)),
    ("POST", "/api/sandboxes/{s}/pause", None, (401, 404, 403, 200, 200, 200)),
    ("POST", "/api/sandboxes/{p}/resume", None, (401, 404, 403, 200, 200, 200)),
    ("DELETE", "/api/sandboxes/{s}", None, (401, 404, 403, 204, 204, 204)),
    ("GET", "/api/sandboxes/{s}/logs", None, (401, 404, 403, 200, 200, 200)),
    (
        "GET",
        "/api/sandboxes/00000000-0000-4000-8000-000000000000",
        None,
        (401, 404, 404, 404, 404, 404),
    ),
    ("GET", "/api/sandboxes/not-an-id", None, (401, 404, 404, 404, 404, 404)),
]


@pytest_twisted.ensureDeferred
async def test_sandbox_authorization_matrix(app: Running) -> None:
    """Guests read, developers and up manage, outsiders see nothing, anonymous gets 401."""
    people, wid = await team(app)
    owner = people["owner"]
    mismatches = []
    for method, path, body, expected in SANDBOX_CASES:
        for actor, status in zip(SANDBOX_ACTORS, expected, strict=True):
            running = (
                await owner.call(
                    "POST", f"/api/workspaces/{wid}/sandboxes", {"name": f"r {uuid4()}"}
                )
            ).body["id"]
            paused = (
                await owner.call(
                    "POST", f"/api/workspaces/{wid}/sandboxes", {"name": f"p {uuid4()}"}
                )
            ).body["id"]
            await wait_status(owner, running, "running")
            await wait_status(owner, paused, "running")
            await owner.call("POST", f"/api/sandboxes/{paused}/pause")
            await wait_status(owner, paused, "paused")
            url = path.format(w=wid, s=running, p=paused)
            if body is not None and "name" in body:  # (names are unique in a workspace)
                body = {**body, "name": f"n {actor}"}
            reply = await people[actor].call(method, url, body)
            if reply.code != status:
                mismatches.append(f"{method} {path} as {actor}: {reply.code} != {status}")
    assert not mismatches, "\n".join(mismatches)


@pytest_twisted.ensureDeferred
async def test_bad_sandbox_input_changes_nothing(app: Running) -> None:
    """Empty, overlong, mistyped and hostile names and unknown workspaces are refused."""
    people, wid = await team(app)
    dev = people["developer"]
    path = f"/api/workspaces/{wid}/sandboxes"
    for body in [
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 101},
        {"name": 5},
        {},
        {"name": "a\u0000"},
        {"name": "\u202eabc"},
        {"name": ["x"]},
    ]:
        reply = await dev.call("POST", path, body)
        assert (reply.code, reply.body["error"].get("field")) == (400, "name"), (body, reply)
    assert (
        await dev.call("POST", path, raw=b"{oops", headers={"Content-Type": "application/json"})
    ).code == 400
    assert (
        await dev.call(
            "POST", path, raw=b"x" * (2 << 20), headers={"Content-Type": "application/json"}
        )
    ).code == 413
    for unknown in ["00000000-0000-4000-8000-000000000000", "nope"]:
        reply = await dev.call("POST", f"/api/workspaces/{unknown}/sandboxes", {"name": "n"})
        assert reply.code == 404
    assert await app.db.query("SELECT id FROM sandboxes") == []


@pytest_twisted.ensureDeferred
async def test_capacity(db_url: str) -> None:
    """Past --max-sandboxes, create and resume answer 503 with a clear message."""
    config = attrs.evolve(server_config(db_url), max_sandboxes=1)
    app = await start_server(db_url, config=config)
    try:
        people, wid = await team(app)
        dev = people["developer"]
        first = (await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "a"})).body
        await wait_status(dev, first["id"], "running")
        full = await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "b"})
        assert (full.code, full.error_code) == (503, "capacity")
        assert "--max-sandboxes" in full.body["error"]["message"]
        await dev.call("POST", f"/api/sandboxes/{first['id']}/pause")
        await wait_status(dev, first["id"], "paused")
        second = await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "b"})
        assert second.code == 201
        await wait_status(dev, second.body["id"], "running")
        blocked = await dev.call("POST", f"/api/sandboxes/{first['id']}/resume")
        assert (blocked.code, blocked.error_code) == (503, "capacity")
        assert await status_of(dev, first["id"]) == "paused"
    finally:
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_concurrent_pause_resume_delete(app: Running) -> None:
    """Racing operations on one sandbox leave a consistent outcome and no process behind."""
    people, wid = await team(app)
    dev, backend = people["developer"], app.server.backend
    for _ in range(5):
        sid = (await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "r"})).body["id"]
        await wait_status(dev, sid, "running")
        replies = await gatherResults(
            [
                dev.call("POST", f"/api/sandboxes/{sid}/pause"),
                dev.call("POST", f"/api/sandboxes/{sid}/resume"),
                dev.call("DELETE", f"/api/sandboxes/{sid}"),
                dev.call("POST", f"/api/sandboxes/{sid}/pause"),
            ]
        )
        codes = [r.code for r in replies]
        assert all(c in (200, 204, 404, 409) for c in codes), codes
        assert codes[2] == 204
        assert await status_of(dev, sid) is None
        await app.server.manager.drain()
        assert sid not in backend.running
    assert await app.db.query("SELECT id FROM sandboxes") == []


@pytest_twisted.ensureDeferred
async def test_delete_workspace_deletes_sandboxes_then_disk(app: Running) -> None:
    """Deleting a workspace stops and deletes its sandboxes, then removes its disk."""
    people, wid = await team(app)
    owner, backend = people["owner"], app.server.backend
    ids = []
    for name in ("a", "b"):
        sid = await owner.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": name})
        ids.append(sid.body["id"])
        await wait_status(owner, sid.body["id"], "running")
    assert (await owner.call("DELETE", f"/api/workspaces/{wid}")).code == 204
    deletes = [c for c in backend.calls if c[0] in ("delete", "delete_workspace")]
    assert deletes == [("delete", ids[0]), ("delete", ids[1]), ("delete_workspace", wid)]
    assert not backend.running and wid not in backend.disks
    assert await app.db.query("SELECT id FROM sandboxes") == []
