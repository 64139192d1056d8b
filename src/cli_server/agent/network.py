"""How the agent reaches a URL: directly or through the proxy, with TLS on the trust it was
given. The tunnel's WebSocket and the registration call both go this way."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer

from cli_server.agent.http_proxy import ConnectEndpoint, ProxyError, proxy_for
from cli_server.agent.tls import Trust, causes, explain_tls

CONNECT_TIMEOUT = 10.0


class IAgentReactor(IReactorTime, IReactorTCP):
    """The reactor as the agent uses it: timers (backoff, pings, timeouts) and TCP
    connections (to the server, its proxy, opencode and shared ports). It adds nothing: it
    names, for the type checker, the two roles any full reactor plays (the real one,
    ``MemoryReactorClock`` in tests)."""


@frozen
class Network:
    trust: Trust = field(factory=Trust)
    # the proxy variables (kept out of repr: a proxy's password, and whatever else is there)
    environ: Mapping[str, str] = field(factory=dict, repr=False)
    timeout: float = CONNECT_TIMEOUT

    def endpoint(self, reactor: IAgentReactor, url: str) -> IStreamClientEndpoint:
        parts = urlsplit(url)
        secure = parts.scheme in ("https", "wss")
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        proxy = proxy_for(url, self.environ)
        tcp: IStreamClientEndpoint
        if proxy is None:
            tcp = HostnameEndpoint(reactor, host, port, timeout=self.timeout)
        else:
            to_proxy = HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=self.timeout)
            tcp = ConnectEndpoint(reactor, to_proxy, proxy, host, port, self.timeout)
        if secure:
            return wrapClientTLS(self.trust.for_host(host), tcp)
        return tcp

    def special(self, url: str) -> bool:
        """Whether ``url`` needs more than a default HTTP client (a proxy or a CA bundle)."""
        return self.trust.custom or proxy_for(url, self.environ) is not None

    def http_agent(self, reactor: IAgentReactor) -> IAgent:
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent: IAgent = Agent.usingEndpointFactory(reactor, _Endpoints(self, reactor), pool=pool)
        return agent

    def explain(self, error: BaseException, url: str) -> str | None:
        """One line for a TLS or proxy failure on the way to ``url``, else None."""
        host = urlsplit(url).hostname or url
        for cause in causes(error):
            if isinstance(cause, ProxyError):
                return str(cause)
        return explain_tls(error, host, self.trust)


@implementer(IAgentEndpointFactory)
@frozen
class _Endpoints:
    _network: Network
    _reactor: IAgentReactor

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return self._network.endpoint(self._reactor, uri.toBytes().decode("ascii"))


@implementer(IStreamClientEndpoint)
@define(eq=False)
class ReportingEndpoint:
    """Tells ``report`` why a connection attempt failed (``ClientService`` only retries)."""

    _endpoint: IStreamClientEndpoint
    _report: Callable[[Failure], None] = field(repr=False)  # (ClientService logs our repr)

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            self._report(failure)
            return failure

        return self._endpoint.connect(factory).addErrback(failed)
