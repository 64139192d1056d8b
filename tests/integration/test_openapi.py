"""The OpenAPI document against the running server (FAKE sandbox backend): every documented
operation is called, as the owner and instance admin with real ids, and answers with a
documented status and a body its schema accepts; documented errors match ``Error``."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import pytest_twisted
from jsonschema import Draft202012Validator

from cli_server.config import GithubLogin
from cli_server.sso.claims import Claims
from cli_server.web.openapi import api_document
from cli_server.web.schemas import ERROR
from cli_server.web.site import APPS

from .api_document import ApiDocument
from .conftest import Running, server_config, start_server, stop_server
from .helpers import Api, wait_until

PASSWORD = "password123"


@pytest_twisted.async_yield_fixture
async def server(db_url: str) -> AsyncIterator[Running]:
    """The in-process server, with GitHub sign-in on (no call reaches GitHub: the login
    redirect is built locally and the callback is refused before any exchange)."""
    config = attrs.evolve(server_config(db_url), github=GithubLogin("client-id", "secret"))
    running = await start_server(db_url, config=config)
    yield running
    await stop_server(running)


async def _document(app: Running) -> ApiDocument:
    fetched = await app.client().call("GET", "/api/openapi.json")
    assert fetched.code == 200 and fetched.headers.getRawHeaders(b"content-type") == [
        b"application/json; charset=utf-8"
    ]
    # the document the declarations make, as built once when the server started
    assert fetched.body == json.loads(json.dumps(api_document(APPS)))
    return ApiDocument(fetched.body)


def _client(app: Running, document: ApiDocument) -> Api:
    return Api(app.reactor, app.base, app.pool, document=document)


async def _signed_in(app: Running, document: ApiDocument, name: str) -> Api:
    client = _client(app, document)
    await client.register_and_login(name, PASSWORD)
    return client


async def _ok(client: Api, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    """The call's answer body, once its status is the one wanted (the client has checked
    it against the document already)."""
    reply = await client.call(method, path, body)
    assert reply.code == status, (method, path, reply)
    return reply.body


@pytest_twisted.ensureDeferred
async def test_every_operation_answers_as_documented(server: Running) -> None:
    """Each documented operation, called at least once with real ids, answers a documented
    success status and a body that validates against the schema declared for it."""
    app, document = server, await _document(server)
    anonymous = _client(app, document)
    for path in ("/healthz", "/readyz", "/metrics", "/api/openapi.json"):
        await _ok(anonymous, "GET", path)
    assert (await anonymous.call("HEAD", "/healthz")).code == 200
    assert (await _ok(anonymous, "GET", "/api/auth/registration"))["first"] is True
    assert [p["name"] for p in await _ok(anonymous, "GET", "/api/auth/providers")] == ["github"]

    # Accounts: the first one is the instance admin and owns everything below.
    root = await _signed_in(app, document, "root")
    bob = await _signed_in(app, document, "bob")
    carol = await _signed_in(app, document, "carol")
    assert root.user is not None and bob.user is not None and carol.user is not None
    assert root.user["is_admin"] and (await _ok(root, "GET", "/api/auth/me"))["has_password"]
    elsewhere = _client(app, document)
    await _ok(elsewhere, "POST", "/api/auth/login", {"username": "root", "password": PASSWORD})
    sessions = await _ok(root, "GET", "/api/auth/sessions")
    other = next(s["id"] for s in sessions if not s["current"])
    await _ok(root, "DELETE", f"/api/auth/sessions/{other}", status=204)
    new_password = {"current_password": PASSWORD, "new_password": "another password"}
    await _ok(root, "PUT", "/api/auth/password", new_password, status=204)

    # Single sign-on: the redirects, and an identity linked to root, then unlinked.
    login = await anonymous.call("GET", "/api/auth/oidc/github/login")
    assert login.code == 302, login
    callback = await anonymous.call("GET", "/api/auth/oidc/github/callback?state=x&code=y")
    assert callback.code == 303, callback
    assert app.server.identities is not None
    linked = Claims("github", "gh-root", "root@example.com", True, "root", None)
    await app.server.identities.sign_in(linked, str(root.user["id"]))
    identity = (await _ok(root, "GET", "/api/auth/identities"))[0]["id"]
    await _ok(root, "DELETE", f"/api/auth/identities/{identity}", status=204)

    # Workspaces, members and invitations.
    wid = (await _ok(root, "POST", "/api/workspaces", {"name": "team"}, 201))["id"]
    doomed = (await _ok(root, "POST", "/api/workspaces", {"name": "doomed"}, 201))["id"]
    assert {w["id"] for w in await _ok(root, "GET", "/api/workspaces")} == {wid, doomed}
    assert (await _ok(root, "GET", f"/api/workspaces/{wid}"))["sandbox_counts"]["total"] == 0
    invite_bob = {"username": "bob", "role": "developer"}
    invited = await _ok(root, "POST", f"/api/workspaces/{wid}/members", invite_bob, 201)
    await _ok(root, "POST", f"/api/workspaces/{wid}/members", invite_bob, 200)  # (again)
    assert len(await _ok(root, "GET", f"/api/workspaces/{wid}/invitations")) == 1
    assert len(await _ok(bob, "GET", "/api/invitations")) == 1
    await _ok(bob, "POST", f"/api/invitations/{invited['invitation_id']}/accept")
    invite_carol = {"username": "carol", "role": "guest"}
    to_carol = await _ok(root, "POST", f"/api/workspaces/{wid}/members", invite_carol, 201)
    await _ok(carol, "POST", f"/api/invitations/{to_carol['invitation_id']}/decline", status=204)
    to_carol = await _ok(root, "POST", f"/api/workspaces/{wid}/members", invite_carol, 201)
    await _ok(root, "DELETE", f"/api/invitations/{to_carol['invitation_id']}", status=204)
    assert len(await _ok(root, "GET", f"/api/workspaces/{wid}/members")) == 2
    bob_id = bob.user["id"]
    member = {"role": "maintainer"}
    await _ok(root, "PUT", f"/api/workspaces/{wid}/members/{bob_id}", member)

    # A sandbox through its life, on the FAKE backend.
    sandbox = await _ok(root, "POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"}, 201)
    sid = sandbox["id"]

    async def status() -> str:
        return str((await _ok(root, "GET", f"/api/sandboxes/{sid}"))["status"])

    await wait_until(app.reactor, lambda: _is(status, "running"))
    app.server.backend.listening[sid] = [5173]
    app.server.backend.output[sid] = ["opencode listening"]
    assert (await _ok(root, "GET", f"/api/sandboxes/{sid}/ports"))["ports"] == [5173]
    assert (await _ok(root, "GET", f"/api/sandboxes/{sid}/logs"))["lines"]
    await _ok(root, "POST", f"/api/sandboxes/{sid}/open")
    await _ok(root, "POST", f"/api/sandboxes/{sid}/open", {"port": 5173})
    assert len(await _ok(root, "GET", f"/api/workspaces/{wid}/sandboxes")) == 1
    await _ok(root, "POST", f"/api/sandboxes/{sid}/pause")
    await wait_until(app.reactor, lambda: _is(status, "paused"))
    await _ok(root, "POST", f"/api/sandboxes/{sid}/resume")

    # Claude's usage and budget; a local agent's code and registration.
    await _ok(root, "GET", f"/api/workspaces/{wid}/usage")
    await _ok(root, "PUT", f"/api/workspaces/{wid}/budget", {"monthly_tokens": 2_000_000})
    await _ok(root, "PUT", f"/api/workspaces/{wid}/budget", {"monthly_tokens": None})
    code = (await _ok(root, "POST", f"/api/workspaces/{wid}/agent-code", status=201))["code"]
    agent = {"code": code, "name": "laptop", "use_server_key": True}
    await _ok(anonymous, "POST", "/api/agent/register", agent, 201)

    # The instance admin's pages.
    assert len(await _ok(root, "GET", "/api/admin/users")) == 3
    await _ok(root, "POST", f"/api/admin/users/{carol.user['id']}/disable", status=204)
    await _ok(root, "POST", f"/api/admin/users/{carol.user['id']}/enable", status=204)
    await _ok(root, "POST", f"/api/admin/users/{bob_id}/password")
    await _ok(root, "POST", "/api/admin/signup-links", status=201)
    link = (await _ok(root, "GET", "/api/admin/signup-links"))[0]["id"]
    await _ok(root, "DELETE", f"/api/admin/signup-links/{link}", status=204)

    # Personal API tokens: made, used, listed, revoked.
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    wanted = {"name": "ci", "scope": "write", "expires_at": expires}
    token = await _ok(root, "POST", "/api/auth/tokens", wanted, 201)
    scripted = _client(app, document)
    bearer = {"Authorization": f"Bearer {token['token']}"}
    listed = await scripted.call("GET", f"/api/workspaces/{wid}/sandboxes", headers=bearer)
    assert listed.code == 200 and sid in [s["id"] for s in listed.body], listed
    assert [t["id"] for t in await _ok(root, "GET", "/api/auth/tokens")] == [token["id"]]
    await _ok(root, "DELETE", f"/api/auth/tokens/{token['id']}", status=204)
    gone = await scripted.call("GET", f"/api/workspaces/{wid}/sandboxes", headers=bearer)
    assert (gone.code, gone.error_code) == (401, "invalid_token"), gone

    # The audit log of the workspace, all of it and filtered.
    page = await _ok(root, "GET", f"/api/workspaces/{wid}/audit")
    assert page["entries"], page
    since = page["entries"][-1]["at"].replace("+", "%2B")
    await _ok(
        root, "GET", f"/api/workspaces/{wid}/audit?action=member.invited&limit=2&since={since}"
    )

    # Deletions, and signing out.
    await _ok(root, "DELETE", f"/api/sandboxes/{sid}", status=204)
    await _ok(root, "DELETE", f"/api/workspaces/{wid}/members/{bob_id}", status=204)
    await _ok(root, "DELETE", f"/api/workspaces/{doomed}", status=204)
    await _ok(root, "POST", "/api/auth/logout", status=204)

    missing = document.operation_ids - document.called
    assert not missing, f"documented operations never called: {sorted(missing)}"
    assert len(document.called) >= 50


async def _is(status: Any, wanted: str) -> bool:
    return bool(await status() == wanted)


@pytest_twisted.ensureDeferred
async def test_documented_errors_match_the_error_schema(server: Running) -> None:
    """401 signed out, 404 for an unknown id, 400 naming the field of a bad body, 409 for a
    taken name, 415 for a body not sent as JSON: each documented, each an ``Error``."""
    app, document = server, await _document(server)
    error = Draft202012Validator(ERROR)
    anonymous = _client(app, document)
    owner = await _signed_in(app, document, "olga")
    wid = (await _ok(owner, "POST", "/api/workspaces", {"name": "w"}, 201))["id"]
    nobody = str(uuid.uuid4())
    cases = [
        (anonymous, "GET", "/api/auth/me", None, None, 401, "unauthorized"),
        (anonymous, "GET", f"/api/workspaces/{wid}", None, None, 401, "unauthorized"),
        (owner, "GET", f"/api/sandboxes/{nobody}", None, None, 404, "sandbox_not_found"),
        (owner, "GET", f"/api/workspaces/{nobody}", None, None, 404, "workspace_not_found"),
        (owner, "DELETE", f"/api/invitations/{nobody}", None, None, 404, "invitation_not_found"),
        (owner, "POST", "/api/workspaces", {"name": 5}, None, 400, "invalid_request"),
        (owner, "PUT", f"/api/workspaces/{wid}/budget", {}, None, 400, "invalid_request"),
        (owner, "POST", "/api/workspaces", {"name": "w"}, None, 409, "name_taken"),
        (owner, "POST", "/api/workspaces", None, b"name=w", 415, "unsupported_media_type"),
    ]
    for client, method, path, body, raw, status, code in cases:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if raw else None
        reply = await client.call(method, path, body, raw=raw, headers=headers)
        assert (reply.code, reply.error_code) == (status, code), (method, path, reply)
        error.validate(reply.body)  # (and the client checked it against the document)
    bad = await owner.call("POST", "/api/workspaces", {"name": 5})
    assert bad.body["error"]["field"] == "name"


def test_a_wrong_answer_is_caught() -> None:
    """The check fails an answer whose status is undocumented or whose body is not its
    schema's, naming the operation."""
    document = ApiDocument(
        {
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/api/things/{thing_id}": {
                    "get": {
                        "operationId": "get_thing",
                        "responses": {
                            "200": {
                                "description": "OK",
                                "content": {
                                    "application/json": {
                                        "schema": {"$ref": "#/components/schemas/Thing"}
                                    }
                                },
                            }
                        },
                    }
                }
            },
            "components": {
                "schemas": {
                    "Thing": {
                        "type": "object",
                        "properties": {"at": {"type": "string", "format": "date-time"}},
                        "required": ["at"],
                        "additionalProperties": False,
                    }
                }
            },
        }
    )
    good = {"at": "2026-12-06T23:00:00Z"}
    document.check("GET", "/api/things/1", 200, good, "application/json")
    assert document.called == {"get_thing"}
    wrong = [
        (200, {"at": "yesterday"}, "does not match its schema at at"),
        (200, {"at": "2026-12-06T23:00:00Z", "more": 1}, "does not match its schema"),
        (500, {"at": "2026-12-06T23:00:00Z"}, "answered 500, not documented"),
    ]
    for status, body, said in wrong:
        with pytest.raises(AssertionError, match=said):
            document.check("GET", "/api/things/1", status, body, "application/json")
    with pytest.raises(AssertionError, match="not in the API document"):
        document.check("GET", "/api/other", 200, good, "application/json")


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{([a-z_]+)\}", lambda m: ids.get(m.group(1), str(uuid.uuid4())), path)


@pytest_twisted.ensureDeferred
async def test_every_operation_refuses_as_documented(server: Running) -> None:
    """Signed out, every operation that needs credentials answers 401; every body that is
    not a JSON object, or not JSON at all, answers 400 naming ``body`` or 415; each status
    documented for its operation, each body an ``Error``."""
    app, document = server, await _document(server)
    owner = await _signed_in(app, document, "olga")
    assert owner.user is not None
    wid = (await _ok(owner, "POST", "/api/workspaces", {"name": "w"}, 201))["id"]
    sid = (await _ok(owner, "POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"}, 201))["id"]
    uid = str(owner.user["id"])
    ids = {"workspace_id": wid, "sandbox_id": sid, "member_id": uid, "user_id": uid}
    anonymous = _client(app, document)
    operations = [
        (path, method.upper(), operation)
        for path, item in document.document["paths"].items()
        for method, operation in item.items()
    ]
    signed_out = [(p, m) for p, m, op in operations if "security" in op]
    assert len(signed_out) > 35
    for path, method in signed_out:
        reply = await anonymous.call(method, _fill(path, ids), {} if method != "GET" else None)
        assert (reply.code, reply.error_code) == (401, "unauthorized"), (method, path, reply)
    with_body = [(p, m) for p, m, op in operations if "requestBody" in op]
    assert len(with_body) >= 10
    for path, method in with_body:
        where = _fill(path, ids)
        not_object = await owner.call(method, where, [])
        assert (not_object.code, not_object.body["error"].get("field")) == (400, "body"), (
            method,
            path,
            not_object,
        )
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        not_json = await owner.call(method, where, raw=b"a=1", headers=form)
        assert not_json.code == 415, (method, path, not_json)
