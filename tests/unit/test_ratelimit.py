"""Failure counting and progressive login delays with a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cli_server.auth.ratelimit import (
    Backoff,
    FailureLimiter,
    KnownAddresses,
    LoginGuard,
    wait_in_words,
)
from cli_server.web.auth_api import AuthLimits


class FailureLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = FailureLimiter(self.clock, 3, 60.0)

    def test_blocks_after_limit_until_window_passes(self) -> None:
        """The limit-th failure blocks; Retry-After counts down to the oldest failure's expiry."""
        for _ in range(2):
            self.limiter.failed("alice")
            self.assertIsNone(self.limiter.retry_after("alice"))
        self.clock.advance(10)
        self.limiter.failed("alice")
        self.assertEqual(self.limiter.retry_after("alice"), 50)
        self.clock.advance(49.5)
        self.assertEqual(self.limiter.retry_after("alice"), 1)
        self.clock.advance(0.5)
        self.assertIsNone(self.limiter.retry_after("alice"))

    def test_keys_are_independent_and_forget_clears(self) -> None:
        """One key's failures do not block another; forget() resets a key."""
        for _ in range(3):
            self.limiter.failed("alice")
        self.assertIsNone(self.limiter.retry_after("bob"))
        self.limiter.forget("alice")
        self.assertIsNone(self.limiter.retry_after("alice"))

    def test_prune_bounds_memory(self) -> None:
        """Keys whose failures are all older than the window are dropped."""
        for n in range(100):
            self.limiter.failed(f"user{n}")
        self.clock.advance(61)
        self.limiter.failed("fresh")
        self.limiter.prune()
        self.assertEqual(list(self.limiter._failures), ["fresh"])


OWNER, ATTACKER, HOME = "owner", "6.6.6.6", "10.0.0.7"


def _guard(clock: Clock) -> LoginGuard:
    return AuthLimits(
        login_failures_per_pair=5,
        login_failures_per_user=20,
        login_failures_per_address=100,
        login_first_wait=1.0,
        login_longest_wait=900.0,
        login_window=3600.0,
    ).guard(clock)


def _try(guard: LoginGuard, clock: Clock, account: str, address: str) -> bool:
    """One wrong password if allowed now; False if it had to wait."""
    if guard.retry_after(account, address) is not None:
        return False
    guard.failed(account, address)
    return True


class BackoffTests(SynchronousTestCase):
    def test_waits_double_after_the_free_tries_and_are_capped(self) -> None:
        """Free tries pass; then 1, 2, 4 ... s, never more than the longest wait."""
        clock = Clock()
        backoff = Backoff(clock, 3, 1.0, 10.0, 3600.0)
        for _ in range(3):
            self.assertIsNone(backoff.retry_after("k"))
            backoff.failed("k")
        waits = []
        for _ in range(6):
            waits.append(backoff.retry_after("k"))
            clock.advance(waits[-1] or 0)
            self.assertIsNone(backoff.retry_after("k"))
            backoff.failed("k")
        self.assertEqual(waits, [1, 2, 4, 8, 10, 10])
        backoff.forget("k")
        self.assertIsNone(backoff.retry_after("k"))

    def test_memory_is_bounded(self) -> None:
        """Keys idle past the memory are pruned; past max_keys the oldest go first."""
        clock = Clock()
        backoff = Backoff(clock, 1, 1.0, 10.0, 60.0, max_keys=10)
        for n in range(25):
            backoff.failed(f"k{n}")
        self.assertEqual(list(backoff._failures), [f"k{n}" for n in range(15, 25)])
        clock.advance(61)
        backoff.failed("fresh")
        backoff.prune()
        self.assertEqual(list(backoff._failures), ["fresh"])


class LoginGuardTests(SynchronousTestCase):
    def test_a_guesser_is_slowed_and_the_owner_elsewhere_is_not(self) -> None:
        """An hour of guessing one account from one address gets a few dozen tries, not
        thousands; the owner, from the address they used before, logs in at any moment."""
        clock = Clock()
        guard = _guard(clock)
        guard.succeeded(OWNER, HOME)
        tries = 0
        for _ in range(3600):  # the attacker tries every second for an hour
            tries += _try(guard, clock, OWNER, ATTACKER)
            self.assertIsNone(guard.retry_after(OWNER, HOME))  # never locked out at home
            clock.advance(1)
        self.assertLess(tries, 20)
        self.assertGreaterEqual(tries, 5)

    def test_a_spray_from_many_addresses_hits_the_account_limit_not_its_owner(self) -> None:
        """Each address guesses a little; the account's soft limit then slows new addresses,
        while the owner's known address passes."""
        clock = Clock()
        guard = _guard(clock)
        guard.succeeded(OWNER, HOME)
        for n in range(20):
            self.assertTrue(_try(guard, clock, OWNER, f"203.0.113.{n}"))
        waiting = guard.retry_after(OWNER, "203.0.113.200")
        self.assertIsNotNone(waiting)
        assert waiting is not None
        self.assertEqual(waiting[1], "too many failed logins for this account")
        self.assertIsNone(guard.retry_after(OWNER, HOME))

    def test_many_accounts_from_one_address_do_not_lock_out_its_other_users(self) -> None:
        """Failures for 20 (even 100) names from one shared address: people who logged in
        there before still can; new names there are slowed only past the address's limit."""
        clock = Clock()
        guard = _guard(clock)
        guard.succeeded("alice", HOME)
        for n in range(20):
            self.assertTrue(_try(guard, clock, f"user{n}", HOME))
        self.assertIsNone(guard.retry_after("alice", HOME))
        self.assertIsNone(guard.retry_after("bob", HOME))  # 20 is far below a NAT's limit
        for n in range(20, 100):
            _try(guard, clock, f"user{n}", HOME)
        self.assertIsNone(guard.retry_after("alice", HOME))
        waiting = guard.retry_after("bob", HOME)
        assert waiting is not None
        self.assertEqual(waiting[1], "too many failed logins from this address")

    def test_the_pair_limit_applies_at_a_known_address_too(self) -> None:
        """Knowing an address never excuses guessing from it; success there clears the pair."""
        clock = Clock()
        guard = _guard(clock)
        guard.succeeded(OWNER, HOME)
        for _ in range(5):
            self.assertTrue(_try(guard, clock, OWNER, HOME))
        self.assertEqual(
            guard.retry_after(OWNER, HOME),
            (1, "too many failed logins for this account from this address"),
        )
        clock.advance(1)
        guard.succeeded(OWNER, HOME)
        self.assertIsNone(guard.retry_after(OWNER, HOME))

    def test_known_addresses_expire_and_are_bounded(self) -> None:
        """An address is known for its period only, and only the most recent few are kept."""
        clock = Clock()
        known = KnownAddresses(clock, 100.0, per_account=2)
        for address in ("a", "b", "c"):
            known.add(OWNER, address)
        self.assertEqual([known.knows(OWNER, a) for a in "abc"], [False, True, True])
        clock.advance(101)
        self.assertFalse(known.knows(OWNER, "c"))
        known.prune()
        self.assertEqual(known._seen, {})


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
        from cli_server.errors import TooManyRequests
        from cli_server.web.auth_api import _limit

        clock = Clock()
        limiter = FailureLimiter(clock, 1, 900.0)
        limiter.failed("203.0.113.9")
        error = self.assertRaises(TooManyRequests, _limit, limiter, "203.0.113.9", "too many")
        self.assertEqual(error.message, "too many; try again in 15 minutes")
        self.assertEqual(error.headers(), {"Retry-After": "900"})
