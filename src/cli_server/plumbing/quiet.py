"""Client connections that do not log each connection.

twisted logs "Starting factory …" and "Stopping factory …" around every connection a noisy
factory makes; the HTTP client's factories are noisy, and a server that proxies opens thousands
of connections, burying the lines an operator needs to read. Every client connection the server
makes goes through ``QuietEndpoint``, which turns ``noisy`` off on the factory it is handed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, Factory
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

P = TypeVar("P", bound=IProtocol)


class ClientReactor(Protocol):
    """What our HTTP clients' connections need of the reactor: ``IReactorTCP.connectTCP``
    (``HostnameEndpoint``), ``IReactorTime`` for connection timeouts and the pool's idle
    connections. (``HostnameEndpoint`` also asks it for ``IReactorPluggableNameResolver``,
    which every real reactor provides.) Twisted's interfaces cannot be combined in one
    annotation, hence this protocol."""

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30.0,
        bindAddress: tuple[str, int] | None = None,
    ) -> IConnector: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kwargs: object
    ) -> IDelayedCall: ...

    def seconds(self) -> float: ...


@implementer(IStreamClientEndpoint)
@frozen
class QuietEndpoint:
    _endpoint: IStreamClientEndpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if isinstance(protocolFactory, Factory):
            protocolFactory.noisy = False
        return self._endpoint.connect(protocolFactory)


@implementer(IAgentEndpointFactory)
@frozen
class QuietEndpoints:
    """What ``Agent`` connects to by default (TCP, TLS for https), quietly."""

    _reactor: ClientReactor
    _connect_timeout: float
    _tls: IPolicyForHTTPS = field(factory=BrowserLikePolicyForHTTPS)

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, uri.host.decode("ascii"), uri.port, timeout=self._connect_timeout
        )
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return QuietEndpoint(endpoint)


def quiet_agent(reactor: ClientReactor, pool: HTTPConnectionPool, connect_timeout: float) -> Agent:
    agent: Agent = Agent.usingEndpointFactory(
        reactor, QuietEndpoints(reactor, connect_timeout), pool
    )
    return agent


class _OneShot(Factory):
    """``connectProtocol``'s factory, without its two lines per connection."""

    noisy = False

    def __init__(self, protocol: IProtocol) -> None:
        self._protocol = protocol

    # (Any: Factory's annotation wants its own protocol type, a twisted Protocol; ours is any
    # IProtocol the caller hands us)
    def buildProtocol(self, addr: IAddress | None) -> Any:
        return self._protocol


def connect_quietly(endpoint: IStreamClientEndpoint, protocol: P) -> Deferred[P]:
    """``twisted.internet.endpoints.connectProtocol``, quietly."""
    return endpoint.connect(_OneShot(protocol)).addCallback(lambda _: protocol)
