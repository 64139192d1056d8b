"""The sandbox lifecycle: API operations, background starts, and atomic status transitions.

Every status change is one ``UPDATE ... WHERE status = ANY(...)``: whoever loses a race sees
zero rows and answers 409 with the status that won. Operations on one sandbox are also
serialised in-process with a lock, so the backend never gets a pause and a resume at once.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Protocol

import psycopg2.errors
from attrs import define, field
from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.logger import Logger

from cli_server.auth.tokens import new_token, token_hash
from cli_server.db.pool import Database, Row, Transaction
from cli_server.domain.audit import Note, Target
from cli_server.domain.errors import ApiError, Conflict, NameTaken, NotFound, ServiceUnavailable
from cli_server.domain.events import Events
from cli_server.domain.roles import Role
from cli_server.domain.workspaces import Workspaces
from cli_server.sandboxes.backend import (
    BackendError,
    SandboxBackend,
    SandboxSpec,
    redact,
    secret_forms,
)
from cli_server.sandboxes.model import (
    OCCUPYING,
    PAUSABLE,
    RESUMABLE,
    SANDBOX_COLUMNS,
    Status,
    sandbox_json,
)

_CAPACITY_LOCK = 0x63617061  # "capa": serialises capacity checks across servers


class LocalTunnels(Protocol):
    """What the manager asks of the local agents' tunnels (``tunnel.hub.TunnelHub``; the
    sandboxes layer does not import the tunnel's)."""

    def agent(self, sandbox_id: str) -> dict[str, Any] | None: ...

    async def agents(self, sandbox_ids: list[str]) -> dict[str, dict[str, Any] | None]: ...

    async def shared_ports(self, sandbox_id: str) -> tuple[int, ...]: ...

    def revoke(self, sandbox_id: str, why: str = ...) -> None: ...


class InvalidState(Conflict):
    code = "invalid_state"

    def __init__(self, status: str, wanted: str) -> None:
        super().__init__(f"cannot {wanted} a sandbox that is {status}")
        self.current = status

    def details(self) -> dict[str, Any]:
        return {"sandbox_status": self.current}


@define(eq=False)
class SandboxManager:
    _db: Database
    _backend: SandboxBackend
    _workspaces: Workspaces
    _max_sandboxes: int
    _url_for: Callable[[str], str] | None = None  # (sandbox_id) -> its subdomain's URL
    # Told of each status change and delete (the proxy drops what it cached, ends sessions).
    _events: Events = field(factory=Events)
    tunnels: LocalTunnels | None = None  # deleting a local sandbox revokes its agent's tunnel
    # The host whose backend runs sandboxes on it alone (process): recorded at each start, so
    # a server on another host leaves them alone. None: any replica reaches them.
    host: str | None = None
    # This replica's id (the registry's), recorded on each row it takes into a transition so
    # the leader's reconciler on another replica leaves that row alone. None: one process.
    replica: str | None = None
    # Fair shares of --max-sandboxes: one workspace or one account cannot take every slot
    # (None: no limit but the server's).
    _max_per_workspace: int | None = None
    _max_per_user: int | None = None
    # Sandboxes that exist in one workspace, paused ones too: each keeps a home image on disk.
    _max_stored_per_workspace: int | None = None
    _locks: dict[str, DeferredLock] = field(factory=dict, init=False)
    _tasks: set[Deferred[None]] = field(factory=set, init=False)
    _log = Logger()

    async def count_by_status(self) -> dict[str, int]:
        """How many sandboxes are in each status, every status named (0 when none is)."""
        rows = await self._db.query("SELECT status, count(*) AS n FROM sandboxes GROUP BY status")
        counts = {r["status"]: int(r["n"]) for r in rows}
        return {status.value: counts.get(status.value, 0) for status in Status}

    @property
    def workspaces(self) -> Workspaces:
        return self._workspaces

    # -- reading -------------------------------------------------------------------------------

    def to_json(
        self, row: Row, agents: Mapping[str, dict[str, Any] | None] | None = None
    ) -> dict[str, Any]:
        """``agents``: the local sandboxes' agents wherever their tunnels are held
        (``_agents``); without them, those connected here."""
        shown = sandbox_json(row, self._url_for(str(row["id"])) if self._url_for else None)
        if row["is_local"] and self.tunnels is not None:
            # its connected agent's release, and a warning when it is older than ours
            sandbox_id = str(row["id"])
            shown["agent"] = (
                agents.get(sandbox_id) if agents is not None else self.tunnels.agent(sandbox_id)
            )
        return shown

    async def _agents(self, rows: Iterable[Row]) -> dict[str, dict[str, Any] | None]:
        local = [str(r["id"]) for r in rows if r["is_local"]]
        if not local or self.tunnels is None:
            return {}
        agents: dict[str, dict[str, Any] | None] = await self.tunnels.agents(local)
        return agents

    async def list(self, workspace_id: str, actor_id: str) -> list[dict[str, Any]]:
        await self._workspaces.role_of(workspace_id, actor_id)
        rows = await self._db.query(
            f"SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE workspace_id = %s"
            " ORDER BY created_at, id",
            (workspace_id,),
        )
        agents = await self._agents(rows)
        return [self.to_json(r, agents) for r in rows]

    async def _row(self, sandbox_id: str) -> Row:
        rows = await self._db.query(
            f"SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = %s", (sandbox_id,)
        )
        if not rows:
            raise NotFound("no such sandbox", code="sandbox_not_found")
        return rows[0]

    async def authorized(self, sandbox_id: str, actor_id: str, at_least: Role) -> Row:
        """The sandbox row, if the actor may act on it; 404 for non-members (no oracle)."""
        row = await self._row(sandbox_id)
        try:
            await self._workspaces.require(str(row["workspace_id"]), actor_id, at_least)
        except NotFound:
            raise NotFound("no such sandbox", code="sandbox_not_found") from None
        return row

    async def get(self, sandbox_id: str, actor_id: str) -> dict[str, Any]:
        row = await self.authorized(sandbox_id, actor_id, Role.GUEST)
        return self.to_json(row, await self._agents([row]))

    async def logs(self, sandbox_id: str, actor_id: str) -> dict[str, Any]:
        """The tail of the sandbox's opencode output, for developers and up; its own secrets
        are blanked (the backend blanks what it knew when writing; this, what we know now)."""
        row = await self.authorized(sandbox_id, actor_id, Role.DEVELOPER)
        if row["is_local"]:
            raise Conflict(
                "This sandbox runs on its agent's machine; its opencode log is there, in the"
                " terminal that runs the agent.",
                code="logs_on_agent",
            )
        secret = await self._db.query(
            "SELECT opencode_password FROM sandboxes WHERE id = %s", (sandbox_id,)
        )
        try:
            tail = await self._backend.logs(sandbox_id)
        except BackendError as e:
            raise ServiceUnavailable(
                f"the sandbox's log cannot be read now: {e}", code="logs_unavailable"
            ) from None
        lines = list(tail.lines)
        if secret:
            lines = redact(lines, secret_forms(secret[0]["opencode_password"]))
        return {"lines": lines, "truncated": tail.truncated}

    async def ports(self, sandbox_id: str, actor_id: str) -> dict[str, Any]:
        """The preview ports of a running sandbox, for any member: those listening in a cloud
        sandbox (``listed`` false where its backend cannot see them: users type one), or
        those a local sandbox's laptop shares."""
        row = await self.authorized(sandbox_id, actor_id, Role.GUEST)
        if row["status"] != Status.RUNNING.value:
            raise InvalidState(row["status"], "list the ports of")
        if row["is_local"]:
            # (from the database where another replica holds the tunnel)
            shared = await self.tunnels.shared_ports(sandbox_id) if self.tunnels is not None else ()
            return {"ports": sorted(shared), "listed": True, "shared_only": True}
        try:
            ports = await self._backend.listening_ports(sandbox_id)
        except BackendError as e:
            raise ServiceUnavailable(
                f"the sandbox's ports cannot be read now: {e}", code="ports_unavailable"
            ) from None
        # A backend says whether it could look (docker finds out at its first look).
        return {"ports": ports, "listed": self._backend.lists_ports}

    # -- transitions ---------------------------------------------------------------------------

    async def _transition(
        self, sandbox_id: str, allowed: Iterable[Status], to: Status, **columns: object
    ) -> Row | None:
        """Compare-and-set the status; None if the sandbox was not in ``allowed``."""
        sets = ["status = %s", "updated_at = now()"]
        args: list[object] = [to.value]
        for name, value in columns.items():
            sets.append(f"{name} = now()" if value is _NOW else f"{name} = %s")
            if value is not _NOW:
                args.append(value)
        rows = await self._db.query(
            f"UPDATE sandboxes SET {', '.join(sets)} WHERE id = %s AND status = ANY(%s)"
            f" RETURNING {SANDBOX_COLUMNS}",
            (*args, sandbox_id, [s.value for s in allowed]),
        )
        if rows:
            await self._events.sandbox_status_changed(sandbox_id)
        return rows[0] if rows else None

    async def _occupied(self, tx: Transaction, workspace_id: str, user_id: str) -> None:
        """Refuse a start past any limit. Under one lock for all servers, so concurrent starts
        are counted one after the other and no limit is exceeded."""
        await tx.execute("SELECT pg_advisory_xact_lock(%s)", (_CAPACITY_LOCK,))
        row = await tx.one(
            "SELECT count(*) AS n, count(*) FILTER (WHERE workspace_id = %s) AS in_workspace,"
            " count(*) FILTER (WHERE started_by = %s) AS by_user"
            " FROM sandboxes WHERE NOT is_local AND status = ANY(%s)",
            (workspace_id, user_id, [s.value for s in OCCUPYING]),
        )
        assert row is not None
        if row["n"] >= self._max_sandboxes:
            raise ServiceUnavailable(
                f"this server is at its limit of {self._max_sandboxes} running sandboxes; "
                "pause or delete one, or raise --max-sandboxes",
                code="capacity",
            )
        if self._max_per_workspace is not None and row["in_workspace"] >= self._max_per_workspace:
            raise Conflict(
                f"this workspace already has {row['in_workspace']} running sandboxes, its limit"
                f" of {self._max_per_workspace}; pause or delete one of them first (the server's"
                " operator sets the limit with --max-sandboxes-per-workspace)",
                code="workspace_sandbox_limit",
            )
        if self._max_per_user is not None and row["by_user"] >= self._max_per_user:
            raise Conflict(
                f"you already run {row['by_user']} sandboxes, the limit of"
                f" {self._max_per_user} per person; pause or delete one you started first (the"
                " server's operator sets the limit with --max-sandboxes-per-user)",
                code="user_sandbox_limit",
            )

    async def _stored(self, tx: Transaction, workspace_id: str) -> None:
        """Refuse a new sandbox past the workspace's limit of sandboxes that exist."""
        limit = self._max_stored_per_workspace
        if limit is None:
            return
        row = await tx.one(
            "SELECT count(*) AS n FROM sandboxes WHERE workspace_id = %s AND NOT is_local",
            (workspace_id,),
        )
        assert row is not None
        if row["n"] >= limit:
            raise Conflict(
                f"this workspace already has {row['n']} sandboxes, its limit of {limit}"
                " (paused ones count: they keep their files); delete one first (the server's"
                " operator sets the limit with --max-sandboxes-stored-per-workspace)",
                code="workspace_sandbox_storage_limit",
            )

    # -- operations ----------------------------------------------------------------------------

    async def create(
        self, workspace_id: str, actor_id: str, name: str, note: Note | None = None
    ) -> dict[str, Any]:
        await self._workspaces.require(workspace_id, actor_id, Role.DEVELOPER)
        sandbox_id = str(uuid.uuid4())

        async def work(tx: Transaction) -> Row | None:
            await self._occupied(tx, workspace_id, actor_id)  # (takes the capacity lock)
            await self._stored(tx, workspace_id)
            if note is not None:
                target = Target("sandbox", sandbox_id, name)
                await note.write(tx, workspace_id=workspace_id, target=target)
            return await tx.one(
                "INSERT INTO sandboxes (id, workspace_id, name, status, backend, created_by,"
                " started_by, opencode_password, worked_by)"
                " VALUES (%s, %s, %s, 'creating', %s, %s, %s, %s, %s)"
                f" RETURNING {SANDBOX_COLUMNS}",
                (
                    sandbox_id,
                    workspace_id,
                    name,
                    self._backend.name,
                    actor_id,
                    actor_id,
                    secrets.token_urlsafe(32),
                    self.replica,
                ),
            )

        try:
            row = await self._db.transaction(work)
        except psycopg2.errors.ForeignKeyViolation:
            raise NotFound("no such workspace", code="workspace_not_found") from None
        except psycopg2.errors.UniqueViolation:
            # The unique index decides, so two creates at once cannot both take the name.
            raise NameTaken(f'A sandbox named "{name}" already exists in this workspace.') from None
        assert row is not None
        self._background(sandbox_id, self._start(sandbox_id, Status.CREATING))
        self._log.info(
            "sandbox {sandbox_id} created in {workspace_id}",
            sandbox_id=sandbox_id,
            workspace_id=workspace_id,
        )
        return self.to_json(row)

    async def pause(self, sandbox_id: str, actor_id: str) -> dict[str, Any]:
        row = await self.authorized(sandbox_id, actor_id, Role.DEVELOPER)
        self._cloud_only(row, "pause")
        paused = await self._transition(
            sandbox_id,
            PAUSABLE,
            Status.PAUSING,
            paused_kind="user",
            paused_by=actor_id,
            worked_by=self.replica,
        )
        if paused is None:
            raise InvalidState((await self._row(sandbox_id))["status"], "pause")
        self._background(sandbox_id, self._stop(sandbox_id))
        return self.to_json(paused)

    async def resume(self, sandbox_id: str, actor_id: str) -> dict[str, Any]:
        row = await self.authorized(sandbox_id, actor_id, Role.DEVELOPER)
        self._cloud_only(row, "resume")
        resumed = await self._begin_resume(sandbox_id, actor_id)
        if resumed is None:
            raise InvalidState((await self._row(sandbox_id))["status"], "resume")
        await self._events.sandbox_status_changed(sandbox_id)
        self._background(sandbox_id, self._start(sandbox_id, Status.RESUMING))
        return self.to_json(resumed)

    async def _begin_resume(self, sandbox_id: str, actor_id: str) -> Row | None:
        """From now on the sandbox counts against the resumer's per-user limit."""

        async def work(tx: Transaction) -> Row | None:
            current = await tx.one(
                "SELECT status, workspace_id FROM sandboxes WHERE id = %s", (sandbox_id,)
            )
            if current is None or current["status"] not in RESUMABLE:
                return None
            await self._occupied(tx, str(current["workspace_id"]), actor_id)
            return await tx.one(
                "UPDATE sandboxes SET status = 'resuming', error = NULL, updated_at = now(),"
                " started_by = %s, worked_by = %s WHERE id = %s AND status = ANY(%s)"
                f" RETURNING {SANDBOX_COLUMNS}",
                (actor_id, self.replica, sandbox_id, [s.value for s in RESUMABLE]),
            )

        return await self._db.transaction(work)

    async def delete(self, sandbox_id: str, actor_id: str) -> None:
        row = await self.authorized(sandbox_id, actor_id, Role.DEVELOPER)
        await self._delete(sandbox_id, row["is_local"])

    async def _delete(self, sandbox_id: str, is_local: bool) -> None:
        # Its Anthropic token ends now, not once the backend has taken it down.
        await self._db.execute(
            "UPDATE sandboxes SET proxy_token_hash = NULL WHERE id = %s", (sandbox_id,)
        )
        async with self._lock(sandbox_id):
            if not is_local:
                await self._backend.delete(sandbox_id)
            await self._db.execute("DELETE FROM sandboxes WHERE id = %s", (sandbox_id,))
            if is_local and self.tunnels is not None:
                self.tunnels.revoke(sandbox_id)
            await self._events.sandbox_status_changed(sandbox_id)
            await self._events.sandbox_deleted(sandbox_id)
        self._log.info("sandbox {sandbox_id} deleted", sandbox_id=sandbox_id)

    async def delete_workspace(
        self, workspace_id: str, actor_id: str, note: Note | None = None
    ) -> None:
        """Sandboxes first (their processes stop), then the row, then the shared disk."""
        await self._workspaces.require(workspace_id, actor_id, Role.OWNER)
        rows = await self._db.query(
            "SELECT id, is_local FROM sandboxes WHERE workspace_id = %s", (workspace_id,)
        )
        for row in rows:
            await self._delete(str(row["id"]), row["is_local"])
        await self._workspaces.delete(workspace_id, actor_id, note)
        await self._backend.delete_workspace(workspace_id)

    def _cloud_only(self, row: Row, verb: str) -> None:
        if row["is_local"]:
            raise InvalidState("a local sandbox (it follows its agent)", verb)

    # -- background work -----------------------------------------------------------------------

    def _lock(self, sandbox_id: str) -> DeferredLock:
        return self._locks.setdefault(sandbox_id, DeferredLock())

    def busy(self, sandbox_id: str) -> bool:
        """Whether this process is working on the sandbox (the reconciler leaves it alone)."""
        lock = self._locks.get(sandbox_id)
        return lock is not None and lock.locked

    def _background(self, sandbox_id: str, work: Awaitable[object]) -> None:
        async def locked() -> None:
            async with self._lock(sandbox_id):
                await work
            lock = self._locks.get(sandbox_id)
            if lock is not None and not lock.locked and not lock.waiting:
                del self._locks[sandbox_id]

        d = Deferred.fromCoroutine(locked())
        self._tasks.add(d)
        d.addErrback(
            lambda f: self._log.failure(
                "sandbox {sandbox_id} task failed", f, sandbox_id=sandbox_id
            )
        )
        d.addBoth(lambda _: self._tasks.discard(d))

    async def _start(self, sandbox_id: str, expected: Status) -> None:
        rows = await self._db.query(
            "SELECT workspace_id, opencode_password FROM sandboxes WHERE id = %s AND status = %s",
            (sandbox_id, expected.value),
        )
        if not rows:
            return  # deleted or moved on meanwhile
        token = new_token()
        await self._db.execute(
            "UPDATE sandboxes SET proxy_token_hash = %s, host = %s WHERE id = %s",
            (token_hash(token), self.host, sandbox_id),
        )
        spec = SandboxSpec(
            sandbox_id, str(rows[0]["workspace_id"]), rows[0]["opencode_password"], token
        )
        try:
            await self._backend.start(spec)
        except Exception as e:
            message = str(e) if isinstance(e, BackendError | ApiError) else "internal error"
            if not isinstance(e, BackendError):
                self._log.failure("starting sandbox {sandbox_id}", sandbox_id=sandbox_id)
            self._log.warn(
                "sandbox {sandbox_id} failed to start: {error}",
                sandbox_id=sandbox_id,
                error=message,
            )
            await self._cleanup(sandbox_id)
            await self._transition(
                sandbox_id, [expected], Status.FAILED, error=message[:1000], worked_by=None
            )
            return
        running = await self._transition(
            sandbox_id,
            [expected],
            Status.RUNNING,
            error=None,
            last_activity_at=_NOW,
            paused_at=None,
            started_at=_NOW,
            paused_kind=None,
            paused_by=None,
            worked_by=None,
        )
        if running is None:  # deleted while starting
            await self._cleanup(sandbox_id)

    async def _cleanup(self, sandbox_id: str) -> None:
        """Best-effort stop after a failure; the reconciler retries what this cannot do."""
        try:
            await self._backend.stop(sandbox_id)
        except BackendError as e:
            self._log.warn(
                "sandbox {sandbox_id}: cleanup failed: {why}", sandbox_id=sandbox_id, why=str(e)
            )

    async def _stop(self, sandbox_id: str) -> None:
        try:
            await self._backend.stop(sandbox_id)
        except Exception as e:
            self._log.failure("pausing sandbox {sandbox_id}", sandbox_id=sandbox_id)
            await self._transition(
                sandbox_id,
                [Status.PAUSING],
                Status.FAILED,
                error=f"pause failed: {e}"[:1000],
                worked_by=None,
            )
            return
        await self._transition(
            sandbox_id, [Status.PAUSING], Status.PAUSED, paused_at=_NOW, worked_by=None
        )

    def exited(self, sandbox_id: str, why: str) -> None:
        """The backend saw a running sandbox's opencode end by itself (the backend's
        ``on_exit``): failed at once, with the reason; Resume starts it again."""
        self._background(sandbox_id, self._exited(sandbox_id, why))

    async def _exited(self, sandbox_id: str, why: str) -> None:
        # Only from running: a pause, resume or delete under way made (or handles) that exit.
        failed = await self._transition(
            sandbox_id, [Status.RUNNING], Status.FAILED, error=why[:1000]
        )
        if failed is not None:
            self._log.warn("sandbox {sandbox_id} failed: {why}", sandbox_id=sandbox_id, why=why)
            await self._cleanup(sandbox_id)  # what outlives opencode: network, door, cgroups

    async def pause_idle(self, sandbox_id: str) -> bool:
        """The idle monitor's pause: only from running; True if it paused."""
        pausing = await self._transition(
            sandbox_id, PAUSABLE, Status.PAUSING, paused_kind="idle", worked_by=self.replica
        )
        if pausing is None:
            return False
        self._background(sandbox_id, self._stop(sandbox_id))
        return True

    async def force(self, sandbox_id: str, was: Status, to: Status, error: str | None) -> bool:
        """The reconciler's transition: compare-and-set from exactly ``was``; whoever worked
        on the sandbox before is done with it."""
        columns: dict[str, object] = {"error": error, "worked_by": None}
        if to is Status.PAUSED:
            columns.update(paused_at=_NOW, paused_kind=None, paused_by=None)
        elif to is Status.RUNNING:
            columns["started_at"] = _NOW
        return await self._transition(sandbox_id, [was], to, **columns) is not None

    async def paused_by_shutdown(self) -> None:
        """An orderly server stop paused every cloud sandbox; say so in the table."""
        await self._db.execute(
            "UPDATE sandboxes SET status = 'paused', paused_at = now(), updated_at = now(),"
            " paused_kind = NULL, paused_by = NULL"
            " WHERE status = 'running' AND NOT is_local AND backend = %s"
            " AND (host IS NULL OR host = %s)",
            (self._backend.name, self.host),
        )

    async def drain(self) -> None:
        """Wait for background work (server shutdown)."""
        if self._tasks:
            await gatherResults(list(self._tasks), consumeErrors=True)


class _Now:
    """Marker for "set this column to now()" in _transition."""


_NOW: Final = _Now()
