"""Wiring for `twistd cli-server`: builds the service tree from a ServerConfig, does no I/O."""

from __future__ import annotations

import gc
import os
import socket
import sys
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import Site

from cli_server.anthropic.listener import adopt, listen_in_netns, proxy_site
from cli_server.anthropic.proxy import AnthropicProxy, Upstream
from cli_server.anthropic.setup import ClaudeSetup
from cli_server.anthropic.usage import UsageStore
from cli_server.auth.api_tokens import ApiTokens
from cli_server.auth.passwords import Passwords
from cli_server.auth.ratelimit import Failures
from cli_server.config import ServerConfig
from cli_server.db.embedded import EmbeddedPostgres, EmbeddedPostgresError, Supervisor
from cli_server.db.migrations import migrate
from cli_server.db.notify import ListeningConnection
from cli_server.db.pool import Database, DatabaseUnavailable
from cli_server.domain.accounts import Accounts
from cli_server.domain.audit import AuditLog
from cli_server.domain.events import Events, Listener
from cli_server.domain.instance_admin import InstanceAdmin
from cli_server.domain.workspaces import Workspaces
from cli_server.listeners import AgentsListener, AnthropicListener, DeletedTunnels, ProxyListener
from cli_server.plumbing.client_address import TrustedProxies
from cli_server.plumbing.metrics import Metrics
from cli_server.plumbing.services import OrderedMultiService, PeriodicService
from cli_server.plumbing.threads import ThreadPoolService
from cli_server.proxy.access import SandboxAccess
from cli_server.proxy.endpoints import RunningEndpoints
from cli_server.proxy.forward import Forwarder
from cli_server.proxy.live import LiveStreams
from cli_server.proxy.replica_relay import InternalChannel, Keyring, ReplicaRelay
from cli_server.proxy.router import RouterFactory
from cli_server.proxy.routes import Routes
from cli_server.proxy.site import SandboxCookie, SandboxSite
from cli_server.proxy.urls import SandboxUrls
from cli_server.proxy.workers import RelayWorkers
from cli_server.replicas.drain import Drain
from cli_server.replicas.events import CHANNEL, EventTable, ReplicaEvents
from cli_server.replicas.holders import TunnelHolders
from cli_server.replicas.leader import Leadership
from cli_server.replicas.registry import (
    HEARTBEAT_SECONDS,
    Registry,
    RegistryService,
    Replica,
    ReplicaRefused,
)
from cli_server.sandboxes.activity import ActivityRecorder
from cli_server.sandboxes.backend import SandboxBackend
from cli_server.sandboxes.disk_quota import DiskQuotas, DiskSizes
from cli_server.sandboxes.docker_backend import DockerBackend, DockerPreparation, DockerSettings
from cli_server.sandboxes.egress import EgressPolicy
from cli_server.sandboxes.manager import SandboxManager
from cli_server.sandboxes.monitor import IdleMonitor, Reconciler
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.sandboxes.process_backend import ANTHROPIC_PORT, Limits, ProcessBackend
from cli_server.sso.identities import Identities
from cli_server.sso.providers import SsoProviders
from cli_server.tunnel.hub import TunnelHub
from cli_server.tunnel.registrations import LocalAgents
from cli_server.web.admin_api import AdminAPI
from cli_server.web.agents_api import AgentsAPI
from cli_server.web.auth_api import AuthAPI, AuthLimits
from cli_server.web.bearer import TokenGuard
from cli_server.web.dispatch import HostDispatcher
from cli_server.web.invitations_api import InvitationsAPI
from cli_server.web.request import BoundedRequest
from cli_server.web.sandboxes_api import SandboxesAPI, WorkspaceSandboxesAPI
from cli_server.web.serving import QuietSandboxSite
from cli_server.web.session import SessionCookies
from cli_server.web.site import MainSite
from cli_server.web.sso_api import SsoAPI
from cli_server.web.workspaces_api import WorkspacesAPI


@define(eq=False)
class DatabaseService(Service):
    """Brings PostgreSQL up (embedded, or waits for an external one), migrates, closes it last.

    twistd does not wait for asynchronous start-up, so the web server listens at once and
    answers 503 until ``ready`` is true. A database that is down at start is retried with
    backoff; an embedded database that cannot start is fatal (``on_fatal``).
    """

    _reactor: Any
    db: Database
    _embedded: EmbeddedPostgres | None
    _on_fatal: Any  # (message: str) -> None
    # run after migrations, before ``ready`` (e.g. the reconciler's first sweep)
    after_migrate: list[Any] = field(factory=list, init=False)
    ready: bool = field(default=False, init=False)
    _boot: Deferred[None] | None = field(default=None, init=False)
    _log = Logger()

    def startService(self) -> None:
        super().startService()
        self._boot = Deferred.fromCoroutine(self._start())
        self._boot.addErrback(self._failed)

    async def _start(self) -> None:
        if self._embedded is not None:
            await self._embedded.start()
        delay = 0.5
        while True:
            try:
                await migrate(self.db)
                break
            except DatabaseUnavailable as e:
                self._log.warn(
                    "database not ready ({why}); retrying in {delay}s", why=e, delay=delay
                )
                await deferLater(self._reactor, delay)
                delay = min(delay * 2, 10.0)
        for hook in self.after_migrate:
            await hook()
        self.ready = True
        self._log.info("database ready")

    def _failed(self, failure: Any) -> None:
        if failure.check(CancelledError):
            return
        message = failure.getErrorMessage()
        if failure.check(EmbeddedPostgresError, OSError, ReplicaRefused):
            self._log.error("start-up failed: {message}", message=message)
        else:
            self._log.failure("start-up failed: {message}", failure, message=message)
        self._on_fatal(message)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._boot is not None and not self._boot.called:
            self._boot.cancel()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.db.close()
        if self._embedded is not None:
            await self._embedded.stop()


def exit_on_fatal(reactor: Any) -> Any:
    """Print one line, stop the reactor, and make the process exit with status 1."""

    def fatal(message: str) -> None:
        print(f"cli-server: cannot start: {message}", file=sys.stderr, flush=True)
        # twistd has no way to set the exit status, so leave with 1 once shutdown is done.
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if reactor.running:
            reactor.stop()
        else:  # failed before the reactor started turning
            reactor.callWhenRunning(reactor.stop)

    return fatal


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


@define(eq=False)
class Server:
    """The built service tree plus the pieces tests and siblings reach into."""

    root: OrderedMultiService
    site: Site  # twisted.web's, behind the router
    router: RouterFactory  # what the listening ports serve
    database: DatabaseService
    manager: SandboxManager
    backend: Any
    activity: ActivityRecorder
    proxy_access: SandboxAccess
    anthropic: AnthropicProxy
    tunnels: TunnelHub
    relay_workers: RelayWorkers
    anthropic_door: Any = None  # (sandbox_id, netns or None) -> (IListeningPort, port)
    accounts: Accounts | None = None
    identities: Identities | None = None  # who a single sign-on signs in (sso.claims.SignIns)
    leadership: Leadership | None = None
    registry: Registry | None = None
    drain: Drain | None = None  # what SIGTERM does first


def buildServer(config: ServerConfig, reactor: Any) -> IService:
    for warning in config.warnings():
        Logger().warn("{warning}", warning=warning)
    server = build(config, reactor)
    server.database.after_migrate.append(announce(config))  # (last: ready right after it)
    service = server.root
    # What exists now (modules, the service tree) lives as long as the process: moving it out
    # of the collector's view makes each full collection cheaper while the proxy churns.
    gc.freeze()
    return service


def announce(config: ServerConfig) -> Any:
    """The one line an operator looks for: where to point the browser, once it works."""

    async def ready() -> None:
        Logger().info("cli-server is ready: open {origin}", origin=config.origin)

    return ready


def build(
    config: ServerConfig,
    reactor: Any,
    *,
    passwords: Passwords | None = None,
    limits: AuthLimits | None = None,
    on_fatal: Any = None,
    backend: Any = None,
    sign_ins: Any = None,
) -> Server:
    # (a stop's first step, the drain, takes up to --drain-timeout)
    root = OrderedMultiService(reactor, step_timeout=max(30.0, config.drain_timeout + 10.0))

    hashing = ThreadPoolService(reactor, "password-hashing", 2)
    hashing.setName("threads")
    hashing.setServiceParent(root)

    host: str | None = None  # set below for a backend whose sandboxes only this host reaches
    embedded = None
    if config.db_url:
        dsn = config.db_url
    else:
        embedded = EmbeddedPostgres(config.data_dir, reactor)
        dsn = embedded.dsn
    db = Database(reactor, dsn)
    database = DatabaseService(reactor, db, embedded, on_fatal or exit_on_fatal(reactor))
    database.setName("database")
    database.setServiceParent(root)
    if embedded is not None:
        # (after the database: stopped before it, so a stop is never taken for a crash)
        supervisor = PeriodicService(
            reactor, 1.0, Supervisor(embedded, reactor).check, "database supervisor"
        )
        supervisor.setName("database-supervisor")
        supervisor.setServiceParent(root)

    labelled = backend is None and config.backend in ("docker", "k8s")
    backend_instance = (config.k8s_instance or instance_id(config.data_dir)) if labelled else None
    replica = Replica(
        uuid.uuid4().hex[:12],
        socket.gethostname(),
        str(config.data_dir),
        config.advertise_url,
        config.backend if backend is None else "injected",  # (tests': never per host)
        embedded is not None,
        backend_instance,
    )
    registry = Registry(db, replica)
    joining = RegistryService(registry, reactor)
    joining.setName("replica-registry")
    joining.setServiceParent(root)
    database.after_migrate.append(joining.join)  # (first: a refused replica does nothing)
    leadership = Leadership(reactor, db.dedicated, f"{replica.id}@{replica.hostname}")
    leadership.setName("leadership")
    leadership.setServiceParent(root)

    # What another replica fired reaches this one's subscribers through ``local``.
    local = Events()
    bus: ReplicaEvents | None = None
    if embedded is None:  # (embedded PostgreSQL serves one replica: nobody to tell)
        bus = ReplicaEvents(
            reactor,
            EventTable(db, reactor),
            ListeningConnection(reactor, dsn, CHANNEL),
            local,
            begin_at_start=False,
        )
        bus.setName("replica-events")
        bus.setServiceParent(root)  # (after the database: stopped before it)
        database.after_migrate.append(bus.begin)
    sandbox_access = SandboxAccess(db, reactor, config.session_lifetime)
    limits = limits or AuthLimits()
    events = Events()  # revocations and status changes, fired by the domain (subscribers below)
    audit = AuditLog(db)
    accounts = Accounts(
        db, passwords or Passwords(hashing.run), reactor, config.session_lifetime, events
    )
    api_tokens = ApiTokens(db, reactor)
    cookies = SessionCookies(
        accounts,
        config.secure_cookies,
        config.session_lifetime,
        config.origin,
        TokenGuard(api_tokens),
    )
    failures = Failures(db)  # (in the database: every replica counts the same failures)
    logins = limits.guard(failures, reactor)
    registrations = limits.registrations(failures, reactor)
    sso_providers = SsoProviders.of(config, reactor, db)
    labels = {p["name"]: p["label"] for p in sso_providers.public_list()}
    identities = Identities(db, config.registration, labels)
    auth = AuthAPI(
        accounts,
        cookies,
        logins,
        registrations,
        config.registration,
        identities,
        config.password_login,
        sso_providers.public_list,
        api_tokens,
        audit=audit,
    )
    opencode = OpencodeClient(reactor)
    activity = ActivityRecorder(db, reactor)
    usage = UsageStore(db)
    claude = ClaudeSetup.of(config.anthropic_api_key, config.anthropic_auth_token)
    upstream = None
    if claude.configured:
        upstream = Upstream(
            config.anthropic_base_url, config.anthropic_api_key, config.anthropic_auth_token
        )
    metrics = Metrics()
    metrics.replica(replica.id, replica.hostname, replica.backend)
    metrics.flush_before_render(lambda: metrics.leader.set(int(leadership.leading)))

    async def sources(sandbox_id: str, is_local: bool) -> Collection[str]:
        """Where a sandbox's Anthropic calls may come from on the main listener: a local
        agent's live tunnel; a backend's own answer (docker: the container's addresses)."""
        if is_local:
            address = tunnels.address(sandbox_id)
            return (address,) if address else ()
        found: Collection[str] = await backend.source_addresses(sandbox_id)
        return found

    anthropic = AnthropicProxy(db, reactor, upstream, usage, activity, metrics, sources)

    def door(sandbox_id: str, netns: Path | None) -> tuple[Any, int]:
        site = proxy_site(anthropic, BoundedRequest, sandbox_id)
        listening = adopt(reactor, listen_in_netns(netns, ANTHROPIC_PORT if netns else 0), site)
        return listening, listening.getHost().port

    if backend is None and config.backend == "docker":
        engine = ThreadPoolService(reactor, "docker", 4)
        engine.setName("docker-threads")
        engine.setServiceParent(root)
        settings = DockerSettings(
            config.docker_url,
            config.agent_image or "",
            docker_anthropic_url(config),
            network=config.docker_network,
            memory_bytes=config.sandbox_memory,
            pids=config.sandbox_pids,
            nano_cpus=int(config.sandbox_cpus * 1e9),
            firewall=config.docker_firewall,
            egress=EgressPolicy(allow=config.egress_allow),
            disks=DiskSizes(config.workspace_disk_size, config.sandbox_home_size),
            disk_root=config.data_dir / "docker-disks",
        )
        backend = DockerBackend(
            engine.run,
            settings,
            backend_instance or instance_id(config.data_dir),
            opencode,
            quotas=DiskQuotas.on(reactor),
        )
        DockerPreparation(backend).setServiceParent(root)
    if backend is None and config.backend == "k8s":
        backend = k8s_backend(config, reactor, root, opencode)
    if backend is None:
        backend = ProcessBackend(
            reactor,
            config.data_dir,
            Path(config.opencode_bin or "opencode"),
            opencode,
            door=door,
            anthropic_url=anthropic_base_url(config) if config.anthropic_proxy_url else None,
            isolated=not config.allow_unisolated,
            limits=Limits(config.sandbox_memory, config.sandbox_pids),
            disk_sizes=DiskSizes(config.workspace_disk_size, config.sandbox_home_size),
            egress_allow=config.egress_allow,
            threads=hashing.run,  # (reads of sandboxes' listening ports: short, bounded)
        )
        backend.check_limits()
        host = replica.hostname  # (its sandboxes are reached from this host only)
    workspaces = Workspaces(
        db, config.direct_members, max_owned=config.max_workspaces_per_user, events=events
    )
    urls = SandboxUrls(config.base_scheme, config.base_domain)
    # Only the docker backend's answer costs anything (engine calls); the process backend's is
    # free and exact, so it is asked every time.
    endpoints = RunningEndpoints(
        backend, reactor, ttl=1.0 if config.backend in ("docker", "k8s") else 0.0
    )

    def forget(sandbox_id: str) -> None:
        endpoints.forget(sandbox_id)
        # (what the backend remembers of it, e.g. its pod's addresses: the change may have
        # been made through another replica, which told us through the replica events)
        backend.forget(sandbox_id)
        # A sandbox whose status changed (paused, failed, stopped, deleted; one that starts
        # has nothing open) keeps nothing open through the proxy: its connections are cut,
        # in twisted.web and in every relay worker, as a revocation's are.
        sandbox_access.revoke_sandbox(sandbox_id)

    manager = SandboxManager(
        db,
        backend,
        workspaces,
        config.max_sandboxes,
        urls.home,
        events,
        max_per_workspace=config.max_sandboxes_per_workspace,
        max_per_user=config.max_sandboxes_per_user,
        max_stored_per_workspace=config.max_sandboxes_stored_per_workspace,
    )

    def tunnel_changed(sandbox_id: str) -> None:
        sandbox_access.status_changed(sandbox_id)
        anthropic.status_changed(sandbox_id)
        if bus is not None:
            bus.tell_others("sandbox_status_changed", sandbox_id=sandbox_id)

    tunnels = TunnelHub(db, reactor, tunnel_changed, activity.touch, metrics)
    tunnels.holders = TunnelHolders(db, replica.id, reactor.seconds)
    keyring = Keyring()  # the internal channel's, shared by the replicas through the database
    database.after_migrate.append(lambda: keyring.load(db, config.internal_secret))
    manager.tunnels = tunnels
    manager.host = host
    manager.replica = replica.id  # (its rows mid-transition: left alone by the leader)
    backend.on_exit = manager.exited  # a sandbox whose opencode dies is failed at once
    agents = LocalAgents(
        db, workspaces, config.origin, config.origin.rstrip("/") + "/proxy/anthropic/v1"
    )
    agents.on_revoke = tunnels.revoke
    agents.audit = audit

    # (next to live replicas too: tunnel_holders says which tunnels they hold, and only those
    # of replicas gone are released)
    database.after_migrate.append(tunnels.mark_all_offline)
    subscribers: list[Listener] = [
        ProxyListener(sandbox_access, forget),
        AgentsListener(agents),
        AnthropicListener(anthropic),
    ]
    for subscriber in subscribers:
        events.subscribe(subscriber)
        local.subscribe(subscriber)
    local.subscribe(DeletedTunnels(tunnels))
    if bus is not None:
        events.subscribe(bus)  # (last: this replica has heard it before the others do)
    sandboxes = SandboxService(manager, backend, tunnels)
    sandboxes.setName("sandboxes")
    sandboxes.setServiceParent(root)
    # (leadership is asked again before each sandbox: a deposed leader stops within one)
    reconciler = Reconciler(db, backend, manager, lambda: leadership.leading)
    idle = IdleMonitor(
        db,
        backend,
        manager,
        opencode,
        activity,
        config.idle_timeout,
        reactor,
        lambda: leadership.leading,
    )
    # Once per cluster, on the leader (taking the lead runs them at once: the reconciler first).
    reconcile = leadership.when_leading(reconciler.sweep)
    idle_sweep = leadership.when_leading(idle.sweep)
    database.after_migrate.append(leadership.attempt)

    drain: Drain  # (built below, with the listeners it stops)
    site = MainSite(
        db,
        anthropic,
        auth,
        WorkspacesAPI(
            workspaces,
            cookies,
            manager,
            WorkspaceSandboxesAPI(manager, audit=audit),
            usage,
            agents,
            claude,
            audit=audit,
        ),
        SandboxesAPI(manager, cookies, sandbox_access, urls, audit=audit),
        AgentsAPI(agents, tunnels),
        lambda: database.ready,
        metrics=metrics,
        invitations=InvitationsAPI(workspaces, cookies, audit=audit),
        claude=claude,
        admin=AdminAPI(
            InstanceAdmin(db, accounts.passwords, events),
            cookies,
            config.origin,
            config.registration,
            audit=audit,
        ),
        sso=SsoAPI(
            sso_providers,
            sign_ins or identities,
            accounts,
            cookies,
            config.secure_cookies,
            audit=audit,
        ),
        draining=lambda: drain.draining,
    )

    async def say_who_registers_first() -> None:
        admins = await accounts.admins()
        if not admins and not await accounts.has_users():
            Logger().info(
                "no accounts yet: the first one registered becomes the instance admin "
                "(registration: {mode})",
                mode=config.registration,
            )
        else:
            # (an upgrade made the oldest account the admin: the operator should know whom)
            Logger().info(
                "instance admin: {admins} (registration: {mode})",
                admins=", ".join(admins) or "none",
                mode=config.registration,
            )

    database.after_migrate.append(say_who_registers_first)
    sandbox_cookie = SandboxCookie(config.secure_cookies, config.session_lifetime)
    live = LiveStreams(reactor)  # terminals and event streams open in this process
    metrics.flush_before_render(lambda: metrics.live_streams.set(live.open_count()))
    proxy = SandboxSite(
        sandbox_access,
        manager,
        endpoints,
        activity,
        Forwarder.create(reactor, tunnels),
        sandbox_cookie,
        reactor,
        urls.base_host,
        config.base_scheme.encode(),
        urls.dashboard,
        metrics,
        tunnels,
        live=live,
        relay=ReplicaRelay(tunnels.holders, keyring, reactor),
    )
    internal = InternalChannel(
        keyring,
        tunnels,
        Forwarder.create(reactor, tunnels),
        reactor,
        urls.dashboard,
        activity.touch,
    )

    async def housekeeping() -> None:
        activity.prune()
        if database.ready:
            await logins.prune()
            await registrations.prune()
            if sso_providers.pending is not None:
                await sso_providers.pending.prune()
            await accounts.purge_expired_sessions()
            await api_tokens.purge_ended()
            await sandbox_access.purge_expired()
            await agents.purge_expired()
            await workspaces.purge_expired_invitations()
            await audit.purge(config.audit_retention_days)

    def when_ready(job: Any) -> Any:
        async def run() -> None:
            if database.ready:
                await job()

        return run

    idle_period = min(60.0, config.idle_timeout / 4)
    for name, interval, job in [
        ("housekeeping", 600.0, housekeeping),
        ("reconciler", 30.0, when_ready(reconcile)),
        ("idle-monitor", idle_period, when_ready(idle_sweep)),
        ("metrics", 15.0, when_ready(lambda: metrics.refresh(db))),
        # (a dead leader's successor takes over within one idle-monitor period)
        ("leader-election", min(5.0, idle_period), when_ready(leadership.attempt)),
        ("replica-heartbeat", HEARTBEAT_SECONDS, when_ready(registry.heartbeat)),
        ("tunnel-holders", HEARTBEAT_SECONDS, when_ready(tunnels.sweep_holders)),
    ]:
        periodic = PeriodicService(reactor, interval, job, name)
        periodic.setName(name)
        periodic.setServiceParent(root)

    root_resource = HostDispatcher(site.app.resource(), proxy, urls.base_host, internal)
    web = QuietSandboxSite(
        root_resource,
        urls.base_host,
        TrustedProxies(config.trusted_proxies),
        requestFactory=BoundedRequest,
    )
    web.displayTracebacks = False
    web.access_log = config.access_log
    # (before the listeners: stopped after them, so nothing is handed to it while it stops)
    relay = RelayWorkers(reactor, config.proxy_workers, metrics.relayed_streams)
    relay.setName("relay-workers")
    relay.setServiceParent(root)

    def cut_streams(**match: str) -> None:
        live.cut(sandbox_access.revocations, **match)
        relay.cut(**match)

    sandbox_access.cut_streams = cut_streams
    if bus is not None:
        bus.forget_everything = sandbox_access.revoke_everything
    routes = Routes(
        sandbox_access,
        endpoints,
        activity,
        urls.base_host,
        config.base_scheme.encode(),
        sandbox_cookie.name,
        urls.dashboard,
        reactor,
        metrics,
        workers=relay if config.proxy_workers else None,
        live=live,
    )
    relay.on_relayed = routes.relayed  # (what the workers relayed counts as activity)
    router = RouterFactory(web, routes, reactor)
    listeners = []
    for n, description in enumerate(config.listen):
        listener = StreamServerEndpointService(serverFromString(reactor, description), router)
        listener.setName(f"http-{n}")
        listener.setServiceParent(root)
        listeners.append(listener)

    def begin_draining() -> None:
        web.requests.draining = True  # (answers say ``connection: close``)

    # (added last: stopped first, while everything it waits for still works)
    drain = Drain(
        reactor,
        config.drain_timeout,
        listeners,
        [router, web.requests],
        relay if config.proxy_workers else None,
        tunnels.close_all,
        [live.end_all, web.requests.close_lasting],
        begin_draining,
    )
    drain.setName("drain")
    drain.setServiceParent(root)
    return Server(
        root,
        web,
        router,
        database,
        manager,
        backend,
        activity,
        sandbox_access,
        anthropic,
        tunnels,
        relay,
        door,
        accounts,
        identities,
        leadership,
        registry,
        drain,
    )


def anthropic_base_url(config: ServerConfig) -> str:
    """What sandboxes get as ANTHROPIC_BASE_URL: the server's proxy, ending in /v1."""
    base = config.anthropic_proxy_url or f"http://127.0.0.1:{ANTHROPIC_PORT}/proxy/anthropic"
    return base.rstrip("/") + ("" if base.rstrip("/").endswith("/v1") else "/v1")


def instance_id(data_dir: Path) -> str:
    """This server's name on the engine's labels: random once, then kept in the data directory,
    so it survives restarts and a recreated container, and two servers (two compose projects on
    one engine, say) never take each other's sandboxes for their own."""
    import contextlib
    import re
    import secrets

    path = data_dir / "instance-id"

    def known() -> str:
        text = path.read_text().strip()
        if not re.fullmatch(r"[0-9a-f]{16}", text):
            raise RuntimeError(f"{path} should hold 16 hex digits (this server's instance id)")
        return text

    if path.exists():
        return known()
    made = secrets.token_hex(8)
    draft = path.with_name(f".instance-id.{made}")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(draft, "w") as f:
            f.write(made + "\n")
            f.flush()
            os.fsync(f.fileno())  # never an empty id after a power cut
        os.link(draft, path)  # whole or not at all, and never over an id written meanwhile
    except FileExistsError:
        return known()  # another start wrote it first
    except OSError as e:
        raise RuntimeError(f"cannot write this server's instance id to {path}: {e}") from e
    finally:
        with contextlib.suppress(OSError):  # (never made, or a directory that is not one)
            draft.unlink()
    return made


def k8s_backend(config: ServerConfig, reactor: Any, root: Any, opencode: OpencodeClient) -> Any:
    """The k8s backend on its own bounded pool (a start holds a thread while it waits)."""
    from cli_server.sandboxes.k8s_backend import K8sBackend, K8sPreparation, K8sSettings
    from cli_server.sandboxes.k8s_objects import PodSettings, quantity

    pool = ThreadPoolService(reactor, "kubernetes", 8)
    pool.setName("kubernetes-threads")
    pool.setServiceParent(root)
    waits = ThreadPoolService(reactor, "kubernetes-waits", 32)  # starts waiting for Ready
    waits.setName("kubernetes-wait-threads")
    waits.setServiceParent(root)
    cpus = f"{config.sandbox_cpus:g}"
    resources = config.sandbox_resources or {
        "limits": {"memory": quantity(config.sandbox_memory), "cpu": cpus}
    }
    proxy = config.anthropic_proxy_url or config.in_cluster_url + "/proxy/anthropic"
    pod = PodSettings(
        image=config.agent_image or "",
        anthropic_url=proxy.rstrip("/") + ("" if proxy.rstrip("/").endswith("/v1") else "/v1"),
        resources=resources,
        runtime_class=config.runtime_class,
        storage_class=config.storage_class,
        workspace_access_mode=config.workspace_access_mode,
        workspace_size=quantity(config.workspace_disk_size),
        home_size=quantity(config.sandbox_home_size),
    )
    settings = K8sSettings(pod, config.sandbox_namespace, config.kubeconfig)
    instance = config.k8s_instance or instance_id(config.data_dir)
    backend = K8sBackend(pool.run, settings, instance, opencode, reactor, wait_run=waits.run)
    K8sPreparation(backend).setServiceParent(root)
    return backend


def docker_anthropic_url(config: ServerConfig) -> str:
    """How a container reaches our Anthropic proxy: ANTHROPIC_PROXY_URL, else the host's
    gateway at the port of our first TCP listener."""
    if config.anthropic_proxy_url:
        return anthropic_base_url(config)
    port = 8080
    for description in config.listen:
        parts = description.split(":")
        if parts[0] == "tcp" and len(parts) > 1 and parts[1].isdigit():
            port = int(parts[1])
            break
    return f"http://host.docker.internal:{port}/proxy/anthropic/v1"
