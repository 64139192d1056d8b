"""The sign-in providers a server offers: built from its configuration (with callbacks on
the right origin), what the sign-in screen lists, and the allowed email domains."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from cli_server.config import GithubLogin, OidcLogin, ServerConfig
from cli_server.db.pool import Database
from cli_server.sso.claims import Claims
from cli_server.sso.flow import Pending, new_pending
from cli_server.sso.providers import Provider, SsoProviders, callback_url
from tests.unit.deferreds import result_of


def config(**overrides: Any) -> ServerConfig:
    base: dict[str, Any] = {
        "listen": ("tcp:8080",),
        "data_dir": Path("/nonexistent"),
        "db_url": None,
        "base_domain": "cli.example.test",
        "base_scheme": "https",
        "session_lifetime": 3600.0,
    }
    return ServerConfig(**{**base, **overrides})


GITHUB = GithubLogin("gh-client", "gh-secret", web_url="https://github.test")
OIDC = OidcLogin("https://idp.test", "oidc-client", "oidc-secret", name="Company SSO")


def build(cfg: ServerConfig) -> SsoProviders:
    return SsoProviders.of(cfg, MemoryReactorClock(), cast(Database, object()))


def redirect_of(providers: SsoProviders, name: str) -> str:
    provider = providers.get(name)
    assert provider is not None
    pending = new_pending(name, "/", None, expires=0.0)
    url = result_of(Deferred.fromCoroutine(provider.authorize_url(pending)))
    return parse_qs(urlsplit(url).query)["redirect_uri"][0]


def test_callback_url() -> None:
    """Each provider comes back to its own path under the base URL."""
    assert (
        callback_url("https://a.test", "github") == "https://a.test/api/auth/oidc/github/callback"
    )


def test_none_configured() -> None:
    """Without SSO settings there is nothing to list, and passwords stay the way in."""
    providers = build(config())
    assert providers.public_list() == []
    assert providers.labels() == {}
    assert providers.get("github") is None
    assert providers.password_login is True
    assert providers.pending is not None


def test_both_configured_are_listed_with_labels_and_login_urls() -> None:
    """The sign-in screen gets each provider's name, label and where its button goes."""
    providers = build(config(github=GITHUB, oidc=OIDC, password_login=False))
    assert providers.public_list() == [
        {"name": "github", "label": "GitHub", "login_url": "/api/auth/oidc/github/login"},
        {"name": "oidc", "label": "Company SSO", "login_url": "/api/auth/oidc/oidc/login"},
    ]
    assert providers.labels() == {"github": "GitHub", "oidc": "Company SSO"}
    assert providers.password_login is False


def test_callbacks_go_to_the_server_s_own_origin() -> None:
    """Without a redirect base URL, the provider sends the browser back to ``origin``."""
    providers = build(config(github=GITHUB))
    assert redirect_of(providers, "github") == (
        "https://cli.example.test/api/auth/oidc/github/callback"
    )


def test_callbacks_go_to_the_redirect_base_url_when_set() -> None:
    """``sso_redirect_base_url`` (behind a proxy with another name) wins over the origin."""
    providers = build(config(github=GITHUB, sso_redirect_base_url="https://login.test"))
    assert redirect_of(providers, "github") == "https://login.test/api/auth/oidc/github/callback"


class Named:
    """A provider stand-in: only its label matters to the listing."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.name = label.lower()

    async def authorize_url(self, pending: Pending) -> str:
        raise NotImplementedError

    async def claims(self, code: str, pending: Pending) -> Claims:
        raise NotImplementedError


def test_domain_allowed_without_a_list_admits_anyone() -> None:
    """No allowed domains: any email, or none, may sign in."""
    providers = SsoProviders({})
    assert providers.domain_allowed("a@anything.test")
    assert providers.domain_allowed(None)


def test_domain_allowed_checks_the_domain_case_insensitively() -> None:
    """Only the part after the ``@`` counts, in any case; a missing email is refused."""
    providers = SsoProviders({"x": cast(Provider, Named("X"))}, ("example.com",))
    assert providers.domain_allowed("alice@example.com")
    assert providers.domain_allowed("Alice@EXAMPLE.COM")
    assert not providers.domain_allowed("bob@example.com.evil.test")
    assert not providers.domain_allowed("bob@sub.example.com")
    assert not providers.domain_allowed("")
    assert not providers.domain_allowed(None)


def test_domain_allowed_refuses_a_value_that_is_not_an_address() -> None:
    """An OIDC ``email`` claim may be any string: with allowed domains, a bare domain, an
    empty local part or a second ``@`` is not an address in that domain, and is refused."""
    providers = SsoProviders({"x": cast(Provider, Named("X"))}, ("example.com",))
    assert not providers.domain_allowed("example.com")
    assert not providers.domain_allowed("EXAMPLE.COM")
    assert not providers.domain_allowed("@example.com")
    assert not providers.domain_allowed("odd@name@example.com")
    assert not providers.domain_allowed("alice@")
    assert providers.domain_allowed("alice@example.com")
