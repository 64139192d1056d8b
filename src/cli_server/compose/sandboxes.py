"""The sandboxes' lifecycle: the manager, the service that stops them, and the leader's
sweeps (the reconciler, the idle monitor)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from attrs import define
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from cli_server.compose.backends import Backends
from cli_server.compose.domain import Domain
from cli_server.compose.hooks import ServerHooks
from cli_server.compose.replicas import Cluster
from cli_server.compose.shared import Shared
from cli_server.config import ServerConfig
from cli_server.db.pool import Database, DatabaseUnavailable
from cli_server.sandboxes.backend import SandboxBackend
from cli_server.sandboxes.manager import SandboxManager
from cli_server.sandboxes.monitor import IdleMonitor, Reconciler
from cli_server.tunnel.hub import TunnelHub


@define(eq=False)
class SandboxService(Service):
    """Owns the running sandboxes: on shutdown, finish in-flight work, then stop them all."""

    _manager: SandboxManager
    _backend: SandboxBackend
    _tunnels: TunnelHub | None = None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._tunnels is not None:
            self._tunnels.close_all()  # agents reconnect when we are back
        await self._manager.drain()
        await self._backend.close()
        if self._backend.survives_restart:
            return  # its sandboxes keep running; the next start adopts them
        try:
            await self._manager.paused_by_shutdown()
        except DatabaseUnavailable:
            pass  # the reconciler marks them paused at the next start


@define(frozen=True)
class Sandboxes:
    manager: SandboxManager
    service: SandboxService
    # Once per cluster, on the leader (taking the lead runs them at once: the reconciler first).
    reconcile: Callable[[], Awaitable[None]]
    idle_sweep: Callable[[], Awaitable[None]]


def build_sandboxes(
    config: ServerConfig,
    reactor: IReactorTime,
    db: Database,
    backends: Backends,
    domain: Domain,
    tunnels: TunnelHub,
    cluster: Cluster,
    hooks: ServerHooks,
    shared: Shared,
) -> Sandboxes:
    backend = backends.backend
    manager = SandboxManager(
        db,
        backend,
        domain.workspaces,
        config.max_sandboxes,
        shared.urls.home,
        domain.events,
        tunnels=tunnels,  # deleting a local sandbox revokes its agent's tunnel
        host=backends.host,
        replica=cluster.replica.id,  # (its rows mid-transition: left alone by the leader)
        max_per_workspace=config.max_sandboxes_per_workspace,
        max_per_user=config.max_sandboxes_per_user,
        max_stored_per_workspace=config.max_sandboxes_stored_per_workspace,
    )
    hooks.sandbox_exited.subscribe(manager.exited)  # a sandbox whose opencode dies fails
    service = SandboxService(manager, backend, tunnels)
    service.setName("sandboxes")
    leadership = cluster.leadership
    # (leadership is asked again before each sandbox: a deposed leader stops within one)
    reconciler = Reconciler(db, backend, manager, lambda: leadership.leading)
    idle = IdleMonitor(
        db,
        backend,
        manager,
        shared.opencode,
        shared.activity,
        config.idle_timeout,
        reactor,
        lambda: leadership.leading,
    )
    reconcile = leadership.when_leading(reconciler.sweep)
    idle_sweep = leadership.when_leading(idle.sweep)
    return Sandboxes(manager, service, reconcile, idle_sweep)
