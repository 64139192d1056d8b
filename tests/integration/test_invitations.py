"""Issue 16, class 9: nobody becomes a member of a workspace without accepting.

The attack: someone adds a registered user to a workspace they control, so that its sandboxes
and local agents show up in the victim's dashboard as a lure. Against real PostgreSQL, with a
FAKE sandbox backend (the membership rules do not depend on processes).
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest_twisted
from twisted.internet.defer import gatherResults

from .conftest import Running, server_config, start_server, stop_server
from .helpers import Api
from .test_sandboxes_api import wait_status

UNKNOWN = "00000000-0000-4000-8000-000000000000"


async def people(app: Running, *names: str) -> dict[str, Api]:
    clients = {}
    for name in names:
        clients[name] = app.client()
        await clients[name].register_and_login(name)
    return clients


async def lure(attacker: Api, victim: Api) -> tuple[str, str, str]:
    """A workspace with a running sandbox to which the attacker adds the victim; the victim
    must see none of it. Returns (workspace id, sandbox id, invitation id)."""
    wid = (await attacker.call("POST", "/api/workspaces", {"name": "Totally legit"})).body["id"]
    made = await attacker.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "trap"})
    assert made.code == 201, made
    await wait_status(attacker, made.body["id"], "running")
    added = await attacker.call(
        "POST", f"/api/workspaces/{wid}/members", {"username": "victim", "role": "developer"}
    )
    assert added.code == 201, added
    await sees_nothing(victim, wid, made.body["id"])
    assert added.body["status"] == "invited", added.body
    return wid, made.body["id"], added.body["invitation_id"]


async def sees_nothing(victim: Api, wid: str, sid: str) -> None:
    """Every way in answers as if the workspace did not exist."""
    listed = await victim.call("GET", "/api/workspaces")
    assert (listed.code, listed.body) == (200, [])
    for method, path in [
        ("GET", f"/api/workspaces/{wid}"),
        ("GET", f"/api/workspaces/{wid}/members"),
        ("GET", f"/api/workspaces/{wid}/invitations"),
        ("GET", f"/api/workspaces/{wid}/sandboxes"),
        ("GET", f"/api/workspaces/{wid}/usage"),
        ("POST", f"/api/workspaces/{wid}/sandboxes"),
        ("POST", f"/api/workspaces/{wid}/agent-code"),
        ("GET", f"/api/sandboxes/{sid}"),
        ("POST", f"/api/sandboxes/{sid}/open"),
        ("POST", f"/api/sandboxes/{sid}/pause"),
        ("DELETE", f"/api/sandboxes/{sid}"),
    ]:
        body = {"name": "x"} if method == "POST" else None
        reply = await victim.call(method, path, body)
        assert reply.code == 404, (method, path, reply)


async def rows(app: Running, table: str, user_id: str) -> list[Any]:
    return await app.db.query(f"SELECT * FROM {table} WHERE user_id = %s", (user_id,))


@pytest_twisted.ensureDeferred
async def test_added_victim_sees_nothing_until_accepting(app: Running) -> None:
    """The attacker's add is only an invitation: the victim's dashboard and API show no
    workspace, sandbox or agent of it; the attacker sees the invitation, not the account."""
    p = await people(app, "attacker", "victim")
    attacker, victim = p["attacker"], p["victim"]
    assert victim.user is not None
    wid, sid, iid = await lure(attacker, victim)
    assert await rows(app, "workspace_members", victim.user["id"]) == []

    members = (await attacker.call("GET", f"/api/workspaces/{wid}/members")).body
    assert [m["username"] for m in members] == ["attacker"]
    (pending,) = (await attacker.call("GET", f"/api/workspaces/{wid}/invitations")).body
    assert pending["id"] == iid and pending["username"] == "victim"
    assert set(pending) == {"id", "username", "role", "invited_by", "created_at", "expires_at"}

    (mine,) = (await victim.call("GET", "/api/invitations")).body
    assert mine["id"] == iid
    assert (mine["workspace_name"], mine["invited_by"], mine["role"]) == (
        "Totally legit",
        "attacker",
        "developer",
    )
    assert mine["created_at"] and mine["expires_at"] > mine["created_at"]


@pytest_twisted.ensureDeferred
async def test_decline_leaves_nothing(app: Running) -> None:
    """After declining, no row ties the victim to the workspace and nothing can be replayed."""
    p = await people(app, "attacker", "victim")
    attacker, victim = p["attacker"], p["victim"]
    assert victim.user is not None
    wid, sid, iid = await lure(attacker, victim)
    declined = await victim.call("POST", f"/api/invitations/{iid}/decline")
    assert declined.code == 204, declined
    assert (await victim.call("GET", "/api/invitations")).body == []
    await sees_nothing(victim, wid, sid)
    assert await rows(app, "workspace_members", victim.user["id"]) == []
    assert await rows(app, "workspace_invitations", victim.user["id"]) == []
    assert (await attacker.call("GET", f"/api/workspaces/{wid}/invitations")).body == []
    for verb in ("accept", "decline"):
        again = await victim.call("POST", f"/api/invitations/{iid}/{verb}")
        assert (again.code, again.error_code) == (404, "invitation_not_found")


@pytest_twisted.ensureDeferred
async def test_accept_joins_with_the_invited_role(app: Running) -> None:
    """Accepting makes the invitee a member with the role offered, once."""
    p = await people(app, "owner", "invitee")
    owner, invitee = p["owner"], p["invitee"]
    wid = (await owner.call("POST", "/api/workspaces", {"name": "team"})).body["id"]
    invited = await owner.call(
        "POST", f"/api/workspaces/{wid}/members", {"username": "INVITEE", "role": "guest"}
    )
    iid = invited.body["invitation_id"]
    accepted = await invitee.call("POST", f"/api/invitations/{iid}/accept")
    assert accepted.code == 200, accepted
    assert (accepted.body["id"], accepted.body["role"]) == (wid, "guest")
    assert [w["id"] for w in (await invitee.call("GET", "/api/workspaces")).body] == [wid]
    members = (await owner.call("GET", f"/api/workspaces/{wid}/members")).body
    assert {m["username"]: m["role"] for m in members} == {"owner": "owner", "invitee": "guest"}
    assert (await owner.call("GET", f"/api/workspaces/{wid}/invitations")).body == []
    twice = await invitee.call("POST", f"/api/invitations/{iid}/accept")
    assert (twice.code, twice.error_code) == (404, "invitation_not_found")
    member_again = await owner.call(
        "POST", f"/api/workspaces/{wid}/members", {"username": "invitee"}
    )
    assert (member_again.code, member_again.error_code) == (409, "already_member")


@pytest_twisted.ensureDeferred
async def test_invitation_ids_are_no_oracle(app: Running) -> None:
    """Someone else's invitation answers exactly like an unknown one, and stays untouched."""
    p = await people(app, "owner", "victim", "thief")
    owner, victim, thief = p["owner"], p["victim"], p["thief"]
    wid = (await owner.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    iid = (await owner.call("POST", f"/api/workspaces/{wid}/members", {"username": "victim"})).body[
        "invitation_id"
    ]
    answers = set()
    for target in (iid, UNKNOWN, "not-a-uuid"):
        for method, suffix in [("POST", "/accept"), ("POST", "/decline"), ("DELETE", "")]:
            reply = await thief.call(method, f"/api/invitations/{target}{suffix}")
            answers.add((reply.code, reply.error_code, reply.body["error"]["message"]))
    assert answers == {(404, "invitation_not_found", "no such invitation")}
    assert (await thief.call("GET", "/api/invitations")).body == []
    assert (await thief.call("GET", "/api/workspaces")).body == []
    assert [i["id"] for i in (await victim.call("GET", "/api/invitations")).body] == [iid]


@pytest_twisted.ensureDeferred
async def test_roles_reinvite_and_revoke(app: Running) -> None:
    """Maintainers invite (never as owner); inviting again is idempotent; the inviter or an
    owner revokes, another maintainer cannot, developers and outsiders cannot even see it."""
    p = await people(app, "owner", "maint", "maint2", "dev", "newcomer", "outsider")
    owner, maint = p["owner"], p["maint"]
    wid = (await owner.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    await owner.add_member(wid, maint, "maintainer")
    await owner.add_member(wid, p["maint2"], "maintainer")
    await owner.add_member(wid, p["dev"], "developer")
    path = f"/api/workspaces/{wid}/members"

    as_owner = await maint.call("POST", path, {"username": "newcomer", "role": "owner"})
    assert (as_owner.code, as_owner.error_code) == (403, "forbidden")
    by_dev = await p["dev"].call("POST", path, {"username": "newcomer", "role": "guest"})
    assert by_dev.code == 403
    assert (await p["dev"].call("GET", f"/api/workspaces/{wid}/invitations")).code == 403

    first = await maint.call("POST", path, {"username": "newcomer", "role": "guest"})
    again = await maint.call("POST", path, {"username": "newcomer", "role": "developer"})
    assert (first.code, again.code) == (201, 200)
    assert first.body["invitation_id"] == again.body["invitation_id"]
    iid = first.body["invitation_id"]
    (pending,) = (await owner.call("GET", f"/api/workspaces/{wid}/invitations")).body
    assert (pending["role"], pending["invited_by"]) == ("developer", "maint")
    assert [i["role"] for i in (await p["newcomer"].call("GET", "/api/invitations")).body] == [
        "developer"
    ]

    for who, code in [("maint2", 403), ("dev", 404), ("outsider", 404)]:
        reply = await p[who].call("DELETE", f"/api/invitations/{iid}")
        assert reply.code == code, (who, reply)
    assert len((await p["newcomer"].call("GET", "/api/invitations")).body) == 1
    revoked = await maint.call("DELETE", f"/api/invitations/{iid}")
    assert revoked.code == 204
    assert (await p["newcomer"].call("GET", "/api/invitations")).body == []
    late = await p["newcomer"].call("POST", f"/api/invitations/{iid}/accept")
    assert late.code == 404

    by_maint = await maint.call("POST", path, {"username": "newcomer"})
    by_owner = await owner.call("DELETE", f"/api/invitations/{by_maint.body['invitation_id']}")
    assert by_owner.code == 204
    assert await app.db.query("SELECT id FROM workspace_invitations") == []


@pytest_twisted.ensureDeferred
async def test_expired_invitation_is_gone(app: Running) -> None:
    """Past its expiry an invitation cannot be accepted or seen; inviting again makes a new one."""
    p = await people(app, "owner", "late")
    owner, late = p["owner"], p["late"]
    wid = (await owner.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    path = f"/api/workspaces/{wid}/members"
    iid = (await owner.call("POST", path, {"username": "late"})).body["invitation_id"]
    (row,) = await app.db.query(
        "SELECT expires_at - created_at AS lifetime FROM workspace_invitations"
    )
    assert row["lifetime"].days == 14
    await app.db.execute(
        "UPDATE workspace_invitations SET expires_at = now() - interval '1 second'"
    )
    assert (await late.call("GET", "/api/invitations")).body == []
    assert (await owner.call("GET", f"/api/workspaces/{wid}/invitations")).body == []
    assert (await late.call("POST", f"/api/invitations/{iid}/accept")).code == 404
    assert (await late.call("GET", f"/api/workspaces/{wid}")).code == 404
    await app.server.root.getServiceNamed("housekeeping").run_now()
    assert await app.db.query("SELECT id FROM workspace_invitations") == []
    fresh = await owner.call("POST", path, {"username": "late"})
    assert fresh.code == 201 and fresh.body["invitation_id"] != iid
    assert (
        await late.call("POST", f"/api/invitations/{fresh.body['invitation_id']}/accept")
    ).code == 200


@pytest_twisted.ensureDeferred
async def test_accept_races_revoke(app: Running) -> None:
    """Accept and revoke at once: either the invitee is a member or nothing is left, never an
    invitation beside a membership."""
    p = await people(app, "owner", "racer")
    owner, racer = p["owner"], p["racer"]
    assert racer.user is not None
    wid = (await owner.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    for _ in range(5):
        iid = (
            await owner.call("POST", f"/api/workspaces/{wid}/members", {"username": "racer"})
        ).body["invitation_id"]
        accepted, revoked = await gatherResults(
            [
                racer.call("POST", f"/api/invitations/{iid}/accept"),
                owner.call("DELETE", f"/api/invitations/{iid}"),
            ]
        )
        member = await rows(app, "workspace_members", racer.user["id"])
        assert await rows(app, "workspace_invitations", racer.user["id"]) == []
        assert accepted.code in (200, 404) and revoked.code in (204, 404)
        assert bool(member) == (accepted.code == 200)
        if member:
            await owner.call("DELETE", f"/api/workspaces/{wid}/members/{racer.user['id']}")


async def register(app: Running, name: str, email: str) -> Api:
    client = app.client()
    made = await client.call(
        "POST", "/api/auth/register", {"username": name, "password": "pw123456", "email": email}
    )
    assert made.code == 201, made
    logged = await client.call(
        "POST", "/api/auth/login", {"username": name, "password": "pw123456"}
    )
    assert logged.code == 200, logged
    client.user = logged.body
    return client


@pytest_twisted.ensureDeferred
async def test_direct_members_within_a_domain(db_url: str) -> None:
    """--direct-members corp.example: a colleague of that domain is added at once; anyone
    from outside, or anyone added by an outsider, is still only invited."""
    config = attrs.evolve(server_config(db_url), direct_members=("corp.example",))
    app = await start_server(db_url, config=config)
    try:
        alice = await register(app, "alice", "alice@corp.example")
        await register(app, "bob", "bob@CORP.example")
        await register(app, "eve", "eve@elsewhere.example")
        await register(app, "carol", "carol@sub.corp.example")
        mallory = await register(app, "mallory", "mallory@elsewhere.example")
        wid = (await alice.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
        path = f"/api/workspaces/{wid}/members"
        bob = await alice.call("POST", path, {"username": "bob", "role": "guest"})
        assert bob.code == 201 and bob.body["status"] == "member" and bob.body["role"] == "guest"
        for name in ("eve", "carol"):
            other = await alice.call("POST", path, {"username": name})
            assert other.body["status"] == "invited", (name, other)
        lure = (await mallory.call("POST", "/api/workspaces", {"name": "trap"})).body["id"]
        reply = await mallory.call("POST", f"/api/workspaces/{lure}/members", {"username": "alice"})
        assert reply.body["status"] == "invited"
        assert [w["id"] for w in (await alice.call("GET", "/api/workspaces")).body] == [wid]
    finally:
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_direct_members_everyone(db_url: str) -> None:
    """--direct-members '*' restores direct adds for everyone (a single trusted team)."""
    config = attrs.evolve(server_config(db_url), direct_members=("*",))
    app = await start_server(db_url, config=config)
    try:
        p = await people(app, "owner", "friend")
        wid = (await p["owner"].call("POST", "/api/workspaces", {"name": "w"})).body["id"]
        added = await p["owner"].call(
            "POST", f"/api/workspaces/{wid}/members", {"username": "friend"}
        )
        assert (added.code, added.body["status"]) == (201, "member")
        assert [w["id"] for w in (await p["friend"].call("GET", "/api/workspaces")).body] == [wid]
    finally:
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_invitations_end_with_their_senders_rights(app: Running) -> None:
    """A maintainer demoted or removed can no longer bring anyone in through invitations
    sent before: those beyond their new role are withdrawn at once."""
    p = await people(app, "owner", "maint", "friend", "pal")
    owner, maint = p["owner"], p["maint"]
    assert maint.user is not None
    wid = (await owner.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    await owner.add_member(wid, maint, "maintainer")
    path = f"/api/workspaces/{wid}/members"
    sent = await maint.call("POST", path, {"username": "friend", "role": "maintainer"})
    kept = await owner.call("POST", path, {"username": "pal", "role": "developer"})
    assert sent.code == kept.code == 201
    member = f"{path}/{maint.user['id']}"
    assert (await owner.call("PUT", member, {"role": "developer"})).code == 200
    assert (await p["friend"].call("GET", "/api/invitations")).body == []
    late = await p["friend"].call("POST", f"/api/invitations/{sent.body['invitation_id']}/accept")
    assert late.code == 404
    assert len((await p["pal"].call("GET", "/api/invitations")).body) == 1

    assert (await owner.call("PUT", member, {"role": "owner"})).code == 200
    as_owner = await maint.call("POST", path, {"username": "friend", "role": "owner"})
    assert as_owner.code == 201
    assert (await owner.call("PUT", member, {"role": "maintainer"})).code == 200
    assert (await p["friend"].call("GET", "/api/invitations")).body == []
    as_dev = await maint.call("POST", path, {"username": "friend", "role": "developer"})
    assert as_dev.code == 201
    (pending,) = (await p["friend"].call("GET", "/api/invitations")).body
    assert pending["role"] == "developer"
    assert (await owner.call("DELETE", member)).code == 204
    assert (await p["friend"].call("GET", "/api/invitations")).body == []
    assert len((await p["pal"].call("GET", "/api/invitations")).body) == 1
