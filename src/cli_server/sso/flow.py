"""A sign-in between its start and the provider's callback.

``login`` makes a random ``state``, a PKCE verifier and a ``nonce``; they stay on the server,
keyed by a random id the browser holds in a short-lived HttpOnly cookie. The callback is
accepted only with that cookie *and* the matching ``state``, once: the entry is taken out on
the first callback, so a replayed or swapped cookie, a state from another browser or an
expired sign-in all find nothing. Entries live in PostgreSQL, so the callback may reach
another replica than the login; the table holds a SHA-256 of the cookie, never the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from attrs import define, evolve, frozen
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from twisted.internet.interfaces import IReactorTime

from cli_server.db.pool import Database, Row, Transaction

LIFETIME = 600.0  # seconds from the redirect to the provider until its callback


@frozen
class Pending:
    provider: str
    state: str
    verifier: str  # PKCE code_verifier; the provider sees only its S256 challenge
    nonce: str
    return_to: str
    link_to: str | None  # a signed-in user's id: link the identity to them
    expires: float

    @property
    def challenge(self) -> str:
        challenge: str = create_s256_code_challenge(self.verifier)
        return challenge


def new_pending(provider: str, return_to: str, link_to: str | None, expires: float) -> Pending:
    return Pending(
        provider,
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(48),  # 64 characters: within PKCE's 43..128
        secrets.token_urlsafe(32),
        return_to,
        link_to,
        expires,
    )


def cookie_hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()


# Sign-ins begin one at a time across replicas (a short transaction each), so a flood
# cannot pass the caps.
_BEGIN_LOCK = 0x63_6C_69_73_73_6F  # "clisso"
_INSERT = """
INSERT INTO pending_sign_ins
    (cookie_hash, provider, state, verifier, nonce, return_to, link_to, address, expires_at)
SELECT %(key)s, %(provider)s, %(state)s, %(verifier)s, %(nonce)s, %(return_to)s, %(link_to)s,
       %(address)s, to_timestamp(%(expires)s)
WHERE (SELECT count(*) FROM pending_sign_ins WHERE expires_at > to_timestamp(%(now)s))
          < %(most)s
  AND (SELECT count(*) FROM pending_sign_ins
       WHERE address = %(address)s AND expires_at > to_timestamp(%(now)s)) < %(per_address)s
RETURNING extract(epoch FROM expires_at) AS expires
"""
_PRUNE = "DELETE FROM pending_sign_ins WHERE expires_at <= to_timestamp(%s)"
_FORGET = "DELETE FROM pending_sign_ins WHERE cookie_hash = %s"


@define(eq=False)
class PendingSignIns:
    """Sign-ins under way, shared by every replica through the database."""

    _db: Database
    _clock: IReactorTime
    lifetime: float = LIFETIME
    most: int = 10_000  # in all: past it new sign-ins wait, none under way is evicted
    per_address: int = 20  # from one client address: a flood cannot fill the table

    async def begin(
        self, provider: str, return_to: str, link_to: str | None, address: str = ""
    ) -> tuple[str, Pending] | None:
        """The cookie value and what it stands for; None while too many are under way (in
        all, or from ``address``)."""
        now = self._clock.seconds()
        pending = new_pending(provider, return_to, link_to, now + self.lifetime)
        cookie = secrets.token_urlsafe(32)
        args = {
            "key": cookie_hash(cookie),
            "provider": provider,
            "state": pending.state,
            "verifier": pending.verifier,
            "nonce": pending.nonce,
            "return_to": return_to,
            "link_to": link_to,
            "address": address,
            "expires": pending.expires,
            "now": now,
            "most": self.most,
            "per_address": self.per_address,
        }

        async def insert(tx: Transaction) -> Row | None:
            await tx.execute("SELECT pg_advisory_xact_lock(%s)", (_BEGIN_LOCK,))
            await tx.execute(_PRUNE, (now,))
            return await tx.one(_INSERT, args)

        row = await self._db.transaction(insert)
        if row is None:
            return None
        # (the expiry to the microsecond, as PostgreSQL keeps it)
        return cookie, evolve(pending, expires=float(row["expires"]))

    async def finish(self, cookie: str | None, provider: str, state: str | None) -> Pending | None:
        """The sign-in this callback completes, or None. A completed or expired one cannot come
        again; a callback with the wrong state leaves it alone (else any page could cancel a
        sign-in under way by sending the browser to the callback with a made-up state)."""
        if not cookie or state is None:
            return None
        key = cookie_hash(cookie)
        now = self._clock.seconds()

        async def take(tx: Transaction) -> Pending | None:
            # FOR UPDATE: of two callbacks with one cookie, the second waits, then finds nothing.
            row = await tx.one(
                "SELECT provider, state, verifier, nonce, return_to, link_to,"
                " extract(epoch FROM expires_at) AS expires,"
                " expires_at <= to_timestamp(%s) AS expired"
                " FROM pending_sign_ins WHERE cookie_hash = %s FOR UPDATE",
                (now, key),
            )
            if row is None:
                return None
            if row["expired"]:
                await tx.execute(_FORGET, (key,))
                return None
            if row["provider"] != provider or not hmac.compare_digest(
                str(row["state"]).encode(), state.encode("utf-8", "replace")
            ):
                return None
            await tx.execute(_FORGET, (key,))
            return _pending(row)

        return await self._db.transaction(take)

    async def cancel(self, cookie: str) -> None:
        await self._db.execute(_FORGET, (cookie_hash(cookie),))

    async def prune(self) -> None:
        await self._db.execute(_PRUNE, (self._clock.seconds(),))


def _pending(row: Row) -> Pending:
    return Pending(
        row["provider"],
        row["state"],
        row["verifier"],
        row["nonce"],
        row["return_to"],
        row["link_to"],
        float(row["expires"]),
    )


def safe_return_to(value: str | None, default: str = "/") -> str:
    """A path on this site to land on after signing in; anything else is ``default``.

    Only a single leading ``/``: ``//host`` and ``/\\host`` are other sites to browsers, and so
    is anything with a scheme. Control characters and backslashes are refused outright.
    """
    if not value or len(value) > 2000 or not value.startswith("/"):
        return default
    if value.startswith("//") or "\\" in value:
        return default
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return default
    return value
