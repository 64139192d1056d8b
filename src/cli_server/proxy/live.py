"""Long-lived proxied connections in this process, by whose session they serve.

A request is checked when it starts; a terminal (WebSocket) or an event stream then runs for
hours. When a session is revoked (logout, removal from the workspace, a role change, the
sandbox deleted), ``SandboxAccess`` cuts what that session has open here, as the stream
relay does for the streams it carries.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field


@define(eq=False)
class LiveStreams:
    # handle: (user_id, workspace_id, sandbox_id), how to end it
    _open: dict[int, tuple[tuple[str, str, str], Callable[[], None]]] = field(
        factory=dict, init=False
    )
    _next: int = field(default=0, init=False)

    def add(self, user_id: str, workspace_id: str, sandbox_id: str, end: Callable[[], None]) -> int:
        self._next += 1
        self._open[self._next] = ((user_id, workspace_id, sandbox_id), end)
        return self._next

    def remove(self, handle: int) -> None:
        self._open.pop(handle, None)

    def cut(self, **match: str) -> None:
        """Ends the connections whose user_id, workspace_id and sandbox_id equal ``match``'s."""
        wanted = [(name, value) for name, value in match.items()]
        for handle, ((user_id, workspace_id, sandbox_id), end) in list(self._open.items()):
            fields = {"user_id": user_id, "workspace_id": workspace_id, "sandbox_id": sandbox_id}
            if all(fields[name] == value for name, value in wanted):
                del self._open[handle]
                end()

    def __len__(self) -> int:
        return len(self._open)
