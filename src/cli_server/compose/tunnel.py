"""Local agents: the hub their tunnels reach, who holds which tunnel across replicas, and
their registrations (codes and tokens)."""

from __future__ import annotations

from attrs import define
from twisted.internet.interfaces import IReactorTime

from cli_server.compose.domain import Domain
from cli_server.compose.hooks import ServerHooks
from cli_server.compose.replicas import Cluster
from cli_server.compose.shared import Shared
from cli_server.config import ServerConfig
from cli_server.db.pool import Database
from cli_server.proxy.replica_relay import Keyring
from cli_server.replicas.holders import TunnelHolders
from cli_server.tunnel.hub import TunnelHub
from cli_server.tunnel.registrations import LocalAgents


@define(frozen=True)
class Tunnels:
    hub: TunnelHub
    holders: TunnelHolders  # with several replicas: who holds which tunnel
    agents: LocalAgents
    keyring: Keyring  # the internal channel's, shared by the replicas through the database


def build_tunnel(
    config: ServerConfig,
    reactor: IReactorTime,
    db: Database,
    cluster: Cluster,
    hooks: ServerHooks,
    shared: Shared,
    domain: Domain,
) -> Tunnels:
    holders = TunnelHolders(db, cluster.replica.id, reactor.seconds)
    hub = TunnelHub(
        db,
        reactor,
        hooks.tunnel_changed,  # (heard by the proxy, the Anthropic proxy, other replicas)
        shared.activity.touch,
        shared.metrics,
        holders=holders,
    )
    agents = LocalAgents(
        db,
        domain.workspaces,
        config.origin,
        config.origin.rstrip("/") + "/proxy/anthropic/v1",
        on_revoke=hub.revoke,  # (a revoked registration's tunnel closes for good)
        audit=domain.audit,
    )
    return Tunnels(hub, holders, agents, Keyring())
