"""What the domain tells the rest of the server: access was taken away, a sandbox changed.

``Accounts``, ``InstanceAdmin``, ``Workspaces`` and ``SandboxManager`` fire these themselves,
once their change is committed, so whatever caches or holds open access (the proxy's
sessions and streams, local agents' tunnels, the Anthropic proxy's calls) hears of it
whichever way the change came: the REST API, single sign-on, an admin tool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from attrs import define, field
from twisted.logger import Logger


class Listener(Protocol):
    """One subscriber. Each call comes after the change is committed."""

    async def user_revoked(self, user_id: str) -> None:
        """A logout, a revoked session, a new password: the user's sessions elsewhere end."""

    async def user_disabled(self, user_id: str) -> None:
        """The instance admin disabled the account: everything of it stops."""

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        """The user's role in the workspace changed, or they are no longer a member."""

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        """The sandbox's row is gone."""

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        """The sandbox's status changed (or it was deleted): drop what is cached about it."""


@define(eq=False)
class Events:
    """The fan-out: every subscriber hears every event, in the order they subscribed.

    A subscriber's failure does not keep the others from hearing it; it is logged, and the
    first one is raised to the caller once all have heard, so a revocation that could not be
    done is never answered as done.
    """

    _listeners: list[Listener] = field(factory=list, init=False)
    _log = Logger()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def user_revoked(self, user_id: str) -> None:
        await self._deliver("user_revoked", lambda s: s.user_revoked(user_id), user_id)

    async def user_disabled(self, user_id: str) -> None:
        await self._deliver("user_disabled", lambda s: s.user_disabled(user_id), user_id)

    async def member_changed(self, user_id: str, workspace_id: str) -> None:
        await self._deliver(
            "member_changed", lambda s: s.member_changed(user_id, workspace_id), user_id
        )

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        await self._deliver("sandbox_deleted", lambda s: s.sandbox_deleted(sandbox_id), sandbox_id)

    async def sandbox_status_changed(self, sandbox_id: str) -> None:
        await self._deliver(
            "sandbox_status_changed", lambda s: s.sandbox_status_changed(sandbox_id), sandbox_id
        )

    async def _deliver(
        self, event: str, call: Callable[[Listener], Awaitable[None]], about: str
    ) -> None:
        first: Exception | None = None
        for listener in list(self._listeners):
            try:
                await call(listener)
            except Exception as e:
                self._log.failure(
                    "{listener} failed on {event} of {about}",
                    listener=type(listener).__name__,
                    event=event,
                    about=about,
                )
                first = first or e
        if first is not None:
            raise first
