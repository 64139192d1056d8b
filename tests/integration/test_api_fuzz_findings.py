"""What the API fuzz test (``test_api_fuzz``) found, one regression test each, on the real
server: each names the request schemathesis sent and the answer it should have had."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest_twisted

from .conftest import Running
from .fingerprint import fingerprint


def _in_a_day() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")


@pytest_twisted.ensureDeferred
async def test_a_token_for_a_malformed_workspace_id_is_a_bad_body(app: Running) -> None:
    """``POST /api/auth/tokens`` with a ``workspace_id`` that is no UUID (fuzzed: a lone
    surrogate pair's escape) answered 404 ``workspace_not_found``: it is a malformed body,
    400 naming the field, and nothing is made. A well-formed id of no workspace of the
    caller's stays 404."""
    owner = app.client()
    await owner.register_and_login("owner")
    before = await fingerprint(app.db)
    for malformed in ("\uda9c\uddc0", "w-1", "", "00000000-0000-4000-8000-00000000000"):
        body = {"name": "ci", "scope": "write", "expires_at": _in_a_day()}
        body["workspace_id"] = malformed
        reply = await owner.call("POST", "/api/auth/tokens", body)
        assert (reply.code, reply.error_code) == (400, "invalid_request"), (malformed, reply)
        assert reply.body["error"]["field"] == "workspace_id", reply
    unknown = {"name": "ci", "scope": "write", "expires_at": _in_a_day()}
    unknown["workspace_id"] = str(uuid.uuid4())
    reply = await owner.call("POST", "/api/auth/tokens", unknown)
    assert (reply.code, reply.error_code) == (404, "workspace_not_found"), reply
    assert await fingerprint(app.db) == before


@pytest_twisted.ensureDeferred
async def test_audit_times_out_of_postgresql_range_are_no_server_error(app: Running) -> None:
    """``GET /api/workspaces/{id}/audit?since=0355-07-31T15:02:46.944140+21:15`` answered 500:
    Python takes that offset, PostgreSQL does not. Any ISO 8601 time Python reads is an instant
    (200); one off the calendar once in UTC is a bad query (400 naming it)."""
    owner = app.client()
    await owner.register_and_login("owner")
    made = await owner.call("POST", "/api/workspaces", {"name": "w"})
    wid = made.body["id"]
    for since in ("0355-07-31T15:02:46.944140+21:15", "2026-01-31T12:00:00-23:59"):
        reply = await owner.call("GET", f"/api/workspaces/{wid}/audit?since={quote(since)}")
        assert reply.code == 200, (since, reply)
    for until in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        reply = await owner.call("GET", f"/api/workspaces/{wid}/audit?until={quote(until)}")
        assert (reply.code, reply.body["error"]["field"]) == (400, "until"), (until, reply)


@pytest_twisted.ensureDeferred
async def test_an_audit_actor_with_a_control_character_is_a_bad_query(app: Running) -> None:
    """``GET /api/workspaces/{id}/audit?actor=r%C2%82%00%C3%ADw`` answered 500: PostgreSQL
    refuses a NUL in text. No user id or name has a control character: 400 naming ``actor``;
    a name with letters of any script still filters."""
    owner = app.client()
    await owner.register_and_login("owner")
    wid = (await owner.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    for actor in ("r%C2%82%00%C3%ADw", "%00", "a%0Ab", "%C2%82"):
        reply = await owner.call("GET", f"/api/workspaces/{wid}/audit?actor={actor}")
        assert (reply.code, reply.body["error"]["field"]) == (400, "actor"), (actor, reply)
    named = await owner.call("GET", f"/api/workspaces/{wid}/audit?actor={quote('owner')}")
    assert named.code == 200 and named.body["entries"], named
    other = await owner.call("GET", f"/api/workspaces/{wid}/audit?actor={quote('zoë')}")
    assert other.code == 200 and other.body["entries"] == [], other


@pytest_twisted.ensureDeferred
async def test_an_empty_audit_filter_is_refused_as_documented(app: Running) -> None:
    """``GET /api/workspaces/{id}/audit?actor=`` answered 200 as if no actor were given, but
    the document says a given ``actor`` has at least one character: 400 naming it (the web UI
    leaves empty filters out)."""
    owner = app.client()
    await owner.register_and_login("owner")
    wid = (await owner.call("POST", "/api/workspaces", {"name": "w"})).body["id"]
    for query in ("actor=", "action=", "since=%20", "limit="):
        reply = await owner.call("GET", f"/api/workspaces/{wid}/audit?{query}")
        field = query.split("=")[0]
        assert (reply.code, reply.body["error"]["field"]) == (400, field), (query, reply)
    assert (await owner.call("GET", f"/api/workspaces/{wid}/audit")).code == 200
