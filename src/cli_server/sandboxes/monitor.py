"""The idle monitor and the reconciler: periodic sweeps over the sandboxes table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from attrs import define
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cli_server.db.pool import Database
from cli_server.replicas.registry import EXPIRY_SECONDS
from cli_server.sandboxes.activity import ActivityRecorder
from cli_server.sandboxes.backend import BackendError, Endpoint, SandboxBackend, State
from cli_server.sandboxes.manager import SandboxManager
from cli_server.sandboxes.model import Status


def _always() -> bool:
    return True


# Whether another live replica is taking the row through a transition (args: this replica's
# id, the registry's expiry). A row whose worker died (its heartbeat expired) is fair game
# again; this replica's own work is ``manager.busy``'s to tell.
_WORKED_ELSEWHERE = (
    "(worked_by IS NOT NULL AND worked_by IS DISTINCT FROM %s AND EXISTS (SELECT 1 FROM"
    " replicas r WHERE r.id = sandboxes.worked_by"
    " AND r.heartbeat_at > now() - make_interval(secs => %s)))"
)


class AgentStatus(Protocol):
    """Asks a sandbox's opencode whether its agent is working (OpencodeClient in production)."""

    async def busy(self, endpoint: Endpoint, password: str) -> bool: ...


@define(eq=False)
class IdleMonitor:
    """Pauses running cloud sandboxes idle for ``idle_timeout`` — unless the agent is working.

    Idle means no recorded activity (proxied requests, WebSocket traffic, Anthropic calls)
    for the timeout. Before pausing, we ask opencode ``GET /session/status``: a busy session
    counts as activity, so a long task is never cut off. If opencode cannot answer, we do not
    pause on a guess; the reconciler deals with dead processes.

    ``leading`` is asked before each sandbox: a replica that stopped leading mid-sweep stops
    there (another one may be sweeping already).
    """

    _db: Database
    _backend: SandboxBackend
    _manager: SandboxManager
    _opencode: AgentStatus
    _activity: ActivityRecorder
    _idle_timeout: float
    _clock: IReactorTime
    _leading: Callable[[], bool] = _always
    _log = Logger()

    async def sweep(self) -> None:
        # The cutoff comes from our clock, not the database's, so tests can move time.
        cutoff = self._clock.seconds() - self._idle_timeout
        rows = await self._db.query(
            "SELECT id, opencode_password FROM sandboxes WHERE status = 'running'"
            " AND NOT is_local AND last_activity_at < to_timestamp(%s)"
            " AND (host IS NULL OR host = %s)"  # (another host's: out of reach)
            f" AND NOT {_WORKED_ELSEWHERE}",
            (cutoff, self._manager.host, self._manager.replica, EXPIRY_SECONDS),
        )
        for row in rows:
            if not self._leading():
                return
            await self._consider(str(row["id"]), row["opencode_password"])

    async def _consider(self, sandbox_id: str, password: str) -> None:
        if self._manager.busy(sandbox_id):
            return
        observed = await self._backend.describe(sandbox_id)
        if observed.state is State.RUNNING and observed.endpoint is not None:
            try:
                working = await self._opencode.busy(observed.endpoint, password)
            except Exception as e:
                self._log.warn(
                    "sandbox {sandbox_id}: session status unknown ({why}); not pausing",
                    sandbox_id=sandbox_id,
                    why=_why(e),
                )
                return
            if working:
                self._activity.touch(sandbox_id)
                return
        if await self._manager.pause_idle(sandbox_id):
            self._log.info(
                "sandbox {sandbox_id} paused after {idle:.0f}s idle",
                sandbox_id=sandbox_id,
                idle=self._idle_timeout,
            )


@define(eq=False)
class Reconciler:
    """Makes the table and the backend agree, at start and periodically.

    - creating/pausing/resuming with no task of ours behind it (a crash interrupted it):
      running if the backend runs it, else paused (creating: failed, with a readable error);
    - running, but the process is gone: failed with the reason where the backend can tell how
      it ended (a container that died; the process backend reports deaths as they happen,
      ``SandboxBackend.on_exit``), else paused — HOME and the workspace disk are intact;
    - backend state with no row: deleted.

    Rows another live replica is taking through a transition (``worked_by``) are its own.

    ``leading`` is asked before each repair and each removal, as in ``IdleMonitor``.
    """

    _db: Database
    _backend: SandboxBackend
    _manager: SandboxManager
    _leading: Callable[[], bool] = _always
    _log = Logger()

    async def sweep(self) -> None:
        """One pass; if the backend cannot answer (engine down), say so and try next time."""
        try:
            await self._sweep()
        except BackendError as e:
            self._log.warn("reconciler: the backend did not answer: {why}", why=str(e))

    async def _sweep(self) -> None:
        rows = await self._db.query(
            f"SELECT id, status, {_WORKED_ELSEWHERE} AS elsewhere FROM sandboxes"
            " WHERE NOT is_local AND backend = %s"
            " AND (host IS NULL OR host = %s)",  # (another host's: out of reach)
            (self._manager.replica, EXPIRY_SECONDS, self._backend.name, self._manager.host),
        )
        known = set()
        for row in rows:
            sandbox_id, status = str(row["id"]), Status(row["status"])
            known.add(sandbox_id)
            if not self._leading():
                return
            if not row["elsewhere"] and not self._manager.busy(sandbox_id):
                await self._repair(sandbox_id, status)
        for sandbox_id in await self._backend.list_owned():
            if not self._leading():
                return
            if sandbox_id not in known and not self._manager.busy(sandbox_id):
                self._log.info(
                    "removing sandbox {sandbox_id}: it has no row", sandbox_id=sandbox_id
                )
                await self._backend.delete(sandbox_id)

    async def _repair(self, sandbox_id: str, status: Status) -> None:
        if status not in (Status.CREATING, Status.PAUSING, Status.RESUMING, Status.RUNNING):
            return
        observed = await self._backend.describe(sandbox_id)
        alive = observed.state is State.RUNNING
        if status is Status.RUNNING and alive:
            return
        if alive and status is not Status.PAUSING:
            target, error = Status.RUNNING, None
        elif status is Status.RUNNING and observed.exit is not None:
            target, error = Status.FAILED, observed.exit
            await self._stop_quietly(sandbox_id)
        elif status is Status.CREATING:
            target, error = Status.FAILED, "start was interrupted (server restart); resume to retry"
            await self._stop_quietly(sandbox_id)
        else:
            target, error = Status.PAUSED, None
            await self._stop_quietly(sandbox_id)
        changed = await self._manager.force(sandbox_id, status, target, error)
        if changed:
            self._log.info(
                "sandbox {sandbox_id}: {old} -> {new} (reconciled)",
                sandbox_id=sandbox_id,
                old=status.value,
                new=target.value,
            )

    async def _stop_quietly(self, sandbox_id: str) -> None:
        try:
            await self._backend.stop(sandbox_id)
        except BackendError as e:
            self._log.warn(
                "sandbox {sandbox_id}: cleanup failed: {why}", sandbox_id=sandbox_id, why=str(e)
            )


def _why(error: BaseException) -> str:
    return str(error) or type(error).__name__
