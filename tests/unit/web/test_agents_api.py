"""Local agents (``web.agents_api``, routed by the main site): ``POST /api/agent/register``
trades a one-time code for a local sandbox; ``GET /api/tunnel/{id}`` hands an agent with its
sandbox's token to the tunnel hub."""

from __future__ import annotations

from typing import Any

from cli_server.tunnel.registrations import LocalAgents
from cli_server.web.agents_api import AgentsAPI
from cli_server.web.site import MainSite
from tests.unit.web.fakes import (
    FOREIGN,
    ORIGIN,
    SANDBOX,
    UNKNOWN,
    WORKSPACE,
    FakeHub,
    RouteCase,
    World,
    main_site,
)

COVERS = frozenset({"register_agent"})
REGISTERED = {
    "sandbox_id": SANDBOX,
    "workspace_id": WORKSPACE,
    "tunnel_token": "secret",
    "name": "laptop",
}
BODY = {"code": "one-time", "name": "laptop"}


class AgentRouteTests(RouteCase):
    api_class = MainSite

    def setUp(self) -> None:
        self.world = World()
        self.world.db.rows["AND s.tunnel_token_hash = %s"] = lambda args: (
            [{"?column?": 1}] if args[0] == SANDBOX else []
        )
        self.hub = FakeHub()
        self.ready = True
        db = self.world.database
        agents = LocalAgents(db, self.world.workspaces(), ORIGIN, ORIGIN + "/proxy/anthropic/v1")
        hub: Any = self.hub  # (a FakeHub where a TunnelHub is wanted)
        self.api = main_site(self.world, AgentsAPI(agents, hub), ready=lambda: self.ready)

    def test_register(self) -> None:
        """A good code: 201 with the sandbox and its tunnel token (the registration is one
        transaction); no browser session is needed, and none is read."""
        self.world.db.row = REGISTERED
        answer = self.answered(
            "register_agent", 201, "POST", "/api/agent/register", BODY, origin=None
        )
        self.assertEqual(answer.body, REGISTERED)
        self.assertEqual(self.world.db.writes, ["transaction"])

    def test_register_refusals(self) -> None:
        """A bad body names its field (nothing asked of the database); an unknown, used or
        expired code is 401; another origin is refused; a server still starting, 503."""
        path = "/api/agent/register"
        for body, field in [
            ({"name": "laptop"}, "code"),
            ({"code": "one-time"}, "name"),
            ({**BODY, "name": "x" * 101}, "name"),
            ({**BODY, "use_server_key": "yes"}, "use_server_key"),
            ("code", "body"),
        ]:
            self.assert_matrix("POST", path, body, {None: (400, "invalid_request", field)})
        self.assert_matrix("POST", path, BODY, {None: (403, "bad_origin")}, origin=FOREIGN)
        answer = self.call("POST", path, BODY, origin=None)  # (the code is burnt: one UPDATE)
        self.assertEqual((answer.status, answer.code), (401, "invalid_code"))
        self.ready = False
        self.assert_matrix("POST", path, BODY, {None: (503, "starting")})

    def test_tunnel(self) -> None:
        """The tunnel: the sandbox's token (Bearer, or ``?token=`` for older agents) and a
        WebSocket upgrade; the hub gets the connection."""
        upgrade = {"Upgrade": "websocket"}
        for headers, query in [({"Authorization": "Bearer secret"}, ""), ({}, "?token=secret")]:
            answer = self.call(
                "GET", f"/api/tunnel/{SANDBOX}{query}", headers={**upgrade, **headers}
            )
            self.assertEqual((answer.status, answer.body), (200, f"tunnel of {SANDBOX}".encode()))
        self.assertEqual(self.hub.opened, [SANDBOX, SANDBOX])

    def test_tunnel_refusals(self) -> None:
        """No token, another sandbox's id or a malformed one: refused before the hub; a
        request that is no upgrade is 400."""
        token = {"Authorization": "Bearer secret", "Upgrade": "websocket"}
        for path, headers, expected in [
            (f"/api/tunnel/{SANDBOX}", {"Upgrade": "websocket"}, (401, "invalid_tunnel_token")),
            (f"/api/tunnel/{UNKNOWN}", token, (401, "invalid_tunnel_token")),
            ("/api/tunnel/x", token, (404, "sandbox_not_found")),
            (
                f"/api/tunnel/{SANDBOX}",
                {"Authorization": "Bearer secret"},
                (400, "invalid_request"),
            ),
        ]:
            answer = self.refused("GET", path, headers=headers)
            self.assertEqual((answer.status, answer.code), expected, path)
        self.assertEqual(self.hub.opened, [])
