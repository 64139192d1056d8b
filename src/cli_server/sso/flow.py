"""A sign-in between its start and the provider's callback.

``login`` makes a random ``state``, a PKCE verifier and a ``nonce``; they stay on the server,
keyed by a random id the browser holds in a short-lived HttpOnly cookie. The callback is
accepted only with that cookie *and* the matching ``state``, once: the entry is taken out on
the first callback, so a replayed or swapped cookie, a state from another browser or an
expired sign-in all find nothing.
"""

from __future__ import annotations

import hmac
import secrets

from attrs import define, field, frozen
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from twisted.internet.interfaces import IReactorTime

LIFETIME = 600.0  # seconds from the redirect to the provider until its callback


@frozen
class Pending:
    provider: str
    state: str
    verifier: str  # PKCE code_verifier; the provider sees only its S256 challenge
    nonce: str
    return_to: str
    link_to: str | None  # a signed-in user's id: link the identity to them
    expires: float

    @property
    def challenge(self) -> str:
        challenge: str = create_s256_code_challenge(self.verifier)
        return challenge


@define(eq=False)
class PendingSignIns:
    """Sign-ins under way, in this process's memory (a restart just makes users retry)."""

    _clock: IReactorTime
    lifetime: float = LIFETIME
    most: int = 10_000  # in all: past it new sign-ins wait, none under way is evicted
    per_address: int = 20  # from one client address: a flood cannot fill the table
    _by_id: dict[str, Pending] = field(factory=dict)
    _address_of: dict[str, str] = field(factory=dict)

    def begin(
        self, provider: str, return_to: str, link_to: str | None, address: str = ""
    ) -> tuple[str, Pending] | None:
        """The cookie value and what it stands for; None while too many are under way (in
        all, or from ``address``)."""
        self.prune()
        mine = sum(1 for a in self._address_of.values() if a == address)
        if len(self._by_id) >= self.most or mine >= self.per_address:
            return None
        pending = Pending(
            provider,
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(48),  # 64 characters: within PKCE's 43..128
            secrets.token_urlsafe(32),
            return_to,
            link_to,
            self._clock.seconds() + self.lifetime,
        )
        cookie = secrets.token_urlsafe(32)
        self._by_id[cookie] = pending
        self._address_of[cookie] = address
        return cookie, pending

    def finish(self, cookie: str | None, provider: str, state: str | None) -> Pending | None:
        """The sign-in this callback completes, or None. A completed or expired one cannot come
        again; a callback with the wrong state leaves it alone (else any page could cancel a
        sign-in under way by sending the browser to the callback with a made-up state)."""
        pending = self._by_id.get(cookie) if cookie else None
        if pending is None or state is None:
            return None
        if pending.expires <= self._clock.seconds():
            self._forget(cookie)
            return None
        if pending.provider != provider or not hmac.compare_digest(
            pending.state.encode(), state.encode("utf-8", "replace")
        ):
            return None
        self._forget(cookie)
        return pending

    def cancel(self, cookie: str) -> None:
        self._forget(cookie)

    def _forget(self, cookie: str | None) -> None:
        if cookie:
            self._by_id.pop(cookie, None)
            self._address_of.pop(cookie, None)

    def prune(self) -> None:
        now = self._clock.seconds()
        for cookie in [c for c, p in self._by_id.items() if p.expires <= now]:
            self._forget(cookie)


def safe_return_to(value: str | None, default: str = "/") -> str:
    """A path on this site to land on after signing in; anything else is ``default``.

    Only a single leading ``/``: ``//host`` and ``/\\host`` are other sites to browsers, and so
    is anything with a scheme. Control characters and backslashes are refused outright.
    """
    if not value or len(value) > 2000 or not value.startswith("/"):
        return default
    if value.startswith("//") or "\\" in value:
        return default
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return default
    return value
