"""The main site: health probes and the REST API, composed from one Klein app per area."""

from __future__ import annotations

from typing import Any

from attrs import define, field
from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from cli_server.anthropic.setup import ClaudeSetup
from cli_server.db.pool import Database
from cli_server.errors import NotFound, ServiceUnavailable
from cli_server.metrics import Metrics
from cli_server.web.admin_api import AdminAPI
from cli_server.web.agents_api import AgentsAPI
from cli_server.web.auth_api import AuthAPI
from cli_server.web.invitations_api import InvitationsAPI
from cli_server.web.responses import error_body, install_json_errors, json_response
from cli_server.web.routes import route
from cli_server.web.sandboxes_api import SandboxesAPI
from cli_server.web.session import SessionCookies
from cli_server.web.sso_api import SsoAPI
from cli_server.web.webui import WebUI
from cli_server.web.workspaces_api import WorkspacesAPI

_ALL = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@define(eq=False)
class MainSite:
    _db: Database
    _anthropic: IResource
    _auth: AuthAPI
    _workspaces: WorkspacesAPI
    _sandboxes: SandboxesAPI
    _agents: AgentsAPI
    _ready: Any  # () -> bool: start-up (database, migrations) finished
    _metrics: Any = field(factory=lambda: Metrics())
    _ui: IResource = field(factory=WebUI)
    _invitations: InvitationsAPI | None = None
    _claude: ClaudeSetup | None = None
    _admin: AdminAPI | None = None
    _sso: SsoAPI | None = None
    _draining: Any = None  # () -> bool: the server stops (SIGTERM); the balancer takes it out

    app = Klein()
    install_json_errors(app)

    @property
    def _cookies(self) -> SessionCookies:
        """(for ``route``: the Origin rule of the state-changing routes mounted here)"""
        return self._auth.cookies

    @route(app, "/healthz", methods=["GET", "HEAD"], public=True)
    def healthz(self, request: IRequest) -> bytes:
        """Liveness: the process runs and the reactor turns."""
        return json_response(request, {"status": "ok"})

    @route(app, "/readyz", methods=["GET", "HEAD"], public=True)
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
        req: Any = request
        if not req.postpath:
            # "/api/workspaces" without a slash: let the sub-app see "/" so that werkzeug
            # answers 405 for a wrong method rather than 404.
            req.postpath.append(b"")
        return app.resource()

    @route(app, "/api/auth/oidc", branch=True, strict_slashes=False, methods=_ALL, public=True)
    def sso(self, request: IRequest) -> IResource:
        if self._sso is None:
            raise NotFound("no such sign-in provider", code="provider_not_found")
        return self._mount(request, self._sso.app)

    @route(app, "/api/auth", branch=True, strict_slashes=False, methods=_ALL, public=True)
    def auth(self, request: IRequest) -> IResource:
        return self._mount(request, self._auth.app)

    @route(app, "/api/workspaces", branch=True, strict_slashes=False, methods=_ALL, public=True)
    def workspaces(self, request: IRequest) -> IResource:
        return self._mount(request, self._workspaces.app)

    @route(app, "/api/invitations", branch=True, strict_slashes=False, methods=_ALL, public=True)
    def invitations(self, request: IRequest) -> IResource:
        if self._invitations is None:
            raise NotFound("no such API route")
        return self._mount(request, self._invitations.app)

    @route(app, "/api/admin", branch=True, strict_slashes=False, methods=_ALL, public=True)
    def admin(self, request: IRequest) -> IResource:
        if self._admin is None:
            raise NotFound("no such API route")
        return self._mount(request, self._admin.app)

    @route(app, "/api/sandboxes", branch=True, strict_slashes=False, methods=_ALL, public=True)
    def sandboxes(self, request: IRequest) -> IResource:
        return self._mount(request, self._sandboxes.app)

    @route(app, "/api/agent/register", methods=["POST"], public=True)
    async def register_agent(self, request: IRequest) -> bytes:
        self._require_ready()
        return await self._agents.register(request)

    @route(app, "/api/tunnel/<sandbox_id>", methods=["GET"], public=True)
    async def tunnel(self, request: IRequest, sandbox_id: str) -> IResource | bytes:
        self._require_ready()
        return await self._agents.tunnel(request, sandbox_id)

    @route(app, "/metrics", methods=["GET"], public=True)
    def metrics(self, request: IRequest) -> bytes:
        """Prometheus text, for scrapers on this host only (it counts sandboxes)."""
        peer: Any = request.getClientAddress()
        if getattr(peer, "host", "") not in ("127.0.0.1", "::1") or request.getHeader(
            b"x-forwarded-for"
        ):
            raise NotFound("no such API route")
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return bytes(self._metrics.render())

    @route(app, "/proxy/anthropic", branch=True, methods=_ALL, public=True)
    def anthropic_proxy(self, request: IRequest) -> IResource:
        return self._anthropic

    @route(app, "/", branch=True, methods=["GET", "HEAD"], public=True)
    def web_ui(self, request: IRequest) -> IResource:
        return self._ui

    @route(app, "/api", branch=True, methods=_ALL, public=True)
    def unknown_api(self, request: IRequest) -> bytes:
        raise NotFound("no such API route")
