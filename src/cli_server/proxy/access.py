"""Who may use a sandbox's subdomain: one-time tickets and per-(user, sandbox) sessions.

The main session never leaves the main origin. ``POST /api/sandboxes/{id}/open`` mints a
ticket (single use, 60 s, bound to the user, the sandbox and the port: None for opencode's
address, a number for a preview's); that origin redeems it for a session of its own, kept in
a host-only cookie, which no other origin (another port, opencode's) accepts. Only hashes of
tickets and sessions are stored. Sessions die with logout, removal from the workspace, a role
change and the sandbox.

Every proxied request needs the caller's role and the sandbox's status and password; a short
cache (``ttl`` seconds, dropped at once on revocation in this process) keeps the database
out of the hot path.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from cli_server.auth.tokens import new_token, token_hash
from cli_server.db.pool import Database
from cli_server.domain.roles import Role

TICKET_SECONDS = 60


@frozen(repr=False)
class Access:
    """A browser session's view of its sandbox, as of ``fetched_at``."""

    user_id: str
    sandbox_id: str
    workspace_id: str
    role: Role
    status: str
    is_local: bool
    password: str
    fetched_at: float
    revocations: int = 0  # SandboxAccess.revocations when it was read (see live.py)
    error: str | None = None  # why a failed sandbox failed
    port: int | None = None  # the preview port the session is for; None: opencode's

    def serves(self, sandbox_id: str, port: int | None) -> bool:
        """Whether the session is one of this origin's (sandbox and port)."""
        return self.sandbox_id == sandbox_id and self.port == port

    def __repr__(self) -> str:  # the password stays out of logs
        return f"Access(user_id={self.user_id!r}, sandbox_id={self.sandbox_id!r})"


@define(eq=False)
class SandboxAccess:
    _db: Database
    _clock: IReactorTime
    _session_lifetime: float
    _ttl: float = 2.0
    _cache: dict[bytes, Access] = field(factory=dict, init=False)
    # Counts forget() calls: what was cached from this object before a change is stale.
    generation: int = field(default=0, init=False)
    # Ends open connections (terminals, event streams) whose session was revoked.
    cut_streams: Callable[..., None] | None = field(default=None, kw_only=True)
    # Counts revocations: a connection listed with a session read before one is refused.
    revocations: int = field(default=0, init=False)
    # Sessions being read again ahead of time (``refresh``), and who waits for each.
    _refreshing: dict[bytes, list[Deferred[None]]] = field(factory=dict, init=False)

    async def mint_ticket(self, user_id: str, sandbox_id: str, port: int | None = None) -> str:
        ticket = new_token()
        await self._db.execute(
            "INSERT INTO sandbox_tickets (ticket_hash, user_id, sandbox_id, port, expires_at)"
            " VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))",
            (token_hash(ticket), user_id, sandbox_id, port, TICKET_SECONDS),
        )
        return ticket

    async def redeem(self, ticket: str, sandbox_id: str, port: int | None = None) -> str | None:
        """A new session token for the ticket's user, if the ticket is fresh, unused and for
        this sandbox and port. Redeeming burns the ticket even when the answer is no."""
        rows = await self._db.query(
            "UPDATE sandbox_tickets SET used_at = now() WHERE ticket_hash = %s AND used_at IS"
            " NULL RETURNING user_id, sandbox_id, port, expires_at > now() AS fresh",
            (token_hash(ticket),),
        )
        if not rows or not rows[0]["fresh"] or str(rows[0]["sandbox_id"]) != sandbox_id:
            return None
        if rows[0]["port"] != port:
            return None
        token = new_token()
        # (only for an account still enabled: a ticket minted just before a disable is void)
        opened = await self._db.query(
            "INSERT INTO sandbox_sessions (token_hash, user_id, sandbox_id, port, expires_at)"
            " SELECT %s, u.id, %s, %s, now() + make_interval(secs => %s) FROM users u"
            " WHERE u.id = %s AND u.disabled_at IS NULL RETURNING user_id",
            (token_hash(token), sandbox_id, port, self._session_lifetime, str(rows[0]["user_id"])),
        )
        return token if opened else None

    def fresh_until(self, access: Access) -> float:
        """When the cache stops trusting ``access``."""
        return access.fetched_at + self._ttl

    def cached(self, token: str, sandbox_id: str, port: int | None = None) -> Access | None:
        """The session's fresh cached answer for this sandbox and port, if there is one (else
        ask ``lookup``)."""
        cached = self._fresh(token_hash(token))
        return cached if cached is not None and cached.serves(sandbox_id, port) else None

    def lookup(
        self, token: str, sandbox_id: str, port: int | None = None
    ) -> Deferred[Access | None]:
        """The session, if it is one of this sandbox's and port's (None: opencode's address).
        Fires at once (no database) while the session's cached answer is fresh."""
        key = token_hash(token)
        cached = self._fresh(key)
        if cached is not None:
            return succeed(cached if cached.serves(sandbox_id, port) else None)
        return Deferred.fromCoroutine(self._fetch(key, sandbox_id, port))

    def refresh(self, token: str, sandbox_id: str, port: int | None = None) -> Deferred[None]:
        """Reads the session again now, before its cached answer runs out (so that what
        was granted on it can be renewed without a gap); one read at a time per session.
        Fires when the cache has the new answer (``cached``), or the read failed (the next
        ``lookup`` tries again)."""
        key = token_hash(token)
        mine: Deferred[None] = Deferred()
        waiting = self._refreshing.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._refreshing[key] = [mine]

        def done(_: object) -> None:
            for waiter in self._refreshing.pop(key, []):
                waiter.callback(None)

        Deferred.fromCoroutine(self._fetch(key, sandbox_id, port)).addBoth(done)
        return mine

    def _fresh(self, key: bytes) -> Access | None:
        # (a clock stepped backwards makes an answer stale, never fresh for longer)
        cached = self._cache.get(key)
        if cached is not None and 0 <= self._clock.seconds() - cached.fetched_at < self._ttl:
            return cached
        return None

    async def _fetch(self, key: bytes, sandbox_id: str, port: int | None) -> Access | None:
        now, generation, revocations = self._clock.seconds(), self.generation, self.revocations
        rows = await self._db.query(
            "SELECT ss.user_id, s.id AS sandbox_id, s.workspace_id, m.role, s.status,"
            " s.is_local, s.opencode_password, s.error, ss.port FROM sandbox_sessions ss"
            " JOIN sandboxes s ON s.id = ss.sandbox_id"
            " JOIN workspace_members m ON m.workspace_id = s.workspace_id"
            "  AND m.user_id = ss.user_id"
            " JOIN users u ON u.id = ss.user_id AND u.disabled_at IS NULL"
            " WHERE ss.token_hash = %s AND ss.expires_at > now()",
            (key,),
        )
        if not rows:
            self._cache.pop(key, None)
            return None
        row = rows[0]
        access = Access(
            str(row["user_id"]),
            str(row["sandbox_id"]),
            str(row["workspace_id"]),
            Role.parse(row["role"]),
            row["status"],
            row["is_local"],
            row["opencode_password"],
            now,
            revocations,
            row.get("error"),
            row.get("port"),
        )
        if generation == self.generation:  # (a revocation while we asked: don't keep this)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = access
        return access if access.serves(sandbox_id, port) else None

    def forget(self, **match: object) -> None:
        """Drop cached sessions whose fields equal ``match`` (e.g. user_id=...)."""
        self.generation += 1
        for key, access in list(self._cache.items()):
            if all(getattr(access, name) == value for name, value in match.items()):
                del self._cache[key]

    async def revoke_user(self, user_id: str) -> None:
        """Logout, a password change, a revoked session, a disabled account: every sandbox
        session of the user ends, and so do the Open links not yet used (a thief holding one
        would otherwise outlive the password change)."""
        await self._db.execute("DELETE FROM sandbox_sessions WHERE user_id = %s", (user_id,))
        await self._db.execute("DELETE FROM sandbox_tickets WHERE user_id = %s", (user_id,))
        self.forget(user_id=user_id)
        self._cut(user_id=user_id)

    async def revoke_member(self, user_id: str, workspace_id: str) -> None:
        """Removal from a workspace or a role change: that workspace's sandbox sessions end."""
        await self._db.execute(
            "DELETE FROM sandbox_sessions WHERE user_id = %s AND sandbox_id IN"
            " (SELECT id FROM sandboxes WHERE workspace_id = %s)",
            (user_id, workspace_id),
        )
        self.forget(user_id=user_id, workspace_id=workspace_id)
        self._cut(user_id=user_id, workspace_id=workspace_id)

    def revoke_sandbox(self, sandbox_id: str) -> None:
        """The sandbox is gone (its rows cascade); forget what we cached."""
        self.forget(sandbox_id=sandbox_id)
        self._cut(sandbox_id=sandbox_id)

    def revoke_everything(self) -> None:
        """Revocations may have been missed: nothing cached is trusted, every connection is
        cut (each browser reconnects and its session is read again)."""
        self.forget()
        self._cut()

    def _cut(self, **match: str) -> None:
        self.revocations += 1
        if self.cut_streams is not None:
            self.cut_streams(**match)

    def status_changed(self, sandbox_id: str) -> None:
        """A pause or resume here: the next request re-reads the status."""
        self.forget(sandbox_id=sandbox_id)

    async def purge_expired(self) -> None:
        await self._db.execute("DELETE FROM sandbox_tickets WHERE expires_at < now()")
        await self._db.execute("DELETE FROM sandbox_sessions WHERE expires_at < now()")
