"""makeService wires the tree without doing I/O; listeners bind on start."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from cli_server.tap.server import Options, makeService
from tests.unit.compose.test_server import EXTERNAL


class MakeServiceTests(SynchronousTestCase):
    def test_tree(self) -> None:
        """Children start in dependency order and each --listen gets a listener."""
        options = Options(environ={}, preflight=False)
        options.parseOptions(
            [
                "--db-url",
                "postgres://localhost/x",
                "--listen",
                "tcp:9001",
                "--listen",
                "tcp:9002:interface=127.0.0.1",
            ]
        )
        reactor = MemoryReactorClock()
        root = makeService(options, reactor=reactor)
        self.assertEqual(
            [s.name for s in root],
            EXTERNAL,  # (the composition root's tree: the drain last, stopped first)
        )
        self.assertEqual(reactor.tcpServers, [])  # nothing bound before start
        root.getServiceNamed("http-0").startService()
        root.getServiceNamed("http-1").startService()
        self.assertEqual(
            [(p, i) for p, _, _, i in reactor.tcpServers], [(9001, ""), (9002, "127.0.0.1")]
        )
