"""``/api/admin``: the instance admin's users page and sign-up links.

Only the admin (``users.is_admin``, the first registered user) gets past ``_admin``; anyone
else signed in gets 403, and nobody signed out gets further than 401.
"""

from __future__ import annotations

from attrs import define
from klein import Klein
from twisted.web.iweb import IRequest

from cli_server.accounts import SIGNUP_LINK_SECONDS, User
from cli_server.errors import Conflict, Forbidden
from cli_server.instance_admin import InstanceAdmin
from cli_server.proxy.access import SandboxAccess
from cli_server.tunnel.agents import LocalAgents
from cli_server.web.ids import parse_id
from cli_server.web.responses import install_json_errors, json_response, no_content
from cli_server.web.session import SessionCookies


@define(eq=False)
class AdminAPI:
    _admin: InstanceAdmin
    _cookies: SessionCookies
    _sandbox_access: SandboxAccess
    _agents: LocalAgents
    _origin: str  # the main site's, for the sign-up links' URLs
    _registration: str = "open"

    app = Klein()
    install_json_errors(app)

    async def _the_admin(self, request: IRequest, changes: bool) -> User:
        if changes:
            self._cookies.check_origin(request)
        user = await self._cookies.user(request)
        if not user.is_admin:
            raise Forbidden("only the instance administrator may do this", code="not_admin")
        return user

    @app.route("/users", methods=["GET"])
    async def users(self, request: IRequest) -> bytes:
        await self._the_admin(request, changes=False)
        return json_response(request, await self._admin.users())

    @app.route("/users/<user_id>/disable", methods=["POST"])
    async def disable(self, request: IRequest, user_id: str) -> bytes:
        admin = await self._the_admin(request, changes=True)
        uid = parse_id(user_id, "user")
        await self._admin.set_disabled(admin.id, uid, True)
        await self._sandbox_access.revoke_user(uid)
        await self._agents.account_disabled(uid)
        return no_content(request)

    @app.route("/users/<user_id>/enable", methods=["POST"])
    async def enable(self, request: IRequest, user_id: str) -> bytes:
        admin = await self._the_admin(request, changes=True)
        await self._admin.set_disabled(admin.id, parse_id(user_id, "user"), False)
        return no_content(request)

    @app.route("/users/<user_id>/password", methods=["POST"])
    async def reset_password(self, request: IRequest, user_id: str) -> bytes:
        """A temporary password, in this answer only; the user's sessions end."""
        admin = await self._the_admin(request, changes=True)
        uid = parse_id(user_id, "user")
        if uid == admin.id:  # a stolen admin session must not become the admin's account
            raise Conflict(
                "change your own password on your account page, with your current one",
                code="own_account",
            )
        password = await self._admin.reset_password(uid)
        await self._sandbox_access.revoke_user(uid)
        return json_response(request, {"password": password})

    @app.route("/signup-links", methods=["POST"])
    async def create_signup_link(self, request: IRequest) -> bytes:
        admin = await self._the_admin(request, changes=True)
        token, expires_at = await self._admin.create_signup_link(admin.id, SIGNUP_LINK_SECONDS)
        # In the fragment: browsers never send it, so the token stays out of access logs
        # and Referer headers.
        url = f"{self._origin.rstrip('/')}/#invite={token}"
        return json_response(
            request, {"url": url, "expires_at": expires_at, "mode": self._registration}, 201
        )

    @app.route("/signup-links", methods=["GET"])
    async def signup_links(self, request: IRequest) -> bytes:
        await self._the_admin(request, changes=False)
        return json_response(request, await self._admin.signup_links())

    @app.route("/signup-links/<link_id>", methods=["DELETE"])
    async def revoke_signup_link(self, request: IRequest, link_id: str) -> bytes:
        await self._the_admin(request, changes=True)
        await self._admin.revoke_signup_link(parse_id(link_id, "signup_link"))
        return no_content(request)
