"""Where each running sandbox answers, and each port previewed in it, remembered for a moment.

Asking the backend on every proxied request is free for the process backend but costs the
docker backend two engine calls on its thread pool. The answer is kept for ``ttl`` seconds and
dropped at once when the sandbox changes status here or a forward to it fails. The ttl stays
short because an endpoint outlives its sandbox badly: a port the engine freed may be handed
to another sandbox's container, which must never receive this sandbox's credential.
Concurrent requests that find no fresh answer share one backend call. A preview's address
(``backend.preview_endpoint``) is kept per (sandbox, port) and dropped with the sandbox's.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from cli_server.sandboxes.backend import Endpoint, SandboxBackend, State

_Key = tuple[str, int | None]


@define(eq=False)
class RunningEndpoints:
    _backend: SandboxBackend
    _clock: IReactorTime
    _ttl: float = 1.0
    # (sandbox, port): opencode's address with port None, else a preview's
    _known: dict[_Key, tuple[Endpoint, float]] = field(factory=dict, init=False)
    # The waiters of the lookup in flight per key; forget() detaches the list, so a request
    # after a status change never joins a lookup that began before it.
    _asking: dict[_Key, list[Deferred[Endpoint | None]]] = field(factory=dict, init=False)

    def cached(self, sandbox_id: str, port: int | None = None) -> Endpoint | None:
        """The endpoint, if it is known without asking the backend (else ask ``get``): from a
        backend that knows its own exactly (``endpoint_now``), or a fresh remembered answer."""
        if port is None and self._backend.knows_endpoints:
            return self._backend.endpoint_now(sandbox_id)
        return self._fresh((sandbox_id, port))

    def get(self, sandbox_id: str, port: int | None = None) -> Deferred[Endpoint | None]:
        """The sandbox's endpoint (or its ``port``'s) if the backend sees it running, else
        None."""
        key = (sandbox_id, port)
        known = self._fresh(key)
        if known is not None:
            return succeed(known)
        waiter: Deferred[Endpoint | None] = Deferred()
        waiters = self._asking.get(key)
        if waiters is None:
            waiters = self._asking[key] = [waiter]
            Deferred.fromCoroutine(self._ask(key, waiters))
        else:
            waiters.append(waiter)
        return waiter

    def _fresh(self, key: _Key) -> Endpoint | None:
        known = self._known.get(key)
        # (a clock stepped backwards makes an answer stale, never fresh for longer)
        if known is not None and 0 <= self._clock.seconds() - known[1] < self._ttl:
            return known[0]
        return None

    def forget(self, sandbox_id: str) -> None:
        """The sandbox changed status, or did not answer: ask the backend next time, for its
        opencode and its previews. A lookup already on its way still answers its own waiters
        but is not remembered."""
        for table in (self._known, self._asking):
            for key in [key for key in table if key[0] == sandbox_id]:
                del table[key]

    async def _ask(self, key: _Key, waiters: list[Deferred[Endpoint | None]]) -> None:
        sandbox_id, port = key
        outcome: Endpoint | Exception | None
        try:
            if port is None:
                observed = await self._backend.describe(sandbox_id)
                outcome = observed.endpoint if observed.state is State.RUNNING else None
            else:
                outcome = await self._backend.preview_endpoint(sandbox_id, port)
        except Exception as e:  # every waiter sees the backend's failure
            outcome = e
        if self._asking.get(key) is waiters:  # not forgotten meanwhile
            del self._asking[key]
            if isinstance(outcome, Endpoint):
                self._known[key] = (outcome, self._clock.seconds())
        for waiter in waiters:
            if isinstance(outcome, Exception):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)
