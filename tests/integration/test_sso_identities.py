"""The account side of single sign-on against real PostgreSQL: which user a provider's claims
sign in (new, linked or refused), and the sign-in methods routes of the account page."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from cli_server.config import GithubLogin
from cli_server.db.embedded import EmbeddedPostgres
from cli_server.db.migrations import load_migrations, migrate
from cli_server.db.pool import Database
from cli_server.domain.accounts import User
from cli_server.sso.claims import Claims, SignInRefused
from cli_server.sso.identities import Identities
from cli_server.web.auth_api import _USERNAME

from .conftest import Running, _reactor, server_config, start_server, stop_server
from .helpers import Api, Reply

EVIL = {"Origin": "http://evil.example"}
PASSWORD = "password123"


def claims(
    subject: str,
    email: str | None = None,
    verified: bool = True,
    username: str | None = None,
    provider: str = "oidc",
    name: str | None = None,
) -> Claims:
    return Claims(provider, subject, email, verified, username, name)


async def refused(identities: Identities, c: Claims, link_to: str | None = None) -> str:
    with pytest.raises(SignInRefused) as caught:
        await identities.sign_in(c, link_to)
    return caught.value.code


async def user_row(app: Running, user_id: str) -> dict[str, Any]:
    rows = await app.db.query(
        "SELECT username, email, email_verified_at IS NOT NULL AS verified,"
        " password_hash IS NULL AS no_password, is_admin FROM users WHERE id = %s",
        (user_id,),
    )
    return rows[0]


async def identities_of(app: Running, user_id: str) -> list[tuple[str, str]]:
    rows = await app.db.query(
        "SELECT provider, subject FROM identities WHERE user_id = %s ORDER BY provider, subject",
        (user_id,),
    )
    return [(r["provider"], r["subject"]) for r in rows]


async def password_user(app: Running, username: str, email: str | None = None) -> Api:
    client = app.client()
    body = {"username": username, "password": PASSWORD}
    if email:
        body["email"] = email
    made = await client.call("POST", "/api/auth/register", body)
    assert made.code == 201, made
    logged = await client.call(
        "POST", "/api/auth/login", {"username": username, "password": PASSWORD}
    )
    assert logged.code == 200, logged
    client.user = logged.body
    return client


@attrs.define
class Browser:
    """A client signed in through a provider: its session cookie set by hand."""

    api: Api
    token: str
    user: User

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Deferred[Reply]:
        headers = {"Cookie": f"cli_session={self.token}", **kw.pop("headers", {})}
        return self.api.call(method, path, body, headers=headers, **kw)


async def sso_browser(app: Running, c: Claims, link_to: str | None = None) -> Browser:
    assert app.server.identities is not None and app.server.accounts is not None
    user = await app.server.identities.sign_in(c, link_to)
    token = await app.server.accounts.open_trusted_session(user.id, "pytest", "127.0.0.1")
    assert token is not None
    return Browser(app.client(), token, user)


# --- who a sign-in is -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_first_sign_in_creates_a_user_without_password(app: Running) -> None:
    """The first user by single sign-on is the admin; the username comes from the provider's
    username, the account has no password and the verified email, marked verified."""
    ids = Identities(app.db)
    alice = await ids.sign_in(claims("a1", "Alice@Example.com", username="alice"), None)
    assert alice.username == "alice" and alice.is_admin
    assert await user_row(app, alice.id) == {
        "username": "alice",
        "email": "Alice@Example.com",
        "verified": True,
        "no_password": True,
        "is_admin": True,
    }
    again = await ids.sign_in(claims("a1", "Alice@Example.com", username="alice"), None)
    assert again.id == alice.id
    bob = await ids.sign_in(claims("b1", "bob@example.com", username="bob"), None)
    assert not bob.is_admin
    assert await identities_of(app, alice.id) == [("oidc", "a1")]


@pytest_twisted.ensureDeferred
async def test_username_derivation_and_collisions(app: Running) -> None:
    """Names follow the local rule, from preferred_username, else the email's local part,
    else the display name; a taken name (any case) gets -2, -3..."""
    ids = Identities(app.db)
    await password_user(app, "Alice")
    made = [
        await ids.sign_in(claims("s1", username="alice"), None),
        await ids.sign_in(claims("s2", username="ALICE"), None),
        await ids.sign_in(claims("s3", "j.doe+x@example.com", username="-_"), None),
        await ids.sign_in(claims("s4", name="Zoë O'Brien de la Fontaine-Smith Jr."), None),
        await ids.sign_in(claims("s5"), None),
        await ids.sign_in(claims("s6", username="x" * 40), None),
        await ids.sign_in(claims("s7", username="x" * 40), None),
    ]
    names = [u.username for u in made]
    assert names == [
        "alice-2",
        "ALICE-3",
        "j.doe-x",
        "Zoe-O-Brien-de-la-Fontaine-Smith",
        "user",
        "x" * 32,
        "x" * 30 + "-2",
    ]
    assert all(_USERNAME.match(n) for n in names)


@pytest_twisted.ensureDeferred
async def test_concurrent_first_sign_ins(app: Running) -> None:
    """Sign-ins racing for one name each get a free one; the same identity racing itself
    makes one account. Never an error."""
    ids = Identities(app.db)
    racing = [
        Deferred.fromCoroutine(ids.sign_in(claims(f"r{n}", username="racer"), None))
        for n in range(6)
    ]
    users = await gatherResults(racing)
    assert sorted(u.username for u in users) == ["racer", *(f"racer-{n}" for n in range(2, 7))]
    same = [
        Deferred.fromCoroutine(ids.sign_in(claims("twin", "t@example.com", username="t1"), None))
        for _ in range(4)
    ]
    twins = await gatherResults(same)
    assert len({u.id for u in twins}) == 1
    rows = await app.db.query(
        "SELECT count(*) AS n FROM users WHERE lower(email) = 't@example.com'"
    )
    assert rows[0]["n"] == 1


@pytest_twisted.ensureDeferred
async def test_verified_email_links_a_second_provider(app: Running) -> None:
    """A user made by one provider (a verified email) who signs in with another provider
    verifying the same address (any case) is the same user."""
    ids = Identities(app.db)
    first = await ids.sign_in(claims("gh-1", "dev@example.com", provider="github"), None)
    second = await ids.sign_in(claims("oidc-1", "DEV@example.com", provider="oidc"), None)
    assert second.id == first.id
    assert await identities_of(app, first.id) == [("github", "gh-1"), ("oidc", "oidc-1")]


@pytest_twisted.ensureDeferred
async def test_typed_email_is_never_linked(app: Running) -> None:
    """Whoever registered a victim's address with a password does not get the victim's
    sign-in: the victim is refused (account_exists), no second account is made, and the
    squatter's account gains no identity."""
    ids = Identities(app.db)
    squatter = await password_user(app, "squatter", "victim@example.com")
    assert await refused(ids, claims("victim", "victim@example.com")) == "account_exists"
    assert await refused(ids, claims("victim", "Victim@Example.COM")) == "account_exists"
    assert squatter.user is not None
    assert await identities_of(app, squatter.user["id"]) == []
    rows = await app.db.query("SELECT count(*) AS n FROM users")
    assert rows[0]["n"] == 1
    assert not (await user_row(app, squatter.user["id"]))["verified"]


@pytest_twisted.ensureDeferred
async def test_linking_from_the_account_page(app: Running) -> None:
    """A signed-in user links a new identity; a matching verified email marks theirs
    verified (then it links by email later); a different one changes nothing."""
    ids = Identities(app.db)
    carol = await password_user(app, "carol", "carol@example.com")
    assert carol.user is not None
    cid = carol.user["id"]
    linked = await ids.sign_in(claims("c-gh", "other@example.com", provider="github"), cid)
    assert linked.id == cid and not (await user_row(app, cid))["verified"]
    linked = await ids.sign_in(claims("c-oidc", "CAROL@example.com"), cid)
    assert linked.id == cid and (await user_row(app, cid))["verified"]
    # Now verified on both sides: a third identity with that address signs in as carol.
    again = await ids.sign_in(claims("c-3", "carol@example.com", provider="google"), None)
    assert again.id == cid
    assert len(await identities_of(app, cid)) == 3
    # Signing in with a linked identity while linking it to oneself is fine.
    assert (await ids.sign_in(claims("c-gh", None, provider="github"), cid)).id == cid


@pytest_twisted.ensureDeferred
async def test_an_identity_never_moves(app: Running) -> None:
    """An identity linked to one user, presented while another links, is refused."""
    ids = Identities(app.db)
    owner = await ids.sign_in(claims("taken", "owner@example.com"), None)
    other = await password_user(app, "other")
    assert other.user is not None
    assert await refused(ids, claims("taken"), other.user["id"]) == "identity_taken"
    assert await identities_of(app, owner.id) == [("oidc", "taken")]
    assert await identities_of(app, other.user["id"]) == []


@pytest_twisted.ensureDeferred
async def test_unverified_email_is_neither_kept_nor_linked(app: Running) -> None:
    """email_verified false: the new account keeps no email, links nothing and claims no
    address (so it can never link later)."""
    ids = Identities(app.db)
    verified_owner = await ids.sign_in(claims("v", "shared@example.com"), None)
    stranger = await ids.sign_in(claims("u", "shared@example.com", verified=False), None)
    assert stranger.id != verified_owner.id
    assert (await user_row(app, stranger.id))["email"] is None
    rows = await app.db.query("SELECT email FROM identities WHERE subject = 'u'")
    assert rows == [{"email": None}]
    fresh = await ids.sign_in(claims("w", "fresh@example.com", verified=False), None)
    assert (await user_row(app, fresh.id))["email"] is None
    # An unverified link does not verify a typed address either.
    typed = await password_user(app, "typed", "typed@example.com")
    assert typed.user is not None
    await ids.sign_in(claims("t", "typed@example.com", verified=False), typed.user["id"])
    assert not (await user_row(app, typed.user["id"]))["verified"]


@pytest_twisted.ensureDeferred
async def test_disabled_accounts_are_refused(app: Running) -> None:
    ids = Identities(app.db)
    dora = await ids.sign_in(claims("d", "dora@example.com"), None)
    await app.db.execute("UPDATE users SET disabled_at = now() WHERE id = %s", (dora.id,))
    assert await refused(ids, claims("d", "dora@example.com")) == "account_disabled"
    # (by email too: her verified address links a new identity only to refuse it)
    assert await refused(ids, claims("d2", "dora@example.com", provider="x")) == "account_disabled"
    assert await refused(ids, claims("new"), dora.id) == "account_disabled"
    assert app.server.accounts is not None
    assert await app.server.accounts.open_trusted_session(dora.id) is None


@pytest.mark.parametrize("mode", ["closed", "invite"])
@pytest_twisted.ensureDeferred
async def test_registration_modes(app: Running, mode: str) -> None:
    """Only open registration lets a sign-in make an account, but the very first account
    may always be made (it is the admin); sign-ins of existing accounts still work."""
    ids = Identities(app.db, mode)
    admin = await ids.sign_in(claims("first", "admin@example.com"), None)
    assert admin.is_admin
    assert await refused(ids, claims("second", "second@example.com")) == "registration_closed"
    assert (await ids.sign_in(claims("first"), None)).id == admin.id
    assert (await ids.sign_in(claims("x", "admin@example.com", provider="gh"), None)).id == admin.id
    rows = await app.db.query("SELECT count(*) AS n FROM users")
    assert rows[0]["n"] == 1


# --- the routes -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_identities_routes(app: Running) -> None:
    """Own identities only; unlinking: signed out 401, foreign Origin 403, another's or a
    non-id 404, the last way in 409; then 204."""
    sso = await sso_browser(app, claims("e1", "erin@example.com", username="erin"))
    listed = await sso.call("GET", "/api/auth/identities")
    assert listed.code == 200
    assert [(i["provider"], i["label"], i["email"]) for i in listed.body] == [
        ("oidc", "OpenID Connect", "erin@example.com")
    ]
    assert set(listed.body[0]) == {"id", "provider", "label", "email", "created_at", "last_used_at"}
    first_id = listed.body[0]["id"]
    me = await sso.call("GET", "/api/auth/me")
    assert me.code == 200 and me.body["has_password"] is False

    anon = app.client()
    assert (await anon.call("GET", "/api/auth/identities")).code == 401
    assert (await anon.call("DELETE", f"/api/auth/identities/{first_id}")).code == 401
    evil = await sso.call("DELETE", f"/api/auth/identities/{first_id}", headers=EVIL)
    assert evil.code == 403
    last = await sso.call("DELETE", f"/api/auth/identities/{first_id}")
    assert (last.code, last.error_code) == (409, "last_sign_in_method")

    other = await sso_browser(app, claims("f1", "frank@example.com", provider="github"))
    others = await other.call("GET", "/api/auth/identities")
    assert [i["label"] for i in others.body] == ["GitHub"]
    foreign = await sso.call("DELETE", f"/api/auth/identities/{others.body[0]['id']}")
    assert (foreign.code, foreign.error_code) == (404, "identity_not_found")
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        assert (await sso.call("DELETE", f"/api/auth/identities/{bad}")).code == 404

    # A second identity: now either may go, but not both.
    await sso_browser(app, claims("e2", provider="github"), link_to=sso.user.id)
    two = (await sso.call("GET", "/api/auth/identities")).body
    assert len(two) == 2
    assert (await sso.call("DELETE", f"/api/auth/identities/{first_id}")).code == 204
    rest = (await sso.call("GET", "/api/auth/identities")).body
    assert [i["provider"] for i in rest] == ["github"]
    again = await sso.call("DELETE", f"/api/auth/identities/{rest[0]['id']}")
    assert again.code == 409
    assert len((await other.call("GET", "/api/auth/identities")).body) == 1


@pytest_twisted.ensureDeferred
async def test_first_password_then_unlink(app: Running) -> None:
    """An SSO-made account sets its first password without a current one (only then); with a
    password, its last identity may go, and the password signs it in."""
    sso = await sso_browser(app, claims("g1", "gina@example.com", username="gina"))
    short = await sso.call("PUT", "/api/auth/password", {"new_password": "short"})
    assert (short.code, short.body["error"]["field"]) == (400, "new_password")
    evil = await sso.call("PUT", "/api/auth/password", {"new_password": PASSWORD}, headers=EVIL)
    assert evil.code == 403
    assert (
        await app.client().call("PUT", "/api/auth/password", {"new_password": PASSWORD})
    ).code == 401
    # A session opened long ago (perhaps stolen) may not choose the password.
    await app.db.execute("UPDATE sessions SET created_at = now() - interval '16 minutes'")
    stale = await sso.call("PUT", "/api/auth/password", {"new_password": PASSWORD})
    assert (stale.code, stale.error_code) == (403, "sign_in_again")
    assert (await sso.call("GET", "/api/auth/me")).body["has_password"] is False
    await app.db.execute("UPDATE sessions SET created_at = now() - interval '14 minutes'")
    assert (await sso.call("PUT", "/api/auth/password", {"new_password": PASSWORD})).code == 204
    assert (await sso.call("GET", "/api/auth/me")).body["has_password"] is True
    # Now the current password is required again, and checked.
    again = await sso.call("PUT", "/api/auth/password", {"new_password": "another-one"})
    assert (again.code, again.body["error"]["field"]) == (400, "current_password")
    wrong = await sso.call(
        "PUT", "/api/auth/password", {"current_password": "nope-nope", "new_password": "x" * 9}
    )
    assert (wrong.code, wrong.error_code) == (403, "wrong_password")
    only = (await sso.call("GET", "/api/auth/identities")).body[0]["id"]
    assert (await sso.call("DELETE", f"/api/auth/identities/{only}")).code == 204
    logged = await app.client().call(
        "POST", "/api/auth/login", {"username": "gina", "password": PASSWORD}
    )
    assert logged.code == 200 and logged.body["has_password"] is True


@pytest_twisted.ensureDeferred
async def test_password_users_have_password(app: Running) -> None:
    hank = await password_user(app, "hank")
    assert hank.user is not None and hank.user["has_password"] is True
    me = await hank.call("GET", "/api/auth/me")
    assert me.body["has_password"] is True
    assert (await hank.call("GET", "/api/auth/identities")).body == []
    registration = await app.client().call("GET", "/api/auth/registration")
    assert registration.body["password_login"] is True
    assert (await app.client().call("GET", "/api/auth/providers")).body == []


@pytest_twisted.ensureDeferred
async def test_password_login_off(db_url: str) -> None:
    """Sign-in by single sign-on only: password login and registration are refused with a
    reason; the sign-in screen is told; a password no longer counts as a way in."""
    github = GithubLogin("client-id", "client-secret")
    config = attrs.evolve(server_config(db_url), password_login=False, github=github)
    app = await start_server(db_url, config=config)
    try:
        client = app.client()
        assert (await client.call("GET", "/api/auth/providers")).body == [
            {"name": "github", "label": "GitHub", "login_url": "/api/auth/oidc/github/login"}
        ]
        reg = await client.call(
            "POST", "/api/auth/register", {"username": "ivan", "password": PASSWORD}
        )
        assert (reg.code, reg.error_code) == (403, "password_login_off")
        assert reg.body["error"]["message"] == "this server signs people in with GitHub only"
        login = await client.call(
            "POST", "/api/auth/login", {"username": "ivan", "password": PASSWORD}
        )
        assert (login.code, login.error_code) == (403, "password_login_off")
        assert (await client.call("GET", "/api/auth/registration")).body["password_login"] is False
        rows = await app.db.query("SELECT count(*) AS n FROM users")
        assert rows[0]["n"] == 0
        sso = await sso_browser(
            app, claims("j1", "jo@example.com", username="jo", provider="github")
        )
        assert sso.user.is_admin
        listed = (await sso.call("GET", "/api/auth/identities")).body
        assert [i["label"] for i in listed] == ["GitHub"]
        assert (await sso.call("PUT", "/api/auth/password", {"new_password": PASSWORD})).code == 204
        only = (await sso.call("GET", "/api/auth/identities")).body[0]["id"]
        last = await sso.call("DELETE", f"/api/auth/identities/{only}")
        assert (last.code, last.error_code) == (409, "last_sign_in_method")
    finally:
        await stop_server(app)


@pytest_twisted.ensureDeferred
async def test_migration_keeps_existing_users(postgres: EmbeddedPostgres) -> None:
    """An instance from before 0010: its users keep their emails, none verified."""
    reactor = _reactor()
    name = "m_" + uuid.uuid4().hex[:16]
    server = Database(reactor, postgres.dsn)
    await server.execute(f"CREATE DATABASE {name}")
    db = Database(reactor, postgres.dsn.replace("dbname=cli_server", f"dbname={name}"))
    try:
        everything = load_migrations()
        await migrate(db, [m for m in everything if m.version < 10])
        await db.execute(
            "INSERT INTO users (id, username, email) VALUES (%s, 'old', 'old@example.com')",
            (str(uuid.uuid4()),),
        )
        assert await migrate(db) == [m.version for m in everything if m.version >= 10]
        rows = await db.query("SELECT email, email_verified_at FROM users")
        assert rows == [{"email": "old@example.com", "email_verified_at": None}]
        assert await db.query("SELECT * FROM identities") == []
    finally:
        db.close()
        await server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        server.close()


@pytest_twisted.ensureDeferred
async def test_bad_input_changes_nothing(app: Running) -> None:
    """A first password or an unlink with a bad body or id: 400 naming the field (or 404 for
    an id), and the account keeps no password and its identity."""
    sso = await sso_browser(app, claims("k1", "kim@example.com", username="kim"))
    cases: list[tuple[Any, int, str]] = [
        ({"new_password": 12345678}, 400, "new_password"),
        ({"new_password": ["a" * 9]}, 400, "new_password"),
        ({"current_password": 5, "new_password": "long enough"}, 400, "current_password"),
        ({"current_password": None, "new_password": "x" * 2000}, 400, "new_password"),
        ({}, 400, "new_password"),
    ]
    for body, status, field in cases:
        said = await sso.call("PUT", "/api/auth/password", body)
        assert (said.code, said.body["error"].get("field")) == (status, field), body
    raw = await sso.api.call(
        "PUT",
        "/api/auth/password",
        raw=b"{not json",
        headers={"Cookie": f"cli_session={sso.token}", "Content-Type": "application/json"},
    )
    assert (raw.code, raw.body["error"]["field"]) == (400, "body")
    for bad in ("%00", "1" * 300, "..%2f..%2fusers"):
        assert (await sso.call("DELETE", f"/api/auth/identities/{bad}")).code == 404
    assert (await user_row(app, sso.user.id))["no_password"]
    assert await identities_of(app, sso.user.id) == [("oidc", "k1")]
