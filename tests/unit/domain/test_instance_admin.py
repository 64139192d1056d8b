"""The instance admin's actions, against a recording stand-in for the database: which
statements each action sends, in one transaction, what it tells the rest of the server
(``Events``), and what it refuses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from argon2 import PasswordHasher
from twisted.internet.defer import Deferred

from cli_server.auth.passwords import Passwords
from cli_server.auth.tokens import token_hash
from cli_server.db.pool import Database
from cli_server.domain.audit import Action, Actor, AuditLog, Note
from cli_server.domain.errors import Conflict, NotFound
from cli_server.domain.events import Events
from cli_server.domain.instance_admin import InstanceAdmin
from cli_server.plumbing.threads import synchronous_runner
from tests.unit.deferreds import failure_of, result_of

ADMIN = "0b7c5a4e-8f61-4f3a-9d2e-53c1e0a4b6d2"
USER = "9d1c4f53-5d57-4a8e-8a53-1a3e2f0c9b11"
AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class RecordingDatabase:
    """Keeps every statement, with whether it ran in a transaction and which one; answers
    ``query`` with ``rows`` and ``execute`` in a transaction with ``changed`` rows."""

    def __init__(self, rows: list[dict[str, Any]] | None = None, changed: int = 1) -> None:
        self.rows = rows or []
        self.changed = changed
        self.sent: list[tuple[int | None, str, Any]] = []  # (transaction number, sql, args)
        self.transactions = 0
        self.committed = 0

    async def query(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        self.sent.append((None, sql, args))
        return self.rows

    async def transaction(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        self.transactions += 1
        result = await work(Tx(self, self.transactions))
        self.committed += 1
        return result

    def sent_in_order(self, *beginnings: str) -> bool:
        """Whether exactly these statements were sent, each starting as given."""
        sqls = [sql for _tx, sql, _args in self.sent]
        return len(sqls) == len(beginnings) and all(
            sql.startswith(b) for sql, b in zip(sqls, beginnings, strict=True)
        )


class Tx:
    def __init__(self, db: RecordingDatabase, number: int) -> None:
        self.db, self.number = db, number

    async def execute(self, sql: str, args: Any = ()) -> int:
        self.db.sent.append((self.number, sql, args))
        return self.db.changed if sql.startswith("UPDATE users") else 1

    async def query(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        self.db.sent.append((self.number, sql, args))
        return []


class Heard:
    """An ``Events`` subscriber that keeps what it heard."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, str]] = []

    async def user_revoked(self, user_id: str) -> None:
        self.heard.append(("revoked", user_id))

    async def user_disabled(self, user_id: str) -> None:
        self.heard.append(("disabled", user_id))

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        self.heard.append(("member_changed", user_id))

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        self.heard.append(("sandbox_deleted", sandbox_id))

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        self.heard.append(("sandbox_status_changed", sandbox_id))


CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def admin_of(db: RecordingDatabase) -> tuple[InstanceAdmin, Heard, Passwords]:
    events, heard = Events(), Heard()
    events.subscribe(heard)
    passwords = Passwords(synchronous_runner, CHEAP)
    return InstanceAdmin(cast(Database, db), passwords, events), heard, passwords


def run(coroutine: Any) -> Any:
    return result_of(Deferred.fromCoroutine(coroutine))


def fail(coroutine: Any) -> BaseException:
    failure = failure_of(Deferred.fromCoroutine(coroutine))
    return cast(BaseException, failure.value)


ENDS_ACCESS = [
    "DELETE FROM sessions",
    "DELETE FROM sandbox_tickets",
    "UPDATE api_tokens SET revoked_at = now()",
]


def test_users_lists_every_account_in_api_shape() -> None:
    """One read; ids as strings, times in RFC 3339, ``disabled`` from its timestamp."""
    db = RecordingDatabase(
        [
            {
                "id": USER,
                "username": "bob",
                "email": None,
                "created_at": AT,
                "is_admin": False,
                "disabled_at": AT,
                "last_seen_at": None,
            }
        ]
    )
    admin, _, _ = admin_of(db)
    assert run(admin.users()) == [
        {
            "id": USER,
            "username": "bob",
            "email": None,
            "created_at": "2026-12-01T12:00:00Z",
            "is_admin": False,
            "disabled": True,
            "last_seen_at": None,
        }
    ]
    assert db.sent_in_order("SELECT id, username, email, created_at, is_admin, disabled_at,")


def test_disabling_ends_all_access_in_one_transaction_then_tells() -> None:
    """The account is marked, its sessions, sandbox tickets and API tokens end, all in one
    transaction; after the commit, the rest of the server hears ``user_disabled``."""
    db = RecordingDatabase()
    admin, heard, _ = admin_of(db)
    run(admin.set_disabled(ADMIN, USER, True))
    assert db.sent_in_order("UPDATE users SET disabled_at = CASE", *ENDS_ACCESS)
    assert {tx for tx, _sql, _args in db.sent} == {1}
    assert db.sent[0][2] == (True, USER)
    assert all(args == (USER,) for _tx, _sql, args in db.sent[1:])
    assert heard.heard == [("disabled", USER)]


def test_enabling_revives_nothing_and_tells_nobody() -> None:
    """Enabling clears the mark only: no session or token comes back, no event."""
    db = RecordingDatabase()
    admin, heard, _ = admin_of(db)
    run(admin.set_disabled(ADMIN, USER, False))
    assert db.sent_in_order("UPDATE users SET disabled_at = CASE")
    assert db.sent[0][2] == (False, USER)
    assert heard.heard == []


def test_the_admin_cannot_disable_themself() -> None:
    """Refused before any statement: the instance would lose its only admin."""
    db = RecordingDatabase()
    admin, heard, _ = admin_of(db)
    error = fail(admin.set_disabled(ADMIN, ADMIN, True))
    assert isinstance(error, Conflict)
    assert error.code == "own_account"
    assert (db.sent, heard.heard) == ([], [])
    run(admin.set_disabled(ADMIN, ADMIN, False))  # (enabling oneself is harmless)


def test_an_unknown_user_is_not_found_and_nothing_is_told() -> None:
    """No such row: NotFound, the transaction does not commit, no event goes out."""
    db = RecordingDatabase(changed=0)
    admin, heard, _ = admin_of(db)
    for action in (admin.set_disabled(ADMIN, USER, True), admin.reset_password(USER)):
        error = fail(action)
        assert isinstance(error, NotFound)
        assert error.code == "user_not_found"
    assert db.committed == 0
    assert db.sent_in_order(
        "UPDATE users SET disabled_at = CASE", "UPDATE users SET password_hash = %s"
    )
    assert heard.heard == []


def test_reset_password_stores_only_a_hash_and_ends_access() -> None:
    """The new password is returned once; only its hash is written; sessions and tokens end
    and ``user_revoked`` is heard."""
    db = RecordingDatabase()
    admin, heard, passwords = admin_of(db)
    password = run(admin.reset_password(USER))
    assert len(password) >= 16
    assert db.sent_in_order("UPDATE users SET password_hash = %s", *ENDS_ACCESS)
    stored, user = db.sent[0][2]
    assert user == USER
    assert password not in repr(db.sent)
    assert run(passwords.verify(stored, password)) is True
    assert heard.heard == [("revoked", USER)]


def test_a_note_is_written_in_the_same_transaction() -> None:
    """The audit row goes in the change's own transaction, targeting the user."""
    db = RecordingDatabase()
    admin, _, _ = admin_of(db)
    note = Note(AuditLog(cast(Database, db)), Action.USER_DISABLED, Actor(ADMIN, "root"))
    run(admin.set_disabled(ADMIN, USER, True, note))
    tx, sql, args = db.sent[-1]
    assert tx == 1
    assert sql.startswith("INSERT INTO audit_log")
    assert (args["action"], args["target_type"], args["target_id"]) == (
        "admin.user_disabled",
        "user",
        USER,
    )


def test_signup_link_stores_only_the_token_s_hash() -> None:
    """The token is returned with its expiry; the database gets its hash, the admin and the
    lifetime, never the token."""
    db = RecordingDatabase([{"expires_at": AT}])
    admin, _, _ = admin_of(db)
    token, expires = run(admin.create_signup_link(ADMIN, 86400.0))
    assert expires == "2026-12-01T12:00:00Z"
    [(_tx, sql, (_id, digest, created_by, lifetime))] = db.sent
    assert sql.startswith("INSERT INTO signup_links")
    assert (digest, created_by, lifetime) == (token_hash(token), ADMIN, 86400.0)
    assert token not in repr(db.sent)


def test_signup_links_in_api_shape() -> None:
    """Unused links show no use; used ones name who used them."""
    db = RecordingDatabase(
        [{"id": 7, "created_at": AT, "expires_at": AT, "used_at": None, "used_by": None}]
    )
    admin, _, _ = admin_of(db)
    assert run(admin.signup_links()) == [
        {
            "id": "7",
            "created_at": "2026-12-01T12:00:00Z",
            "expires_at": "2026-12-01T12:00:00Z",
            "used_at": None,
            "used_by": None,
        }
    ]


@pytest.mark.parametrize("found", [True, False])
def test_revoke_signup_link(found: bool) -> None:
    """Deleting a link that exists is quiet; one that does not is NotFound."""
    db = RecordingDatabase([{"id": "l1"}] if found else [])
    admin, _, _ = admin_of(db)
    d = Deferred.fromCoroutine(admin.revoke_signup_link("l1"))
    if found:
        result_of(d)
    else:
        error = failure_of(d).value
        assert isinstance(error, NotFound)
        assert error.code == "signup_link_not_found"
    assert db.sent == [(None, "DELETE FROM signup_links WHERE id = %s RETURNING id", ("l1",))]
