"""Workspaces and their members, with the role rules of DESIGN.md enforced in one place."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg2.errors
from attrs import define, field

from cli_server.db.pool import Database, Row, Transaction
from cli_server.domain.audit import Action, Note, Target
from cli_server.domain.errors import Conflict, Forbidden, NameTaken, NotFound
from cli_server.domain.events import Events
from cli_server.domain.roles import Role
from cli_server.plumbing.encoding import iso


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
    # Told when someone's role changes or they stop being a member, once committed.
    _events: Events = field(factory=Events)

    async def list_for(self, user_id: str) -> list[dict[str, Any]]:
        rows = await self._db.query(
            _WORKSPACE_FOR_MEMBER + " WHERE m.user_id = %s ORDER BY w.created_at, w.id", (user_id,)
        )
        return [workspace_json(r) for r in rows]

    async def create(self, user_id: str, name: str, note: Note | None = None) -> dict[str, Any]:
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
            if note is not None:
                target = Target("workspace", workspace_id, name)
                await note.write(tx, workspace_id=workspace_id, target=target)
            return await tx.one(
                _WORKSPACE_FOR_MEMBER + " WHERE w.id = %s AND m.user_id = %s",
                (workspace_id, user_id),
            )

        try:
            row = await self._db.transaction(work)
        except psycopg2.errors.UniqueViolation:
            # The unique index decides, so two creates at once cannot both take the name.
            # (keyed on who created it: a workspace one created and then left still counts)
            raise NameTaken(f'You already created a workspace named "{name}".') from None
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
        return _check(Role.parse(rows[0]["role"]) if rows else None, Role.GUEST)

    async def require(self, workspace_id: str, user_id: str, at_least: Role) -> Role:
        """The caller's role now, outside any transaction. The changes made here use it only to
        refuse early, without the workspace lock, and check again with ``_authorize``."""
        return _check(await self.role_of(workspace_id, user_id), at_least)

    async def get(self, workspace_id: str, user_id: str) -> dict[str, Any]:
        row = await self._db.query(
            _WORKSPACE_FOR_MEMBER + " WHERE w.id = %s AND m.user_id = %s", (workspace_id, user_id)
        )
        if not row:
            raise NotFound("no such workspace", code="workspace_not_found")
        return workspace_json(row[0])

    async def sandbox_counts(self, workspace_id: str) -> dict[str, int]:
        """How many sandboxes the workspace has and how many run: what deleting it takes with
        it. Callers check membership first."""
        rows = await self._db.query(
            "SELECT count(*) AS total, count(*) FILTER (WHERE status = 'running') AS running"
            " FROM sandboxes WHERE workspace_id = %s",
            (workspace_id,),
        )
        return {"total": int(rows[0]["total"]), "running": int(rows[0]["running"])}

    async def set_budget(
        self,
        workspace_id: str,
        actor_id: str,
        monthly_tokens: int | None,
        note: Note | None = None,
    ) -> None:
        async def work(tx: Transaction) -> None:
            await _authorize(tx, workspace_id, actor_id, Role.OWNER)
            await tx.execute(
                "UPDATE workspaces SET monthly_token_budget = %s WHERE id = %s",
                (monthly_tokens, workspace_id),
            )
            if note is not None:
                await note.write(tx, target=Target("workspace", workspace_id))

        await self._db.transaction(work)

    async def delete(self, workspace_id: str, actor_id: str, note: Note | None = None) -> None:
        await self.require(workspace_id, actor_id, Role.OWNER)

        async def work(tx: Transaction) -> list[Row]:
            await _authorize(tx, workspace_id, actor_id, Role.OWNER)
            members = await tx.query(
                "SELECT user_id FROM workspace_members WHERE workspace_id = %s", (workspace_id,)
            )
            if note is not None:  # (named while it still is)
                named = await tx.one("SELECT name FROM workspaces WHERE id = %s", (workspace_id,))
                target = Target("workspace", workspace_id, named["name"] if named else None)
                await note.write(tx, workspace_id=workspace_id, target=target)
            await tx.execute("DELETE FROM workspaces WHERE id = %s", (workspace_id,))
            return members

        for member in await self._db.transaction(work):
            await self._events.member_changed(str(member["user_id"]), workspace_id)

    async def members(self, workspace_id: str, actor_id: str) -> list[dict[str, Any]]:
        await self.role_of(workspace_id, actor_id)
        rows = await self._db.query(
            _MEMBERS + " WHERE m.workspace_id = %s ORDER BY m.created_at, u.username",
            (workspace_id,),
        )
        return [member_json(r) for r in rows]

    async def add_member(
        self,
        workspace_id: str,
        actor_id: str,
        username: str,
        role: Role,
        note: Note | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Invite ``username`` (or add them, where the operator allows direct adds).

        Returns the answer and whether something new was made: inviting someone again
        returns the same pending invitation, with the new role and a fresh expiry.
        """
        # Refused callers learn nothing about usernames; _add_directly and _invite check again.
        actor_role = await self.require(workspace_id, actor_id, Role.MAINTAINER)
        _check(actor_role, *_invite_rule(role))
        users = await self._db.query(
            "SELECT id, email, (SELECT email FROM users WHERE id = %s) AS actor_email"
            " FROM users WHERE lower(username) = lower(%s)",
            (actor_id, username),
        )
        if not users:
            raise NotFound("no user has that username", code="user_not_found")
        user_id = str(users[0]["id"])
        if self.adds_directly(users[0]["actor_email"], users[0]["email"]):
            return await self._add_directly(workspace_id, actor_id, user_id, role, note), True
        return await self._invite(workspace_id, actor_id, user_id, role, note)

    def adds_directly(self, actor_email: str | None, invitee_email: str | None) -> bool:
        """Whether the actor may add the invitee without an invitation (--direct-members)."""
        if "*" in self._direct_members:
            return True
        domain = email_domain(invitee_email)
        return (
            domain is not None
            and domain in self._direct_members
            and (email_domain(actor_email) == domain)
        )

    async def _add_directly(
        self, workspace_id: str, actor_id: str, user_id: str, role: Role, note: Note | None
    ) -> dict[str, Any]:
        async def work(tx: Transaction) -> Row | None:
            await _authorize(tx, workspace_id, actor_id, *_invite_rule(role))
            added = await tx.one(
                "INSERT INTO workspace_members (workspace_id, user_id, role) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING user_id",
                (workspace_id, user_id, role.label),
            )
            if added is None:
                raise Conflict("that user is already a member", code="already_member")
            await tx.execute(
                "DELETE FROM workspace_invitations WHERE workspace_id = %s AND user_id = %s",
                (workspace_id, user_id),
            )
            if note is not None:
                await note.write(tx, action=Action.MEMBER_ADDED, target=Target("user", user_id))
            return await tx.one(
                _MEMBERS + " WHERE m.workspace_id = %s AND m.user_id = %s",
                (workspace_id, user_id),
            )

        row = await self._db.transaction(work)
        assert row is not None
        return {"status": "member", **member_json(row)}

    async def _invite(
        self, workspace_id: str, actor_id: str, user_id: str, role: Role, note: Note | None
    ) -> tuple[dict[str, Any], bool]:
        async def work(tx: Transaction) -> tuple[Row, Row | None]:
            await _authorize(tx, workspace_id, actor_id, *_invite_rule(role))
            if await _role_in(tx, workspace_id, user_id) is not None:
                raise Conflict("that user is already a member", code="already_member")
            # An expired invitation is gone: a new one gets a new id.
            await tx.execute(
                "DELETE FROM workspace_invitations"
                " WHERE workspace_id = %s AND user_id = %s AND expires_at <= now()",
                (workspace_id, user_id),
            )
            made = await tx.one(
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
            assert made is not None
            pending = await tx.one(_INVITATIONS + " AND i.id = %s", (made["id"],))
            if note is not None and pending is not None:
                target = Target("invitation", str(made["id"]), pending["username"])
                await note.write(tx, action=Action.MEMBER_INVITED, target=target)
            return made, pending

        made, pending = await self._db.transaction(work)
        assert pending is not None
        answer = {"status": "invited", "invitation_id": str(made["id"]), **pending_json(pending)}
        return answer, bool(made["created"])

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

    async def accept(
        self, invitation_id: str, user_id: str, note: Note | None = None
    ) -> dict[str, Any]:
        """The invitee joins with the invited role, if its sender could still send it; the
        invitation is used up either way."""
        found = await self._db.query(
            "SELECT workspace_id FROM workspace_invitations"
            " WHERE id = %s AND user_id = %s AND expires_at > now()",
            (invitation_id, user_id),
        )
        if not found:
            raise _no_invitation()
        workspace_id = str(found[0]["workspace_id"])

        async def work(tx: Transaction) -> Row | None:
            await _lock_workspace(tx, workspace_id)
            invitation = await tx.one(
                "DELETE FROM workspace_invitations"
                " WHERE id = %s AND user_id = %s AND expires_at > now()"
                " RETURNING role, invited_by",
                (invitation_id, user_id),
            )
            if invitation is None:  # declined, revoked or accepted meanwhile
                return None
            inviter = invitation["invited_by"]
            sender = None if inviter is None else await _role_in(tx, workspace_id, str(inviter))
            needed, _ = _invite_rule(Role.parse(invitation["role"]))
            if sender is None or sender < needed:  # its sender left or lost the right
                return None
            # Already a member (added directly meanwhile): the membership stands as it is.
            await tx.execute(
                "INSERT INTO workspace_members (workspace_id, user_id, role) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (workspace_id, user_id, invitation["role"]),
            )
            if note is not None:
                details = {"role": invitation["role"]}
                await note.write(tx, workspace_id=workspace_id, details=details)
            return await tx.one(
                _WORKSPACE_FOR_MEMBER + " WHERE w.id = %s AND m.user_id = %s",
                (workspace_id, user_id),
            )

        try:
            joined = await self._db.transaction(work)
        except NotFound:
            raise _no_invitation() from None
        if joined is None:
            raise _no_invitation()
        return workspace_json(joined)

    async def decline(self, invitation_id: str, user_id: str) -> str:
        """Returns the workspace it was for."""
        rows = await self._db.query(
            "DELETE FROM workspace_invitations WHERE id = %s AND user_id = %s"
            " RETURNING workspace_id",
            (invitation_id, user_id),
        )
        if not rows:
            raise _no_invitation()
        return str(rows[0]["workspace_id"])

    async def revoke(self, invitation_id: str, actor_id: str, note: Note | None = None) -> None:
        """The invitee declines; the inviter or an owner withdraws. Anyone else: 404, or 403
        for a maintainer who did not send it."""
        rows = await self._db.query(
            "SELECT workspace_id FROM workspace_invitations WHERE id = %s", (invitation_id,)
        )
        if not rows:
            raise _no_invitation()
        workspace_id = str(rows[0]["workspace_id"])

        async def work(tx: Transaction) -> None:
            await _lock_workspace(tx, workspace_id)
            invitation = await tx.one(
                "SELECT user_id, invited_by FROM workspace_invitations WHERE id = %s",
                (invitation_id,),
            )
            if invitation is None:
                raise _no_invitation()
            if str(invitation["user_id"]) != actor_id:
                try:
                    role = await _authorize(tx, workspace_id, actor_id, Role.MAINTAINER)
                except (NotFound, Forbidden):
                    raise _no_invitation() from None  # they cannot list invitations
                if role < Role.OWNER and str(invitation["invited_by"]) != actor_id:
                    raise Forbidden("only the one who invited or an owner can revoke an invitation")
            await tx.execute("DELETE FROM workspace_invitations WHERE id = %s", (invitation_id,))
            if note is not None:
                await note.write(tx, workspace_id=workspace_id)

        try:
            await self._db.transaction(work)
        except NotFound:
            raise _no_invitation() from None

    async def purge_expired_invitations(self) -> None:
        """Housekeeping: expired invitations are already invisible; drop their rows."""
        await self._db.execute("DELETE FROM workspace_invitations WHERE expires_at <= now()")

    async def set_role(
        self, workspace_id: str, actor_id: str, user_id: str, role: Role, note: Note | None = None
    ) -> dict[str, Any]:
        await self.require(workspace_id, actor_id, Role.OWNER)

        async def work(tx: Transaction) -> Row | None:
            await _authorize(tx, workspace_id, actor_id, Role.OWNER)
            current = await _member_role(tx, workspace_id, user_id)
            if current == Role.OWNER and role != Role.OWNER:
                await _refuse_last_owner(tx, workspace_id, "demoted")
            await tx.execute(
                "UPDATE workspace_members SET role = %s WHERE workspace_id = %s AND user_id = %s",
                (role.label, workspace_id, user_id),
            )
            await _drop_invitations_beyond(tx, workspace_id, user_id, role)
            if note is not None:
                details = {"role": role.label, "was": current.label}
                await note.write(tx, target=Target("user", user_id), details=details)
            return await tx.one(
                _MEMBERS + " WHERE m.workspace_id = %s AND m.user_id = %s",
                (workspace_id, user_id),
            )

        row = await self._db.transaction(work)
        assert row is not None
        await self._events.member_changed(user_id, workspace_id)
        return member_json(row)

    async def remove_member(
        self, workspace_id: str, actor_id: str, user_id: str, note: Note | None = None
    ) -> None:
        """Owners remove anyone; every member may leave."""
        needed = Role.GUEST if actor_id == user_id else Role.OWNER
        await self.require(workspace_id, actor_id, needed)

        async def work(tx: Transaction) -> None:
            await _authorize(tx, workspace_id, actor_id, needed)
            current = await _member_role(tx, workspace_id, user_id)
            if current == Role.OWNER:
                await _refuse_last_owner(tx, workspace_id, "removed")
            await tx.execute(
                "DELETE FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
                (workspace_id, user_id),
            )
            await _drop_invitations_beyond(tx, workspace_id, user_id, None)
            if note is not None:
                await note.write(tx, target=Target("user", user_id))

        await self._db.transaction(work)
        await self._events.member_changed(user_id, workspace_id)


def _check(role: Role | None, at_least: Role, why: str | None = None) -> Role:
    """The answer to everyone below ``at_least``: 404 to non-members, so ids of other
    workspaces leak nothing, 403 to members."""
    if role is None:
        raise NotFound("no such workspace", code="workspace_not_found")
    if role < at_least:
        raise Forbidden(why or f"this needs the {at_least.label} role or higher in the workspace")
    return role


def _invite_rule(role: Role) -> tuple[Role, str | None]:
    """Who may send an invitation for ``role`` (and the refusal): owners invite owners,
    maintainers and owners everyone else."""
    if role == Role.OWNER:
        return Role.OWNER, "only an owner can add another owner"
    return Role.MAINTAINER, None


async def _authorize(
    tx: Transaction, workspace_id: str, actor_id: str, at_least: Role, why: str | None = None
) -> Role:
    """Check the actor's role after the workspace lock, in the transaction of the change it
    guards: a role lost while the request was in flight counts as never held, and the change
    is not made."""
    await _lock_workspace(tx, workspace_id)
    return _check(await _role_in(tx, workspace_id, actor_id), at_least, why)


async def _role_in(tx: Transaction, workspace_id: str, user_id: str) -> Role | None:
    row = await tx.one(
        "SELECT role FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
        (workspace_id, user_id),
    )
    return None if row is None else Role.parse(row["role"])


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
    """Serialises membership changes of one workspace (invite, accept, demote, remove) and
    the authorization checks made under it, so that two owners demoting each other at once
    do not both pass the last-owner check, and no check sees a role already taken away."""
    if await tx.one("SELECT id FROM workspaces WHERE id = %s FOR UPDATE", (workspace_id,)) is None:
        raise NotFound("no such workspace", code="workspace_not_found")


async def _member_role(tx: Transaction, workspace_id: str, user_id: str) -> Role:
    role = await _role_in(tx, workspace_id, user_id)
    if role is None:
        raise NotFound("no such member", code="member_not_found")
    return role


async def _refuse_last_owner(tx: Transaction, workspace_id: str, verb: str) -> None:
    row = await tx.one(
        "SELECT count(*) AS n FROM workspace_members WHERE workspace_id = %s AND role = 'owner'",
        (workspace_id,),
    )
    if row is None or row["n"] <= 1:
        raise Conflict(f"the last owner cannot be {verb}", code="last_owner")
