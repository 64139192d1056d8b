"""``/api/auth``: register, log in and out, who am I."""

from __future__ import annotations

import re
from typing import Any

from attrs import define
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from cli_server.accounts import Accounts
from cli_server.auth.ratelimit import Backoff, FailureLimiter, KnownAddresses, LoginGuard
from cli_server.errors import BadRequest, TooManyRequests, Unauthorized
from cli_server.proxy.access import SandboxAccess
from cli_server.web.body import read_json_object, required_text, text_field
from cli_server.web.responses import install_json_errors, json_response, no_content
from cli_server.web.session import SessionCookies

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@define(frozen=True)
class AuthLimits:
    """Free tries before delays start (see ``LoginGuard``); each further failure doubles the
    wait, from ``login_first_wait`` up to ``login_longest_wait``. Failures are forgotten
    ``login_window`` after the last one."""

    login_failures_per_pair: int = 5  # one account from one address
    login_failures_per_user: int = 20  # one account, from addresses it never logged in from
    login_failures_per_address: int = 100  # one address, for accounts never used from there
    login_first_wait: float = 1.0
    login_longest_wait: float = 15 * 60.0
    login_window: float = 60 * 60.0
    known_address_for: float = 30 * 86400.0
    registrations_per_address: int = 20
    registration_window: float = 60 * 60.0

    def guard(self, clock: IReactorTime) -> LoginGuard:
        def backoff(free: int) -> Backoff:
            return Backoff(
                clock, free, self.login_first_wait, self.login_longest_wait, self.login_window
            )

        return LoginGuard(
            backoff(self.login_failures_per_pair),
            backoff(self.login_failures_per_user),
            backoff(self.login_failures_per_address),
            KnownAddresses(clock, self.known_address_for),
        )


@define(eq=False)
class AuthAPI:
    _accounts: Accounts
    _cookies: SessionCookies
    _logins: LoginGuard
    _registrations: FailureLimiter
    _sandbox_access: SandboxAccess

    app = Klein()
    install_json_errors(app)

    @app.route("/register", methods=["POST"])
    async def register(self, request: IRequest) -> bytes:
        self._cookies.check_origin(request)
        body = read_json_object(request)
        username = required_text(body, "username", max_length=32, min_length=3)
        if not _USERNAME.match(username):
            raise BadRequest(
                "username must be 3-32 characters: letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
                field="username",
            )
        password = required_text(body, "password", max_length=1024, min_length=8, strip=False)
        email = text_field(body, "email", max_length=254, required=False)
        if email is not None and not _EMAIL.match(email):
            raise BadRequest("email must look like name@example.com", field="email")
        address = _address(request)
        _limit(self._registrations, address, "too many registrations from this address")
        # Every attempt counts, taken names too: registering is also a way to probe names.
        self._registrations.failed(address)
        user = await self._accounts.register(username, password, email or None)
        return json_response(request, user.to_json(), 201)

    @app.route("/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        self._cookies.check_origin(request)
        body = read_json_object(request)
        username = required_text(body, "username", max_length=254)
        password = required_text(body, "password", max_length=1024, strip=False)
        account, address = username.lower(), _address(request)
        waiting = self._logins.retry_after(account, address)
        if waiting is not None:
            wait, why = waiting
            raise TooManyRequests(f"{why}; try again in {wait} s", retry_after=wait)
        user = await self._accounts.authenticate(username, password)
        if user is None:
            self._logins.failed(account, address)
            raise Unauthorized("wrong username or password", code="invalid_credentials")
        self._logins.succeeded(account, address)
        token = await self._accounts.open_session(user)
        self._cookies.set(request, token)
        return json_response(request, user.to_json())

    @app.route("/logout", methods=["POST"])
    async def logout(self, request: IRequest) -> bytes:
        self._cookies.check_origin(request)
        user = await self._cookies.user(request)
        token = self._cookies.token(request)
        assert token is not None
        await self._accounts.close_session(token)
        await self._sandbox_access.revoke_user(user.id)
        self._cookies.clear(request)
        return no_content(request)

    @app.route("/me", methods=["GET"])
    async def me(self, request: IRequest) -> bytes:
        user = await self._cookies.user(request)
        return json_response(request, user.to_json())

    @app.route("/providers", methods=["GET"])
    def providers(self, request: IRequest) -> bytes:
        return json_response(request, [])  # OIDC providers arrive with the OIDC issue


def _limit(limiter: FailureLimiter, key: str, message: str) -> None:
    wait = limiter.retry_after(key)
    if wait is not None:
        raise TooManyRequests(f"{message}; try again in {wait} s", retry_after=wait)


def _address(request: IRequest) -> str:
    peer: Any = request.getClientAddress()  # behind --trusted-proxies: the forwarded client
    return str(getattr(peer, "host", "unix"))
