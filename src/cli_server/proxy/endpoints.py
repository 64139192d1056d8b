"""Where each running sandbox answers, remembered for a moment.

Asking the backend on every proxied request is free for the process backend but costs the
docker backend two engine calls on its thread pool. The answer is kept for ``ttl`` seconds and
dropped at once when the sandbox changes status here or a forward to it fails. The ttl stays
short because an endpoint outlives its sandbox badly: a port the engine freed may be handed
to another sandbox's container, which must never receive this sandbox's credential.
Concurrent requests that find no fresh answer share one backend call.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, succeed

from cli_server.sandboxes.backend import Endpoint, SandboxBackend, State


@define(eq=False)
class RunningEndpoints:
    _backend: SandboxBackend
    _clock: Any  # IReactorTime
    _ttl: float = 1.0
    _known: dict[str, tuple[Endpoint, float]] = field(factory=dict, init=False)
    _asking: dict[str, list[Deferred[Endpoint | None]]] = field(factory=dict, init=False)
    _stale: set[str] = field(factory=set, init=False)  # forgotten while being asked

    def get(self, sandbox_id: str) -> Deferred[Endpoint | None]:
        """The sandbox's endpoint if the backend sees it running, else None."""
        known = self._known.get(sandbox_id)
        if known is not None and self._clock.seconds() - known[1] < self._ttl:
            return succeed(known[0])
        waiter: Deferred[Endpoint | None] = Deferred()
        waiters = self._asking.setdefault(sandbox_id, [])
        waiters.append(waiter)
        if len(waiters) == 1:
            Deferred.fromCoroutine(self._ask(sandbox_id))
        return waiter

    def forget(self, sandbox_id: str) -> None:
        """The sandbox changed status, or did not answer: ask the backend next time. An answer
        already on its way is passed on but not remembered (it may predate the change)."""
        self._known.pop(sandbox_id, None)
        if sandbox_id in self._asking:
            self._stale.add(sandbox_id)

    async def _ask(self, sandbox_id: str) -> None:
        try:
            observed = await self._backend.describe(sandbox_id)
        except Exception as e:  # every waiter sees the backend's failure
            self._stale.discard(sandbox_id)
            for waiter in self._asking.pop(sandbox_id, []):
                waiter.errback(e)
            return
        endpoint = observed.endpoint if observed.state is State.RUNNING else None
        if endpoint is not None and sandbox_id not in self._stale:
            self._known[sandbox_id] = (endpoint, self._clock.seconds())
        self._stale.discard(sandbox_id)
        for waiter in self._asking.pop(sandbox_id, []):
            waiter.callback(endpoint)
