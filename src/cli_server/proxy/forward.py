"""Forwarding one browser request to a sandbox's opencode, streaming the answer back.

Built on ``twisted.web.client.Agent`` with a persistent pool (HTTP/1.1 keep-alive to each
sandbox), not on ``twisted.web.proxy`` (HTTP/1.0, a connection per request, buffered bodies).
Response bodies stream with backpressure: the upstream connection is the producer for the
browser's connection, so a slow reader pauses its own upstream only. Server-sent events pass
through as they arrive, without a timeout once the headers are in.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import cast

from attrs import define
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IRequest, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from cli_server.plumbing.nodelay import NoDelayEndpoint
from cli_server.plumbing.quiet import QuietEndpoint
from cli_server.proxy.hygiene import (
    ANSWER_HEADERS,
    HOP_BY_HOP,
    clean_query,
    kept_answer_header,
    plain_upstream_headers,
)
from cli_server.proxy.takeover import client_channel
from cli_server.proxy.upload import StreamedBody
from cli_server.sandboxes.backend import Endpoint
from cli_server.sandboxes.opencode import basic_auth


def upstream_headers(request: IRequest, password: str | None, scheme: bytes) -> Headers:
    """What the sandbox gets of the browser's headers: ``hygiene.plain_upstream_headers``'s
    block (the one request rule, as the relay workers send it), as ``Headers`` for Agent
    (which frames the body itself: no Content-Length). ``password`` is opencode's; a preview
    port gets None, and with it no Authorization at all."""
    raw = request.requestHeaders
    peer = str(getattr(request.getClientAddress(), "host", "")).encode()
    block = plain_upstream_headers(
        [(name, value) for name, values in raw.getAllRawHeaders() for value in values],
        tuple(raw.getRawHeaders(b"cookie", [])),
        request.getHeader(b"host") or b"",
        basic_auth(password) if password is not None else None,
        peer,
        scheme,
    )
    headers = Headers()
    for line in block[:-4].split(b"\r\n"):
        name, _, value = line.partition(b": ")
        if name.lower() != b"content-length":
            headers.addRawHeader(name, value)
    return headers


class Tunnels(typing.Protocol):
    """How local sandboxes are reached: the tunnel hub (``tunnel.hub.TunnelHub``), named here
    by what the proxy uses of it so that the proxy does not import the tunnel's server."""

    def endpoint(self, sandbox_id: str, port: int | None = None) -> IStreamClientEndpoint: ...

    def session(self, sandbox_id: str) -> object | None: ...

    def allowed_ports(self, sandbox_id: str) -> tuple[int, ...]: ...


class Relay(Protocol):
    """Copies a response body to the client as it arrives; the upstream transport is the
    producer for the client's connection, so a slow reader pauses only its own upstream.

    Optional: ``tap`` sees every chunk (usage metering), ``done`` fires when the body ends,
    and with ``silence`` seconds and a ``reactor`` an upstream that goes quiet that long is
    given up on, ending both sides rather than hanging for ever.
    """

    def __init__(
        self,
        request: Request,
        *,
        tap: Callable[[bytes], None] | None = None,
        done: Deferred[None] | None = None,
        reactor: IReactorTime | None = None,
        silence: float | None = None,
    ) -> None:
        self._request, self._tap, self._done = request, tap, done
        self._reactor, self._silence = reactor, silence
        self._timer: IDelayedCall | None = None
        self._gone = False

    def connectionMade(self) -> None:
        if client_channel(self._request) is None:
            # The client left between the upstream's headers and this body: nobody to copy to.
            self._abort()
            return
        self._request.registerProducer(self.transport, True)
        self._request.notifyFinish().addErrback(lambda _: self._abort())
        if self._silence is not None:
            assert self._reactor is not None, "silence needs a reactor"
            self._timer = self._reactor.callLater(self._silence, self._silent)

    def _abort(self) -> None:
        """The client hung up: stop reading (and so abort) the upstream response."""
        self._gone = True
        if self.transport is not None:
            # (Agent hands the body over a producer: ITransport does not say so)
            cast(IPushProducer, self.transport).stopProducing()

    def _silent(self) -> None:
        self._abort()
        if self._request.channel is not None:
            self._request.channel.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._timer is not None and self._timer.active() and self._silence is not None:
            self._timer.reset(self._silence)
        if self._tap is not None:
            self._tap(data)
        if not self._gone:
            self._request.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if not self._gone:
            self._request.unregisterProducer()
            if reason.check(ResponseDone, PotentialDataLoss):
                self._request.finish()
            elif self._request.channel is not None:
                # The upstream broke off mid-body: the client must not take a cut body as whole.
                self._request.channel.loseConnection()
        if self._done is not None:
            self._done.callback(None)


def copy_response_headers(
    response: IResponse, request: Request, keep: Callable[[bytes, bytes], bool] = lambda n, v: True
) -> None:
    """The upstream's headers minus hop-by-hop ones, its Content-Length (we re-frame) and
    those ``keep`` (lower-case name, value) refuses."""
    for name, values in response.headers.getAllRawHeaders():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower == b"content-length":
            continue
        values = [v for v in values if keep(lower, v)]
        if values:
            request.responseHeaders.setRawHeaders(name, values)


@define(eq=False)
class Forwarder:
    _reactor: IReactorTime  # (its IReactorTCP connects: client_endpoint)
    _pool: HTTPConnectionPool
    _cooperator: Cooperator  # reads request bodies into the upstream, on our reactor
    _agent: Agent
    # how long an answer's head may take, from the end of the request's body (a test
    # shortens it)
    header_timeout: float = 120.0
    _log = Logger()

    @classmethod
    def create(cls, reactor: IReactorTime, tunnels: Tunnels | None = None) -> Forwarder:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 128  # one per concurrent browser request, reused
        pool.cachedConnectionTimeout = 60
        cooperator = Cooperator(scheduler=lambda f: reactor.callLater(0, f))
        agent = Agent.usingEndpointFactory(reactor, _Endpoints(reactor, tunnels), pool=pool)
        return cls(reactor, pool, cooperator, agent)

    async def forward(
        self,
        request: Request,
        endpoint: Endpoint,
        password: str | None,
        scheme: bytes,
        *,
        target: bytes | None = None,
        headers: Headers | None = None,
    ) -> bool:
        """Send ``request`` on and stream the response; False if the sandbox did not answer.
        ``password``: opencode's, None for a preview port (which never gets it). ``target``
        and ``headers``, when given, are sent instead of the cleaned request's own (the
        internal channel between replicas: cleaned already, or to be passed on as they are)."""
        agent = self._agent
        path = clean_query(request.uri) if target is None else target
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host  # (IPv6)
        url = f"http://{host}:{endpoint.port}".encode() + path
        if request.finished or request.channel is None:
            return True  # the browser left before we got here
        # (web.request.BoundedRequest streams a sandbox's upload; the proxy does not import web)
        body = getattr(request, "streamed_body", None)
        content = request.content
        if body is None and content is not None and not content.closed:
            content.seek(0, 2)
            if content.tell() or request.method in (b"POST", b"PUT", b"PATCH"):
                content.seek(0)
                body = FileBodyProducer(content, cooperator=self._cooperator)
        if headers is None:
            headers = upstream_headers(request, password, scheme)
        d = agent.request(request.method, url, headers, body)
        if isinstance(body, StreamedBody):
            # (the client's Deferred waits for the whole body: time the answer, not the upload)
            def start_timing(_: object) -> None:
                if not d.called:
                    d.addTimeout(self.header_timeout, self._reactor)

            body.when_complete().addCallback(start_timing)
        else:
            d.addTimeout(self.header_timeout, self._reactor)
        request.notifyFinish().addErrback(lambda _: d.cancel() if not d.called else None)
        try:
            response: IResponse = await d
        except CancelledError:
            return True  # the browser left; nothing to answer
        except Exception as e:
            self._log.info("sandbox at {port} did not answer: {why}", port=endpoint.port, why=e)
            return False
        request.setResponseCode(response.code, response.phrase)
        copy_response_headers(response, request, kept_answer_header)
        for name, value in ANSWER_HEADERS:
            request.responseHeaders.addRawHeader(name, value)  # (a CSP adds to the sandbox's)
        known = isinstance(response.length, int)  # else UNKNOWN_LENGTH: chunked or until close
        if known and response.length:
            request.setHeader(b"content-length", str(response.length).encode())
        if (known and response.length == 0) or request.method == b"HEAD":
            response.deliverBody(Protocol())  # nothing to copy; releases the connection
            request.finish()
            return True
        response.deliverBody(Relay(request))
        return True


TUNNEL_SUFFIX = ".tunnel"


_TUNNEL_OPENCODE = 80  # (below every preview port: the laptop's opencode, not a port of it)


def through_tunnel(sandbox_id: str, port: int | None = None) -> Endpoint:
    """A local sandbox's address, reached over its agent's tunnel, not over TCP: its opencode
    (``port`` None) or a port of the laptop it shares."""
    return Endpoint(sandbox_id + TUNNEL_SUFFIX, _TUNNEL_OPENCODE if port is None else port)


def client_endpoint(
    reactor: IReactorTime, endpoint: Endpoint, tunnels: Tunnels | None
) -> IStreamClientEndpoint:
    """A sandbox's address as an endpoint: over its tunnel, or TCP (``reactor`` must be an
    IReactorTCP too: TCP4ClientEndpoint takes it untyped)."""
    if endpoint.host.endswith(TUNNEL_SUFFIX) and tunnels is not None:
        port = None if endpoint.port == _TUNNEL_OPENCODE else endpoint.port
        return tunnels.endpoint(endpoint.host.removesuffix(TUNNEL_SUFFIX), port)
    if ":" in endpoint.host:  # (an IPv6 address: a replica's, advertised as one)
        return NoDelayEndpoint(
            TCP6ClientEndpoint(reactor, endpoint.host, endpoint.port, timeout=10)
        )
    return NoDelayEndpoint(TCP4ClientEndpoint(reactor, endpoint.host, endpoint.port, timeout=10))


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Sandbox addresses are IP literals (or tunnels); one endpoint object per address, no
    name lookups."""

    def __init__(self, reactor: IReactorTime, tunnels: Tunnels | None) -> None:
        self._reactor = reactor
        self._tunnels = tunnels
        self._known: dict[tuple[bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.host, uri.port)
        endpoint = self._known.get(key)
        if endpoint is None:
            if len(self._known) > 4096:
                self._known.clear()
            address = Endpoint(uri.host.decode(), uri.port)
            endpoint = QuietEndpoint(client_endpoint(self._reactor, address, self._tunnels))
            self._known[key] = endpoint
        return endpoint
