"""Long-lived proxied connections in this process, by whose session they serve.

A request is checked when it starts; a terminal (WebSocket) or an event stream then runs for
hours. When a session is revoked (logout, removal from the workspace, a role change, the
sandbox deleted), ``SandboxAccess`` cuts what that session has open here, as the relay
workers do for the connections they carry.

A connection is listed only once it is open, some time after its session was read (a
connection to the sandbox, its answer's head); a revocation in between would find nothing
to cut. So revocations are remembered, numbered by ``SandboxAccess.revocations``, and a
connection whose session was read before a matching one (a lower count) is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime


@frozen
class Whose:
    """Whose session a connection serves, as revocations name it."""

    user_id: str
    workspace_id: str
    sandbox_id: str

    def matches(self, match: dict[str, str]) -> bool:
        """Whether every field named in ``match`` (e.g. user_id=...) has that value."""
        return all(getattr(self, name) == value for name, value in match.items())


# Longer than any wait between reading a session and listing its connection (an answer's
# head may take 120 s, a connection 10 s, a cached session 2 s). The clock only prunes.
REMEMBER_SECONDS = 300.0


@define(eq=False)
class LiveStreams:
    _clock: IReactorTime
    _open: dict[int, tuple[Whose, Callable[[], None]]] = field(factory=dict, init=False)
    _next: int = field(default=0, init=False)
    # (when, its number, whose): revocations of the last REMEMBER_SECONDS
    _revoked: list[tuple[float, int, dict[str, str]]] = field(factory=list, init=False)

    def add(self, whose: Whose, seen: int, end: Callable[[], None]) -> int | None:
        """Lists a connection whose session was read when ``seen`` revocations had been
        counted; None if a later one revoked it (the caller ends the connection)."""
        if self.revoked(whose, seen):
            return None
        self._next += 1
        self._open[self._next] = (whose, end)
        return self._next

    def revoked(self, whose: Whose, seen: int) -> bool:
        """Whether a revocation after the first ``seen`` matches ``whose``."""
        if not self._revoked or self._revoked[-1][1] <= seen:
            return False  # (none since: the common case, without a scan)
        return any(n > seen and whose.matches(match) for _, n, match in self._revoked)

    def open_count(self) -> int:
        return len(self._open)

    def remove(self, handle: int | None) -> None:
        if handle is not None:
            self._open.pop(handle, None)

    def cut(self, number: int, **match: str) -> None:
        """Ends the connections whose user_id, workspace_id and sandbox_id equal ``match``'s;
        ``number`` is this revocation's count."""
        now = self._clock.seconds()
        kept = [r for r in self._revoked if now - r[0] < REMEMBER_SECONDS]
        self._revoked = [*kept[-10_000:], (now, number, match)]
        for handle, (whose, end) in list(self._open.items()):
            if whose.matches(match):
                del self._open[handle]
                end()

    def end_all(self) -> None:
        """Ends every connection listed (a stopping server, once nothing else is in flight)."""
        open_now, self._open = self._open, {}
        for _, end in open_now.values():
            end()
