"""What the instance admin (the first registered user) does to accounts: list, disable,
enable, reset a password; and the one-time sign-up links of ``--registration invite``.

Nothing here touches workspaces: the admin is no member of anyone else's.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from attrs import define, field

from cli_server.auth.passwords import Passwords
from cli_server.auth.tokens import new_token, token_hash
from cli_server.db.pool import Database, Transaction
from cli_server.domain.api_tokens import revoke_all
from cli_server.domain.audit import Note, Target
from cli_server.domain.errors import Conflict, NotFound
from cli_server.domain.events import Events
from cli_server.plumbing.encoding import iso

_NO_USER = "no such user"


@define(eq=False)
class InstanceAdmin:
    _db: Database
    _passwords: Passwords
    _events: Events = field(factory=Events)

    async def users(self) -> list[dict[str, Any]]:
        rows = await self._db.query(
            "SELECT id, username, email, created_at, is_admin, disabled_at,"
            " greatest(last_seen_at, (SELECT max(s.last_seen_at) FROM sessions s"
            "  WHERE s.user_id = users.id)) AS last_seen_at"
            " FROM users ORDER BY created_at, lower(username)"
        )
        return [
            {
                "id": str(r["id"]),
                "username": r["username"],
                "email": r["email"],
                "created_at": iso(r["created_at"]),
                "is_admin": r["is_admin"],
                "disabled": r["disabled_at"] is not None,
                "last_seen_at": iso(r["last_seen_at"]),
            }
            for r in rows
        ]

    async def set_disabled(
        self, admin_id: str, user_id: str, disabled: bool, note: Note | None = None
    ) -> None:
        """Disabling ends every session, API token and unused sandbox ticket of the user at
        once, then everything else (``Events.user_disabled``: sandbox sessions, local agents)."""
        if disabled and user_id == admin_id:
            raise Conflict("you cannot disable your own account", code="own_account")

        async def work(tx: Transaction) -> None:
            changed = await tx.execute(
                "UPDATE users SET disabled_at = CASE WHEN %s THEN coalesce(disabled_at, now())"
                " END WHERE id = %s",
                (disabled, user_id),
            )
            if not changed:
                raise NotFound(_NO_USER, code="user_not_found")
            if disabled:
                await _end_sessions(tx, user_id)
                await revoke_all(tx, user_id)  # (enabling the account again revives none)
            if note is not None:
                await note.write(tx, target=Target("user", user_id))

        await self._db.transaction(work)
        if disabled:
            await self._events.user_disabled(user_id)

    async def reset_password(self, user_id: str, note: Note | None = None) -> str:
        """A new random password (shown once to the admin, never stored in clear); the user's
        sessions and API tokens end."""
        password = secrets.token_urlsafe(12)
        password_hash = await self._passwords.hash(password)

        async def work(tx: Transaction) -> None:
            changed = await tx.execute(
                "UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id)
            )
            if not changed:
                raise NotFound(_NO_USER, code="user_not_found")
            await _end_sessions(tx, user_id)
            await revoke_all(tx, user_id)
            if note is not None:
                await note.write(tx, target=Target("user", user_id))

        await self._db.transaction(work)
        await self._events.user_revoked(user_id)
        return password

    async def create_signup_link(self, admin_id: str, lifetime: float) -> tuple[str, str]:
        """A one-time token and when it expires; only its hash is stored."""
        token = new_token()
        rows = await self._db.query(
            "INSERT INTO signup_links (id, token_hash, created_by, expires_at)"
            " VALUES (%s, %s, %s, now() + make_interval(secs => %s)) RETURNING expires_at",
            (str(uuid.uuid4()), token_hash(token), admin_id, lifetime),
        )
        return token, iso(rows[0]["expires_at"]) or ""

    async def signup_links(self) -> list[dict[str, Any]]:
        rows = await self._db.query(
            "SELECT l.id, l.created_at, l.expires_at, l.used_at, u.username AS used_by"
            " FROM signup_links l LEFT JOIN users u ON u.id = l.used_by"
            " WHERE l.expires_at > now() OR l.used_at IS NOT NULL"
            " ORDER BY l.created_at DESC"
        )
        return [
            {
                "id": str(r["id"]),
                "created_at": iso(r["created_at"]),
                "expires_at": iso(r["expires_at"]),
                "used_at": iso(r["used_at"]),
                "used_by": r["used_by"],
            }
            for r in rows
        ]

    async def revoke_signup_link(self, link_id: str) -> None:
        rows = await self._db.query(
            "DELETE FROM signup_links WHERE id = %s RETURNING id", (link_id,)
        )
        if not rows:
            raise NotFound("no such sign-up link", code="signup_link_not_found")


async def _end_sessions(tx: Transaction, user_id: str) -> None:
    await tx.execute("DELETE FROM sessions WHERE user_id = %s", (user_id,))
    await tx.execute("DELETE FROM sandbox_tickets WHERE user_id = %s", (user_id,))
