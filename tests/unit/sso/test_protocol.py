"""Single sign-on's protocol pieces, deterministically: the ID token verifier, the pending
sign-ins (state, PKCE, expiry, one use), return_to, key refresh and the settings."""

from __future__ import annotations

import hashlib
from base64 import urlsafe_b64encode
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage

from cli_server.config import OidcLogin
from cli_server.sso.flow import cookie_hash, new_pending, safe_return_to
from cli_server.sso.github import primary_verified_email
from cli_server.sso.http import ProviderError
from cli_server.sso.oidc import OidcProvider, UnknownKey, verify_id_token
from cli_server.tap.server import Options
from tests.unit.deferreds import failure_of, result_of

ISSUER, CLIENT, NONCE, NOW = "https://idp.example", "cli", "n-0123456789", 1_800_000_000.0
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k2"})


def token(key: RSAKey = KEY, alg: str = "RS256", **changes: Any) -> str:
    claims: dict[str, Any] = {"iss": ISSUER, "aud": CLIENT, "sub": "s1", "nonce": NONCE}
    claims |= {"exp": int(NOW) + 300, "iat": int(NOW) - 10, **changes}
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key)


def verify(value: str, keys: KeySet | None = None, now: float = NOW) -> dict[str, Any]:
    return verify_id_token(value, keys or KeySet([KEY]), ISSUER, CLIENT, NONCE, now)


def test_a_good_id_token() -> None:
    assert verify(token())["sub"] == "s1"
    assert verify(token(aud=[CLIENT, "other"], azp=CLIENT))["sub"] == "s1"
    assert verify(token(), now=NOW + 300 + 59)["sub"] == "s1"  # (within the leeway)


@pytest.mark.parametrize(
    "changes, why",
    [
        ({"iss": "https://evil.example"}, "another issuer"),
        ({"aud": "other"}, "another client"),
        ({"aud": [CLIENT, "other"]}, "several clients"),
        ({"exp": int(NOW) - 61}, "expired"),
        ({"exp": None}, "expired"),
        ({"iat": int(NOW) + 120}, "future"),
        ({"nonce": "n-other"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"sub": ""}, "subject"),
    ],
)
def test_bad_claims_are_refused(changes: dict[str, Any], why: str) -> None:
    with pytest.raises(ProviderError, match=why):
        verify(token(**changes))


def test_signatures_and_keys() -> None:
    with pytest.raises(UnknownKey):
        verify(token(OTHER))
    forged = token(OTHER).split(".")
    forged_header = token().split(".")[0]  # (claims to be k1, signed by k2)
    with pytest.raises(ProviderError, match="signature"):
        verify(".".join([forged_header, *forged[1:]]))
    with pytest.raises(ProviderError, match="malformed"):
        verify("not.a.token")
    unsigned = token().split(".")
    with pytest.raises(ProviderError):
        verify(".".join([unsigned[0], unsigned[1], ""]))


def test_symmetric_and_none_algorithms_are_refused() -> None:
    from joserfc.jwk import OctKey

    secret = OctKey.import_key(b"x" * 32, parameters={"kid": "k1"})
    with pytest.raises(ProviderError, match="algorithm"):
        verify(jwt.encode({"alg": "HS256", "kid": "k1"}, {"sub": "s1"}, secret))


def test_a_pending_sign_in_is_fresh_and_keyed_by_a_hash() -> None:
    """What a sign-in keeps (single use, caps, expiry in the database: integration tests)."""
    p, q = new_pending("oidc", "/x", None, NOW), new_pending("oidc", "/x", None, NOW)
    digest = urlsafe_b64encode(hashlib.sha256(p.verifier.encode()).digest()).rstrip(b"=")
    assert p.challenge == digest.decode() and 43 <= len(p.verifier) <= 128
    assert len({p.state, p.verifier, p.nonce, q.state, q.verifier, q.nonce}) == 6
    assert cookie_hash("c") == hashlib.sha256(b"c").hexdigest() != "c"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("/workspaces/1?tab=x", "/workspaces/1?tab=x"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("//evil.com", "/"),
        ("/\\evil.com", "/"),
        ("/ok\\..", "/"),
        ("https://evil.com", "/"),
        ("evil.com", "/"),
        ("/a\r\nb", "/"),
        ("/" + "a" * 3000, "/"),
    ],
)
def test_return_to(value: str | None, expected: str) -> None:
    assert safe_return_to(value) == expected
    assert safe_return_to("//x", "/account") == "/account"


def test_github_primary_verified_email_only() -> None:
    assert primary_verified_email([{"email": "a@x.io", "primary": True, "verified": True}]) == (
        "a@x.io"
    )
    assert primary_verified_email([{"email": "a@x.io", "primary": True, "verified": False}]) is None
    assert primary_verified_email([{"email": "a@x.io", "primary": False, "verified": True}]) is None
    with pytest.raises(ProviderError):
        primary_verified_email({"message": "Bad credentials"})


class KeysHttp:
    """The provider's discovery and key set, as our HTTP client sees them; counts fetches."""

    def __init__(self) -> None:
        self.keys = KeySet([KEY])
        self.fetched = 0

    async def get_json(self, url: str, headers: Any = None) -> Any:
        if url.endswith("/.well-known/openid-configuration"):
            return {
                "issuer": ISSUER,
                "authorization_endpoint": ISSUER + "/auth",
                "token_endpoint": ISSUER + "/token",
                "jwks_uri": ISSUER + "/jwks",
            }
        self.fetched += 1
        return self.keys.as_dict(private=False)


def test_unknown_key_refreshes_the_key_set_at_most_once_a_minute() -> None:
    clock = Clock()
    clock.advance(NOW)
    http = KeysHttp()
    provider = OidcProvider(OidcLogin(ISSUER, CLIENT, "secret"), cast(Any, http), clock, "cb")

    def check(value: str) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(provider.verified_claims(value, NONCE))

    assert result_of(check(token()))["sub"] == "s1" and http.fetched == 1
    http.keys = KeySet([OTHER])  # rotated
    assert result_of(check(token(OTHER)))["sub"] == "s1" and http.fetched == 2
    # A key id nobody has: one refetch per minute, not one per token.
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k3"})
    failure_of(check(token(stranger))).trap(UnknownKey)
    assert http.fetched == 2
    clock.advance(61)
    failure_of(check(token(stranger))).trap(UnknownKey)
    assert http.fetched == 3


ENV = {"OIDC_ISSUER_URL": "https://idp.example/realms/x/", "OIDC_CLIENT_ID": "cli"}


def options(environ: dict[str, str], *argv: str) -> Options:
    o = Options(environ=environ, preflight=False)
    o.parseOptions(list(argv))
    return o


def test_settings_of_single_sign_on(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    config = options({**ENV, "OIDC_CLIENT_SECRET_FILE": str(secret)}).config()
    assert config.oidc is not None and config.oidc.client_secret == "s3cret"
    assert config.oidc.issuer == "https://idp.example/realms/x"
    assert config.oidc.scopes == ("openid", "email", "profile")
    assert config.oidc.name == "Single sign-on" and "s3cret" not in repr(config)
    assert config.github is None and config.password_login
    config = options(
        {
            "GITHUB_CLIENT_ID": "id",
            "GITHUB_CLIENT_SECRET": "gs",
            "OIDC_ALLOWED_DOMAINS": "Example.com, @corp.example",
            "PASSWORD_LOGIN": "off",
            "OIDC_REDIRECT_BASE_URL": "https://cli.example/",
        }
    ).config()
    assert config.github is not None and config.github.web_url == "https://github.com"
    assert config.sso_allowed_domains == ("example.com", "corp.example")
    assert config.sso_redirect_base_url == "https://cli.example"
    assert not config.password_login
    assert any("OIDC_REDIRECT_BASE_URL is https://cli.example" in w for w in config.warnings())


@pytest.mark.parametrize(
    "environ, said",
    [
        ({"GITHUB_CLIENT_ID": "id"}, "GITHUB_CLIENT_SECRET: sign-in with GitHub needs both"),
        ({"GITHUB_CLIENT_SECRET": "x"}, "GITHUB_CLIENT_ID: sign-in with GitHub needs both"),
        (ENV, "OIDC_CLIENT_SECRET: OpenID sign-in needs"),
        ({"OIDC_CLIENT_ID": "x", "OIDC_CLIENT_SECRET": "y"}, "OIDC_ISSUER_URL: OpenID"),
        ({**ENV, "OIDC_CLIENT_SECRET_FILE": "/nonexistent/s"}, "cannot read /nonexistent/s"),
        ({**ENV, "OIDC_CLIENT_SECRET": "a", "OIDC_CLIENT_SECRET_FILE": "/x"}, "both set"),
        ({"PASSWORD_LOGIN": "off"}, "--password-login: off needs a sign-in provider"),
        ({"PASSWORD_LOGIN": "maybe"}, "PASSWORD_LOGIN: 'maybe' is neither on nor off"),
        ({"OIDC_ISSUER_URL": "ftp://x"}, "OIDC_ISSUER_URL: 'ftp://x' is not an http(s) URL"),
        ({"OIDC_SCOPES": "email profile"}, "OIDC_SCOPES: 'email profile' lacks the openid"),
        ({"OIDC_ALLOWED_DOMAINS": "*"}, "OIDC_ALLOWED_DOMAINS: list email domains"),
        ({"OIDC_REDIRECT_BASE_URL": "https://x/?a=1"}, "must have no query"),
    ],
)
def test_bad_or_partial_settings_fail_in_one_line(environ: dict[str, str], said: str) -> None:
    with pytest.raises(usage.UsageError) as caught:
        options(environ)
    message = str(caught.value)
    assert said in message and "\n" not in message
    assert "s3cret" not in message


def test_a_provider_that_does_not_answer_is_down_after_the_timeout() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from cli_server.sso.http import ProviderDown, ProviderHttp

    reactor = MemoryReactorClock()
    http = ProviderHttp(reactor, timeout=5.0)
    d = Deferred.fromCoroutine(http.get_json("http://127.0.0.1:9/.well-known/x"))
    reactor.advance(4.9)
    assert not d.called
    reactor.advance(0.2)
    failure = failure_of(d)
    failure.trap(ProviderDown)
    assert "GET http://127.0.0.1:9/.well-known/x" in str(failure.value)


class TokenHttp(KeysHttp):
    """Also the token endpoint: answers with ``id_token`` and records what was posted."""

    def __init__(self, id_token: str) -> None:
        super().__init__()
        self.id_token = id_token
        self.posted: dict[str, str] = {}

    async def post_form(self, url: str, form: dict[str, str], headers: Any = None) -> Any:
        self.posted = form
        return {"access_token": "at", "token_type": "Bearer", "id_token": self.id_token}


@pytest.mark.parametrize(
    "said, verified, groups",
    [
        ({"email_verified": True, "roles": ["dev", 7, "ops"]}, True, ("dev", "ops")),
        ({"email_verified": "true", "roles": "dev"}, False, ()),  # (only JSON true counts)
        ({}, False, ()),
    ],
)
def test_claims_from_the_code_exchange(
    said: dict[str, Any], verified: bool, groups: tuple[str, ...]
) -> None:
    clock = Clock()
    clock.advance(NOW)
    http = TokenHttp(token(email="a@example.com", preferred_username="ann", **said))
    settings = OidcLogin(ISSUER, CLIENT, "secret", groups_claim="roles")
    provider = OidcProvider(settings, cast(Any, http), clock, "https://cli/cb")
    pending = attrs.evolve(new_pending("oidc", "/", None, NOW + 600), nonce=NONCE)
    claims = result_of(Deferred.fromCoroutine(provider.claims("the-code", pending)))
    assert (claims.subject, claims.email, claims.preferred_username) == (
        "s1",
        "a@example.com",
        "ann",
    )
    assert claims.email_verified is verified and claims.groups == groups
    assert http.posted["code_verifier"] == pending.verifier
    assert http.posted["redirect_uri"] == "https://cli/cb" and http.posted["code"] == "the-code"
    url = result_of(Deferred.fromCoroutine(provider.authorize_url(pending)))
    assert f"nonce={NONCE}" in url and f"code_challenge={pending.challenge}" in url


def test_github_and_its_test_urls_from_the_environment() -> None:
    environ = {
        "GITHUB_CLIENT_ID": "id",
        "GITHUB_CLIENT_SECRET": "gs",
        "GITHUB_URL": "http://127.0.0.1:9000/",
        "GITHUB_API_URL": "http://127.0.0.1:9000/api",
    }
    github = options(environ).config().github
    assert github is not None
    assert (github.web_url, github.api_url) == (
        "http://127.0.0.1:9000",
        "http://127.0.0.1:9000/api",
    )
    with pytest.raises(usage.UsageError, match="GITHUB_API_URL: "):
        options({**environ, "GITHUB_API_URL": "not a url"})


def test_discovery_of_another_issuer_or_unusable_keys_is_a_provider_error() -> None:
    class Lying(KeysHttp):
        def __init__(self, issuer: str, keys: Any) -> None:
            super().__init__()
            self.issuer, self.answer = issuer, keys

        async def get_json(self, url: str, headers: Any = None) -> Any:
            found = await super().get_json(url, headers)
            if url.endswith("openid-configuration"):
                return {**found, "issuer": self.issuer}
            return self.answer

    clock = Clock()
    clock.advance(NOW)
    for issuer, keys, why in [
        ("https://evil.example", {"keys": []}, "another issuer"),
        (ISSUER, {"keys": [{"kty": "nonsense"}]}, "key set is unusable"),
    ]:
        http = Lying(issuer, keys)
        provider = OidcProvider(OidcLogin(ISSUER, CLIENT, "s"), cast(Any, http), clock, "cb")
        failure = failure_of(Deferred.fromCoroutine(provider.verified_claims(token(), NONCE)))
        failure.trap(ProviderError)
        assert why in str(failure.value)
