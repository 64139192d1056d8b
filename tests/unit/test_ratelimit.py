"""Failure counting with a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cli_server.auth.ratelimit import FailureLimiter


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
