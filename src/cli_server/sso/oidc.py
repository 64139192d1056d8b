"""Sign-in with an OpenID Connect provider: discovery, the code exchange and the ID token.

Discovery happens on the first sign-in (and again after a failed try), so the server starts
and serves password logins while the provider is down. The provider's keys are cached and
fetched again when an ID token names a key id we do not know (the provider rotated its keys),
at most once per ``refresh_interval``.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlencode

from attrs import define
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from twisted.internet.interfaces import IReactorTime

from cli_server.config import OidcLogin
from cli_server.sso.claims import Claims
from cli_server.sso.flow import Pending
from cli_server.sso.http import ProviderDown, ProviderError, ProviderHttp

# Asymmetric only: "none" and HS* (keyed with the client secret) are never accepted.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
LEEWAY = 60.0  # seconds of clock difference tolerated on exp and iat


class UnknownKey(ProviderError):
    """The ID token is signed with a key id not in the key set we hold."""


def verify_id_token(
    token: str, keys: KeySet, issuer: str, client_id: str, nonce: str, now: float
) -> dict[str, Any]:
    """The ID token's claims, if its signature, issuer, audience, times and nonce are right
    (OpenID Connect Core 3.1.3.7); raises ``ProviderError`` (``UnknownKey``) otherwise."""
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError) as e:
        raise ProviderError(f"the ID token is malformed ({type(e).__name__})") from None
    algorithm, kid = header.get("alg"), header.get("kid")
    if algorithm not in ALGORITHMS:
        raise ProviderError(f"the ID token's algorithm {str(algorithm)[:20]!r} is refused")
    if kid is not None and not any(key.kid == kid for key in keys):
        raise UnknownKey(f"the ID token's key id {str(kid)[:64]!r} is not the provider's")
    try:
        claims = dict(jwt.decode(token, keys, algorithms=list(ALGORITHMS)).claims)
    except (JoseError, ValueError) as e:
        raise ProviderError(f"the ID token's signature is wrong ({type(e).__name__})") from None
    if claims.get("iss") != issuer:
        raise ProviderError("the ID token is from another issuer")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise ProviderError("the ID token is for another client")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise ProviderError("the ID token is for several clients, authorized for another")
    expires, issued = claims.get("exp"), claims.get("iat")
    if not isinstance(expires, int | float) or expires + LEEWAY <= now:
        raise ProviderError("the ID token has expired")
    if not isinstance(issued, int | float) or issued - LEEWAY > now:
        raise ProviderError("the ID token was issued in the future")
    said = claims.get("nonce")
    if not isinstance(said, str) or not hmac.compare_digest(said.encode(), nonce.encode()):
        raise ProviderError("the ID token's nonce is not this sign-in's")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise ProviderError("the ID token names no subject")
    return claims


@define(eq=False)
class OidcProvider:
    name = "oidc"
    _settings: OidcLogin
    _http: ProviderHttp
    _clock: IReactorTime
    _redirect_uri: str
    refresh_interval: float = 60.0
    _metadata: dict[str, Any] | None = None
    _keys: KeySet | None = None
    _refreshed_at: float | None = None  # when an unknown key id last made us fetch the keys

    @property
    def label(self) -> str:
        return self._settings.name

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            url = self._settings.issuer + "/.well-known/openid-configuration"
            found = await self._http.get_json(url)
            if not isinstance(found, dict) or found.get("issuer") != self._settings.issuer:
                raise ProviderError("discovery names another issuer than OIDC_ISSUER_URL")
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(found.get(key), str):
                    raise ProviderError(f"discovery lacks {key}")
            self._metadata = found
        return self._metadata

    async def authorize_url(self, pending: Pending) -> str:
        endpoint = (await self.metadata())["authorization_endpoint"]
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._settings.client_id,
                "redirect_uri": self._redirect_uri,
                "scope": " ".join(self._settings.scopes),
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": pending.challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def claims(self, code: str, pending: Pending) -> Claims:
        metadata = await self.metadata()
        answer = await self._http.post_form(
            metadata["token_endpoint"],
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self._redirect_uri,
                "code_verifier": pending.verifier,
                "client_id": self._settings.client_id,
                "client_secret": self._settings.client_secret,
            },
        )
        token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(token, str):
            raise ProviderError("the token endpoint gave no ID token")
        said = await self.verified_claims(token, pending.nonce)
        groups = said.get(self._settings.groups_claim) if self._settings.groups_claim else None
        email = said.get("email")
        return Claims(
            provider=self.name,
            subject=said["sub"],
            email=email if isinstance(email, str) and email else None,
            email_verified=said.get("email_verified") is True,
            preferred_username=_text(said.get("preferred_username")),
            name=_text(said.get("name")),
            groups=tuple(g for g in groups if isinstance(g, str))
            if isinstance(groups, list)
            else (),
        )

    async def verified_claims(self, token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims once its signature (by the issuer's current keys), issuer,
        audience, nonce and times check out; a ProviderError otherwise."""

        def check(keys: KeySet) -> dict[str, Any]:
            return verify_id_token(
                token,
                keys,
                self._settings.issuer,
                self._settings.client_id,
                nonce,
                self._clock.seconds(),
            )

        if self._keys is None:
            self._keys = await self._fetch_keys()
        try:
            return check(self._keys)
        except UnknownKey:
            now = self._clock.seconds()
            if self._refreshed_at is not None and now - self._refreshed_at < self.refresh_interval:
                raise
            self._refreshed_at = now
            self._keys = await self._fetch_keys()
            return check(self._keys)

    async def _fetch_keys(self) -> KeySet:
        found = await self._http.get_json((await self.metadata())["jwks_uri"])
        try:
            keys = KeySet.import_key_set(found)
        except (JoseError, ValueError, TypeError, KeyError) as e:
            why = type(e).__name__
            raise ProviderError(f"the provider's key set is unusable ({why})") from None
        return keys


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


__all__ = ["OidcProvider", "ProviderDown", "ProviderError", "UnknownKey", "verify_id_token"]
