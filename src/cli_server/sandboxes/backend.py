"""The interface every sandbox backend implements (process, docker, k8s).

Every method returns a Deferred. Callers (the manager, reconciler, proxy) know nothing else
about a backend, so later backends fit without changing them.
"""

from __future__ import annotations

import signal
from base64 import b64encode
from collections.abc import Callable, Coroutine
from enum import StrEnum
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort

P = ParamSpec("P")
T = TypeVar("T")

# The Anthropic proxy's door into one sandbox (the server opens it, a backend asks for it):
# (sandbox_id, its network namespace or None for the host's loopback) -> the listener, taking
# only that sandbox's token, and its port
Door = Callable[[str, Path | None], tuple[IListeningPort, int]]


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
    docker-init). ``oom``: the kernel's OOM killer acted in the sandbox; a SIGKILL then is
    its doing (another ending is not: it may have killed some other process there)."""
    if number is None and via_init and code is not None and 128 < code < 128 + 65:
        number = code - 128
    if oom and number == signal.SIGKILL:
        return "opencode ran out of memory (killed by the kernel's OOM killer)"
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            return f"opencode was killed by signal {number}"
        return f"opencode was killed by signal {number} ({name})"
    return f"opencode exited with status {code}" if code else "opencode exited"


@frozen
class LogTail:
    """The end of a sandbox's opencode output (stdout and stderr, start-up errors)."""

    lines: tuple[str, ...]
    truncated: bool  # older output was left out


LOG_TAIL_LINES = 200
LOG_TAIL_BYTES = 64 * 1024


def tail_lines(text: str, *, cut: bool) -> LogTail:
    """The last LOG_TAIL_LINES lines of at most LOG_TAIL_BYTES of ``text``; ``cut``: ``text``
    is itself the end of something longer."""
    data = text.encode("utf-8", "replace")
    if len(data) > LOG_TAIL_BYTES:
        data, cut = data[-LOG_TAIL_BYTES:], True
        data = data[data.find(b"\n") + 1 :]  # (a first line cut in half says nothing)
    lines = data.decode("utf-8", "replace").splitlines()
    if len(lines) > LOG_TAIL_LINES:
        lines, cut = lines[-LOG_TAIL_LINES:], True
    return LogTail(tuple(lines), cut)


def secret_forms(password: str) -> list[str]:
    """The opencode password as it may be printed: itself, and in the Basic credential the
    proxy sends (``opencode:<password>`` in base64)."""
    return [password, b64encode(f"opencode:{password}".encode()).decode()] if password else []


def redact(lines: list[str], secrets: list[str]) -> list[str]:
    """``lines`` with each secret replaced by ``[redacted]``."""
    for secret in (s for s in secrets if s):
        lines = [line.replace(secret, "[redacted]") for line in lines]
    return lines


# (sandbox_id, why): a sandbox's opencode ended without being asked to, e.g.
# "opencode was killed by signal 9 (SIGKILL)". Called on the reactor thread.
ExitListener = Callable[[str, str], None]


class SandboxBackend(Protocol):
    name: str
    # Set by the server; a backend that cannot notice exits as they happen leaves it unused
    # (the reconciler finds those). Never called for a stop, pause or delete we asked for.
    on_exit: ExitListener | None

    @property
    def survives_restart(self) -> bool:
        """Its sandboxes keep running while the server is down (the next start adopts them),
        so a stopping server leaves them be."""

    @property
    def lists_ports(self) -> bool:
        """``listening_ports`` answers for real (else users type a preview's port)."""

    @property
    def knows_endpoints(self) -> bool:
        """``endpoint_now`` answers exactly, at no cost (the proxy asks it every time)."""

    def endpoint_now(self, sandbox_id: str) -> Endpoint | None:
        """Where a running sandbox answers, known without waiting (the proxy's hot path);
        None: not running. Asked only of a backend that ``knows_endpoints``."""

    def source_addresses(self, sandbox_id: str) -> Deferred[frozenset[str]]:
        """The addresses a running sandbox's Anthropic calls may come from on the server's
        main listener; empty: none (its calls come through a door of its own)."""

    def forget(self, sandbox_id: str) -> None:
        """The sandbox changed status, maybe through another replica: drop what is remembered
        of it (addresses, listings)."""

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

    def preview_endpoint(self, sandbox_id: str, port: int) -> Deferred[Endpoint | None]:
        """Where the server reaches ``port`` inside the running sandbox (a preview: a dev
        server the agent started), or None when the sandbox is not running. Nothing need
        listen there yet: connecting then fails, and the proxy says so."""

    def listening_ports(self, sandbox_id: str) -> Deferred[list[int]]:
        """Preview ports (``PREVIEW_PORTS``) something listens on in the sandbox now, opencode's
        own excluded; empty when the backend cannot see them cheaply (users type one)."""

    def logs(self, sandbox_id: str) -> Deferred[LogTail]:
        """The end of the sandbox's opencode output, its secrets blanked; empty if none."""

    def list_owned(self) -> Deferred[list[str]]:
        """Ids of every sandbox this backend holds any state or process for."""

    def close(self) -> Deferred[None]:
        """Server shutdown: stop every running sandbox, keeping their state."""


class BackendDefaults:
    """The optional capabilities' answers for a backend that has none of its own."""

    @property
    def survives_restart(self) -> bool:
        return False

    @property
    def lists_ports(self) -> bool:
        return True

    @property
    def knows_endpoints(self) -> bool:
        return False

    def endpoint_now(self, sandbox_id: str) -> Endpoint | None:
        return None

    def source_addresses(self, sandbox_id: str) -> Deferred[frozenset[str]]:
        return succeed(frozenset())

    def forget(self, sandbox_id: str) -> None:
        pass


# The ports a preview may open: unprivileged ones; opencode's own is refused by the rules.
PREVIEW_PORTS = range(1024, 65536)


class BackendError(Exception):
    """A backend could not do what was asked; the message is shown to users as ``error``."""
