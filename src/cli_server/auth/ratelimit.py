"""Counting failures per key in a sliding window, e.g. failed logins per username and address."""

from __future__ import annotations

import math
from collections import deque

from attrs import define, field
from twisted.internet.interfaces import IReactorTime


@define(eq=False)
class FailureLimiter:
    """Allows ``limit`` failures per key within ``window`` seconds.

    Memory stays bounded: each key keeps at most ``limit`` timestamps and ``prune()`` drops keys
    whose window has passed. State is per process; with several replicas each one limits alone.
    """

    _clock: IReactorTime
    _limit: int
    _window: float
    _failures: dict[str, deque[float]] = field(factory=dict, init=False)

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None if it may try now."""
        stamps = self._failures.get(key)
        if not stamps:
            return None
        now = self._clock.seconds()
        while stamps and stamps[0] <= now - self._window:
            stamps.popleft()
        if len(stamps) < self._limit:
            if not stamps:
                del self._failures[key]
            return None
        return max(1, math.ceil(stamps[0] + self._window - now))

    def failed(self, key: str) -> None:
        stamps = self._failures.setdefault(key, deque(maxlen=self._limit))
        stamps.append(self._clock.seconds())

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def prune(self) -> None:
        cutoff = self._clock.seconds() - self._window
        for key in [k for k, s in self._failures.items() if not s or s[-1] <= cutoff]:
            del self._failures[key]
