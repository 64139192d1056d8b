"""Accounts, workspaces, the audit log, API tokens, sign-in limits and single sign-on: the
domain and the sign-in API built on it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from attrs import define
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cli_server.auth.passwords import Passwords
from cli_server.auth.ratelimit import FailureLimiter, Failures, LoginGuard
from cli_server.config import ServerConfig
from cli_server.db.pool import Database
from cli_server.domain.accounts import Accounts
from cli_server.domain.api_tokens import ApiTokens
from cli_server.domain.audit import AuditLog
from cli_server.domain.events import Events
from cli_server.domain.workspaces import Workspaces
from cli_server.plumbing.threads import ThreadPoolService
from cli_server.sso.claims import SignIns
from cli_server.sso.identities import Identities
from cli_server.sso.providers import SsoProviders
from cli_server.web.auth_api import AuthAPI, AuthLimits
from cli_server.web.bearer import TokenGuard
from cli_server.web.session import SessionCookies


@define(frozen=True)
class Domain:
    # Revocations and status changes, fired by the domain once committed (the subscribers
    # are given in ``compose.listeners.subscribe``).
    events: Events
    audit: AuditLog
    accounts: Accounts
    workspaces: Workspaces
    api_tokens: ApiTokens
    cookies: SessionCookies
    logins: LoginGuard
    registrations: FailureLimiter
    sso_providers: SsoProviders
    identities: Identities
    sign_ins: SignIns  # who a single sign-on signs in: ``identities`` unless a test's
    auth: AuthAPI


def build_domain(
    config: ServerConfig,
    reactor: IReactorTime,
    db: Database,
    hashing: ThreadPoolService,
    passwords: Passwords | None,
    limits: AuthLimits | None,
    sign_ins: SignIns | None,
) -> Domain:
    limits = limits or AuthLimits()
    events = Events()
    audit = AuditLog(db)
    accounts = Accounts(
        db, passwords or Passwords(hashing.run), reactor, config.session_lifetime, events
    )
    api_tokens = ApiTokens(db, reactor)
    cookies = SessionCookies(
        accounts,
        config.secure_cookies,
        config.session_lifetime,
        config.origin,
        TokenGuard(api_tokens),
    )
    failures = Failures(db)  # (in the database: every replica counts the same failures)
    logins = limits.guard(failures, reactor)
    registrations = limits.registrations(failures, reactor)
    sso_providers = SsoProviders.of(config, reactor, db)
    labels = {p["name"]: p["label"] for p in sso_providers.public_list()}
    identities = Identities(db, config.registration, labels)
    auth = AuthAPI(
        accounts,
        cookies,
        logins,
        registrations,
        config.registration,
        identities,
        config.password_login,
        sso_providers.public_list,
        api_tokens,
        audit=audit,
    )
    workspaces = Workspaces(
        db, config.direct_members, max_owned=config.max_workspaces_per_user, events=events
    )
    return Domain(
        events,
        audit,
        accounts,
        workspaces,
        api_tokens,
        cookies,
        logins,
        registrations,
        sso_providers,
        identities,
        sign_ins or identities,
        auth,
    )


def who_registers_first(config: ServerConfig, accounts: Accounts) -> Callable[[], Awaitable[None]]:
    """A start-up step: tell the operator who the instance admin is, or who will be."""

    async def say() -> None:
        admins = await accounts.admins()
        if not admins and not await accounts.has_users():
            Logger().info(
                "no accounts yet: the first one registered becomes the instance admin "
                "(registration: {mode})",
                mode=config.registration,
            )
        else:
            # (an upgrade made the oldest account the admin: the operator should know whom)
            Logger().info(
                "instance admin: {admins} (registration: {mode})",
                admins=", ".join(admins) or "none",
                mode=config.registration,
            )

    return say
