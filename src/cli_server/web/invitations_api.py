"""``/api/invitations``: the caller's pending workspace invitations, and their answers.

Only the invitee sees an invitation here; anyone else's id answers 404 like an unknown one.
"""

from __future__ import annotations

from attrs import define
from klein import Klein
from twisted.web.iweb import IRequest

from cli_server.domain.accounts import User
from cli_server.domain.audit import Action, AuditLog, Target
from cli_server.domain.workspaces import Workspaces
from cli_server.web.auditing import note, record
from cli_server.web.ids import parse_id
from cli_server.web.responses import install_json_errors, json_response, no_content
from cli_server.web.routes import route
from cli_server.web.schemas import INVITATION, NO_BODY, WORKSPACE, array
from cli_server.web.session import SessionCookies


@define(eq=False)
class InvitationsAPI:
    _workspaces: Workspaces
    _cookies: SessionCookies
    _audit: AuditLog | None = None

    app = Klein()
    install_json_errors(app)

    @route(
        app,
        "/",
        methods=["GET"],
        strict_slashes=False,
        across_workspaces=True,
        answers={200: array(INVITATION)},
    )
    async def my_invitations(self, request: IRequest, user: User) -> bytes:
        """The caller's pending invitations: which workspace, who invited, which role."""
        listed = await self._workspaces.invitations_for(user.id)
        return json_response(request, [i for i in listed if user.reaches(i["workspace_id"])])

    @route(app, "/<invitation_id>/accept", methods=["POST"], answers={200: WORKSPACE})
    async def accept(self, request: IRequest, user: User, invitation_id: str) -> bytes:
        """Join the workspace; answers it as GET /api/workspaces/{id} would."""
        iid = parse_id(invitation_id, "invitation")
        target = Target("invitation", iid, user.username)
        noted = note(self._audit, request, user, Action.INVITATION_ACCEPTED, target=target)
        return json_response(request, await self._workspaces.accept(iid, user.id, noted))

    @route(app, "/<invitation_id>/decline", methods=["POST"], answers={204: NO_BODY})
    async def decline(self, request: IRequest, user: User, invitation_id: str) -> bytes:
        """Declines an invitation; it is gone."""
        iid = parse_id(invitation_id, "invitation")
        wid = await self._workspaces.decline(iid, user.id)
        target = Target("invitation", iid, user.username)
        await record(
            self._audit, request, user, Action.INVITATION_DECLINED, workspace_id=wid, target=target
        )
        return no_content(request)

    @route(app, "/<invitation_id>", methods=["DELETE"], answers={204: NO_BODY})
    async def revoke(self, request: IRequest, user: User, invitation_id: str) -> bytes:
        """The inviter or an owner withdraws it (the invitee declines)."""
        iid = parse_id(invitation_id, "invitation")
        target = Target("invitation", iid)
        noted = note(self._audit, request, user, Action.INVITATION_REVOKED, target=target)
        await self._workspaces.revoke(iid, user.id, noted)
        return no_content(request)
