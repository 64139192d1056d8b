"""Password hashing with argon2id, always off the reactor thread."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from attrs import define, field

from cli_server.plumbing.threads import Runner


def cheap_hasher() -> PasswordHasher:
    """Minimal-cost parameters, for tests only."""
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@define(eq=False)
class Passwords:
    _run: Runner
    _hasher: PasswordHasher = field(factory=PasswordHasher)  # RFC 9106 low-memory profile
    _dummy: str | None = field(default=None, init=False)

    async def hash(self, password: str) -> str:
        result: str = await self._run(self._hasher.hash, password)
        return result

    async def verify(self, stored: str | None, password: str) -> bool:
        """Check ``password``; with no stored hash, spend the same time and say no.

        Hashing for unknown users too keeps login time from telling whether a username exists.
        """
        if stored is None:
            if self._dummy is None:
                self._dummy = await self.hash("not a password anyone has")
            stored = self._dummy
            password = password + "\x00"
        try:
            ok: bool = await self._run(self._hasher.verify, stored, password)
            return ok
        except (VerificationError, InvalidHashError):
            return False
