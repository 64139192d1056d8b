"""A sandbox's opencode log: whole lines, secrets blanked, capped and rotated; and the card's
fields computed from a row."""

from __future__ import annotations

import shutil
import tempfile
from base64 import b64encode
from datetime import UTC, datetime, timedelta
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from cli_server.sandboxes.backend import (
    LOG_TAIL_BYTES,
    LOG_TAIL_LINES,
    redact,
    secret_forms,
    tail_lines,
)
from cli_server.sandboxes.model import paused_by_json, short_id
from cli_server.sandboxes.output_log import OutputLog, read_tail


class OutputLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="cli-test-log-"))
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        self.path = directory / "opencode.log"

    def test_secrets_split_between_reads_are_blanked(self) -> None:
        log = OutputLog(self.path, ("s3cret-password", "tok-123"))
        log.write(b"starting with s3cret-pa")
        log.write(b"ssword and tok-1")
        log.write(b"23\npartial line")
        self.assertEqual(read_tail(self.path).lines, ("starting with [redacted] and [redacted]",))
        log.flush()
        tail = read_tail(self.path)
        self.assertEqual(tail.lines[-1], "partial line")
        self.assertFalse(tail.truncated)
        self.assertNotIn(b"s3cret", self.path.read_bytes())
        self.assertEqual(self.path.stat().st_mode & 0o777, 0o600)

    def test_notes_are_marked(self) -> None:
        log = OutputLog(self.path)
        log.write(b"half")
        log.note("opencode was killed by signal 9 (SIGKILL)")
        self.assertEqual(
            read_tail(self.path).lines,
            ("half", "--- opencode was killed by signal 9 (SIGKILL) ---"),
        )

    def test_rotates_past_its_limit_and_keeps_two_halves(self) -> None:
        log = OutputLog(self.path, limit=1000)
        for n in range(300):
            log.write(f"line {n:04d}\n".encode())
        older = self.path.with_name(self.path.name + ".1")
        self.assertTrue(older.exists())
        self.assertLessEqual(self.path.stat().st_size, 1000)
        self.assertLessEqual(older.stat().st_size, 1000)
        tail = read_tail(self.path)
        self.assertEqual(tail.lines[-1], "line 0299")
        self.assertTrue(tail.truncated)
        numbers = [int(line.split()[1]) for line in tail.lines]
        self.assertEqual(numbers, list(range(numbers[0], 300)))

    def test_no_log_is_empty(self) -> None:
        tail = read_tail(self.path)
        self.assertEqual((tail.lines, tail.truncated), ((), False))

    def test_a_long_line_is_written_in_pieces(self) -> None:
        log = OutputLog(self.path)
        log.write(b"x" * 20000)
        self.assertTrue(self.path.exists())

    def test_a_secret_across_the_piece_boundary_of_a_long_line_is_blanked(self) -> None:
        """A line with no newline is written in pieces; no piece may end in half a secret."""
        secret = "s3cret-password-that-is-long"
        for split in range(1, len(secret)):
            log = OutputLog(self.path, (secret,))
            log.write(b"x" * (17 * 1024 - split) + secret[:split].encode())
            log.write(secret[split:].encode() + b" and more\n")
            written = self.path.read_bytes()
            self.assertNotIn(secret[: max(split, len(secret) - split)].encode(), written)
            self.assertIn(b"[redacted] and more", written)
            self.path.unlink()

    def test_the_basic_credential_form_is_blanked_too(self) -> None:
        log = OutputLog(self.path, tuple(secret_forms("pw-123")))
        log.write(b"Authorization: Basic " + b64encode(b"opencode:pw-123") + b"\n")
        self.assertEqual(read_tail(self.path).lines, ("Authorization: Basic [redacted]",))


class TailTests(SynchronousTestCase):
    def test_last_lines(self) -> None:
        text = "".join(f"{n}\n" for n in range(500))
        tail = tail_lines(text, cut=False)
        self.assertEqual(len(tail.lines), LOG_TAIL_LINES)
        self.assertEqual(tail.lines[-1], "499")
        self.assertTrue(tail.truncated)
        short = tail_lines("a\nb\n", cut=False)
        self.assertEqual((short.lines, short.truncated), (("a", "b"), False))

    def test_bytes_bound_drops_a_half_line(self) -> None:
        text = "y" * 100 + "\n" + ("z" * 1000 + "\n") * 100
        tail = tail_lines(text, cut=False)
        self.assertTrue(tail.truncated)
        self.assertLessEqual(sum(len(line) + 1 for line in tail.lines), LOG_TAIL_BYTES)
        self.assertTrue(all(line == "z" * 1000 for line in tail.lines))

    def test_redact(self) -> None:
        self.assertEqual(
            redact(["pw=abc tok=xyz", "none"], ["abc", "", "xyz"]),
            ["pw=[redacted] tok=[redacted]", "none"],
        )


class CardFieldTests(SynchronousTestCase):
    def test_short_id(self) -> None:
        self.assertEqual(short_id("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"), "0f1e2d3c")

    def test_paused_by(self) -> None:
        at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        row = {
            "status": "paused",
            "paused_kind": "idle",
            "paused_at": at,
            "last_activity_at": at - timedelta(minutes=30, seconds=20),
            "paused_by_name": None,
        }
        self.assertEqual(paused_by_json(row), {"kind": "idle", "idle_minutes": 30})
        user = {**row, "paused_kind": "user", "paused_by_name": "alice"}
        self.assertEqual(paused_by_json(user), {"kind": "user", "username": "alice"})
        self.assertIsNone(paused_by_json({**row, "paused_kind": None}))
        self.assertIsNone(paused_by_json({**user, "status": "running"}))
