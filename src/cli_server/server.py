"""Wiring for `twistd cli-server`: builds the service tree from a ServerConfig, does no I/O.

``build`` is the composition root: it calls the builders of ``cli_server.compose`` in order,
each given what the earlier ones made, then puts the services in the tree (started in that
order, stopped in reverse) and lists the steps run once the database is migrated.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable

from attrs import define
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.web.server import Site

from cli_server.anthropic.proxy import AnthropicProxy
from cli_server.auth.passwords import Passwords
from cli_server.compose.anthropic import AnthropicDoors, build_anthropic
from cli_server.compose.backends import Door, build_backends
from cli_server.compose.domain import build_domain, who_registers_first
from cli_server.compose.drain import build_drain, build_listeners
from cli_server.compose.hooks import ServerHooks
from cli_server.compose.listeners import hear_tunnels, subscribe
from cli_server.compose.periodic import build_periodic
from cli_server.compose.proxy import build_proxy
from cli_server.compose.reactor import IServerReactor
from cli_server.compose.replicas import build_replicas
from cli_server.compose.sandboxes import build_sandboxes
from cli_server.compose.shared import build_shared
from cli_server.compose.store import DatabaseService, build_store, database_service, exit_on_fatal
from cli_server.compose.tunnel import build_tunnel
from cli_server.compose.web import build_web
from cli_server.config import ServerConfig
from cli_server.domain.accounts import Accounts
from cli_server.plumbing.services import OrderedMultiService
from cli_server.plumbing.threads import ThreadPoolService
from cli_server.proxy.access import SandboxAccess
from cli_server.proxy.router import RouterFactory
from cli_server.proxy.workers import RelayWorkers
from cli_server.replicas.drain import Drain, Draining
from cli_server.replicas.leader import Leadership
from cli_server.replicas.registry import Registry
from cli_server.sandboxes.activity import ActivityRecorder
from cli_server.sandboxes.backend import SandboxBackend
from cli_server.sandboxes.manager import SandboxManager
from cli_server.sso.claims import SignIns
from cli_server.sso.identities import Identities
from cli_server.tunnel.hub import TunnelHub
from cli_server.web.auth_api import AuthLimits

__all__ = ["DatabaseService", "Server", "build", "buildServer"]


@define(eq=False)
class Server:
    """The built service tree plus the pieces tests and siblings reach into."""

    root: OrderedMultiService
    site: Site  # twisted.web's, behind the router
    router: RouterFactory  # what the listening ports serve
    database: DatabaseService
    manager: SandboxManager
    backend: SandboxBackend
    activity: ActivityRecorder
    proxy_access: SandboxAccess
    anthropic: AnthropicProxy
    tunnels: TunnelHub
    relay_workers: RelayWorkers
    anthropic_door: Door | None = None
    accounts: Accounts | None = None
    identities: Identities | None = None  # who a single sign-on signs in (sso.claims.SignIns)
    leadership: Leadership | None = None
    registry: Registry | None = None
    drain: Drain | None = None  # what SIGTERM does first
    hooks: ServerHooks | None = None  # the events between its parts (compose.hooks)


def buildServer(config: ServerConfig, reactor: IServerReactor) -> IService:
    for warning in config.warnings():
        Logger().warn("{warning}", warning=warning)
    server = build(config, reactor, on_ready=announce(config))  # (ready right after it)
    # What exists now (modules, the service tree) lives as long as the process: moving it out
    # of the collector's view makes each full collection cheaper while the proxy churns.
    gc.freeze()
    return server.root


def announce(config: ServerConfig) -> Callable[[], Awaitable[None]]:
    """The one line an operator looks for: where to point the browser, once it works."""

    async def ready() -> None:
        Logger().info("cli-server is ready: open {origin}", origin=config.origin)

    return ready


def build(
    config: ServerConfig,
    reactor: IServerReactor,  # (each builder says which of its interfaces it uses)
    *,
    passwords: Passwords | None = None,
    limits: AuthLimits | None = None,
    on_fatal: Callable[[str], None] | None = None,
    backend: SandboxBackend | None = None,
    sign_ins: SignIns | None = None,
    on_ready: Callable[[], Awaitable[None]] | None = None,
) -> Server:
    hooks = ServerHooks()  # between parts built in this order (see compose.hooks)
    draining = Draining()  # set by the drain, read by /readyz
    hashing = ThreadPoolService(reactor, "password-hashing", 2)  # (and other short jobs)
    hashing.setName("threads")
    store = build_store(config, reactor)
    db = store.db
    access = SandboxAccess(db, reactor, config.session_lifetime, cut_streams=hooks.streams_cut)
    cluster = build_replicas(config, reactor, store, backend, access.revoke_everything)
    domain = build_domain(config, reactor, db, hashing, passwords, limits, sign_ins)
    shared = build_shared(config, reactor, db, cluster)
    tunnels = build_tunnel(config, reactor, db, cluster, hooks, shared, domain)
    doors = AnthropicDoors(reactor)
    backends = build_backends(
        config, reactor, shared.opencode, hashing, hooks, doors.open, cluster.replica, backend
    )
    anthropic = build_anthropic(config, reactor, db, shared, tunnels.hub, backends.backend, doors)
    hear_tunnels(hooks, access, anthropic.proxy, cluster.bus)
    sandboxes = build_sandboxes(
        config, reactor, db, backends, domain, tunnels.hub, cluster, hooks, shared
    )
    manager = sandboxes.manager
    proxy = build_proxy(config, reactor, access, backends.backend, manager, shared, tunnels, hooks)
    subscribe(domain.events, cluster, access, proxy.forget, tunnels, anthropic.proxy)
    web = build_web(
        config, reactor, store, domain, anthropic, manager, access, tunnels, proxy, shared, draining
    )
    periodic = build_periodic(
        config, reactor, store, domain, access, tunnels, sandboxes, shared, cluster
    )
    listeners = build_listeners(config, reactor, web)
    drain = build_drain(config, reactor, listeners, web, proxy, tunnels.hub, draining)

    # Once the schema is current, before ``ready``, in this order:
    steps = [
        cluster.joining.join,  # this replica's row (first: a refused replica does nothing)
        *([cluster.bus.begin] if cluster.bus is not None else []),  # hear the other replicas
        lambda: tunnels.keyring.load(db, config.internal_secret),  # the internal channel's key
        # (next to live replicas too: tunnel_holders says which tunnels they hold, and only
        # those of replicas gone are released)
        tunnels.hub.mark_all_offline,
        cluster.leadership.attempt,  # (the leader's first sweep: the reconciler's)
        who_registers_first(config, domain.accounts),
        *([on_ready] if on_ready is not None else []),  # (last: ready right after it)
    ]
    database = database_service(store, reactor, on_fatal or exit_on_fatal(reactor), steps)

    # Started in this order, stopped in reverse: the drain first, the database last.
    # (the first stop step, the drain, takes up to --drain-timeout)
    root = OrderedMultiService(reactor, step_timeout=max(30.0, config.drain_timeout + 10.0))
    for service in [
        hashing,
        database,
        # (after the database: stopped before it, so a stop is never taken for a crash)
        *([store.supervisor] if store.supervisor is not None else []),
        cluster.joining,
        cluster.leadership,
        *([cluster.bus] if cluster.bus is not None else []),  # (stopped before the database)
        *backends.services,
        sandboxes.service,
        *periodic,
        # (before the listeners: stopped after them, so nothing is handed to it while it stops)
        proxy.relay,
        *listeners,
        drain,  # (last: stopped first, while everything it waits for still works)
    ]:
        service.setServiceParent(root)
    return Server(
        root,
        web.site,
        web.router,
        database,
        manager,
        backends.backend,
        shared.activity,
        access,
        anthropic.proxy,
        tunnels.hub,
        proxy.relay,
        doors.open,
        domain.accounts,
        domain.identities,
        cluster.leadership,
        cluster.registry,
        drain,
        hooks,
    )
