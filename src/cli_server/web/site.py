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
from cli_server.web.sandboxes_api import SandboxesAPI
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

    app = Klein()
    install_json_errors(app)

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: IRequest) -> bytes:
        """Liveness: the process runs and the reactor turns."""
        return json_response(request, {"status": "ok"})

    @app.route("/readyz", methods=["GET", "HEAD"])
    async def readyz(self, request: IRequest) -> bytes:
        """Readiness: started, and PostgreSQL answers now."""
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

    @app.route("/api/auth/oidc", branch=True, strict_slashes=False, methods=_ALL)
    def sso(self, request: IRequest) -> IResource:
        if self._sso is None:
            raise NotFound("no such sign-in provider", code="provider_not_found")
        return self._mount(request, self._sso.app)

    @app.route("/api/auth", branch=True, strict_slashes=False, methods=_ALL)
    def auth(self, request: IRequest) -> IResource:
        return self._mount(request, self._auth.app)

    @app.route("/api/workspaces", branch=True, strict_slashes=False, methods=_ALL)
    def workspaces(self, request: IRequest) -> IResource:
        return self._mount(request, self._workspaces.app)

    @app.route("/api/invitations", branch=True, strict_slashes=False, methods=_ALL)
    def invitations(self, request: IRequest) -> IResource:
        if self._invitations is None:
            raise NotFound("no such API route")
        return self._mount(request, self._invitations.app)

    @app.route("/api/admin", branch=True, strict_slashes=False, methods=_ALL)
    def admin(self, request: IRequest) -> IResource:
        if self._admin is None:
            raise NotFound("no such API route")
        return self._mount(request, self._admin.app)

    @app.route("/api/sandboxes", branch=True, strict_slashes=False, methods=_ALL)
    def sandboxes(self, request: IRequest) -> IResource:
        return self._mount(request, self._sandboxes.app)

    @app.route("/api/agent/register", methods=["POST"])
    async def register_agent(self, request: IRequest) -> bytes:
        self._require_ready()
        return await self._agents.register(request)

    @app.route("/api/tunnel/<sandbox_id>", methods=["GET"])
    async def tunnel(self, request: IRequest, sandbox_id: str) -> IResource | bytes:
        self._require_ready()
        return await self._agents.tunnel(request, sandbox_id)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        """Prometheus text, for scrapers on this host only (it counts sandboxes)."""
        peer: Any = request.getClientAddress()
        if getattr(peer, "host", "") not in ("127.0.0.1", "::1") or request.getHeader(
            b"x-forwarded-for"
        ):
            raise NotFound("no such API route")
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return bytes(self._metrics.render())

    @app.route("/proxy/anthropic", branch=True, methods=_ALL)
    def anthropic_proxy(self, request: IRequest) -> IResource:
        return self._anthropic

    @app.route("/", branch=True, methods=["GET", "HEAD"])
    def web_ui(self, request: IRequest) -> IResource:
        return self._ui

    @app.route("/api", branch=True, methods=_ALL)
    def unknown_api(self, request: IRequest) -> bytes:
        raise NotFound("no such API route")
