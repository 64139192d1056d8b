"""Sessions and login protection against real PostgreSQL."""

from __future__ import annotations

from typing import Any

import attrs
import pytest_twisted
from twisted.internet.defer import DeferredList

from cli_server.auth.tokens import token_hash
from cli_server.plumbing.client_address import parse_trusted_proxies
from cli_server.web.auth_api import AuthLimits

from .conftest import Running, server_config, start_server, stop_server


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
    said = str(me.body)  # (has_password is a yes or no, never the hash)
    assert "argon2" not in said and "a long password" not in said and token not in said


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
    from cli_server.domain.accounts import Accounts

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


async def _login(running: Running, username: str, password: str, address: str) -> Any:
    """A login from ``address``, as the trusted proxy in front (127.0.0.1) reports it."""
    return await running.client().call(
        "POST",
        "/api/auth/login",
        {"username": username, "password": password},
        headers={"X-Forwarded-For": f"6.6.6.6, {address}"},  # (the left hop is a lie)
    )


@pytest_twisted.ensureDeferred
async def test_guessing_slows_the_attacker_and_never_locks_out_the_owner(db_url: str) -> None:
    """Behind a trusted proxy, with the default limits: one address guessing the owner's
    password gets 5 tries, then 429s; a spray from many addresses then slows new addresses
    for that account; failures for 20 names from one shared address touch nobody else there;
    through it all the owner logs in from the address they used before."""
    config = attrs.evolve(server_config(db_url), trusted_proxies=parse_trusted_proxies("127.0.0.1"))
    # (a first wait of a minute, not 1 s: each login asks the database for the counts, and
    # the test must not depend on how fast the machine gets through the 20 NAT logins)
    limits = AuthLimits(registrations_per_address=100, login_first_wait=60.0)
    running = await start_server(db_url, config=config, limits=limits)
    try:
        for name in ("owner", "colleague"):
            made = await running.client().call(
                "POST", "/api/auth/register", {"username": name, "password": "password123"}
            )
            assert made.code == 201
        home, nat = "198.51.100.10", "192.0.2.1"
        assert (await _login(running, "owner", "password123", home)).code == 200
        assert (await _login(running, "colleague", "password123", nat)).code == 200

        codes = [(await _login(running, "owner", "guess-guess", "203.0.113.66")).code]
        for _ in range(29):
            codes.append((await _login(running, "owner", "guess-guess", "203.0.113.66")).code)
        assert codes == [401] * 5 + [429] * 25, codes
        limited = await _login(running, "owner", "password123", "203.0.113.66")
        assert limited.code == 429 and int(limited.headers.getRawHeaders("retry-after")[0]) >= 1
        assert (await _login(running, "owner", "password123", home)).code == 200
        assert (await _login(running, "owner", "password123", "198.51.100.11")).code == 200

        sprayed_codes = [  # a spray: one guess from each of 20 more addresses
            (await _login(running, "owner", "guess-guess", f"203.0.113.{n}")).code
            for n in range(20)
        ]
        assert sprayed_codes == [401] * 15 + [429] * 5, sprayed_codes  # 20 for the account
        sprayed = await _login(running, "owner", "password123", "198.51.100.12")
        assert sprayed.code == 429 and "for this account" in sprayed.body["error"]["message"]
        assert (await _login(running, "owner", "password123", home)).code == 200

        for n in range(20):  # everyone behind one NAT: 20 names fail there
            assert (await _login(running, f"nobody{n}", "guess-guess", nat)).code == 401
        assert (await _login(running, "colleague", "password123", nat)).code == 200
        assert (await _login(running, "owner", "password123", nat)).code == 429  # (sprayed)
    finally:
        await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_at_once_get_the_free_tries_only(db_url: str) -> None:
    """Thirty wrong passwords sent at once (as over several replicas, every check pending
    while the others arrive): five are checked, the rest answer 429 and count for nothing;
    then the right password from there waits too. Changing the password is held to the
    same count."""
    limits = AuthLimits(registrations_per_address=100, login_first_wait=60.0)
    running = await start_server(db_url, limits=limits)
    try:
        user = {"username": "owner", "password": "password123"}
        assert (await running.client().call("POST", "/api/auth/register", user)).code == 201
        wrong = {"username": "owner", "password": "guess-guess"}
        answers = await DeferredList(
            [running.client().call("POST", "/api/auth/login", wrong) for _ in range(30)],
            fireOnOneErrback=True,
        )
        codes = sorted(answer.code for _, answer in answers)
        assert codes == [401] * 5 + [429] * 25, codes
        (pair,) = await running.db.query(
            "SELECT count FROM auth_failures WHERE kind = 'login-pair'"
        )
        assert pair["count"] == 5
        assert (await running.client().call("POST", "/api/auth/login", user)).code == 429

        other = running.client()
        await other.register_and_login("other")
        change = {"current_password": "guess-guess", "new_password": "password456"}
        changes = await DeferredList(
            [other.call("PUT", "/api/auth/password", change) for _ in range(12)],
            fireOnOneErrback=True,
        )
        codes = sorted(answer.code for _, answer in changes)
        assert codes == [403] * 5 + [429] * 7, codes
    finally:
        await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_forwarding_headers_from_an_untrusted_peer_change_nothing(db_url: str) -> None:
    """Without --trusted-proxies a client rotating X-Forwarded-For is still one address."""
    running = await start_server(db_url, limits=AuthLimits(registrations_per_address=100))
    try:
        await running.client().register_and_login("owner")
        codes = [
            (await _login(running, "owner", "guess-guess", f"203.0.113.{n}")).code for n in range(8)
        ]
        assert codes == [401] * 5 + [429] * 3, codes
    finally:
        await stop_server(running)
