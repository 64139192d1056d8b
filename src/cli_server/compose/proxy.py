"""The sandboxes' reverse proxy: what it knows of running sandboxes, the twisted.web side
(``SandboxSite``), the relay workers and the routes the router hands to them, and the
internal channel other replicas relay through."""

from __future__ import annotations

from attrs import define

from cli_server.compose.hooks import ServerHooks
from cli_server.compose.reactor import IServerReactor
from cli_server.compose.shared import Shared
from cli_server.compose.tunnel import Tunnels
from cli_server.config import ServerConfig
from cli_server.proxy.access import SandboxAccess
from cli_server.proxy.endpoints import RunningEndpoints
from cli_server.proxy.forward import Forwarder
from cli_server.proxy.live import LiveStreams
from cli_server.proxy.replica_relay import InternalChannel, ReplicaRelay
from cli_server.proxy.routes import Routes
from cli_server.proxy.site import SandboxCookie, SandboxSite
from cli_server.proxy.workers import RelayWorkers
from cli_server.sandboxes.backend import SandboxBackend
from cli_server.sandboxes.manager import SandboxManager


@define(eq=False)
class Forget:
    """What the server keeps about a sandbox whose status changed, dropped (told by
    ``compose.listeners.ProxyListener``)."""

    _endpoints: RunningEndpoints
    _backend: SandboxBackend
    _access: SandboxAccess

    def __call__(self, sandbox_id: str) -> None:
        self._endpoints.forget(sandbox_id)
        # (what the backend remembers of it, e.g. its pod's addresses: the change may have
        # been made through another replica, which told us through the replica events)
        self._backend.forget(sandbox_id)
        # A sandbox whose status changed (paused, failed, stopped, deleted; one that starts
        # has nothing open) keeps nothing open through the proxy: its connections are cut,
        # in twisted.web and in every relay worker, as a revocation's are.
        self._access.revoke_sandbox(sandbox_id)


@define(frozen=True)
class Proxy:
    endpoints: RunningEndpoints
    forget: Forget
    live: LiveStreams  # terminals and event streams open in this process
    site: SandboxSite  # twisted.web's side of the proxy
    internal: InternalChannel  # what other replicas relay a tunnel's requests through
    relay: RelayWorkers  # (a service: before the listeners, stopped after them)
    routes: Routes  # what the router hands to the workers (or to ``site``)


def build_proxy(
    config: ServerConfig,
    reactor: IServerReactor,
    access: SandboxAccess,
    backend: SandboxBackend,
    manager: SandboxManager,
    shared: Shared,
    tunnels: Tunnels,
    hooks: ServerHooks,
) -> Proxy:
    activity, metrics, urls = shared.activity, shared.metrics, shared.urls
    # Only the docker backend's answer costs anything (engine calls); the process backend's is
    # free and exact, so it is asked every time.
    endpoints = RunningEndpoints(
        backend, reactor, ttl=1.0 if config.backend in ("docker", "k8s") else 0.0
    )
    live = LiveStreams(reactor)
    metrics.flush_before_render(lambda: metrics.live_streams.set(live.open_count()))
    sandbox_cookie = SandboxCookie(config.secure_cookies, config.session_lifetime)
    hub = tunnels.hub
    site = SandboxSite(
        access,
        manager,
        endpoints,
        activity,
        Forwarder.create(reactor, hub),
        sandbox_cookie,
        reactor,
        urls.base_host,
        config.base_scheme.encode(),
        urls.dashboard,
        metrics,
        hub,
        live=live,
        relay=ReplicaRelay(tunnels.holders, tunnels.keyring, reactor),
    )
    internal = InternalChannel(
        tunnels.keyring,
        hub,
        Forwarder.create(reactor, hub),
        reactor,
        urls.dashboard,
        activity.touch,
    )
    relay = RelayWorkers(
        reactor,
        config.proxy_workers,
        metrics.relayed_streams,
        on_relayed=hooks.relayed,  # (what the workers relayed counts as activity: routes)
    )
    relay.setName("relay-workers")
    routes = Routes(
        access,
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
    hooks.relayed.subscribe(routes.relayed)

    def cut_streams(**match: str) -> None:
        live.cut(access.revocations, **match)
        relay.cut(**match)

    hooks.streams_cut.subscribe(cut_streams)  # (revoked sessions' streams end everywhere)
    return Proxy(endpoints, Forget(endpoints, backend, access), live, site, internal, relay, routes)
