"""A local sandbox whose tunnel another replica holds: the request goes there, over the
internal channel (``replicas/channel.py``), streaming both ways.

This replica (the one the browser reached) has applied every rule already: the session, the
role, the request's hygiene and the opencode credential are decided by ``SandboxSite`` as for
any request; what it sends is the cleaned request, signed. The holder's ``InternalChannel``
checks the signature and nothing else, and passes the request into the tunnel as it came. The
answer comes back through this replica's answer hygiene, as any sandbox's answer.

Where the channel listens: a path (``/_cli-relay/``) of the main listener, the one the
advertise URL names, so no second port has to be opened between replicas and reached by the
load balancer's health checks. It is taken only on a host that is not a sandbox's subdomain
(``HostDispatcher``), and refused with 403 unless signed with the replicas' shared key: a
docker or k8s sandbox reaching the main listener (for the Anthropic proxy) gets that 403, and a
process sandbox's door to the server (``anthropic/listener.py``) serves nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request

from cli_server.db.pool import Database
from cli_server.proxy.forward import Forwarder, Tunnels, client_endpoint, through_tunnel
from cli_server.proxy.hygiene import HOP_BY_HOP, clean_query
from cli_server.proxy.later import AnsweredLater
from cli_server.proxy.pages import (
    OPENCODE_SILENT,
    PAGE_HEADERS,
    STATUS_TEXT,
    not_listening,
    page_html,
)
from cli_server.proxy.websocket import splice
from cli_server.replicas import channel
from cli_server.replicas.holders import Holder, TunnelHolders
from cli_server.sandboxes.backend import Endpoint

# What the holder passes on of an internal request: all but these (our channel's headers, and
# what the hop or its framing decides).
_NOT_PASSED = HOP_BY_HOP | {b"host", b"content-length", *channel.HEADERS}


@define(eq=False)
class Keyring:
    """The channel's key, known once the database is up (``load``)."""

    key: bytes | None = None

    async def load(self, db: Database, configured: str | None) -> None:
        self.key = await channel.shared_key(db, configured)


@define(eq=False)
class ReplicaRelay:
    """This replica's end: finds the holder and signs what goes to it."""

    _holders: TunnelHolders
    _keyring: Keyring
    _clock: IReactorTime

    async def holder(self, sandbox_id: str) -> Holder | None:
        if self._keyring.key is None:
            return None  # (still starting: nothing relayed unsigned)
        return await self._holders.holder(sandbox_id)

    def forget(self, sandbox_id: str) -> None:
        self._holders.forget(sandbox_id)

    def prepare(
        self, request: Request, holder: Holder, sandbox_id: str, port: int | None, cleaned: Headers
    ) -> tuple[Endpoint, bytes, Headers]:
        """Where to send the request, its internal target, and its signed headers
        (``cleaned``: what the sandbox would get of it here)."""
        key = self._keyring.key
        assert key is not None  # (holder() finds none before)
        target = channel.Target(sandbox_id, port, clean_query(request.uri))
        host = request.getHeader(b"host") or b""
        cleaned.setRawHeaders(b"host", [f"{holder.host}:{holder.port}".encode()])
        for name, value in channel.sign(key, request.method, target, host, self._clock.seconds()):
            cleaned.setRawHeaders(name, [value])
        return Endpoint(holder.host, holder.port), channel.internal_path(target), cleaned


@define(eq=False)
class InternalChannel(AnsweredLater):
    """The holder's end: signed requests into the tunnels held here, nothing else."""

    _keyring: Keyring
    _tunnels: Tunnels  # TunnelHub
    _forwarder: Forwarder
    _reactor: IReactorTime  # (and IReactorTCP: WebSockets connect with it)
    _dashboard: str
    _on_data: Callable[[str], None] | None = None  # (sandbox_id): activity
    # (made with the key, once it is known; it remembers the nonces seen)
    _verifier: channel.Verifier | None = field(default=None, init=False)
    # how many nonces to remember in a window (None: the Verifier's own bound; tests lower it)
    nonce_limit: int | None = field(default=None, kw_only=True)
    _doing = "relaying {uri}"

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    async def _handle(self, request: Request) -> None:
        key = self._keyring.key
        if key is None:
            return self._page(request, 503, "Starting", "Try again in a moment.", refresh=3)
        if self._verifier is None:
            self._verifier = (
                channel.Verifier(key, self._reactor.seconds)
                if self.nonce_limit is None
                else channel.Verifier(key, self._reactor.seconds, limit=self.nonce_limit)
            )
        checked = self._verifier.check(request.method, request.uri, request.getHeader)
        if checked == channel.BUSY:  # (memory is bounded: refuse until nonces expire)
            return self._page(request, 503, "Busy", "Try again in a moment.", refresh=3)
        if isinstance(checked, str):
            peer = getattr(request.getClientAddress(), "host", "?")
            self._log.warn("internal channel: refused {peer} ({why})", peer=peer, why=checked)
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"forbidden\n")
            request.finish()
            return None
        sandbox_id, port = checked.sandbox_id, checked.port
        if self._tunnels.session(sandbox_id) is None:
            return self._offline(request)
        if port is not None and port not in self._tunnels.allowed_ports(sandbox_id):
            return self._page(
                request,
                403,
                f"Port {port} is not shared",
                f"Port {port} is not shared by this laptop: its agent runs without "
                f"--allow-port {port}.",
            )
        headers = _passed_on(request)
        endpoint = through_tunnel(sandbox_id, port)
        if (request.getHeader(b"upgrade") or b"").lower() == b"websocket":
            side = await splice(
                self._reactor,
                request,
                client_endpoint(self._reactor, endpoint, self._tunnels),
                headers,
                lambda: self._touch(sandbox_id),
                target=checked.uri,
            )
            ok = side is not None
        else:
            ok = await self._forwarder.forward(
                request, endpoint, None, b"http", target=checked.uri, headers=headers
            )
        if ok:
            self._touch(sandbox_id)
        elif self._tunnels.session(sandbox_id) is None:
            self._offline(request)
        elif port is not None:
            self._page(request, 503, *not_listening(port), refresh=3)
        else:
            self._page(request, 502, *OPENCODE_SILENT, refresh=5)

    def _touch(self, sandbox_id: str) -> None:
        if self._on_data is not None:
            self._on_data(sandbox_id)

    def _offline(self, request: Request) -> None:
        title, text = STATUS_TEXT["offline"]
        self._page(request, 503, title, text, refresh=3)

    def _page(
        self,
        request: Request,
        status: int,
        title: str,
        text: str,
        *,
        refresh: int | None = None,
        resume: bool = False,
        then: str | None = None,
    ) -> None:
        if request.finished or request.channel is None or request.startedWriting:
            return
        request.setResponseCode(status)
        for name, value in PAGE_HEADERS:
            request.setHeader(name, value)
        page = page_html(
            title, text, dashboard=self._dashboard, refresh=refresh, resume=resume, then=then
        )
        request.write(page)
        request.finish()


def _passed_on(request: Request) -> Headers:
    """The relaying replica's cleaned headers, with the browser's Host back in place."""
    headers = Headers()
    for name, values in request.requestHeaders.getAllRawHeaders():
        if name.lower() not in _NOT_PASSED:
            headers.setRawHeaders(name, values)
    headers.setRawHeaders(b"host", [request.getHeader(channel.HOST) or b""])
    return headers
