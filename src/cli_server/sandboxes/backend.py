"""The interface every sandbox backend implements (process, docker, k8s).

Every method returns a Deferred. Callers (the manager, reconciler, proxy) know nothing else
about a backend, so later backends fit without changing them.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Coroutine
from enum import StrEnum
from functools import wraps
from typing import Any, ParamSpec, Protocol, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred

P = ParamSpec("P")
T = TypeVar("T")


def deferred(f: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Deferred[T]]:
    """Make an ``async def`` method return a Deferred, as the backend interface promises."""

    @wraps(f)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return Deferred.fromCoroutine(f(*args, **kwargs))

    return wrapper


@frozen(repr=False)
class SandboxSpec:
    """What a backend needs to run one sandbox. Secrets stay out of ``repr`` (and so logs)."""

    id: str
    workspace_id: str
    password: str  # opencode's OPENCODE_SERVER_PASSWORD
    proxy_token: str  # this run's Anthropic proxy token

    def __repr__(self) -> str:
        return f"SandboxSpec(id={self.id!r}, workspace_id={self.workspace_id!r})"


@frozen
class Endpoint:
    """Where the server reaches a sandbox's opencode (HTTP, Basic auth with its password)."""

    host: str
    port: int


class State(StrEnum):
    RUNNING = "running"  # opencode process alive
    STOPPED = "stopped"  # known to the backend, not running (its state is kept)
    MISSING = "missing"  # the backend knows nothing of it


@frozen
class Observed:
    state: State
    endpoint: Endpoint | None = None
    # why a process nobody stopped ended (``exit_reason``), where the backend can still tell
    exit: str | None = None


def exit_reason(code: int | None, number: int | None, *, oom: bool, via_init: bool) -> str:
    """A sentence for a sandbox's ``error``: how its opencode ended. ``via_init``: the status
    comes from a parent that reports a child killed by signal N as 128 + N (bubblewrap,
    docker-init)."""
    if number is None and via_init and code is not None and 128 < code < 128 + 65:
        number = code - 128
    memory = ", out of memory" if oom else ""
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"opencode was killed ({name}{memory})"
    if oom:
        return "opencode ran out of memory"
    return f"opencode exited with status {code}" if code else "opencode exited"


# (sandbox_id, why): a sandbox's opencode ended without being asked to, e.g.
# "opencode was killed (SIGKILL, out of memory)". Called on the reactor thread.
ExitListener = Callable[[str, str], None]


class SandboxBackend(Protocol):
    name: str
    # Set by the server; a backend that cannot notice exits as they happen leaves it unused
    # (the reconciler finds those). Never called for a stop, pause or delete we asked for.
    on_exit: ExitListener | None

    def start(self, spec: SandboxSpec) -> Deferred[Endpoint]:
        """Create or resume the sandbox and wait until opencode answers."""

    def stop(self, sandbox_id: str) -> Deferred[None]:
        """Pause: stop opencode, keep its HOME and the workspace disk."""

    def delete(self, sandbox_id: str) -> Deferred[None]:
        """Stop and remove everything the sandbox owns (not the workspace disk)."""

    def delete_workspace(self, workspace_id: str) -> Deferred[None]:
        """Remove a workspace's shared disk; its sandboxes are already deleted."""

    def describe(self, sandbox_id: str) -> Deferred[Observed]:
        """What the backend sees now."""

    def list_owned(self) -> Deferred[list[str]]:
        """Ids of every sandbox this backend holds any state or process for."""

    def close(self) -> Deferred[None]:
        """Server shutdown: stop every running sandbox, keeping their state."""


class BackendError(Exception):
    """A backend could not do what was asked; the message is shown to users as ``error``."""
