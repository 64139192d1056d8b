"""Requests made with ``Authorization: Bearer <personal API token>`` (``auth.api_tokens``).

Such a request is a token request whatever else it carries: its cookies are not read, and the
Origin rule does not apply to it (browsers never add this header on their own, so no page of
another site can make one). The token must be valid (else 401, the same answer whatever was
wrong with it), its scope must cover the route's declared one, and a token restricted to one
workspace reaches nothing of another: the workspace, sandbox or invitation named by the path
must be of its workspace (else 404, as for an unknown id), and a route about no single
workspace takes it only if declared ``across_workspaces`` (lists narrow what they show).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import define, evolve
from twisted.web.iweb import IRequest

from cli_server.domain.accounts import User
from cli_server.domain.api_tokens import ApiTokens, Grant, InvalidToken, covers
from cli_server.domain.errors import Forbidden, NotFound
from cli_server.web.ids import parse_id

# Path arguments naming something that belongs to one workspace, and what a 404 calls it.
WORKSPACE_ARGUMENTS = {
    "workspace_id": "workspace",
    "sandbox_id": "sandbox",
    "invitation_id": "invitation",
}


def bearer_credential(request: IRequest) -> str | None:
    """The token of a token request ("" when it is malformed: more than one Authorization
    header, or no token after ``Bearer``); None for a request that does not use Bearer."""
    values = request.requestHeaders.getRawHeaders(b"authorization", [])
    schemes = [v.strip().partition(b" ")[0].lower() for v in values]
    if b"bearer" not in schemes:
        return None
    if len(values) != 1:
        return ""
    value: bytes = values[0]
    return value.strip().partition(b" ")[2].strip().decode("latin-1")


@define(eq=False)
class TokenGuard:
    _tokens: ApiTokens

    async def user(
        self, secret: str, needed: str, across_workspaces: bool, path_args: Mapping[str, Any]
    ) -> User:
        """The token's user, narrowed by the token (``User.token``), if it may call a route
        that needs ``needed`` with these path arguments."""
        found = await self._tokens.authenticate(secret)
        if found is None:
            raise InvalidToken()
        row, grant = found
        if needed == "session":
            raise Forbidden(
                "only a signed-in browser may do this; API tokens cannot", code="session_only"
            )
        if not covers(grant.scope, needed):
            raise Forbidden(
                f"this token's scope is {grant.scope}; this needs a {needed} token",
                code="insufficient_scope",
            )
        if grant.workspace_id is not None:
            await self._check_workspace(grant, across_workspaces, path_args)
        return evolve(User.from_row(row), token=grant)

    async def _check_workspace(
        self, grant: Grant, across_workspaces: bool, path_args: Mapping[str, Any]
    ) -> None:
        named = [(a, what) for a, what in WORKSPACE_ARGUMENTS.items() if a in path_args]
        if not named and not across_workspaces:
            raise Forbidden(
                "this token is restricted to one workspace, and this is not about one",
                code="token_workspace",
            )
        for argument, what in named:
            object_id = parse_id(str(path_args[argument]), what)
            workspace: str | None = object_id
            if what != "workspace":
                workspace = await self._tokens.workspace_of(what, object_id)
            if workspace != grant.workspace_id:
                raise NotFound(f"no such {what}", code=f"{what}_not_found")
