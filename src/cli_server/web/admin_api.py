"""``/api/admin``: the instance admin's users page and sign-up links.

Only the admin (``users.is_admin``, the first registered user) gets past ``_the_admin``; anyone
else signed in gets 403, and nobody signed out gets further than 401.
"""

from __future__ import annotations

from attrs import define
from klein import Klein
from twisted.web.iweb import IRequest

from cli_server.domain.accounts import SIGNUP_LINK_SECONDS, User
from cli_server.domain.audit import Action, AuditLog, Target
from cli_server.domain.errors import Conflict, Forbidden
from cli_server.domain.instance_admin import InstanceAdmin
from cli_server.web.auditing import note, record
from cli_server.web.ids import parse_id
from cli_server.web.responses import install_json_errors, json_response, no_content
from cli_server.web.routes import route
from cli_server.web.schemas import (
    ADMIN_USER,
    ERROR,
    NEW_SIGNUP_LINK,
    NO_BODY,
    SIGNUP_LINK,
    TEMPORARY_PASSWORD,
    array,
)
from cli_server.web.session import SessionCookies


@define(eq=False)
class AdminAPI:
    _admin: InstanceAdmin
    _cookies: SessionCookies
    _origin: str  # the main site's, for the sign-up links' URLs
    _registration: str = "open"
    _audit: AuditLog | None = None

    app = Klein()
    install_json_errors(app)

    @route(app, "/users", methods=["GET"], scope="admin", answers={200: array(ADMIN_USER)})
    async def users(self, request: IRequest, user: User) -> bytes:
        """Every account of the instance, disabled ones too, with when each was last seen."""
        _the_admin(user)
        return json_response(request, await self._admin.users())

    @route(
        app,
        "/users/<user_id>/disable",
        methods=["POST"],
        scope="admin",
        answers={204: NO_BODY, 409: ERROR},
    )
    async def disable(self, request: IRequest, user: User, user_id: str) -> bytes:
        """Disables an account: its sessions, sandbox sessions and local agents end at once."""
        admin = _the_admin(user)
        uid = parse_id(user_id, "user")
        noted = note(self._audit, request, admin, Action.USER_DISABLED)
        await self._admin.set_disabled(admin.id, uid, True, noted)
        return no_content(request)

    @route(app, "/users/<user_id>/enable", methods=["POST"], scope="admin", answers={204: NO_BODY})
    async def enable(self, request: IRequest, user: User, user_id: str) -> bytes:
        """Enables a disabled account again (its user signs in anew)."""
        admin = _the_admin(user)
        uid = parse_id(user_id, "user")
        noted = note(self._audit, request, admin, Action.USER_ENABLED)
        await self._admin.set_disabled(admin.id, uid, False, noted)
        return no_content(request)

    @route(
        app,
        "/users/<user_id>/password",
        methods=["POST"],
        scope="admin",
        answers={200: TEMPORARY_PASSWORD, 409: ERROR},
    )
    async def reset_password(self, request: IRequest, user: User, user_id: str) -> bytes:
        """A temporary password, in this answer only; the user's sessions end."""
        admin = _the_admin(user)
        uid = parse_id(user_id, "user")
        if uid == admin.id:  # a stolen admin session must not become the admin's account
            raise Conflict(
                "change your own password on your account page, with your current one",
                code="own_account",
            )
        noted = note(self._audit, request, admin, Action.PASSWORD_RESET)
        password = await self._admin.reset_password(uid, noted)
        return json_response(request, {"password": password})

    @route(app, "/signup-links", methods=["POST"], scope="admin", answers={201: NEW_SIGNUP_LINK})
    async def create_signup_link(self, request: IRequest, user: User) -> bytes:
        """A one-time sign-up link (7 days), for the invite registration mode."""
        admin = _the_admin(user)
        token, expires_at = await self._admin.create_signup_link(admin.id, SIGNUP_LINK_SECONDS)
        details = {"expires_at": expires_at}
        await record(self._audit, request, admin, Action.SIGNUP_LINK_CREATED, details=details)
        # In the fragment: browsers never send it, so the token stays out of access logs
        # and Referer headers.
        url = f"{self._origin.rstrip('/')}/#invite={token}"
        return json_response(
            request, {"url": url, "expires_at": expires_at, "mode": self._registration}, 201
        )

    @route(
        app,
        "/signup-links",
        methods=["GET"],
        scope="admin",
        answers={200: array(SIGNUP_LINK)},
    )
    async def signup_links(self, request: IRequest, user: User) -> bytes:
        """The sign-up links not yet expired, and those used (by whom)."""
        _the_admin(user)
        return json_response(request, await self._admin.signup_links())

    @route(
        app,
        "/signup-links/<link_id>",
        methods=["DELETE"],
        scope="admin",
        answers={204: NO_BODY},
    )
    async def revoke_signup_link(self, request: IRequest, user: User, link_id: str) -> bytes:
        """Revokes an unused sign-up link."""
        admin = _the_admin(user)
        lid = parse_id(link_id, "signup_link")
        await self._admin.revoke_signup_link(lid)
        target = Target("signup_link", lid)
        await record(self._audit, request, admin, Action.SIGNUP_LINK_REVOKED, target=target)
        return no_content(request)


def _the_admin(user: User) -> User:
    if not user.is_admin:
        raise Forbidden("only the instance administrator may do this", code="not_admin")
    return user
