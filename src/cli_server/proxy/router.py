"""The listening port's protocol: routes each connection to a relay worker or to twisted.web.

It reads a connection's first request head itself (``request_head.py``, strict) and asks
``Routes`` (``rules.decide``, the session, the sandbox's address) where it goes. A request
forwarded to a cloud sandbox, on a plain TCP connection, goes with its connection to a relay
worker, which serves it from then on while its requests are like that one
(``relay/connection.py``); a preview's too (``oc-{id}-p{port}``), granted with no credential
and for its own port only. Every other connection (the main site, tickets, pages of ours,
TLS, local agents, WebSocket upgrades, anything unusual, or no worker ready) is handed with
every byte of that request to twisted.web's channel for good, and ``HostDispatcher`` serves
it; ``SandboxSite`` forwards its sandbox requests with ``forward.py``. Nothing is relayed
here.
"""

from __future__ import annotations

import ipaddress
import socket
import typing
from collections.abc import Callable
from typing import cast

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from cli_server.plumbing.client_address import TrustedProxies
from cli_server.plumbing.nodelay import no_delay
from cli_server.proxy.pages import PAGE_HEADERS, STATUS_TEXT, not_listening, page_html
from cli_server.proxy.relay.wire import Back, Grant
from cli_server.proxy.request_head import MAX_HEAD, RequestHead, head_end, parse_head
from cli_server.proxy.routes import Route, Routes
from cli_server.proxy.takeover import hand_over
from cli_server.proxy.upload import MAX_SANDBOX_BODY


@frozen
class _Lease:
    """A connection given to a worker (``workers.Lease``): its grant is renewed while the
    request it was given with would be routed the same way, and it comes back through the
    port's factory."""

    routes: Routes
    factory: RouterFactory
    head: RequestHead
    route: Route

    def renew(self) -> float | None | Deferred[float | None]:
        return self.routes.renewal(self.head, self.route)

    def take_back(self, sock: socket.socket, data: bytes, why: Back, sandbox_id: str) -> None:
        self.factory.take_back(sock, data, why, sandbox_id, self.route.port)


def _ip(host: str) -> bool:
    """A worker connects without a name lookup (which would block its loop)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class RouterReactor(typing.Protocol):
    """What routing uses of the reactor: its clock (IReactorTime, for the head's deadline)
    and IReactorSocket's adoption (a connection a worker gives back)."""

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall: ...

    def adoptStreamConnection(
        self, fileDescriptor: int, addressFamily: socket.AddressFamily, factory: ServerFactory
    ) -> None: ...


class Router(Protocol):
    _log = Logger()

    def __init__(
        self, routes: Routes, site: Site, address: IAddress | None, reactor: RouterReactor
    ) -> None:
        self._routes, self._site, self._address, self._reactor = routes, site, address, reactor
        self._buffer = b""  # bytes read and not yet used: the first request's head, at least
        self._head: RequestHead | None = None  # being routed
        self._gone = False  # closed, or the connection went to twisted.web or a worker
        self._timer: IDelayedCall | None = None
        self._peer = b""
        # Whether the connection may go to a worker: not when it just came back from one
        # unanswered (see ``RouterFactory.take_back``): twisted.web tries it then.
        self._may_pass = True
        # What it brought back from there, and the preview port it was granted for (if any).
        self.replay: tuple[bytes, Back, int | None] | None = None

    def connectionMade(self) -> None:
        if isinstance(self.factory, RouterFactory):
            self.factory.routing.add(self)
        no_delay(self.transport)
        self._peer = str(getattr(self.transport.getPeer(), "host", "")).encode()  # type: ignore[union-attr]
        self._timer = self._reactor.callLater(self._routes.timeout, self._expired)
        if self.replay is not None:
            data, why, port = self.replay
            self.replay = None
            if why is Back.TIMED_OUT:
                self._page(504, "The sandbox is not answering", "It took too long. Try again.")
                return
            if why is Back.FAILED:  # (as SandboxSite says it)
                text = STATUS_TEXT["starting"] if port is None else not_listening(port)
                self._page(503, *text, refresh=3)
                return
            self._may_pass = why is not Back.DROPPED
            self.dataReceived(data)

    def dataReceived(self, data: bytes) -> None:
        if self._gone:
            return  # (closing: what still arrives is not a request)
        self._buffer += data
        if self._head is not None:
            if len(self._buffer) > MAX_HEAD:
                self.transport.pauseProducing()  # type: ignore[union-attr]  # (until routed)
            return
        size = head_end(self._buffer)
        if size < 0:
            if len(self._buffer) > MAX_HEAD or b"\n\n" in self._buffer or b"\n\r\n" in self._buffer:
                self._hand_off()  # twisted.web reads (or refuses) such a head
            return
        head = parse_head(self._buffer[:size], MAX_SANDBOX_BODY) if size <= MAX_HEAD else None
        workers = self._routes.workers
        if head is None or not self._may_pass or workers is None or not workers.ready:
            self._hand_off()
            return
        self._head = head
        routing = self._routes.route(head)
        if isinstance(routing, Deferred):
            routing.addCallbacks(self._routed, self._route_failed, (head,))
            routing.addErrback(lambda f: self._log.failure("routing", f))
        else:
            self._routed(routing, head)

    @property
    def started(self) -> bool:
        return bool(self._buffer) or self._head is not None

    def _route_failed(self, failure: Failure) -> None:
        self._log.failure("routing", failure)
        if not self._gone:
            self._hand_off()  # (the head is still there) SandboxSite answers

    def _routed(self, route: Route | None, head: RequestHead) -> None:
        if self._gone:
            return
        if route is None or not self._pass_on(head, route):
            self._hand_off()

    def _pass_on(self, head: RequestHead, route: Route) -> bool:
        """The connection goes to a relay worker, which serves it from then on while its
        requests are like this one. True if one took it."""
        workers, factory = self._routes.workers, self.factory
        if (
            workers is None
            or not isinstance(factory, RouterFactory)
            or not _ip(route.endpoint.host)
        ):
            return False
        # (the main site's, web.site; a site without one trusts no proxy)
        trusted = getattr(self._site, "trusted_proxies", None)
        if isinstance(trusted, TrustedProxies) and trusted.trusts_peer(self._peer.decode()):
            return False  # a proxy's connection carries many clients; the grant names one
        live = self._routes.live
        if live is not None and live.revoked(route.whose, route.revocations):
            return False  # (this request was let in before; the connection is not)
        grant = Grant(
            head.fields.host,
            head.fields.cookies,
            route.authorization,
            self._peer,
            self._routes.scheme,
            route.sandbox_id.encode(),
            self._routes.base_host,
            int(route.role),
            route.endpoint.host.encode(),
            route.endpoint.port,
            MAX_SANDBOX_BODY,
            route.port or 0,
        )
        seconds = self._routes.grant_seconds(route)
        lease = _Lease(self._routes, factory, head, route)
        if not workers.serve(self.transport, grant, seconds, self._buffer, route.whose, lease):
            return False
        self._done()
        workers.let_go(self.transport)
        return True

    def _page(self, status: int, title: str, text: str, refresh: int | None = None) -> None:
        body = page_html(title, text, dashboard=self._routes.dashboard, refresh=refresh)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, title.encode())]
        head += [name + b": " + value + b"\r\n" for name, value in PAGE_HEADERS]
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)  # type: ignore[union-attr]
        self._done()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _hand_off(self) -> None:
        """twisted.web serves this connection from now on, starting with what was read."""
        data, self._buffer = self._buffer, b""
        self._done()
        transport = self.transport
        assert transport is not None
        if self._head is not None:
            cast(
                IPushProducer, transport
            ).resumeProducing()  # (a TCP or TLS connection's)  # (if routing paused it)
        channel = self._site.buildProtocol(self._address)
        hand_over(transport, channel)
        channel.makeConnection(transport)
        if data:
            channel.dataReceived(data)

    def _expired(self) -> None:
        self._timer = None
        if not self._gone:
            self._done()
            self.transport.loseConnection()  # type: ignore[union-attr]  # no head, or no route

    def _done(self) -> None:
        if isinstance(self.factory, RouterFactory):
            self.factory.routing.discard(self)
        self._gone = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self._done()


class RouterFactory(ServerFactory):
    """What each listening port serves: a Router per connection, over ``site``."""

    noisy = False

    def __init__(self, site: Site, routes: Routes, reactor: RouterReactor) -> None:
        self.site, self.routes, self._reactor = site, routes, reactor
        self.routing: set[Router] = set()  # connections not yet handed on or closed
        self._replay: tuple[bytes, Back, int | None] | None = None  # (the one being taken back)

    @property
    def in_flight(self) -> int:
        """Connections whose first request is being read or routed (a stopping server
        waits for them: they go to twisted.web or a worker, or close); not those that sent
        nothing yet (a browser's spare connection)."""
        return sum(1 for router in self.routing if router.started)

    def startFactory(self) -> None:
        self.site.doStart()

    def stopFactory(self) -> None:
        self.site.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Router:
        router = Router(self.routes, self.site, addr, self._reactor)
        router.factory = self
        router.replay, self._replay = self._replay, None
        return router

    def take_back(
        self, sock: socket.socket, data: bytes, why: Back, sandbox_id: str, port: int | None = None
    ) -> None:
        """A connection a worker served comes back: a Router takes it up as a new one,
        starting with ``data``, the bytes the browser sent that were not used (``port``: the
        preview port it was granted for)."""
        if why is not Back.ASK:
            self.routes.failed_sandbox(sandbox_id)  # it may have moved: ask the backend next time
        self._replay = (data, why, port)
        try:
            sock.setblocking(False)
            self._reactor.adoptStreamConnection(sock.fileno(), sock.family, self)
        except OSError:
            pass  # (the browser left meanwhile: nothing to take up)
        finally:
            self._replay = None
            sock.close()  # (the reactor has its own descriptor)
