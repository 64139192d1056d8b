"""``/api/auth/oidc/{provider}/login`` and ``/callback`` with a fake provider: the login
redirects to the provider with a flow cookie; whatever goes wrong in the callback lands the
browser on ``/?sso_error=<code>``, and only a complete one opens a session."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from attrs import define, field

from cli_server.domain.accounts import User
from cli_server.sso.claims import Claims, SignInRefused
from cli_server.sso.flow import Pending, PendingSignIns
from cli_server.sso.http import ProviderDown, ProviderError
from cli_server.sso.providers import SsoProviders
from cli_server.web.sso_api import SsoAPI
from tests.unit.web.fakes import PEOPLE, RouteCase, World

COVERS = frozenset({"sso_login", "sso_callback"})
GUEST = PEOPLE["guest"]
AUTHORIZE = "https://idp.example/authorize"
CLAIMS = Claims("fake", "subject-1", "guest@example.com", True, "guest")


@define(eq=False)
class FakeProvider:
    """A sign-in provider (FAKE: the real OpenID one runs only in integration tests): its
    authorize URL carries the state; ``fail`` makes its next call raise that error."""

    name: str = "fake"
    label: str = "Fake ID"
    fail: Exception | None = None
    gives: Claims = CLAIMS  # who the provider says signed in
    asked: list[Pending] = field(factory=list)

    async def authorize_url(self, pending: Pending) -> str:
        self.asked.append(pending)
        self._maybe_fail()
        return f"{AUTHORIZE}?state={pending.state}"

    async def claims(self, code: str, pending: Pending) -> Claims:
        self.asked.append(pending)
        self._maybe_fail()
        return self.gives

    def _maybe_fail(self) -> None:
        failure, self.fail = self.fail, None
        if failure is not None:
            raise failure


@define(eq=False)
class FakeSignIns:
    """``sso.claims.SignIns`` (FAKE): signs the guest in, or refuses with ``refuse``."""

    refuse: str | None = None
    linked: list[tuple[Claims, str | None]] = field(factory=list)

    async def sign_in(self, claims: Claims, link_to: str | None) -> User:
        if self.refuse is not None:
            raise SignInRefused("refused", code=self.refuse)
        self.linked.append((claims, link_to))
        return GUEST


def pending(link_to: str | None = None, return_to: str = "/w/1") -> Pending:
    return Pending("fake", "the-state", "v" * 64, "nonce", return_to, link_to, 1e12)


class SsoRouteTests(RouteCase):
    api_class = SsoAPI

    def setUp(self) -> None:
        self.world = World()
        self.world.db.rows.update(
            {
                "WITH opened AS": [{"id": GUEST.id}],  # (a session opens)
                "FROM sessions WHERE token_hash = %s AND created_at": [{"?column?": 1}],
            }
        )
        self.provider = FakeProvider()
        self.sign_ins = FakeSignIns()
        accounts = self.world.accounts()
        providers = SsoProviders(
            {"fake": self.provider},
            allowed_domains=("example.com",),
            pending=PendingSignIns(self.world.database, self.world.clock),
        )
        sign_ins: Any = self.sign_ins
        self.api = SsoAPI(providers, sign_ins, accounts, self.world.cookies(accounts), False)

    def landed(self, answer: Any, code: str) -> None:
        self.assertEqual(answer.status, 303, answer.body)
        self.assertEqual(answer.header(b"location"), b"/?sso_error=" + quote(code).encode())

    def callback(self, query: str = "state=the-state&code=c", **options: Any) -> Any:
        options.setdefault("headers", {"Cookie": "cli_sso=flow"})
        return self.answered("sso_callback", 303, "GET", f"/fake/callback?{query}", **options)

    def test_login(self) -> None:
        """A sign-in under way is stored, its cookie set (HttpOnly, SameSite=Lax), and the
        browser sent to the provider; ``return_to`` is kept only if it is a path here."""
        self.world.db.row = {"expires": 1e12}
        for asked, kept in [("/w/1", "/w/1"), ("https://evil.example/", "/"), ("//evil", "/")]:
            answer = self.answered(
                "sso_login", 302, "GET", f"/fake/login?return_to={quote(asked, safe='')}"
            )
            location = answer.header(b"location")
            assert location is not None
            self.assertTrue(location.decode().startswith(AUTHORIZE + "?state="))
            self.assertEqual(self.provider.asked[-1].return_to, kept)
            self.assertIsNone(self.provider.asked[-1].link_to)
            [cookie] = answer.cookies()
            self.assertTrue(cookie.startswith("cli_sso="), cookie)
            self.assertIn("HttpOnly", cookie)
            self.assertIn("SameSite=lax", cookie)
            self.assertEqual(answer.header(b"cache-control"), b"no-store")

    def test_login_refusals(self) -> None:
        """An unknown provider is a JSON 404; too many sign-ins under way, or a provider that
        cannot be reached, land on the sign-in screen with nothing stored."""
        self.assert_matrix("GET", "/nobody/login", None, {None: (404, "provider_not_found")})
        self.world.db.row = None  # (the pending sign-ins are full)
        self.landed(self.answered("sso_login", 303, "GET", "/fake/login"), "busy")
        self.world.db.row = {"expires": 1e12}
        for failure, code in [
            (ProviderDown("down"), "provider_down"),
            (ProviderError("no"), "provider_error"),
        ]:
            self.provider.fail = failure
            answer = self.answered("sso_login", 303, "GET", "/fake/login")
            self.landed(answer, code)
            self.assertEqual(answer.cookies(), [])
        self.assertEqual(self.world.db.asked[-1], "DELETE")  # (the sign-in is forgotten)

    def test_login_to_link(self) -> None:
        """``?link=1``: only for a signed-in user, from this site (``Sec-Fetch-Site``), who
        signed in lately; the identity is then linked to them."""
        self.world.db.row = {"expires": 1e12}
        self.assert_matrix("GET", "/fake/login?link=1", None, {None: (401, "unauthorized")})
        cross = {"Sec-Fetch-Site": "same-site", "Cookie": "cli_session=guest"}
        answer = self.refused("GET", "/fake/login?link=1", headers=cross)
        self.assertEqual((answer.status, answer.code), (403, "bad_origin"))
        self.answered("sso_login", 302, "GET", "/fake/login?link=1", who="guest")
        self.assertEqual(
            (self.provider.asked[-1].link_to, self.provider.asked[-1].return_to),
            (GUEST.id, "/account"),
        )
        del self.world.db.rows["FROM sessions WHERE token_hash = %s AND created_at"]
        answer = self.answered("sso_login", 303, "GET", "/fake/login?link=1", who="guest")
        self.landed(answer, "sign_in_again")

    def test_callback_signs_in(self) -> None:
        """A callback of the sign-in under way opens a session (its cookie set, the flow's
        cleared) and lands on the page asked for; the URL's code is not passed on."""
        self.world.db.row = pending()
        answer = self.callback()
        self.assertEqual(answer.header(b"location"), b"/w/1")
        self.assertEqual(answer.header(b"referrer-policy"), b"no-referrer")
        cookies = answer.cookies()
        self.assertTrue(any(c.startswith("cli_sso=;") and "Max-Age=0" in c for c in cookies))
        self.assertTrue(any(c.startswith("cli_session=") and "Max-Age=0" not in c for c in cookies))
        self.assertEqual(self.sign_ins.linked, [(CLAIMS, None)])

    def test_callback_links(self) -> None:
        """A linking callback links the identity to the user still signed in, opening no
        session; signed out meanwhile, it is refused."""
        self.world.db.row = pending(link_to=GUEST.id)
        answer = self.callback(headers={"Cookie": "cli_sso=flow; cli_session=guest"})
        self.assertEqual(answer.header(b"location"), b"/w/1")
        self.assertEqual(self.sign_ins.linked, [(CLAIMS, GUEST.id)])
        self.assertFalse(any(c.startswith("cli_session=") for c in answer.cookies()))
        self.landed(self.callback(), "bad_state")

    def test_callback_refusals(self) -> None:
        """Each way a callback fails lands on ``/?sso_error=<code>``, and no session opens."""
        self.assert_matrix("GET", "/nobody/callback", None, {None: (404, "provider_not_found")})
        self.world.db.row = pending()
        self.landed(self.callback(headers={}), "bad_state")  # (no flow cookie)
        self.landed(self.callback("code=c"), "bad_state")  # (no state)
        self.landed(self.callback("state=the-state&error=access_denied"), "denied")
        self.landed(self.callback("state=the-state&error=server_error"), "provider_error")
        self.landed(self.callback("state=the-state"), "provider_error")  # (no code)
        self.provider.fail = ProviderDown("down")
        self.landed(self.callback(), "provider_down")
        self.sign_ins.refuse = "identity_taken"
        self.landed(self.callback(), "identity_taken")
        self.sign_ins.refuse = None
        self.world.db.rows["WITH opened AS"] = []  # (the account is disabled)
        self.landed(self.callback(), "account_disabled")
        self.world.db.row = None  # (no sign-in matches the cookie and state)
        self.landed(self.callback(), "bad_state")
        self.assertEqual(self.sign_ins.linked, [(CLAIMS, None)])  # (the disabled account's)

    def test_callback_domain_not_allowed(self) -> None:
        """A verified email outside the allowed domains, or an unverified one, is refused."""
        self.world.db.row = pending()
        for claims in (
            Claims("fake", "s", "guest@elsewhere.example", True, "guest"),
            Claims("fake", "s", "guest@example.com", False, "guest"),
        ):
            self.provider.gives = claims
            self.landed(self.callback(), "domain_not_allowed")
        self.assertEqual(self.sign_ins.linked, [])
