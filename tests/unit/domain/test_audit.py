"""The audit log's pieces without a database: the vocabulary, the refusal of secrets, the
statements ``AuditLog`` sends (to a recording stand-in for the pool), reading the route's
filters, the CLI's options and table, and the retention option."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from cli_server.audit_cli import AuditOptions, read, table
from cli_server.db.pool import Database
from cli_server.domain.audit import (
    ACTIONS,
    Action,
    Actor,
    AuditLog,
    Entry,
    Note,
    Query,
    SecretInDetails,
    Target,
    checked_details,
)
from cli_server.domain.errors import BadRequest
from cli_server.tap.server import Options
from cli_server.web.auditing import parse_query

WID = "9d1c4f53-5d57-4a8e-8a53-1a3e2f0c9b11"
UID = "0b7c5a4e-8f61-4f3a-9d2e-53c1e0a4b6d2"


class RecordingDatabase:
    """Answers ``query`` with the rows it was given and keeps every statement."""

    def __init__(self, rows: list[dict[str, Any]] | None = None, fail: bool = False) -> None:
        self.rows = rows or []
        self.fail = fail
        self.sent: list[tuple[str, Any]] = []

    async def query(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        self.sent.append((sql, args))
        return self.rows

    async def execute(self, sql: str, args: Any = ()) -> None:
        self.sent.append((sql, args))
        if self.fail:
            raise RuntimeError("the database broke")


def row(n: int, **overrides: Any) -> dict[str, Any]:
    return {
        "id": n,
        "at": datetime(2026, 12, 1, 12, 0, n % 60, tzinfo=UTC),
        "actor_id": UID,
        "actor_name": "alice",
        "action": "sandbox.created",
        "workspace_id": WID,
        "target_type": "sandbox",
        "target_id": f"s{n}",
        "target_name": f"box {n}",
        "address": "192.0.2.1",
        "details": {},
        **overrides,
    }


def done(coroutine: Any) -> Any:
    """The result of a coroutine that never waits (its stand-ins answer at once)."""
    d: Deferred[Any] = Deferred.fromCoroutine(coroutine)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "it waited"
    if isinstance(results[0], BaseException) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class VocabularyTests(SynchronousTestCase):
    def test_names_have_the_table_shape(self) -> None:
        """Every action is ``area.verb`` in lower case, as the table's CHECK wants; no two
        share a name."""
        import re

        self.assertEqual(len(set(ACTIONS)), len(ACTIONS))
        for name in ACTIONS:
            self.assertRegex(name, re.compile(r"^[a-z_]+[.][a-z_]+$"))


class SecretTests(SynchronousTestCase):
    def test_secret_keys_are_refused_at_any_depth(self) -> None:
        """Keys naming a password, token, ticket, cookie, code, key or secret are refused,
        nested or not; facts pass."""
        for details in (
            {"password": "x"},
            {"new_password": "x"},
            {"tunnel_token": "x"},
            {"ticket": "x"},
            {"Cookie": "x"},
            {"code": "x"},
            {"api_key": "x"},
            {"outer": {"client_secret": "x"}},
            {"list": [{"token": "x"}]},
        ):
            self.assertRaises(SecretInDetails, checked_details, details)
        self.assertEqual(
            checked_details({"role": "guest", "port": 5173}), '{"role":"guest","port":5173}'
        )
        self.assertEqual(checked_details(None), "{}")

    def test_record_refuses_before_writing(self) -> None:
        """A secret in ``details`` is a programming error: raised, nothing written."""
        db = RecordingDatabase()
        audit = AuditLog(cast(Database, db))
        with self.assertRaises(SecretInDetails):
            done(audit.record(Action.SIGN_IN, Actor(UID, "a"), details={"password": "p"}))
        self.assertEqual(db.sent, [])


class RecordTests(SynchronousTestCase):
    def test_statement_and_arguments(self) -> None:
        """One INSERT; a sandbox target's name and workspace are read in it when not given,
        a claimed name looks the account up."""
        db = RecordingDatabase()
        audit = AuditLog(cast(Database, db))
        done(
            audit.record(
                Action.SIGN_IN_FAILED,
                Actor(None, "Mallory", "198.51.100.2", claimed=True),
                target=Target("sandbox", "s1"),
                details={"reason": "invalid_credentials"},
            )
        )
        [(sql, args)] = db.sent
        self.assertIn("INSERT INTO audit_log", sql)
        self.assertIn("SELECT name FROM sandboxes", sql)
        self.assertIn("SELECT workspace_id FROM sandboxes", sql)
        self.assertEqual(args["action"], "auth.sign_in_failed")
        self.assertEqual(args["actor_name"], "Mallory")
        self.assertTrue(args["claimed"])
        self.assertEqual(args["address"], "198.51.100.2")
        self.assertEqual(args["details"], '{"reason":"invalid_credentials"}')

    def test_a_failed_write_after_the_change_is_logged(self) -> None:
        """After a commit, a failing write is logged and does not fail the caller."""
        db = RecordingDatabase(fail=True)
        audit = AuditLog(cast(Database, db))
        done(audit.record(Action.SIGN_OUT, Actor(UID, "alice")))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_long_names_are_cut(self) -> None:
        db = RecordingDatabase()
        done(AuditLog(cast(Database, db)).record(Action.SIGN_IN_FAILED, Actor(None, "x" * 999)))
        self.assertEqual(len(db.sent[0][1]["actor_name"]), 254)


class EntriesTests(SynchronousTestCase):
    def test_page_and_cursor(self) -> None:
        """``limit + 1`` rows asked: one more than the page means an older page exists,
        whose cursor is the last entry shown."""
        db = RecordingDatabase([row(n) for n in (9, 8, 7)])
        page = done(AuditLog(cast(Database, db)).entries(Query(workspace_id=WID, limit=2)))
        self.assertEqual([e.id for e in page.entries], [9, 8])
        self.assertEqual(page.next, 8)
        sql, args = db.sent[0]
        self.assertIn("ORDER BY id DESC LIMIT 3", sql)
        self.assertEqual(args, {"workspace": WID})

    def test_last_page(self) -> None:
        db = RecordingDatabase([row(2)])
        page = done(AuditLog(cast(Database, db)).entries(Query(limit=2)))
        self.assertIsNone(page.next)
        self.assertEqual(page.to_json()["entries"][0]["at"], "2026-12-01T12:00:02Z")

    def test_filters(self) -> None:
        """An actor that is a uuid matches the id, anything else the name (any case)."""
        db = RecordingDatabase()
        audit = AuditLog(cast(Database, db))
        since = datetime(2026, 1, 1, tzinfo=UTC)
        done(audit.entries(Query(actor=UID, action="auth.sign_in", since=since, before=5)))
        done(audit.entries(Query(actor="Alice", until=since, limit=10_000)))
        first, second = db.sent
        self.assertIn("actor_id = %(actor)s::uuid", first[0])
        self.assertIn("action = %(action)s", first[0])
        self.assertIn("at >= %(since)s", first[0])
        self.assertIn("id < %(before)s", first[0])
        self.assertIn("lower(actor_name) = lower(%(actor)s)", second[0])
        self.assertIn("at < %(until)s", second[0])
        self.assertIn("LIMIT 201", second[0])  # (at most 200 a page)

    def test_purge(self) -> None:
        """0 days keeps everything without asking the database."""
        db = RecordingDatabase([{"gone": 4}])
        audit = AuditLog(cast(Database, db))
        self.assertEqual(done(audit.purge(0)), 0)
        self.assertEqual(db.sent, [])
        self.assertEqual(done(audit.purge(30)), 4)
        self.assertEqual(db.sent, [("SELECT audit_purge(%s) AS gone", (30,))])


def request(query: dict[bytes, list[bytes]]) -> DummyRequest:
    made = DummyRequest([b""])
    made.args = query
    return made


class RouteQueryTests(SynchronousTestCase):
    def test_reads_the_filters(self) -> None:
        got = parse_query(
            request(
                {
                    b"action": [b"member.removed"],
                    b"actor": [b"bob"],
                    b"since": [b"2026-01-31T12:00:00Z"],
                    b"until": [b"2026-02-01T00:00:00 01:00"],  # (a "+" sent unescaped)
                    b"before": [b"42"],
                    b"limit": [b"200"],
                }
            ),
            WID,
        )
        self.assertEqual(got.workspace_id, WID)
        self.assertEqual(
            (got.action, got.actor, got.before, got.limit), ("member.removed", "bob", 42, 200)
        )
        self.assertEqual(got.since, datetime(2026, 1, 31, 12, tzinfo=UTC))
        # (read as +01:00, and kept in UTC: PostgreSQL takes no offset beyond 15:59)
        self.assertEqual(got.until, datetime(2026, 1, 31, 23, tzinfo=UTC))
        self.assertEqual(parse_query(request({}), None).limit, 50)

    def test_refuses_nonsense_naming_the_field(self) -> None:
        for name, value in (
            (b"action", b"sandbox.exploded"),
            (b"limit", b"0"),
            (b"limit", b"201"),
            (b"before", b"-1"),
            (b"since", b"last tuesday"),
            (b"actor", b""),
            (b"until", b"  "),
        ):
            with self.assertRaises(BadRequest) as caught:
                parse_query(request({name: [value]}), WID)
            self.assertEqual(caught.exception.field, name.decode())
        with self.assertRaises(BadRequest):
            parse_query(request({b"actor": [b"a", b"b"]}), WID)


class CliTests(SynchronousTestCase):
    def parse(self, argv: list[str], environ: dict[str, str] | None = None) -> AuditOptions:
        options = AuditOptions(environ or {})
        options.parseOptions(argv)
        return options

    def test_options(self) -> None:
        options = self.parse(
            ["--action", "auth.sign_in", "--since", "2026-01-01", "--limit", "5", "--json"],
            {"DATABASE_URL": "postgresql://db/cli"},
        )
        query = options.query()
        self.assertEqual(options["db-url"], "postgresql://db/cli")
        self.assertEqual((query.action, query.limit), ("auth.sign_in", 5))
        self.assertEqual(query.since, datetime(2026, 1, 1, tzinfo=UTC))
        self.assertTrue(options["json"])
        for bad in (["--action", "nope"], ["--limit", "500"], ["--limit", "x"], ["--until", "?"]):
            self.assertRaises(usage.UsageError, self.parse, bad)

    def test_table(self) -> None:
        """One line per entry under a header; the server itself is "server"."""
        entries = [
            Entry.from_row(row(1)),
            Entry.from_row(row(2, actor_id=None, actor_name=None, target_type=None, address=None)),
        ]
        lines = table(entries).splitlines()
        self.assertTrue(lines[0].startswith("WHEN (UTC)"))
        self.assertIn("alice", lines[1])
        self.assertIn("sandbox:box 1", lines[1])
        self.assertIn("192.0.2.1", lines[1])
        self.assertIn("server", lines[2])

    def test_read_prints_json_lines(self) -> None:
        """``read`` against a database URL: a pool on it, one JSON object a line."""
        options = self.parse(["--db-url", "postgresql://db/cli", "--json"])
        out = io.StringIO()
        rows = [row(3), row(2)]

        class Pool(RecordingDatabase):
            def close(self) -> None:
                self.closed = True

        made: list[Pool] = []

        def pool(reactor: Any, dsn: str) -> Pool:
            made.append(Pool(rows))
            return made[-1]

        self.patch(__import__("cli_server.audit_cli").audit_cli, "Database", pool)
        done(read(None, None, options, out))
        printed = out.getvalue().splitlines()
        self.assertEqual(len(printed), 2)
        self.assertIn('"target_name": "box 3"', printed[0])
        self.assertTrue(made[0].closed)


class RetentionOptionTests(SynchronousTestCase):
    def parse(self, argv: list[str], environ: dict[str, str]) -> Options:
        options = Options(environ=environ, preflight=False)
        options.parseOptions(argv)
        return options

    def test_default_env_and_flag(self) -> None:
        self.assertEqual(self.parse([], {}).config().audit_retention_days, 365)
        env = {"AUDIT_RETENTION_DAYS": "0"}
        self.assertEqual(self.parse([], env).config().audit_retention_days, 0)
        flag = ["--audit-retention-days", "30"]
        self.assertEqual(self.parse(flag, env).config().audit_retention_days, 30)

    def test_bad_values_name_the_option(self) -> None:
        for value in ("-1", "a year", "40000"):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(["--audit-retention-days", value], {})
            self.assertIn("--audit-retention-days", str(caught.exception))


class NoteTests(SynchronousTestCase):
    def test_written_in_the_transaction_with_what_the_domain_knows(self) -> None:
        """A note goes to the transaction it is given; the domain's values win over the
        caller's (the action it took, the id it made)."""

        class Tx:
            def __init__(self) -> None:
                self.sent: list[tuple[str, Any]] = []

            async def execute(self, sql: str, args: Any = ()) -> int:
                self.sent.append((sql, args))
                return 1

        db = RecordingDatabase()
        note = Note(
            AuditLog(cast(Database, db)),
            Action.MEMBER_INVITED,
            Actor(UID, "alice", "192.0.2.1"),
            workspace_id=WID,
            details={"role": "guest"},
        )
        tx = Tx()
        done(note.write(cast(Any, tx), action=Action.MEMBER_ADDED, target=Target("user", "u2")))
        self.assertEqual(db.sent, [])  # (nothing outside the transaction)
        [(sql, args)] = tx.sent
        self.assertIn("INSERT INTO audit_log", sql)
        self.assertEqual(args["action"], "member.added")
        self.assertEqual((args["workspace_id"], args["target_id"]), (WID, "u2"))
        self.assertEqual(args["details"], '{"role":"guest"}')
