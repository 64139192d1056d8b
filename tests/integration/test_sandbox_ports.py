"""``GET /api/sandboxes/{id}/ports`` against real PostgreSQL (FAKE backend): who may ask, and
what cloud and local sandboxes answer."""

from __future__ import annotations

import pytest_twisted

from cli_server.testing import FakeBackend
from cli_server.tunnel import frames

from .conftest import Running
from .test_agents_api import dial, local_sandbox, received
from .test_sandboxes_api import team, wait_status


@pytest_twisted.ensureDeferred
async def test_members_see_a_running_sandboxs_ports(app: Running) -> None:
    """Any member, guests too, sees the listening ports; others get 404 (no oracle), the
    signed-out 401; a paused sandbox answers 409 with its status."""
    people, wid = await team(app)
    made = await people["developer"].call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "x"})
    sid = made.body["id"]
    await wait_status(people["developer"], sid, "running")
    backend = app.server.backend
    assert isinstance(backend, FakeBackend)
    backend.listening[sid] = [5173, 8000]

    for who in ("owner", "maintainer", "developer", "guest"):
        reply = await people[who].call("GET", f"/api/sandboxes/{sid}/ports")
        assert (reply.code, reply.body) == (200, {"ports": [5173, 8000], "listed": True}), who
    assert (await people["outsider"].call("GET", f"/api/sandboxes/{sid}/ports")).code == 404
    assert (await people["anonymous"].call("GET", f"/api/sandboxes/{sid}/ports")).code == 401
    bad = await people["owner"].call("GET", "/api/sandboxes/not-an-id/ports")
    assert bad.code in (400, 404), bad

    assert (await people["owner"].call("POST", f"/api/sandboxes/{sid}/pause")).code == 200
    await wait_status(people["owner"], sid, "paused")
    paused = await people["guest"].call("GET", f"/api/sandboxes/{sid}/ports")
    assert (paused.code, paused.error_code) == (409, "invalid_state")
    assert paused.body["error"]["sandbox_status"] == "paused"
    assert "ports" in paused.body["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_a_local_sandbox_answers_its_shared_ports(app: Running) -> None:
    """A local sandbox lists the ports its laptop shares (its agent's ``--allow-port``, in
    its hello), sorted, with ``shared_only``; offline, it answers 409."""
    people, wid = await team(app)
    sid, token = await local_sandbox(app, people["developer"], wid)
    offline = await people["guest"].call("GET", f"/api/sandboxes/{sid}/ports")
    assert (offline.code, offline.body["error"]["sandbox_status"]) == (409, "offline")

    peer = await dial(app, sid, token)
    assert peer.did_open, "the WebSocket handshake failed"
    peer.send(frames.encode("hello", versions=[2], agent="test", ports=[8000, 5173]))
    await received(peer, "welcome")
    try:
        await wait_status(people["guest"], sid, "running")
        reply = await people["guest"].call("GET", f"/api/sandboxes/{sid}/ports")
        assert (reply.code, reply.body) == (
            200,
            {"ports": [5173, 8000], "listed": True, "shared_only": True},
        )
    finally:
        peer.transport.loseConnection()
