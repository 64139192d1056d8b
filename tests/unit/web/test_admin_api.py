"""``/api/admin``: only the instance admin gets past 403; ids are checked; a refusal changes
nothing."""

from __future__ import annotations

from cli_server.domain.instance_admin import InstanceAdmin
from cli_server.web.admin_api import AdminAPI
from tests.unit.web.fakes import PEOPLE, UNKNOWN, WHEN, RouteCase, World

COVERS = frozenset(
    {
        "users",
        "disable",
        "enable",
        "reset_password",
        "create_signup_link",
        "signup_links",
        "revoke_signup_link",
    }
)
DEVELOPER = PEOPLE["developer"].id
ADMIN = PEOPLE["admin"].id
USER_ROW = {
    "id": DEVELOPER,
    "username": "developer",
    "email": None,
    "created_at": WHEN,
    "is_admin": False,
    "disabled_at": None,
    "last_seen_at": None,
}
LINK_ROW = {"id": UNKNOWN, "created_at": WHEN, "expires_at": WHEN, "used_at": None, "used_by": None}


class AdminTests(RouteCase):
    api_class = AdminAPI

    def setUp(self) -> None:
        self.world = World()
        self.world.db.rows.update(
            {
                "FROM users ORDER BY": [USER_ROW],
                "INSERT INTO signup_links": [{"expires_at": WHEN}],
                "FROM signup_links l": [LINK_ROW],
                "DELETE FROM signup_links": lambda args: [{"id": a} for a in args if a == UNKNOWN],
            }
        )
        admin = InstanceAdmin(self.world.database, self.world.passwords, self.world.events)
        self.api = AdminAPI(admin, self.world.cookies(), "http://localhost:8080/", "invite")

    def assert_admin_only(self, method: str, path: str) -> None:
        """Signed out: 401; anyone but the admin, owners of workspaces too: 403 not_admin;
        from another origin, a change is refused before that."""
        self.assert_matrix(
            method,
            path,
            None,
            {
                None: (401, "unauthorized"),
                "owner": (403, "not_admin"),
                "stranger": (403, "not_admin"),
            },
        )
        if method != "GET":
            self.assert_foreign_origin_refused(method, path)

    def test_users(self) -> None:
        """GET /users: every account, with whether it is disabled."""
        self.assert_admin_only("GET", "/users")
        answer = self.answered("users", 200, "GET", "/users", who="admin")
        self.assertEqual(
            [(u["username"], u["disabled"]) for u in answer.body], [("developer", False)]
        )

    def test_disable(self) -> None:
        """POST /users/{id}/disable: 204 and the user's revocation event; never one's own
        account (409); a malformed id is an unknown user."""
        path = f"/users/{DEVELOPER}/disable"
        self.assert_admin_only("POST", path)
        self.assert_matrix(
            "POST", "/users/nobody/disable", None, {"admin": (404, "user_not_found")}
        )
        self.assert_matrix("POST", f"/users/{ADMIN}/disable", None, {"admin": (409, "own_account")})
        self.answered("disable", 204, "POST", path, who="admin")
        self.assertEqual(self.world.db.writes, ["transaction"])
        self.assertEqual(self.world.heard.said, [("user_disabled", DEVELOPER)])

    def test_enable(self) -> None:
        """POST /users/{id}/enable: 204, one transaction, no revocation."""
        path = f"/users/{DEVELOPER}/enable"
        self.assert_admin_only("POST", path)
        self.assert_matrix("POST", "/users/x/enable", None, {"admin": (404, "user_not_found")})
        self.answered("enable", 204, "POST", path, who="admin")
        self.assertEqual(self.world.db.writes, ["transaction"])
        self.assertEqual(self.world.heard.said, [])

    def test_reset_password(self) -> None:
        """POST /users/{id}/password: a temporary password in the answer; the user's sessions
        end; the admin's own account is refused (409)."""
        path = f"/users/{DEVELOPER}/password"
        self.assert_admin_only("POST", path)
        self.assert_matrix(
            "POST", f"/users/{ADMIN}/password", None, {"admin": (409, "own_account")}
        )
        answer = self.answered("reset_password", 200, "POST", path, who="admin")
        self.assertGreaterEqual(len(answer.body["password"]), 12)
        self.assertEqual(self.world.heard.said, [("user_revoked", DEVELOPER)])

    def test_create_signup_link(self) -> None:
        """POST /signup-links: 201 with the token in the URL's fragment and the mode."""
        self.assert_admin_only("POST", "/signup-links")
        answer = self.answered("create_signup_link", 201, "POST", "/signup-links", who="admin")
        self.assertTrue(answer.body["url"].startswith("http://localhost:8080/#invite="))
        self.assertEqual(answer.body["mode"], "invite")
        self.assertEqual(self.world.db.writes, ["INSERT"])

    def test_signup_links(self) -> None:
        """GET /signup-links: those not expired and those used."""
        self.assert_admin_only("GET", "/signup-links")
        answer = self.answered("signup_links", 200, "GET", "/signup-links", who="admin")
        self.assertEqual([link["id"] for link in answer.body], [UNKNOWN])

    def test_revoke_signup_link(self) -> None:
        """DELETE /signup-links/{id}: 204; an unknown or malformed id is 404."""
        self.assert_admin_only("DELETE", f"/signup-links/{UNKNOWN}")
        self.assert_matrix(
            "DELETE", "/signup-links/x", None, {"admin": (404, "signup_link_not_found")}
        )
        other = "44444444-4444-4444-8444-444444444444"
        answer = self.call("DELETE", f"/signup-links/{other}", who="admin")
        self.assertEqual((answer.status, answer.code), (404, "signup_link_not_found"))
        self.answered("revoke_signup_link", 204, "DELETE", f"/signup-links/{UNKNOWN}", who="admin")
