"""``/api/workspaces``: workspaces and their members."""

from __future__ import annotations

from attrs import define
from klein import Klein
from twisted.web.iweb import IRequest

from cli_server.anthropic.setup import ClaudeSetup
from cli_server.anthropic.usage import UsageStore
from cli_server.domain.accounts import User
from cli_server.domain.audit import Action, AuditLog
from cli_server.domain.errors import BadRequest
from cli_server.domain.roles import ROLE_NAMES, Role
from cli_server.domain.workspaces import Workspaces
from cli_server.sandboxes.manager import SandboxManager
from cli_server.tunnel.registrations import LocalAgents
from cli_server.web.auditing import note, parse_query, record
from cli_server.web.body import read_json_object, required_text
from cli_server.web.ids import parse_id
from cli_server.web.responses import install_json_errors, json_response, no_content
from cli_server.web.routes import route
from cli_server.web.sandboxes_api import WorkspaceSandboxesAPI
from cli_server.web.schemas import (
    AGENT_CODE,
    AUDIT_PAGE,
    AUDIT_QUERY,
    BUDGET_BODY,
    ERROR,
    MEMBER,
    MEMBER_ADDED,
    MEMBER_BODY,
    NAME_BODY,
    NO_BODY,
    PENDING_INVITATION,
    ROLE_BODY,
    SANDBOX,
    USAGE,
    WORKSPACE,
    WORKSPACE_DETAIL,
    array,
)
from cli_server.web.session import SessionCookies


def parse_role(body: dict[str, object], default: Role | None = None) -> Role:
    value = body.get("role")
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or value not in ROLE_NAMES:
        raise BadRequest(f"role must be one of {', '.join(ROLE_NAMES)}", field="role")
    return Role.parse(value)


MAX_BUDGET = 10**15


def parse_budget(body: dict[str, object]) -> int | None:
    """``monthly_tokens``: a whole number of tokens a month, or null for no budget."""
    if "monthly_tokens" not in body:
        raise BadRequest(
            "monthly_tokens is missing: send a whole number of tokens a month, e.g. 2000000, "
            "or null for no budget",
            field="monthly_tokens",
        )
    value = body["monthly_tokens"]
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        got = {str: "text", float: "a fraction", bool: "true or false"}.get(type(value), "that")
        raise BadRequest(
            f"monthly_tokens must be a whole number of tokens, e.g. 2000000, not {got} "
            "(or null for no budget)",
            field="monthly_tokens",
        )
    if value < 0:
        raise BadRequest(
            "monthly_tokens cannot be negative: 0 stops all calls, null removes the budget",
            field="monthly_tokens",
        )
    if value > MAX_BUDGET:
        raise BadRequest(
            "monthly_tokens can be at most 1000000000000000 (for no limit, send null)",
            field="monthly_tokens",
        )
    return value


@define(eq=False)
class WorkspacesAPI:
    _workspaces: Workspaces
    _cookies: SessionCookies
    _manager: SandboxManager
    _sandboxes: WorkspaceSandboxesAPI
    _usage: UsageStore
    _agents: LocalAgents
    _claude: ClaudeSetup = ClaudeSetup(False)
    _audit: AuditLog | None = None

    app = Klein()
    install_json_errors(app)

    @route(
        app,
        "/",
        methods=["GET"],
        strict_slashes=False,
        across_workspaces=True,
        answers={200: array(WORKSPACE)},
    )
    async def list_workspaces(self, request: IRequest, user: User) -> bytes:
        """The workspaces the caller is a member of, with the caller's role in each."""
        listed = await self._workspaces.list_for(user.id)
        return json_response(request, [w for w in listed if user.reaches(w["id"])])

    @route(
        app,
        "/",
        methods=["POST"],
        strict_slashes=False,
        body=NAME_BODY,
        answers={201: WORKSPACE, 409: ERROR},
    )
    async def create_workspace(self, request: IRequest, user: User) -> bytes:
        """Creates a workspace; the caller becomes its owner."""
        name = required_text(read_json_object(request), "name", max_length=100)
        noted = note(self._audit, request, user, Action.WORKSPACE_CREATED)
        return json_response(request, await self._workspaces.create(user.id, name, noted), 201)

    @route(app, "/<workspace_id>", methods=["GET"], answers={200: WORKSPACE_DETAIL})
    async def get_workspace(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """One workspace, with how many sandboxes it has and how many run."""
        wid = parse_id(workspace_id, "workspace")
        workspace = await self._workspaces.get(wid, user.id)
        # What the delete confirmation names: the sandboxes (and running ones) that go with it.
        workspace["sandbox_counts"] = await self._workspaces.sandbox_counts(wid)
        return json_response(request, workspace)

    @route(app, "/<workspace_id>", methods=["DELETE"], answers={204: NO_BODY})
    async def delete_workspace(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """Deletes a workspace (owners): its sandboxes first, then its disk."""
        wid = parse_id(workspace_id, "workspace")
        noted = note(self._audit, request, user, Action.WORKSPACE_DELETED)
        await self._manager.delete_workspace(wid, user.id, noted)
        return no_content(request)

    @route(app, "/<workspace_id>/members", methods=["GET"], answers={200: array(MEMBER)})
    async def list_members(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """The workspace's members and their roles."""
        wid = parse_id(workspace_id, "workspace")
        return json_response(request, await self._workspaces.members(wid, user.id))

    @route(
        app,
        "/<workspace_id>/members",
        methods=["POST"],
        body=MEMBER_BODY,
        answers={200: MEMBER_ADDED, 201: MEMBER_ADDED, 409: ERROR},
    )
    async def add_member(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """Invites someone (maintainers and up; only owners invite owners): 201
        ``{"status": "invited", "invitation_id"}``, 200 when the same invitation was pending
        already; or adds them where the operator allows direct adds (``{"status": "member"}``).
        ``role`` defaults to developer."""
        wid = parse_id(workspace_id, "workspace")
        await self._workspaces.role_of(wid, user.id)
        body = read_json_object(request)
        username = required_text(body, "username", max_length=254)
        role = parse_role(body, default=Role.DEVELOPER)
        details = {"role": role.label}
        noted = note(
            self._audit, request, user, Action.MEMBER_INVITED, workspace_id=wid, details=details
        )
        answer, created = await self._workspaces.add_member(wid, user.id, username, role, noted)
        return json_response(request, answer, 201 if created else 200)

    @route(
        app,
        "/<workspace_id>/invitations",
        methods=["GET"],
        answers={200: array(PENDING_INVITATION), 403: ERROR},
    )
    async def list_invitations(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """Pending invitations, for owners and maintainers."""
        wid = parse_id(workspace_id, "workspace")
        return json_response(request, await self._workspaces.pending(wid, user.id))

    @route(
        app,
        "/<workspace_id>/members/<member_id>",
        methods=["PUT"],
        body=ROLE_BODY,
        answers={200: MEMBER, 409: ERROR},
    )
    async def update_member(
        self, request: IRequest, user: User, workspace_id: str, member_id: str
    ) -> bytes:
        """Changes a member's role (owners); the last owner cannot be demoted."""
        wid = parse_id(workspace_id, "workspace")
        await self._workspaces.role_of(wid, user.id)
        mid = parse_id(member_id, "member")
        role = parse_role(read_json_object(request))
        noted = note(self._audit, request, user, Action.MEMBER_ROLE_CHANGED, workspace_id=wid)
        member = await self._workspaces.set_role(wid, user.id, mid, role, noted)
        return json_response(request, member)

    @route(
        app,
        "/<workspace_id>/members/<member_id>",
        methods=["DELETE"],
        answers={204: NO_BODY, 409: ERROR},
    )
    async def remove_member(
        self, request: IRequest, user: User, workspace_id: str, member_id: str
    ) -> bytes:
        """Removes a member (owners), or leaves (anyone, themself); never the last owner."""
        wid = parse_id(workspace_id, "workspace")
        await self._workspaces.role_of(wid, user.id)
        mid = parse_id(member_id, "member")
        details = {"left": mid == user.id}
        noted = note(
            self._audit, request, user, Action.MEMBER_REMOVED, workspace_id=wid, details=details
        )
        await self._workspaces.remove_member(wid, user.id, mid, noted)
        return no_content(request)

    @route(
        app,
        "/<workspace_id>/sandboxes",
        methods=["GET"],
        strict_slashes=False,
        answers={200: array(SANDBOX)},
    )
    async def list_sandboxes(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """The workspace's sandboxes."""
        return await self._sandboxes.list(request, user, workspace_id)

    @route(
        app,
        "/<workspace_id>/sandboxes",
        methods=["POST"],
        strict_slashes=False,
        body=NAME_BODY,
        answers={201: SANDBOX, 409: ERROR},
    )
    async def create_sandbox(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """Creates a sandbox (developers and up): ``creating`` now, it starts in the
        background."""
        return await self._sandboxes.create(request, user, workspace_id)

    # A browser's only (no API token): the agent it registers holds a tunnel token and may
    # hold an Anthropic key, neither of which a token's revocation would end.
    @route(
        app,
        "/<workspace_id>/agent-code",
        methods=["POST"],
        scope="session",
        answers={201: AGENT_CODE},
    )
    async def agent_code(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """A one-time code (10 minutes; developers and up) with which a laptop's agent joins
        the workspace (``POST /api/agent/register``)."""
        wid = parse_id(workspace_id, "workspace")
        minted = await self._agents.mint_code(wid, user.id)
        await record(self._audit, request, user, Action.AGENT_CODE_CREATED, workspace_id=wid)
        return json_response(request, minted, 201)

    @route(app, "/<workspace_id>/usage", methods=["GET"], answers={200: USAGE})
    async def usage(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """This month's Anthropic token usage, by sandbox, model and day, the budget, and
        whether Claude is set up on this server at all (``claude``)."""
        wid = parse_id(workspace_id, "workspace")
        await self._workspaces.role_of(wid, user.id)
        return json_response(request, await self._report(wid))

    async def _report(self, wid: str) -> dict[str, object]:
        return {**await self._usage.report(wid), "claude": self._claude.report()}

    @route(app, "/<workspace_id>/budget", methods=["PUT"], body=BUDGET_BODY, answers={200: USAGE})
    async def set_budget(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """Owners set a monthly token budget (null: none)."""
        wid = parse_id(workspace_id, "workspace")
        await self._workspaces.require(wid, user.id, Role.OWNER)
        value = parse_budget(read_json_object(request))
        details = {"budget": value}
        noted = note(
            self._audit, request, user, Action.BUDGET_CHANGED, workspace_id=wid, details=details
        )
        await self._workspaces.set_budget(wid, user.id, value, noted)
        return json_response(request, await self._report(wid))

    @route(
        app,
        "/<workspace_id>/audit",
        methods=["GET"],
        query=AUDIT_QUERY,
        answers={200: AUDIT_PAGE, 400: ERROR, 403: ERROR},
    )
    async def audit(self, request: IRequest, user: User, workspace_id: str) -> bytes:
        """The workspace's audit log, newest first, for owners and maintainers. Filters
        ``action``, ``actor`` (user id or name), ``since`` and ``until`` (ISO 8601); pages of
        ``limit`` (at most 200) entries, the next one with ``before`` = the answer's ``next``."""
        wid = parse_id(workspace_id, "workspace")
        await self._workspaces.require(wid, user.id, Role.MAINTAINER)
        query = parse_query(request, wid)
        if self._audit is None:
            return json_response(request, {"entries": [], "next": None})
        return json_response(request, (await self._audit.entries(query)).to_json())
