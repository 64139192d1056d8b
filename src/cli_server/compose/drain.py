"""The listening ports, and what SIGTERM does first: the drain that stops them and lets the
requests under way finish (``replicas.drain``)."""

from __future__ import annotations

from attrs import define
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime

from cli_server.compose.proxy import Proxy
from cli_server.compose.web import Web
from cli_server.config import ServerConfig
from cli_server.replicas.drain import Drain, Draining
from cli_server.tunnel.hub import TunnelHub


def build_listeners(
    config: ServerConfig, reactor: IReactorTime, web: Web
) -> list[StreamServerEndpointService]:
    """One service per ``--listen``, named http-0, http-1...; nothing binds before start."""
    listeners = []
    for n, description in enumerate(config.listen):
        listener = StreamServerEndpointService(serverFromString(reactor, description), web.router)
        listener.setName(f"http-{n}")
        listeners.append(listener)
    return listeners


@define(eq=False)
class CloseConnections:
    """The drain's first step, besides not listening: twisted.web's answers say close."""

    _web: Web

    def __call__(self) -> None:
        self._web.site.requests.draining = True  # (answers say ``connection: close``)


def build_drain(
    config: ServerConfig,
    reactor: IReactorTime,
    listeners: list[StreamServerEndpointService],
    web: Web,
    proxy: Proxy,
    hub: TunnelHub,
    draining: Draining,
) -> Drain:
    requests = web.site.requests
    drain = Drain(
        reactor,
        config.drain_timeout,
        listeners,
        [web.router, requests],
        proxy.relay if config.proxy_workers else None,
        hub.close_all,
        [proxy.live.end_all, requests.close_lasting],
        CloseConnections(web),
        flag=draining,
    )
    drain.setName("drain")
    return drain
