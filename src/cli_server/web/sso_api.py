"""``/api/auth/oidc/{provider}/login`` and ``/callback``: single sign-on in the browser.

The callback never answers with a JSON page: whatever goes wrong, the browser lands on the
sign-in screen with ``/?sso_error=<code>`` (``sso.claims.REFUSALS``), and the server logs
one line that names no code, token or state.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import quote

from attrs import define
from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from cli_server.db.pool import DatabaseUnavailable
from cli_server.domain.accounts import Accounts
from cli_server.domain.audit import Action, AuditLog, Target
from cli_server.domain.errors import ApiError, Forbidden, NotFound
from cli_server.sso.claims import SignInRefused, SignIns
from cli_server.sso.flow import LIFETIME, safe_return_to
from cli_server.sso.http import ProviderDown, ProviderError
from cli_server.sso.providers import Provider, SsoProviders
from cli_server.web.auditing import record
from cli_server.web.auth_api import FRESH_SIGN_IN
from cli_server.web.request import client_host
from cli_server.web.responses import install_json_errors
from cli_server.web.routes import route
from cli_server.web.schemas import ERROR, NO_BODY, SSO_CALLBACK_QUERY, SSO_LOGIN_QUERY
from cli_server.web.session import SessionCookies, expire_cookie

log = Logger()


@define(eq=False)
class SsoAPI:
    _providers: SsoProviders
    _sign_ins: SignIns
    _accounts: Accounts
    _cookies: SessionCookies
    _secure: bool
    _audit: AuditLog | None = None

    app = Klein()
    install_json_errors(app)

    @property
    def _flow_cookie(self) -> bytes:
        return b"__Host-cli_sso" if self._secure else b"cli_sso"

    def _provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            raise NotFound("no such sign-in provider", code="provider_not_found")
        return provider

    @route(
        app,
        "/<provider>/login",
        methods=["GET"],
        public=True,
        query=SSO_LOGIN_QUERY,
        answers={302: NO_BODY, 303: NO_BODY, 401: ERROR, 403: ERROR},
    )
    async def sso_login(self, request: IRequest, provider: str) -> bytes:
        """Starts single sign-on with ``provider``: redirects to it (302). ``?return_to=``
        a path of this site to land on; ``?link=1`` links the identity to the signed-in
        account instead."""
        chosen = self._provider(provider)
        link_to = None
        if _arg(request, b"link") in ("1", "true"):
            # Only from our own pages: another site (a sandbox subdomain too) sending a
            # signed-in browser here could link whatever identity that browser holds at the
            # provider. Browsers say where a navigation came from in Sec-Fetch-Site.
            came_from = request.getHeader(b"sec-fetch-site")
            if came_from is not None and came_from not in (b"same-origin", b"none"):
                raise Forbidden("linking starts from this site's account page", code="bad_origin")
            link_to = (await self._cookies.user(request)).id  # signed out: 401
            # A stolen session of any age must not add its thief's identity: that would be a
            # way in that outlives a password change. Like setting a first password, linking
            # needs a sign-in of the last few minutes.
            token = self._cookies.token(request)
            if token is None or not await self._accounts.signed_in_within(token, FRESH_SIGN_IN):
                return await self._land(request, provider, "sign_in_again", "stale session")
        default = "/account" if link_to else "/"
        return_to = safe_return_to(_arg(request, b"return_to"), default)
        pending_signins = self._providers.pending
        assert pending_signins is not None
        begun = await pending_signins.begin(provider, return_to, link_to, client_host(request))
        if begun is None:
            return await self._land(request, provider, "busy", "too many sign-ins under way")
        cookie, pending = begun
        try:
            url = await chosen.authorize_url(pending)
        except (ProviderDown, ProviderError) as e:
            await pending_signins.cancel(cookie)
            code = "provider_down" if isinstance(e, ProviderDown) else "provider_error"
            return await self._land(request, provider, code, str(e))
        req = cast(Request, request)  # (Klein serves twisted.web's requests)
        req.addCookie(
            self._flow_cookie,
            cookie.encode("ascii"),
            path=b"/",
            max_age=str(int(LIFETIME)),
            httpOnly=True,
            secure=self._secure,
            sameSite="lax",
        )
        return _redirect(request, 302, url)

    @route(
        app,
        "/<provider>/callback",
        methods=["GET"],
        public=True,
        query=SSO_CALLBACK_QUERY,
        answers={303: NO_BODY},
    )
    async def sso_callback(self, request: IRequest, provider: str) -> bytes:
        """The provider's redirect back: signs in (or links) and redirects (303) to the
        page asked for, or to ``/?sso_error=<code>``."""
        self._provider(provider)
        request.setHeader(b"referrer-policy", b"no-referrer")  # (the URL carries the code)
        try:
            return await self._callback(request, provider)
        except SignInRefused as e:
            return await self._land(request, provider, e.code, e.message)
        except ProviderDown as e:
            return await self._land(request, provider, "provider_down", str(e))
        except ProviderError as e:
            return await self._land(request, provider, "provider_error", str(e))
        except (ApiError, DatabaseUnavailable) as e:
            return await self._land(request, provider, "server_error", type(e).__name__)

    async def _callback(self, request: IRequest, provider: str) -> bytes:
        chosen = self._provider(provider)
        cookie = request.getCookie(self._flow_cookie)
        self._clear_flow_cookie(request)
        pending_signins = self._providers.pending
        assert pending_signins is not None
        pending = await pending_signins.finish(
            cookie.decode("ascii", "replace") if cookie else None,
            provider,
            _arg(request, b"state"),
        )
        error = _arg(request, b"error")
        if error is not None:
            why = "denied" if error == "access_denied" else "provider_error"
            return await self._land(request, provider, why, f"the provider said {error[:40]!r}")
        if pending is None:
            return await self._land(
                request, provider, "bad_state", "no sign-in matches this callback"
            )
        code = _arg(request, b"code")
        if not code:
            return await self._land(request, provider, "provider_error", "the callback has no code")
        if pending.link_to is not None:
            token = self._cookies.token(request)
            user = await self._accounts.session_user(token) if token else None
            if user is None or user.id != pending.link_to:
                return await self._land(
                    request, provider, "bad_state", "the linking user signed out"
                )
        claims = await chosen.claims(code, pending)
        if not self._providers.domain_allowed(claims.email if claims.email_verified else None):
            return await self._land(
                request, provider, "domain_not_allowed", "email domain not allowed"
            )
        user = await self._sign_ins.sign_in(claims, pending.link_to)
        if pending.link_to is None:
            agent = request.getHeader(b"user-agent")
            session = await self._accounts.open_trusted_session(
                user.id, agent.decode("utf-8", "replace") if agent else None, client_host(request)
            )
            if session is None:
                return await self._land(
                    request, provider, "account_disabled", "the account is disabled"
                )
            self._cookies.set(request, session)
        action = Action.IDENTITY_LINKED if pending.link_to else Action.SIGN_IN
        target = Target("user", user.id, user.username)
        await record(
            self._audit, request, user, action, target=target, details={"method": provider}
        )
        log.info(
            "single sign-on: {user} {how} with {provider}",
            user=user.username,
            how="linked" if pending.link_to else "signed in",
            provider=provider,
        )
        return _redirect(request, 303, pending.return_to)

    def _clear_flow_cookie(self, request: IRequest) -> None:
        expire_cookie(request, self._flow_cookie, secure=self._secure)

    async def _land(self, request: IRequest, provider: str, code: str, why: str) -> bytes:
        log.info(
            "single sign-on with {provider} refused ({code}): {why}",
            provider=provider,
            code=code,
            why=why,
        )
        details = {"method": provider, "reason": code}
        await record(self._audit, request, None, Action.SIGN_IN_FAILED, details=details)
        return _redirect(request, 303, "/?sso_error=" + quote(code, safe=""))


def _redirect(request: IRequest, status: int, location: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"location", location.encode("utf-8"))
    request.setHeader(b"cache-control", b"no-store")
    return b""


def _arg(request: IRequest, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    if not values or len(values) != 1:
        return None  # (absent, or repeated: a repeated state or code is no answer)
    value: bytes = values[0]
    return value.decode("utf-8", "replace")
