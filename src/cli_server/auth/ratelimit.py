"""Counting failed logins and registrations, for all replicas at once.

The counts live in PostgreSQL (``Failures``), and times are the server's clock
(``clock.seconds()``, wall time). The rules are the classes here: a sliding window
(``FailureLimiter``), progressive delays (``Backoff``) and the addresses an account logged in
from (``KnownAddresses``), put together by ``LoginGuard``.

An attempt is counted as a failure before it is tried (``take``: one atomic upsert that answers
the new count), and decided on what the key held just before it; a refused attempt, or one that
did not fail after all, is given back. So attempts made at once, on any number of replicas,
get no more tries than the same attempts one after the other.
"""

from __future__ import annotations

import math
from typing import Protocol

from attrs import define, frozen
from twisted.internet.interfaces import IReactorTime

from cli_server.db.pool import Database, Row


@frozen
class Count:
    """One key's failures: how many in a row, the last one's time, and the latest times (as
    many as a window needs, oldest first)."""

    count: int
    last: float
    stamps: tuple[float, ...] = ()


# Times kept per key beyond what a rule reads, so that attempts taken at once can be given
# back (a refused attempt counts for nothing). Past this many at once, the oldest of them stay
# counted: more waiting for whoever sends them, never less.
_SLACK = 64


@frozen
class Taken:
    """One attempt counted as a failure at ``at``, before its outcome was known."""

    kind: str
    key: str
    at: float


class FailureStore(Protocol):
    """Where failures are counted (``Failures``; an in-memory one in the unit tests)."""

    async def record(
        self, kind: str, key: str, now: float, forget_after: float, keep: int
    ) -> Count:
        """One more failure, atomically; answers the key's count with it. ``count`` starts
        again at 1 if the last was ``forget_after`` seconds ago or more; ``stamps`` keeps the
        latest ``keep`` times."""

    async def release(self, kind: str, key: str, at: float) -> None:
        """Un-counts the failure recorded at ``at`` (nothing if its time is no longer kept);
        ``last`` becomes the newest time left."""

    async def get(self, kind: str, key: str) -> Count | None: ...

    async def clear(self, kind: str, key: str) -> None: ...

    async def prune(self, kind: str, before: float) -> None:
        """Drops keys whose last failure is at ``before`` or earlier."""

    async def saw(self, account: str, address: str, now: float, keep: int) -> None:
        """A login of ``account`` from ``address`` worked; only its latest ``keep`` stay."""

    async def seen_at(self, account: str, address: str) -> float | None: ...

    async def prune_addresses(self, before: float) -> None: ...


@define(eq=False)
class Failures:
    """``auth_failures`` and ``login_addresses``: shared by every replica of the database."""

    _db: Database

    async def record(
        self, kind: str, key: str, now: float, forget_after: float, keep: int
    ) -> Count:
        rows = await self._db.query(
            "INSERT INTO auth_failures AS f (kind, key, count, last_at, stamps)"
            " VALUES (%(kind)s, %(key)s, 1, %(now)s,"
            "  CASE WHEN %(keep)s > 0 THEN ARRAY[%(now)s::float8] ELSE '{}' END)"
            " ON CONFLICT (kind, key) DO UPDATE SET"
            "  count = CASE WHEN f.last_at <= %(now)s - %(forget)s THEN 1 ELSE f.count + 1 END,"
            "  last_at = %(now)s,"
            "  stamps = CASE WHEN %(keep)s > 0 THEN (f.stamps || %(now)s::float8)"
            "   [greatest(1, cardinality(f.stamps) + 2 - %(keep)s):] ELSE '{}' END"
            " RETURNING count, last_at, stamps",
            {"kind": kind, "key": _text(key), "now": now, "forget": forget_after, "keep": keep},
        )
        return _count(rows[0])

    async def release(self, kind: str, key: str, at: float) -> None:
        # (one statement: the row is read and written under its lock; the first occurrence of
        # ``at`` goes, and the newest time left is the last one unless ``at`` was it)
        await self._db.execute(
            "UPDATE auth_failures SET count = greatest(count - 1, 0),"
            " stamps = stamps[:array_position(stamps, %(at)s::float8) - 1]"
            "  || stamps[array_position(stamps, %(at)s::float8) + 1:],"
            " last_at = CASE"
            "  WHEN array_position(stamps, %(at)s::float8) < cardinality(stamps)"
            "   THEN stamps[cardinality(stamps)]"
            "  WHEN cardinality(stamps) > 1 THEN stamps[cardinality(stamps) - 1]"
            "  ELSE last_at END"
            " WHERE kind = %(kind)s AND key = %(key)s AND %(at)s::float8 = ANY(stamps)",
            {"kind": kind, "key": _text(key), "at": at},
        )

    async def get(self, kind: str, key: str) -> Count | None:
        rows = await self._db.query(
            "SELECT count, last_at, stamps FROM auth_failures WHERE kind = %s AND key = %s",
            (kind, _text(key)),
        )
        return _count(rows[0]) if rows else None

    async def clear(self, kind: str, key: str) -> None:
        await self._db.execute(
            "DELETE FROM auth_failures WHERE kind = %s AND key = %s", (kind, _text(key))
        )

    async def prune(self, kind: str, before: float) -> None:
        await self._db.execute(
            "DELETE FROM auth_failures WHERE kind = %s AND last_at <= %s", (kind, before)
        )

    async def saw(self, account: str, address: str, now: float, keep: int) -> None:
        await self._db.execute(
            "WITH seen AS (INSERT INTO login_addresses (account, address, seen_at)"
            " VALUES (%(account)s, %(address)s, %(now)s) ON CONFLICT (account, address)"
            " DO UPDATE SET seen_at = greatest(login_addresses.seen_at, %(now)s))"
            " DELETE FROM login_addresses WHERE account = %(account)s AND address <> %(address)s"
            " AND address NOT IN (SELECT address FROM login_addresses WHERE account = %(account)s"
            "  AND address <> %(address)s ORDER BY seen_at DESC LIMIT %(others)s)",
            {
                "account": _text(account),
                "address": _text(address),
                "now": now,
                "others": max(0, keep - 1),
            },
        )

    async def seen_at(self, account: str, address: str) -> float | None:
        rows = await self._db.query(
            "SELECT seen_at FROM login_addresses WHERE account = %s AND address = %s",
            (_text(account), _text(address)),
        )
        return float(rows[0]["seen_at"]) if rows else None

    async def prune_addresses(self, before: float) -> None:
        await self._db.execute("DELETE FROM login_addresses WHERE seen_at <= %s", (before,))


@define(eq=False)
class FailureLimiter:
    """Allows ``limit`` failures per key within ``window`` seconds (a sliding window)."""

    _store: FailureStore
    _clock: IReactorTime
    _kind: str
    _limit: int
    _window: float

    async def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None if it may try now."""
        return self._wait(await self._store.get(self._kind, key), self._clock.seconds())

    async def take(self, key: str) -> int | None:
        """Counts an attempt of ``key`` now; if it had to wait, it is given back and the
        answer is the seconds to wait (else None: it stays counted)."""
        now = self._clock.seconds()
        after = await self._store.record(self._kind, key, now, self._window, self._limit + _SLACK)
        wait = self._wait(_before(after), now)
        if wait is not None:
            await self._store.release(self._kind, key, now)
        return wait

    def _wait(self, found: Count | None, now: float) -> int | None:
        if found is None:
            return None
        recent = [t for t in found.stamps[-self._limit :] if t > now - self._window]
        if len(recent) < self._limit:
            return None
        return max(1, math.ceil(recent[0] + self._window - now))

    async def forget(self, key: str) -> None:
        await self._store.clear(self._kind, key)

    async def prune(self) -> None:
        await self._store.prune(self._kind, self._clock.seconds() - self._window)


@define(eq=False)
class Backoff:
    """Progressive delays per key: ``free`` failures pass, then each failure makes the key wait
    twice as long as the one before (``first_wait`` seconds, at most ``longest_wait``). A key
    is forgotten ``memory`` seconds after its last failure, or by ``forget``."""

    _store: FailureStore
    _clock: IReactorTime
    _kind: str
    _free: int
    _first_wait: float = 1.0
    _longest_wait: float = 15 * 60.0
    _memory: float = 60 * 60.0

    async def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None if it may try now."""
        return self._wait(await self._store.get(self._kind, key), self._clock.seconds())

    async def take(self, key: str) -> tuple[int | None, Taken]:
        """Counts an attempt of ``key`` now, as a failure; answers the seconds it had to wait
        (None: it may try) with what to ``give_back`` if it is refused or does not fail."""
        now = self._clock.seconds()
        after = await self._store.record(self._kind, key, now, self._memory, _SLACK)
        return self._wait(_before(after), now), Taken(self._kind, key, now)

    async def give_back(self, taken: Taken) -> None:
        await self._store.release(taken.kind, taken.key, taken.at)

    def _wait(self, found: Count | None, now: float) -> int | None:
        if found is None:
            return None
        if now - found.last >= self._memory or found.count < self._free:
            return None
        wait = min(self._first_wait * 2 ** (found.count - self._free), self._longest_wait)
        left = found.last + wait - now
        return max(1, math.ceil(left)) if left > 0 else None

    async def forget(self, key: str) -> None:
        await self._store.clear(self._kind, key)

    async def prune(self) -> None:
        await self._store.prune(self._kind, self._clock.seconds() - self._memory)


@define(eq=False)
class KnownAddresses:
    """Addresses each account logged in from successfully, kept ``keep`` seconds (at most
    ``per_account`` per account, the most recent)."""

    _store: FailureStore
    _clock: IReactorTime
    _keep: float = 30 * 86400.0
    _per_account: int = 8

    async def knows(self, account: str, address: str) -> bool:
        when = await self._store.seen_at(account, address)
        return when is not None and self._clock.seconds() - when < self._keep

    async def add(self, account: str, address: str) -> None:
        await self._store.saw(account, address, self._clock.seconds(), self._per_account)

    async def prune(self) -> None:
        await self._store.prune_addresses(self._clock.seconds() - self._keep)


@frozen
class Wait:
    """A login refused for now: for ``seconds``, and why."""

    seconds: int
    why: str


@frozen
class Attempt:
    """A login attempt already counted as failed (under each of its keys) while its password
    is checked; ``LoginGuard.succeeded`` or ``give_back`` undo that."""

    account: str
    address: str
    held: tuple[tuple[Backoff, Taken], ...]


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

    async def retry_after(self, account: str, address: str) -> tuple[int, str] | None:
        """(seconds, why) if a login now would have to wait, else None (counts nothing)."""
        waits = []
        for limiter, key, why, checked in await self._keys(account, address):
            wait = await limiter.retry_after(key) if checked else None
            if wait:
                waits.append((wait, why))
        return _longest(waits)

    async def attempt(self, account: str, address: str) -> Attempt | Wait:
        """Counts a login attempt as failed before its password is checked, or refuses it
        (counting nothing) if it must wait."""
        held, waits = [], []
        for limiter, key, why, checked in await self._keys(account, address):
            wait, taken = await limiter.take(key)
            held.append((limiter, taken))
            if wait and checked:
                waits.append((wait, why))
        refused = _longest(waits)
        if refused is not None:
            await self.give_back(Attempt(account, address, tuple(held)))
            return Wait(*refused)
        return Attempt(account, address, tuple(held))

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the pair's failures are forgotten, the attempt is not a
        failure for the account or the address, and the address is known from now on."""
        await self._pair.forget(_pair(attempt.account, attempt.address))
        for limiter, taken in attempt.held:
            if limiter is not self._pair:
                await limiter.give_back(taken)
        await self._known.add(attempt.account, attempt.address)

    async def give_back(self, attempt: Attempt) -> None:
        """The attempt counts for nothing after all."""
        for limiter, taken in attempt.held:
            await limiter.give_back(taken)

    async def _keys(self, account: str, address: str) -> list[tuple[Backoff, str, str, bool]]:
        """Every key a failure counts under, and whether its limit applies to this login
        (the account's and the address's do not where the account logged in before)."""
        new = not await self._known.knows(account, address)
        return [
            (self._pair, _pair(account, address), "for this account from this address", True),
            (self._account, account, "for this account", new),
            (self._address, address, "from this address", new),
        ]

    async def prune(self) -> None:
        for limiter in (self._pair, self._account, self._address):
            await limiter.prune()
        await self._known.prune()


def _before(after: Count) -> Count | None:
    """What a key held just before the failure ``record`` answered ``after`` for."""
    if after.count <= 1:
        return None
    stamps = after.stamps[:-1]
    return Count(after.count - 1, stamps[-1] if stamps else after.last, stamps)


def _longest(waits: list[tuple[int, str]]) -> tuple[int, str] | None:
    if not waits:
        return None
    wait, why = max(waits)
    return wait, f"too many failed logins {why}"


def _count(row: Row) -> Count:
    return Count(int(row["count"]), float(row["last_at"]), tuple(row["stamps"] or ()))


def wait_in_words(seconds: int) -> str:
    """A wait as people say it, rounded up: "40 seconds", "15 minutes", "2 hours"."""
    if seconds < 60:
        amount, unit = max(1, seconds), "second"
    elif seconds < 2 * 3600:
        amount, unit = math.ceil(seconds / 60), "minute"
    else:
        amount, unit = math.ceil(seconds / 3600), "hour"
    return f"{amount} {unit}{'' if amount == 1 else 's'}"


def _text(key: str) -> str:
    """A key as PostgreSQL text, which holds no NUL: escaped, one way only."""
    return key.replace("\\", "\\\\").replace("\0", "\\0")


def _pair(account: str, address: str) -> str:
    return f"{account}\0{address}"
