"""Every route of every Klein app, walked from its url map: each one is declared with
``web.routes.route``; each state-changing one refuses a foreign Origin with 403 ``bad_origin``
and changes nothing; each non-public one answers 401 to a caller who is signed out."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest_twisted
from klein import Klein

import cli_server.web
from cli_server.web.routes import SAFE_METHODS, declared
from cli_server.web.site import APPS

from .conftest import Running
from .fingerprint import fingerprint
from .helpers import Api

# Where MainSite mounts each app (MainSite's own routes are at the root): one table, in src.
MOUNTS: list[tuple[str, Klein]] = [(mount.prefix, mount.app) for mount in APPS]
FOREIGN = "http://evil.example"
_ARGUMENT = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def test_every_klein_app_is_walked() -> None:
    """The walk below covers every Klein app in ``cli_server.web``: a new one is added here."""
    found = set()
    for module in pkgutil.iter_modules(cli_server.web.__path__):
        loaded = importlib.import_module(f"cli_server.web.{module.name}")
        for value in vars(loaded).values():
            app = getattr(value, "app", None)
            if isinstance(value, type) and isinstance(app, Klein):
                found.add(id(app))
    assert found == {id(app) for _, app in MOUNTS}


def test_every_route_is_declared() -> None:
    """No rule of any app was added with Klein's bare ``app.route``."""
    for prefix, app in MOUNTS:
        names = declared(app)
        rules = list(app.url_map.iter_rules())
        assert rules, prefix
        for rule in rules:
            assert rule.endpoint in names, f"{prefix}{rule.rule} is not declared with route()"


def _routes() -> list[tuple[str, str, bool]]:
    """(method, path pattern, public) for every rule of every app."""
    walked = []
    for prefix, app in MOUNTS:
        names = declared(app)
        for rule in app.url_map.iter_rules():
            for method in sorted(rule.methods or ()):
                walked.append((method, prefix + rule.rule, names[rule.endpoint].public))
    return walked


def _fill(pattern: str, ids: dict[str, str]) -> str:
    return _ARGUMENT.sub(lambda m: ids.get(m.group(1), "x"), pattern)


async def _world(app: Running) -> tuple[Api, dict[str, str]]:
    """The instance admin owning a workspace with a member, a sandbox, a pending invitation,
    a sign-up link; real ids for every path argument, so a request let through would act."""
    admin, bob, carol = app.client(), app.client(), app.client()
    await admin.register_and_login("root")
    await bob.register_and_login("bob")
    await carol.register_and_login("carol")
    assert bob.user is not None
    made = await admin.call("POST", "/api/workspaces", {"name": "w"})
    wid = str(made.body["id"])
    await admin.add_member(wid, bob, "developer")
    invited = await admin.call(
        "POST", f"/api/workspaces/{wid}/members", {"username": "carol", "role": "guest"}
    )
    sandbox = await admin.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})
    link = await admin.call("POST", "/api/admin/signup-links")
    links = await admin.call("GET", "/api/admin/signup-links")
    sessions = await admin.call("GET", "/api/auth/sessions")
    assert {invited.code, sandbox.code, link.code} == {201}, (invited, sandbox, link)
    ids = {
        "workspace_id": wid,
        "member_id": str(bob.user["id"]),
        "user_id": str(bob.user["id"]),
        "sandbox_id": str(sandbox.body["id"]),
        "invitation_id": str(invited.body["invitation_id"]),
        "link_id": str(links.body[0]["id"]),
        "session_id": str(sessions.body[0]["id"]),
        "identity_id": "00000000-0000-4000-8000-000000000000",
        "provider": "github",
        "__rest__": "x",
    }
    return admin, ids


@pytest_twisted.ensureDeferred
async def test_state_changes_refuse_a_foreign_origin(app: Running) -> None:
    """Every state-changing method of every route, signed in as the admin and owner of
    everything it names: 403 ``bad_origin``, and not one row of the database changed."""
    admin, ids = await _world(app)
    before = await fingerprint(app.db)
    unsafe = [(m, p) for m, p, _ in _routes() if m not in SAFE_METHODS]
    assert len(unsafe) > 25  # (the walk found the API, not an empty map)
    wrong = []
    for method, pattern in unsafe:
        path = _fill(pattern, ids)
        reply = await admin.call(method, path, {"name": "n"}, headers={"Origin": FOREIGN})
        if (reply.code, reply.error_code) != (403, "bad_origin"):
            wrong.append(f"{method} {path}: {reply.code} {reply.body}")
    assert not wrong, "\n".join(wrong)
    assert await fingerprint(app.db) == before
    # (the fingerprint does see a change: the same request from our own origin makes one)
    own = await admin.call(
        "POST", "/api/workspaces", {"name": "n"}, headers={"Origin": "http://localhost:8080"}
    )
    assert own.code == 201
    assert await fingerprint(app.db) != before


@pytest_twisted.ensureDeferred
async def test_non_public_routes_need_a_session(app: Running) -> None:
    """Every method of every route not declared public answers 401 to a signed-out caller."""
    _, ids = await _world(app)
    anonymous = app.client()
    private = [(m, p) for m, p, public in _routes() if not public]
    assert len(private) > 25
    wrong = []
    for method, pattern in private:
        path = _fill(pattern, ids)
        reply = await anonymous.call(method, path, {"name": "n"} if method != "GET" else None)
        expected = (401, "unauthorized") if method != "HEAD" else (401, None)
        if (reply.code, reply.error_code) != expected:
            wrong.append(f"{method} {path}: {reply.code} {reply.body}")
    assert not wrong, "\n".join(wrong)
