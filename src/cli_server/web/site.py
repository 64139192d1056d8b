"""The main site: health probes and the REST API, composed from one Klein app per area."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from attrs import define, field, frozen
from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request

from cli_server.anthropic.setup import ClaudeSetup
from cli_server.db.pool import Database
from cli_server.domain.errors import NotFound, ServiceUnavailable
from cli_server.plumbing.encoding import dumps
from cli_server.plumbing.metrics import Metrics
from cli_server.web.admin_api import AdminAPI
from cli_server.web.agents_api import AgentsAPI
from cli_server.web.auth_api import AuthAPI
from cli_server.web.invitations_api import InvitationsAPI
from cli_server.web.openapi import api_document
from cli_server.web.responses import error_body, install_json_errors, json_response
from cli_server.web.routes import route
from cli_server.web.sandboxes_api import SandboxesAPI
from cli_server.web.schemas import (
    AGENT_REGISTER_BODY,
    AGENT_REGISTRATION,
    DRAINING,
    ERROR,
    HEALTH,
    OPENAPI_DOCUMENT,
    PROMETHEUS_TEXT,
    READINESS,
    one_of,
)
from cli_server.web.session import SessionCookies
from cli_server.web.sso_api import SsoAPI
from cli_server.web.webui import WebUI
from cli_server.web.workspaces_api import WorkspacesAPI

_ALL = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@frozen
class Mount:
    """Where ``MainSite`` mounts one area's Klein app (a branch route at ``prefix``), and the
    name and sentence its operations go under in the API document."""

    prefix: str
    app: Klein
    tag: str
    about: str


SSO = Mount("/api/auth/oidc", SsoAPI.app, "single sign-on", "Signing in with GitHub or OIDC.")
AUTH = Mount(
    "/api/auth", AuthAPI.app, "account", "Registering, signing in and out, one's own account."
)
WORKSPACES = Mount(
    "/api/workspaces",
    WorkspacesAPI.app,
    "workspaces",
    "Workspaces, their members, sandboxes, Claude usage and local agent codes.",
)
INVITATIONS = Mount(
    "/api/invitations", InvitationsAPI.app, "invitations", "The caller's pending invitations."
)
ADMIN = Mount("/api/admin", AdminAPI.app, "admin", "The instance admin's users and sign-up links.")
SANDBOXES = Mount("/api/sandboxes", SandboxesAPI.app, "sandboxes", "One sandbox and its actions.")
# Every app MainSite mounts; the API document and the route tests walk this same table.
MOUNTS: tuple[Mount, ...] = (SSO, AUTH, WORKSPACES, INVITATIONS, ADMIN, SANDBOXES)


@define(eq=False)
class MainSite:
    _db: Database
    _anthropic: IResource
    _auth: AuthAPI
    _workspaces: WorkspacesAPI
    _sandboxes: SandboxesAPI
    _agents: AgentsAPI
    _ready: Callable[[], bool]  # start-up (database, migrations) finished
    _metrics: Metrics = field(factory=lambda: Metrics())
    _ui: IResource = field(factory=WebUI)
    _invitations: InvitationsAPI | None = None
    _claude: ClaudeSetup | None = None
    _admin: AdminAPI | None = None
    _sso: SsoAPI | None = None
    # Whether the server stops (SIGTERM): the balancer takes it out.
    _draining: Callable[[], bool] | None = None

    # Built once, at start: the declarations do not change while the process runs.
    _document: bytes = field(init=False)

    app = Klein()
    install_json_errors(app)

    @_document.default
    def _build_document(self) -> bytes:
        # (a site built for a test may have no AuthAPI)
        cookies: SessionCookies | None = getattr(self._auth, "cookies", None)
        name = cookies.name.decode("ascii") if cookies is not None else "cli_session"
        return dumps(api_document(APPS, cookie=name))

    @property
    def _cookies(self) -> SessionCookies:
        """(for ``route``: the Origin rule of the state-changing routes mounted here)"""
        return self._auth.cookies

    @route(app, "/healthz", methods=["GET", "HEAD"], public=True, answers={200: HEALTH})
    def healthz(self, request: IRequest) -> bytes:
        """Liveness: the process runs and the reactor turns."""
        return json_response(request, {"status": "ok"})

    @route(
        app,
        "/readyz",
        methods=["GET", "HEAD"],
        public=True,
        answers={200: READINESS, 503: one_of(DRAINING, ERROR)},
    )
    async def readyz(self, request: IRequest) -> bytes:
        """Readiness: started, not stopping, and PostgreSQL answers now."""
        if self._draining is not None and self._draining():
            return json_response(request, {"status": "draining"}, 503)
        if not self._ready():
            return json_response(request, error_body("starting", "still starting"), 503)
        await self._db.ping()  # DatabaseUnavailable -> 503
        ready = {"status": "ready"}
        if self._claude is not None:  # (not configured is no unreadiness: it is said, not 503)
            ready["claude"] = self._claude.readiness
        return json_response(request, ready)

    def _require_ready(self) -> None:
        if not self._ready():
            raise ServiceUnavailable(
                "cli-server is still starting; try again in a moment", code="starting"
            )

    def _mount(self, request: IRequest, app: Klein) -> IResource:
        """Hand the rest of the path to a sub-app, once start-up has finished."""
        self._require_ready()
        postpath = cast(Request, request).postpath  # (Klein serves twisted.web's requests)
        assert postpath is not None  # (set while the resource tree is walked)
        if not postpath:
            # "/api/workspaces" without a slash: let the sub-app see "/" so that werkzeug
            # answers 405 for a wrong method rather than 404.
            postpath.append(b"")
        return app.resource()

    @route(app, SSO.prefix, branch=True, strict_slashes=False, methods=_ALL, public=True)
    def sso(self, request: IRequest) -> IResource:
        if self._sso is None:
            raise NotFound("no such sign-in provider", code="provider_not_found")
        return self._mount(request, self._sso.app)

    @route(app, AUTH.prefix, branch=True, strict_slashes=False, methods=_ALL, public=True)
    def auth(self, request: IRequest) -> IResource:
        return self._mount(request, self._auth.app)

    @route(app, WORKSPACES.prefix, branch=True, strict_slashes=False, methods=_ALL, public=True)
    def workspaces(self, request: IRequest) -> IResource:
        return self._mount(request, self._workspaces.app)

    @route(app, INVITATIONS.prefix, branch=True, strict_slashes=False, methods=_ALL, public=True)
    def invitations(self, request: IRequest) -> IResource:
        if self._invitations is None:
            raise NotFound("no such API route")
        return self._mount(request, self._invitations.app)

    @route(app, ADMIN.prefix, branch=True, strict_slashes=False, methods=_ALL, public=True)
    def admin(self, request: IRequest) -> IResource:
        if self._admin is None:
            raise NotFound("no such API route")
        return self._mount(request, self._admin.app)

    @route(app, SANDBOXES.prefix, branch=True, strict_slashes=False, methods=_ALL, public=True)
    def sandboxes(self, request: IRequest) -> IResource:
        return self._mount(request, self._sandboxes.app)

    @route(
        app,
        "/api/agent/register",
        methods=["POST"],
        public=True,
        body=AGENT_REGISTER_BODY,
        answers={201: AGENT_REGISTRATION, 401: ERROR, 409: ERROR},
    )
    async def register_agent(self, request: IRequest) -> bytes:
        """A laptop's agent trades a one-time code (``POST /api/workspaces/{id}/agent-code``)
        for a local sandbox and its tunnel token, shown in this answer only."""
        self._require_ready()
        return await self._agents.register(request)

    @route(app, "/api/tunnel/<sandbox_id>", methods=["GET"], public=True)
    async def tunnel(self, request: IRequest, sandbox_id: str) -> IResource | bytes:
        self._require_ready()
        return await self._agents.tunnel(request, sandbox_id)

    @route(
        app, "/metrics", methods=["GET"], public=True, answers={200: PROMETHEUS_TEXT, 404: ERROR}
    )
    def metrics(self, request: IRequest) -> bytes:
        """Prometheus text, for scrapers on this host only (it counts sandboxes)."""
        peer = request.getClientAddress()  # (a UNIX socket's address has no host)
        if getattr(peer, "host", "") not in ("127.0.0.1", "::1") or request.getHeader(
            b"x-forwarded-for"
        ):
            raise NotFound("no such API route")
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return bytes(self._metrics.render())

    @route(app, "/api/openapi.json", methods=["GET"], public=True, answers={200: OPENAPI_DOCUMENT})
    def openapi(self, request: IRequest) -> bytes:
        """This document: the OpenAPI 3.1 description of the REST API."""
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return self._document

    @route(app, "/proxy/anthropic", branch=True, methods=_ALL, public=True)
    def anthropic_proxy(self, request: IRequest) -> IResource:
        return self._anthropic

    @route(app, "/", branch=True, methods=["GET", "HEAD"], public=True)
    def web_ui(self, request: IRequest) -> IResource:
        return self._ui

    @route(app, "/api", branch=True, methods=_ALL, public=True)
    def unknown_api(self, request: IRequest) -> bytes:
        raise NotFound("no such API route")


# The apps of the REST API: MainSite's own routes, and those it mounts.
APPS: tuple[Mount, ...] = (
    Mount("", MainSite.app, "server", "Health, readiness, metrics, this document, local agents."),
    *MOUNTS,
)
