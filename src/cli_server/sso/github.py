"""Sign-in with GitHub (an OAuth app): the code exchange (with PKCE), the profile, and the
primary email address only if GitHub says it is verified."""

from __future__ import annotations

from urllib.parse import urlencode

from attrs import define

from cli_server.config import GithubLogin
from cli_server.plumbing.encoding import JSON
from cli_server.sso.claims import Claims
from cli_server.sso.flow import Pending
from cli_server.sso.http import ProviderError, ProviderHttp

SCOPES = "read:user user:email"


@define(eq=False)
class GithubProvider:
    name = "github"
    label = "GitHub"
    _settings: GithubLogin
    _http: ProviderHttp
    _redirect_uri: str

    async def authorize_url(self, pending: Pending) -> str:
        query = urlencode(
            {
                "client_id": self._settings.client_id,
                "redirect_uri": self._redirect_uri,
                "scope": SCOPES,
                "state": pending.state,
                "code_challenge": pending.challenge,
                "code_challenge_method": "S256",
                "allow_signup": "false",
            }
        )
        return f"{self._settings.web_url}/login/oauth/authorize?{query}"

    async def claims(self, code: str, pending: Pending) -> Claims:
        answer = await self._http.post_form(
            f"{self._settings.web_url}/login/oauth/access_token",
            {
                "client_id": self._settings.client_id,
                "client_secret": self._settings.client_secret,
                "code": code,
                "redirect_uri": self._redirect_uri,
                "code_verifier": pending.verifier,
            },
        )
        # (GitHub answers a refused code with 200 and an "error" field)
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise ProviderError(f"GitHub gave no access token ({str(error)[:60]})")
        headers = {
            b"authorization": f"Bearer {token}".encode(),
            b"accept": b"application/vnd.github+json",
        }
        user = await self._http.get_json(f"{self._settings.api_url}/user", headers)
        emails = await self._http.get_json(f"{self._settings.api_url}/user/emails", headers)
        if not isinstance(user, dict) or not isinstance(user.get("id"), int):
            raise ProviderError("GitHub's /user names no user id")
        email = primary_verified_email(emails)
        return Claims(
            provider=self.name,
            subject=str(user["id"]),
            email=email,
            email_verified=email is not None,
            preferred_username=_text(user.get("login")),
            name=_text(user.get("name")),
        )


def primary_verified_email(emails: JSON) -> str | None:
    """The primary address if verified; another verified address is not the user's choice,
    and an unverified one proves nothing."""
    if not isinstance(emails, list):
        raise ProviderError("GitHub's /user/emails is not a list")
    for entry in emails:
        if isinstance(entry, dict) and entry.get("primary") is True:
            email = entry.get("email")
            if entry.get("verified") is True and isinstance(email, str) and "@" in email:
                return email
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
