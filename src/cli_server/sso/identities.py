"""Which user a provider's sign-in is: an identity already linked, one linked now, or a new
account; and a user's own list of identities.

Email links a new identity to an existing account only when the address is verified on both
sides: the provider says so, and the account's address was itself verified by an earlier
sign-in through a provider. An address merely typed at registration never links: whoever
registered a victim's address first would otherwise share the victim's account.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from attrs import define, field, frozen

from cli_server.db.pool import Database, Row, Transaction
from cli_server.domain.accounts import REGISTRATION_LOCK, User
from cli_server.domain.errors import Conflict, NotFound
from cli_server.plumbing.encoding import iso
from cli_server.sso.claims import REFUSALS, Claims, SignInRefused

# (the rule of web.auth_api's _USERNAME: 3-32 of [A-Za-z0-9_.-], starting with one of [A-Za-z0-9])
USERNAME_MAX = 32
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_.-]+")
_LEADING = re.compile(r"^[^A-Za-z0-9]+")
# Suffixes tried after the bare name before a random one: a bounded number of round trips.
_SUFFIXES_TRIED = 50
_KNOWN_LABELS = {"github": "GitHub", "oidc": "OpenID Connect"}

_USER_RETURNING = "RETURNING id, username, email, created_at, is_admin"


def clean_username(text: str | None) -> str | None:
    """``text`` as a username of the local rule, or None if too little of it is left."""
    if not text:
        return None
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    name = _LEADING.sub("", _NOT_ALLOWED.sub("-", ascii_text.strip()))
    name = name[:USERNAME_MAX].rstrip("-.")
    return name if len(name) >= 3 else None


def username_candidates(claims: Claims) -> Iterator[str]:
    """Names to try for a new account, best first: the provider's username, the email's
    local part, the display name, then each with -2, -3...; finally random ones."""
    local_part = claims.email.split("@", 1)[0] if claims.email else None
    bases = [clean_username(t) for t in (claims.preferred_username, local_part, claims.name)]
    base = next((b for b in bases if b), "user")
    yield base
    for n in range(2, _SUFFIXES_TRIED + 2):
        suffix = f"-{n}"
        yield base[: USERNAME_MAX - len(suffix)] + suffix
    while True:  # (the caller stops; a random 8-hex suffix is as good as free)
        suffix = "-" + uuid.uuid4().hex[:8]
        yield base[: USERNAME_MAX - len(suffix)] + suffix


@frozen
class Identity:
    """One of a user's linked sign-ins, as they may see it."""

    id: str
    provider: str
    label: str
    email: str | None
    created_at: str
    last_used_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "label": self.label,
            "email": self.email,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
        }


def _refused(code: str) -> SignInRefused:
    return SignInRefused(REFUSALS[code], code=code)


@define(eq=False)
class Identities:
    """``SignIns`` for the protocol side, and the account page's list of identities."""

    _db: Database
    _registration: str = "open"  # open, invite or closed: only open lets SSO create accounts
    _labels: Mapping[str, str] = field(factory=dict)  # provider name -> its button's label

    def label(self, provider: str) -> str:
        return self._labels.get(provider) or _KNOWN_LABELS.get(provider, provider)

    async def sign_in(self, claims: Claims, link_to: str | None) -> User:
        async def work(tx: Transaction) -> User:
            known = await self._linked(tx, claims)
            if known is not None:
                return await self._returning(tx, claims, known, link_to)
            # Every identity and account is created under the registration lock: a concurrent
            # sign-in of the same identity, or a registration of the same email or username,
            # waits here and then sees what the other did.
            await tx.execute("SELECT pg_advisory_xact_lock(%s)", (REGISTRATION_LOCK,))
            known = await self._linked(tx, claims)
            if known is not None:
                return await self._returning(tx, claims, known, link_to)
            if link_to is not None:
                return await self._link(tx, claims, link_to)
            return await self._first_sign_in(tx, claims)

        return await self._db.transaction(work)

    async def _linked(self, tx: Transaction, claims: Claims) -> Row | None:
        return await tx.one(
            "SELECT i.id AS identity_id, u.id, u.username, u.email, u.created_at, u.is_admin,"
            " u.disabled_at, u.email_verified_at FROM identities i JOIN users u ON u.id = i.user_id"
            " WHERE i.provider = %s AND i.subject = %s FOR UPDATE",
            (claims.provider, claims.subject),
        )

    async def _returning(
        self, tx: Transaction, claims: Claims, row: Row, link_to: str | None
    ) -> User:
        """An identity seen before: always its own user, never moved to ``link_to``'s."""
        if link_to is not None and str(row["id"]) != link_to:
            raise _refused("identity_taken")
        if row["disabled_at"] is not None:
            raise _refused("account_disabled")
        email = _verified_email(claims)
        await tx.execute(
            "UPDATE identities SET last_used_at = now(), email = %s WHERE id = %s",
            (email, row["identity_id"]),
        )
        await _verify_if_same(tx, str(row["id"]), email)
        return User.from_row(row)

    async def _link(self, tx: Transaction, claims: Claims, user_id: str) -> User:
        """A signed-in user adds this identity from their account page."""
        row = await tx.one(
            "SELECT id, username, email, created_at, is_admin, disabled_at FROM users"
            " WHERE id = %s FOR UPDATE",
            (user_id,),
        )
        if row is None or row["disabled_at"] is not None:
            raise _refused("account_disabled")
        email = _verified_email(claims)
        await _add_identity(tx, user_id, claims, email)
        await _verify_if_same(tx, user_id, email)
        return User.from_row(row)

    async def _first_sign_in(self, tx: Transaction, claims: Claims) -> User:
        email = _verified_email(claims)  # (an unverified one is as good as none)
        if email is not None:
            # Any account holding this address, verified or not: a verified one is this
            # person's; an unverified one is refused rather than shared or duplicated.
            owner = await tx.one(
                "SELECT id, username, email, created_at, is_admin, disabled_at,"
                " email_verified_at FROM users WHERE lower(email) = lower(%s) FOR UPDATE",
                (email,),
            )
            if owner is not None:
                if owner["email_verified_at"] is None:
                    raise _refused("account_exists")
                if owner["disabled_at"] is not None:
                    raise _refused("account_disabled")
                # The account already has its own identity at this provider: a second one
                # with the same address is someone the address passed on to (a recycled
                # mailbox, an address moved between accounts), not this person.
                other = await tx.one(
                    "SELECT 1 FROM identities WHERE user_id = %s AND provider = %s",
                    (owner["id"], claims.provider),
                )
                if other is not None:
                    raise _refused("account_exists")
                await _add_identity(tx, str(owner["id"]), claims, email)
                return User.from_row(owner)
        first = await tx.one("SELECT 1 FROM users LIMIT 1") is None
        if not first and self._registration != "open":
            raise _refused("registration_closed")
        user_id = str(uuid.uuid4())
        row = None
        for tries, username in enumerate(username_candidates(claims)):
            # A taken name (or, under the lock, nothing else) leaves no row; never a 500.
            row = await tx.one(
                "INSERT INTO users (id, username, email, password_hash, is_admin,"
                " email_verified_at) VALUES (%s, %s, %s, NULL, %s,"
                " CASE WHEN %s::text IS NULL THEN NULL ELSE now() END)"
                f" ON CONFLICT DO NOTHING {_USER_RETURNING}",
                (user_id, username, email, first, email),
            )
            if row is not None or tries > _SUFFIXES_TRIED + 5:
                break
        if row is None:
            raise Conflict("no free username was found; try again", code="username_taken")
        await _add_identity(tx, user_id, claims, email)
        return User.from_row(row)

    async def listed(self, user_id: str) -> list[Identity]:
        rows = await self._db.query(
            "SELECT id, provider, email, created_at, last_used_at FROM identities"
            " WHERE user_id = %s ORDER BY created_at, id",
            (user_id,),
        )
        return [
            Identity(
                str(r["id"]),
                r["provider"],
                self.label(r["provider"]),
                r["email"],
                iso(r["created_at"]) or "",
                iso(r["last_used_at"]) or "",
            )
            for r in rows
        ]

    async def unlink(self, user_id: str, identity_id: str, password_counts: bool = True) -> None:
        """Removes one of the user's identities, unless it is their last way in (a password
        counts only while password login is on)."""

        async def work(tx: Transaction) -> None:
            # The user's row lock: two unlinks at once cannot each leave the other as the last.
            user = await tx.one(
                "SELECT password_hash IS NOT NULL AS has_password FROM users"
                " WHERE id = %s FOR UPDATE",
                (user_id,),
            )
            mine = await tx.query("SELECT id FROM identities WHERE user_id = %s", (user_id,))
            if user is None or identity_id not in {str(r["id"]) for r in mine}:
                raise NotFound("no such identity", code="identity_not_found")
            if len(mine) == 1 and not (user["has_password"] and password_counts):
                raise Conflict(
                    "this is your only way to sign in: set a password or link another "
                    "provider first",
                    code="last_sign_in_method",
                )
            await tx.execute("DELETE FROM identities WHERE id = %s", (identity_id,))

        await self._db.transaction(work)


def _verified_email(claims: Claims) -> str | None:
    """The address to keep: only one the provider verified, so it may link later."""
    email = (claims.email or "").strip()
    return email if claims.email_verified and email else None


async def _add_identity(tx: Transaction, user_id: str, claims: Claims, email: str | None) -> None:
    added = await tx.one(
        "INSERT INTO identities (id, user_id, provider, subject, email) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (provider, subject) DO NOTHING RETURNING id",
        (str(uuid.uuid4()), user_id, claims.provider, claims.subject, email),
    )
    if added is None:  # (under the lock this cannot happen; were it to, never move it)
        raise _refused("identity_taken")


async def _verify_if_same(tx: Transaction, user_id: str, email: str | None) -> None:
    """The account's own address is verified once a provider vouches for that very address."""
    if email is not None:
        await tx.execute(
            "UPDATE users SET email_verified_at = now() WHERE id = %s"
            " AND lower(email) = lower(%s) AND email_verified_at IS NULL",
            (user_id, email),
        )
