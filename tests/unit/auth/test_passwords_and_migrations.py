"""argon2id hashing through a runner, and the shipped migrations."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from cli_server.auth.passwords import Passwords, cheap_hasher
from cli_server.auth.tokens import new_token, token_hash
from cli_server.db.migrations import load_migrations
from cli_server.db.pool import _is_unavailable
from cli_server.plumbing.threads import synchronous_runner


class PasswordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runs: list[object] = []

        def runner(f, *args):  # type: ignore[no-untyped-def]
            self.runs.append(f)
            return synchronous_runner(f, *args)

        self.passwords = Passwords(runner, cheap_hasher())

    def test_hash_and_verify(self) -> None:
        """Hashes are argon2id, verify the right password only, and go through the runner."""
        stored = self.successResultOf(Deferred.fromCoroutine(self.passwords.hash("s3cret pw")))
        self.assertTrue(stored.startswith("$argon2id$"))
        verify = self.passwords.verify
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(verify(stored, "s3cret pw"))))
        self.assertFalse(self.successResultOf(Deferred.fromCoroutine(verify(stored, "wrong"))))
        self.assertFalse(self.successResultOf(Deferred.fromCoroutine(verify("junk", "x"))))
        self.assertTrue(all(f is not None for f in self.runs) and len(self.runs) == 4)

    def test_unknown_user_costs_a_hash(self) -> None:
        """Without a stored hash, verify still hashes (no timing oracle) and says no."""
        result = self.successResultOf(Deferred.fromCoroutine(self.passwords.verify(None, "x")))
        self.assertFalse(result)
        self.assertGreaterEqual(len(self.runs), 2)


class TokenTests(SynchronousTestCase):
    def test_tokens(self) -> None:
        """Tokens are 256-bit, URL-safe, unique; only their SHA-256 is stored."""
        tokens = {new_token() for _ in range(100)}
        self.assertEqual(len(tokens), 100)
        token = tokens.pop()
        self.assertEqual(len(token), 43)
        self.assertEqual(len(token_hash(token)), 32)
        self.assertNotEqual(token_hash(token), token.encode())


class MigrationTests(SynchronousTestCase):
    def test_numbered_without_gaps(self) -> None:
        """Migrations ship with the package, numbered 1..n."""
        migrations = load_migrations()
        self.assertEqual([m.version for m in migrations], list(range(1, len(migrations) + 1)))
        self.assertIn("CREATE TABLE users", migrations[0].sql)


class UnavailableTests(SynchronousTestCase):
    def test_classification(self) -> None:
        """Connection-level errors mean 503; query errors do not."""
        import psycopg2
        from twisted.internet.defer import TimeoutError

        self.assertTrue(_is_unavailable(psycopg2.InterfaceError("connection already closed")))
        self.assertTrue(_is_unavailable(psycopg2.OperationalError("server closed")))
        self.assertTrue(_is_unavailable(TimeoutError()))
        self.assertFalse(_is_unavailable(psycopg2.ProgrammingError("syntax error")))
        self.assertFalse(_is_unavailable(ValueError()))
