"""The Site's request class: caps how much of a request body we keep."""

from __future__ import annotations

from functools import partial
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.web import http, server

from cli_server.client_address import TrustedProxies
from cli_server.nodelay import no_delay
from cli_server.proxy.hosts import sandbox_for_host
from cli_server.web.streamed_body import StreamedBody

MAX_BODY = 1024 * 1024  # the API's JSON bodies
MAX_SANDBOX_BODY = 64 * 1024 * 1024  # uploads through a sandbox's proxy
MAX_ANTHROPIC_BODY = 32 * 1024 * 1024  # prompts with images and long contexts


class BoundedRequest(server.Request):
    """Stops storing a body past its cap; handlers then answer 413. Streams bodies sent to a
    sandbox's subdomain instead of storing them.

    twisted.web reads the whole body before rendering, spilling large ones to a temporary file;
    without a cap a client could fill the disk with one request. A request with a body for a
    sandbox is rendered as soon as its headers are in, and its body is handed on while it
    arrives (``streamed_body``), so uploads have no size limit and take no disk.
    """

    body_too_large = False
    streamed_body: StreamedBody | None = None
    _received = 0
    _cap: int | None = None

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length == 0 or not self._for_sandbox():
            return
        channel: Any = self.channel
        line: list[Any] = [getattr(channel, n, None) for n in ("_command", "_path", "_version")]
        if None in line:
            return  # (a twisted.web without these: buffer as before)
        opened: Any = self.content
        if not isinstance(opened, BytesIO):
            opened.close()  # the temporary file twisted.web opened for a large body
        self.content = BytesIO()
        self.streamed_body = StreamedBody(channel.transport, length)
        # Render in a turn of our own: never inside the channel's parsing of this connection.
        channel.callLater(0, partial(self._render_early, *line))

    def _for_sandbox(self) -> bool:
        return for_sandbox(self, getattr(self.channel, "site", None))

    def _render_early(self, command: bytes, path: bytes, version: bytes) -> None:
        if getattr(self, "channel", None) is None:
            return  # the browser left already
        self.method, self.uri, self.clientproto = command, path, version
        self.path, sep, query = path.partition(b"?")
        self.args = http.parse_qs(query, 1) if sep else {}
        self.process()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.streamed_body is not None:
            self.streamed_body.finish()  # rendering started when the headers came
        else:
            super().requestReceived(command, path, version)

    def getClientAddress(self) -> IAddress:
        """The peer, or the client a trusted proxy forwarded for: what the login limits, the
        access log and the sandboxes' X-Forwarded-For all see (``client_address``)."""
        peer: IAddress = super().getClientAddress()
        trusted = getattr(getattr(self, "channel", None), "site", None)
        trusted = getattr(trusted, "trusted_proxies", None)
        host = getattr(peer, "host", None)
        if not isinstance(trusted, TrustedProxies) or not isinstance(host, str):
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
        channel: Any = self.channel
        if not getattr(channel, "no_delay", False):  # once per connection
            channel.no_delay = True
            no_delay(channel.transport)
        super().process()

    def _answering_early(self) -> bool:
        body = self.streamed_body
        return body is not None and not body.complete and self.channel is not None

    def write(self, data: bytes) -> None:
        if not self.startedWriting and self._answering_early():
            # Answered before the whole body came (an error page, an early reply): this
            # connection cannot carry another request, and says so.
            self.channel.persistent = False
            self.setHeader(b"connection", b"close")
        super().write(data)

    def finish(self) -> None:
        if self._answering_early():
            channel: Any = self.channel
            channel.persistent = False
            assert self.streamed_body is not None
            self.streamed_body.stopProducing()
            # What the browser still sends is dropped: over TLS, data keeps arriving after
            # the channel's loseConnection, and the channel must not parse it as a request.
            channel.dataReceived = _discard
        super().finish()

    def handleContentChunk(self, data: bytes) -> None:
        if self.streamed_body is not None:
            return self.streamed_body.feed(data)
        if self._cap is None:
            if self._for_sandbox():
                self._cap = MAX_SANDBOX_BODY
            elif getattr(self.channel, "_path", b"").startswith(b"/proxy/anthropic/"):
                # (the request line is parsed before the body; ``uri`` is set only after it)
                self._cap = MAX_ANTHROPIC_BODY
            else:
                self._cap = MAX_BODY
        self._received += len(data)
        if self._received > self._cap:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


def _discard(data: bytes) -> None:
    pass


def for_sandbox(request: Any, site: Any) -> bool:
    """Whether the request's Host is a sandbox subdomain, by the router's own rule."""
    base_host = getattr(site, "base_host", None)
    host = request.getHeader(b"host")
    if base_host is None:  # (a site built without one, in tests)
        return (host or b"").lower().startswith(b"oc-")
    return sandbox_for_host(host, base_host)[0]


class _Redacted:
    """A request as the access log sees it: credential query parameters blanked out."""

    def __init__(self, request: http.Request) -> None:
        self._request = request
        path, sep, query = request.uri.partition(b"?")
        if sep:
            query = _redact(query)
        self.uri = path + sep + query

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


_CREDENTIALS = frozenset({b"token", b"ticket", b"auth_token", b"code"})


def _redact(query: bytes) -> bytes:
    """Blanks credential parameters, their names compared as a query parser decodes them
    (``%74oken=`` is ``token=`` to ``parse_qs``, so the tunnel accepts it)."""
    parts = query.split(b"&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition(b"=")
        if eq and unquote_to_bytes(name.replace(b"+", b" ")).lower() in _CREDENTIALS:
            parts[i] = name + b"=redacted"
    return b"&".join(parts)


def redacting_log_formatter(timestamp: str, request: http.Request) -> str:
    line: str = http.combinedLogFormatter(timestamp, _Redacted(request))
    return line


class QuietSandboxSite(server.Site):
    """Access-logs the main site only (a sandbox's UI makes hundreds of asset, event and
    terminal requests per minute, and logging each would cost more than proxying it), and
    never a credential in a query string (the tunnel accepts ``?token=``)."""

    def __init__(
        self,
        resource: Any,
        base_host: bytes | None = None,
        trusted_proxies: TrustedProxies | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, logFormatter=redacting_log_formatter, **kwargs)
        self.base_host = base_host
        self.trusted_proxies = trusted_proxies or TrustedProxies()

    def log(self, request: http.Request) -> None:
        if not for_sandbox(request, self):
            super().log(request)
