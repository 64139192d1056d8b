"""``oc-{id}.{base_domain}``: browser auth, status pages, and the proxy to opencode; and the
same for ``oc-{id}-p{port}.{base_domain}``, a preview of a port in the sandbox, which never
gets opencode's credential."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qs

from attrs import define
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from cli_server.domain.errors import ApiError
from cli_server.domain.roles import Role
from cli_server.plumbing.metrics import Metrics
from cli_server.proxy import rules
from cli_server.proxy.access import Access, SandboxAccess
from cli_server.proxy.endpoints import RunningEndpoints
from cli_server.proxy.forward import (
    Forwarder,
    Tunnels,
    client_endpoint,
    through_tunnel,
    upstream_headers,
)
from cli_server.proxy.hygiene import (
    clearing_cookies,
    cookie_values,
    only,
)
from cli_server.proxy.later import AnsweredLater
from cli_server.proxy.live import LiveStreams, Whose
from cli_server.proxy.pages import (
    OPENCODE_SILENT,
    PAGE_HEADERS,
    STATUS_TEXT,
    landing_html,
    not_listening,
    page_html,
)
from cli_server.proxy.replica_relay import ReplicaRelay
from cli_server.proxy.websocket import splice
from cli_server.sandboxes.activity import ActivityRecorder
from cli_server.sandboxes.manager import SandboxManager

_RESUME_PATH = b"/_cli/resume"
_GUEST_REFUSAL = json.dumps(
    {
        "name": "Forbidden",
        "data": {"message": "You are a guest in this workspace: opencode is read-only for you."},
    }
).encode()
_GUEST_PREVIEW_REFUSAL = json.dumps(
    {
        "name": "Forbidden",
        "data": {"message": "You are a guest in this workspace: previews are read-only for you."},
    }
).encode()
_LAND_PATH = b"/_cli/open"  # where a sandbox link lands once signed in (landing_html)
_PAGES = {  # status, title, text
    rules.Why.BAD_TARGET: (400, "Bad request", "That address cannot be served."),
    rules.Why.NOT_FOUND: (404, "No such sandbox", "It does not exist, or you may not see it."),
    rules.Why.CROSS_ORIGIN: (403, "Not allowed", "Another site's page cannot act on this sandbox."),
    rules.Why.READ_ONLY: (
        403,
        "Read-only access",
        "Guests can look, but not prompt, type or change anything.",
    ),
}


@define(eq=False)
class SandboxCookie:
    """The subdomain's own cookie: host-only (no Domain), so each sandbox origin has its own."""

    secure: bool
    lifetime: float

    @property
    def name(self) -> bytes:
        return b"__Host-cli_sandbox" if self.secure else b"cli_sandbox"

    def clear_doubles(self, request: Request, base_host: bytes) -> None:
        """A request with more than one of our cookies (one tossed by another sandbox's page
        for the parent domain, say) is told to forget them all."""
        cookies = request.requestHeaders.getRawHeaders(b"cookie", [])
        if len(cookie_values(cookies, self.name)) > 1:
            for value in clearing_cookies(self.name, base_host, request.path, self.secure):
                request.cookies.append(value)

    def write(self, request: Request, token: str) -> None:
        request.addCookie(
            self.name,
            token.encode("ascii"),
            path=b"/",
            httpOnly=True,
            secure=self.secure,
            sameSite="lax",
            max_age=str(int(self.lifetime)),
        )


@define(eq=False)
class SandboxSite(AnsweredLater):
    """Serves every request whose Host is a sandbox subdomain (see HostDispatcher)."""

    _access: SandboxAccess
    _manager: SandboxManager
    _endpoints: RunningEndpoints
    _activity: ActivityRecorder
    _forwarder: Forwarder
    _cookie: SandboxCookie
    _reactor: IReactorTime  # (and IReactorTCP: WebSockets connect with it)
    _base_host: bytes
    _scheme: bytes
    _dashboard: str
    _metrics: Metrics | None = None
    _tunnels: Tunnels | None = None  # TunnelHub: how local sandboxes are reached
    live: LiveStreams | None = None  # what runs here, cut when its session is revoked
    relay: ReplicaRelay | None = None  # to the replica holding a local sandbox's tunnel
    _doing = "proxying {uri}"

    @property
    def forwarder(self) -> Forwarder:
        """What sends its requests on to the sandboxes (read-only: for tests)."""
        return self._forwarder

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    @property
    def _listener(self) -> rules.Listener:
        return rules.Listener(self._scheme, self._base_host, self._cookie.name)

    def _finish(self, request: Request, body: bytes) -> None:
        if request.finished or request.channel is None:
            return
        request.write(body)
        request.finish()

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
        request.setResponseCode(status)
        for name, value in PAGE_HEADERS:
            request.setHeader(name, value)
        if resume:
            # The Resume form must carry this page's Origin: from a no-referrer page a browser
            # sends ``Origin: null``, which only fetch metadata can place, and browsers send
            # none over plain http (but to localhost). The page's URL still reaches nobody else.
            request.setHeader(b"referrer-policy", b"same-origin")
        page = page_html(
            title, text, dashboard=self._dashboard, refresh=refresh, resume=resume, then=then
        )
        self._finish(request, page)

    def _asked(self, request: Request) -> rules.Asked:
        headers = request.requestHeaders
        return rules.Asked(
            request.getHeader(b"host") or b"",
            request.method,
            request.uri,
            _upgrade(request),
            only(headers.getRawHeaders(b"origin", [])),
            only(headers.getRawHeaders(b"sec-fetch-site", [])),
            tuple(headers.getRawHeaders(b"cookie", [])),
            _page_load(request),
        )

    async def _handle(self, request: Request) -> None:
        asked = self._asked(request)
        screened = rules.screen(asked, self._listener)
        if isinstance(screened, rules.Page):
            return self._refused(request, screened, None)
        if getattr(request, "body_too_large", False):
            return self._page(request, 413, "Too large", "That upload is larger than 64 MiB.")
        if isinstance(screened, rules.Ours):
            return await self._redeem(request, screened.sandbox_id, screened.port)
        token = rules.session_token(asked, self._listener)
        sandbox_id, port = screened
        access = await self._access.lookup(token, sandbox_id, port) if token else None
        session = rules.Session(access.role, access.status, access.is_local) if access else None
        verdict = rules.decide(asked, self._listener, session)
        if isinstance(verdict, rules.Ours) and access is not None:
            if verdict.path == _RESUME_PATH:
                return await self._resume(request, access)
            if verdict.path == _LAND_PATH and (access.is_local or port is not None):
                return self._see_other(request, b"/")  # (on the laptop; or not opencode)
            if verdict.path == _LAND_PATH:  # into opencode on the workspace disk
                for name, value in PAGE_HEADERS:
                    request.setHeader(name, value)
                page = landing_html(read_only=access.role < Role.DEVELOPER)
                return self._finish(request, page)
        if not isinstance(verdict, rules.Forward):
            return self._refused(request, verdict, access)
        assert access is not None  # (decide forwards only with a session)
        sandbox_id, upgrade = verdict.sandbox_id, asked.upgrade
        # opencode's credential goes to opencode only, never to a preview's port
        password = access.password if port is None else None
        holder = None  # another replica holding the tunnel: relayed there, decided here
        if access.is_local:
            if self._tunnels is None or self._tunnels.session(sandbox_id) is None:
                if self.relay is not None:
                    holder = await self.relay.holder(sandbox_id)
                if holder is None:
                    return self._status_page(request, "offline", access)
                endpoint = through_tunnel(sandbox_id, port)  # (replaced below)
            elif port is not None and port not in self._tunnels.allowed_ports(sandbox_id):
                return self._not_shared(request, port)
            else:
                endpoint = through_tunnel(sandbox_id, port)
        else:
            running = await self._endpoints.get(sandbox_id, port)
            if running is None:
                return self._status_page(request, "starting", access)
            endpoint = running
        if port is None:
            self._activity.touch(sandbox_id)
        # (a preview counts once its app answers: an open "nothing is listening" page, which
        # reloads itself, must not keep a sandbox awake for ever)
        if self._metrics is not None:
            self._metrics.proxied.labels("websocket" if upgrade else "http").inc()
        # Listed until it ends, for revocation to cut (a terminal, an event stream, a download)
        live = self.live
        handle = None
        if live is not None:
            transport = request.channel.transport if request.channel is not None else None
            if transport is None:
                return None  # the browser left meanwhile
            whose = Whose(access.user_id, access.workspace_id, sandbox_id)
            # (TCP, TLS and tunnel transports all have it; ITransport does not declare it)
            abort: Callable[[], None] = getattr(transport, "abortConnection")  # noqa: B009
            handle = live.add(whose, access.revocations, abort)
            if handle is None:
                return self._revoked(request)
            # (fires when the answer is complete or the connection is lost; forward() returns
            # once the head is relayed, while the body may stream for hours)
            request.notifyFinish().addBoth(lambda _: live.remove(handle))
        target = relayed = None
        if holder is not None and self.relay is not None:
            endpoint, target, relayed = self.relay.prepare(
                request, holder, sandbox_id, port, upstream_headers(request, password, self._scheme)
            )
        if upgrade:
            headers = relayed or upstream_headers(request, password, self._scheme)
            side = await splice(
                self._reactor,
                request,
                client_endpoint(self._reactor, endpoint, self._tunnels),
                headers,
                lambda: self._activity.touch(sandbox_id),
                target=target,
            )
            ok = side is not None
            if live is not None and side is not None:  # (the request never finishes now)
                side.on_lost = lambda: live.remove(handle)
                if side.lost:
                    live.remove(handle)
        else:
            ok = await self._forwarder.forward(
                request, endpoint, password, self._scheme, target=target, headers=relayed
            )
        if ok and port is not None:
            self._activity.touch(sandbox_id)
        if not ok and not access.is_local:
            self._endpoints.forget(sandbox_id)  # it may have moved: ask the backend next time
        if not ok and holder is not None and self.relay is not None:
            self.relay.forget(sandbox_id)  # the next try asks who holds it now
            self._page(
                request,
                502,
                "The agent's server is not answering",
                "The server this laptop's agent is connected to did not answer; the agent "
                "reconnects to another one by itself.",
                refresh=3,
            )
        elif (
            not ok
            and access.is_local
            and (self._tunnels is None or self._tunnels.session(sandbox_id) is None)
        ):
            self._status_page(request, "offline", access)  # the agent left meanwhile
        elif not ok and port is not None:
            self._page(request, 503, *not_listening(port), refresh=3)
        elif not ok and access.is_local:
            self._page(request, 502, *OPENCODE_SILENT, refresh=5)
        elif not ok:
            self._status_page(request, "starting", access)

    def _refused(
        self, request: Request, verdict: rules.Page | rules.Ours, access: Access | None
    ) -> None:
        """The page ``rules.decide`` chose instead of the sandbox's answer."""
        why = verdict.why if isinstance(verdict, rules.Page) else rules.Why.NOT_FOUND
        if why is rules.Why.SIGN_IN and verdict.sandbox_id is not None:
            # A browser sent here without a session of ours (a shared link, a bookmark, a
            # session that ended): to the dashboard's page that opens this sandbox for its
            # members, after signing in there if need be. A fixed address: no open redirect.
            # A preview's brings the user back to its port (the page opens that again).
            self._cookie.clear_doubles(request, self._base_host)
            request.setHeader(b"referrer-policy", b"no-referrer")
            query = "" if verdict.port is None else f"?port={verdict.port}"
            opener = f"{self._dashboard}open/{verdict.sandbox_id}{query}"
            self._see_other(request, opener.encode("ascii"))
        elif why is rules.Why.SIGNED_OUT:
            self._revoked(request)
        elif why is rules.Why.READ_ONLY_API:  # (in opencode's error shape, for its UI to show)
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            is_preview = isinstance(verdict, rules.Page) and verdict.port is not None
            self._finish(request, _GUEST_PREVIEW_REFUSAL if is_preview else _GUEST_REFUSAL)
        elif why is rules.Why.NOT_RUNNING and access is not None:
            self._status_page(request, access.status, access)
        elif why is rules.Why.NOT_FOUND and isinstance(verdict, rules.Page) and verdict.detail:
            self._page(request, 404, "No such address", verdict.detail)
        else:
            self._page(request, *_PAGES.get(why, _PAGES[rules.Why.NOT_FOUND]))

    def _not_shared(self, request: Request, port: int) -> None:
        self._page(
            request,
            403,
            f"Port {port} is not shared",
            f"Port {port} is not shared by this laptop: its agent runs without --allow-port"
            f" {port}.",
        )

    def _revoked(self, request: Request) -> None:
        self._cookie.clear_doubles(request, self._base_host)
        self._page(
            request,
            401,
            "Open this sandbox from the dashboard",
            "Your access here has ended or was never granted.",
        )

    def _status_page(self, request: Request, status: str, access: Access) -> None:
        title, text = STATUS_TEXT.get(status, ("Unavailable", "Try again in a moment."))
        if status == "failed" and access.error:
            text = f"{access.error[:300].rstrip('.')}. {text}"
        can_resume = status in ("paused", "failed") and access.role >= Role.DEVELOPER
        refresh = None if status in ("paused", "failed") else 3
        then = _after_start(request.uri, access)
        self._page(request, 503, title, text, refresh=refresh, resume=can_resume, then=then)

    async def _redeem(self, request: Request, sandbox_id: str, port: int | None) -> None:
        request.setHeader(b"referrer-policy", b"no-referrer")
        query = parse_qs(request.uri.partition(b"?")[2].decode("latin-1"))
        ticket = (query.get("ticket") or [""])[0]
        token = await self._access.redeem(ticket, sandbox_id, port) if ticket else None
        landing = _LAND_PATH if port is None else b"/"  # (a preview: the app's own page)
        if token is None:
            # A used or expired link (reloaded, from history) while already signed in here:
            # the work, not an error. The ticket grants nothing; the cookie does.
            session = rules.session_token(self._asked(request), self._listener)
            if session and await self._access.lookup(session, sandbox_id, port) is not None:
                return self._see_other(request, landing)
            return self._page(
                request,
                401,
                "This link has expired",
                "A sandbox link works once, for a minute. Open the sandbox again from the"
                " dashboard.",
            )
        self._cookie.clear_doubles(request, self._base_host)  # (before: ours comes last)
        self._cookie.write(request, token)
        self._see_other(request, landing)  # (fixed, as every redirect here: never an open one)

    def _see_other(self, request: Request, location: bytes) -> None:
        request.setResponseCode(303)
        request.setHeader(b"location", location)
        request.setHeader(b"cache-control", b"no-store")
        self._finish(request, b"")

    async def _resume(self, request: Request, access: Access) -> None:
        if request.method != b"POST":  # (its origin is checked as every request's)
            return self._page(request, 403, "Not allowed", "Use the Resume button.")
        try:
            await self._manager.resume(access.sandbox_id, access.user_id)
        except ApiError as e:
            return self._page(request, e.status, "Cannot resume", e.message)
        self._access.status_changed(access.sandbox_id)
        # (in the form's action: a sandbox request's body streams to opencode, unread here)
        query = parse_qs(request.uri.partition(b"?")[2].decode("latin-1"))
        asked = (query.get("next") or ["/"])[0].encode("utf-8")
        then = _after_start(asked, access)
        self._see_other(request, then.encode("ascii"))


def _page_load(request: Request) -> bool:
    """The browser shows the answer as a page (a navigation, a form sent), of any method."""
    mode: bytes | None = request.getHeader(b"sec-fetch-mode")
    if mode is not None:
        return mode.lower() == b"navigate"
    accept: bytes = request.getHeader(b"accept") or b""
    return b"text/html" in accept.lower()  # (a browser that sends no fetch metadata)


def _after_start(uri: bytes, access: Access) -> str:
    """Where a started or resumed sandbox's page leads: the address asked for, but the bare
    home page of a cloud sandbox's opencode becomes the landing (on the workspace disk)."""
    try:
        path = uri.decode("ascii")
    except UnicodeDecodeError:
        path = "/"
    # (a path of this origin only: not "//host", not "/\\host", nothing a header cannot carry)
    if not path.startswith("/") or path[1:2] in ("/", "\\") or not path.isprintable():
        path = "/"
    if path == "/" and not access.is_local and access.port is None:
        return _LAND_PATH.decode("ascii")
    return path


def _upgrade(request: Request) -> bool:
    """A WebSocket upgrade (twisted.web reads the last Upgrade header, and so do we)."""
    return (request.getHeader(b"upgrade") or b"").lower() == b"websocket"
