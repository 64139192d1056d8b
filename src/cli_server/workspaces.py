"""Workspaces and their members, with the role rules of DESIGN.md enforced in one place."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg2.errors
from attrs import define

from cli_server.db.pool import Database, Row, Transaction
from cli_server.errors import Conflict, Forbidden, NotFound
from cli_server.json import iso
from cli_server.roles import Role


def workspace_json(row: Row) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "role": row["role"],
        "created_at": iso(row["created_at"]),
    }


def member_json(row: Row) -> dict[str, Any]:
    return {
        "user_id": str(row["user_id"]),
        "username": row["username"],
        "role": row["role"],
        "created_at": iso(row["created_at"]),
    }


_WORKSPACE_FOR_MEMBER = (
    "SELECT w.id, w.name, w.created_at, m.role FROM workspaces w"
    " JOIN workspace_members m ON m.workspace_id = w.id"
)
_MEMBERS = (
    "SELECT m.user_id, u.username, m.role, m.created_at FROM workspace_members m"
    " JOIN users u ON u.id = m.user_id"
)


@define(eq=False)
class Workspaces:
    _db: Database

    async def list_for(self, user_id: str) -> list[dict[str, Any]]:
        rows = await self._db.query(
            _WORKSPACE_FOR_MEMBER + " WHERE m.user_id = %s ORDER BY w.created_at, w.id", (user_id,)
        )
        return [workspace_json(r) for r in rows]

    async def create(self, user_id: str, name: str) -> dict[str, Any]:
        workspace_id = str(uuid.uuid4())

        async def work(tx: Transaction) -> Row | None:
            await tx.execute(
                "INSERT INTO workspaces (id, name, created_by) VALUES (%s, %s, %s)",
                (workspace_id, name, user_id),
            )
            await tx.execute(
                "INSERT INTO workspace_members (workspace_id, user_id, role)"
                " VALUES (%s, %s, 'owner')",
                (workspace_id, user_id),
            )
            return await tx.one(
                _WORKSPACE_FOR_MEMBER + " WHERE w.id = %s AND m.user_id = %s",
                (workspace_id, user_id),
            )

        row = await self._db.transaction(work)
        assert row is not None
        return workspace_json(row)

    async def role_of(self, workspace_id: str, user_id: str) -> Role:
        """The caller's role; 404 for non-members so ids of other workspaces leak nothing."""
        rows = await self._db.query(
            "SELECT role FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
            (workspace_id, user_id),
        )
        if not rows:
            raise NotFound("no such workspace", code="workspace_not_found")
        return Role.parse(rows[0]["role"])

    async def require(self, workspace_id: str, user_id: str, at_least: Role) -> Role:
        role = await self.role_of(workspace_id, user_id)
        if role < at_least:
            raise Forbidden(f"this needs the {at_least.label} role or higher in the workspace")
        return role

    async def get(self, workspace_id: str, user_id: str) -> dict[str, Any]:
        row = await self._db.query(
            _WORKSPACE_FOR_MEMBER + " WHERE w.id = %s AND m.user_id = %s", (workspace_id, user_id)
        )
        if not row:
            raise NotFound("no such workspace", code="workspace_not_found")
        return workspace_json(row[0])

    async def set_budget(self, workspace_id: str, monthly_tokens: int | None) -> None:
        await self._db.execute(
            "UPDATE workspaces SET monthly_token_budget = %s WHERE id = %s",
            (monthly_tokens, workspace_id),
        )

    async def delete(self, workspace_id: str, actor_id: str) -> None:
        await self.require(workspace_id, actor_id, Role.OWNER)
        await self._db.execute("DELETE FROM workspaces WHERE id = %s", (workspace_id,))

    async def members(self, workspace_id: str, actor_id: str) -> list[dict[str, Any]]:
        await self.role_of(workspace_id, actor_id)
        rows = await self._db.query(
            _MEMBERS + " WHERE m.workspace_id = %s ORDER BY m.created_at, u.username",
            (workspace_id,),
        )
        return [member_json(r) for r in rows]

    async def add_member(
        self, workspace_id: str, actor_id: str, username: str, role: Role
    ) -> dict[str, Any]:
        actor_role = await self.require(workspace_id, actor_id, Role.MAINTAINER)
        if role == Role.OWNER and actor_role < Role.OWNER:
            raise Forbidden("only an owner can add another owner")
        users = await self._db.query(
            "SELECT id FROM users WHERE lower(username) = lower(%s)", (username,)
        )
        if not users:
            raise NotFound("no user has that username", code="user_not_found")
        user_id = str(users[0]["id"])
        try:
            await self._db.execute(
                "INSERT INTO workspace_members (workspace_id, user_id, role) VALUES (%s, %s, %s)",
                (workspace_id, user_id, role.label),
            )
        except psycopg2.errors.UniqueViolation:
            raise Conflict("that user is already a member", code="already_member") from None
        except psycopg2.errors.ForeignKeyViolation:
            raise NotFound("no such workspace", code="workspace_not_found") from None
        return await self._member(workspace_id, user_id)

    async def _member(self, workspace_id: str, user_id: str) -> dict[str, Any]:
        rows = await self._db.query(
            _MEMBERS + " WHERE m.workspace_id = %s AND m.user_id = %s", (workspace_id, user_id)
        )
        if not rows:
            raise NotFound("no such member", code="member_not_found")
        return member_json(rows[0])

    async def set_role(
        self, workspace_id: str, actor_id: str, user_id: str, role: Role
    ) -> dict[str, Any]:
        await self.require(workspace_id, actor_id, Role.OWNER)

        async def work(tx: Transaction) -> None:
            current = await _lock_member(tx, workspace_id, user_id)
            if current == Role.OWNER and role != Role.OWNER:
                await _refuse_last_owner(tx, workspace_id, "demoted")
            await tx.execute(
                "UPDATE workspace_members SET role = %s WHERE workspace_id = %s AND user_id = %s",
                (role.label, workspace_id, user_id),
            )

        await self._db.transaction(work)
        return await self._member(workspace_id, user_id)

    async def remove_member(self, workspace_id: str, actor_id: str, user_id: str) -> None:
        """Owners remove anyone; every member may leave."""
        if actor_id != user_id:
            await self.require(workspace_id, actor_id, Role.OWNER)
        else:
            await self.role_of(workspace_id, actor_id)

        async def work(tx: Transaction) -> None:
            current = await _lock_member(tx, workspace_id, user_id)
            if current == Role.OWNER:
                await _refuse_last_owner(tx, workspace_id, "removed")
            await tx.execute(
                "DELETE FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
                (workspace_id, user_id),
            )

        await self._db.transaction(work)


async def _lock_member(tx: Transaction, workspace_id: str, user_id: str) -> Role:
    # Lock the workspace row first: two owners demoting each other at once must not both pass
    # the last-owner check.
    if await tx.one("SELECT id FROM workspaces WHERE id = %s FOR UPDATE", (workspace_id,)) is None:
        raise NotFound("no such workspace", code="workspace_not_found")
    row = await tx.one(
        "SELECT role FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
        (workspace_id, user_id),
    )
    if row is None:
        raise NotFound("no such member", code="member_not_found")
    return Role.parse(row["role"])


async def _refuse_last_owner(tx: Transaction, workspace_id: str, verb: str) -> None:
    row = await tx.one(
        "SELECT count(*) AS n FROM workspace_members WHERE workspace_id = %s AND role = 'owner'",
        (workspace_id,),
    )
    if row is None or row["n"] <= 1:
        raise Conflict(f"the last owner cannot be {verb}", code="last_owner")
