"""Bad requests get a clear 4xx JSON error naming the field, and change nothing in PostgreSQL."""

from __future__ import annotations

import json

import pytest_twisted

from .conftest import Running
from .helpers import Api

HUGE = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
JSON = {"Content-Type": "application/json"}
TABLES = (
    "users",
    "sessions",
    "workspaces",
    "workspace_members",
    "workspace_invitations",
    "agent_codes",
    "sandboxes",
)


async def snapshot(app: Running) -> dict[str, str]:
    """Every row we own, per table; equal snapshots mean nothing changed."""
    tables = {}
    for table in TABLES:
        rows = await app.db.query(f"SELECT * FROM {table} ORDER BY 1, 2")
        tables[table] = json.dumps(rows, default=_plain, sort_keys=True)
    return tables


def _plain(value: object) -> str:
    return bytes(value).hex() if isinstance(value, memoryview) else str(value)


def raw_cases(prefix_field: str) -> list[tuple[bytes, dict[str, str], int, str | None]]:
    """Body-level failures every JSON route shares: (body, headers, status, field)."""
    return [
        (b"{not json", JSON, 400, "body"),
        (b"[1, 2]", JSON, 400, "body"),
        (b'"just a string"', JSON, 400, "body"),
        (b"", JSON, 400, "body"),
        (b"\xff\xfe{}", JSON, 400, "body"),
        (json.dumps({prefix_field: "ok"}).encode(), {"Content-Type": "text/plain"}, 415, None),
        (HUGE, JSON, 413, None),
        # parser attacks: each once gave a 500 (RecursionError) or a value nobody meant
        (b"[" * 100_000, JSON, 400, "body"),
        (b'{"a":' * 100_000, JSON, 400, "body"),
        (
            b'{"%s": "x", "%s": "y"}' % (prefix_field.encode(), prefix_field.encode()),
            JSON,
            400,
            "body",
        ),
        (b'{"%s": %s}' % (prefix_field.encode(), b"9" * 5000), JSON, 400, "body"),
        (b'{"%s": 1e999}' % prefix_field.encode(), JSON, 400, "body"),
        (b'{"%s": NaN}' % prefix_field.encode(), JSON, 400, "body"),
        (b'{"%s": "\xed\xa0\x80"}' % prefix_field.encode(), JSON, 400, "body"),
        (b'{"%s": "\xc0\xaf"}' % prefix_field.encode(), JSON, 400, "body"),
    ]


async def expect(client: Api, method: str, path: str, cases: list, what: str) -> list[str]:
    problems = []
    for body, headers, status, field in cases:
        if isinstance(body, bytes):
            reply = await client.call(method, path, raw=body, headers=headers)
        else:
            reply = await client.call(method, path, body)
        detail = f"{what} {str(body)[:80]}: got {reply.code} {str(reply.body)[:200]}"
        if reply.code != status or not reply.error_code:
            problems.append(detail)
        elif field is not None and reply.body["error"].get("field") != field:
            problems.append(f"{detail} (expected field {field})")
    return problems


def field_cases(valid: dict, field: str, bad_values: list, status: int = 400) -> list:
    return [({**valid, field: v}, {}, status, field) for v in bad_values] + [
        ({k: v for k, v in valid.items() if k != field}, {}, status, field)
    ]


# A lone surrogate cannot be encoded as UTF-8 (PostgreSQL would refuse it): send it as JSON text.
SURROGATE = b'{"name": "\\ud800"}'
TEXT_ATTACKS = ["", "   ", "a\u0000b", "\u202eevil", "a\u200bb", "line\nbreak", 42, ["x"], {}, True]


@pytest_twisted.ensureDeferred
async def test_bad_input_changes_nothing(app: Running) -> None:
    """Each route refuses malformed, mistyped, missing, overlong and hostile input alike."""
    owner, other = app.client(), app.client()
    await owner.register_and_login("owner")
    await other.register_and_login("other")
    made = await owner.call("POST", "/api/workspaces", {"name": "w"})
    wid = made.body["id"]
    assert other.user is not None
    member_path = f"/api/workspaces/{wid}/members/{other.user['id']}"
    await owner.add_member(wid, other)
    minted = await owner.call("POST", f"/api/workspaces/{wid}/agent-code")
    assert minted.code == 201
    code = minted.body["code"]  # refused registrations must not burn it
    before = await snapshot(app)

    problems: list[str] = []
    register = {"username": "newuser", "password": "long enough", "email": "a@b.example"}
    problems += await expect(
        app.client(),
        "POST",
        "/api/auth/register",
        raw_cases("username")
        + field_cases(
            register,
            "username",
            ["ab", "x" * 33, "ålice", "has space", "-lead", "a\u0000bc", 7, None, ["list"]],
        )
        + field_cases(register, "password", ["short", "x" * 1025, 12345678, "pass\u0000word"])
        + [({**register, "email": e}, {}, 400, "email") for e in ["nope", "a@b", "x" * 300, 5]]
        + [
            ({**register, "username": "owner"}, {}, 409, None),
            ({**register, "username": "OWNER"}, {}, 409, None),
        ],
        "register",
    )
    problems += await expect(
        app.client(),
        "POST",
        "/api/auth/login",
        raw_cases("username")
        + field_cases({"username": "owner", "password": "password123"}, "username", [5, ""])
        + field_cases({"username": "owner", "password": "password123"}, "password", [5, ""])
        + [
            ({"username": "owner", "password": "wrong password"}, {}, 401, None),
            ({"username": "ghost", "password": "password123"}, {}, 401, None),
        ],
        "login",
    )
    problems += await expect(
        owner,
        "POST",
        "/api/workspaces",
        raw_cases("name")
        + field_cases({"name": "w"}, "name", TEXT_ATTACKS + ["x" * 101])
        + [(SURROGATE, JSON, 400, "name")],
        "create workspace",
    )
    problems += await expect(
        owner,
        "POST",
        f"/api/workspaces/{wid}/members",
        raw_cases("username")
        + field_cases(
            {"username": "other", "role": "guest"}, "username", ["", 5, "x" * 255, "\u202eother"]
        )
        + [
            ({"username": "nobody", "role": r}, {}, 400, "role")
            for r in ["admin", "Owner", "", 3, None, ["owner"]]
            if r is not None
        ]
        + [({"username": "other", "role": "guest"}, {}, 409, None)],
        "add member",
    )
    problems += await expect(
        owner,
        "PUT",
        member_path,
        raw_cases("role") + field_cases({"role": "guest"}, "role", ["superuser", "OWNER", 1, ""]),
        "change role",
    )
    agent = {"code": code, "name": "laptop"}
    problems += await expect(
        app.client(),
        "POST",
        "/api/agent/register",
        raw_cases("code")
        + field_cases(agent, "code", ["", 5, "x" * 201, "a\u0000b", ["x"]])
        + field_cases(agent, "name", TEXT_ATTACKS + ["x" * 101])
        + [(SURROGATE[:-1] + b', "code": "x"}', JSON, 400, "name")]
        + [
            ({**agent, "use_server_key": v}, {}, 400, "use_server_key")
            for v in ["yes", "true", 1, 0, None, [], {}]
        ]
        + [({**agent, "code": "not-the-code"}, {}, 401, None)],
        "register agent",
    )
    for bad in ("00000000-0000-4000-8000-000000000000", "nope", "0000"):
        path = f"/api/workspaces/{bad}/agent-code"
        problems += await expect(owner, "POST", path, [(None, {}, 404, None)], "agent code")
    assert not problems, "\n".join(problems)
    assert await snapshot(app) == before


@pytest_twisted.ensureDeferred
async def test_unicode_names_round_trip(app: Running) -> None:
    """Real-world unicode is kept, NFC-normalised and trimmed; emoji with joiners survive."""
    owner = app.client()
    await owner.register_and_login("unicode")
    names = {
        "工作区 🚀": "工作区 🚀",
        "  spaced  ": "spaced",
        "cafe\u0301": "café",
        "👩\u200d💻 team": "👩\u200d💻 team",
        "ש" * 100: "ש" * 100,
    }
    for sent, kept in names.items():
        reply = await owner.call("POST", "/api/workspaces", {"name": sent})
        assert reply.code == 201, reply
        assert reply.body["name"] == kept
        again = await owner.call("GET", f"/api/workspaces/{reply.body['id']}")
        assert again.body["name"] == kept


@pytest_twisted.ensureDeferred
async def test_unknown_routes_and_methods_are_json(app: Running) -> None:
    """Routing failures are JSON errors too, never HTML pages."""
    client = app.client()
    await client.register_and_login("router")
    for method, path, status in [
        ("GET", "/api/nothing-here", 404),
        ("PATCH", "/api/workspaces", 405),
        ("GET", "/api/auth/login", 405),
    ]:
        reply = await client.call(method, path)
        assert reply.code == status, (method, path, reply)
        assert reply.error_code, reply.body
