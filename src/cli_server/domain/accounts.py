"""Users and login sessions, stored in PostgreSQL."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import psycopg2.errors
from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime

from cli_server.auth.passwords import Passwords
from cli_server.auth.tokens import new_token, token_hash
from cli_server.db.pool import Database, Row, Transaction
from cli_server.domain.api_tokens import revoke_all
from cli_server.domain.audit import Note, Target
from cli_server.domain.errors import Conflict, Forbidden
from cli_server.domain.events import Events
from cli_server.plumbing.encoding import iso

if TYPE_CHECKING:
    from cli_server.domain.api_tokens import Grant

SIGNUP_LINK_SECONDS = 7 * 86400
# A session's last_seen_at is written at most this often: reading a session stays a read.
SEEN_EVERY = 60
USER_AGENT_LENGTH = 200
# Every registration takes this lock: "is this the first user?" is decided by one at a time.
REGISTRATION_LOCK = 0x636C6972_6567  # "clireg"

_USER_COLUMNS = "u.id, u.username, u.email, u.created_at, u.is_admin"


@frozen
class User:
    id: str
    username: str
    email: str | None
    created_at: str
    is_admin: bool = False
    # A request made with an API token: what the token allows (never in API output).
    token: Grant | None = None

    def reaches(self, workspace_id: str) -> bool:
        """Whether this caller may see the workspace at all (a token restricted to another
        one may not; the role still decides what they may do in it)."""
        return self.token is None or self.token.workspace_id in (None, workspace_id)

    @classmethod
    def from_row(cls, row: Row) -> User:
        return cls(
            str(row["id"]),
            row["username"],
            row["email"],
            iso(row["created_at"]) or "",
            bool(row.get("is_admin", False)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "email": self.email,
            "created_at": self.created_at,
            "is_admin": self.is_admin,
        }


@frozen
class Session:
    """One of a user's login sessions, as they may see it (never its token)."""

    id: str
    created_at: str
    last_seen_at: str
    user_agent: str | None
    address: str | None
    current: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "last_seen_at": self.last_seen_at,
            "user_agent": self.user_agent,
            "address": self.address,
            "current": self.current,
        }


@frozen
class Login:
    """A password check that passed, and the hash it passed against: the session is opened
    only if that hash is still the account's (no password change or reset in between)."""

    user: User
    checked_hash: str = field(repr=False)


class AccountDisabled(Forbidden):
    code = "account_disabled"


@define(eq=False)
class Accounts:
    _db: Database
    _passwords: Passwords
    _clock: IReactorTime
    _session_lifetime: float
    # Told of every revocation, once it is committed (the proxy's sessions end with it).
    _events: Events = field(factory=Events)

    @property
    def passwords(self) -> Passwords:
        return self._passwords

    async def register(
        self,
        username: str,
        password: str,
        email: str | None,
        mode: str = "open",
        invite: str | None = None,
    ) -> User:
        """A new account, if ``mode`` lets it in. While there are no users at all, anyone may
        register whatever the mode, and that first user is the instance admin."""
        password_hash = await self._passwords.hash(password)

        async def work(tx: Transaction) -> User:
            await tx.execute("SELECT pg_advisory_xact_lock(%s)", (REGISTRATION_LOCK,))
            first = await tx.one("SELECT 1 FROM users LIMIT 1") is None
            link_id = None
            if not first and mode == "closed":
                raise Forbidden(
                    "registration is closed on this server; ask your administrator for an account",
                    code="registration_closed",
                )
            if not first and mode == "invite":
                link_id = await _redeem(tx, invite)
            user_id = str(uuid.uuid4())
            try:
                row = await tx.one(
                    "INSERT INTO users (id, username, email, password_hash, is_admin)"
                    " VALUES (%s, %s, %s, %s, %s)"
                    " RETURNING id, username, email, created_at, is_admin",
                    (user_id, username, email, password_hash, first),
                )
            except psycopg2.errors.UniqueViolation as e:
                constraint = getattr(getattr(e, "diag", None), "constraint_name", "") or ""
                if "email" in constraint:
                    raise Conflict(
                        "that email address is already registered", code="email_taken"
                    ) from None
                raise Conflict("that username is taken", code="username_taken") from None
            if link_id is not None:
                await tx.execute(
                    "UPDATE signup_links SET used_by = %s WHERE id = %s", (user_id, link_id)
                )
            assert row is not None
            return User.from_row(row)

        return await self._db.transaction(work)

    async def admins(self) -> list[str]:
        rows = await self._db.query(
            "SELECT username FROM users WHERE is_admin ORDER BY created_at LIMIT 5"
        )
        return [r["username"] for r in rows]

    async def has_users(self) -> bool:
        return bool(await self._db.query("SELECT 1 FROM users LIMIT 1"))

    async def authenticate(self, username: str, password: str) -> Login | None:
        """The user if the password is theirs; raises ``AccountDisabled`` (only to whoever
        knows the password) for a disabled account."""
        rows = await self._db.query(
            f"SELECT {_USER_COLUMNS}, u.password_hash, u.disabled_at FROM users u"
            " WHERE lower(u.username) = lower(%s)",
            (username,),
        )
        stored = rows[0]["password_hash"] if rows else None
        ok = await self._passwords.verify(stored, password)
        if not (ok and rows):
            return None
        if rows[0]["disabled_at"] is not None:
            raise AccountDisabled("this account is disabled; ask your administrator to enable it")
        return Login(User.from_row(rows[0]), rows[0]["password_hash"])

    async def check_password(self, user_id: str, password: str) -> bool:
        rows = await self._db.query("SELECT password_hash FROM users WHERE id = %s", (user_id,))
        return await self._passwords.verify(rows[0]["password_hash"] if rows else None, password)

    async def set_password(
        self, user_id: str, password: str, keep_token: str | None, note: Note | None = None
    ) -> None:
        """A new password; every session of the user ends but ``keep_token``'s, every API
        token, and every sandbox session (``Events.user_revoked``)."""
        password_hash = await self._passwords.hash(password)
        keep = token_hash(keep_token) if keep_token else b""

        async def work(tx: Transaction) -> None:
            await tx.execute(
                "UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id)
            )
            await tx.execute(
                "DELETE FROM sessions WHERE user_id = %s AND token_hash <> %s", (user_id, keep)
            )
            # (a token minted with a stolen session must not outlive the change)
            await revoke_all(tx, user_id)
            if note is not None:
                await note.write(tx, target=Target("user", user_id))

        await self._db.transaction(work)
        await self._events.user_revoked(user_id)

    async def open_session(
        self, login: Login, user_agent: str | None = None, address: str | None = None
    ) -> str | None:
        """A session token, or None if the password changed or the account was disabled
        since ``login`` was checked (a login racing a password change must not outlive it)."""
        return await self._open(login.user.id, user_agent, address, login.checked_hash)

    async def open_trusted_session(
        self, user_id: str, user_agent: str | None = None, address: str | None = None
    ) -> str | None:
        """A session token for a user a sign-in provider vouched for (``sso.identities``
        decided who), or None if the account is disabled or gone."""
        return await self._open(user_id, user_agent, address, None)

    async def _open(
        self, user_id: str, user_agent: str | None, address: str | None, checked_hash: str | None
    ) -> str | None:
        """Written only while the account is enabled (and, with ``checked_hash``, still has
        that password): the check and the insert are one statement."""
        token = new_token()
        rows = await self._db.query(
            "WITH opened AS (INSERT INTO sessions"
            "  (id, token_hash, user_id, expires_at, user_agent, address)"
            "  SELECT %(id)s, %(token)s, u.id, now() + make_interval(secs => %(life)s),"
            "  %(agent)s, %(address)s FROM users u"
            "  WHERE u.id = %(user)s AND u.disabled_at IS NULL"
            "  AND (%(hash)s::text IS NULL OR u.password_hash = %(hash)s)"
            "  RETURNING user_id)"
            " UPDATE users SET last_seen_at = now() WHERE id IN (SELECT user_id FROM opened)"
            " RETURNING id",
            {
                "id": str(uuid.uuid4()),
                "token": token_hash(token),
                "life": self._session_lifetime,
                "agent": (user_agent or "")[:USER_AGENT_LENGTH] or None,
                "address": address,
                "user": user_id,
                "hash": checked_hash,
            },
        )
        return token if rows else None

    async def has_password(self, user_id: str) -> bool:
        rows = await self._db.query(
            "SELECT password_hash IS NOT NULL AS has FROM users WHERE id = %s", (user_id,)
        )
        return bool(rows and rows[0]["has"])

    async def signed_in_within(self, token: str, seconds: float) -> bool:
        """Whether the session of ``token`` was opened in the last ``seconds``."""
        rows = await self._db.query(
            "SELECT 1 FROM sessions WHERE token_hash = %s"
            " AND created_at > now() - make_interval(secs => %s)",
            (token_hash(token), seconds),
        )
        return bool(rows)

    async def set_first_password(self, user_id: str, password: str) -> bool:
        """A password for an account that had none (one made by single sign-on); False if it
        has one by now (then only a change that knows the current one may replace it). Every
        API token of the user ends, as with any new password."""
        password_hash = await self._passwords.hash(password)

        async def work(tx: Transaction) -> bool:
            changed = await tx.execute(
                "UPDATE users SET password_hash = %s WHERE id = %s AND password_hash IS NULL",
                (password_hash, user_id),
            )
            if changed:
                await revoke_all(tx, user_id)
            return bool(changed)

        return await self._db.transaction(work)

    async def session_user(self, token: str) -> User | None:
        # One round trip; the update writes only when last_seen_at is a minute old. It touches
        # the session row only: a users-row lock here, taken after the session's, would
        # deadlock with password changes, which lock the user and then its sessions.
        rows = await self._db.query(
            "WITH touched AS (UPDATE sessions SET last_seen_at = now()"
            "  WHERE token_hash = %(hash)s AND expires_at > now()"
            "  AND last_seen_at < now() - make_interval(secs => %(every)s) RETURNING user_id)"
            f" SELECT {_USER_COLUMNS} FROM sessions s"
            " JOIN users u ON u.id = s.user_id"
            " WHERE s.token_hash = %(hash)s AND s.expires_at > now()"
            " AND u.disabled_at IS NULL",
            {"hash": token_hash(token), "every": SEEN_EVERY},
        )
        return User.from_row(rows[0]) if rows else None

    async def sessions(self, user_id: str, current_token: str) -> list[Session]:
        current = token_hash(current_token)
        rows = await self._db.query(
            "SELECT id, token_hash, created_at, last_seen_at, user_agent, address FROM sessions"
            " WHERE user_id = %s AND expires_at > now() ORDER BY last_seen_at DESC, created_at",
            (user_id,),
        )
        return [
            Session(
                str(r["id"]),
                iso(r["created_at"]) or "",
                iso(r["last_seen_at"]) or "",
                r["user_agent"],
                r["address"],
                bytes(r["token_hash"]) == current,
            )
            for r in rows
        ]

    async def close_session_by_id(
        self, user_id: str, session_id: str, current_token: str
    ) -> str | None:
        """Ends one of the user's sessions: "current" if it was ``current_token``'s, "other",
        or None if they have none with that id. Sandbox sessions are not tied to one login,
        so all of the user's end with it."""
        rows = await self._db.query(
            "DELETE FROM sessions WHERE id = %s AND user_id = %s RETURNING token_hash",
            (session_id, user_id),
        )
        if not rows:
            return None
        await self._events.user_revoked(user_id)
        return "current" if bytes(rows[0]["token_hash"]) == token_hash(current_token) else "other"

    async def close_session(self, token: str) -> None:
        """A logout: the session ends, and the user's sandbox sessions with it."""
        rows = await self._db.query(
            "DELETE FROM sessions WHERE token_hash = %s RETURNING user_id", (token_hash(token),)
        )
        for row in rows:
            await self._events.user_revoked(str(row["user_id"]))

    async def purge_expired_sessions(self) -> None:
        await self._db.execute("DELETE FROM sessions WHERE expires_at <= now()")
        await self._db.execute("DELETE FROM signup_links WHERE expires_at <= now()")


async def _redeem(tx: Transaction, invite: str | None) -> str:
    """Burns a sign-up link (in the registration's transaction: a refused registration
    leaves it unused); returns its id."""
    if not invite:
        raise Forbidden(
            "registration here is by invitation: open the sign-up link your administrator gave you",
            code="invite_required",
        )
    row = await tx.one(
        "UPDATE signup_links SET used_at = now() WHERE token_hash = %s AND used_at IS NULL"
        " AND expires_at > now() RETURNING id",
        (token_hash(invite),),
    )
    if row is None:
        raise Forbidden(
            "this sign-up link was already used, has expired or was revoked; ask your "
            "administrator for a new one",
            code="invite_invalid",
        )
    return str(row["id"])
