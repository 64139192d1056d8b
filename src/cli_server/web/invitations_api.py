"""``/api/invitations``: the caller's pending workspace invitations, and their answers.

Only the invitee sees an invitation here; anyone else's id answers 404 like an unknown one.
"""

from __future__ import annotations

from attrs import define
from klein import Klein
from twisted.web.iweb import IRequest

from cli_server.web.ids import parse_id
from cli_server.web.responses import install_json_errors, json_response, no_content
from cli_server.web.session import SessionCookies
from cli_server.workspaces import Workspaces


@define(eq=False)
class InvitationsAPI:
    _workspaces: Workspaces
    _cookies: SessionCookies

    app = Klein()
    install_json_errors(app)

    @app.route("/", methods=["GET"], strict_slashes=False)
    async def list_invitations(self, request: IRequest) -> bytes:
        user = await self._cookies.user(request)
        return json_response(request, await self._workspaces.invitations_for(user.id))

    @app.route("/<invitation_id>/accept", methods=["POST"])
    async def accept(self, request: IRequest, invitation_id: str) -> bytes:
        """Join the workspace; answers it as GET /api/workspaces/{id} would."""
        self._cookies.check_origin(request)
        user = await self._cookies.user(request)
        iid = parse_id(invitation_id, "invitation")
        return json_response(request, await self._workspaces.accept(iid, user.id))

    @app.route("/<invitation_id>/decline", methods=["POST"])
    async def decline(self, request: IRequest, invitation_id: str) -> bytes:
        self._cookies.check_origin(request)
        user = await self._cookies.user(request)
        await self._workspaces.decline(parse_id(invitation_id, "invitation"), user.id)
        return no_content(request)

    @app.route("/<invitation_id>", methods=["DELETE"])
    async def revoke(self, request: IRequest, invitation_id: str) -> bytes:
        """The inviter or an owner withdraws it (the invitee declines)."""
        self._cookies.check_origin(request)
        user = await self._cookies.user(request)
        await self._workspaces.revoke(parse_id(invitation_id, "invitation"), user.id)
        return no_content(request)
