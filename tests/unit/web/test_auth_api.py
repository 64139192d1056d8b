"""``/api/auth``: registering, signing in and out, one's password, sessions, identities and API
tokens. Each route's answer as declared; each refusal (400 naming the field, 401, 403, 404,
429, the Origin rule) writes nothing and fires no event."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from cli_server.auth.tokens import token_hash
from cli_server.domain.api_tokens import ApiTokens
from cli_server.sso.identities import Identities
from cli_server.testing import MemoryFailures
from cli_server.web.auth_api import AuthAPI, AuthLimits
from tests.unit.web.fakes import PEOPLE, SIGNED_OUT, UNKNOWN, WHEN, Answer, RouteCase, World

COVERS = frozenset(
    {
        "register",
        "registration",
        "login",
        "change_password",
        "sessions",
        "revoke_session",
        "logout",
        "me",
        "providers",
        "identities",
        "unlink_identity",
        "create_token",
        "list_tokens",
        "revoke_token",
    }
)
GUEST = PEOPLE["guest"]
PASSWORD = "correct horse battery"
PROVIDERS = [{"name": "github", "label": "GitHub", "login_url": "/api/auth/oidc/github/login"}]
SESSION_ROW = {
    "id": UNKNOWN,
    "token_hash": token_hash("guest"),  # (the session of the cookie "guest")
    "created_at": WHEN,
    "last_seen_at": WHEN,
    "user_agent": "Firefox",
    "address": "127.0.0.1",
}
IDENTITY_ROW = {
    "id": UNKNOWN,
    "provider": "github",
    "email": None,
    "created_at": WHEN,
    "last_used_at": WHEN,
}
TOKEN_ROW = {
    "id": UNKNOWN,
    "name": "ci",
    "scope": "read",
    "workspace_id": None,
    "created_at": WHEN,
    "expires_at": WHEN.replace(year=2027),
    "last_used_at": None,
}


class AuthRouteTests(RouteCase):
    api_class = AuthAPI
    hash: str  # the guest's password, hashed

    def setUp(self) -> None:
        self.world = World()
        self.world.clock.advance(WHEN.timestamp())
        hashed: Deferred[str] = Deferred.fromCoroutine(self.world.passwords.hash(PASSWORD))
        self.world.db.rows.update(
            {
                "WHERE lower(u.username) = lower(%s)": lambda args: (
                    [{**GUEST_ROW, "password_hash": self.hash, "disabled_at": None}]
                    if args[0] == "guest"
                    else []
                ),
                "SELECT password_hash FROM users": lambda args: [{"password_hash": self.hash}],
                "AS has FROM users": [{"has": True}],
                "WITH opened AS": [{"id": GUEST.id}],
                "FROM sessions WHERE user_id": [SESSION_ROW],
                "DELETE FROM sessions WHERE id = %s": lambda args: (
                    [{"token_hash": token_hash("guest")}] if args[0] == UNKNOWN else []
                ),
                "DELETE FROM sessions WHERE token_hash": [{"user_id": GUEST.id}],
                "FROM identities": [IDENTITY_ROW],
                "FROM api_tokens WHERE user_id": [TOKEN_ROW],
                "FROM sessions WHERE token_hash = %s AND created_at": [{"?column?": 1}],
            }
        )
        self.hash = self.successResultOf(hashed)
        self.accounts = self.world.accounts()
        self.api = self.auth()

    def auth(self, **options: Any) -> AuthAPI:
        limits = AuthLimits(registrations_per_address=2)
        clock = self.world.clock
        db = self.world.database
        return AuthAPI(
            self.accounts,
            self.world.cookies(self.accounts),
            limits.guard(MemoryFailures(), clock),
            limits.registrations(MemoryFailures(), clock),
            **{
                "identities": Identities(db, labels={"github": "GitHub"}),
                "providers": lambda: PROVIDERS,
                "tokens": ApiTokens(db, clock),
                **options,
            },
        )

    def set_cookie(self, answer: Answer) -> str:
        cookie = answer.header(b"set-cookie")
        assert cookie is not None
        return cookie.decode()

    def test_register(self) -> None:
        """POST /register: 201 with the user; a bad name, password or email names its field;
        too many attempts from one address are 429; off with password login (403)."""
        body = {"username": "newcomer", "password": PASSWORD}
        self.assert_foreign_origin_refused("POST", "/register", body)
        for bad, field in [
            ({"password": PASSWORD}, "username"),
            ({**body, "username": "-x"}, "username"),
            ({**body, "password": "short"}, "password"),
            ({**body, "email": "not an address"}, "email"),
            ("[]", "body"),
        ]:
            self.assert_matrix("POST", "/register", bad, {None: (400, "invalid_request", field)})
        self.world.db.row = PEOPLE["stranger"]
        answer = self.answered("register", 201, "POST", "/register", body)
        self.assertEqual(answer.body["username"], "stranger")
        self.answered("register", 201, "POST", "/register", body)
        self.assert_matrix("POST", "/register", body, {None: (429, "too_many_requests")})
        self.api = self.auth(password_login=False)
        self.assert_matrix("POST", "/register", body, {None: (403, "password_login_off")})

    def test_registration(self) -> None:
        """GET /registration: the mode, whether the next account is the first, the rules."""
        answer = self.answered("registration", 200, "GET", "/registration")
        self.assertEqual((answer.body["mode"], answer.body["first"]), ("open", True))
        self.world.db.rows["SELECT 1 FROM users LIMIT 1"] = [{"?column?": 1}]
        self.assertFalse(self.answered("registration", 200, "GET", "/registration").body["first"])

    def test_login(self) -> None:
        """POST /login: the right password opens a session (its cookie in the answer); a
        wrong one is 401 and, repeated, 429; none of it is asked of anyone but the guard."""
        body = {"username": "guest", "password": PASSWORD}
        self.assert_foreign_origin_refused("POST", "/login", body)
        self.assert_matrix(
            "POST", "/login", {"username": "guest"}, {None: (400, "invalid_request", "password")}
        )
        answer = self.answered("login", 200, "POST", "/login", body)
        self.assertEqual((answer.body["username"], answer.body["has_password"]), ("guest", True))
        self.assertIn("cli_session=", self.set_cookie(answer))
        wrong = {"username": "guest", "password": "not the password"}
        for _ in range(5):
            self.assert_matrix("POST", "/login", wrong, {None: (401, "invalid_credentials")})
        self.assert_matrix("POST", "/login", wrong, {None: (429, "too_many_requests")})
        self.api = self.auth(password_login=False)
        self.assert_matrix("POST", "/login", body, {None: (403, "password_login_off")})

    def test_change_password(self) -> None:
        """PUT /password: signed in; a short new password names its field; a wrong current
        one is 403; a change ends the user's other sessions (the revocation event)."""
        body = {"current_password": PASSWORD, "new_password": "a new password"}
        self.assert_foreign_origin_refused("PUT", "/password", body)
        self.assert_matrix(
            "PUT",
            "/password",
            {**body, "new_password": "short"},
            {**SIGNED_OUT, "guest": (400, "invalid_request", "new_password")},
        )
        self.assert_matrix(
            "PUT",
            "/password",
            {"new_password": "a new password"},
            {"guest": (400, "invalid_request", "current_password")},
        )
        self.assert_matrix(
            "PUT",
            "/password",
            {**body, "current_password": "wrong password"},
            {"guest": (403, "wrong_password")},
        )
        self.answered("change_password", 204, "PUT", "/password", body, who="guest")
        self.assertEqual(self.world.db.writes, ["transaction"])
        self.assertEqual(self.world.heard.said, [("user_revoked", GUEST.id)])

    def test_sessions(self) -> None:
        """GET /sessions: the caller's sessions, the current one marked."""
        self.assert_matrix("GET", "/sessions", None, SIGNED_OUT)
        answer = self.answered("sessions", 200, "GET", "/sessions", who="guest")
        self.assertEqual([(s["id"], s["current"]) for s in answer.body], [(UNKNOWN, True)])

    def test_revoke_session(self) -> None:
        """DELETE /sessions/{id}: the current one is a logout (its cookie cleared); an
        unknown or malformed id is 404."""
        path = f"/sessions/{UNKNOWN}"
        self.assert_foreign_origin_refused("DELETE", path)
        self.assert_matrix("DELETE", path, None, SIGNED_OUT)
        self.assert_matrix("DELETE", "/sessions/x", None, {"guest": (404, "session_not_found")})
        other = "44444444-4444-4444-8444-444444444444"
        answer = self.call("DELETE", f"/sessions/{other}", who="guest")
        self.assertEqual((answer.status, answer.code), (404, "session_not_found"))
        answer = self.answered("revoke_session", 204, "DELETE", path, who="guest")
        self.assertIn("Max-Age=0", self.set_cookie(answer))
        self.assertEqual(self.world.heard.said, [("user_revoked", GUEST.id)])

    def test_logout(self) -> None:
        """POST /logout: the session ends on the server and its cookie is cleared."""
        self.assert_foreign_origin_refused("POST", "/logout")
        self.assert_matrix("POST", "/logout", None, SIGNED_OUT)
        answer = self.answered("logout", 204, "POST", "/logout", who="guest")
        self.assertIn("Max-Age=0", self.set_cookie(answer))
        self.assertEqual(self.world.db.writes, ["DELETE"])
        self.assertEqual(self.world.heard.said, [("user_revoked", GUEST.id)])

    def test_me(self) -> None:
        """GET /me: the signed-in user and whether the account has a password."""
        self.assert_matrix("GET", "/me", None, SIGNED_OUT)
        answer = self.answered("me", 200, "GET", "/me", who="guest")
        self.assertEqual((answer.body["id"], answer.body["has_password"]), (GUEST.id, True))

    def test_providers(self) -> None:
        """GET /providers: public; the configured sign-in providers."""
        self.assertEqual(self.answered("providers", 200, "GET", "/providers").body, PROVIDERS)

    def test_identities(self) -> None:
        """GET /identities: the caller's linked sign-ins, with their providers' labels."""
        self.assert_matrix("GET", "/identities", None, SIGNED_OUT)
        answer = self.answered("identities", 200, "GET", "/identities", who="guest")
        self.assertEqual([i["label"] for i in answer.body], ["GitHub"])
        self.api = self.auth(identities=None)
        self.assertEqual(
            self.answered("identities", 200, "GET", "/identities", who="guest").body, []
        )

    def test_unlink_identity(self) -> None:
        """DELETE /identities/{id}: a malformed id is 404; without single sign-on every id
        is unknown; the unlinking is one transaction."""
        path = f"/identities/{UNKNOWN}"
        self.assert_foreign_origin_refused("DELETE", path)
        self.assert_matrix("DELETE", path, None, SIGNED_OUT)
        self.assert_matrix("DELETE", "/identities/x", None, {"guest": (404, "identity_not_found")})
        self.answered("unlink_identity", 204, "DELETE", path, who="guest")
        self.assertEqual(self.world.db.writes, ["transaction"])
        self.api = self.auth(identities=None)
        self.assert_matrix("DELETE", path, None, {"guest": (404, "identity_not_found")})

    def test_create_token(self) -> None:
        """POST /tokens: from a fresh sign-in only; every field checked; 201 with the secret
        once; 404 where tokens are off."""
        body = {"name": "ci", "scope": "read", "expires_at": "2026-06-01T00:00:00Z"}
        self.assert_foreign_origin_refused("POST", "/tokens", body)
        self.assert_matrix("POST", "/tokens", body, SIGNED_OUT)
        for bad, field in [
            ({**body, "scope": "root"}, "scope"),
            ({**body, "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
            ({**body, "expires_at": "2026-06-01T00:00:00"}, "expires_at"),
            ({**body, "workspace_id": "x"}, "workspace_id"),
            ({**body, "colour": "red"}, "colour"),
            ({"scope": "read", "expires_at": body["expires_at"]}, "name"),
        ]:
            self.assert_matrix("POST", "/tokens", bad, {"guest": (400, "invalid_request", field)})
        self.world.db.row = TOKEN_ROW
        answer = self.answered("create_token", 201, "POST", "/tokens", body, who="guest")
        self.assertTrue(answer.body["token"])
        self.assertEqual(self.world.db.writes, ["transaction"])
        del self.world.db.rows["FROM sessions WHERE token_hash = %s AND created_at"]
        self.assert_matrix("POST", "/tokens", body, {"guest": (403, "sign_in_again")})
        self.api = self.auth(tokens=None)
        self.assert_matrix("POST", "/tokens", body, {"guest": (404, "not_found")})

    def test_list_tokens(self) -> None:
        """GET /tokens: the caller's tokens, never their secrets."""
        self.assert_matrix("GET", "/tokens", None, SIGNED_OUT)
        answer = self.answered("list_tokens", 200, "GET", "/tokens", who="guest")
        self.assertEqual([(t["name"], "token" in t) for t in answer.body], [("ci", False)])

    def test_revoke_token(self) -> None:
        """DELETE /tokens/{id}: 204 once revoked; an unknown or malformed id is 404."""
        path = f"/tokens/{UNKNOWN}"
        self.assert_foreign_origin_refused("DELETE", path)
        self.assert_matrix("DELETE", path, None, SIGNED_OUT)
        self.assert_matrix("DELETE", "/tokens/x", None, {"guest": (404, "token_not_found")})
        self.world.db.row = 0  # (the transaction revoked none)
        answer = self.call("DELETE", path, who="guest")
        self.assertEqual((answer.status, answer.code), (404, "token_not_found"))
        self.world.db.row = 1
        self.answered("revoke_token", 204, "DELETE", path, who="guest")


GUEST_ROW = {
    "id": GUEST.id,
    "username": GUEST.username,
    "email": None,
    "created_at": WHEN,
    "is_admin": False,
}
