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


@define(eq=False)
class Backoff:
    """Progressive delays per key: ``free`` failures pass, then each failure makes the key wait
    twice as long as the one before (``first_wait`` seconds, at most ``longest_wait``). A key
    is forgotten ``memory`` seconds after its last failure, or by ``forget``.

    Memory stays bounded: past ``max_keys`` keys the oldest failures are dropped first.
    """

    _clock: IReactorTime
    _free: int
    _first_wait: float = 1.0
    _longest_wait: float = 15 * 60.0
    _memory: float = 60 * 60.0
    _max_keys: int = 100_000
    _failures: dict[str, tuple[int, float]] = field(factory=dict, init=False)  # count, last

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None if it may try now."""
        found = self._failures.get(key)
        if found is None:
            return None
        count, last = found
        now = self._clock.seconds()
        if now - last >= self._memory:
            del self._failures[key]
            return None
        if count < self._free:
            return None
        wait = min(self._first_wait * 2 ** (count - self._free), self._longest_wait)
        left = last + wait - now
        return max(1, math.ceil(left)) if left > 0 else None

    def failed(self, key: str) -> None:
        count, _ = self._failures.pop(key, (0, 0.0))
        self._failures[key] = (count + 1, self._clock.seconds())  # (re-inserted: newest last)
        if len(self._failures) > self._max_keys:
            self.prune()
            while len(self._failures) > self._max_keys:
                del self._failures[next(iter(self._failures))]

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def prune(self) -> None:
        cutoff = self._clock.seconds() - self._memory
        for key in [k for k, (_, last) in self._failures.items() if last <= cutoff]:
            del self._failures[key]


@define(eq=False)
class KnownAddresses:
    """Addresses each account logged in from successfully, kept ``keep`` seconds (at most
    ``per_account`` per account, the most recent)."""

    _clock: IReactorTime
    _keep: float = 30 * 86400.0
    _per_account: int = 8
    _max_accounts: int = 100_000
    _seen: dict[str, dict[str, float]] = field(factory=dict, init=False)

    def knows(self, account: str, address: str) -> bool:
        when = self._seen.get(account, {}).get(address)
        return when is not None and self._clock.seconds() - when < self._keep

    def add(self, account: str, address: str) -> None:
        addresses = self._seen.pop(account, {})
        addresses.pop(address, None)
        addresses[address] = self._clock.seconds()
        while len(addresses) > self._per_account:
            del addresses[next(iter(addresses))]
        self._seen[account] = addresses
        while len(self._seen) > self._max_accounts:
            del self._seen[next(iter(self._seen))]

    def prune(self) -> None:
        cutoff = self._clock.seconds() - self._keep
        for account in list(self._seen):
            addresses = {a: t for a, t in self._seen[account].items() if t > cutoff}
            if addresses:
                self._seen[account] = addresses
            else:
                del self._seen[account]


@define(eq=False)
class LoginGuard:
    """Failed logins slow whoever guesses without locking the rightful user out.

    - per (account, address): a few free tries, then progressive delays; this is what an
      attacker guessing one account from one place meets, and it touches nobody else;
    - per account, from addresses it never logged in from: a softer limit that a spray from
      many addresses hits, while its owner, from an address it used before, is not stopped;
    - per address, for accounts never used from there: high enough for a shared NAT or proxy,
      and its people who logged in from there before are not stopped by it either.
    """

    _pair: Backoff
    _account: Backoff
    _address: Backoff
    _known: KnownAddresses

    def retry_after(self, account: str, address: str) -> tuple[int, str] | None:
        """(seconds, why) if this login must wait, else None."""
        checks = [(self._pair, _pair(account, address), "for this account from this address")]
        if not self._known.knows(account, address):
            checks += [
                (self._account, account, "for this account"),
                (self._address, address, "from this address"),
            ]
        waits = [(w, why) for limiter, key, why in checks if (w := limiter.retry_after(key))]
        if not waits:
            return None
        wait, why = max(waits)
        return wait, f"too many failed logins {why}"

    def failed(self, account: str, address: str) -> None:
        self._pair.failed(_pair(account, address))
        self._account.failed(account)
        self._address.failed(address)

    def succeeded(self, account: str, address: str) -> None:
        self._pair.forget(_pair(account, address))
        self._known.add(account, address)

    def prune(self) -> None:
        for limiter in (self._pair, self._account, self._address):
            limiter.prune()
        self._known.prune()


def wait_in_words(seconds: int) -> str:
    """A wait as people say it, rounded up: "40 seconds", "15 minutes", "2 hours"."""
    if seconds < 60:
        amount, unit = max(1, seconds), "second"
    elif seconds < 2 * 3600:
        amount, unit = math.ceil(seconds / 60), "minute"
    else:
        amount, unit = math.ceil(seconds / 3600), "hour"
    return f"{amount} {unit}{'' if amount == 1 else 's'}"


def _pair(account: str, address: str) -> str:
    return f"{account}\0{address}"
