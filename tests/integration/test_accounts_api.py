"""Accounts and the instance against real PostgreSQL: changing one's password, one's own
sessions, registration modes and sign-up links, and the instance admin's users API."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest_twisted
from twisted.internet.defer import gatherResults

from cli_server._version import __version__
from cli_server.db.embedded import EmbeddedPostgres
from cli_server.db.migrations import load_migrations, migrate
from cli_server.db.pool import Database
from cli_server.web.auth_api import AuthLimits

from .conftest import Running, _reactor, server_config, start_server, stop_server
from .helpers import Api

EVIL = {"Origin": "http://evil.example"}
PASSWORD = "password123"


async def signed_in(app: Running, username: str, agent: str = "pytest") -> Api:
    """A new browser for ``username`` (registered first if need be), logged in."""
    client = app.client()
    await client.call("POST", "/api/auth/register", {"username": username, "password": PASSWORD})
    logged = await client.call(
        "POST",
        "/api/auth/login",
        {"username": username, "password": PASSWORD},
        headers={"User-Agent": agent},
    )
    assert logged.code == 200, logged
    client.user = logged.body
    return client


async def sandbox_session(app: Running, client: Api) -> None:
    """Sign ``client`` in on a sandbox's subdomain (a sandbox of its own workspace)."""
    wid = (await client.call("POST", "/api/workspaces", {"name": f"w{uuid.uuid4().hex[:6]}"})).body[
        "id"
    ]
    sid = (await client.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})).body["id"]
    url = (await client.call("POST", f"/api/sandboxes/{sid}/open")).body["url"]
    host = f"oc-{sid}.localhost:8080"
    redeemed = await app.client().call("GET", url.split(host, 1)[1], headers={"Host": host})
    assert redeemed.code == 303, redeemed


async def sandbox_sessions_of(app: Running, client: Api) -> int:
    assert client.user is not None
    rows = await app.db.query(
        "SELECT count(*) AS n FROM sandbox_sessions WHERE user_id = %s", (client.user["id"],)
    )
    return int(rows[0]["n"])


async def with_mode(db_url: str, mode: str, **limits: Any) -> Running:
    config = attrs.evolve(server_config(db_url), registration=mode)
    return await start_server(
        db_url,
        config=config,
        limits=AuthLimits(**{"registrations_per_address": 10_000, **limits}) if limits else None,
    )


def register(client: Api, username: str, **extra: Any) -> Any:
    return client.call(
        "POST", "/api/auth/register", {"username": username, "password": PASSWORD, **extra}
    )


@pytest_twisted.ensureDeferred
async def test_change_password(app: Running) -> None:
    """The current password is checked, the new one follows the rules; the user's other
    sessions and sandbox sessions end, the one that changed it stays."""
    here = await signed_in(app, "alice", "here")
    there = await signed_in(app, "alice", "there")
    await sandbox_session(app, there)
    assert await sandbox_sessions_of(app, there) == 1
    path = "/api/auth/password"

    wrong = await here.call("PUT", path, {"current_password": "not it", "new_password": "n" * 8})
    assert (wrong.code, wrong.error_code) == (403, "wrong_password")
    for body, field in [
        ({"current_password": PASSWORD, "new_password": "short"}, "new_password"),
        ({"current_password": PASSWORD}, "new_password"),
        ({"new_password": "long enough"}, "current_password"),
        ({"current_password": PASSWORD, "new_password": 12345678}, "new_password"),
    ]:
        bad = await here.call("PUT", path, body)
        assert bad.code == 400 and bad.body["error"]["field"] == field, (body, bad)
    not_json = await here.call(
        "PUT", path, raw=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert (not_json.code, not_json.body["error"]["field"]) == (400, "body")
    form = await here.call(
        "PUT", path, raw=b"current_password=x", headers={"Content-Type": "text/plain"}
    )
    assert form.code == 415
    good = {"current_password": PASSWORD, "new_password": "a new long password"}
    foreign = await here.call("PUT", path, good, headers=EVIL)
    assert (foreign.code, foreign.error_code) == (403, "bad_origin")
    assert (await app.client().call("PUT", path, good)).code == 401
    assert (await there.call("GET", "/api/auth/me")).code == 200  # nothing changed so far

    assert (await here.call("PUT", path, good)).code == 204
    assert (await here.call("GET", "/api/auth/me")).code == 200
    assert (await there.call("GET", "/api/auth/me")).code == 401
    assert await sandbox_sessions_of(app, there) == 0
    old = {"username": "alice", "password": PASSWORD}
    assert (await app.client().call("POST", "/api/auth/login", old)).code == 401
    new = {"username": "alice", "password": "a new long password"}
    assert (await app.client().call("POST", "/api/auth/login", new)).code == 200


@pytest_twisted.ensureDeferred
async def test_wrong_current_password_counts_as_a_failed_login(db_url: str) -> None:
    """Guessing through the password form meets the login guard, and its wait is in words."""
    app = await start_server(
        db_url, limits=AuthLimits(login_failures_per_pair=2, login_first_wait=900.0)
    )
    try:
        me = await signed_in(app, "guessed")
        for _ in range(2):
            wrong = await me.call(
                "PUT", "/api/auth/password", {"current_password": "x", "new_password": "y" * 8}
            )
            assert wrong.code == 403
        right = {"current_password": PASSWORD, "new_password": "y" * 8}
        held = await me.call("PUT", "/api/auth/password", right)
        assert held.code == 429, held
        assert held.body["error"]["message"].endswith("try again in 15 minutes"), held.body
        assert held.headers.getRawHeaders("retry-after") == ["900"]
        login = await app.client().call(
            "POST", "/api/auth/login", {"username": "guessed", "password": PASSWORD}
        )
        assert login.code == 429 and "15 minutes" in login.body["error"]["message"]
    finally:
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_own_sessions_listed_and_revoked(app: Running) -> None:
    """Each live session with a non-secret id, where and when; revoking one signs it out;
    another user's session is not found; the current one is a logout."""
    laptop = await signed_in(app, "alice", "Laptop browser")
    phone = await signed_in(app, "alice", "Phone browser " + "x" * 500)
    bob = await signed_in(app, "bob")
    listed = await laptop.call("GET", "/api/auth/sessions")
    assert listed.code == 200 and len(listed.body) == 2, listed
    for session in listed.body:
        assert set(session) == {"id", "created_at", "last_seen_at", "user_agent", "address"} | {
            "current"
        }
        assert session["address"] == "127.0.0.1"
    (current,) = [s for s in listed.body if s["current"]]
    (other,) = [s for s in listed.body if not s["current"]]
    assert current["user_agent"] == "Laptop browser"
    assert other["user_agent"].startswith("Phone browser") and len(other["user_agent"]) == 200
    text = str(listed.body)
    for cookie in laptop.jar:
        assert cookie.value not in text
    hashes = await app.db.query("SELECT encode(token_hash, 'hex') AS h FROM sessions")
    assert all(row["h"] not in text for row in hashes)

    bobs = (await bob.call("GET", "/api/auth/sessions")).body[0]["id"]
    assert (await laptop.call("DELETE", f"/api/auth/sessions/{bobs}")).code == 404
    assert (await laptop.call("DELETE", "/api/auth/sessions/not-an-id")).code == 404
    foreign = await laptop.call("DELETE", f"/api/auth/sessions/{other['id']}", headers=EVIL)
    assert (foreign.code, foreign.error_code) == (403, "bad_origin")
    assert (await app.client().call("GET", "/api/auth/sessions")).code == 401
    assert (await app.client().call("DELETE", f"/api/auth/sessions/{other['id']}")).code == 401
    assert (await bob.call("GET", "/api/auth/me")).code == 200

    await sandbox_session(app, phone)
    assert (await laptop.call("DELETE", f"/api/auth/sessions/{other['id']}")).code == 204
    assert (await phone.call("GET", "/api/auth/me")).code == 401
    assert await sandbox_sessions_of(app, phone) == 0
    assert (await laptop.call("DELETE", f"/api/auth/sessions/{other['id']}")).code == 404
    assert len((await laptop.call("GET", "/api/auth/sessions")).body) == 1

    out = await laptop.call("DELETE", f"/api/auth/sessions/{current['id']}")
    assert out.code == 204
    assert "Max-Age=0" in out.headers.getRawHeaders("set-cookie")[0]
    assert (await laptop.call("GET", "/api/auth/me")).code == 401


@pytest_twisted.ensureDeferred
async def test_last_seen_is_written_at_most_once_a_minute(app: Running) -> None:
    """Reading a session writes last_seen_at only when it is a minute old."""
    me = await signed_in(app, "seen")
    await app.db.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '30 seconds';"
        " UPDATE users SET last_seen_at = now() - interval '30 seconds'"
    )
    (before,) = await app.db.query("SELECT last_seen_at FROM sessions")
    assert (await me.call("GET", "/api/auth/me")).code == 200
    (after,) = await app.db.query("SELECT last_seen_at FROM sessions")
    assert after == before
    await app.db.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '2 minutes';"
        " UPDATE users SET last_seen_at = now() - interval '2 minutes'"
    )
    assert (await me.call("GET", "/api/auth/me")).code == 200
    (fresh,) = await app.db.query(
        "SELECT last_seen_at > now() - interval '10 seconds' AS s FROM sessions"
    )
    assert fresh == {"s": True}
    # The admin's list shows the newest of the account's sessions (the users row is written
    # only at login: a per-request write there deadlocked with password changes).
    (listed,) = (await me.call("GET", "/api/admin/users")).body
    (recent,) = await app.db.query(
        "SELECT %s::timestamptz > now() - interval '10 seconds' AS r", (listed["last_seen_at"],)
    )
    assert recent == {"r": True}


@pytest_twisted.ensureDeferred
async def test_registration_closed(db_url: str) -> None:
    """Closed: the first account (the admin) may register, nobody after it."""
    app = await with_mode(db_url, "closed")
    try:
        said = await app.client().call("GET", "/api/auth/registration")
        assert said.code == 200 and (said.body["mode"], said.body["first"]) == ("closed", True)
        assert "3-32 characters" in said.body["username_rule"]
        assert "at least 8 characters" in said.body["password_rule"]
        first = await register(app.client(), "founder")
        assert first.code == 201 and first.body["is_admin"] is True
        second = await register(app.client(), "latecomer")
        assert (second.code, second.error_code) == (403, "registration_closed")
        assert "ask your administrator" in second.body["error"]["message"]
        assert len(await app.db.query("SELECT 1 FROM users")) == 1
        said = await app.client().call("GET", "/api/auth/registration")
        assert said.body["first"] is False
    finally:
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_registration_open_is_the_default(app: Running) -> None:
    """Open: anyone registers; only the first account is the admin, and says so."""
    said = await app.client().call("GET", "/api/auth/registration")
    assert said.body["mode"] == "open"
    assert said.body["version"] == __version__.public()
    assert (await register(app.client(), "first")).body["is_admin"] is True
    second = await register(app.client(), "second", invite="ignored here")
    assert second.code == 201 and second.body["is_admin"] is False
    first = await signed_in(app, "first")
    assert first.user is not None and first.user["is_admin"] is True
    me = await first.call("GET", "/api/auth/me")
    assert me.body["is_admin"] is True


@pytest_twisted.ensureDeferred
async def test_registration_by_invite(db_url: str) -> None:
    """Invite: the first account is free; then only with a sign-up link from the admin,
    each link once, not after it expired or was revoked."""
    app = await with_mode(db_url, "invite")
    try:
        assert (await app.client().call("GET", "/api/auth/registration")).body["mode"] == "invite"
        admin = await signed_in(app, "admin")
        assert admin.user is not None and admin.user["is_admin"] is True
        without = await register(app.client(), "bob")
        assert (without.code, without.error_code) == (403, "invite_required")
        bogus = await register(app.client(), "bob", invite="made-up")
        assert (bogus.code, bogus.error_code) == (403, "invite_invalid")

        made = await admin.call("POST", "/api/admin/signup-links")
        assert made.code == 201 and set(made.body) >= {"url", "expires_at"}
        assert made.body["url"].startswith("http://localhost:8080/#invite=")
        token = made.body["url"].split("invite=", 1)[1]
        (stored,) = await app.db.query("SELECT token_hash, expires_at FROM signup_links")
        assert token.encode() not in bytes(stored["token_hash"])

        taken = await register(app.client(), "admin", invite=token)
        assert (taken.code, taken.error_code) == (409, "username_taken")  # link kept
        used = await register(app.client(), "bob", invite=token)
        assert used.code == 201 and used.body["is_admin"] is False
        again = await register(app.client(), "carol", invite=token)
        assert (again.code, again.error_code) == (403, "invite_invalid")

        expired = (await admin.call("POST", "/api/admin/signup-links")).body["url"]
        await app.db.execute(
            "UPDATE signup_links SET expires_at = now() - interval '1 second' WHERE used_at IS NULL"
        )
        late = await register(app.client(), "carol", invite=expired.split("invite=", 1)[1])
        assert (late.code, late.error_code) == (403, "invite_invalid")

        revoked = await admin.call("POST", "/api/admin/signup-links")
        listed = await admin.call("GET", "/api/admin/signup-links")
        pending = [link for link in listed.body if link["used_at"] is None]
        assert len(pending) == 1, listed.body
        assert [link["used_by"] for link in listed.body if link["used_at"]] == ["bob"]
        assert (
            await admin.call("DELETE", f"/api/admin/signup-links/{pending[0]['id']}")
        ).code == 204
        assert (
            await admin.call("DELETE", f"/api/admin/signup-links/{pending[0]['id']}")
        ).code == 404
        gone = await register(app.client(), "carol", invite=revoked.body["url"].split("=", 1)[1])
        assert (gone.code, gone.error_code) == (403, "invite_invalid")

        bob = await signed_in(app, "bob")
        for method, path in [
            ("POST", "/api/admin/signup-links"),
            ("GET", "/api/admin/signup-links"),
            ("DELETE", f"/api/admin/signup-links/{pending[0]['id']}"),
        ]:
            refused = await bob.call(method, path)
            assert (refused.code, refused.error_code) == (403, "not_admin"), (method, path)
            assert (await app.client().call(method, path)).code == 401
        foreign = await admin.call("POST", "/api/admin/signup-links", headers=EVIL)
        assert (foreign.code, foreign.error_code) == (403, "bad_origin")
    finally:
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_concurrent_first_registrations_make_one_admin(db_url: str) -> None:
    """Five first registrations at once, in closed mode: exactly one account, the admin,
    gets in (the others are refused as the second and later)."""
    app = await with_mode(db_url, "closed")
    try:
        replies = await gatherResults(
            [register(app.client(), f"racer{n}") for n in range(5)], consumeErrors=True
        )
        assert sorted(r.code for r in replies) == [201, 403, 403, 403, 403], replies
        rows = await app.db.query("SELECT is_admin FROM users")
        assert rows == [{"is_admin": True}]
    finally:
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_concurrent_registrations_open_one_admin(app: Running) -> None:
    """Open mode, an empty instance, eight registrations at once: one admin."""
    replies = await gatherResults(
        [register(app.client(), f"racer{n}") for n in range(8)], consumeErrors=True
    )
    assert all(r.code == 201 for r in replies), replies
    assert sum(r.body["is_admin"] for r in replies) == 1
    rows = await app.db.query("SELECT count(*) AS n FROM users WHERE is_admin")
    assert rows[0]["n"] == 1


@pytest_twisted.ensureDeferred
async def test_admin_users_matrix(app: Running) -> None:
    """Only the admin lists, disables, enables and resets; everyone else 403 or 401; unknown
    ids 404; foreign Origin 403."""
    admin = await signed_in(app, "admin")
    bob = await signed_in(app, "bob")
    assert bob.user is not None and admin.user is not None
    bid, aid = bob.user["id"], admin.user["id"]
    actions = [
        ("POST", f"/api/admin/users/{bid}/disable"),
        ("POST", f"/api/admin/users/{bid}/enable"),
        ("POST", f"/api/admin/users/{bid}/password"),
    ]
    for method, path in [("GET", "/api/admin/users"), *actions]:
        refused = await bob.call(method, path)
        assert (refused.code, refused.error_code) == (403, "not_admin"), path
        assert (await app.client().call(method, path)).code == 401, path
        if method == "POST":
            foreign = await admin.call(method, path, headers=EVIL)
            assert (foreign.code, foreign.error_code) == (403, "bad_origin"), path
    for unknown in (str(uuid.uuid4()), "nope"):
        for method, path in actions:
            missing = await admin.call(method, path.replace(bid, unknown))
            assert missing.code == 404, (path, missing)

    listed = await admin.call("GET", "/api/admin/users")
    assert listed.code == 200
    assert [u["username"] for u in listed.body] == ["admin", "bob"]
    assert set(listed.body[0]) == {
        "id",
        "username",
        "email",
        "created_at",
        "is_admin",
        "disabled",
        "last_seen_at",
    }
    assert [(u["is_admin"], u["disabled"]) for u in listed.body] == [(True, False), (False, False)]
    assert all(u["last_seen_at"] for u in listed.body)
    assert "password" not in str(listed.body)
    itself = await admin.call("POST", f"/api/admin/users/{aid}/disable")
    assert (itself.code, itself.error_code) == (409, "own_account")
    assert (await bob.call("GET", "/api/auth/me")).code == 200  # nothing changed so far


@pytest_twisted.ensureDeferred
async def test_disable_enable_and_reset(app: Running) -> None:
    """Disabling ends the user's sessions and sandbox sessions at once and refuses their
    login with a sentence; enabling lets them back; a reset gives a temporary password once
    and ends their sessions."""
    admin = await signed_in(app, "admin")
    bob = await signed_in(app, "bob")
    assert bob.user is not None
    bid = bob.user["id"]
    await sandbox_session(app, bob)
    credentials = {"username": "bob", "password": PASSWORD}

    assert (await admin.call("POST", f"/api/admin/users/{bid}/disable")).code == 204
    assert (await bob.call("GET", "/api/auth/me")).code == 401
    assert await sandbox_sessions_of(app, bob) == 0
    refused = await app.client().call("POST", "/api/auth/login", credentials)
    assert (refused.code, refused.error_code) == (403, "account_disabled")
    assert "administrator" in refused.body["error"]["message"]
    wrong = await app.client().call("POST", "/api/auth/login", {"username": "bob", "password": "x"})
    assert (wrong.code, wrong.error_code) == (401, "invalid_credentials")  # tells nothing
    listed = (await admin.call("GET", "/api/admin/users")).body
    assert [u["disabled"] for u in listed] == [False, True]
    assert (await admin.call("POST", f"/api/admin/users/{bid}/disable")).code == 204  # again

    assert (await admin.call("POST", f"/api/admin/users/{bid}/enable")).code == 204
    bob = await signed_in(app, "bob")
    assert (await bob.call("GET", "/api/auth/me")).code == 200

    reset = await admin.call("POST", f"/api/admin/users/{bid}/password")
    assert reset.code == 200 and len(reset.body["password"]) >= 12
    assert (await bob.call("GET", "/api/auth/me")).code == 401
    assert (await app.client().call("POST", "/api/auth/login", credentials)).code == 401
    temporary = {"username": "bob", "password": reset.body["password"]}
    assert (await app.client().call("POST", "/api/auth/login", temporary)).code == 200
    (row,) = await app.db.query("SELECT password_hash FROM users WHERE id = %s", (bid,))
    assert reset.body["password"] not in row["password_hash"]


@pytest_twisted.ensureDeferred
async def test_admin_is_no_member_of_others_workspaces(app: Running) -> None:
    """Being the instance admin changes nothing at workspace level."""
    admin = await signed_in(app, "admin")
    bob = await signed_in(app, "bob")
    wid = (await bob.call("POST", "/api/workspaces", {"name": "bobs"})).body["id"]
    assert (await admin.call("GET", f"/api/workspaces/{wid}")).code == 404
    assert (await admin.call("GET", "/api/workspaces")).body == []


@pytest_twisted.ensureDeferred
async def test_migration_keeps_existing_rows(postgres: EmbeddedPostgres) -> None:
    """An instance from before 0008: its users and sessions migrate, the oldest user is
    the admin, and sessions get ids."""
    reactor = _reactor()
    name = "m_" + uuid.uuid4().hex[:16]
    server = Database(reactor, postgres.dsn)
    await server.execute(f"CREATE DATABASE {name}")
    db = Database(reactor, postgres.dsn.replace("dbname=cli_server", f"dbname={name}"))
    try:
        everything = load_migrations()
        await migrate(db, [m for m in everything if m.version < 8])
        for n, who in enumerate(("old", "newer")):
            uid = str(uuid.uuid4())
            await db.execute(
                "INSERT INTO users (id, username, created_at) VALUES"
                " (%s, %s, now() - make_interval(days => %s))",
                (uid, who, 10 - n),
            )
            await db.execute(
                "INSERT INTO sessions (token_hash, user_id, expires_at)"
                " VALUES (%s, %s, now() + interval '1 day')",
                (uuid.uuid4().bytes, uid),
            )
        assert await migrate(db) == [m.version for m in everything if m.version >= 8]
        users = await db.query("SELECT username, is_admin FROM users ORDER BY created_at")
        assert users == [
            {"username": "old", "is_admin": True},
            {"username": "newer", "is_admin": False},
        ]
        sessions = await db.query("SELECT id, last_seen_at = created_at AS same FROM sessions")
        assert len({s["id"] for s in sessions}) == 2 and all(s["same"] for s in sessions)
    finally:
        db.close()
        await server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        server.close()
