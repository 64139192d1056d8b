"""Personal API tokens without a database: the secret's shape and hash, the expiry and scope
rules, how a request's Bearer header is read, and the guard's decisions."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from cli_server.auth.tokens import token_hash
from cli_server.domain.accounts import User
from cli_server.domain.api_tokens import (
    ApiTokens,
    Grant,
    InvalidToken,
    a_year_after,
    covers,
    looks_like_token,
    new_secret,
    parse_expiry,
    parse_scope,
)
from cli_server.domain.errors import BadRequest, Forbidden, NotFound
from cli_server.web.bearer import TokenGuard, bearer_credential

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
WS_A = "0b6f1a3e-2222-4222-8333-444455556666"
WS_B = "1b6f1a3e-2222-4222-8333-444455556666"
SANDBOX = "2b6f1a3e-2222-4222-8333-444455556666"


def test_secrets_have_a_scannable_prefix_and_256_bits() -> None:
    """``cli_pat_`` and 43 URL-safe base64 characters (32 random bytes); never twice."""
    made = {new_secret() for _ in range(200)}
    assert len(made) == 200
    for secret in made:
        assert secret.startswith("cli_pat_") and len(secret) == 51
        assert looks_like_token(secret)
    for bad in ("", "cli_pat_", "cli_pat_" + "A" * 42, "cli_pat_" + "A" * 44, "x" * 51):
        assert not looks_like_token(bad)
    assert not looks_like_token("cli_pat_" + "A" * 42 + "=")
    assert not looks_like_token("cli_pat_" + "A" * 42 + "\n")


def test_only_a_sha256_is_stored() -> None:
    secret = new_secret()
    assert token_hash(secret) == hashlib.sha256(secret.encode()).digest()


def test_scope_order() -> None:
    """read < write < admin; a session route takes no token; unknown scopes cover nothing."""
    assert covers("read", "read") and not covers("read", "write")
    assert covers("write", "read") and covers("write", "write") and not covers("write", "admin")
    assert all(covers("admin", s) for s in ("read", "write", "admin"))
    assert not any(covers(s, "session") for s in ("read", "write", "admin", "session"))
    assert not covers("root", "read") and not covers("admin", "unknown")
    assert parse_scope("write") == "write"
    for bad in ("session", "Admin", None, 1, ["read"]):
        with pytest.raises(BadRequest) as e:
            parse_scope(bad)
        assert e.value.field == "scope"


def test_expiry_rules() -> None:
    """ISO 8601 with a time zone, in the future, at most a year ahead."""
    assert parse_expiry("2027-01-05T12:00:00Z", NOW) == datetime(2027, 1, 5, 12, tzinfo=UTC)
    assert parse_expiry("2027-01-05T14:00:00+02:00", NOW) == datetime(2027, 1, 5, 12, tzinfo=UTC)
    next_year = datetime(2027, 12, 6, 12, 0, tzinfo=UTC)
    assert a_year_after(NOW) == next_year
    assert parse_expiry(next_year.isoformat(), NOW) == next_year
    leap = datetime(2028, 2, 29, 9, tzinfo=UTC)
    assert a_year_after(leap) == datetime(2029, 2, 28, 9, tzinfo=UTC)
    for bad in (
        "2027-01-05T12:00:00",  # no zone
        "2027-01-05",  # a date has none either
        "next week",
        "",
        (next_year + timedelta(seconds=1)).isoformat(),
        NOW.isoformat(),  # not after now
        (NOW - timedelta(days=1)).isoformat(),
        1893456000,
        None,
        "2" * 100,
    ):
        with pytest.raises(BadRequest) as e:
            parse_expiry(bad, NOW)
        assert e.value.field == "expires_at", bad


def test_now_is_the_injected_clock() -> None:
    clock = Clock()
    clock.advance(NOW.timestamp())
    assert ApiTokens(None, clock).now() == NOW  # type: ignore[arg-type]


def _request(*authorization: bytes) -> DummyRequest:
    request = DummyRequest([b""])
    for value in authorization:
        request.requestHeaders.addRawHeader(b"authorization", value)
    return request


def test_reading_the_bearer_header() -> None:
    """Bearer (any case) makes a token request; a missing token or two Authorization headers
    make a malformed one (""); Basic or nothing is no token request."""
    assert bearer_credential(_request()) is None
    assert bearer_credential(_request(b"Basic eDp5")) is None
    assert bearer_credential(_request(b"Bearer cli_pat_x")) == "cli_pat_x"
    assert bearer_credential(_request(b"bearer   cli_pat_x  ")) == "cli_pat_x"
    assert bearer_credential(_request(b"Bearer")) == ""
    assert bearer_credential(_request(b"Bearer a", b"Bearer b")) == ""
    assert bearer_credential(_request(b"Basic eDp5", b"Bearer b")) == ""
    assert bearer_credential(_request(b"Bearertoken")) is None


@define
class FakeTokens:
    """What the guard asks of ``ApiTokens``: a grant per secret, a workspace per object."""

    grants: dict[str, Grant]
    owners: dict[str, str] = field(factory=dict)
    asked: list[str] = field(factory=list)

    async def authenticate(self, secret: str) -> tuple[dict[str, Any], Grant] | None:
        self.asked.append(secret)
        grant = self.grants.get(secret)
        if grant is None:
            return None
        row = {
            "id": "u1",
            "username": "alice",
            "email": None,
            "created_at": NOW,
            "is_admin": False,
        }
        return row, grant

    async def workspace_of(self, kind: str, object_id: str) -> str | None:
        return self.owners.get(object_id)


def _guard(**grants: Grant) -> tuple[TokenGuard, FakeTokens]:
    tokens = FakeTokens(dict(grants), {SANDBOX: WS_A})
    return TokenGuard(tokens), tokens  # type: ignore[arg-type]


def _user(guard: TokenGuard, secret: str, needed: str, across: bool = False, **args: str) -> Any:
    d = Deferred.fromCoroutine(guard.user(secret, needed, across, args))
    failures: list[Any] = []
    results: list[Any] = []
    d.addCallbacks(results.append, failures.append)
    if failures:
        return failures[0].value
    return results[0]


def _grant(scope: Any = "write", workspace: str | None = None) -> Grant:
    return Grant("t1", scope, workspace, NOW + timedelta(days=1))


def test_the_guard_checks_validity_then_scope() -> None:
    guard, _ = _guard(r=_grant("read"), w=_grant("write"), a=_grant("admin"))
    assert isinstance(_user(guard, "nope", "read"), InvalidToken)
    refused = _user(guard, "r", "write")
    assert isinstance(refused, Forbidden) and refused.code == "insufficient_scope"
    assert _user(guard, "w", "admin").code == "insufficient_scope"
    assert _user(guard, "a", "session").code == "session_only"
    user = _user(guard, "r", "read")
    assert isinstance(user, User) and user.username == "alice" and user.token == _grant("read")
    assert not user.is_admin  # (from the user's row, whatever the scope)
    assert "token" not in user.to_json()


def test_invalid_is_one_answer_with_a_bearer_challenge() -> None:
    error = InvalidToken()
    assert error.status == 401 and error.code == "invalid_token"
    assert error.headers()["WWW-Authenticate"].startswith("Bearer ")


def test_a_workspace_token_stays_in_its_workspace() -> None:
    """By workspace id, by sandbox id (its workspace looked up), and on routes about no one
    workspace unless they narrow (``across_workspaces``)."""
    guard, _ = _guard(ws=_grant("write", WS_A), all=_grant("write"))
    assert isinstance(_user(guard, "ws", "read", workspace_id=WS_A), User)
    other = _user(guard, "ws", "read", workspace_id=WS_B)
    assert isinstance(other, NotFound) and other.code == "workspace_not_found"
    assert _user(guard, "ws", "read", workspace_id="not-an-id").code == "workspace_not_found"
    assert isinstance(_user(guard, "ws", "write", sandbox_id=SANDBOX), User)
    unknown = _user(guard, "ws", "write", sandbox_id=WS_B)
    assert isinstance(unknown, NotFound) and unknown.code == "sandbox_not_found"
    assert _user(guard, "ws", "write", invitation_id=WS_B).code == "invitation_not_found"
    nowhere = _user(guard, "ws", "write")
    assert isinstance(nowhere, Forbidden) and nowhere.code == "token_workspace"
    narrowed = _user(guard, "ws", "read", True)
    assert narrowed.reaches(WS_A) and not narrowed.reaches(WS_B)
    everywhere = _user(guard, "all", "write")
    assert everywhere.reaches(WS_A) and everywhere.reaches(WS_B)
