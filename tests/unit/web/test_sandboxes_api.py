"""``/api/sandboxes/{id}``: each route's answer as declared; non-members learn nothing (404 as
for an unknown id), roles decide (403), and a refusal writes nothing and fires no event."""

from __future__ import annotations

from cli_server.proxy.access import SandboxAccess
from cli_server.proxy.urls import SandboxUrls
from cli_server.sandboxes.backend import Endpoint
from cli_server.testing import FakeBackend
from cli_server.web.sandboxes_api import SandboxesAPI
from tests.unit.web.fakes import SANDBOX, SANDBOX_ROW, SIGNED_OUT, UNKNOWN, Cells, RouteCase, World

COVERS = frozenset(
    {
        "get_sandbox",
        "delete_sandbox",
        "pause_sandbox",
        "resume_sandbox",
        "sandbox_logs",
        "sandbox_ports",
        "open_sandbox",
    }
)
NON_MEMBER: Cells = {"stranger": (404, "sandbox_not_found")}


class SandboxRouteTests(RouteCase):
    api_class = SandboxesAPI

    def setUp(self) -> None:
        self.world = World()
        self.backend = FakeBackend()
        self.manager = self.world.manager(backend=self.backend)
        self.api = SandboxesAPI(
            self.manager,
            self.world.cookies(),
            SandboxAccess(self.world.database, self.world.clock, 3600.0),
            SandboxUrls("http", "localhost:8080"),
        )

    def assert_unknown_ids(self, method: str, action: str = "") -> None:
        """An id of no sandbox, or no id at all, is 404 even to an owner."""
        for sandbox in (UNKNOWN, "x"):
            self.assert_matrix(
                method, f"/{sandbox}{action}", None, {"owner": (404, "sandbox_not_found")}
            )

    def test_get_sandbox(self) -> None:
        """GET /{s}: any member of its workspace."""
        self.assert_matrix("GET", f"/{SANDBOX}", None, {**SIGNED_OUT, **NON_MEMBER})
        self.assert_unknown_ids("GET")
        answer = self.answered("get_sandbox", 200, "GET", f"/{SANDBOX}", who="guest")
        self.assertEqual((answer.body["id"], answer.body["status"]), (SANDBOX, "running"))

    def test_delete_sandbox(self) -> None:
        """DELETE /{s}: developers and up; its process goes, then its row."""
        path = f"/{SANDBOX}"
        self.assert_foreign_origin_refused("DELETE", path)
        self.assert_matrix(
            "DELETE", path, None, {**SIGNED_OUT, **NON_MEMBER, "guest": (403, "forbidden")}
        )
        self.assert_unknown_ids("DELETE")
        self.answered("delete_sandbox", 204, "DELETE", path, who="developer")
        self.assertEqual(self.world.db.writes, ["UPDATE", "DELETE"])
        self.assertIn(("delete", SANDBOX), self.backend.calls)

    def test_pause_sandbox(self) -> None:
        """POST /{s}/pause: developers and up; a sandbox that moved on meanwhile is 409; a
        pause is the status transition, told to listeners."""
        path = f"/{SANDBOX}/pause"
        self.assert_foreign_origin_refused("POST", path)
        self.assert_matrix(
            "POST", path, None, {**SIGNED_OUT, **NON_MEMBER, "guest": (403, "forbidden")}
        )
        self.assert_unknown_ids("POST", "/pause")
        # (no row to update: the transition finds the sandbox moved on, after asking)
        answer = self.call("POST", path, who="developer")
        self.assertEqual((answer.status, answer.code), (409, "invalid_state"))
        self.assertEqual(self.world.db.writes, ["UPDATE"])
        self.world.db.rows["UPDATE sandboxes SET status"] = [{**SANDBOX_ROW, "status": "pausing"}]
        answer = self.answered("pause_sandbox", 200, "POST", path, who="developer")
        self.assertEqual(answer.body["status"], "pausing")
        self.assertIn(("sandbox_status_changed", SANDBOX), self.world.heard.said)

    def test_resume_sandbox(self) -> None:
        """POST /{s}/resume: developers and up; a sandbox not resumable is 409."""
        path = f"/{SANDBOX}/resume"
        self.assert_foreign_origin_refused("POST", path)
        self.assert_matrix(
            "POST", path, None, {**SIGNED_OUT, **NON_MEMBER, "guest": (403, "forbidden")}
        )
        self.assert_unknown_ids("POST", "/resume")
        answer = self.call("POST", path, who="developer")  # (the transaction resumes none)
        self.assertEqual((answer.status, answer.code), (409, "invalid_state"))
        self.world.db.row = {**SANDBOX_ROW, "status": "resuming"}
        answer = self.answered("resume_sandbox", 200, "POST", path, who="developer")
        self.assertEqual(answer.body["status"], "resuming")

    def test_local_sandboxes_follow_their_agent(self) -> None:
        """A local sandbox is not paused, resumed or asked for logs here: 409."""
        self.world.sandbox = {**SANDBOX_ROW, "is_local": True}
        for method, action in [("POST", "/pause"), ("POST", "/resume"), ("GET", "/logs")]:
            answer = self.refused(method, f"/{SANDBOX}{action}", None, "developer")
            self.assertEqual(answer.status, 409, action)

    def test_sandbox_logs(self) -> None:
        """GET /{s}/logs: developers and up; its opencode output's tail."""
        path = f"/{SANDBOX}/logs"
        self.assert_matrix(
            "GET", path, None, {**SIGNED_OUT, **NON_MEMBER, "guest": (403, "forbidden")}
        )
        self.assert_unknown_ids("GET", "/logs")
        self.backend.output[SANDBOX] = ["opencode listening"]
        answer = self.answered("sandbox_logs", 200, "GET", path, who="developer")
        self.assertEqual(answer.body, {"lines": ["opencode listening"], "truncated": False})

    def test_sandbox_ports(self) -> None:
        """GET /{s}/ports: any member, while it runs (409 otherwise)."""
        path = f"/{SANDBOX}/ports"
        self.assert_matrix("GET", path, None, {**SIGNED_OUT, **NON_MEMBER})
        self.assert_unknown_ids("GET", "/ports")
        self.backend.running[SANDBOX] = Endpoint("127.0.0.1", 4096)
        self.backend.listening[SANDBOX] = [5173]
        answer = self.answered("sandbox_ports", 200, "GET", path, who="guest")
        self.assertEqual(answer.body["ports"], [5173])
        self.world.sandbox = {**SANDBOX_ROW, "status": "paused"}
        answer = self.refused("GET", path, None, "guest")
        self.assertEqual((answer.status, answer.code), (409, "invalid_state"))

    def test_open_sandbox(self) -> None:
        """POST /{s}/open: any member gets a one-time link to the sandbox's subdomain, or to
        a preview port's; a bad body names its field."""
        path = f"/{SANDBOX}/open"
        self.assert_foreign_origin_refused("POST", path)
        self.assert_matrix("POST", path, None, {**SIGNED_OUT, **NON_MEMBER})
        self.assert_unknown_ids("POST", "/open")
        for body, field in [
            ({"port": "5173"}, "port"),
            ({"port": 5173.0}, "port"),
            ({"port": True}, "port"),
            ({"port": 0}, "port"),
            ({"colour": "red"}, "colour"),
            ([5173], "body"),
        ]:
            self.assert_matrix("POST", path, body, {"guest": (400, "invalid_request", field)})
        answer = self.answered("open_sandbox", 200, "POST", path, who="guest")
        self.assertTrue(
            answer.body["url"].startswith(f"http://oc-{SANDBOX}.localhost:8080/_cli/auth?ticket=")
        )
        answer = self.answered("open_sandbox", 200, "POST", path, {"port": 5173}, who="guest")
        self.assertIn(f"oc-{SANDBOX}-p5173.", answer.body["url"])
        self.assertEqual(self.world.db.writes, ["INSERT", "INSERT"])
