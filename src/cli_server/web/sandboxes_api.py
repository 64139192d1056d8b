"""Sandbox routes: ``/api/workspaces/{wid}/sandboxes`` and ``/api/sandboxes/{id}``."""

from __future__ import annotations

from attrs import define
from klein import Klein
from twisted.web.iweb import IRequest

from cli_server.domain.accounts import User
from cli_server.domain.audit import Action, AuditLog, Target
from cli_server.domain.errors import BadRequest
from cli_server.domain.roles import Role
from cli_server.proxy.access import SandboxAccess
from cli_server.proxy.hosts import PORT_RULE, port_refusal
from cli_server.proxy.urls import SandboxUrls
from cli_server.sandboxes.manager import SandboxManager
from cli_server.web.auditing import note, record
from cli_server.web.body import read_json_object, required_text
from cli_server.web.ids import parse_id
from cli_server.web.responses import install_json_errors, json_response, no_content
from cli_server.web.routes import route
from cli_server.web.schemas import (
    ERROR,
    LINK,
    NO_BODY,
    OPEN_BODY,
    SANDBOX,
    SANDBOX_LOGS,
    SANDBOX_PORTS,
)
from cli_server.web.session import SessionCookies


@define(eq=False)
class WorkspaceSandboxesAPI:
    """Mounted under ``/api/workspaces/<wid>/sandboxes`` by the workspaces app, whose
    route declarations check the Origin and find the user."""

    _manager: SandboxManager
    _audit: AuditLog | None = None

    async def list(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        wid = parse_id(workspace_id, "workspace")
        return json_response(request, await self._manager.list(wid, user.id))

    async def create(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        wid = parse_id(workspace_id, "workspace")
        await self._manager.workspaces.role_of(wid, user.id)
        name = required_text(read_json_object(request), "name", max_length=100)
        noted = note(self._audit, request, user, Action.SANDBOX_CREATED)
        return json_response(request, await self._manager.create(wid, user.id, name, noted), 201)


@define(eq=False)
class SandboxesAPI:
    """``/api/sandboxes/<id>`` and its actions."""

    _manager: SandboxManager
    _cookies: SessionCookies
    _access: SandboxAccess
    _urls: SandboxUrls
    _audit: AuditLog | None = None

    async def _record(
        self, request: IRequest, user: User, action: Action, sandbox_id: str, **details: object
    ) -> None:
        await record(
            self._audit,
            request,
            user,
            action,
            target=Target("sandbox", sandbox_id),
            details=details,
        )

    app = Klein()
    install_json_errors(app)

    @route(app, "/<sandbox_id>", methods=["GET"], answers={200: SANDBOX})
    async def get_sandbox(self, request: IRequest, user: User, sandbox_id: str) -> bytes:
        """One sandbox of a workspace the caller is a member of."""
        sid = parse_id(sandbox_id, "sandbox")
        return json_response(request, await self._manager.get(sid, user.id))

    @route(app, "/<sandbox_id>", methods=["DELETE"], answers={204: NO_BODY})
    async def delete_sandbox(self, request: IRequest, user: User, sandbox_id: str) -> bytes:
        """Deletes a sandbox (developers and up): its process and home go, the
        workspace disk stays; a local one's agent is revoked."""
        sid = parse_id(sandbox_id, "sandbox")
        target, wid = await self._audit.sandbox(sid) if self._audit else (None, None)
        await self._manager.delete(sid, user.id)
        await record(
            self._audit, request, user, Action.SANDBOX_DELETED, workspace_id=wid, target=target
        )
        return no_content(request)

    @route(app, "/<sandbox_id>/pause", methods=["POST"], answers={200: SANDBOX, 409: ERROR})
    async def pause_sandbox(self, request: IRequest, user: User, sandbox_id: str) -> bytes:
        """Pauses a running sandbox (developers and up): ``pausing`` now, ``paused``
        soon after."""
        sid = parse_id(sandbox_id, "sandbox")
        paused = await self._manager.pause(sid, user.id)
        await self._record(request, user, Action.SANDBOX_PAUSED, sid)
        return json_response(request, paused)

    @route(app, "/<sandbox_id>/resume", methods=["POST"], answers={200: SANDBOX, 409: ERROR})
    async def resume_sandbox(self, request: IRequest, user: User, sandbox_id: str) -> bytes:
        """Resumes a paused or failed sandbox (developers and up): ``resuming`` now,
        ``running`` soon after."""
        sid = parse_id(sandbox_id, "sandbox")
        resumed = await self._manager.resume(sid, user.id)
        await self._record(request, user, Action.SANDBOX_RESUMED, sid)
        return json_response(request, resumed)

    @route(
        app,
        "/<sandbox_id>/logs",
        methods=["GET"],
        answers={200: SANDBOX_LOGS, 403: ERROR, 409: ERROR},
    )
    async def sandbox_logs(self, request: IRequest, user: User, sandbox_id: str) -> bytes:
        """The tail of the sandbox's opencode output (developers and up)."""
        sid = parse_id(sandbox_id, "sandbox")
        return json_response(request, await self._manager.logs(sid, user.id))

    @route(app, "/<sandbox_id>/ports", methods=["GET"], answers={200: SANDBOX_PORTS, 409: ERROR})
    async def sandbox_ports(self, request: IRequest, user: User, sandbox_id: str) -> bytes:
        """The ports a preview may open now (any member)."""
        sid = parse_id(sandbox_id, "sandbox")
        return json_response(request, await self._manager.ports(sid, user.id))

    # A browser's only (no API token): the link signs into the subdomain, where tokens are
    # never accepted, with a session that a token's revocation would not end.
    @route(
        app,
        "/<sandbox_id>/open",
        methods=["POST"],
        scope="session",
        body=OPEN_BODY,
        answers={200: LINK},
    )
    async def open_sandbox(self, request: IRequest, user: User, sandbox_id: str) -> bytes:
        """A one-time link that signs the caller in on the sandbox's own subdomain, or with a
        body ``{"port": N}`` on the preview of port N in it (its own origin and session)."""
        sid = parse_id(sandbox_id, "sandbox")
        await self._manager.authorized(sid, user.id, Role.GUEST)  # (a stranger learns nothing)
        port = _preview_port(request)
        ticket = await self._access.mint_ticket(user.id, sid, port)
        await self._record(request, user, Action.SANDBOX_OPENED, sid, port=port)
        return json_response(request, {"url": self._urls.opener(sid, ticket, port)})


def _preview_port(request: IRequest) -> int | None:
    """The port an Open asks for: none (no body, or no ``port``) is opencode's address."""
    content = request.content
    if content is None:
        return None
    raw = content.read()
    content.seek(0)
    if not raw.strip():
        return None
    body = read_json_object(request)
    extra = sorted(set(body) - {"port"})
    if extra:
        raise BadRequest(f"unknown field {extra[0][:40]!r}: only 'port' is taken", field=extra[0])
    if "port" not in body:
        return None
    port = body["port"]
    if type(port) is not int:  # (not a bool, not 5173.0, not "5173")
        raise BadRequest(f"port must be a whole number: {PORT_RULE}", field="port")
    why = port_refusal(str(port))
    if why is not None:
        raise BadRequest(why, field="port")
    return port
