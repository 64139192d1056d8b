"""Failure counting and progressive login delays with a fake clock, over the in-memory store
(``MemoryFailures``; ``Failures`` gives the same answers from PostgreSQL: see
tests/integration/test_replica_events.py and test_auth.py)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cli_server.auth.ratelimit import (
    Attempt,
    Backoff,
    Count,
    FailureLimiter,
    KnownAddresses,
    LoginGuard,
    Wait,
    wait_in_words,
)
from cli_server.testing import MemoryFailures
from cli_server.web.auth_api import AuthLimits
from tests.unit.deferreds import failure_of, result_of

T = TypeVar("T")


def now(work: Coroutine[Any, Any, T]) -> T:
    """The result of a call that needs no waiting (the store is in memory)."""
    return result_of(Deferred.fromCoroutine(work))


class FailureLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryFailures()
        self.limiter = FailureLimiter(self.store, self.clock, "registration", 3, 60.0)

    def test_blocks_after_limit_until_window_passes(self) -> None:
        """The limit-th failure blocks; Retry-After counts down to the oldest failure's expiry."""
        for _ in range(2):
            self.assertIsNone(now(self.limiter.take("alice")))
            self.assertIsNone(now(self.limiter.retry_after("alice")))
        self.clock.advance(10)
        self.assertIsNone(now(self.limiter.take("alice")))
        self.assertEqual(now(self.limiter.retry_after("alice")), 50)
        self.clock.advance(49.5)
        self.assertEqual(now(self.limiter.retry_after("alice")), 1)
        self.clock.advance(0.5)
        self.assertIsNone(now(self.limiter.retry_after("alice")))

    def test_keys_are_independent_and_forget_clears(self) -> None:
        """One key's failures do not block another; forget() resets a key."""
        for _ in range(3):
            now(self.limiter.take("alice"))
        self.assertIsNone(now(self.limiter.retry_after("bob")))
        now(self.limiter.forget("alice"))
        self.assertIsNone(now(self.limiter.retry_after("alice")))

    def test_prune_bounds_memory(self) -> None:
        """Keys whose failures are all older than the window are dropped."""
        for n in range(100):
            now(self.limiter.take(f"user{n}"))
        self.clock.advance(61)
        now(self.limiter.take("fresh"))
        now(self.limiter.prune())
        self.assertEqual(list(self.store.counts), [("registration", "fresh")])


OWNER, ATTACKER, HOME = "owner", "6.6.6.6", "10.0.0.7"


def _guard(clock: Clock) -> LoginGuard:
    return AuthLimits(
        login_failures_per_pair=5,
        login_failures_per_user=20,
        login_failures_per_address=100,
        login_first_wait=1.0,
        login_longest_wait=900.0,
        login_window=3600.0,
    ).guard(MemoryFailures(), clock)


def _try(guard: LoginGuard, clock: Clock, account: str, address: str) -> bool:
    """One wrong password if allowed now (it stays counted); False if it had to wait."""
    return isinstance(now(guard.attempt(account, address)), Attempt)


def _login(guard: LoginGuard, account: str, address: str) -> None:
    """The right password, from ``address``."""
    attempt = now(guard.attempt(account, address))
    assert isinstance(attempt, Attempt)
    now(guard.succeeded(attempt))


class BackoffTests(SynchronousTestCase):
    def test_waits_double_after_the_free_tries_and_are_capped(self) -> None:
        """Free tries pass; then 1, 2, 4 ... s, never more than the longest wait."""
        clock = Clock()
        backoff = Backoff(MemoryFailures(), clock, "login-pair", 3, 1.0, 10.0, 3600.0)
        for _ in range(3):
            self.assertIsNone(now(backoff.retry_after("k")))
            self.assertIsNone(now(backoff.take("k"))[0])
        waits = []
        for _ in range(6):
            waits.append(now(backoff.retry_after("k")))
            clock.advance(waits[-1] or 0)
            self.assertIsNone(now(backoff.retry_after("k")))
            self.assertIsNone(now(backoff.take("k"))[0])
        self.assertEqual(waits, [1, 2, 4, 8, 10, 10])
        now(backoff.forget("k"))
        self.assertIsNone(now(backoff.retry_after("k")))

    def test_prune_drops_keys_idle_past_the_memory(self) -> None:
        """Keys whose last failure is older than the memory are pruned; a fresh one stays."""
        clock = Clock()
        store = MemoryFailures()
        backoff = Backoff(store, clock, "login-pair", 1, 1.0, 10.0, 60.0)
        for n in range(25):
            now(backoff.take(f"k{n}"))
        clock.advance(61)
        now(backoff.take("fresh"))
        now(backoff.prune())
        self.assertEqual(list(store.counts), [("login-pair", "fresh")])

    def test_a_failure_after_the_memory_starts_again(self) -> None:
        """A key whose last failure was forgotten starts again from its free tries."""
        clock = Clock()
        backoff = Backoff(MemoryFailures(), clock, "login-pair", 2, 1.0, 10.0, 60.0)
        for _ in range(4):
            now(backoff.take("k"))
        self.assertIsNotNone(now(backoff.retry_after("k")))
        clock.advance(60)
        now(backoff.take("k"))
        self.assertIsNone(now(backoff.retry_after("k")))


class LoginGuardTests(SynchronousTestCase):
    def test_a_guesser_is_slowed_and_the_owner_elsewhere_is_not(self) -> None:
        """An hour of guessing one account from one address gets a few dozen tries, not
        thousands; the owner, from the address they used before, logs in at any moment."""
        clock = Clock()
        guard = _guard(clock)
        _login(guard, OWNER, HOME)
        tries = 0
        for _ in range(3600):  # the attacker tries every second for an hour
            tries += _try(guard, clock, OWNER, ATTACKER)
            self.assertIsNone(now(guard.retry_after(OWNER, HOME)))  # never locked out at home
            clock.advance(1)
        self.assertLess(tries, 20)
        self.assertGreaterEqual(tries, 5)

    def test_a_spray_from_many_addresses_hits_the_account_limit_not_its_owner(self) -> None:
        """Each address guesses a little; the account's soft limit then slows new addresses,
        while the owner's known address passes."""
        clock = Clock()
        guard = _guard(clock)
        _login(guard, OWNER, HOME)
        for n in range(20):
            self.assertTrue(_try(guard, clock, OWNER, f"203.0.113.{n}"))
        waiting = now(guard.retry_after(OWNER, "203.0.113.200"))
        self.assertIsNotNone(waiting)
        assert waiting is not None
        self.assertEqual(waiting[1], "too many failed logins for this account")
        self.assertIsNone(now(guard.retry_after(OWNER, HOME)))

    def test_many_accounts_from_one_address_do_not_lock_out_its_other_users(self) -> None:
        """Failures for 20 (even 100) names from one shared address: people who logged in
        there before still can; new names there are slowed only past the address's limit."""
        clock = Clock()
        guard = _guard(clock)
        _login(guard, "alice", HOME)
        for n in range(20):
            self.assertTrue(_try(guard, clock, f"user{n}", HOME))
        self.assertIsNone(now(guard.retry_after("alice", HOME)))
        self.assertIsNone(now(guard.retry_after("bob", HOME)))  # 20 is far below a NAT's limit
        for n in range(20, 100):
            _try(guard, clock, f"user{n}", HOME)
        self.assertIsNone(now(guard.retry_after("alice", HOME)))
        waiting = now(guard.retry_after("bob", HOME))
        assert waiting is not None
        self.assertEqual(waiting[1], "too many failed logins from this address")

    def test_the_pair_limit_applies_at_a_known_address_too(self) -> None:
        """Knowing an address never excuses guessing from it; success there clears the pair."""
        clock = Clock()
        guard = _guard(clock)
        _login(guard, OWNER, HOME)
        for _ in range(5):
            self.assertTrue(_try(guard, clock, OWNER, HOME))
        self.assertEqual(
            now(guard.retry_after(OWNER, HOME)),
            (1, "too many failed logins for this account from this address"),
        )
        clock.advance(1)
        _login(guard, OWNER, HOME)
        self.assertIsNone(now(guard.retry_after(OWNER, HOME)))

    def test_known_addresses_expire_and_are_bounded(self) -> None:
        """An address is known for its period only, and only the most recent few are kept."""
        clock = Clock()
        store = MemoryFailures()
        known = KnownAddresses(store, clock, 100.0, per_account=2)
        for address in ("a", "b", "c"):
            now(known.add(OWNER, address))
        self.assertEqual([now(known.knows(OWNER, a)) for a in "abc"], [False, True, True])
        clock.advance(101)
        self.assertFalse(now(known.knows(OWNER, "c")))
        now(known.prune())
        self.assertEqual(store.seen, {})


class AttemptTests(SynchronousTestCase):
    """An attempt is counted before its password is checked: attempts at once (their checks
    all pending) get the free tries and no more; a refused one counts for nothing."""

    def test_attempts_at_once_get_the_free_tries_only(self) -> None:
        """Sixty attempts taken before any password is checked: five pass, the rest must
        wait; after the wait, one more passes (the refused ones did not count)."""
        clock = Clock()
        guard = _guard(clock)
        taken = [now(guard.attempt(OWNER, ATTACKER)) for _ in range(60)]
        self.assertEqual(sum(isinstance(t, Attempt) for t in taken), 5)
        self.assertEqual(
            {(t.seconds, t.why) for t in taken if isinstance(t, Wait)},
            {(1, "too many failed logins for this account from this address")},
        )
        clock.advance(1)
        self.assertTrue(_try(guard, clock, OWNER, ATTACKER))
        self.assertFalse(_try(guard, clock, OWNER, ATTACKER))

    def test_a_success_gives_its_attempt_back(self) -> None:
        """A right password from a new address is no failure for the account or the address;
        it clears the pair and makes the address known."""
        clock = Clock()
        store = MemoryFailures()
        guard = AuthLimits().guard(store, clock)
        _try(guard, clock, OWNER, ATTACKER)
        _login(guard, OWNER, HOME)
        self.assertEqual(store.counts[("login-account", OWNER)].count, 1)
        self.assertEqual(store.counts[("login-address", HOME)].count, 0)
        self.assertNotIn(("login-pair", f"{OWNER}\0{HOME}"), store.counts)
        self.assertTrue(now(KnownAddresses(store, clock).knows(OWNER, HOME)))

    def test_given_back_restores_the_last_time(self) -> None:
        """Giving back the newest attempt leaves the key's last failure at the one before."""
        clock = Clock()
        store = MemoryFailures()
        backoff = Backoff(store, clock, "login-pair", 1, 1.0, 10.0, 60.0)
        now(backoff.take("k"))
        clock.advance(5)
        wait, taken = now(backoff.take("k"))
        self.assertIsNone(wait)
        clock.advance(0.5)
        wait, refused = now(backoff.take("k"))
        self.assertEqual(wait, 2)
        now(backoff.give_back(refused))
        self.assertEqual(store.counts[("login-pair", "k")], Count(2, 5.0, (0.0, 5.0)))
        now(backoff.give_back(taken))
        now(backoff.give_back(taken))  # (twice: the time is no longer kept, nothing happens)
        self.assertEqual(store.counts[("login-pair", "k")], Count(1, 0.0, (0.0,)))


class WaitInWordsTests(SynchronousTestCase):
    def test_waits_are_said_in_words(self) -> None:
        """Seconds under a minute, minutes (rounded up) under two hours, then hours."""
        cases = {
            0: "1 second",
            1: "1 second",
            40: "40 seconds",
            59: "59 seconds",
            60: "1 minute",
            61: "2 minutes",
            900: "15 minutes",
            7199: "120 minutes",
            7200: "2 hours",
            86400: "24 hours",
        }
        for seconds, words in cases.items():
            self.assertEqual(wait_in_words(seconds), words, seconds)

    def test_login_guard_answer_says_minutes(self) -> None:
        """The 429 a guessed account meets says its wait in minutes, Retry-After in seconds."""
        from cli_server.domain.errors import TooManyRequests
        from cli_server.web.auth_api import _limit

        clock = Clock()
        limiter = FailureLimiter(MemoryFailures(), clock, "registration", 1, 900.0)
        self.assertIsNone(now(limiter.take("203.0.113.9")))
        error = failure_of(Deferred.fromCoroutine(_limit(limiter, "203.0.113.9", "too many"))).value
        assert isinstance(error, TooManyRequests)
        self.assertEqual(error.message, "too many; try again in 15 minutes")
        self.assertEqual(error.headers(), {"Retry-After": "900"})
