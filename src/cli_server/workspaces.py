"""Workspaces and their members, with the role rules of DESIGN.md enforced in one place."""

from __future__ import annotations

import uuid
from datetime import timedelta
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


def invitation_json(row: Row) -> dict[str, Any]:
    """An invitation as its invitee sees it: which workspace, who asked, for which role."""
    return {
        "id": str(row["id"]),
        "workspace_id": str(row["workspace_id"]),
        "workspace_name": row["workspace_name"],
        "role": row["role"],
        "invited_by": row["invited_by"],
        "created_at": iso(row["created_at"]),
        "expires_at": iso(row["expires_at"]),
    }


def pending_json(row: Row) -> dict[str, Any]:
    """A pending invitation as the workspace's owners and maintainers see it: the name they
    typed, nothing more of the account until it accepts."""
    return {
        "id": str(row["id"]),
        "username": row["username"],
        "role": row["role"],
        "invited_by": row["invited_by"],
        "created_at": iso(row["created_at"]),
        "expires_at": iso(row["expires_at"]),
    }


# Long enough to be seen after a holiday, short enough that forgotten ones go away by themselves.
INVITATION_LIFETIME = timedelta(days=14)

_WORKSPACE_FOR_MEMBER = (
    "SELECT w.id, w.name, w.created_at, m.role FROM workspaces w"
    " JOIN workspace_members m ON m.workspace_id = w.id"
)
_MEMBERS = (
    "SELECT m.user_id, u.username, m.role, m.created_at FROM workspace_members m"
    " JOIN users u ON u.id = m.user_id"
)
_INVITATIONS = (
    "SELECT i.id, i.workspace_id, w.name AS workspace_name, i.role, i.created_at, i.expires_at,"
    " invitee.username, inviter.username AS invited_by FROM workspace_invitations i"
    " JOIN workspaces w ON w.id = i.workspace_id"
    " JOIN users invitee ON invitee.id = i.user_id"
    " LEFT JOIN users inviter ON inviter.id = i.invited_by"
    " WHERE i.expires_at > now()"
)


def email_domain(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    return email.rpartition("@")[2].strip().lower().rstrip(".") or None


@define(eq=False)
class Workspaces:
    """Workspaces, members and invitations.

    ``direct_members`` lists the email domains whose users may be added without an invitation
    by someone of the same domain (``*``: anyone, by anyone); everyone else is invited and
    joins only by accepting.
    """

    _db: Database
    _direct_members: tuple[str, ...] = ()
    # Each workspace may hold disk images on the host (its files, its sandboxes' homes), kept
    # while paused: one account must not make them without end (None: no limit).
    _max_owned: int | None = None

    async def list_for(self, user_id: str) -> list[dict[str, Any]]:
        rows = await self._db.query(
            _WORKSPACE_FOR_MEMBER + " WHERE m.user_id = %s ORDER BY w.created_at, w.id", (user_id,)
        )
        return [workspace_json(r) for r in rows]

    async def create(self, user_id: str, name: str) -> dict[str, Any]:
        workspace_id = str(uuid.uuid4())

        async def work(tx: Transaction) -> Row | None:
            if self._max_owned is not None:
                await self._room_for_one_more(tx, user_id, self._max_owned)
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

    @staticmethod
    async def _room_for_one_more(tx: Transaction, user_id: str, limit: int) -> None:
        """Refuse a workspace past the limit. Counts those the user owns or created (handing
        one to someone else does not make room); the user's row lock puts concurrent creates
        by one user one after the other, so none is counted twice."""
        await tx.execute("SELECT 1 FROM users WHERE id = %s FOR NO KEY UPDATE", (user_id,))
        row = await tx.one(
            "SELECT count(*) AS n FROM workspaces w WHERE w.created_by = %s OR EXISTS ("
            " SELECT 1 FROM workspace_members m WHERE m.workspace_id = w.id"
            " AND m.user_id = %s AND m.role = 'owner')",
            (user_id, user_id),
        )
        assert row is not None
        if row["n"] >= limit:
            raise Conflict(
                f"you already own or created {row['n']} workspaces, the limit of {limit} per"
                " person; delete one first (the server's operator sets the limit with"
                " --max-workspaces-per-user)",
                code="user_workspace_limit",
            )

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
    ) -> tuple[dict[str, Any], bool]:
        """Invite ``username`` (or add them, where the operator allows direct adds).

        Returns the answer and whether something new was made: inviting someone again
        returns the same pending invitation, with the new role and a fresh expiry.
        """
        actor_role = await self.require(workspace_id, actor_id, Role.MAINTAINER)
        if role == Role.OWNER and actor_role < Role.OWNER:
            raise Forbidden("only an owner can add another owner")
        users = await self._db.query(
            "SELECT id, email, (SELECT email FROM users WHERE id = %s) AS actor_email"
            " FROM users WHERE lower(username) = lower(%s)",
            (actor_id, username),
        )
        if not users:
            raise NotFound("no user has that username", code="user_not_found")
        user_id = str(users[0]["id"])
        if self._direct(users[0]["actor_email"], users[0]["email"]):
            return await self._add_directly(workspace_id, user_id, role), True
        return await self._invite(workspace_id, actor_id, user_id, role)

    def _direct(self, actor_email: str | None, invitee_email: str | None) -> bool:
        if "*" in self._direct_members:
            return True
        domain = email_domain(invitee_email)
        return (
            domain is not None
            and domain in self._direct_members
            and (email_domain(actor_email) == domain)
        )

    async def _add_directly(self, workspace_id: str, user_id: str, role: Role) -> dict[str, Any]:
        try:
            await self._db.execute(
                "INSERT INTO workspace_members (workspace_id, user_id, role) VALUES (%s, %s, %s)",
                (workspace_id, user_id, role.label),
            )
        except psycopg2.errors.UniqueViolation:
            raise Conflict("that user is already a member", code="already_member") from None
        except psycopg2.errors.ForeignKeyViolation:
            raise NotFound("no such workspace", code="workspace_not_found") from None
        await self._db.execute(
            "DELETE FROM workspace_invitations WHERE workspace_id = %s AND user_id = %s",
            (workspace_id, user_id),
        )
        return {"status": "member", **await self._member(workspace_id, user_id)}

    async def _invite(
        self, workspace_id: str, actor_id: str, user_id: str, role: Role
    ) -> tuple[dict[str, Any], bool]:
        async def work(tx: Transaction) -> Row | None:
            await _lock_workspace(tx, workspace_id)
            member = await tx.one(
                "SELECT 1 AS x FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
                (workspace_id, user_id),
            )
            if member is not None:
                raise Conflict("that user is already a member", code="already_member")
            # An expired invitation is gone: a new one gets a new id.
            await tx.execute(
                "DELETE FROM workspace_invitations"
                " WHERE workspace_id = %s AND user_id = %s AND expires_at <= now()",
                (workspace_id, user_id),
            )
            return await tx.one(
                "INSERT INTO workspace_invitations"
                " (id, workspace_id, user_id, role, invited_by, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, now() + %s)"
                " ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = EXCLUDED.role,"
                " invited_by = EXCLUDED.invited_by, expires_at = EXCLUDED.expires_at"
                " RETURNING id, (xmax = 0) AS created",
                (
                    str(uuid.uuid4()),
                    workspace_id,
                    user_id,
                    role.label,
                    actor_id,
                    INVITATION_LIFETIME,
                ),
            )

        row = await self._db.transaction(work)
        assert row is not None
        (pending,) = await self._db.query(_INVITATIONS + " AND i.id = %s", (row["id"],))
        answer = {"status": "invited", "invitation_id": str(row["id"]), **pending_json(pending)}
        return answer, bool(row["created"])

    async def invitations_for(self, user_id: str) -> list[dict[str, Any]]:
        """The caller's pending invitations."""
        rows = await self._db.query(
            _INVITATIONS + " AND i.user_id = %s ORDER BY i.created_at, i.id", (user_id,)
        )
        return [invitation_json(r) for r in rows]

    async def pending(self, workspace_id: str, actor_id: str) -> list[dict[str, Any]]:
        """A workspace's pending invitations, for those who may invite."""
        await self.require(workspace_id, actor_id, Role.MAINTAINER)
        rows = await self._db.query(
            _INVITATIONS + " AND i.workspace_id = %s ORDER BY i.created_at, i.id", (workspace_id,)
        )
        return [pending_json(r) for r in rows]

    async def accept(self, invitation_id: str, user_id: str) -> dict[str, Any]:
        """The invitee joins with the invited role; the invitation is used up."""
        found = await self._db.query(
            "SELECT workspace_id FROM workspace_invitations"
            " WHERE id = %s AND user_id = %s AND expires_at > now()",
            (invitation_id, user_id),
        )
        if not found:
            raise _no_invitation()
        workspace_id = str(found[0]["workspace_id"])

        async def work(tx: Transaction) -> None:
            await _lock_workspace(tx, workspace_id)
            invitation = await tx.one(
                "DELETE FROM workspace_invitations"
                " WHERE id = %s AND user_id = %s AND expires_at > now() RETURNING role",
                (invitation_id, user_id),
            )
            if invitation is None:  # declined, revoked or accepted meanwhile
                raise _no_invitation()
            # Already a member (added directly meanwhile): the membership stands as it is.
            await tx.execute(
                "INSERT INTO workspace_members (workspace_id, user_id, role) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (workspace_id, user_id, invitation["role"]),
            )

        try:
            await self._db.transaction(work)
        except NotFound:
            raise _no_invitation() from None
        return await self.get(workspace_id, user_id)

    async def decline(self, invitation_id: str, user_id: str) -> None:
        rows = await self._db.query(
            "DELETE FROM workspace_invitations WHERE id = %s AND user_id = %s RETURNING id",
            (invitation_id, user_id),
        )
        if not rows:
            raise _no_invitation()

    async def revoke(self, invitation_id: str, actor_id: str) -> None:
        """The invitee declines; the inviter or an owner withdraws. Anyone else: 404, or 403
        for a maintainer who did not send it."""
        rows = await self._db.query(
            "SELECT workspace_id, user_id, invited_by FROM workspace_invitations WHERE id = %s",
            (invitation_id,),
        )
        if not rows:
            raise _no_invitation()
        if str(rows[0]["user_id"]) == actor_id:
            await self.decline(invitation_id, actor_id)
            return
        try:
            role = await self.role_of(str(rows[0]["workspace_id"]), actor_id)
        except NotFound:
            raise _no_invitation() from None
        if role < Role.MAINTAINER:
            raise _no_invitation()  # they cannot list invitations, so none exists for them
        if role < Role.OWNER and str(rows[0]["invited_by"]) != actor_id:
            raise Forbidden("only the one who invited or an owner can revoke an invitation")
        await self._db.execute("DELETE FROM workspace_invitations WHERE id = %s", (invitation_id,))

    async def purge_expired_invitations(self) -> None:
        """Housekeeping: expired invitations are already invisible; drop their rows."""
        await self._db.execute("DELETE FROM workspace_invitations WHERE expires_at <= now()")

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
            await _drop_invitations_beyond(tx, workspace_id, user_id, role)

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
            await _drop_invitations_beyond(tx, workspace_id, user_id, None)

        await self._db.transaction(work)


async def _drop_invitations_beyond(
    tx: Transaction, workspace_id: str, inviter_id: str, role: Role | None
) -> None:
    """An invitation lasts only while its sender could still send it: leaving, removal or
    demotion withdraws the ones they no longer could (none from guests and developers, no
    owner invitations from maintainers)."""
    if role is None or role < Role.MAINTAINER:
        allowed: list[str] = []
    elif role < Role.OWNER:
        allowed = [r.label for r in Role if r < Role.OWNER]
    else:
        return
    await tx.execute(
        "DELETE FROM workspace_invitations WHERE workspace_id = %s AND invited_by = %s"
        " AND NOT role = ANY(%s)",
        (workspace_id, inviter_id, allowed),
    )


def _no_invitation() -> NotFound:
    # Unknown, expired, answered and other people's invitations all look the same.
    return NotFound("no such invitation", code="invitation_not_found")


async def _lock_workspace(tx: Transaction, workspace_id: str) -> None:
    """Serialises membership changes of one workspace (invite, accept, demote, remove)."""
    if await tx.one("SELECT id FROM workspaces WHERE id = %s FOR UPDATE", (workspace_id,)) is None:
        raise NotFound("no such workspace", code="workspace_not_found")


async def _lock_member(tx: Transaction, workspace_id: str, user_id: str) -> Role:
    # Lock the workspace row first: two owners demoting each other at once must not both pass
    # the last-owner check.
    await _lock_workspace(tx, workspace_id)
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
