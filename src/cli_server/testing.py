"""Fakes for tests and integrators, behaving like the real things they stand for."""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort

from cli_server.auth.ratelimit import Count
from cli_server.sandboxes.backend import (
    BackendDefaults,
    BackendError,
    Door,
    Endpoint,
    ExitListener,
    LogTail,
    Observed,
    SandboxSpec,
    State,
    deferred,
)


@define(eq=False)
class FakeBackend(BackendDefaults):
    """An in-memory sandbox backend (FAKE: no processes). Starts can be held or made to fail.

    ``hold()`` makes the next starts wait until ``release()``; ``fail_next`` makes the next
    start raise BackendError with that message; ``crash(id)`` simulates a dead process.
    """

    name: str = "process"
    running: dict[str, Endpoint] = field(factory=dict)
    stopped: set[str] = field(factory=set)
    disks: set[str] = field(factory=set)
    specs: dict[str, SandboxSpec] = field(factory=dict)
    calls: list[tuple[str, str]] = field(factory=list)
    fail_next: str | None = None
    serve_at: int | None = None  # every sandbox "runs" at this port (e.g. a recording server)
    # opens each running sandbox an Anthropic proxy door on the host's loopback (called with
    # netns None), as the process backend does when unisolated
    door: Door | None = None
    doors: dict[str, tuple[IListeningPort, int]] = field(factory=dict)
    _gate: Deferred[None] | None = None
    _next_port: int = 20000
    on_exit: ExitListener | None = None
    exits: dict[str, str] = field(factory=dict)  # what describe() says of a crash, if told
    output: dict[str, list[str]] = field(factory=dict)  # what logs() answers, if told
    logs_fail: str | None = None  # logs() fails with this, as an unreachable engine would
    listening: dict[str, list[int]] = field(factory=dict)  # what listening_ports() answers
    # (sandbox_id, port) -> where preview_endpoint() says that port answers
    previews: dict[tuple[str, int], Endpoint] = field(factory=dict)

    def hold(self) -> None:
        self._gate = Deferred()

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.callback(None)

    def crash(self, sandbox_id: str, why: str | None = None) -> None:
        self.running.pop(sandbox_id, None)
        self.stopped.add(sandbox_id)
        if why is not None:
            self.exits[sandbox_id] = why
        self._close_door(sandbox_id)

    def _close_door(self, sandbox_id: str) -> None:
        door = self.doors.pop(sandbox_id, None)
        if door is not None:
            door[0].stopListening()

    def die(self, sandbox_id: str, why: str = "opencode was killed by signal 9 (SIGKILL)") -> None:
        """A process that ends by itself, reported the way the process backend reports it."""
        self.crash(sandbox_id)
        if self.on_exit is not None:
            self.on_exit(sandbox_id, why)

    @deferred
    async def start(self, spec: SandboxSpec) -> Endpoint:
        self.calls.append(("start", spec.id))
        self.specs[spec.id] = spec
        self.disks.add(spec.workspace_id)
        if self._gate is not None:
            await self._gate
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            self.stopped.add(spec.id)
            raise BackendError(message)
        self._next_port += 1
        endpoint = Endpoint("127.0.0.1", self.serve_at or self._next_port)
        self.running[spec.id] = endpoint
        self.stopped.discard(spec.id)
        self.exits.pop(spec.id, None)
        if self.door is not None and spec.id not in self.doors:
            self.doors[spec.id] = self.door(spec.id, None)
        return endpoint

    @deferred
    async def stop(self, sandbox_id: str) -> None:
        self.calls.append(("stop", sandbox_id))
        if self.running.pop(sandbox_id, None) is not None or sandbox_id in self.specs:
            self.stopped.add(sandbox_id)
        self._close_door(sandbox_id)

    @deferred
    async def delete(self, sandbox_id: str) -> None:
        self.calls.append(("delete", sandbox_id))
        self.running.pop(sandbox_id, None)
        self.stopped.discard(sandbox_id)
        self.specs.pop(sandbox_id, None)
        self._close_door(sandbox_id)

    @deferred
    async def delete_workspace(self, workspace_id: str) -> None:
        self.calls.append(("delete_workspace", workspace_id))
        self.disks.discard(workspace_id)

    knows_endpoints = True

    def endpoint_now(self, sandbox_id: str) -> Endpoint | None:
        return self.running.get(sandbox_id)

    @deferred
    async def preview_endpoint(self, sandbox_id: str, port: int) -> Endpoint | None:
        """Where a test said ``port`` answers (``previews``); None while not running."""
        if sandbox_id not in self.running:
            return None
        # (else port 0, where a connection is refused: nothing listens, as a backend says)
        return self.previews.get((sandbox_id, port), Endpoint("127.0.0.1", 0))

    @deferred
    async def listening_ports(self, sandbox_id: str) -> list[int]:
        return self.listening.get(sandbox_id, []) if sandbox_id in self.running else []

    @deferred
    async def describe(self, sandbox_id: str) -> Observed:
        if sandbox_id in self.running:
            return Observed(State.RUNNING, self.running[sandbox_id])
        if sandbox_id in self.stopped:
            return Observed(State.STOPPED, exit=self.exits.get(sandbox_id))
        return Observed(State.MISSING)

    @deferred
    async def logs(self, sandbox_id: str) -> LogTail:
        if self.logs_fail is not None:
            raise BackendError(self.logs_fail)
        return LogTail(tuple(self.output.get(sandbox_id, ())), False)

    @deferred
    async def list_owned(self) -> list[str]:
        return sorted(set(self.running) | self.stopped)

    @deferred
    async def close(self) -> None:
        for sandbox_id in list(self.running):
            self.crash(sandbox_id)


@define(eq=False)
class FakeAgentStatus:
    """FAKE opencode session status: ``working`` ids answer busy, ``broken`` ids fail."""

    working: set[int] = field(factory=set)  # ports of busy sandboxes
    broken: set[int] = field(factory=set)

    async def busy(self, endpoint: Endpoint, password: str) -> bool:
        if endpoint.port in self.broken:
            raise BackendError("opencode did not answer")
        return endpoint.port in self.working


@define(eq=False)
class MemoryFailures:
    """Failed logins and registrations counted in memory (FAKE: ``ratelimit.Failures`` keeps
    them in PostgreSQL for every replica); the same answers, for tests of the rules."""

    counts: dict[tuple[str, str], Count] = field(factory=dict)
    seen: dict[tuple[str, str], float] = field(factory=dict)  # (account, address) -> when

    async def record(
        self, kind: str, key: str, now: float, forget_after: float, keep: int
    ) -> Count:
        old = self.counts.get((kind, key))
        count = 1 if old is None or old.last <= now - forget_after else old.count + 1
        stamps = ((*old.stamps, now) if old is not None else (now,))[-keep:] if keep else ()
        self.counts[(kind, key)] = Count(count, now, stamps)
        return self.counts[(kind, key)]

    async def release(self, kind: str, key: str, at: float) -> None:
        old = self.counts.get((kind, key))
        if old is None or at not in old.stamps:
            return
        stamps = list(old.stamps)
        del stamps[stamps.index(at)]
        last = stamps[-1] if stamps else old.last
        self.counts[(kind, key)] = Count(max(old.count - 1, 0), last, tuple(stamps))

    async def get(self, kind: str, key: str) -> Count | None:
        return self.counts.get((kind, key))

    async def clear(self, kind: str, key: str) -> None:
        self.counts.pop((kind, key), None)

    async def prune(self, kind: str, before: float) -> None:
        for k in [k for k, c in self.counts.items() if k[0] == kind and c.last <= before]:
            del self.counts[k]

    async def saw(self, account: str, address: str, now: float, keep: int) -> None:
        self.seen[(account, address)] = max(now, self.seen.get((account, address), now))
        mine = sorted((t, a) for (who, a), t in self.seen.items() if who == account)
        for _, gone in mine[: max(0, len(mine) - keep)]:
            del self.seen[(account, gone)]

    async def seen_at(self, account: str, address: str) -> float | None:
        return self.seen.get((account, address))

    async def prune_addresses(self, before: float) -> None:
        for k in [k for k, t in self.seen.items() if t <= before]:
            del self.seen[k]
