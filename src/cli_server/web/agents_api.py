"""Local agents: ``POST /api/agent/register`` and the tunnel, ``GET /api/tunnel/{id}``.

Neither uses the browser session: registration is authorised by a one-time code, the tunnel by
the agent's token (``Authorization: Bearer``; ``?token=`` too, for agents from the original
project, and the access log never shows it).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from attrs import define
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from cli_server.domain.errors import BadRequest, Unauthorized
from cli_server.tunnel.hub import TunnelHub
from cli_server.tunnel.registrations import LocalAgents
from cli_server.web.body import read_json_object, required_text
from cli_server.web.ids import parse_id
from cli_server.web.request import client_host
from cli_server.web.responses import json_response


def tunnel_token(request: IRequest) -> str | None:
    auth = request.getHeader("authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    query = parse_qs(request.uri.partition(b"?")[2].decode("latin-1"))
    tokens = query.get("token")
    return tokens[0] if tokens else None


@define(eq=False)
class AgentsAPI:
    _agents: LocalAgents
    _hub: TunnelHub

    async def register(self, request: IRequest) -> bytes:
        body = read_json_object(request)
        code = required_text(body, "code", max_length=200)
        name = required_text(body, "name", max_length=100)
        use_server_key = body.get("use_server_key", False)
        if not isinstance(use_server_key, bool):
            raise BadRequest("use_server_key must be true or false", field="use_server_key")
        answer = await self._agents.register(code, name, use_server_key, client_host(request))
        return json_response(request, answer, 201)

    async def tunnel(self, request: IRequest, sandbox_id: str) -> IResource | bytes:
        sid = parse_id(sandbox_id, "sandbox")
        token = tunnel_token(request)
        if not token or not await self._agents.verify(sid, token):
            raise Unauthorized(
                "this tunnel token is not valid: the local sandbox was deleted or the token is"
                " wrong; register the agent again with a new code",
                code="invalid_tunnel_token",
            )
        if (request.getHeader("upgrade") or "").lower() != "websocket":
            raise BadRequest("this is a WebSocket endpoint: send an Upgrade: websocket request")
        return self._hub.resource(sid)
