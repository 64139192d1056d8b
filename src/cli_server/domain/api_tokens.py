"""Personal API tokens: a user's credential for scripts, narrowed to a scope and optionally to
one workspace, with an expiry of at most a year. Shown once when made; only a SHA-256 of the
secret is stored (``auth.tokens``), and a request finds its token by that hash.

A token is its user, narrowed: the user's role in each workspace still decides every call, a
token's ``admin`` scope makes no one the instance admin, and a token made with a token never
reaches further (scope, workspace, expiry) than the token that made it, nor outlives its
revocation.
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from attrs import define, frozen
from twisted.internet.interfaces import IReactorTime

from cli_server.auth.tokens import token_hash
from cli_server.db.pool import Database, Row, Transaction
from cli_server.domain.audit import Note, Target
from cli_server.domain.errors import BadRequest, Conflict, NotFound, Unauthorized
from cli_server.plumbing.encoding import iso

if TYPE_CHECKING:
    from cli_server.domain.accounts import User

TokenScope = Literal["read", "write", "admin"]
SCOPES: tuple[TokenScope, ...] = ("read", "write", "admin")
# The scope a route needs, in order; "session" (a signed-in browser only) is above them all.
_RANK = {"read": 0, "write": 1, "admin": 2, "session": 3}

# Secret scanners look for this prefix; the rest is 32 random bytes, URL-safe base64.
PREFIX = "cli_pat_"
_FORMAT = re.compile(r"^cli_pat_[A-Za-z0-9_-]{43}$")
MAX_ACTIVE_PER_USER = 50
NAME_LENGTH = 100
# A token's last_used_at is written at most this often: using a token stays a read.
USED_EVERY = 60


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def looks_like_token(text: str) -> bool:
    """The shape of our secrets: anything else is refused without asking the database."""
    return _FORMAT.match(text) is not None


def covers(scope: str, needed: str) -> bool:
    """Whether a token of ``scope`` may call a route that needs ``needed`` (read < write <
    admin; no token reaches a ``session`` route)."""
    return needed != "session" and _RANK.get(scope, -1) >= _RANK.get(needed, len(_RANK))


def parse_scope(value: object) -> TokenScope:
    for scope in SCOPES:
        if value == scope:
            return scope
    raise BadRequest("scope must be one of read, write, admin", field="scope")


def parse_expiry(value: object, now: datetime) -> datetime:
    """An ISO 8601 moment with a time zone, after ``now`` and at most a year after it."""
    rule = "an ISO 8601 date and time with a time zone, e.g. 2030-01-31T12:00:00Z"
    if not isinstance(value, str) or len(value) > 64:
        raise BadRequest(f"expires_at must be {rule}", field="expires_at")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"expires_at must be {rule}", field="expires_at") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise BadRequest(f"expires_at needs a time zone: {rule}", field="expires_at")
    if moment <= now:
        raise BadRequest("expires_at must be in the future", field="expires_at")
    if moment > a_year_after(now):
        raise BadRequest(
            "expires_at can be at most a year ahead (this date and time next year)",
            field="expires_at",
        )
    return moment.astimezone(UTC)


def a_year_after(moment: datetime) -> datetime:
    """The same date and time next year (from 29 February: the 28th)."""
    try:
        return moment.replace(year=moment.year + 1)
    except ValueError:
        return moment.replace(year=moment.year + 1, day=28)


class InvalidToken(Unauthorized):
    """One answer for every token that does not work, whatever was wrong with it."""

    code = "invalid_token"

    def __init__(self) -> None:
        super().__init__(
            "this API token is not valid: it is unknown, expired or revoked, or its account "
            "is disabled"
        )

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="cli-server", error="invalid_token"'}


@frozen
class Grant:
    """What a request's token allows: carried by its ``User`` (``User.token``)."""

    id: str
    scope: TokenScope
    workspace_id: str | None  # None: every workspace of the user
    expires_at: datetime


@frozen
class ApiToken:
    """A token as its owner sees it: never its secret."""

    id: str
    name: str
    scope: str
    workspace_id: str | None
    created_at: str
    expires_at: str
    last_used_at: str | None

    @classmethod
    def from_row(cls, row: Row) -> ApiToken:
        workspace = row["workspace_id"]
        return cls(
            str(row["id"]),
            row["name"],
            row["scope"],
            str(workspace) if workspace is not None else None,
            iso(row["created_at"]) or "",
            iso(row["expires_at"]) or "",
            iso(row["last_used_at"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "workspace_id": self.workspace_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
        }


_COLUMNS = "id, name, scope, workspace_id, created_at, expires_at, last_used_at"


@define(eq=False)
class ApiTokens:
    _db: Database
    _clock: IReactorTime
    _max_active: int = MAX_ACTIVE_PER_USER

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), UTC)

    async def create(
        self,
        caller: User,
        name: str,
        scope: TokenScope,
        workspace_id: str | None,
        expires_at: datetime,
        note: Note | None = None,
    ) -> tuple[ApiToken, str]:
        """A new token of ``caller``'s and its secret (returned here only). ``workspace_id``
        must be one of the caller's workspaces (else 404, as for any workspace not theirs).
        A caller signed in with a token makes none that reaches further than that token."""
        grant = caller.token
        if grant is not None:
            if not covers(grant.scope, scope):
                raise BadRequest(
                    f"scope can be at most this token's own ({grant.scope})", field="scope"
                )
            if grant.workspace_id is not None:
                if workspace_id not in (None, grant.workspace_id):
                    raise NotFound("no such workspace", code="workspace_not_found")
                workspace_id = grant.workspace_id
            if expires_at > grant.expires_at:
                raise BadRequest(
                    "expires_at cannot be later than the expiry of the token making it",
                    field="expires_at",
                )
        secret = new_secret()

        async def work(tx: Transaction) -> Row:
            # (the user's row, locked: the count below is not raced past, and a user being
            # disabled meanwhile gets no new token)
            user = await tx.one(
                "SELECT 1 FROM users WHERE id = %s AND disabled_at IS NULL FOR UPDATE",
                (caller.id,),
            )
            if user is None:
                raise NotFound("no such user", code="user_not_found")
            if grant is not None:
                # (a revocation of the maker locks the same row first: a child made now is
                # either refused here or ended with its maker, never left behind)
                maker = await tx.one(
                    "SELECT 1 FROM api_tokens WHERE id = %s AND revoked_at IS NULL"
                    " AND expires_at > now()",
                    (grant.id,),
                )
                if maker is None:
                    raise InvalidToken()
            if workspace_id is not None:
                member = await tx.one(
                    "SELECT 1 FROM workspace_members WHERE workspace_id = %s AND user_id = %s",
                    (workspace_id, caller.id),
                )
                if member is None:
                    raise NotFound("no such workspace", code="workspace_not_found")
            active = await tx.one(
                "SELECT count(*) AS n FROM api_tokens WHERE user_id = %s"
                " AND revoked_at IS NULL AND expires_at > now()",
                (caller.id,),
            )
            if active is not None and active["n"] >= self._max_active:
                raise Conflict(
                    f"you have {self._max_active} tokens already; revoke one first",
                    code="too_many_tokens",
                )
            row = await tx.one(
                "INSERT INTO api_tokens"
                " (id, user_id, name, scope, workspace_id, token_hash, expires_at, made_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                (
                    str(uuid.uuid4()),
                    caller.id,
                    name,
                    scope,
                    workspace_id,
                    token_hash(secret),
                    expires_at,
                    grant.id if grant is not None else None,
                ),
            )
            assert row is not None
            if note is not None:
                target = Target("api_token", str(row["id"]), name)
                details = {"scope": scope, "expires_at": iso(expires_at)}
                await note.write(tx, workspace_id=workspace_id, target=target, details=details)
            return row

        return ApiToken.from_row(await self._db.transaction(work)), secret

    async def listed(self, caller: User) -> list[ApiToken]:
        """The caller's tokens not revoked (expired ones too, until revoked); a token
        restricted to a workspace sees only that workspace's."""
        only = caller.token.workspace_id if caller.token else None
        rows = await self._db.query(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE user_id = %(user)s AND revoked_at IS NULL"
            " AND (%(only)s::uuid IS NULL OR workspace_id = %(only)s)"
            " ORDER BY created_at DESC, id",
            {"user": caller.id, "only": only},
        )
        return [ApiToken.from_row(r) for r in rows]

    async def revoke(self, caller: User, token_id: str) -> int:
        """Ends one of the caller's tokens at once, and every token made with it (404 if
        they have none with that id, or it is beyond the workspace of the token calling).
        How many tokens it ended."""
        only = caller.token.workspace_id if caller.token else None

        async def work(tx: Transaction) -> int:
            # The user's row first, as ``create`` locks it: a child being made meanwhile is
            # committed before this looks for the family, or sees its maker revoked.
            await tx.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (caller.id,))
            return await tx.execute(
                "WITH RECURSIVE family AS ("
                "  SELECT id FROM api_tokens WHERE id = %(id)s AND user_id = %(user)s"
                "  AND revoked_at IS NULL"
                "  AND (%(only)s::uuid IS NULL OR workspace_id = %(only)s)"
                "  UNION SELECT t.id FROM api_tokens t JOIN family f ON t.made_by = f.id)"
                " UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())"
                " WHERE id IN (SELECT id FROM family)",
                {"id": token_id, "user": caller.id, "only": only},
            )

        revoked = await self._db.transaction(work)
        if not revoked:
            raise NotFound("no such token", code="token_not_found")
        return revoked

    async def authenticate(self, secret: str) -> tuple[Row, Grant] | None:
        """The user's row and the grant of a valid token (existing, unrevoked, unexpired, its
        user enabled); None for anything else, whatever it was. Records the use (at most
        once a minute per token)."""
        if not looks_like_token(secret):
            return None
        rows = await self._db.query(
            "WITH touched AS (UPDATE api_tokens SET last_used_at = now()"
            "  WHERE token_hash = %(hash)s AND revoked_at IS NULL AND expires_at > now()"
            "  AND (last_used_at IS NULL"
            "   OR last_used_at < now() - make_interval(secs => %(every)s))"
            "  AND user_id IN (SELECT id FROM users WHERE disabled_at IS NULL) RETURNING id)"
            " SELECT u.id, u.username, u.email, u.created_at, u.is_admin,"
            "  t.id AS token_id, t.scope, t.workspace_id, t.expires_at"
            " FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.token_hash = %(hash)s AND t.revoked_at IS NULL AND t.expires_at > now()"
            " AND u.disabled_at IS NULL",
            {"hash": token_hash(secret), "every": USED_EVERY},
        )
        if not rows:
            return None
        row = rows[0]
        workspace = row["workspace_id"]
        grant = Grant(
            str(row["token_id"]),
            parse_scope(row["scope"]),
            str(workspace) if workspace is not None else None,
            row["expires_at"],
        )
        return row, grant

    async def workspace_of(self, kind: str, object_id: str) -> str | None:
        """The workspace a sandbox or an invitation belongs to (None: no such thing)."""
        table = {"sandbox": "sandboxes", "invitation": "workspace_invitations"}[kind]
        rows = await self._db.query(f"SELECT workspace_id FROM {table} WHERE id = %s", (object_id,))
        return str(rows[0]["workspace_id"]) if rows else None

    async def purge_ended(self) -> None:
        """Forgets tokens revoked or expired more than 30 days ago."""
        await self._db.execute(
            "DELETE FROM api_tokens WHERE coalesce(revoked_at, expires_at)"
            " < now() - interval '30 days'"
        )


async def revoke_all(tx: Transaction, user_id: str) -> None:
    """Every token of the user ends (a disabled account: enabling it again revives none)."""
    await tx.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL",
        (user_id,),
    )
