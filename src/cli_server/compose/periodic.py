"""What runs every so often: housekeeping, the leader's sweeps, metrics, the election, the
replica's heartbeat and its tunnels' holders. Each waits for the database to be ready."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from attrs import define
from twisted.internet.interfaces import IReactorTime

from cli_server.compose.domain import Domain
from cli_server.compose.replicas import Cluster
from cli_server.compose.sandboxes import Sandboxes
from cli_server.compose.shared import Shared
from cli_server.compose.store import Readiness, Store
from cli_server.compose.tunnel import Tunnels
from cli_server.config import ServerConfig
from cli_server.plumbing.services import PeriodicService
from cli_server.proxy.access import SandboxAccess
from cli_server.replicas.registry import HEARTBEAT_SECONDS
from cli_server.sandboxes.activity import ActivityRecorder
from cli_server.tunnel.registrations import LocalAgents

Job = Callable[[], Awaitable[None]]


@define(eq=False)
class WhenReady:
    """``job``, skipped while the database is not ready."""

    _ready: Readiness
    _job: Job

    async def __call__(self) -> None:
        if self._ready():
            await self._job()


@define(eq=False)
class Housekeeping:
    """Prunes what expires: rate-limit counts, sessions, tokens, invitations, old audit rows."""

    _config: ServerConfig
    _ready: Readiness
    _activity: ActivityRecorder
    _domain: Domain
    _access: SandboxAccess
    _agents: LocalAgents

    async def __call__(self) -> None:
        self._activity.prune()
        if not self._ready():
            return
        domain = self._domain
        await domain.logins.prune()
        await domain.registrations.prune()
        if domain.sso_providers.pending is not None:
            await domain.sso_providers.pending.prune()
        await domain.accounts.purge_expired_sessions()
        await domain.api_tokens.purge_ended()
        await self._access.purge_expired()
        await self._agents.purge_expired()
        await domain.workspaces.purge_expired_invitations()
        await domain.audit.purge(self._config.audit_retention_days)


def build_periodic(
    config: ServerConfig,
    reactor: IReactorTime,
    store: Store,
    domain: Domain,
    access: SandboxAccess,
    tunnels: Tunnels,
    sandboxes: Sandboxes,
    shared: Shared,
    cluster: Cluster,
) -> list[PeriodicService]:
    ready, metrics, hub = store.readiness, shared.metrics, tunnels.hub
    housekeeping = Housekeeping(config, ready, shared.activity, domain, access, tunnels.agents)
    idle_period = min(60.0, config.idle_timeout / 4)

    async def refresh_metrics() -> None:
        metrics.sandbox_counts(await sandboxes.manager.count_by_status())

    jobs: list[tuple[str, float, Job]] = [
        ("housekeeping", 600.0, housekeeping),
        ("reconciler", 30.0, WhenReady(ready, sandboxes.reconcile)),
        ("idle-monitor", idle_period, WhenReady(ready, sandboxes.idle_sweep)),
        ("metrics", 15.0, WhenReady(ready, refresh_metrics)),
        # (a dead leader's successor takes over within one idle-monitor period)
        ("leader-election", min(5.0, idle_period), WhenReady(ready, cluster.leadership.attempt)),
        ("replica-heartbeat", HEARTBEAT_SECONDS, WhenReady(ready, cluster.registry.heartbeat)),
        ("tunnel-holders", HEARTBEAT_SECONDS, WhenReady(ready, hub.sweep_holders)),
    ]
    services = []
    for name, interval, job in jobs:
        periodic = PeriodicService(reactor, interval, job, name)
        periodic.setName(name)
        services.append(periodic)
    return services
