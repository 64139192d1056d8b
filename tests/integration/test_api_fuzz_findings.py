"""What the API fuzz test (``test_api_fuzz``) found, one regression test each, on the real
server: each names the request schemathesis sent and the answer it should have had."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

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
