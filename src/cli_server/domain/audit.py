"""The audit log: who did what, when, from where (table ``audit_log``, append-only).

``AuditLog.record`` writes one row: in the caller's transaction when it passes ``tx`` (the row
then stands or falls with the change), else right after the change was committed. A ``Note``
is a row the web layer prepares (who, from where, what) and hands to a domain method, which
writes it in the transaction of its change. Names are copied as they are at that moment, so
a row still says who and what once they are gone.

Never a secret: ``details`` is a small object of facts (a role, a port, a provider's name), and
``record`` refuses keys that name a secret (passwords, tokens, tickets, cookies, codes).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from attrs import define, evolve, field, frozen
from twisted.logger import Logger, LogLevel

from cli_server.db.pool import Database, Row, Transaction
from cli_server.plumbing.encoding import iso


class Action(StrEnum):
    """The fixed vocabulary of the log (``area.verb``; the table checks the shape)."""

    SIGN_IN = "auth.sign_in"
    SIGN_IN_FAILED = "auth.sign_in_failed"
    SIGN_OUT = "auth.sign_out"
    SESSION_REVOKED = "auth.session_revoked"
    PASSWORD_CHANGED = "auth.password_changed"
    IDENTITY_LINKED = "auth.identity_linked"
    IDENTITY_UNLINKED = "auth.identity_unlinked"
    WORKSPACE_CREATED = "workspace.created"
    WORKSPACE_DELETED = "workspace.deleted"
    BUDGET_CHANGED = "workspace.budget_changed"
    MEMBER_INVITED = "member.invited"
    MEMBER_ADDED = "member.added"
    MEMBER_ROLE_CHANGED = "member.role_changed"
    MEMBER_REMOVED = "member.removed"
    INVITATION_ACCEPTED = "invitation.accepted"
    INVITATION_DECLINED = "invitation.declined"
    INVITATION_REVOKED = "invitation.revoked"
    SANDBOX_CREATED = "sandbox.created"
    SANDBOX_PAUSED = "sandbox.paused"
    SANDBOX_RESUMED = "sandbox.resumed"
    SANDBOX_DELETED = "sandbox.deleted"
    SANDBOX_OPENED = "sandbox.opened"
    AGENT_CODE_CREATED = "agent.code_created"
    AGENT_REGISTERED = "agent.registered"
    AGENT_REVOKED = "agent.revoked"
    USER_DISABLED = "admin.user_disabled"
    USER_ENABLED = "admin.user_enabled"
    PASSWORD_RESET = "admin.password_reset"
    SIGNUP_LINK_CREATED = "admin.signup_link_created"
    SIGNUP_LINK_REVOKED = "admin.signup_link_revoked"
    TOKEN_CREATED = "token.created"
    TOKEN_REVOKED = "token.revoked"


ACTIONS = tuple(a.value for a in Action)
MAX_LIMIT = 200
# Keys of ``details`` that would hold a secret: refused, whatever the value.
_SECRET_KEY = re.compile(r"pass|token|secret|ticket|cookie|code|key|credential", re.IGNORECASE)
_NAME_LENGTH = 254


class SecretInDetails(ValueError):
    """A programming error: ``details`` named something that is a secret."""


@frozen
class Actor:
    """Who acted: a signed-in user, someone who only claimed a name (a failed sign-in), or the
    server itself (``user_id`` and ``name`` None)."""

    user_id: str | None
    name: str | None
    address: str | None = None
    # A failed sign-in: find the account the name belongs to, if there is one.
    claimed: bool = False
    # What the caller used, when not a browser session: "api_token <id>" (never its secret).
    via: str | None = None

    @classmethod
    def system(cls) -> Actor:
        return cls(None, None, None)


@frozen
class Target:
    """What was acted on. A ``name`` left None is read from its table when the row is written
    (workspaces, sandboxes and users have one); say it for things about to be deleted."""

    type: str
    id: str
    name: str | None = None


# How a target's name (and, for a sandbox, its workspace) is read when the row is written
# (by primary key: ``target_uuid`` is the target's id when it is a UUID, else NULL).
_NAMES = {
    "workspace": "(SELECT name FROM workspaces WHERE id = %(target_uuid)s::uuid)",
    "sandbox": "(SELECT name FROM sandboxes WHERE id = %(target_uuid)s::uuid)",
    "user": "(SELECT username FROM users WHERE id = %(target_uuid)s::uuid)",
    "api_token": "(SELECT name FROM api_tokens WHERE id = %(target_uuid)s::uuid)",
}
_WORKSPACE_OF = {
    "sandbox": "(SELECT workspace_id FROM sandboxes WHERE id = %(target_uuid)s::uuid)",
}


@frozen
class Note:
    """A row to write in the transaction of the change it tells of (``write``); the domain
    method adds what only it knows (the new id, the action it took, a name before a delete)."""

    log: AuditLog
    action: Action
    actor: Actor
    workspace_id: str | None = None
    target: Target | None = None
    details: Mapping[str, Any] = field(factory=dict)

    # (Any: each keyword is one of Note's fields, of that field's type; evolve checks the names)
    async def write(self, tx: Transaction, **known: Any) -> None:
        note = evolve(self, **known)
        await note.log.record(
            note.action,
            note.actor,
            workspace_id=note.workspace_id,
            target=note.target,
            details=note.details,
            tx=tx,
        )


@frozen
class Query:
    """Which entries, newest first: all filters optional. ``actor`` is a user id or a name."""

    workspace_id: str | None = None
    action: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    limit: int = 50


@frozen
class Entry:
    id: int
    at: str
    actor_id: str | None
    actor_name: str | None
    action: str
    workspace_id: str | None
    target_type: str | None
    target_id: str | None
    target_name: str | None
    address: str | None
    details: Mapping[str, Any]

    @classmethod
    def from_row(cls, row: Row) -> Entry:
        return cls(
            int(row["id"]),
            iso(row["at"]) or "",
            _text(row["actor_id"]),
            row["actor_name"],
            row["action"],
            _text(row["workspace_id"]),
            row["target_type"],
            row["target_id"],
            row["target_name"],
            row["address"],
            row["details"] or {},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "actor_id": self.actor_id,
            "actor_name": self.actor_name,
            "action": self.action,
            "workspace_id": self.workspace_id,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "target_name": self.target_name,
            "address": self.address,
            "details": dict(self.details),
        }


@frozen
class Page:
    entries: list[Entry]
    next: int | None  # pass as ``before`` for the next (older) page

    def to_json(self) -> dict[str, Any]:
        return {"entries": [e.to_json() for e in self.entries], "next": self.next}


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def checked_details(details: Mapping[str, Any] | None) -> str:
    """``details`` as JSON, refusing keys that name a secret (at any depth)."""

    def check(value: object) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                if _SECRET_KEY.search(str(key)):
                    raise SecretInDetails(f"audit details must not hold {key!r}")
                check(inner)
        elif isinstance(value, list | tuple):
            for inner in value:
                check(inner)

    check(details or {})
    return json.dumps(details or {}, separators=(",", ":"), default=str)


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@define(eq=False)
class AuditLog:
    _db: Database
    _log = Logger()

    async def record(
        self,
        action: Action,
        actor: Actor,
        *,
        workspace_id: str | None = None,
        target: Target | None = None,
        details: Mapping[str, Any] | None = None,
        tx: Transaction | None = None,
    ) -> None:
        """One row. In ``tx``: its failure fails the change. After a commit: a failure is
        logged (the change stands; refusing the answer would hide that it happened)."""
        kind = target.type if target else None
        args = {
            "actor_id": actor.user_id,
            "actor_name": actor.name[:_NAME_LENGTH] if actor.name else None,
            "claimed": actor.claimed,
            "action": Action(action).value,
            "workspace_id": workspace_id,
            "target_type": kind,
            "target_id": target.id if target else None,
            "target_uuid": target.id if target and is_uuid(target.id) else None,
            "target_name": target.name if target else None,
            "address": actor.address,
            "details": checked_details(
                {**(details or {}), "via": actor.via} if actor.via else details
            ),
        }
        name = _NAMES.get(kind or "", "NULL")
        workspace = _WORKSPACE_OF.get(kind or "", "NULL")
        sql = (
            "INSERT INTO audit_log (actor_id, actor_name, action, workspace_id, target_type,"
            " target_id, target_name, address, details) VALUES ("
            " COALESCE(%(actor_id)s::uuid, CASE WHEN %(claimed)s THEN (SELECT id FROM users"
            "  WHERE lower(username) = lower(%(actor_name)s)) END),"
            " COALESCE(%(actor_name)s, (SELECT username FROM users"
            "  WHERE id = %(actor_id)s::uuid)), %(action)s,"
            f" COALESCE(%(workspace_id)s::uuid, {workspace}),"
            f" %(target_type)s, %(target_id)s, COALESCE(%(target_name)s, {name}),"
            " %(address)s, %(details)s::jsonb)"
        )
        if tx is not None:
            await tx.execute(sql, args)
            return
        try:
            await self._db.execute(sql, args)
        except Exception:
            self._log.failure(
                "could not write the audit entry {action}",
                action=args["action"],
                level=LogLevel.error,
            )

    async def sandbox(self, sandbox_id: str) -> tuple[Target, str | None]:
        """A sandbox as a target, and its workspace: read before it is deleted."""
        rows = await self._db.query(
            "SELECT name, workspace_id FROM sandboxes WHERE id = %s", (sandbox_id,)
        )
        if not rows:
            return Target("sandbox", sandbox_id), None
        return Target("sandbox", sandbox_id, rows[0]["name"]), str(rows[0]["workspace_id"])

    async def entries(self, query: Query) -> Page:
        """A page of entries, newest first; ``next`` is set when older ones remain."""
        where: list[str] = ["true"]
        args: dict[str, Any] = {}
        if query.workspace_id is not None:
            where.append("workspace_id = %(workspace)s")
            args["workspace"] = query.workspace_id
        if query.action is not None:
            where.append("action = %(action)s")
            args["action"] = query.action
        if query.actor is not None:
            if is_uuid(query.actor):
                where.append("actor_id = %(actor)s::uuid")
            else:
                where.append("lower(actor_name) = lower(%(actor)s)")
            args["actor"] = query.actor
        if query.since is not None:
            where.append("at >= %(since)s")
            args["since"] = query.since
        if query.until is not None:
            where.append("at < %(until)s")
            args["until"] = query.until
        if query.before is not None:
            where.append("id < %(before)s")
            args["before"] = query.before
        limit = max(1, min(query.limit, MAX_LIMIT))
        rows = await self._db.query(
            "SELECT id, at, actor_id, actor_name, action, workspace_id, target_type, target_id,"
            f" target_name, address, details FROM audit_log WHERE {' AND '.join(where)}"
            f" ORDER BY id DESC LIMIT {limit + 1}",
            args,
        )
        found = [Entry.from_row(r) for r in rows[:limit]]
        return Page(found, found[-1].id if len(rows) > limit else None)

    async def purge(self, days: int) -> int:
        """Deletes the entries older than ``days`` days (0: keeps all); returns how many."""
        if days <= 0:
            return 0
        rows = await self._db.query("SELECT audit_purge(%s) AS gone", (days,))
        return int(rows[0]["gone"])
