"""The audit log against the real server (FAKE sandbox backend): a row per action with the
right actor, target, workspace and address; the workspace route's roles, filters and pages;
append-only in the database; no secret in any row; ``cli-server audit`` reading it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import attrs
import psycopg2
import pytest
import pytest_twisted

from cli_server.config import OidcLogin
from cli_server.db.embedded import EmbeddedPostgres
from cli_server.domain.audit import ACTIONS as ACTION_NAMES
from cli_server.domain.audit import Action, Actor, AuditLog, Note, SecretInDetails

from .conftest import Running, _reactor, server_config, start_server, stop_server
from .helpers import Api, wait_until
from .oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    Browser,
    OidcProvider,
    oidc_provider,
    query_of,
)

pytestmark = pytest.mark.integration
__all__ = ["oidc_provider"]  # (the fixture, imported for this module)

PASSWORD = "correct-horse-battery"
FORWARDED = "203.0.113.7"  # the client a trusted proxy (127.0.0.1) says it forwarded for


@pytest_twisted.async_yield_fixture
async def proxied(db_url: str) -> AsyncIterator[Running]:
    """The server behind a reverse proxy it trusts (every client comes from 127.0.0.1)."""
    config = attrs.evolve(server_config(db_url), trusted_proxies=(ip_network("127.0.0.1/32"),))
    running = await start_server(db_url, config=config)
    yield running
    await stop_server(running)


async def user(app: Running, name: str, password: str = PASSWORD, **headers: str) -> Api:
    client = app.client()
    made = await client.call("POST", "/api/auth/register", {"username": name, "password": password})
    assert made.code == 201, made
    logged = await client.call(
        "POST", "/api/auth/login", {"username": name, "password": password}, headers=headers
    )
    assert logged.code == 200, logged
    client.user = logged.body
    return client


async def rows(app: Running, where: str = "true", args: Any = ()) -> list[dict[str, Any]]:
    return await app.db.query(f"SELECT * FROM audit_log WHERE {where} ORDER BY id", args)


async def running(client: Api, sid: str) -> None:
    async def reached() -> bool:
        got = await client.call("GET", f"/api/sandboxes/{sid}")
        return bool(got.body["status"] == "running")

    await wait_until(_reactor(), reached, timeout=10)


@attrs.define
class Story:
    """What ``act_everything`` did, for the assertions."""

    owner: Api
    dev: Api
    guest: Api
    workspace: str
    sandbox: str
    gone_workspace: str
    agent_sandbox: str
    secrets: list[str]


async def act_everything(app: Running) -> Story:
    """Every audited action once, through the API as people use it."""
    secrets = [PASSWORD, "a-new-password-1", "wrong-password-9"]
    owner = await user(app, "owner")
    dev = await user(app, "dev")
    guest = await user(app, "guest")
    for client in (owner, dev, guest):
        secrets += [c.value for c in client.jar if c.value]
    # a sign-in from behind the proxy: the forwarded client's address is recorded
    behind = app.client()
    logged = await behind.call(
        "POST",
        "/api/auth/login",
        {"username": "dev", "password": PASSWORD},
        headers={"X-Forwarded-For": FORWARDED},
    )
    assert logged.code == 200
    secrets += [c.value for c in behind.jar if c.value]
    for name, password in (("owner", "wrong-password-9"), ("nobody", "wrong-password-9")):
        failed = await app.client().call(
            "POST", "/api/auth/login", {"username": name, "password": password}
        )
        assert failed.code == 401
    made = await owner.call("POST", "/api/workspaces", {"name": "Team"})
    wid = made.body["id"]
    invited = await owner.call(
        "POST", f"/api/workspaces/{wid}/members", {"username": "dev", "role": "developer"}
    )
    accepted = await dev.call("POST", f"/api/invitations/{invited.body['invitation_id']}/accept")
    assert accepted.code == 200
    invited = await owner.call(
        "POST", f"/api/workspaces/{wid}/members", {"username": "guest", "role": "guest"}
    )
    declined = await guest.call("POST", f"/api/invitations/{invited.body['invitation_id']}/decline")
    assert declined.code == 204
    await owner.add_member(wid, guest, "guest")
    role = await owner.call(
        "PUT", f"/api/workspaces/{wid}/members/{dev.user['id']}", {"role": "maintainer"}
    )
    assert role.code == 200
    sandbox = await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "box"})
    sid = sandbox.body["id"]
    await running(dev, sid)
    assert (await dev.call("POST", f"/api/sandboxes/{sid}/pause")).code == 200
    assert (await dev.call("POST", f"/api/sandboxes/{sid}/resume")).code == 200
    for body in (None, {"port": 5173}):
        opened = await guest.call("POST", f"/api/sandboxes/{sid}/open", body)
        assert opened.code == 200, opened
        secrets += parse_qs(urlsplit(opened.body["url"]).query)["ticket"]
    code = await dev.call("POST", f"/api/workspaces/{wid}/agent-code")
    assert code.code == 201
    secrets.append(code.body["code"])
    agent = await app.client().call(
        "POST",
        "/api/agent/register",
        {"code": code.body["code"], "name": "laptop", "use_server_key": True},
    )
    assert agent.code == 201, agent
    secrets += [agent.body["tunnel_token"], agent.body["anthropic"]["api_key"]]
    # the agent's registrant loses the developer role: its agent is revoked (by the server)
    demoted = await owner.call(
        "PUT", f"/api/workspaces/{wid}/members/{dev.user['id']}", {"role": "guest"}
    )
    assert demoted.code == 200
    # an API token of the owner's for this workspace, used once, then revoked
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    token = await owner.call(
        "POST",
        "/api/auth/tokens",
        {"name": "ci", "scope": "write", "workspace_id": wid, "expires_at": expires},
    )
    assert token.code == 201, token
    secrets.append(token.body["token"])
    budget = await app.client().call(
        "PUT",
        f"/api/workspaces/{wid}/budget",
        {"monthly_tokens": 1000},
        headers={"Authorization": f"Bearer {token.body['token']}"},
    )
    assert budget.code == 200, budget
    gone = await owner.call("DELETE", f"/api/auth/tokens/{token.body['id']}")
    assert gone.code == 204
    changed = await guest.call(
        "PUT",
        "/api/auth/password",
        {"current_password": PASSWORD, "new_password": "a-new-password-1"},
    )
    assert changed.code == 204
    # the instance admin (the first account) at work
    uid = guest.user["id"]
    for path in ("disable", "enable"):
        assert (await owner.call("POST", f"/api/admin/users/{uid}/{path}")).code == 204
    reset = await owner.call("POST", f"/api/admin/users/{uid}/password")
    secrets.append(reset.body["password"])
    link = await owner.call("POST", "/api/admin/signup-links")
    secrets.append(link.body["url"].rpartition("=")[2])
    links = await owner.call("GET", "/api/admin/signup-links")
    revoked = await owner.call("DELETE", f"/api/admin/signup-links/{links.body[0]['id']}")
    assert revoked.code == 204
    removed = await owner.call("DELETE", f"/api/workspaces/{wid}/members/{uid}")
    assert removed.code == 204
    assert (await owner.call("DELETE", f"/api/sandboxes/{sid}")).code == 204
    other = await owner.call("POST", "/api/workspaces", {"name": "Doomed"})
    assert (await owner.call("DELETE", f"/api/workspaces/{other.body['id']}")).code == 204
    assert (await dev.call("POST", "/api/auth/logout")).code == 204
    return Story(owner, dev, guest, wid, sid, other.body["id"], agent.body["sandbox_id"], secrets)


@pytest_twisted.ensureDeferred
async def test_a_row_per_action(proxied: Running) -> None:
    """Each action once: its row names the actor, the target (as it was named), the
    workspace and the client's address (the forwarded one behind the trusted proxy)."""
    story = await act_everything(proxied)
    owner, dev, guest = (str(c.user["id"]) for c in (story.owner, story.dev, story.guest))
    wid, sid = story.workspace, story.sandbox
    found = await rows(proxied)

    def one(action: str, **expected: Any) -> dict[str, Any]:
        matching = [
            r
            for r in found
            if r["action"] == action
            and all(
                str(r[k]) == str(v) if v is not None else r[k] is None for k, v in expected.items()
            )
        ]
        assert matching, (action, expected, [r for r in found if r["action"] == action])
        return matching[0]

    local = "127.0.0.1"
    one("auth.sign_in", actor_id=owner, actor_name="owner", target_id=owner, address=local)
    one("auth.sign_in", actor_id=dev, address=FORWARDED)
    one("auth.sign_in_failed", actor_id=owner, actor_name="owner", address=local)
    one("auth.sign_in_failed", actor_id=None, actor_name="nobody")
    one("auth.sign_out", actor_id=dev)
    one("auth.password_changed", actor_id=guest, target_id=guest)
    one("workspace.created", actor_id=owner, workspace_id=wid, target_name="Team")
    one(
        "workspace.deleted", actor_id=owner, workspace_id=story.gone_workspace, target_name="Doomed"
    )
    budget = one("workspace.budget_changed", actor_id=owner, workspace_id=wid)
    made = one("token.created", actor_id=owner, workspace_id=wid, target_name="ci")
    assert made["details"]["scope"] == "write"
    assert budget["details"]["via"] == f"api_token {made['target_id']}"
    one("token.revoked", actor_id=owner, target_id=made["target_id"], target_name="ci")
    one("member.invited", actor_id=owner, workspace_id=wid, target_name="dev")
    one("invitation.accepted", actor_id=dev, workspace_id=wid)
    one("invitation.declined", actor_id=guest, workspace_id=wid)
    one("member.role_changed", actor_id=owner, workspace_id=wid, target_id=dev, target_name="dev")
    one("member.removed", actor_id=owner, workspace_id=wid, target_id=guest, target_name="guest")
    for action in ("created", "paused", "resumed", "deleted"):
        one(f"sandbox.{action}", workspace_id=wid, target_id=sid, target_name="box")
    opened = [r for r in found if r["action"] == "sandbox.opened"]
    assert [r["details"].get("port") for r in opened] == [None, 5173]
    assert all(str(r["actor_id"]) == guest and r["target_name"] == "box" for r in opened)
    one("agent.code_created", actor_id=dev, workspace_id=wid)
    one(
        "agent.registered",
        actor_id=dev,
        actor_name="dev",
        workspace_id=wid,
        target_id=story.agent_sandbox,
        target_name="laptop",
        address=local,
    )
    one("agent.revoked", actor_id=None, workspace_id=wid, target_id=story.agent_sandbox)
    for action in ("user_disabled", "user_enabled", "password_reset"):
        one(f"admin.{action}", actor_id=owner, target_id=guest, target_name="guest")
    one("admin.signup_link_created", actor_id=owner)
    one("admin.signup_link_revoked", actor_id=owner)
    assert all(r["action"] in ACTION_NAMES for r in found)


@pytest_twisted.ensureDeferred
async def test_no_secret_in_any_row(proxied: Running) -> None:
    """Passwords, session cookies, tickets, agent codes and tokens, reset passwords and
    sign-up links: none of them anywhere in the log."""
    story = await act_everything(proxied)
    dump = json.dumps(await rows(proxied), default=str)
    assert len(story.secrets) > 10
    for secret in story.secrets:
        assert secret and secret not in dump, "a secret is in the audit log"


@pytest_twisted.ensureDeferred
async def test_append_only_in_the_database(app: Running) -> None:
    """UPDATE, DELETE and TRUNCATE fail in the database itself; only the purge deletes."""
    await user(app, "owner")
    for statement in (
        "UPDATE audit_log SET actor_name = 'someone else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(psycopg2.Error, match="append-only"):
            await app.db.execute(statement)
    assert [r["actor_name"] for r in await rows(app)] == ["owner"]


@pytest_twisted.ensureDeferred
async def test_the_route_roles_filters_and_pages(app: Running) -> None:
    owner = await user(app, "owner")
    made = await owner.call("POST", "/api/workspaces", {"name": "Team"})
    wid = made.body["id"]
    maintainer, dev, guest, stranger = [
        await user(app, name) for name in ("maint", "dev", "guest", "stranger")
    ]
    await owner.add_member(wid, maintainer, "maintainer")
    await owner.add_member(wid, dev, "developer")
    await owner.add_member(wid, guest, "guest")
    for n in range(7):
        await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": f"s{n}"})
    path = f"/api/workspaces/{wid}/audit"
    assert (await dev.call("GET", path)).code == 403
    assert (await guest.call("GET", path)).code == 403
    assert (await stranger.call("GET", path)).code == 404
    assert (await app.client().call("GET", path)).code == 401
    every = await maintainer.call("GET", path)
    assert every.code == 200 and every.body["next"] is None
    ids = [e["id"] for e in every.body["entries"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert {e["workspace_id"] for e in every.body["entries"]} == {wid}
    assert every.body["entries"][-1]["action"] == "workspace.created"
    # pages of 3 by cursor: all of them, each once
    seen: list[int] = []
    cursor = ""
    for _ in range(10):
        page = await owner.call("GET", f"{path}?limit=3{cursor}")
        assert page.code == 200 and len(page.body["entries"]) <= 3
        seen += [e["id"] for e in page.body["entries"]]
        if page.body["next"] is None:
            break
        cursor = f"&before={page.body['next']}"
    assert seen == ids
    created = await owner.call("GET", f"{path}?action=sandbox.created")
    assert len(created.body["entries"]) == 7
    by_id = await owner.call("GET", f"{path}?actor={dev.user['id']}")
    by_name = await owner.call("GET", f"{path}?actor=DEV")
    assert by_id.body == by_name.body
    assert {e["actor_name"] for e in by_id.body["entries"]} == {"dev"}
    newest = every.body["entries"][0]["at"]
    later = await owner.call("GET", f"{path}?since={quote(newest)}")
    assert [e["id"] for e in later.body["entries"]] == [ids[0]]
    before = await owner.call("GET", f"{path}?until={quote(newest)}")
    assert ids[0] not in [e["id"] for e in before.body["entries"]]
    for bad in ("action=sandbox.exploded", "limit=201", "limit=0", "since=yesterday", "before=x"):
        refused = await owner.call("GET", f"{path}?{bad}")
        assert refused.code == 400, (bad, refused)


@pytest_twisted.ensureDeferred
async def test_the_purge_keeps_recent_rows(app: Running) -> None:
    """Rows older than the retention go; newer ones stay; 0 keeps everything."""
    from cli_server.domain.audit import AuditLog

    await user(app, "owner")
    audit = AuditLog(app.db)

    async def age(days: int) -> None:
        await app.db.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await app.db.execute("UPDATE audit_log SET at = now() - make_interval(days => %s)", (days,))
        await app.db.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")

    await age(400)
    await user(app, "fresh")
    assert await audit.purge(0) == 0
    assert await audit.purge(365) == 1
    assert [r["actor_name"] for r in await rows(app)] == ["fresh"]


def test_cli_audit_reads_the_database(db_url: str) -> None:
    """``cli-server audit --db-url`` against the test database: filters, JSON lines and the
    readable table."""
    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        for n, action in enumerate(["auth.sign_in", "workspace.created", "auth.sign_out"]):
            cur.execute(
                "INSERT INTO audit_log (actor_name, action, target_type, target_name, address)"
                " VALUES (%s, %s, 'workspace', %s, '192.0.2.1')",
                (f"user{n}", action, f"ws{n}"),
            )
    conn.close()

    def audit(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cli_server.cli", "audit", "--db-url", db_url, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    lines = [json.loads(line) for line in audit("--json").splitlines()]
    assert [e["action"] for e in lines] == ["auth.sign_out", "workspace.created", "auth.sign_in"]
    only = [json.loads(line) for line in audit("--json", "--actor", "user1").splitlines()]
    assert [e["target_name"] for e in only] == ["ws1"]
    table = audit("--action", "auth.sign_in")
    assert "auth.sign_in" in table and "user0" in table and "192.0.2.1" in table
    assert "workspace.created" not in table
    assert audit("--json", "--since", "2999-01-01T00:00:00Z") == ""


@pytest_twisted.async_yield_fixture
async def sso(db_url: str, oidc_provider: OidcProvider) -> AsyncIterator[Running]:
    config = attrs.evolve(
        server_config(db_url), oidc=OidcLogin(oidc_provider.issuer, CLIENT_ID, CLIENT_SECRET)
    )
    running = await start_server(db_url, config=config)
    yield running
    await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_single_sign_on_rows(sso: Running, oidc_provider: OidcProvider) -> None:
    """Linking, signing in, a refused sign-in and unlinking, against a real OpenID provider:
    a row each, and no code or state of the flow in any."""
    oidc_provider.account("frank-sub", email="frank@example.com", email_verified=True)
    linker = Browser(sso.reactor, sso.base)
    for step in ("register", "login"):
        reply = await linker.http.post(
            f"{sso.base}/api/auth/{step}",
            json={"username": "frank", "password": PASSWORD},
            timeout=15,
        )
        assert reply.code in (200, 201)
    frank = (await linker.me())[1]["id"]
    assert await linker.sign_in("frank-sub", query="?link=1") == "/account"
    elsewhere = Browser(sso.reactor, sso.base)
    callback = await elsewhere.at_provider(await elsewhere.start("oidc"), "frank-sub")
    flow = query_of(callback)
    code, location, _ = await elsewhere.get(callback)
    assert code == 303 and location == "/"
    denied = Browser(sso.reactor, sso.base)
    refused = await denied.at_provider(await denied.start("oidc"), "frank-sub", deny=True)
    code, location, _ = await denied.get(refused)
    assert code == 303 and location == "/?sso_error=denied"
    listed = await linker.http.get(f"{sso.base}/api/auth/identities", timeout=15)
    identity = json.loads(await listed.content())[0]["id"]
    unlinked = await linker.http.delete(f"{sso.base}/api/auth/identities/{identity}", timeout=15)
    assert unlinked.code == 204
    found = await rows(sso)
    seen = [(r["action"], r["details"].get("method"), str(r["actor_id"])) for r in found]
    assert ("auth.identity_linked", "oidc", frank) in seen
    assert ("auth.sign_in", "oidc", frank) in seen
    assert ("auth.sign_in_failed", "oidc", "None") in seen
    failed = next(r for r in found if r["action"] == "auth.sign_in_failed")
    assert failed["details"]["reason"] == "denied" and failed["address"] == "127.0.0.1"
    unlink = next(r for r in found if r["action"] == "auth.identity_unlinked")
    assert (str(unlink["actor_id"]), unlink["target_name"]) == (frank, "oidc")
    dump = json.dumps(found, default=str)
    for secret in [*flow["code"], *flow["state"], PASSWORD]:
        assert secret not in dump


@pytest_twisted.ensureDeferred
async def test_the_row_and_the_change_commit_together(app: Running) -> None:
    """A row written in the change's transaction: when it cannot be written the change does
    not happen; a refused change leaves no row."""
    owner = await user(app, "owner")
    uid = str(owner.user["id"])
    workspaces = app.server.manager.workspaces
    bad = Note(
        AuditLog(app.db), Action.WORKSPACE_CREATED, Actor(uid, "owner"), details={"token": "t"}
    )
    with pytest.raises(SecretInDetails):
        await workspaces.create(uid, "Never", bad)
    assert await workspaces.list_for(uid) == []
    made = await owner.call("POST", "/api/workspaces", {"name": "Team"})
    wid = made.body["id"]
    guest = await user(app, "guest")
    await owner.add_member(wid, guest, "guest")
    before = len(await rows(app))
    refused = await guest.call("DELETE", f"/api/workspaces/{wid}/members/{owner.user['id']}")
    assert refused.code == 403
    refused = await guest.call("PUT", f"/api/workspaces/{wid}/budget", {"monthly_tokens": 5})
    assert refused.code == 403
    assert len(await rows(app)) == before


@pytest_twisted.ensureDeferred
async def test_cli_audit_reads_the_embedded_database_of_a_data_dir(
    postgres: EmbeddedPostgres,
) -> None:
    """``cli-server audit --data-dir``: the running embedded PostgreSQL of that directory
    (the test cluster's own ``cli_server`` database, migrated here), left running."""
    from cli_server.db.migrations import migrate
    from cli_server.db.pool import Database

    db = Database(_reactor(), postgres.dsn)
    await migrate(db)
    db.close()
    marker = f"operator-{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(postgres.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO audit_log (actor_name, action, address) VALUES (%s, 'auth.sign_in',"
            " '192.0.2.9')",
            (marker,),
        )
    conn.close()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli_server.cli",
            "audit",
            "--data-dir",
            str(postgres.pgdata.parent),
            "--actor",
            marker,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [entry] = [json.loads(line) for line in done.stdout.splitlines()]
    assert (entry["actor_name"], entry["address"]) == (marker, "192.0.2.9")
    assert postgres.postmaster() is not None  # (a running server's database stays up)


@pytest_twisted.ensureDeferred
async def test_a_direct_add_is_member_added(db_url: str) -> None:
    """Where the operator allows direct adds, the row says the member was added, not invited."""
    config = attrs.evolve(server_config(db_url), direct_members=("*",))
    running = await start_server(db_url, config=config)
    try:
        owner = await user(running, "owner")
        dev = await user(running, "dev")
        made = await owner.call("POST", "/api/workspaces", {"name": "Team"})
        wid = made.body["id"]
        added = await owner.call(
            "POST", f"/api/workspaces/{wid}/members", {"username": "dev", "role": "developer"}
        )
        assert added.code == 201 and added.body["status"] == "member"
        [row] = await rows(running, "action = 'member.added'")
        assert (str(row["actor_id"]), str(row["workspace_id"])) == (owner.user["id"], wid)
        assert (row["target_id"], row["target_name"]) == (dev.user["id"], "dev")
        assert row["details"] == {"role": "developer"}
        assert await rows(running, "action = 'member.invited'") == []
    finally:
        await stop_server(running)
