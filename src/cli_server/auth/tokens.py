"""Random bearer secrets: handed out once, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets


def new_token() -> str:
    """32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    # The tokens carry 256 bits of entropy, so a fast hash is enough: no one can brute-force
    # the preimage, and lookups stay one index probe.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
