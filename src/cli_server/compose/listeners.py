"""Who hears the domain's events (``events.Listener``): the proxy's sessions and streams,
local agents' tunnels, and the Anthropic proxy's calls; ``subscribe`` gives them to the
domain's fan-out and to what other replicas fired."""

from __future__ import annotations

from collections.abc import Callable

from attrs import define

from cli_server.anthropic.proxy import AnthropicProxy
from cli_server.compose.hooks import ServerHooks
from cli_server.compose.replicas import Cluster
from cli_server.compose.tunnel import Tunnels
from cli_server.domain.events import Events, Listener
from cli_server.proxy.access import SandboxAccess
from cli_server.replicas.events import ReplicaEvents
from cli_server.tunnel.hub import TunnelHub
from cli_server.tunnel.registrations import LocalAgents


@define(eq=False)
class ProxyListener:
    """Sandbox sessions end and their open connections are cut; a changed sandbox's cached
    status (and, through ``forget``, what else the proxy keeps about it) is dropped."""

    _access: SandboxAccess
    _forget: Callable[[str], None] = lambda sandbox_id: None

    async def user_revoked(self, user_id: str) -> None:
        await self._access.revoke_user(user_id)

    async def user_disabled(self, user_id: str) -> None:
        await self._access.revoke_user(user_id)

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        await self._access.revoke_member(user_id, workspace_id)

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        self._access.revoke_sandbox(sandbox_id)

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        self._access.status_changed(sandbox_id)
        self._forget(sandbox_id)


@define(eq=False)
class AgentsListener:
    """A local agent whose registrant may no longer run it stops (its tunnel closes)."""

    _agents: LocalAgents

    async def user_revoked(self, user_id: str) -> None:
        pass  # (the account may still run its agents: that needs no session)

    async def user_disabled(self, user_id: str) -> None:
        await self._agents.account_disabled(user_id)

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        await self._agents.member_changed(user_id, workspace_id)

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        pass  # (the manager closes a deleted local sandbox's tunnel itself)

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        pass


@define(eq=False)
class AnthropicListener:
    """A sandbox that stopped or went away: its Anthropic calls under way are cut."""

    _anthropic: AnthropicProxy

    async def user_revoked(self, user_id: str) -> None:
        pass

    async def user_disabled(self, user_id: str) -> None:
        pass  # (its agents' tokens are cleared by ``AgentsListener``)

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        pass

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        pass  # (a delete is also a status change)

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        self._anthropic.status_changed(sandbox_id)


@define(eq=False)
class DeletedTunnels:
    """A local sandbox deleted on another replica: its tunnel, if it is held here, closes (on
    the replica that deleted it, the manager closes it itself). One whose status another
    replica changed may have a newer tunnel there: ours, then, closes as replaced."""

    _tunnels: TunnelHub

    async def user_revoked(self, user_id: str) -> None:
        pass

    async def user_disabled(self, user_id: str) -> None:
        pass

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        pass

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        if self._tunnels.session(sandbox_id) is not None:
            self._tunnels.revoke(sandbox_id)

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        await self._tunnels.check_holder(sandbox_id)


def subscribe(
    events: Events,
    cluster: Cluster,
    access: SandboxAccess,
    forget: Callable[[str], None],
    tunnels: Tunnels,
    anthropic: AnthropicProxy,
) -> None:
    """The domain's events (``events``) and those other replicas fired (``cluster.local``)
    reach the same subscribers, in this order; this replica's reach the others last (the
    cluster's bus)."""
    local, bus = cluster.local, cluster.bus
    subscribers: list[Listener] = [
        ProxyListener(access, forget),
        AgentsListener(tunnels.agents),
        AnthropicListener(anthropic),
    ]
    for subscriber in subscribers:
        events.subscribe(subscriber)
        local.subscribe(subscriber)
    local.subscribe(DeletedTunnels(tunnels.hub))
    if bus is not None:
        events.subscribe(bus)  # (last: this replica has heard it before the others do)


@define(eq=False)
class TellOthers:
    """A tunnel that came or went here: the other replicas drop what they cached of it."""

    _bus: ReplicaEvents

    def __call__(self, sandbox_id: str) -> None:
        self._bus.tell_others("sandbox_status_changed", sandbox_id=sandbox_id)


def hear_tunnels(
    hooks: ServerHooks,
    access: SandboxAccess,
    anthropic: AnthropicProxy,
    bus: ReplicaEvents | None,
) -> None:
    """A local agent's tunnel came or went (``hooks.tunnel_changed``): the proxy's cached
    status, the Anthropic proxy's, then the other replicas'."""
    hooks.tunnel_changed.subscribe(access.status_changed)
    hooks.tunnel_changed.subscribe(anthropic.status_changed)
    if bus is not None:
        hooks.tunnel_changed.subscribe(TellOthers(bus))
