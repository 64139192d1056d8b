"""Sessions and login protection against real PostgreSQL."""

from __future__ import annotations

import pytest_twisted

from cli_server.auth.tokens import token_hash
from cli_server.web.auth_api import AuthLimits

from .conftest import Running, start_server, stop_server


def _cookie(client) -> str:  # type: ignore[no-untyped-def]
    (cookie,) = [c for c in client.jar if c.name == "cli_session"]
    return str(cookie.value)


@pytest_twisted.ensureDeferred
async def test_secrets_are_stored_hashed(app: Running) -> None:
    """The database holds an argon2id hash of the password and a SHA-256 of the token."""
    client = app.client()
    await client.register_and_login("hashed", "a long password")
    token = _cookie(client)
    (user,) = await app.db.query("SELECT password_hash FROM users")
    assert user["password_hash"].startswith("$argon2id$")
    assert "a long password" not in user["password_hash"]
    (session,) = await app.db.query("SELECT token_hash FROM sessions")
    assert bytes(session["token_hash"]) == token_hash(token)
    me = await client.call("GET", "/api/auth/me")
    assert "password" not in str(me.body) and token not in str(me.body)


@pytest_twisted.ensureDeferred
async def test_logout_revokes_server_side(app: Running) -> None:
    """A cookie saved before logout is useless afterwards, even if replayed."""
    client, thief = app.client(), app.client()
    await client.register_and_login("leaver")
    for cookie in client.jar:
        thief.jar.set_cookie(cookie)
    assert (await thief.call("GET", "/api/auth/me")).code == 200
    assert (await client.call("POST", "/api/auth/logout")).code == 204
    assert (await thief.call("GET", "/api/auth/me")).code == 401
    assert (await client.call("POST", "/api/auth/logout")).code == 401


@pytest_twisted.ensureDeferred
async def test_sessions_expire(app: Running) -> None:
    """An expired session is refused and purged by housekeeping."""
    client = app.client()
    await client.register_and_login("expiring")
    await app.db.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    me = await client.call("GET", "/api/auth/me")
    assert (me.code, me.error_code) == (401, "unauthorized")
    assert len(await app.db.query("SELECT 1 FROM sessions")) == 1
    from cli_server.accounts import Accounts

    accounts = Accounts(app.db, None, None, 60.0)  # type: ignore[arg-type]
    await accounts.purge_expired_sessions()
    assert await app.db.query("SELECT 1 FROM sessions") == []


@pytest_twisted.ensureDeferred
async def test_login_errors_do_not_reveal_usernames(app: Running) -> None:
    """Unknown user and wrong password give the same answer."""
    await app.client().register_and_login("known")
    wrong = await app.client().call(
        "POST", "/api/auth/login", {"username": "known", "password": "not it at all"}
    )
    unknown = await app.client().call(
        "POST", "/api/auth/login", {"username": "unknown", "password": "not it at all"}
    )
    assert (
        (wrong.code, wrong.body)
        == (unknown.code, unknown.body)
        == (
            401,
            {"error": {"code": "invalid_credentials", "message": "wrong username or password"}},
        )
    )


@pytest_twisted.ensureDeferred
async def test_failed_logins_are_rate_limited(db_url: str) -> None:
    """After the free tries, 429 with Retry-After for that account from that address, even
    with the right password; others unaffected. The address's own limit stops accounts never
    used from there, not people who logged in from there before."""
    running = await start_server(
        db_url,
        limits=AuthLimits(
            login_failures_per_pair=3, login_failures_per_address=5, registrations_per_address=100
        ),
    )
    try:
        victim, other = running.client(), running.client()
        await victim.register_and_login("victim")
        await other.register_and_login("other")
        newcomer = {"username": "newcomer", "password": "password123"}
        assert (await running.client().call("POST", "/api/auth/register", newcomer)).code == 201
        for _ in range(3):
            bad = await running.client().call(
                "POST", "/api/auth/login", {"username": "VICTIM", "password": "guess-guess"}
            )
            assert bad.code == 401
        limited = await running.client().call(
            "POST", "/api/auth/login", {"username": "victim", "password": "password123"}
        )
        assert (limited.code, limited.error_code) == (429, "too_many_requests")
        assert int(limited.headers.getRawHeaders("retry-after")[0]) > 0
        ok = await running.client().call(
            "POST", "/api/auth/login", {"username": "other", "password": "password123"}
        )
        assert ok.code == 200
        for _ in range(2):  # the address reaches its own limit of 5 failures
            await running.client().call(
                "POST", "/api/auth/login", {"username": "other", "password": "guess-guess"}
            )
        blocked = await running.client().call("POST", "/api/auth/login", newcomer)
        assert blocked.code == 429 and "from this address" in blocked.body["error"]["message"]
        known = await running.client().call(
            "POST", "/api/auth/login", {"username": "other", "password": "password123"}
        )
        assert known.code == 200
    finally:
        await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_registrations_are_rate_limited(db_url: str) -> None:
    """Too many sign-ups from one address get 429."""
    running = await start_server(db_url, limits=AuthLimits(registrations_per_address=2))
    try:
        codes = []
        for n in range(3):
            reply = await running.client().call(
                "POST", "/api/auth/register", {"username": f"spam{n}", "password": "password123"}
            )
            codes.append(reply.code)
        assert codes == [201, 201, 429]
    finally:
        await stop_server(running)
