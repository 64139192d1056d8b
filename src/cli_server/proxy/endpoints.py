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
    # The waiters of the lookup in flight per sandbox; forget() detaches the list, so a request
    # after a status change never joins a lookup that began before it.
    _asking: dict[str, list[Deferred[Endpoint | None]]] = field(factory=dict, init=False)

    def cached(self, sandbox_id: str) -> Endpoint | None:
        """The endpoint, if it is known without asking the backend (else ask ``get``): from a
        backend that knows its own exactly (``endpoint_now``), or a fresh remembered answer."""
        now = getattr(self._backend, "endpoint_now", None)
        if now is not None:
            endpoint: Endpoint | None = now(sandbox_id)
            return endpoint
        return self._fresh(sandbox_id)

    def get(self, sandbox_id: str) -> Deferred[Endpoint | None]:
        """The sandbox's endpoint if the backend sees it running, else None."""
        known = self._fresh(sandbox_id)
        if known is not None:
            return succeed(known)
        waiter: Deferred[Endpoint | None] = Deferred()
        waiters = self._asking.get(sandbox_id)
        if waiters is None:
            waiters = self._asking[sandbox_id] = [waiter]
            Deferred.fromCoroutine(self._ask(sandbox_id, waiters))
        else:
            waiters.append(waiter)
        return waiter

    def _fresh(self, sandbox_id: str) -> Endpoint | None:
        known = self._known.get(sandbox_id)
        # (a clock stepped backwards makes an answer stale, never fresh for longer)
        if known is not None and 0 <= self._clock.seconds() - known[1] < self._ttl:
            return known[0]
        return None

    def forget(self, sandbox_id: str) -> None:
        """The sandbox changed status, or did not answer: ask the backend next time. A lookup
        already on its way still answers its own waiters but is not remembered."""
        self._known.pop(sandbox_id, None)
        self._asking.pop(sandbox_id, None)

    async def _ask(self, sandbox_id: str, waiters: list[Deferred[Endpoint | None]]) -> None:
        outcome: Endpoint | Exception | None
        try:
            observed = await self._backend.describe(sandbox_id)
            outcome = observed.endpoint if observed.state is State.RUNNING else None
        except Exception as e:  # every waiter sees the backend's failure
            outcome = e
        if self._asking.get(sandbox_id) is waiters:  # not forgotten meanwhile
            del self._asking[sandbox_id]
            if isinstance(outcome, Endpoint):
                self._known[sandbox_id] = (outcome, self._clock.seconds())
        for waiter in waiters:
            if isinstance(outcome, Exception):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)
