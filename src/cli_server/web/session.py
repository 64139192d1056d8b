"""Who is calling: the session cookie (or an API token, ``web.bearer``), and the same-origin
rule for state changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit

from attrs import define
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from cli_server.domain.accounts import Accounts, User
from cli_server.domain.api_tokens import InvalidToken
from cli_server.domain.errors import Forbidden, Unauthorized
from cli_server.proxy.hygiene import clearing_cookies, cookie_values, session_token
from cli_server.web.bearer import TokenGuard, bearer_credential

_SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")


@define(eq=False)
class SessionCookies:
    """Reads and writes the main-site session cookie.

    Over https the name carries the ``__Host-`` prefix, which makes browsers refuse it unless it
    is Secure, host-only and Path=/ — so a sandbox subdomain can never set or shadow it.
    """

    _accounts: Accounts
    _secure: bool
    _lifetime: float
    _origin: str
    # API tokens (``Authorization: Bearer``); without it every token request gets 401.
    _tokens: TokenGuard | None = None

    @property
    def name(self) -> bytes:
        return b"__Host-cli_session" if self._secure else b"cli_session"

    def token(self, request: IRequest) -> str | None:
        """The session, if the request carries its cookie once (``hygiene.session_token``);
        never for a token request, whose cookies count for nothing."""
        if bearer_credential(request) is not None:
            return None
        return session_token(_cookie_headers(request), self.name)

    async def caller(
        self,
        request: IRequest,
        needed: str,
        across_workspaces: bool = False,
        path_args: Mapping[str, Any] | None = None,
    ) -> User:
        """Who calls a route that needs a token scope of ``needed``: a token request is its
        token's user (its cookies unread, the Origin rule moot); any other, the session's
        user once the Origin rule let it through."""
        secret = bearer_credential(request)
        if secret is None:
            self.check_origin(request)
            return await self.user(request)
        if not secret or self._tokens is None:
            raise InvalidToken()
        return await self._tokens.user(secret, needed, across_workspaces, path_args or {})

    async def user(self, request: IRequest) -> User:
        token = self.token(request)
        user = await self._accounts.session_user(token) if token else None
        if user is None:
            self._clear_doubles(request)
            raise Unauthorized("log in first (no valid session)")
        return user

    def _clear_doubles(self, request: IRequest) -> None:
        """Two session cookies are one too many: one was tossed (set for the parent domain or
        a longer path by a page on another host). Neither counts; the browser is told to
        forget both, wherever they were set."""
        if len(cookie_values(_cookie_headers(request), self.name)) > 1:
            req = cast(Request, request)  # (Klein serves twisted.web's requests)
            host = urlsplit(self._origin).hostname or ""
            req.cookies.extend(
                clearing_cookies(self.name, host.encode("ascii"), req.path, self._secure)
            )

    def set(self, request: IRequest, token: str) -> None:
        self._clear_doubles(request)  # (first: the new cookie, set after, is the one kept)
        req = cast(Request, request)  # (twisted.web's: IRequest lacks addCookie's keywords)
        req.addCookie(
            self.name,
            token.encode("ascii"),
            path=b"/",
            max_age=str(int(self._lifetime)),
            httpOnly=True,
            secure=self._secure,
            sameSite="lax",
        )

    def clear(self, request: IRequest) -> None:
        expire_cookie(request, self.name, secure=self._secure)

    def check_origin(self, request: IRequest, mount: bool = False) -> None:
        """Refuse a state change whose ``Origin`` is some other site.

        Sandbox subdomains are same-site with us, so SameSite cookies alone do not stop a page
        in a sandbox from posting to the API; browsers always send ``Origin`` on such requests.
        A token request skips it only where a valid token is then required: ``caller`` (no
        cookie read there), and a ``mount`` (a branch handing the request to an app whose
        routes apply this rule or need the token). Public routes (login, register...) apply
        it whatever the headers.
        """
        if request.method in _SAFE_METHODS:
            return
        if mount and bearer_credential(request) is not None:
            return
        raw = request.getHeader(b"origin")
        if raw is None:
            return  # not a browser, or a same-origin navigation of an old browser
        origin = raw.decode("latin-1").rstrip("/").lower()
        allowed = {self._origin}
        host = request.getHeader(b"host")
        if host:
            scheme = "https" if self._secure else "http"
            allowed.add(f"{scheme}://{host.decode('latin-1').lower()}")
        if origin not in allowed:
            raise Forbidden("cross-origin request refused", code="bad_origin")


def _cookie_headers(request: IRequest) -> list[bytes]:
    """Every Cookie header: ``getCookie`` reads only the last of a name, hiding a second."""
    return list(request.requestHeaders.getRawHeaders(b"cookie", []))


def expire_cookie(request: IRequest, name: bytes, *, secure: bool) -> None:
    """Tell the browser to drop our cookie ``name`` (set with these same attributes)."""
    req = cast(Request, request)  # (Klein serves twisted.web's requests)
    req.addCookie(name, b"", path=b"/", max_age="0", httpOnly=True, secure=secure, sameSite="lax")
