"""``/api/auth``: register, log in and out, who am I, one's password, sessions, sign-in
methods (identities at single sign-on providers) and personal API tokens."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from attrs import define, field
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from cli_server._version import __version__
from cli_server.auth.ratelimit import (
    Attempt,
    Backoff,
    FailureLimiter,
    FailureStore,
    KnownAddresses,
    LoginGuard,
    Wait,
    wait_in_words,
)
from cli_server.domain.accounts import AccountDisabled, Accounts, User
from cli_server.domain.api_tokens import NAME_LENGTH, ApiTokens, parse_expiry, parse_scope
from cli_server.domain.audit import Action, Actor, AuditLog, Target
from cli_server.domain.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from cli_server.sso.identities import Identities
from cli_server.web.auditing import note, record
from cli_server.web.body import read_json_object, required_text, text_field
from cli_server.web.ids import parse_id
from cli_server.web.request import client_host
from cli_server.web.responses import install_json_errors, json_response, no_content
from cli_server.web.routes import route
from cli_server.web.schemas import (
    API_TOKEN,
    API_TOKEN_BODY,
    ERROR,
    IDENTITY,
    LOGIN_BODY,
    ME,
    NEW_API_TOKEN,
    NO_BODY,
    PASSWORD_BODY,
    PROVIDER,
    REGISTER_BODY,
    REGISTRATION,
    SESSION,
    USER,
    array,
)
from cli_server.web.session import SessionCookies

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
USERNAME_RULE = "3-32 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
PASSWORD_RULE = "at least 8 characters"
_TOKEN_FIELDS = frozenset(API_TOKEN_BODY["properties"])
# A first password (an account made by single sign-on) and an API token made from a browser
# need a sign-in this recent: a stolen older session must not turn into a credential of the
# thief's choosing.
FRESH_SIGN_IN = 15 * 60.0


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

    def guard(self, store: FailureStore, clock: IReactorTime) -> LoginGuard:
        def backoff(kind: str, free: int) -> Backoff:
            return Backoff(
                store,
                clock,
                kind,
                free,
                self.login_first_wait,
                self.login_longest_wait,
                self.login_window,
            )

        return LoginGuard(
            backoff("login-pair", self.login_failures_per_pair),
            backoff("login-account", self.login_failures_per_user),
            backoff("login-address", self.login_failures_per_address),
            KnownAddresses(store, clock, self.known_address_for),
        )

    def registrations(self, store: FailureStore, clock: IReactorTime) -> FailureLimiter:
        return FailureLimiter(
            store, clock, "registration", self.registrations_per_address, self.registration_window
        )


@define(eq=False)
class AuthAPI:
    _accounts: Accounts
    _cookies: SessionCookies
    _logins: LoginGuard
    _registrations: FailureLimiter
    _registration: str = "open"  # open, invite or closed (config.parse_registration)
    _identities: Identities | None = None
    _password_login: bool = True  # off: single sign-on only (--password-login off)
    # The configured sign-in providers: [{"name", "label", "login_url"}]
    _providers: Callable[[], list[dict[str, str]]] = field(default=lambda: [])
    _tokens: ApiTokens | None = None  # personal API tokens (None: /tokens answers 404)
    _audit: AuditLog | None = None

    app = Klein()
    install_json_errors(app)

    @property
    def cookies(self) -> SessionCookies:
        return self._cookies

    def _check_password_login(self) -> None:
        if not self._password_login:
            labels = [p["label"] for p in self._providers()]
            names = " or ".join(labels) if labels else "single sign-on"
            raise Forbidden(
                f"this server signs people in with {names} only", code="password_login_off"
            )

    @route(
        app,
        "/register",
        methods=["POST"],
        public=True,
        body=REGISTER_BODY,
        answers={201: USER, 403: ERROR, 409: ERROR, 429: ERROR},
    )
    async def register(self, request: IRequest) -> bytes:
        """Creates an account; the first one is the instance admin. ``invite``: a sign-up
        link's token, where the registration mode asks for one."""
        self._check_password_login()
        body = read_json_object(request)
        username = required_text(body, "username", max_length=32, min_length=3)
        if not _USERNAME.match(username):
            raise BadRequest(f"username must be {USERNAME_RULE}", field="username")
        password = _new_password(body, "password")
        email = text_field(body, "email", max_length=254, required=False)
        if email is not None and not _EMAIL.match(email):
            raise BadRequest("email must look like name@example.com", field="email")
        invite = text_field(body, "invite", max_length=200, required=False)
        address = client_host(request)
        # Every attempt counts, taken names too: registering is also a way to probe names.
        await _limit(self._registrations, address, "too many registrations from this address")
        user = await self._accounts.register(
            username, password, email or None, self._registration, invite
        )
        return json_response(request, user.to_json(), 201)

    @route(app, "/registration", methods=["GET"], public=True, answers={200: REGISTRATION})
    async def registration(self, request: IRequest) -> bytes:
        """What the sign-in screen shows before anyone submits anything; ``first`` while
        there are no accounts (the next one, the admin, may register whatever the mode)."""
        return json_response(
            request,
            {
                "mode": self._registration,
                "first": not await self._accounts.has_users(),
                "username_rule": f"Username: {USERNAME_RULE}.",
                "password_rule": f"Password: {PASSWORD_RULE}.",
                "password_login": self._password_login,
                # (a local agent's laptop needs the same version: the dialog names it)
                "version": __version__.public(),
            },
        )

    @route(
        app,
        "/login",
        methods=["POST"],
        public=True,
        body=LOGIN_BODY,
        answers={200: ME, 401: ERROR, 429: ERROR},
    )
    async def login(self, request: IRequest) -> bytes:
        """Signs in with a username and password: the session cookie comes with the answer."""
        self._check_password_login()
        body = read_json_object(request)
        username = required_text(body, "username", max_length=254)
        password = required_text(body, "password", max_length=1024, strip=False)
        attempt = _allowed(await self._logins.attempt(username.lower(), client_host(request)))
        address = attempt.address
        try:
            login = await self._accounts.authenticate(username, password)
        except AccountDisabled:
            await self._logins.give_back(attempt)
            await self._failed_sign_in(username, address, "account_disabled")
            raise
        if login is None:  # (the attempt stays counted as failed)
            await self._failed_sign_in(username, address, "invalid_credentials")
            raise Unauthorized("wrong username or password", code="invalid_credentials")
        await self._logins.succeeded(attempt)
        agent = request.getHeader(b"user-agent")
        token = await self._accounts.open_session(
            login, agent.decode("utf-8", "replace") if agent else None, address
        )
        if token is None:  # the password changed (or the account was disabled) meanwhile
            raise Unauthorized("wrong username or password", code="invalid_credentials")
        self._cookies.set(request, token)
        await record(
            self._audit,
            request,
            login.user,
            Action.SIGN_IN,
            target=Target("user", login.user.id, login.user.username),
            details={"method": "password"},
        )
        return json_response(request, {**login.user.to_json(), "has_password": True})

    async def _failed_sign_in(self, username: str, address: str, reason: str) -> None:
        if self._audit is not None:
            await self._audit.record(
                Action.SIGN_IN_FAILED,
                Actor(None, username, address, claimed=True),
                details={"method": "password", "reason": reason},
            )

    @route(
        app,
        "/password",
        methods=["PUT"],
        scope="session",
        body=PASSWORD_BODY,
        answers={204: NO_BODY, 409: ERROR, 429: ERROR},
    )
    async def change_password(self, request: IRequest, user: User) -> bytes:
        """A new password; the user's other sessions and all sandbox sessions end. A wrong
        current password counts as a failed login, so this is no way around the guard. An
        account made by single sign-on, which has none, sets its first one without it."""
        body = read_json_object(request)
        current = text_field(body, "current_password", max_length=1024, strip=False, required=False)
        new = _new_password(body, "new_password")
        if current is None:
            if await self._accounts.has_password(user.id):
                raise BadRequest("current_password is required", field="current_password")
            token = self._cookies.token(request)
            assert token is not None  # (a user was found from it)
            if not await self._accounts.signed_in_within(token, FRESH_SIGN_IN):
                raise Forbidden(
                    "sign out and sign in again with your provider, then set a password "
                    "within 15 minutes",
                    code="sign_in_again",
                )
            if not await self._accounts.set_first_password(user.id, new):
                raise Conflict(
                    "this account has a password now; give it as current_password",
                    code="password_already_set",
                )
            target = Target("user", user.id, user.username)
            details = {"first": True}
            await record(
                self._audit, request, user, Action.PASSWORD_CHANGED, target=target, details=details
            )
            return no_content(request)
        attempt = _allowed(await self._logins.attempt(user.username.lower(), client_host(request)))
        if not await self._accounts.check_password(user.id, current):
            raise Forbidden("the current password is wrong", code="wrong_password")
        await self._logins.succeeded(attempt)
        details = {"first": False}
        noted = note(self._audit, request, user, Action.PASSWORD_CHANGED, details=details)
        keep = self._cookies.token(request)
        await self._accounts.set_password(user.id, new, keep_token=keep, note=noted)
        return no_content(request)

    @route(app, "/sessions", methods=["GET"], scope="session", answers={200: array(SESSION)})
    async def sessions(self, request: IRequest, user: User) -> bytes:
        """The caller's sessions (never their tokens), the current one marked."""
        token = self._cookies.token(request)
        assert token is not None  # (a user was found from it)
        listed = await self._accounts.sessions(user.id, token)
        return json_response(request, [s.to_json() for s in listed])

    @route(
        app, "/sessions/<session_id>", methods=["DELETE"], scope="session", answers={204: NO_BODY}
    )
    async def revoke_session(self, request: IRequest, user: User, session_id: str) -> bytes:
        """Signs one of the caller's sessions out (the current one too: that is a logout).
        Sandbox sessions are not tied to one login, so all of the user's end with it."""
        sid = parse_id(session_id, "session")
        token = self._cookies.token(request)
        assert token is not None  # (a user was found from it)
        closed = await self._accounts.close_session_by_id(user.id, sid, token)
        if closed is None:
            raise NotFound("no such session", code="session_not_found")
        if closed == "current":
            self._cookies.clear(request)
        action = Action.SIGN_OUT if closed == "current" else Action.SESSION_REVOKED
        await record(self._audit, request, user, action, target=Target("session", sid))
        return no_content(request)

    @route(app, "/logout", methods=["POST"], scope="session", answers={204: NO_BODY})
    async def logout(self, request: IRequest, user: User) -> bytes:
        """Signs the current session out, on the server too."""
        token = self._cookies.token(request)
        assert token is not None
        await self._accounts.close_session(token)
        self._cookies.clear(request)
        await record(self._audit, request, user, Action.SIGN_OUT, target=Target("user", user.id))
        return no_content(request)

    @route(app, "/me", methods=["GET"], across_workspaces=True, answers={200: ME})
    async def me(self, request: IRequest, user: User) -> bytes:
        """The signed-in user, and whether the account has a password."""
        has_password = await self._accounts.has_password(user.id)
        return json_response(request, {**user.to_json(), "has_password": has_password})

    @route(app, "/providers", methods=["GET"], public=True, answers={200: array(PROVIDER)})
    def providers(self, request: IRequest) -> bytes:
        """The single sign-on providers this server offers, with their login URLs."""
        return json_response(request, self._providers())

    @route(app, "/identities", methods=["GET"], scope="session", answers={200: array(IDENTITY)})
    async def identities(self, request: IRequest, user: User) -> bytes:
        """The caller's own linked sign-ins."""
        listed = await self._identities.listed(user.id) if self._identities else []
        return json_response(request, [i.to_json() for i in listed])

    @route(
        app,
        "/identities/<identity_id>",
        methods=["DELETE"],
        scope="session",
        answers={204: NO_BODY, 409: ERROR},
    )
    async def unlink_identity(self, request: IRequest, user: User, identity_id: str) -> bytes:
        """Unlinks one of the caller's identities; never their last way to sign in."""
        iid = parse_id(identity_id, "identity")
        if self._identities is None:
            raise NotFound("no such identity", code="identity_not_found")
        providers = {i.id: i.provider for i in await self._identities.listed(user.id)}
        await self._identities.unlink(user.id, iid, password_counts=self._password_login)
        target = Target("identity", iid, providers.get(iid))
        await record(self._audit, request, user, Action.IDENTITY_UNLINKED, target=target)
        return no_content(request)

    def _api_tokens(self) -> ApiTokens:
        if self._tokens is None:
            raise NotFound("no such API route")
        return self._tokens

    @route(
        app,
        "/tokens",
        methods=["POST"],
        scope="admin",
        across_workspaces=True,
        body=API_TOKEN_BODY,
        answers={201: NEW_API_TOKEN, 404: ERROR},
    )
    async def create_token(self, request: IRequest, user: User) -> bytes:
        """A personal API token; its secret (``token``) is in this answer only. From a
        browser, only within 15 minutes of signing in: a stolen cookie alone mints none."""
        tokens = self._api_tokens()
        if user.token is None:
            session = self._cookies.token(request)
            assert session is not None  # (a user was found from it)
            if not await self._accounts.signed_in_within(session, FRESH_SIGN_IN):
                raise Forbidden(
                    "to create an API token, sign out and sign in again, then create it "
                    "within 15 minutes",
                    code="sign_in_again",
                )
        body = read_json_object(request)
        extra = sorted(set(body) - _TOKEN_FIELDS)
        if extra:
            raise BadRequest(f"unknown field {extra[0][:40]!r}", field=extra[0][:40])
        name = required_text(body, "name", max_length=NAME_LENGTH)
        scope = parse_scope(body.get("scope"))
        workspace_id = _workspace_field(body.get("workspace_id"))
        expires_at = parse_expiry(body.get("expires_at"), tokens.now())
        noted = note(self._audit, request, user, Action.TOKEN_CREATED)
        made, secret = await tokens.create(user, name, scope, workspace_id, expires_at, noted)
        return json_response(request, {**made.to_json(), "token": secret}, 201)

    @route(
        app,
        "/tokens",
        methods=["GET"],
        scope="admin",
        across_workspaces=True,
        answers={200: array(API_TOKEN)},
    )
    async def list_tokens(self, request: IRequest, user: User) -> bytes:
        """The caller's tokens (never their secrets), with when each was last used."""
        listed = await self._api_tokens().listed(user)
        return json_response(request, [t.to_json() for t in listed])

    @route(
        app,
        "/tokens/<token_id>",
        methods=["DELETE"],
        scope="admin",
        across_workspaces=True,
        answers={204: NO_BODY},
    )
    async def revoke_token(self, request: IRequest, user: User, token_id: str) -> bytes:
        """Revokes one of the caller's tokens at once."""
        tid = parse_id(token_id, "token")
        revoked = await self._api_tokens().revoke(user, tid)
        details = {"revoked": revoked}  # (with the tokens made with it)
        target = Target("api_token", tid)
        await record(
            self._audit, request, user, Action.TOKEN_REVOKED, target=target, details=details
        )
        return no_content(request)


async def _limit(limiter: FailureLimiter, key: str, message: str) -> None:
    """Counts an attempt of ``key``, or refuses it with 429."""
    wait = await limiter.take(key)
    if wait is not None:
        raise TooManyRequests(f"{message}; try again in {wait_in_words(wait)}", retry_after=wait)


def _workspace_field(value: object) -> str | None:
    """A token's ``workspace_id``: a malformed one is a bad body (400 naming the field), not
    an unknown workspace (404 is for a well-formed id of no workspace of the caller's)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise BadRequest(
        "workspace_id must be a workspace's id (a UUID), or null", field="workspace_id"
    )


def _allowed(attempt: Attempt | Wait) -> Attempt:
    """The login attempt, counted; or 429 if it must wait."""
    if isinstance(attempt, Wait):
        why, wait = attempt.why, attempt.seconds
        raise TooManyRequests(f"{why}; try again in {wait_in_words(wait)}", retry_after=wait)
    return attempt


def _new_password(body: dict[str, Any], field: str) -> str:
    password = text_field(body, field, max_length=1024, min_length=0, strip=False)
    if password is None or len(password) < 8:
        raise BadRequest(f"{field} must be {PASSWORD_RULE}", field=field)
    return password
