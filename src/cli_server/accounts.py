"""Users and login sessions, stored in PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg2.errors
from attrs import define, frozen
from twisted.internet.interfaces import IReactorTime

from cli_server.auth.passwords import Passwords
from cli_server.auth.tokens import new_token, token_hash
from cli_server.db.pool import Database, Row
from cli_server.errors import Conflict
from cli_server.json import iso


@frozen
class User:
    id: str
    username: str
    email: str | None
    created_at: str

    @classmethod
    def from_row(cls, row: Row) -> User:
        return cls(str(row["id"]), row["username"], row["email"], iso(row["created_at"]) or "")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "email": self.email,
            "created_at": self.created_at,
        }


@define(eq=False)
class Accounts:
    _db: Database
    _passwords: Passwords
    _clock: IReactorTime
    _session_lifetime: float

    async def register(self, username: str, password: str, email: str | None) -> User:
        password_hash = await self._passwords.hash(password)
        try:
            rows = await self._db.query(
                "INSERT INTO users (id, username, email, password_hash) VALUES (%s, %s, %s, %s)"
                " RETURNING id, username, email, created_at",
                (str(uuid.uuid4()), username, email, password_hash),
            )
        except psycopg2.errors.UniqueViolation as e:
            constraint = getattr(getattr(e, "diag", None), "constraint_name", "") or ""
            if "email" in constraint:
                raise Conflict(
                    "that email address is already registered", code="email_taken"
                ) from None
            raise Conflict("that username is taken", code="username_taken") from None
        return User.from_row(rows[0])

    async def authenticate(self, username: str, password: str) -> User | None:
        rows = await self._db.query(
            "SELECT id, username, email, created_at, password_hash FROM users"
            " WHERE lower(username) = lower(%s)",
            (username,),
        )
        stored = rows[0]["password_hash"] if rows else None
        ok = await self._passwords.verify(stored, password)
        return User.from_row(rows[0]) if ok and rows else None

    async def open_session(self, user: User) -> str:
        token = new_token()
        await self._db.execute(
            "INSERT INTO sessions (token_hash, user_id, expires_at)"
            " VALUES (%s, %s, now() + make_interval(secs => %s))",
            (token_hash(token), user.id, self._session_lifetime),
        )
        return token

    async def session_user(self, token: str) -> User | None:
        rows = await self._db.query(
            "SELECT u.id, u.username, u.email, u.created_at FROM sessions s"
            " JOIN users u ON u.id = s.user_id"
            " WHERE s.token_hash = %s AND s.expires_at > now()",
            (token_hash(token),),
        )
        return User.from_row(rows[0]) if rows else None

    async def close_session(self, token: str) -> None:
        await self._db.execute("DELETE FROM sessions WHERE token_hash = %s", (token_hash(token),))

    async def purge_expired_sessions(self) -> None:
        await self._db.execute("DELETE FROM sessions WHERE expires_at <= now()")
