"""The hub's bookkeeping that needs no database: revocation wins over a late attach; an
outdated agent is named; a tunnel whose row another replica took closes as replaced."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from cli_server._version import __version__
from cli_server.db.pool import DatabaseUnavailable
from cli_server.replicas.holders import Details, Swept
from cli_server.tunnel.frames import SUPPORTED_VERSIONS, VERSION, decode, encode
from cli_server.tunnel.hub import TunnelHub


class RevokedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = TunnelHub(None, self.clock)  # type: ignore[arg-type]  # (no database use)
        self.sent: list[bytes] = []
        self.closes: list[tuple[int, str]] = []

    def session(self) -> Any:
        return self.hub.new_session(
            "sb", self.sent.append, lambda code, why: self.closes.append((code, why))
        )

    def test_a_connection_checked_before_the_delete_is_refused_at_attach(self) -> None:
        late = self.session()  # its token was verified just before the sandbox was deleted
        self.hub.revoke("sb", "this local sandbox was deleted from its workspace")
        self.hub.attach("sb", late)
        self.assertIsNone(self.hub.session("sb"))
        self.assertEqual(self.closes, [(4003, "revoked")])
        goaway = decode(self.sent[-1])
        self.assertEqual((goaway.type, goaway["code"]), ("goaway", "revoked"))
        self.assertIn("deleted", goaway["message"])

    def test_the_memory_of_a_revocation_fades(self) -> None:
        self.hub.revoke("sb")
        self.assertTrue(self.hub.remembers_revocation("sb"))
        self.clock.advance(61)
        self.hub.revoke("other")  # (pruning happens on the next revocation)
        self.assertFalse(self.hub.remembers_revocation("sb"))


class _Database:
    """Stands in for the pool: the status writes the hub makes on attach."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Any]] = []

    async def execute(self, sql: str, args: Any = None) -> None:
        self.writes.append((sql, args))


class AgentVersionTests(SynchronousTestCase):
    """The server warns, in its log and on the local sandbox, about an agent older than it."""

    def setUp(self) -> None:
        self.db = _Database()
        self.hub = TunnelHub(self.db, Clock())  # type: ignore[arg-type]

    def connect(self, agent: str, versions: list[int]) -> list[dict[str, Any]]:
        session = self.hub.new_session("sb", lambda data: None, lambda code, why: None)
        session.message_received(encode("hello", versions=versions, agent=agent))
        with capturedLogs() as events:
            self.hub.attach("sb", session)
        self.assertEqual(len(self.db.writes), 1)  # (running)
        return [e for e in events if e["log_level"] == LogLevel.warn]

    def test_a_current_agent_gets_no_warning(self) -> None:
        warned = self.connect(f"cli-agent/{__version__.public()}", list(SUPPORTED_VERSIONS))
        self.assertEqual(warned, [])
        self.assertEqual(
            self.hub.agent("sb"),
            {"version": __version__.public(), "protocol": VERSION, "warning": None},
        )
        self.assertIsNone(self.hub.agent("other"))

    def test_an_older_release_is_named(self) -> None:
        warned = self.connect("cli-agent/1.2.3", [VERSION])
        shown = self.hub.agent("sb")
        assert shown is not None
        self.assertEqual((shown["version"], shown["protocol"]), ("1.2.3", VERSION))
        self.assertIn("cli-server 1.2.3, older than this server's", shown["warning"])
        self.assertEqual(len(warned), 1)
        self.assertIn("1.2.3", formatEvent(warned[0]))

    def test_an_older_protocol_is_named(self) -> None:
        """An agent whose best protocol is older than the server's current one still works
        (protocol 1: no shared ports), and the warning says which protocol it speaks."""
        warned = self.connect(f"cli-agent/{__version__.public()}", [1])
        shown = self.hub.agent("sb")
        assert shown is not None
        self.assertEqual(shown["protocol"], 1)
        self.assertIn(f"tunnel protocol 1, older than this server's {VERSION}", shown["warning"])
        self.assertIn("tunnel protocol 1", formatEvent(warned[0]))

    def test_an_unknown_agent_name_is_not_guessed(self) -> None:
        self.assertEqual(self.connect("someone-else/0.1", [VERSION]), [])
        shown = self.hub.agent("sb")
        assert shown is not None
        self.assertEqual((shown["version"], shown["warning"]), (None, None))


class _Holders:
    """Stands in for ``TunnelHolders``: which replica the table says holds the sandbox."""

    def __init__(self) -> None:
        self.holder: str | None = None
        self.held: list[Details] = []
        self.released = 0
        self.swept: list[dict[str, Details]] = []
        self.sweeping: Deferred[Swept] | None = None
        self.down = False  # the database is away: writes fail

    async def hold(self, sandbox_id: str, details: Details = Details()) -> None:
        if self.down:
            raise DatabaseUnavailable("down")
        self.holder = "here"
        self.held.append(details)

    async def release(self, sandbox_id: str) -> bool:
        self.released += 1
        if self.holder == "here":
            self.holder = None
            return True
        return False  # (another replica's row: not ours to delete)

    async def held_elsewhere(self, sandbox_id: str) -> bool:
        if self.holder == "away":
            raise DatabaseUnavailable("down")
        return self.holder not in (None, "here")

    async def sweep(self, held_here: Mapping[str, Details]) -> Swept:
        self.swept.append(dict(held_here))
        if self.sweeping is not None:
            return await self.sweeping
        lost = [s for s in held_here if self.holder not in (None, "here")]
        return Swept([], lost)


class ReplacedElsewhereTests(SynchronousTestCase):
    """The newest tunnel wins across replicas: ours closes as replaced once another replica
    took its row, and never takes the row back."""

    def setUp(self) -> None:
        self.holders = _Holders()
        self.hub = TunnelHub(None, Clock())  # type: ignore[arg-type]  # (no database use)
        self.hub.holders = self.holders  # type: ignore[assignment]
        self.closes: list[tuple[int, str]] = []
        self.sent: list[bytes] = []

    def connect(self) -> Any:
        session = self.hub.new_session(
            "sb", self.sent.append, lambda code, why: self.closes.append((code, why))
        )
        hello = encode("hello", versions=[VERSION], agent="cli-agent/26.1.0", ports=[5173, 3000])
        session.message_received(hello)
        self.hub.attach("sb", session)
        return session

    def done(self, work: Any) -> None:
        self.successResultOf(Deferred.fromCoroutine(work))

    def test_the_holder_row_carries_the_agent_s_details(self) -> None:
        self.connect()
        self.assertEqual(self.holders.held, [Details((3000, 5173), "cli-agent/26.1.0", VERSION)])

    def test_a_tunnel_whose_row_another_replica_took_closes_as_replaced(self) -> None:
        self.connect()
        self.done(self.hub.check_holder("sb"))  # (still ours: nothing happens)
        self.assertIsNotNone(self.hub.session("sb"))
        self.holders.holder = "other"  # the same credentials connected there since
        self.done(self.hub.check_holder("sb"))
        self.assertIsNone(self.hub.session("sb"))
        self.assertEqual(self.closes, [(4009, "replaced")])
        goaway = decode(self.sent[-1])
        self.assertEqual((goaway.type, goaway["code"]), ("goaway", "replaced"))
        self.assertEqual((self.holders.released, self.holders.holder), (1, "other"))

    def test_without_the_database_the_tunnel_stays(self) -> None:
        self.connect()
        self.holders.holder = "away"
        self.done(self.hub.check_holder("sb"))  # (the next sweep will know)
        self.assertIsNotNone(self.hub.session("sb"))
        self.assertEqual(self.closes, [])

    def test_a_sweep_reports_it_too_and_never_takes_the_row(self) -> None:
        self.connect()
        self.done(self.hub.sweep_holders())
        self.assertIsNotNone(self.hub.session("sb"))
        self.holders.holder = "other"
        self.done(self.hub.sweep_holders())
        self.assertIsNone(self.hub.session("sb"))
        self.assertEqual(self.closes, [(4009, "replaced")])
        self.assertEqual((len(self.holders.held), self.holders.holder), (1, "other"))

    def test_a_tunnel_whose_row_was_never_written_takes_it_at_the_sweep(self) -> None:
        self.holders.down = True  # (the database is away at its hello)
        self.connect()
        self.holders.down = False
        self.assertEqual(self.holders.held, [])
        self.holders.holder = "other"
        self.done(self.hub.sweep_holders())
        self.assertEqual(self.holders.swept[-1], {})  # (not swept as ours, so not lost)
        self.assertEqual((len(self.holders.held), self.holders.holder), (1, "here"))
        self.assertIsNotNone(self.hub.session("sb"))

    def test_a_newer_tunnel_here_outlives_a_sweep_that_began_before_it(self) -> None:
        first = self.connect()
        self.holders.sweeping = Deferred()
        sweeping = Deferred.fromCoroutine(self.hub.sweep_holders())
        self.holders.holder = "other"
        newer = self.connect()  # (replaces ``first`` here, and takes the row back)
        self.assertEqual(self.closes, [(4009, "replaced")])
        self.holders.sweeping.callback(Swept([], ["sb"]))  # (what it saw of ``first``)
        self.successResultOf(sweeping)
        self.assertIs(self.hub.session("sb"), newer)
        self.assertIsNot(newer, first)
        self.assertEqual(self.closes, [(4009, "replaced")])
