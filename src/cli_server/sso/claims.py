"""What a provider vouches for after a successful sign-in, and who turns it into an account.

The protocol side (``sso.flow`` and the providers) proves an identity and produces
``Claims``; the account side (``sso.identities``) decides which user that is — a new one, an
existing one it may be linked to, or a refusal — and never sees a token or a code.
"""

from __future__ import annotations

from typing import Protocol

from attrs import frozen

from cli_server.domain.accounts import User
from cli_server.domain.errors import Forbidden


@frozen
class Claims:
    provider: str  # the configured provider's name: "github" or "oidc"
    subject: str  # stable id at the provider (OIDC ``sub``, GitHub's numeric user id)
    email: str | None
    email_verified: bool  # the provider says so (OIDC email_verified, GitHub verified primary)
    preferred_username: str | None  # OIDC preferred_username, GitHub login
    name: str | None = None
    groups: tuple[str, ...] = ()


class SignInRefused(Forbidden):
    """The provider proved who this is, but we will not sign them in (or link them); ``code``
    is one of the codes the sign-in screen explains (see ``REFUSALS``)."""


# Codes a failed sign-in lands on the sign-in screen with (``/?sso_error=<code>``); the web UI
# has a sentence for each, and falls back to a generic one for codes it does not know.
REFUSALS = {
    "denied": "the sign-in was cancelled at the provider",
    "bad_state": "the sign-in took too long or was started in another browser; try again",
    "provider_error": "the provider refused the sign-in; try again",
    "provider_down": "the sign-in provider could not be reached; try again later",
    "email_unverified": "the provider has no verified email address for you",
    "domain_not_allowed": "your email domain may not sign in here",
    "account_exists": (
        "an account with your email address exists; sign in with its password, then link "
        "this provider on your account page"
    ),
    "identity_taken": "this identity is already linked to another account",
    "account_disabled": "this account is disabled; ask your administrator",
    "registration_closed": "this server does not create new accounts; ask your administrator",
    "sign_in_again": "for your safety, sign in again before linking a provider",
    "busy": "too many sign-ins are under way; wait a minute and try again",
}


class SignIns(Protocol):
    async def sign_in(self, claims: Claims, link_to: str | None) -> User:
        """The user these claims sign in, creating or linking as the rules allow. With
        ``link_to`` (a signed-in user's id) the identity is linked to that user instead.
        Raises ``SignInRefused`` with one of ``REFUSALS``' codes."""
        ...
