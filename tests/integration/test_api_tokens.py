"""Personal API tokens against the real server on real PostgreSQL: made and revoked over the
API, stored hashed, and walked over every declared route — a token's scope, its workspace and
its validity decide, the same way on each route — and accepted nowhere but the REST API."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_twisted
from jsonschema import Draft202012Validator
from twisted.internet.defer import gatherResults
from twisted.logger import globalLogPublisher

from cli_server.domain.api_tokens import covers
from cli_server.web.auth_api import AuthAPI
from cli_server.web.bearer import WORKSPACE_ARGUMENTS
from cli_server.web.routes import declared

from .conftest import Running
from .fingerprint import fingerprint
from .helpers import Api, Reply
from .test_anthropic_proxy import World, world  # noqa: F401 (the fixture)
from .test_proxy import Proxy, proxy  # noqa: F401 (the fixture)
from .test_route_declarations import _ARGUMENT, FOREIGN, MOUNTS, _fill, _world

REFUSED_BY_TOKEN = {"insufficient_scope", "session_only", "invalid_token", "token_workspace"}


def _in(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat().replace("+00:00", "Z")


async def _token(
    client: Api, scope: str, workspace_id: str | None = None, name: str = "ci", **extra: Any
) -> str:
    body: dict[str, Any] = {"name": name, "scope": scope, "expires_at": _in(30), **extra}
    if workspace_id is not None:
        body["workspace_id"] = workspace_id
    made = await client.call("POST", "/api/auth/tokens", body)
    assert made.code == 201, made
    return str(made.body["token"])


def _as(app: Running, token: str, **headers: str) -> Any:
    """Calls made with ``token`` only (a client with no cookies)."""
    client = app.client()

    def call(method: str, path: str, body: Any = None) -> Any:
        return client.call(
            method, path, body, headers={"Authorization": f"Bearer {token}", **headers}
        )

    return call


def _conforms(schema: Any, value: Any) -> None:
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(value)]
    assert not errors, (errors, value)


def _sent(reply: Reply) -> dict[str, Any]:
    """The body a token was created with, as the API echoes it (the secret left out)."""
    return {k: reply.body[k] for k in ("name", "scope", "workspace_id", "expires_at")}


def _declared_routes() -> list[tuple[str, str, str, bool]]:
    """(method, path pattern, scope, across_workspaces) of every non-public route."""
    walked = []
    for prefix, app in MOUNTS:
        names = declared(app)
        for rule in app.url_map.iter_rules():
            declaration = names[rule.endpoint]
            if declaration.public:
                continue
            for method in sorted(rule.methods or ()):
                walked.append(
                    (method, prefix + rule.rule, declaration.scope, declaration.across_workspaces)
                )
    return walked


def _ids_of(pattern: str) -> set[str]:
    return set(_ARGUMENT.findall(pattern))


async def _used_once(app: Running, *tokens: str) -> None:
    """Each token used once, so its last_used_at is written now and not again for a minute:
    the fingerprints below then see only what a request changed."""
    for token in tokens:
        assert (await _as(app, token)("GET", "/api/auth/me")).code == 200


@pytest_twisted.ensureDeferred
async def test_create_list_revoke(app: Running) -> None:
    """201 with the secret once; the list has no secret and shows the last use; DELETE ends
    it at once (401 after, the same as an unknown token)."""
    alice = app.client()
    await alice.register_and_login("alice")
    wid = (await alice.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    expires = _in(10)
    made = await alice.call(
        "POST",
        "/api/auth/tokens",
        {"name": "deploy", "scope": "write", "workspace_id": wid, "expires_at": expires},
    )
    assert made.code == 201, made
    assert set(made.body) == {
        "id",
        "token",
        "name",
        "scope",
        "workspace_id",
        "created_at",
        "expires_at",
        "last_used_at",
    }
    routes = declared(AuthAPI.app)
    made_with = _sent(made)
    _conforms(routes["create_token"].body, made_with)
    _conforms(routes["create_token"].answers[201], made.body)
    secret = made.body["token"]
    assert secret.startswith("cli_pat_") and len(secret) == 8 + 43
    assert made.body["last_used_at"] is None and made.body["workspace_id"] == wid
    assert made.body["scope"] == "write" and made.body["name"] == "deploy"
    listed = await alice.call("GET", "/api/auth/tokens")
    assert listed.code == 200 and [t["id"] for t in listed.body] == [made.body["id"]]
    _conforms(routes["list_tokens"].answers[200], listed.body)
    assert made_with["expires_at"] == expires
    assert secret not in json.dumps(listed.body) and "token" not in listed.body[0]
    assert listed.body[0]["last_used_at"] is None
    me = await _as(app, secret)("GET", "/api/auth/me")
    assert me.code == 200 and me.body["username"] == "alice"
    used = (await alice.call("GET", "/api/auth/tokens")).body[0]["last_used_at"]
    assert used is not None
    # The last use is written at most once a minute; after that, again.
    assert (await _as(app, secret)("GET", "/api/auth/me")).code == 200
    assert (await alice.call("GET", "/api/auth/tokens")).body[0]["last_used_at"] == used
    await app.db.execute("UPDATE api_tokens SET last_used_at = last_used_at - interval '61 s'")
    assert (await _as(app, secret)("GET", "/api/auth/me")).code == 200
    assert (await alice.call("GET", "/api/auth/tokens")).body[0]["last_used_at"] != used
    # Signing out is a browser's business: the token goes on working.
    assert (await alice.call("POST", "/api/auth/logout")).code == 204
    assert (await _as(app, secret)("GET", "/api/auth/me")).code == 200
    await alice.call("POST", "/api/auth/login", {"username": "alice", "password": "password123"})
    assert (await alice.call("DELETE", f"/api/auth/tokens/{made.body['id']}")).code == 204
    gone = await _as(app, secret)("GET", "/api/auth/me")
    assert gone.code == 401 and gone.error_code == "invalid_token"
    assert (await alice.call("GET", "/api/auth/tokens")).body == []
    again = await alice.call("DELETE", f"/api/auth/tokens/{made.body['id']}")
    assert again.code == 404 and again.error_code == "token_not_found"
    # Someone else's token cannot be revoked by id: it is not found.
    other = await _token(alice, "read")
    (row,) = await app.db.query("SELECT id FROM api_tokens WHERE revoked_at IS NULL")
    bob = app.client()
    await bob.register_and_login("bob")
    assert (await bob.call("DELETE", f"/api/auth/tokens/{row['id']}")).code == 404
    assert (await _as(app, other)("GET", "/api/auth/me")).code == 200


@pytest_twisted.ensureDeferred
async def test_bad_bodies_name_the_field(app: Running) -> None:
    """Bad name, scope, date (not ISO 8601, no zone, past, over a year), workspace id (not
    one), extra fields: 400 naming the field; a workspace not the caller's: 404. Nothing is
    stored."""
    alice, bob = app.client(), app.client()
    await alice.register_and_login("alice")
    await bob.register_and_login("bob")
    theirs = (await bob.call("POST", "/api/workspaces", {"name": "b"})).body["id"]
    good = {"name": "n", "scope": "read", "expires_at": _in(1)}
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({**good, "name": ""}, 400, "name"),
        ({**good, "name": "x" * 101}, 400, "name"),
        ({k: v for k, v in good.items() if k != "name"}, 400, "name"),
        ({**good, "scope": "root"}, 400, "scope"),
        ({**good, "scope": "session"}, 400, "scope"),
        ({k: v for k, v in good.items() if k != "scope"}, 400, "scope"),
        ({**good, "expires_at": "tomorrow"}, 400, "expires_at"),
        ({**good, "expires_at": "2030-01-01T00:00:00"}, 400, "expires_at"),
        ({**good, "expires_at": _in(-1)}, 400, "expires_at"),
        ({**good, "expires_at": _in(367)}, 400, "expires_at"),
        ({**good, "expires_at": 1893456000}, 400, "expires_at"),
        ({k: v for k, v in good.items() if k != "expires_at"}, 400, "expires_at"),
        ({**good, "admin": True}, 400, "admin"),
        ({**good, "workspace_id": 7}, 400, "workspace_id"),
        ({**good, "workspace_id": theirs}, 404, None),
        ({**good, "workspace_id": "not-an-id"}, 400, "workspace_id"),
    ]
    for body, status, field in cases:
        reply = await alice.call("POST", "/api/auth/tokens", body)
        assert reply.code == status, (body, reply)
        if field is not None:
            assert reply.body["error"]["field"] == field, (body, reply)
        else:
            assert reply.error_code == "workspace_not_found", reply
    assert await app.db.query("SELECT 1 FROM api_tokens") == []
    a_year = await alice.call("POST", "/api/auth/tokens", {**good, "expires_at": _in(365)})
    assert a_year.code == 201, a_year


@pytest_twisted.ensureDeferred
async def test_stored_hashed_and_never_shown_again(app: Running) -> None:
    """The row holds the secret's SHA-256 and nothing else of it; it goes with its user."""
    alice = app.client()
    await alice.register_and_login("alice")
    secret = await _token(alice, "read")
    (row,) = await app.db.query("SELECT *, t::text AS everything FROM api_tokens t")
    assert bytes(row["token_hash"]) == hashlib.sha256(secret.encode()).digest()
    assert secret not in row["everything"] and secret[8:] not in row["everything"]
    assert secret not in json.dumps((await alice.call("GET", "/api/auth/tokens")).body)
    # An account deleted (there is no API for it; an operator's SQL) takes its tokens along.
    await app.db.execute("DELETE FROM users WHERE username = 'alice'")
    assert await app.db.query("SELECT 1 FROM api_tokens") == []
    assert (await _as(app, secret)("GET", "/api/auth/me")).code == 401


@pytest_twisted.ensureDeferred
async def test_scope_matrix_over_every_declared_route(app: Running) -> None:
    """Every declared non-public route, with a read, a write and an admin token of the
    instance admin (who owns everything the paths name): a token whose scope does not cover
    the route's gets 403 (``session`` routes: 403 for every token) and changes nothing; a
    token whose scope covers a read route is let through."""
    admin, ids = await _world(app)
    tokens = {scope: await _token(admin, scope) for scope in ("read", "write", "admin")}
    ids["token_id"] = "00000000-0000-4000-8000-000000000000"
    await _used_once(app, *tokens.values())
    routes = _declared_routes()
    assert {scope for _, _, scope, _ in routes} == {"read", "write", "admin", "session"}
    before = await fingerprint(app.db)
    wrong, refused, let_through = [], 0, 0
    for method, pattern, needed, _ in routes:
        path = _fill(pattern, ids)
        for scope, token in tokens.items():
            if covers(scope, needed) and method not in ("GET", "HEAD"):
                continue  # (it would act; the acting is tested elsewhere)
            body = None if method in ("GET", "HEAD") else {"n": 1}
            reply = await _as(app, token)(method, path, body)
            if not covers(scope, needed):
                code = "session_only" if needed == "session" else "insufficient_scope"
                expected = (403, code if method != "HEAD" else None)
                if (reply.code, reply.error_code) != expected:
                    wrong.append(f"{scope} {method} {path}: {reply.code} {reply.body}")
                refused += 1
            else:
                if reply.code in (401, 403) or reply.error_code in REFUSED_BY_TOKEN:
                    wrong.append(f"{scope} {method} {path}: {reply.code} {reply.body}")
                let_through += 1
    assert not wrong, "\n".join(wrong)
    assert refused > 30 and let_through > 20, (refused, let_through)
    assert await fingerprint(app.db) == before


@pytest_twisted.ensureDeferred
async def test_admin_routes_need_admin_scope_and_the_instance_admin(app: Running) -> None:
    """A token's admin scope makes no one the instance admin: bob's admin token gets 403
    ``not_admin`` on the users page; the admin's write token gets 403 too; the admin's admin
    token may."""
    admin, _ = await _world(app)
    bob = app.client()
    await bob.call("POST", "/api/auth/login", {"username": "bob", "password": "password123"})
    bobs = await _token(bob, "admin")
    refused = await _as(app, bobs)("GET", "/api/admin/users")
    assert (refused.code, refused.error_code) == (403, "not_admin"), refused
    writes = await _as(app, await _token(admin, "write"))("GET", "/api/admin/users")
    assert (writes.code, writes.error_code) == (403, "insufficient_scope"), writes
    allowed = await _as(app, await _token(admin, "admin"))("GET", "/api/admin/users")
    assert allowed.code == 200 and {u["username"] for u in allowed.body} >= {"root", "bob"}


@pytest_twisted.ensureDeferred
async def test_a_read_token_cannot_write(app: Running) -> None:
    """The plain case, for people reading the tests first: read lists, write creates."""
    alice = app.client()
    await alice.register_and_login("alice")
    read, write = await _token(alice, "read"), await _token(alice, "write")
    refused = await _as(app, read)("POST", "/api/workspaces", {"name": "r"})
    assert (refused.code, refused.error_code) == (403, "insufficient_scope")
    made = await _as(app, write)("POST", "/api/workspaces", {"name": "w"})
    assert made.code == 201
    listed = await _as(app, read)("GET", "/api/workspaces")
    assert [w["name"] for w in listed.body] == ["w"]
    # A token manages tokens only with the admin scope.
    for token in (read, write):
        reply = await _as(app, token)("GET", "/api/auth/tokens")
        assert (reply.code, reply.error_code) == (403, "insufficient_scope")


async def _two_workspaces(app: Running) -> dict[str, Any]:
    """root owns A and B, each with a sandbox and an invitation for carol; bob is a
    developer in both and has an invitation to C."""
    admin, ids = await _world(app)  # (its workspace is A)
    a = ids["workspace_id"]
    b = (await admin.call("POST", "/api/workspaces", {"name": "B"})).body["id"]
    c = (await admin.call("POST", "/api/workspaces", {"name": "C"})).body["id"]
    bob = app.client()
    await bob.call("POST", "/api/auth/login", {"username": "bob", "password": "password123"})
    bob.user = (await bob.call("GET", "/api/auth/me")).body
    await admin.add_member(b, bob, "developer")
    to_c = await admin.call("POST", f"/api/workspaces/{c}/members", {"username": "bob"})
    sandbox_b = await admin.call("POST", f"/api/workspaces/{b}/sandboxes", {"name": "sb"})
    invited_b = await admin.call(
        "POST", f"/api/workspaces/{b}/members", {"username": "carol", "role": "guest"}
    )
    assert {to_c.code, sandbox_b.code, invited_b.code} == {201}
    other_ids = {
        **ids,
        "workspace_id": b,
        "sandbox_id": sandbox_b.body["id"],
        "invitation_id": invited_b.body["invitation_id"],
        "token_id": "00000000-0000-4000-8000-000000000000",
    }
    return {
        "admin": admin,
        "bob": bob,
        "a": a,
        "b": b,
        "c": c,
        "ids_a": ids,
        "ids_b": other_ids,
        "bob_invitation": to_c.body["invitation_id"],
    }


@pytest_twisted.ensureDeferred
async def test_a_workspace_token_reaches_nothing_of_another_workspace(app: Running) -> None:
    """Every declared non-public route, with an admin-scope token of root's restricted to A,
    its path naming B's workspace, sandbox and invitation: 404 like an unknown id; a route
    about no single workspace that is not declared to narrow for such a token: 403
    ``token_workspace``; nothing changed."""
    two = await _two_workspaces(app)
    token = await _token(two["admin"], "admin", two["a"])
    await _used_once(app, token)
    before = await fingerprint(app.db)
    wrong, walked = [], 0
    for method, pattern, needed, across in _declared_routes():
        path = _fill(pattern, two["ids_b"])
        body = None if method in ("GET", "HEAD") else {"n": 1}
        reply = await _as(app, token)(method, path, body)
        names = _ids_of(pattern) & set(WORKSPACE_ARGUMENTS)
        if needed == "session":
            expected: tuple[int, str | None] = (403, "session_only")
        elif names:
            what = WORKSPACE_ARGUMENTS[sorted(names)[0]]
            expected = (404, f"{what}_not_found")
        elif across:
            continue  # (the lists and the caller's own account: below)
        else:
            expected = (403, "token_workspace")
        if method == "HEAD":
            expected = (expected[0], None)
        walked += 1
        if (reply.code, reply.error_code) != expected:
            wrong.append(f"{method} {path}: {reply.code} {reply.body} (expected {expected})")
    assert not wrong, "\n".join(wrong)
    assert walked > 30, walked
    assert await fingerprint(app.db) == before


@pytest_twisted.ensureDeferred
async def test_a_workspace_token_sees_only_its_workspace(app: Running) -> None:
    """bob's write token for A: lists show A only (workspaces, invitations, tokens); A's
    sandbox answers, B's and C's things are not found; it cannot make a token for B or one
    for every workspace, nor one that outlives it."""
    two = await _two_workspaces(app)
    bob, a, b = two["bob"], two["a"], two["b"]
    write = await _token(bob, "write", a)
    call = _as(app, write)
    listed = await call("GET", "/api/workspaces")
    assert [w["id"] for w in listed.body] == [a], listed
    assert len((await bob.call("GET", "/api/workspaces")).body) == 2
    assert (await call("GET", "/api/invitations")).body == []
    assert len((await bob.call("GET", "/api/invitations")).body) == 1
    accept = await call("POST", f"/api/invitations/{two['bob_invitation']}/accept")
    assert (accept.code, accept.error_code) == (404, "invitation_not_found")
    assert (await call("GET", f"/api/workspaces/{a}")).code == 200
    assert (await call("GET", f"/api/workspaces/{b}")).code == 404
    assert (await call("GET", f"/api/sandboxes/{two['ids_a']['sandbox_id']}")).code == 200
    assert (await call("GET", f"/api/sandboxes/{two['ids_b']['sandbox_id']}")).code == 404
    made = await call("POST", f"/api/workspaces/{a}/sandboxes", {"name": "by-token"})
    assert made.code == 201, made
    elsewhere = await call("POST", f"/api/workspaces/{b}/sandboxes", {"name": "no"})
    assert (elsewhere.code, elsewhere.error_code) == (404, "workspace_not_found")
    new = await call("POST", "/api/workspaces", {"name": "mine"})
    assert (new.code, new.error_code) == (403, "token_workspace")

    admin_a = await _token(bob, "admin", a, expires_at=_in(5))
    unrestricted = await _token(bob, "read", name="all of them")
    manage = _as(app, admin_a)
    for_b = await manage(
        "POST", "/api/auth/tokens", {"name": "b", "scope": "read", "workspace_id": b, **_exp(1)}
    )
    assert (for_b.code, for_b.error_code) == (404, "workspace_not_found")
    narrowed = await manage("POST", "/api/auth/tokens", {"name": "x", "scope": "read", **_exp(1)})
    assert narrowed.code == 201 and narrowed.body["workspace_id"] == a, narrowed
    longer = await manage("POST", "/api/auth/tokens", {"name": "y", "scope": "read", **_exp(6)})
    assert (longer.code, longer.body["error"]["field"]) == (400, "expires_at")
    seen = {t["name"] for t in (await manage("GET", "/api/auth/tokens")).body}
    assert seen == {"ci", "x"}, seen  # (A's tokens; its own is "ci")
    (row,) = await app.db.query("SELECT id FROM api_tokens WHERE name = 'all of them'")
    assert (await manage("DELETE", f"/api/auth/tokens/{row['id']}")).code == 404
    assert (await _as(app, unrestricted)("GET", "/api/auth/me")).code == 200
    # Revoking the token that made one revokes that one too.
    (maker,) = await app.db.query(
        "SELECT id FROM api_tokens WHERE made_by IS NULL AND expires_at < now() + interval '6 days'"
    )
    assert (await bob.call("DELETE", f"/api/auth/tokens/{maker['id']}")).code == 204
    made_by_it = _as(app, narrowed.body["token"])
    assert (await made_by_it("GET", f"/api/workspaces/{a}")).code == 401
    assert (await call("GET", f"/api/workspaces/{a}")).code == 200


def _exp(days: float) -> dict[str, str]:
    return {"expires_at": _in(days)}


@pytest_twisted.ensureDeferred
async def test_invalid_tokens_get_one_401(app: Running) -> None:
    """Unknown, malformed, expired, revoked, and a disabled user's: the same 401 with
    ``WWW-Authenticate: Bearer``, so the answer tells nothing about which; a session cookie
    beside a bad token does not help; enabling the user again revives none."""
    admin = app.client()
    await admin.register_and_login("root")
    bob = app.client()
    await bob.register_and_login("bob")
    expired, revoked, disabled = [await _token(bob, "read", name=n) for n in "erd"]
    await app.db.execute("UPDATE api_tokens SET expires_at = now() WHERE name = 'e'")
    (row,) = await app.db.query("SELECT id FROM api_tokens WHERE name = 'r'")
    assert (await bob.call("DELETE", f"/api/auth/tokens/{row['id']}")).code == 204
    assert (await _as(app, disabled)("GET", "/api/auth/me")).code == 200
    assert bob.user is not None
    off = await admin.call("POST", f"/api/admin/users/{bob.user['id']}/disable")
    assert off.code == 204
    unknown = "cli_pat_" + "A" * 43
    answers = []
    for token in (unknown, "nonsense", "", expired, revoked, disabled, disabled + "x"):
        reply = await _as(app, token)("GET", "/api/workspaces")
        answers.append(reply)
        assert reply.code == 401, (token, reply)
        assert reply.headers.getRawHeaders("www-authenticate")[0].startswith("Bearer")
    assert len({json.dumps(r.body) for r in answers}) == 1
    assert answers[0].error_code == "invalid_token"
    # Anything after the token: refused too.
    alice = app.client()
    await alice.register_and_login("alice")
    good = await _token(alice, "read")
    double = await app.client().call(
        "GET", "/api/auth/me", headers={"Authorization": f"Bearer {good}, Basic eA=="}
    )
    assert double.code == 401
    # A valid session cookie does not rescue a bad token, nor does it take its place.
    with_cookie = await alice.call(
        "GET", "/api/auth/me", headers={"Authorization": f"Bearer {unknown}"}
    )
    assert (with_cookie.code, with_cookie.error_code) == (401, "invalid_token")
    assert (await admin.call("POST", f"/api/admin/users/{bob.user['id']}/enable")).code == 204
    assert (await _as(app, disabled)("GET", "/api/auth/me")).code == 401


@pytest_twisted.ensureDeferred
async def test_a_new_password_ends_every_token(app: Running) -> None:
    """A token minted with a stolen session is gone once the owner changes the password, the
    admin resets it, or an account made by single sign-on sets its first one: the thief is
    left with nothing (the tokens made with those tokens too)."""
    admin = app.client()
    await admin.register_and_login("root")
    alice = app.client()
    await alice.register_and_login("alice")
    thief = app.client()
    for cookie in alice.jar:
        thief.jar.set_cookie(cookie)
    stolen = await _token(thief, "admin")
    child = await _token(_Client(app, stolen), "write", name="child", expires_at=_in(20))
    other = await _token(admin, "read")
    changed = await alice.call(
        "PUT",
        "/api/auth/password",
        {"current_password": "password123", "new_password": "newpassword456"},
    )
    assert changed.code == 204
    for token in (stolen, child):
        gone = await _as(app, token)("GET", "/api/auth/me")
        assert (gone.code, gone.error_code) == (401, "invalid_token")
    assert (await alice.call("GET", "/api/auth/tokens")).body == []
    # The admin's reset ends the tokens too.
    again = await _token(alice, "write")
    assert alice.user is not None
    reset = await admin.call("POST", f"/api/admin/users/{alice.user['id']}/password")
    assert reset.code == 200
    assert (await _as(app, again)("GET", "/api/auth/me")).code == 401
    # So does a first password (an account that had none, as single sign-on makes them).
    newcomer = app.client()
    await newcomer.register_and_login("carol")
    last = await _token(newcomer, "read")
    await app.db.execute("UPDATE users SET password_hash = NULL WHERE username = 'carol'")
    first = await newcomer.call("PUT", "/api/auth/password", {"new_password": "carolpassword1"})
    assert first.code == 204, first
    assert (await _as(app, last)("GET", "/api/auth/me")).code == 401
    # Nobody else's token is touched.
    assert (await _as(app, other)("GET", "/api/auth/me")).code == 200


@pytest_twisted.ensureDeferred
async def test_a_browser_makes_tokens_only_soon_after_signing_in(app: Running) -> None:
    """A session older than 15 minutes is refused (403 ``sign_in_again``): a stolen cookie
    alone mints no token. A token making a token needs no sign-in."""
    alice = app.client()
    await alice.register_and_login("alice")
    parent = await _token(alice, "admin")
    await app.db.execute("UPDATE sessions SET created_at = now() - interval '16 minutes'")
    stale = await alice.call(
        "POST", "/api/auth/tokens", {"name": "late", "scope": "read", "expires_at": _in(3)}
    )
    assert (stale.code, stale.error_code) == (403, "sign_in_again")
    assert "sign in again" in stale.body["error"]["message"]
    (count,) = await app.db.query("SELECT count(*) AS n FROM api_tokens")
    assert count["n"] == 1
    by_token = await _token(_Client(app, parent), "read", name="by-token", expires_at=_in(20))
    assert by_token.startswith("cli_pat_")
    # Listing and revoking need no fresh sign-in.
    assert (await alice.call("GET", "/api/auth/tokens")).code == 200
    await app.db.execute("UPDATE sessions SET created_at = now() - interval '14 minutes'")
    assert (await _token(alice, "read", name="fresh")).startswith("cli_pat_")


@pytest_twisted.ensureDeferred
async def test_no_child_escapes_its_makers_revocation(app: Running) -> None:
    """Tokens being made with a token while it is revoked: each is refused (401) or revoked
    with its maker; none outlives it (the review saw 82 of 90 escape)."""
    alice = app.client()
    await alice.register_and_login("alice")
    outcomes: list[int] = []
    for round_ in range(5):
        made = await alice.call(
            "POST",
            "/api/auth/tokens",
            {"name": f"parent{round_}", "scope": "admin", "expires_at": _in(30)},
        )
        parent = _as(app, made.body["token"])
        children = [
            parent(
                "POST",
                "/api/auth/tokens",
                {"name": f"child{round_}-{i}", "scope": "admin", "expires_at": _in(20)},
            )
            for i in range(6)
        ]
        revoked = alice.call("DELETE", f"/api/auth/tokens/{made.body['id']}")
        *answers, revoke = await gatherResults([*children, revoked])
        assert revoke.code == 204
        for answer in answers:
            assert answer.code in (201, 401), answer
            outcomes.append(answer.code)
            if answer.code == 201:
                after = await _as(app, answer.body["token"])("GET", "/api/auth/me")
                assert (after.code, after.error_code) == (401, "invalid_token")
    (alive,) = await app.db.query("SELECT count(*) AS n FROM api_tokens WHERE revoked_at IS NULL")
    assert alive["n"] == 0
    assert len(outcomes) == 30


class _Client:
    """What ``_token`` needs of a client, calling with ``token`` only."""

    def __init__(self, app: Running, token: str) -> None:
        self._call = _as(app, token)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, path, body)


@pytest_twisted.ensureDeferred
async def test_cookies_are_ignored_on_a_token_request(app: Running) -> None:
    """A token request acts as the token's user even beside another user's session cookie;
    a foreign Origin does not matter to it (no cookie involved)."""
    alice, bob = app.client(), app.client()
    await alice.register_and_login("alice")
    await bob.register_and_login("bob")
    token = await _token(alice, "write")
    me = await bob.call("GET", "/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.body["username"] == "alice"
    made = await _as(app, token, Origin=FOREIGN)("POST", "/api/workspaces", {"name": "x"})
    assert made.code == 201, made
    # Without the token, the same foreign Origin is refused as before.
    refused = await alice.call(
        "POST", "/api/workspaces", {"name": "y"}, headers={"Origin": FOREIGN}
    )
    assert (refused.code, refused.error_code) == (403, "bad_origin")


@pytest_twisted.ensureDeferred
async def test_public_routes_keep_the_origin_rule_whatever_the_bearer(app: Running) -> None:
    """Login and registration from another site are refused (403 ``bad_origin``) even with
    an ``Authorization: Bearer`` header, bogus or valid: only a route that then requires a
    valid token skips the rule, and there a bogus one gets 401."""
    alice = app.client()
    await alice.register_and_login("alice")
    token = await _token(alice, "admin")
    for bearer in ("Bearer x", f"Bearer {token}"):
        headers = {"Authorization": bearer, "Origin": FOREIGN}
        for path, body in (
            ("/api/auth/login", {"username": "alice", "password": "password123"}),
            ("/api/auth/register", {"username": "mallory", "password": "password123"}),
        ):
            reply = await app.client().call("POST", path, body, headers=headers)
            assert (reply.code, reply.error_code) == (403, "bad_origin"), (bearer, path, reply)
            assert not reply.headers.getRawHeaders("set-cookie"), reply
        bogus = await alice.call("POST", "/api/workspaces", {"name": "x"}, headers=headers)
        expected = (401, "invalid_token") if bearer == "Bearer x" else (201, None)
        assert (bogus.code, bogus.error_code) == expected, bogus
    assert await app.db.query("SELECT 1 FROM users WHERE username = 'mallory'") == []


@pytest_twisted.ensureDeferred
async def test_a_token_is_no_session_cookie(app: Running) -> None:
    """The token's value as the session cookie authenticates nobody."""
    alice = app.client()
    await alice.register_and_login("alice")
    token = await _token(alice, "admin")
    # Nor is a session a token.
    (session,) = [c.value for c in alice.jar if c.name == "cli_session"]
    assert session and (await _as(app, session)("GET", "/api/auth/me")).code == 401
    for name in ("cli_session", "__Host-cli_session"):
        reply = await app.client().call(
            "GET", "/api/auth/me", headers={"Cookie": f"{name}={token}"}
        )
        assert (reply.code, reply.error_code) == (401, "unauthorized"), reply


@pytest_twisted.ensureDeferred
async def test_the_token_is_never_logged(app: Running) -> None:
    """Access log (every request logged) and log events: the secret appears in neither,
    whether the call succeeded, was refused or failed."""
    access = io.StringIO()
    site: Any = app.server.site
    site.access_log = "all"
    site.logFile = access
    events: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        events.append(repr(event))

    globalLogPublisher.addObserver(observe)
    try:
        alice = app.client()
        await alice.register_and_login("alice")
        token = await _token(alice, "read")
        call = _as(app, token)
        assert (await call("GET", "/api/workspaces")).code == 200
        assert (await call("POST", "/api/workspaces", {"name": "n"})).code == 403
        assert (await _as(app, token + "x")("GET", "/api/workspaces")).code == 401
        assert (await call("GET", "/api/sandboxes/not-an-id")).code == 404
        # Never taken from a URL (and never logged from one, nor from a Referer).
        in_url = await app.client().call(
            "GET", f"/api/auth/me?token={token}&access_token={token}", headers={"Referer": token}
        )
        assert (in_url.code, in_url.error_code) == (401, "unauthorized")
        assert (await app.client().call("GET", f"/api/x/{token}")).code == 404
        # Percent-encoded, as a URL decoder would still read it.
        encoded = "".join(f"%{ord(c):02X}" for c in token)
        assert (await app.client().call("GET", f"/api/y/{encoded}")).code == 404
    finally:
        globalLogPublisher.removeObserver(observe)
    logged = access.getvalue()
    assert '"GET /api/workspaces HTTP/1.1" 401' in logged, logged
    assert "/api/x/cli_pat_redacted" in logged, logged
    assert "/api/y/cli_pat_redacted" in logged and encoded[-24:] not in logged, logged
    assert token[8:] not in logged
    assert not [e for e in events if token[8:] in e]


@pytest_twisted.ensureDeferred
async def test_not_accepted_on_the_tunnel_or_agent_registration(app: Running) -> None:
    """The tunnel takes only its agent's token; registration only a one-time code; and no
    token mints a code (the agent would outlive the token's revocation)."""
    alice = app.client()
    await alice.register_and_login("alice")
    token = await _token(alice, "admin")
    wid = (await alice.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    sandbox = (await alice.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})).body[
        "id"
    ]
    call = _as(app, token)
    tunnel = await app.client().call(
        "GET",
        f"/api/tunnel/{sandbox}",
        headers={"Authorization": f"Bearer {token}", "Upgrade": "websocket"},
    )
    assert (tunnel.code, tunnel.error_code) == (401, "invalid_tunnel_token"), tunnel
    registered = await call("POST", "/api/agent/register", {"code": token, "name": "laptop"})
    assert registered.code == 401, registered
    write = await _token(alice, "write", wid, name="ci")
    for secret in (token, write):
        code = await _as(app, secret)("POST", f"/api/workspaces/{wid}/agent-code")
        assert (code.code, code.error_code) == (403, "session_only"), code
    assert await app.db.query("SELECT 1 FROM agent_codes") == []
    assert await app.db.query("SELECT 1 FROM sandboxes WHERE is_local") == []


@pytest_twisted.ensureDeferred
async def test_not_accepted_by_the_anthropic_proxy(world: World) -> None:  # noqa: F811
    """As x-api-key or Bearer, at the sandbox's door and on the main listener: the proxy knows
    sandboxes' tokens only; Anthropic hears nothing."""
    developer = world.people["developer"]
    token = await _token(developer, "admin")
    for base in (world.door(), world.app.base + "/proxy/anthropic"):
        for headers in ({"Authorization": f"Bearer {token}"}, {"x-api-key": token}):
            reply: Reply = await world.api(base).call(
                "POST", "/proxy/anthropic/v1/messages", {"model": "m"}, headers=headers
            )
            assert reply.code == 401, (base, headers, reply)
            assert reply.body["error"]["type"] == "authentication_error", reply
    assert world.fake.seen == []


@pytest_twisted.ensureDeferred
async def test_not_accepted_on_sandbox_or_preview_subdomains(proxy: Proxy) -> None:  # noqa: F811
    """The owner's admin token on opencode's and a preview's subdomain: no session there,
    nothing reaches the sandbox; it cannot mint an Open link either; beside a real sandbox
    session it is stripped, never forwarded."""
    owner = proxy.people["owner"]
    token = await _token(owner, "admin")
    seen = len(proxy.upstream.seen)
    bearer = {"Authorization": f"Bearer {token}"}
    # Nor may a token mint the one-time link that signs a browser in there.
    for body in (None, {"port": 3000}):
        opened = await _as(proxy.app, token)("POST", f"/api/sandboxes/{proxy.sandbox}/open", body)
        assert (opened.code, opened.error_code) == (403, "session_only"), opened
    for host in (proxy.host(), f"oc-{proxy.sandbox}-p3000.localhost:8080"):
        for method in ("GET", "POST"):
            reply = await proxy.app.client().call(
                method, "/echo", None, headers={"Host": host, **bearer}
            )
            assert reply.code != 200 and reply.code < 500, (host, method, reply)
    assert len(proxy.upstream.seen) == seen
    as_cookie = await proxy.visit("/echo", cookie=token)
    assert as_cookie.code != 200 and len(proxy.upstream.seen) == seen, as_cookie
    cookie = await proxy.open("owner")
    through = await proxy.visit("/echo", cookie=cookie, headers=bearer)
    assert through.code == 200
    assert token[8:] not in json.dumps(proxy.upstream.seen)
