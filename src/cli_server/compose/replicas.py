"""This replica among the others: its row in the registry, the leadership, the event bus."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable

from attrs import define
from twisted.internet.interfaces import IReactorTime

from cli_server.compose.backends import labelled_instance
from cli_server.compose.store import Store
from cli_server.config import ServerConfig
from cli_server.db.notify import ListeningConnection
from cli_server.domain.events import Events
from cli_server.replicas.events import CHANNEL, EventTable, ReplicaEvents
from cli_server.replicas.leader import Leadership
from cli_server.replicas.registry import Registry, RegistryService, Replica
from cli_server.sandboxes.backend import SandboxBackend


@define(frozen=True)
class Cluster:
    replica: Replica
    registry: Registry
    joining: RegistryService  # leaves the registry on a clean stop
    leadership: Leadership
    # What another replica fired reaches this one's subscribers through ``local``.
    local: Events
    bus: ReplicaEvents | None  # None: embedded PostgreSQL serves one replica, nobody to tell


def build_replicas(
    config: ServerConfig,
    reactor: IReactorTime,
    store: Store,
    injected: SandboxBackend | None,
    forget_everything: Callable[[], None],
) -> Cluster:
    backend_name = config.backend if injected is None else "injected"  # (tests': never per host)
    replica = Replica(
        uuid.uuid4().hex[:12],
        socket.gethostname(),
        str(config.data_dir),
        config.advertise_url,
        backend_name,
        store.embedded is not None,
        labelled_instance(config, injected),
    )
    registry = Registry(store.db, replica)
    joining = RegistryService(registry, reactor)
    joining.setName("replica-registry")
    leadership = Leadership(reactor, store.db.dedicated, f"{replica.id}@{replica.hostname}")
    leadership.setName("leadership")
    local = Events()
    bus = None
    if store.embedded is None:
        bus = ReplicaEvents(
            reactor,
            EventTable(store.db, reactor),
            ListeningConnection(reactor, store.dsn, CHANNEL),
            local,
            begin_at_start=False,
            # (events missed for good: everything cached is taken as changed)
            forget_everything=forget_everything,
        )
        bus.setName("replica-events")
    return Cluster(replica, registry, joining, leadership, local, bus)
