"""``/api/workspaces``: each route's answer as declared, and each refusal (401 signed out, 404
to non-members and for unknown or malformed ids, 403 by role, 400 for a bad body, 403 for a
change from another origin) with nothing written and no event fired."""

from __future__ import annotations

from cli_server.anthropic.usage import UsageStore
from cli_server.tunnel.registrations import LocalAgents
from cli_server.web.sandboxes_api import WorkspaceSandboxesAPI
from cli_server.web.workspaces_api import WorkspacesAPI
from tests.unit.web.fakes import (
    ORIGIN,
    PEOPLE,
    SANDBOX,
    SANDBOX_ROW,
    SIGNED_OUT,
    UNKNOWN,
    WHEN,
    WORKSPACE,
    Cells,
    RouteCase,
    World,
)

COVERS = frozenset(
    {
        "list_workspaces",
        "create_workspace",
        "get_workspace",
        "delete_workspace",
        "list_members",
        "add_member",
        "list_invitations",
        "update_member",
        "remove_member",
        "list_sandboxes",
        "create_sandbox",
        "agent_code",
        "usage",
        "set_budget",
        "audit",
    }
)
DEVELOPER = PEOPLE["developer"].id
WORKSPACE_ROW = {"id": WORKSPACE, "name": "team", "role": "owner", "created_at": WHEN}
MEMBER_ROW = {"user_id": DEVELOPER, "username": "developer", "role": "guest", "created_at": WHEN}
PENDING_ROW = {
    "id": UNKNOWN,
    "username": "newcomer",
    "role": "developer",
    "invited_by": "owner",
    "created_at": WHEN,
    "expires_at": WHEN,
}
NO_USAGE = dict.fromkeys(
    ["requests", "input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens"]
)
# Who is refused what on routes for members of at least ``role``.
NON_MEMBER: Cells = {"stranger": (404, "workspace_not_found")}


class WorkspaceRouteTests(RouteCase):
    api_class = WorkspacesAPI

    def setUp(self) -> None:
        self.world = World()
        self.world.db.rows.update(
            {
                "JOIN workspace_members m ON m.workspace_id = w.id": [WORKSPACE_ROW],
                "count(*) AS total": [{"total": 2, "running": 1}],
                "JOIN users u ON u.id = m.user_id": [MEMBER_ROW],
                "AND i.workspace_id = %s": [PENDING_ROW],
                "lower(username) = lower(%s)": lambda args: (
                    [{"id": UNKNOWN, "email": None, "actor_email": None}]
                    if args[1] == "newcomer"
                    else []
                ),
                "FROM sandboxes WHERE workspace_id": [SANDBOX_ROW],
                "INSERT INTO agent_codes": [{"expires_at": WHEN}],
                "SELECT sum(requests)": [NO_USAGE],
            }
        )
        workspaces = self.world.workspaces()
        manager = self.world.manager(workspaces)
        db = self.world.database
        self.api = WorkspacesAPI(
            workspaces,
            self.world.cookies(),
            manager,
            WorkspaceSandboxesAPI(manager),
            UsageStore(db),
            LocalAgents(db, workspaces, ORIGIN, ORIGIN + "/proxy/anthropic/v1"),
        )

    def test_list_workspaces(self) -> None:
        """GET /: the caller's workspaces with the caller's role."""
        self.assert_matrix("GET", "/", None, SIGNED_OUT)
        answer = self.answered("list_workspaces", 200, "GET", "/", who="stranger")
        self.assertEqual([w["id"] for w in answer.body], [WORKSPACE])

    def test_create_workspace(self) -> None:
        """POST /: anyone signed in, with a name; 201 with the workspace."""
        self.assert_foreign_origin_refused("POST", "/", {"name": "team"})
        self.assert_matrix("POST", "/", {"name": "team"}, SIGNED_OUT)
        self.assert_matrix("POST", "/", {}, {"stranger": (400, "invalid_request", "name")})
        self.assert_matrix(
            "POST", "/", {"name": "x" * 101}, {"stranger": (400, "invalid_request", "name")}
        )
        self.world.db.row = WORKSPACE_ROW
        answer = self.answered("create_workspace", 201, "POST", "/", {"name": "team"}, who="guest")
        self.assertEqual(answer.body["name"], "team")
        self.assertEqual(self.world.db.writes, ["transaction"])

    def test_create_needs_json(self) -> None:
        """A body that is not declared JSON is refused with 415; one that is no JSON, 400."""
        answer = self.refused(
            "POST", "/", None, "owner", data=b"name=x", headers={"Content-Type": "text/plain"}
        )
        self.assertEqual(answer.status, 415)
        answer = self.refused(
            "POST", "/", None, "owner", data=b"{", headers={"Content-Type": "application/json"}
        )
        self.assertEqual((answer.status, answer.code), (400, "invalid_request"))

    def test_get_workspace(self) -> None:
        """GET /{w}: members see it with its sandbox counts; others, and ids of nothing, 404."""
        path = f"/{WORKSPACE}"
        self.world.db.rows["JOIN workspace_members m ON m.workspace_id = w.id"] = lambda args: (
            [WORKSPACE_ROW] if args == (WORKSPACE, PEOPLE["guest"].id) else []
        )
        self.assert_matrix("GET", path, None, {**SIGNED_OUT, **NON_MEMBER})
        for other in (f"/{UNKNOWN}", "/not-an-id"):
            self.assert_matrix("GET", other, None, {"guest": (404, "workspace_not_found")})
        answer = self.answered("get_workspace", 200, "GET", path, who="guest")
        self.assertEqual(answer.body["sandbox_counts"], {"total": 2, "running": 1})

    def test_delete_workspace(self) -> None:
        """DELETE /{w}: owners only; the sandboxes go first, then the workspace, and each
        member's access ends with the event."""
        path = f"/{WORKSPACE}"
        self.assert_foreign_origin_refused("DELETE", path)
        self.assert_matrix(
            "DELETE",
            path,
            None,
            {
                **SIGNED_OUT,
                **NON_MEMBER,
                "guest": (403, "forbidden"),
                "developer": (403, "forbidden"),
            },
        )
        self.assert_matrix("DELETE", "/x", None, {"owner": (404, "workspace_not_found")})
        self.world.db.row = [{"user_id": DEVELOPER}]  # (the members the transaction found)
        self.answered("delete_workspace", 204, "DELETE", path, who="owner")
        self.assertEqual(self.world.db.writes, ["UPDATE", "DELETE", "transaction"])
        self.assertIn(("member_changed", DEVELOPER, WORKSPACE), self.world.heard.said)
        self.assertIn(("sandbox_deleted", SANDBOX), self.world.heard.said)

    def test_list_members(self) -> None:
        """GET /{w}/members: any member."""
        path = f"/{WORKSPACE}/members"
        self.assert_matrix("GET", path, None, {**SIGNED_OUT, **NON_MEMBER})
        answer = self.answered("list_members", 200, "GET", path, who="guest")
        self.assertEqual([m["username"] for m in answer.body], ["developer"])

    def test_add_member(self) -> None:
        """POST /{w}/members: maintainers and up; the username and the role are checked; an
        invitation is 201 (200 when it was pending already)."""
        path = f"/{WORKSPACE}/members"
        self.assert_foreign_origin_refused("POST", path, {"username": "newcomer"})
        self.assert_matrix(
            "POST",
            path,
            {"username": "newcomer"},
            {
                **SIGNED_OUT,
                **NON_MEMBER,
                "guest": (403, "forbidden"),
                "developer": (403, "forbidden"),
            },
        )
        for body, field in [
            ({"role": "developer"}, "username"),
            ({"username": "newcomer", "role": "root"}, "role"),
            ("not an object", "body"),
        ]:
            self.assert_matrix("POST", path, body, {"owner": (400, "invalid_request", field)})
        self.assert_matrix("POST", path, {"username": "nobody"}, {"owner": (404, "user_not_found")})
        for created, status in [(True, 201), (False, 200)]:
            self.world.db.row = ({"id": UNKNOWN, "created": created}, PENDING_ROW)
            answer = self.answered(
                "add_member", status, "POST", path, {"username": "newcomer"}, who="owner"
            )
            self.assertEqual(
                (answer.body["status"], answer.body["invitation_id"]), ("invited", UNKNOWN)
            )

    def test_list_invitations(self) -> None:
        """GET /{w}/invitations: owners and maintainers."""
        path = f"/{WORKSPACE}/invitations"
        self.assert_matrix(
            "GET", path, None, {**SIGNED_OUT, **NON_MEMBER, "developer": (403, "forbidden")}
        )
        answer = self.answered("list_invitations", 200, "GET", path, who="owner")
        self.assertEqual([i["username"] for i in answer.body], ["newcomer"])

    def test_update_member(self) -> None:
        """PUT /{w}/members/{m}: owners only; a wrong role names the field; a change is one
        transaction, and the member's access is revoked by the domain's event."""
        path = f"/{WORKSPACE}/members/{DEVELOPER}"
        self.assert_foreign_origin_refused("PUT", path, {"role": "guest"})
        self.assert_matrix(
            "PUT",
            path,
            {"role": "guest"},
            {
                **SIGNED_OUT,
                **NON_MEMBER,
                "guest": (403, "forbidden"),
                "developer": (403, "forbidden"),
            },
        )
        for body in ({"role": "king"}, {}):
            self.assert_matrix("PUT", path, body, {"owner": (400, "invalid_request", "role")})
        self.assert_matrix(
            "PUT",
            f"/{WORKSPACE}/members/x",
            {"role": "guest"},
            {"owner": (404, "member_not_found")},
        )
        self.world.db.row = MEMBER_ROW
        answer = self.answered("update_member", 200, "PUT", path, {"role": "guest"}, who="owner")
        self.assertEqual(answer.body["role"], "guest")
        self.assertEqual(self.world.db.writes, ["transaction"])
        self.assertEqual(self.world.heard.said, [("member_changed", DEVELOPER, WORKSPACE)])

    def test_remove_member(self) -> None:
        """DELETE /{w}/members/{m}: owners remove others, members leave; the event follows."""
        path = f"/{WORKSPACE}/members/{DEVELOPER}"
        self.assert_foreign_origin_refused("DELETE", path)
        self.assert_matrix(
            "DELETE", path, None, {**SIGNED_OUT, **NON_MEMBER, "guest": (403, "forbidden")}
        )
        self.assert_matrix(
            "DELETE", f"/{WORKSPACE}/members/not-an-id", None, {"owner": (404, "member_not_found")}
        )
        self.answered("remove_member", 204, "DELETE", path, who="developer")  # (leaving)
        self.assertEqual(self.world.heard.said, [("member_changed", DEVELOPER, WORKSPACE)])

    def test_list_sandboxes(self) -> None:
        """GET /{w}/sandboxes: any member."""
        path = f"/{WORKSPACE}/sandboxes"
        self.assert_matrix("GET", path, None, {**SIGNED_OUT, **NON_MEMBER})
        self.assert_matrix("GET", "/x/sandboxes", None, {"owner": (404, "workspace_not_found")})
        answer = self.answered("list_sandboxes", 200, "GET", path, who="guest")
        self.assertEqual([s["id"] for s in answer.body], [SANDBOX])

    def test_create_sandbox(self) -> None:
        """POST /{w}/sandboxes: developers and up, with a name; 201, the start under way."""
        path = f"/{WORKSPACE}/sandboxes"
        self.assert_foreign_origin_refused("POST", path, {"name": "box"})
        self.assert_matrix(
            "POST", path, {"name": "box"}, {**SIGNED_OUT, **NON_MEMBER, "guest": (403, "forbidden")}
        )
        self.assert_matrix("POST", path, {}, {"developer": (400, "invalid_request", "name")})
        self.world.db.row = {**SANDBOX_ROW, "status": "creating"}
        answer = self.answered(
            "create_sandbox", 201, "POST", path, {"name": "box"}, who="developer"
        )
        self.assertEqual(answer.body["status"], "creating")
        self.assertEqual(self.world.db.writes[0], "transaction")

    def test_agent_code(self) -> None:
        """POST /{w}/agent-code: developers and up; a one-time code and the server's URL."""
        path = f"/{WORKSPACE}/agent-code"
        self.assert_foreign_origin_refused("POST", path)
        self.assert_matrix(
            "POST", path, None, {**SIGNED_OUT, **NON_MEMBER, "guest": (403, "forbidden")}
        )
        answer = self.answered("agent_code", 201, "POST", path, who="developer")
        self.assertEqual(answer.body["server_url"], ORIGIN)
        self.assertEqual(self.world.db.writes, ["INSERT"])

    def test_usage(self) -> None:
        """GET /{w}/usage: any member; this month's tokens and whether Claude is set up."""
        path = f"/{WORKSPACE}/usage"
        self.assert_matrix("GET", path, None, {**SIGNED_OUT, **NON_MEMBER})
        answer = self.answered("usage", 200, "GET", path, who="guest")
        self.assertEqual(answer.body["month"]["total_tokens"], 0)

    def test_set_budget(self) -> None:
        """PUT /{w}/budget: owners only, before the body is read; then the body is checked."""
        path = f"/{WORKSPACE}/budget"
        self.assert_foreign_origin_refused("PUT", path, {"monthly_tokens": 5})
        self.assert_matrix(
            "PUT",
            path,
            {"monthly_tokens": "lots"},
            {
                **SIGNED_OUT,
                **NON_MEMBER,
                "developer": (403, "forbidden"),
                "owner": (400, "invalid_request", "monthly_tokens"),
            },
        )
        for value in (-1, 1.5, True, 10**16):
            self.assert_matrix(
                "PUT",
                path,
                {"monthly_tokens": value},
                {"owner": (400, "invalid_request", "monthly_tokens")},
            )
        self.assert_matrix("PUT", path, {}, {"owner": (400, "invalid_request", "monthly_tokens")})
        self.answered("set_budget", 200, "PUT", path, {"monthly_tokens": None}, who="owner")
        self.assertEqual(self.world.db.writes, ["transaction"])

    def test_audit(self) -> None:
        """GET /{w}/audit: owners and maintainers; bad filters are 400 naming the field."""
        path = f"/{WORKSPACE}/audit"
        self.assert_matrix(
            "GET", path, None, {**SIGNED_OUT, **NON_MEMBER, "developer": (403, "forbidden")}
        )
        for query, field in [("action=nonsense", "action"), ("limit=0", "limit")]:
            self.assert_matrix(
                "GET", f"{path}?{query}", None, {"owner": (400, "invalid_request", field)}
            )
        answer = self.answered("audit", 200, "GET", path, who="owner")
        self.assertEqual(answer.body, {"entries": [], "next": None})
