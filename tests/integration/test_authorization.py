"""Every route x every kind of caller -> the status DESIGN.md promises, against real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest_twisted
from attrs import frozen

from .conftest import Running
from .helpers import Api

ACTORS = ("anonymous", "non-member", "guest", "developer", "maintainer", "owner")


@frozen
class Case:
    name: str
    method: str
    path: str  # {w}: the workspace, {extra}: a developer nobody acts as, {me}: the caller
    body: Any
    expected: tuple[int, int, int, int, int, int]  # in ACTORS order


CASES = [
    Case("list workspaces", "GET", "/api/workspaces", None, (401, 200, 200, 200, 200, 200)),
    Case(
        "create workspace",
        "POST",
        "/api/workspaces",
        {"name": "new"},
        (401, 201, 201, 201, 201, 201),
    ),
    Case("get workspace", "GET", "/api/workspaces/{w}", None, (401, 404, 200, 200, 200, 200)),
    Case("delete workspace", "DELETE", "/api/workspaces/{w}", None, (401, 404, 403, 403, 403, 204)),
    Case(
        "list members", "GET", "/api/workspaces/{w}/members", None, (401, 404, 200, 200, 200, 200)
    ),
    Case(
        "add member as developer",
        "POST",
        "/api/workspaces/{w}/members",
        {"username": "newcomer", "role": "developer"},
        (401, 404, 403, 403, 201, 201),
    ),
    Case(
        "add member as guest",
        "POST",
        "/api/workspaces/{w}/members",
        {"username": "newcomer", "role": "guest"},
        (401, 404, 403, 403, 201, 201),
    ),
    Case(
        "add member as owner",
        "POST",
        "/api/workspaces/{w}/members",
        {"username": "newcomer", "role": "owner"},
        (401, 404, 403, 403, 403, 201),
    ),
    Case(
        "add existing member",
        "POST",
        "/api/workspaces/{w}/members",
        {"username": "extra", "role": "guest"},
        (401, 404, 403, 403, 409, 409),
    ),
    Case(
        "add unknown user",
        "POST",
        "/api/workspaces/{w}/members",
        {"username": "nobody-at-all", "role": "guest"},
        (401, 404, 403, 403, 404, 404),
    ),
    Case(
        "change a role",
        "PUT",
        "/api/workspaces/{w}/members/{extra}",
        {"role": "guest"},
        (401, 404, 403, 403, 403, 200),
    ),
    Case(
        "promote to owner",
        "PUT",
        "/api/workspaces/{w}/members/{extra}",
        {"role": "owner"},
        (401, 404, 403, 403, 403, 200),
    ),
    Case(
        "demote self",
        "PUT",
        "/api/workspaces/{w}/members/{me}",
        {"role": "guest"},
        (401, 404, 403, 403, 403, 409),
    ),
    Case(
        "remove a member",
        "DELETE",
        "/api/workspaces/{w}/members/{extra}",
        None,
        (401, 404, 403, 403, 403, 204),
    ),
    Case(
        "leave", "DELETE", "/api/workspaces/{w}/members/{me}", None, (401, 404, 204, 204, 204, 409)
    ),
    Case(
        "unknown workspace",
        "GET",
        "/api/workspaces/00000000-0000-4000-8000-000000000000",
        None,
        (401, 404, 404, 404, 404, 404),
    ),
    Case(
        "malformed workspace id",
        "GET",
        "/api/workspaces/not-a-uuid",
        None,
        (401, 404, 404, 404, 404, 404),
    ),
    Case(
        "unknown member",
        "PUT",
        "/api/workspaces/{w}/members/00000000-0000-4000-8000-000000000000",
        {"role": "guest"},
        (401, 404, 403, 403, 403, 404),
    ),
    Case(
        "agent code",
        "POST",
        "/api/workspaces/{w}/agent-code",
        None,
        (401, 404, 403, 201, 201, 201),
    ),
    Case(
        "agent code, unknown workspace",
        "POST",
        "/api/workspaces/00000000-0000-4000-8000-000000000000/agent-code",
        None,
        (401, 404, 404, 404, 404, 404),
    ),
    Case(
        "register an agent with a bogus code (a session is no substitute)",
        "POST",
        "/api/agent/register",
        {"code": "not-a-code", "name": "laptop"},
        (401, 401, 401, 401, 401, 401),
    ),
    Case(
        "pending invitations of a workspace",
        "GET",
        "/api/workspaces/{w}/invitations",
        None,
        (401, 404, 403, 403, 200, 200),
    ),
    Case("my invitations", "GET", "/api/invitations", None, (401, 200, 200, 200, 200, 200)),
    Case(
        "accept an unknown invitation",
        "POST",
        "/api/invitations/00000000-0000-4000-8000-000000000000/accept",
        None,
        (401, 404, 404, 404, 404, 404),
    ),
    Case(
        "decline an unknown invitation",
        "POST",
        "/api/invitations/00000000-0000-4000-8000-000000000000/decline",
        None,
        (401, 404, 404, 404, 404, 404),
    ),
    Case(
        "revoke an unknown invitation",
        "DELETE",
        "/api/invitations/00000000-0000-4000-8000-000000000000",
        None,
        (401, 404, 404, 404, 404, 404),
    ),
    Case("me", "GET", "/api/auth/me", None, (401, 200, 200, 200, 200, 200)),
    Case("providers", "GET", "/api/auth/providers", None, (200, 200, 200, 200, 200, 200)),
]


async def _people(app: Running) -> dict[str, Api]:
    people = {"anonymous": app.client()}
    for name in ACTORS[1:] + ("extra", "newcomer"):
        client = app.client()
        await client.register_and_login(name)
        people[name] = client
    return people


async def _fresh_workspace(people: dict[str, Api]) -> str:
    owner = people["owner"]
    made = await owner.call("POST", "/api/workspaces", {"name": f"matrix {uuid.uuid4()}"})
    assert made.code == 201, made
    wid = str(made.body["id"])
    for name, role in [
        ("guest", "guest"),
        ("developer", "developer"),
        ("maintainer", "maintainer"),
        ("extra", "developer"),
    ]:
        await owner.add_member(wid, people[name], role)
    return wid


@pytest_twisted.ensureDeferred
async def test_authorization_matrix(app: Running) -> None:
    """Each route answers each kind of caller with the promised status, on a fresh workspace."""
    people = await _people(app)
    mismatches = []
    for case in CASES:
        for actor, expected in zip(ACTORS, case.expected, strict=True):
            wid = await _fresh_workspace(people)
            client = people[actor]
            me = client.user["id"] if client.user else "00000000-0000-4000-8000-000000000000"
            assert people["extra"].user is not None
            path = case.path.format(w=wid, extra=people["extra"].user["id"], me=me)
            reply = await client.call(case.method, path, case.body)
            if reply.code != expected:
                mismatches.append(
                    f"{case.name} as {actor}: {reply.code} != {expected} {reply.body}"
                )
            elif reply.code >= 400:
                assert reply.error_code, f"{case.name} as {actor}: no error code in {reply.body}"
    assert not mismatches, "\n".join(mismatches)


@pytest_twisted.ensureDeferred
async def test_forbidden_changes_nothing(app: Running) -> None:
    """A refused request leaves members and roles exactly as they were."""
    people = await _people(app)
    wid = await _fresh_workspace(people)
    before = (await people["owner"].call("GET", f"/api/workspaces/{wid}/members")).body
    assert people["extra"].user is not None
    extra = people["extra"].user["id"]
    for actor in ("guest", "developer", "maintainer"):
        client = people[actor]
        await client.call("PUT", f"/api/workspaces/{wid}/members/{extra}", {"role": "owner"})
        await client.call("DELETE", f"/api/workspaces/{wid}/members/{extra}")
        await client.call("DELETE", f"/api/workspaces/{wid}")
        await client.call(
            "POST", f"/api/workspaces/{wid}/members", {"username": "newcomer", "role": "owner"}
        )
    after = (await people["owner"].call("GET", f"/api/workspaces/{wid}/members")).body
    assert after == before


@pytest_twisted.ensureDeferred
async def test_second_owner_can_then_leave(app: Running) -> None:
    """With two owners, one may step down or leave; the last one may not."""
    people = await _people(app)
    wid = await _fresh_workspace(people)
    owner, maintainer = people["owner"], people["maintainer"]
    assert maintainer.user is not None and owner.user is not None
    mid, oid = maintainer.user["id"], owner.user["id"]
    promoted = await owner.call("PUT", f"/api/workspaces/{wid}/members/{mid}", {"role": "owner"})
    assert promoted.code == 200 and promoted.body["role"] == "owner"
    left = await owner.call("DELETE", f"/api/workspaces/{wid}/members/{oid}")
    assert left.code == 204
    last = await maintainer.call("DELETE", f"/api/workspaces/{wid}/members/{mid}")
    assert (last.code, last.error_code) == (409, "last_owner")
    gone = await owner.call("GET", f"/api/workspaces/{wid}")
    assert gone.code == 404


@pytest_twisted.ensureDeferred
async def test_cross_origin_state_change_refused(app: Running) -> None:
    """A browser request from another origin (e.g. a sandbox page) cannot change state."""
    people = await _people(app)
    owner = people["owner"]
    for origin in ("http://evil.example", "http://oc-123.localhost:8080"):
        reply = await owner.call(
            "POST", "/api/workspaces", {"name": "x"}, headers={"Origin": origin}
        )
        assert (reply.code, reply.error_code) == (403, "bad_origin")
    own = await owner.call(
        "POST", "/api/workspaces", {"name": "x"}, headers={"Origin": "http://localhost:8080"}
    )
    assert own.code == 201
    listed = await owner.call("GET", "/api/workspaces", headers={"Origin": "http://evil.example"})
    assert listed.code == 200 and len(listed.body) == 1
    for origin in ("http://evil.example", "http://oc-123.localhost:8080"):
        code = await owner.call(
            "POST", f"/api/workspaces/{own.body['id']}/agent-code", headers={"Origin": origin}
        )
        assert (code.code, code.error_code) == (403, "bad_origin")
    assert await app.db.query("SELECT code_hash FROM agent_codes") == []
