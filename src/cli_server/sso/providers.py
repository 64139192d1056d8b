"""The sign-in providers this server is configured with, and what the sign-in screen shows."""

from __future__ import annotations

from typing import Protocol

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

from cli_server.config import ServerConfig
from cli_server.db.pool import Database
from cli_server.sso.claims import Claims
from cli_server.sso.flow import Pending, PendingSignIns
from cli_server.sso.github import GithubProvider
from cli_server.sso.http import ProviderHttp
from cli_server.sso.oidc import OidcProvider


class Provider(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str: ...

    async def authorize_url(self, pending: Pending) -> str: ...

    async def claims(self, code: str, pending: Pending) -> Claims: ...


def callback_url(base: str, provider: str) -> str:
    return f"{base}/api/auth/oidc/{provider}/callback"


@define(eq=False)
class SsoProviders:
    """``public_list()`` answers ``GET /api/auth/providers``; ``password_login`` belongs in
    ``GET /api/auth/registration``."""

    by_name: dict[str, Provider]
    allowed_domains: tuple[str, ...] = ()
    password_login: bool = True
    pending: PendingSignIns | None = field(default=None)

    @classmethod
    def of(cls, config: ServerConfig, reactor: IReactorTime, db: Database) -> SsoProviders:
        """(``reactor``: a clock, and the IReactorTCP the providers are reached with)"""
        http = ProviderHttp(reactor)
        base = config.sso_redirect_base_url or config.origin
        found: dict[str, Provider] = {}
        if config.github is not None:
            found["github"] = GithubProvider(config.github, http, callback_url(base, "github"))
        if config.oidc is not None:
            found["oidc"] = OidcProvider(config.oidc, http, reactor, callback_url(base, "oidc"))
        pending = PendingSignIns(db, reactor)
        return cls(found, config.sso_allowed_domains, config.password_login, pending)

    def get(self, name: str) -> Provider | None:
        return self.by_name.get(name)

    def public_list(self) -> list[dict[str, str]]:
        return [
            {"name": name, "label": p.label, "login_url": f"/api/auth/oidc/{name}/login"}
            for name, p in self.by_name.items()
        ]

    def labels(self) -> dict[str, str]:
        return {name: p.label for name, p in self.by_name.items()}

    def domain_allowed(self, email: str | None) -> bool:
        """With allowed domains configured, only a well-formed address in one of them may sign
        in: exactly one ``@``, something before it, an allowed domain after it. An OIDC
        provider's ``email`` claim is any non-empty string it sends, so ``example.com`` alone
        (or ``a@b@example.com``) can arrive here, and is refused."""
        if not self.allowed_domains:
            return True
        local, at, domain = (email or "").partition("@")
        if not at or not local or "@" in domain:
            return False
        return domain.lower() in self.allowed_domains
