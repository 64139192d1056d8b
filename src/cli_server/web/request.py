"""The Site's request class: request bodies are kept in memory, under caps, never on disk."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from functools import partial
from io import BytesIO
from ipaddress import ip_network
from typing import Protocol, cast, runtime_checkable

from attrs import define, field
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IPushProducer, ITCPTransport
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest

from cli_server.plumbing.client_address import TrustedProxies
from cli_server.plumbing.nodelay import no_delay
from cli_server.plumbing.request_line import RequestLine
from cli_server.proxy.hosts import sandbox_for_host
from cli_server.proxy.upload import MAX_SANDBOX_BODY, StreamedBody
from cli_server.replicas.channel import PREFIX as INTERNAL_PREFIX
from cli_server.web.open_requests import OpenRequests

MAX_BODY = 1024 * 1024  # the API's JSON bodies
MAX_ANTHROPIC_BODY = 32 * 1024 * 1024  # prompts with images and long contexts
MAX_BODIES_IN_MEMORY = 256 * 1024 * 1024  # every body being received or served, together
LINGER = 2.0  # seconds we read and drop the rest of a refused body before closing

_ANTHROPIC_PATH = b"/proxy/anthropic/"


@define
class BodyBudget:
    """The bytes of request bodies held in memory by all requests of all our sites together:
    past ``limit`` a body is refused (503) rather than stored, so many slow or unfinished
    bodies cost a bounded amount of memory and no disk. One source (a client address, an
    IPv6 /64, or one sandbox's door) may hold at most ``share`` of it, so a single one cannot
    keep everyone else's bodies out."""

    limit: int
    share: int
    held: int = 0
    _by_source: dict[Hashable, int] = field(factory=dict)

    def has_room(self, source: Hashable, size: int) -> bool:
        mine = self._by_source.get(source, 0)
        return self.held + size <= self.limit and mine + size <= self.share

    def take(self, source: Hashable, size: int) -> bool:
        if not self.has_room(source, size):
            return False
        self.held += size
        self._by_source[source] = self._by_source.get(source, 0) + size
        return True

    def give_back(self, source: Hashable, size: int) -> None:
        self.held -= size
        left = self._by_source.pop(source, 0) - size
        if left > 0:
            self._by_source[source] = left


BODIES = BodyBudget(
    MAX_BODIES_IN_MEMORY, MAX_BODIES_IN_MEMORY // 4
)  # shared by the main site and the sandboxes' doors


@runtime_checkable
class RequestSite(Protocol):
    """The site a ``BoundedRequest`` belongs to, as the request reads it: the main site
    (``serving.QuietSandboxSite``) or a sandbox's door (``anthropic.listener``). A plain
    twisted.web Site has none of this; its requests get the defaults (the shared budget, no
    trusted proxy, no drain, sandbox hosts told by their "oc-" prefix)."""

    @property
    def base_host(self) -> bytes | None:
        """The sandbox subdomains' base domain (None: told by their "oc-" prefix)."""

    @property
    def trusted_proxies(self) -> TrustedProxies | None:
        """Whose X-Forwarded-For is believed."""

    @property
    def requests(self) -> OpenRequests | None:
        """The requests open on it, which a drain waits for."""

    @property
    def only_anthropic(self) -> bool:
        """A sandbox's door: its bodies are prompts, read whole and capped."""

    @property
    def body_budget(self) -> BodyBudget | None:
        """Its bodies' budget; None: the shared ``BODIES``."""


# Whether a site's class is a RequestSite, decided once per class: a runtime check against a
# Protocol costs ~20 µs, and a request asks several times (once per body chunk, too). Every
# site class of ours sets the attributes on each instance, so the class decides.
_REQUEST_SITES: dict[type, bool] = {}


def request_site(site: object) -> RequestSite | None:
    """``site`` as a RequestSite; None for a plain twisted.web Site (or none: a request whose
    client left)."""
    kind = type(site)
    known = _REQUEST_SITES.get(kind)
    if known is None:
        known = _REQUEST_SITES[kind] = isinstance(site, RequestSite)
    return cast(RequestSite, site) if known else None


class BoundedRequest(server.Request):
    """Keeps a body in memory under its route's cap and the shared ``BodyBudget``; refuses one
    that would not fit as soon as that is known. Streams bodies sent to a sandbox's subdomain
    instead of storing them.

    twisted.web reads the whole body before rendering, spilling any body over 100 kB to a
    temporary file, before any handler has checked a token; unfinished bodies on a few
    connections could fill the host's disk. We never let it open that file. A Content-Length
    above the route's cap, a body that grows past it (chunked), or one that no longer fits the
    budget is answered at once (413, or 503 for the budget), before the rest is read, and the
    connection is closed. A request with a body for a sandbox is rendered as soon as its
    headers are in, and its body is handed on while it arrives (``streamed_body``), so uploads
    have no size limit and take no disk.
    """

    body_too_large = False
    streamed_body: StreamedBody | None = None
    _received = 0  # body bytes held in memory, counted in the budget
    _cap: int | None = None
    _early = False  # rendered or answered before the whole body came
    _body_done = False
    _refusal: tuple[int, str, str] | None = None  # (status, code, message) once refused
    _source_key: Hashable | None = None
    _open_in: OpenRequests | None = None  # the site's, from its headers to its end
    # (method, target, version) as soon as the request line is read, before the headers; set
    # by ``plumbing.request_line.RequestLineChannel``, the channel of the sites that use this
    # class (None on another channel: a sandbox's body is then buffered, capped)
    request_line: RequestLine | None = None

    def gotLength(self, length: int | None) -> None:
        # (not twisted.web's: it opens a temporary file for a body over 100 kB)
        self.content = BytesIO()
        channel = self.channel
        site = self._site()
        requests = site.requests if site is not None else None
        if requests is not None:
            self._open_in = requests
            requests.opened(self)
        path = self.request_line[1] if self.request_line is not None else b""
        if length == 0:
            return
        if self._for_sandbox() or path.startswith(INTERNAL_PREFIX):  # (relayed: streamed too)
            line = self.request_line
            if line is None:
                self._cap = MAX_SANDBOX_BODY  # (a twisted.web without these: buffer, capped)
                return
            # (a TCP or TLS connection: both pause, though TLS does not declare IPushProducer)
            self.streamed_body = StreamedBody(cast(IPushProducer, channel.transport), length)
            self._early = True
            # Render in a turn of our own: never inside the channel's parsing of this connection.
            channel.callLater(0, partial(self._render_early, *line))
            return
        self._cap = MAX_ANTHROPIC_BODY if path.startswith(_ANTHROPIC_PATH) else MAX_BODY
        if length is not None and length > self._cap:
            self._refuse_too_large()
        elif not self._budget().has_room(self._source(), length or 1):  # (counted as they come)
            self._refuse_busy()

    def _site(self) -> RequestSite | None:
        # (the channel is None once the client left)
        return request_site(getattr(self.channel, "site", None))

    def _budget(self) -> BodyBudget:
        site = self._site()
        budget = site.body_budget if site is not None else None
        return BODIES if budget is None else budget

    def _source(self) -> Hashable:
        """Whose bodies these are, for the budget's shares: a door's sandbox, else the client
        address (an IPv6 address by its /64, which one client usually has whole)."""
        if self._source_key is None:
            site = self._site()
            if site is not None and site.only_anthropic:
                self._source_key = ("door", id(site))
            else:
                host = str(getattr(self.getClientAddress(), "host", ""))
                if ":" in host:
                    try:
                        host = str(ip_network(f"{host}/64", strict=False))
                    except ValueError:
                        pass
                self._source_key = ("address", host)
        return self._source_key

    def _for_sandbox(self) -> bool:
        site = self._site()
        if site is not None and site.only_anthropic:
            return False  # a sandbox's door: its bodies are prompts, read whole and capped
        return for_sandbox(self, site)

    def _set_line(self, command: bytes, path: bytes, version: bytes) -> None:
        self.method, self.uri, self.clientproto = command, path, version
        self.path, sep, query = path.partition(b"?")
        self.args = http.parse_qs(query, 1) if sep else {}

    def _render_early(self, command: bytes, path: bytes, version: bytes) -> None:
        if getattr(self, "channel", None) is None:
            return  # the browser left already
        self._set_line(command, path, version)
        self.process()

    # -- refusing a body ---------------------------------------------------------------------

    def _refuse_too_large(self) -> None:
        assert self._cap is not None
        mib = self._cap // (1024 * 1024)
        self._refuse(413, "payload_too_large", f"the request body is larger than {mib} MiB")

    def _refuse_busy(self) -> None:
        self._refuse(
            503,
            "busy",
            "the server is receiving too many request bodies at once; try again in a moment",
        )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Stops storing the body and answers as soon as we may, without reading the rest."""
        self.body_too_large = True
        self._refusal = (status, code, message)
        self._release()
        self.content = BytesIO()
        line = self.request_line
        if line is not None and not self._early:
            self._early = True
            self.channel.callLater(0, partial(self._answer_refusal, *line))

    def _answer_refusal(self, command: bytes, path: bytes, version: bytes) -> None:
        if getattr(self, "channel", None) is None or self.finished:
            return  # the client left already
        assert self._refusal is not None
        status, code, message = self._refusal
        self._set_line(command, path, version)
        self.site = self.channel.site  # type: ignore[attr-defined]  # (set by Site.buildProtocol)
        if self.path.startswith(_ANTHROPIC_PATH):  # in Anthropic's shape, for SDKs and opencode
            kind = "request_too_large" if status == 413 else "overloaded_error"
            body: dict[str, object] = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            body = {"error": {"code": code, "message": message}}
        data = json.dumps(body).encode()
        self.setResponseCode(status)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"cache-control", b"no-store")
        self.setHeader(b"content-length", b"%d" % len(data))
        if status == 503:
            self.setHeader(b"retry-after", b"5")
        self.write(data)
        self.finish()

    # -- the channel's calls -----------------------------------------------------------------

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._body_done = True
        if self.streamed_body is not None:
            self.streamed_body.finish()  # rendering started when the headers came
        elif self._refusal is not None:
            if not self._early:  # (a twisted.web without the request line early)
                self._answer_refusal(command, path, version)
        else:
            super().requestReceived(command, path, version)

    def handleContentChunk(self, data: bytes) -> None:
        if self.streamed_body is not None:
            return self.streamed_body.feed(data)
        if self._refusal is not None:
            return  # refused: what still comes is dropped
        if self._cap is None:
            self._cap = MAX_BODY
        if self._received + len(data) > self._cap:
            return self._refuse_too_large()
        if not self._budget().take(self._source(), len(data)):
            return self._refuse_busy()
        self._received += len(data)
        cast(BytesIO, self.content).write(data)  # (ours: made in gotLength)

    def _release(self) -> None:
        if self._received:
            self._budget().give_back(self._source(), self._received)
            self._received = 0

    def getClientAddress(self) -> IAddress:
        """The peer, or the client a trusted proxy forwarded for: what the login limits, the
        access log and the sandboxes' X-Forwarded-For all see (``client_address``)."""
        peer: IAddress = super().getClientAddress()
        # (the channel is None once the client left)
        site = request_site(getattr(getattr(self, "channel", None), "site", None))
        trusted = site.trusted_proxies if site is not None else None
        host = getattr(peer, "host", None)  # (a UNIX socket's address has none)
        if trusted is None or not isinstance(host, str):
            return peer
        if not trusted.trusts_peer(host):
            return peer
        headers = self.requestHeaders
        client = trusted.client(
            host,
            headers.getRawHeaders(b"x-forwarded-for", []),
            headers.getRawHeaders(b"forwarded", []),
        )
        return (IPv6Address if ":" in client else IPv4Address)("TCP", client, 0)

    def process(self) -> None:
        channel = self.channel
        if not getattr(channel, "no_delay", False):  # once per connection (our mark on it)
            channel.no_delay = True  # type: ignore[attr-defined]
            no_delay(channel.transport)
        super().process()

    def _answering_early(self) -> bool:
        return self._early and not self._body_done and self.channel is not None

    def write(self, data: bytes) -> None:
        requests = self._open_in
        draining = requests is not None and requests.draining and self.channel is not None
        if not self.startedWriting and draining:
            # The server stops: this connection carries no other request.
            self.channel.persistent = False
            self.setHeader(b"connection", b"close")
        if not self.startedWriting and self._answering_early():
            # Answered before the whole body came (an error page, an early reply): this
            # connection cannot carry another request, and says so.
            self.channel.persistent = False
            self.setHeader(b"connection", b"close")
        super().write(data)

    def finish(self) -> None:
        if self._answering_early():
            channel = self.channel
            channel.persistent = False
            if self.streamed_body is not None:
                self.streamed_body.stopProducing()
            # What the browser still sends is dropped: over TLS, data keeps arriving after
            # the channel's loseConnection, and the channel must not parse it as a request.
            channel.dataReceived = _discard  # type: ignore[method-assign]
            close = partial(_lingering_close, channel, channel.loseConnection)
            channel.loseConnection = close  # type: ignore[method-assign]
        self._release()
        self._closed()
        super().finish()

    def connectionLost(self, reason: Failure) -> None:
        self._release()
        self._closed()
        super().connectionLost(reason)

    def _closed(self) -> None:
        if self._open_in is not None:
            self._open_in.closed(self)


def _discard(data: bytes) -> None:
    pass


def _lingering_close(channel: http.HTTPChannel, close: Callable[[], None]) -> None:
    """Closes a connection answered before its body came so that the client sees the answer.

    Closing a TCP socket with unread data in it sends a reset, and the client's system drops
    our answer with it. So we close our side for writing only, drop what still comes for a
    moment (``LINGER``), and then close (TLS and other transports: at once, as before)."""
    transport = channel.transport
    if not ITCPTransport.providedBy(transport):
        close()
        return
    transport.loseWriteConnection()
    channel.callLater(LINGER, close)


def for_sandbox(request: http.Request, site: object) -> bool:
    """Whether the request's Host is a sandbox subdomain, by the router's own rule."""
    ours = request_site(site)
    base_host = ours.base_host if ours is not None else None
    host = request.getHeader(b"host")
    if base_host is None:  # (a site built without one, in tests)
        return (host or b"").lower().startswith(b"oc-")
    return sandbox_for_host(host, base_host)[0]


def client_host(request: IRequest) -> str:
    """The client's address as text (behind --trusted-proxies: the forwarded client, see
    ``Request.getClientAddress``); "unix" for a UNIX-socket peer."""
    return str(getattr(request.getClientAddress(), "host", "unix"))
