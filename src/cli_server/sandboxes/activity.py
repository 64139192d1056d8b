"""Recording that a sandbox is in use, cheaply enough to call on every proxied request."""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cli_server.db.pool import Database


@define(eq=False)
class ActivityRecorder:
    """``touch(sandbox_id)`` is the one function the proxy, the tunnel and the Anthropic proxy
    call. It writes ``last_activity_at`` at most once per ``throttle`` seconds per sandbox, and
    the memory it keeps is bounded by the sandboxes touched within that window. The database,
    not this process, holds the truth, so several replicas can share it."""

    _db: Database
    _clock: IReactorTime
    _throttle: float = 30.0
    _written: dict[str, float] = field(factory=dict, init=False)
    _log = Logger()

    def touch(self, sandbox_id: str) -> None:
        now = self._clock.seconds()
        last = self._written.get(sandbox_id)
        if last is not None and now - last < self._throttle:
            return
        self._written[sandbox_id] = now
        if len(self._written) > 10_000:
            self.prune()
        d = Deferred.fromCoroutine(self._write(sandbox_id))
        d.addErrback(
            lambda f: self._log.warn(
                "activity for {sandbox_id} not recorded: {why}",
                sandbox_id=sandbox_id,
                why=f.getErrorMessage(),
            )
        )

    async def _write(self, sandbox_id: str) -> None:
        await self._db.execute(
            "UPDATE sandboxes SET last_activity_at = now() WHERE id = %s", (sandbox_id,)
        )

    def remembered(self) -> list[str]:
        """The sandboxes whose activity was written within the throttle (their next touch
        waits), as far as ``prune`` has not forgotten them."""
        return list(self._written)

    def forget(self) -> None:
        """Forget every write: the next touch of each sandbox writes at once."""
        self._written.clear()

    def prune(self) -> None:
        cutoff = self._clock.seconds() - self._throttle
        for key in [k for k, t in self._written.items() if t <= cutoff]:
            del self._written[key]
