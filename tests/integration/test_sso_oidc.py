"""Single sign-on with a real OpenID provider (npm oidc-provider on loopback), at HTTP level.

Claim-level faults (wrong nonce, audience, issuer, an expired token, a key outside the key
set) come from the same real provider told to re-sign the ID token of its next token
response (``/_test/tamper`` in oidc/provider.mjs): real codes, real PKCE, a forged token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import attrs
import pytest
import pytest_twisted
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

from cli_server.config import OidcLogin

from .conftest import Running, server_config, start_server, stop_server
from .helpers import free_port
from .oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    ORIGIN,
    Browser,
    OidcProvider,
    oidc_provider,
    query_of,
    start_oidc_provider,
)

pytestmark = pytest.mark.integration
__all__ = ["oidc_provider"]  # (the fixture, imported for this module)


def oidc_config(db_url: str, issuer: str, **changes: Any) -> Any:
    return attrs.evolve(
        server_config(db_url),
        oidc=OidcLogin(issuer, CLIENT_ID, CLIENT_SECRET, name="Company login"),
        **changes,
    )


@pytest_twisted.async_yield_fixture
async def sso(db_url: str, oidc_provider: OidcProvider) -> AsyncIterator[Running]:
    running = await start_server(db_url, config=oidc_config(db_url, oidc_provider.issuer))
    yield running
    await stop_server(running)


def browser(app: Running) -> Browser:
    return Browser(app.reactor, app.base)


def landing(location: str) -> str | None:
    assert location.startswith("/?sso_error="), location
    return query_of(location)["sso_error"][0]


@pytest_twisted.ensureDeferred
async def test_sign_in_end_to_end(sso: Running, oidc_provider: OidcProvider) -> None:
    oidc_provider.account(
        "alice-sub", email="alice@example.com", email_verified=True, preferred_username="alice"
    )
    b = browser(sso)
    code, _, body = await b.get(f"{sso.base}/api/auth/providers")
    assert code == 200
    assert '"label": "Company login"' in body or '"label":"Company login"' in body
    start = await b.start("oidc", "?return_to=/workspaces")
    sent = query_of(start)
    assert start.startswith(oidc_provider.issuer)
    assert sent["code_challenge_method"] == ["S256"] and sent["nonce"] and sent["state"]
    assert sent["redirect_uri"] == [f"{ORIGIN}/api/auth/oidc/oidc/callback"]
    flow = next(c for c in b.jar if c.name == "cli_sso")
    assert flow.has_nonstandard_attr("HttpOnly")
    callback = await b.at_provider(start, "alice-sub")
    said: list[str] = []

    def collect(event: dict[str, Any]) -> None:
        said.append(formatEvent(event))

    observe = cast(ILogObserver, collect)
    globalLogPublisher.addObserver(observe)
    try:
        code, location, _ = await b.get(callback)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert (code, location) == (303, "/workspaces")
    assert any("single sign-on: alice signed in with oidc" in line for line in said)
    secrets = [query_of(callback)["code"][0], sent["state"][0], sent["nonce"][0], CLIENT_SECRET]
    assert not [s for s in secrets if any(s in line for line in said)], said
    assert b.cookie("cli_session") and not b.cookie("cli_sso")
    code, me = await b.me()
    assert code == 200 and me["username"] == "alice" and me["email"] == "alice@example.com"
    # Again: the same account, not a second one.
    assert await b.sign_in("alice-sub") == "/"
    code, again = await b.me()
    assert again["id"] == me["id"]


@pytest_twisted.ensureDeferred
async def test_bad_state_swapped_cookie_and_no_cookie(
    sso: Running, oidc_provider: OidcProvider
) -> None:
    b = browser(sso)
    callback = await b.at_provider(await b.start(), "bob")
    # The state changed on the way: refused, and the sign-in is used up.
    tampered = callback.replace("state=", "state=x")
    code, location, _ = await b.get(tampered)
    assert code == 303 and landing(location or "") == "bad_state"
    assert (await b.get(callback))[1] == "/?sso_error=bad_state"
    # A callback in a browser that did not start the sign-in (a login CSRF).
    other = browser(sso)
    callback = await b.at_provider(await b.start(), "bob")
    assert (await other.get(callback))[1] == "/?sso_error=bad_state"
    # Two sign-ins: the first's callback with the second's cookie.
    first = await b.at_provider(await b.start(), "bob")
    second = browser(sso)
    await second.start()
    code, location, _ = await second.get(first)
    assert landing(location or "") == "bad_state"
    assert not b.cookie("cli_session") and not second.cookie("cli_session")


@pytest_twisted.ensureDeferred
async def test_replayed_callback_and_code(sso: Running, oidc_provider: OidcProvider) -> None:
    b = browser(sso)
    callback = await b.at_provider(await b.start(), "carol")
    assert (await b.get(callback))[1] == "/"
    # The same code and state again, from the same browser and from another: refused
    # before the code reaches the provider (the sign-in they belonged to is finished).
    assert (await b.get(callback))[1] == "/?sso_error=bad_state"
    thief = browser(sso)
    assert (await thief.get(callback))[1] == "/?sso_error=bad_state"
    assert not thief.cookie("cli_session")
    # The code with a fresh sign-in's state and cookie: the provider refuses it (used, and
    # bound to the first sign-in's PKCE verifier).
    fresh = browser(sso)
    mine = query_of(await fresh.at_provider(await fresh.start(), "carol"))
    stolen_code = query_of(callback)["code"][0]
    forged = f"{sso.base}/api/auth/oidc/oidc/callback?code={stolen_code}&state={mine['state'][0]}"
    assert (await fresh.get(forged))[1] == "/?sso_error=provider_error"
    assert not fresh.cookie("cli_session")


@pytest.mark.parametrize(
    "forgery",
    [
        {"claims": {"nonce": "not-this-sign-ins"}},
        {"claims": {"aud": "another-client"}},
        {"claims": {"iss": "http://127.0.0.1:1"}},
        {"claims": {"exp": 1_000_000_000, "iat": 999_990_000}},
        {"unknown_key": True},
    ],
    ids=["wrong-nonce", "wrong-audience", "wrong-issuer", "expired", "unknown-kid"],
)
@pytest_twisted.ensureDeferred
async def test_forged_id_tokens_are_refused(
    sso: Running, oidc_provider: OidcProvider, forgery: dict[str, Any]
) -> None:
    b = browser(sso)
    callback = await b.at_provider(await b.start(), "dave")
    oidc_provider.tamper(**forgery)
    code, location, _ = await b.get(callback)
    assert code == 303 and landing(location or "") == "provider_error"
    assert not b.cookie("cli_session")
    assert (await b.me())[0] == 401


@pytest_twisted.ensureDeferred
async def test_key_rotation_is_picked_up(sso: Running, oidc_provider: OidcProvider) -> None:
    b = browser(sso)
    assert await b.sign_in("erin") == "/"  # (the server holds the provider's keys now)
    oidc_provider.rotate()
    again = browser(sso)
    assert await again.sign_in("erin") == "/"
    assert (await again.me())[1]["id"] == (await b.me())[1]["id"]


@pytest_twisted.ensureDeferred
async def test_unverified_email_never_links_to_a_password_account(
    sso: Running, oidc_provider: OidcProvider
) -> None:
    victim = sso.client()
    reply = await victim.call(
        "POST",
        "/api/auth/register",
        {"username": "victim", "password": "password123", "email": "victim@example.com"},
    )
    assert reply.code == 201
    victim_id = reply.body["id"]
    # The provider does not vouch for the address: an account of its own, address-less.
    oidc_provider.account("mallory-1", email="victim@example.com", email_verified=False)
    b = browser(sso)
    assert await b.sign_in("mallory-1") == "/"
    code, me = await b.me()
    assert code == 200 and me["id"] != victim_id and me["email"] is None
    # It does vouch, but the password account merely typed the address: refused, not linked.
    oidc_provider.account("mallory-2", email="victim@example.com", email_verified=True)
    b2 = browser(sso)
    assert landing(await b2.sign_in("mallory-2")) == "account_exists"
    assert not b2.cookie("cli_session")


@pytest_twisted.ensureDeferred
async def test_linking_both_ways_and_an_identity_taken(
    sso: Running, oidc_provider: OidcProvider
) -> None:
    oidc_provider.account("frank-sub", email="frank@example.com", email_verified=True)
    owner = browser(sso)
    code, _, _ = await owner.get(f"{sso.base}/api/auth/me")
    reply = await owner.http.post(
        f"{sso.base}/api/auth/register",
        json={"username": "frank", "password": "password123"},
        timeout=15,
    )
    assert reply.code == 201
    reply = await owner.http.post(
        f"{sso.base}/api/auth/login",
        json={"username": "frank", "password": "password123"},
        timeout=15,
    )
    assert reply.code == 200
    frank = (await owner.me())[1]
    # Signed in: link=1 links the provider's identity to this account, back to /account.
    assert await owner.sign_in("frank-sub", query="?link=1") == "/account"
    code, _, body = await owner.get(f"{sso.base}/api/auth/identities")
    assert code == 200 and '"oidc"' in body
    # Signed out, the identity signs in as frank.
    elsewhere = browser(sso)
    assert await elsewhere.sign_in("frank-sub") == "/"
    assert (await elsewhere.me())[1]["id"] == frank["id"]
    # Another signed-in user cannot take it over.
    other = browser(sso)
    await other.http.post(
        f"{sso.base}/api/auth/register",
        json={"username": "grace", "password": "password123"},
        timeout=15,
    )
    await other.http.post(
        f"{sso.base}/api/auth/login",
        json={"username": "grace", "password": "password123"},
        timeout=15,
    )
    assert landing(await other.sign_in("frank-sub", query="?link=1")) == "identity_taken"
    assert (await other.me())[1]["username"] == "grace"


@pytest_twisted.ensureDeferred
async def test_a_stale_session_cannot_link_an_identity(
    sso: Running, oidc_provider: OidcProvider
) -> None:
    """A stolen session of any age linking its thief's identity would be a way in that
    outlives a password change: linking needs a sign-in of the last 15 minutes."""
    oidc_provider.account("thief-sub", email="thief@example.com", email_verified=True)
    victim = browser(sso)
    for path, body in (
        ("/api/auth/register", {"username": "victor", "password": "password123"}),
        ("/api/auth/login", {"username": "victor", "password": "password123"}),
    ):
        reply = await victim.http.post(f"{sso.base}{path}", json=body, timeout=15)
        assert reply.code in (200, 201)
    await sso.db.execute("UPDATE sessions SET created_at = now() - interval '1 day'")
    assert landing(await victim.start("oidc", "?link=1")) == "sign_in_again"
    code, _, body = await victim.get(f"{sso.base}/api/auth/identities")
    assert code == 200 and body.strip() == "[]"


@pytest_twisted.ensureDeferred
async def test_allowed_domains(db_url: str, oidc_provider: OidcProvider) -> None:
    config = oidc_config(db_url, oidc_provider.issuer, sso_allowed_domains=("example.com",))
    app = await start_server(db_url, config=config)
    try:
        oidc_provider.account("out-sub", email="heidi@elsewhere.org", email_verified=True)
        oidc_provider.account("unverified-sub", email="ivan@example.com", email_verified=False)
        oidc_provider.account("in-sub", email="judy@example.com", email_verified=True)
        for subject in ("out-sub", "unverified-sub"):
            b = browser(app)
            assert landing(await b.sign_in(subject)) == "domain_not_allowed"
            assert not b.cookie("cli_session")
        b = browser(app)
        assert await b.sign_in("in-sub") == "/"
        assert (await b.me())[1]["email"] == "judy@example.com"
    finally:
        await stop_server(app)


@pytest.mark.parametrize(
    "target", ["//evil.com", "/\\evil.com", "https://evil.com", "/\r\nSet-Cookie:x=1", "evil"]
)
@pytest_twisted.ensureDeferred
async def test_return_to_stays_on_this_site(
    sso: Running, oidc_provider: OidcProvider, target: str
) -> None:
    from urllib.parse import quote

    b = browser(sso)
    assert await b.sign_in("kim", query="?return_to=" + quote(target, safe="")) == "/"
    assert (await b.me())[0] == 200


@pytest_twisted.ensureDeferred
async def test_provider_down_then_back(db_url: str) -> None:
    """The provider is down when the server starts: password sign-in works, SSO lands on a
    clear error; once the provider is up, discovery is retried and SSO works."""
    port = free_port()
    app = await start_server(db_url, config=oidc_config(db_url, f"http://127.0.0.1:{port}"))
    provider = None
    try:
        b = browser(app)
        start = await b.start()
        assert landing(start) == "provider_down"
        api = app.client()
        await api.register_and_login("paula")
        assert (await api.call("GET", "/api/auth/me")).code == 200
        code, _, _ = await b.get(f"{app.base}/readyz")
        assert code == 200
        provider = start_oidc_provider([f"{ORIGIN}/api/auth/oidc/oidc/callback"], port=port)
        assert await browser(app).sign_in("paula-sso") == "/"
        provider.stop()
        # Down after discovery: the code exchange fails, said the same way.
        b = browser(app)
        start = await b.start()
        assert start.startswith(f"http://127.0.0.1:{port}")  # (discovery is cached)
        callback = (
            f"{app.base}/api/auth/oidc/oidc/callback?code=x&state=" + query_of(start)["state"][0]
        )
        assert landing((await b.get(callback))[1] or "") == "provider_down"
    finally:
        if provider is not None:
            provider.stop()
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_denied_consent_and_provider_errors_land_on_the_sign_in_screen(
    sso: Running, oidc_provider: OidcProvider
) -> None:
    b = browser(sso)
    callback = await b.at_provider(await b.start(), "leo", deny=True)
    assert "error=access_denied" in callback
    assert (await b.get(callback))[1] == "/?sso_error=denied"
    other = f"{sso.base}/api/auth/oidc/oidc/callback?error=server_error&state=x"
    assert (await b.get(other))[1] == "/?sso_error=provider_error"
    assert (await b.get(f"{sso.base}/api/auth/oidc/oidc/callback"))[1] == "/?sso_error=bad_state"


@pytest_twisted.ensureDeferred
async def test_routes_bad_input_and_authorization(sso: Running) -> None:
    b = browser(sso)
    for path in (
        "/api/auth/oidc/github/login",  # (not configured here)
        "/api/auth/oidc/nope/login",
        "/api/auth/oidc/nope/callback?code=a&state=b",
    ):
        code, _, body = await b.get(sso.base + path)
        assert code == 404 and "provider_not_found" in body, path
    # Linking needs a signed-in user, and starts from our own pages only.
    code, location, body = await b.get(f"{sso.base}/api/auth/oidc/oidc/login?link=1")
    assert code == 401 and location is None
    api = sso.client()
    await api.register_and_login("linker")
    for came_from in ("cross-site", "same-site"):
        reply = await api.call(
            "GET", "/api/auth/oidc/oidc/login?link=1", headers={"sec-fetch-site": came_from}
        )
        assert (reply.code, reply.error_code) == (403, "bad_origin"), came_from
    reply = await api.call(
        "GET", "/api/auth/oidc/oidc/login?link=1", headers={"sec-fetch-site": "same-origin"}
    )
    assert reply.code == 302
    code, _, _ = await b.get(f"{sso.base}/api/auth/oidc/oidc/login")
    reply = await b.http.post(f"{sso.base}/api/auth/oidc/oidc/login", timeout=15)
    assert reply.code == 405
    await reply.content()


@pytest_twisted.ensureDeferred
async def test_no_provider_configured(app: Running) -> None:
    b = browser(app)
    code, _, body = await b.get(f"{app.base}/api/auth/providers")
    assert code == 200 and body.strip() == "[]"
    code, _, body = await b.get(f"{app.base}/api/auth/oidc/oidc/login")
    assert code == 404
