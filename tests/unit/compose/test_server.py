"""The composition root builds the whole service tree without I/O, in dependency order."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import attrs
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from cli_server.config import ServerConfig
from cli_server.server import Server, build
from cli_server.testing import FakeBackend
from tests.unit.deferreds import result_of

EXTERNAL = [
    "threads",
    "database",
    "replica-registry",
    "leadership",
    "replica-events",
    "sandboxes",
    "housekeeping",
    "reconciler",
    "idle-monitor",
    "metrics",
    "leader-election",
    "replica-heartbeat",
    "tunnel-holders",
    "relay-workers",
    "http-0",
    "http-1",
    "drain",
]


def config(data_dir: Path, **changes: object) -> ServerConfig:
    base = ServerConfig(
        listen=("tcp:9001", "tcp:9002:interface=127.0.0.1"),
        data_dir=data_dir,
        db_url="postgres://localhost/x",
        base_domain="localhost:8080",
        base_scheme="http",
        session_lifetime=3600.0,
    )
    return attrs.evolve(base, **changes)


def failed(message: str) -> None:
    raise AssertionError(f"nothing fails while a tree is built: {message}")


class BuildTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        scratch = Path(tempfile.mkdtemp(prefix="compose-test-"))
        self.addCleanup(shutil.rmtree, scratch, ignore_errors=True)
        self.data = scratch / "data"  # (made by a build only where a backend needs it)

    def built(self, **changes: object) -> Server:
        return build(
            config(self.data, **changes),
            self.reactor,
            backend=FakeBackend(),
            on_fatal=failed,
        )

    def test_tree_with_external_database(self) -> None:
        """With --db-url: the database first, the replica events after it, the listeners near
        the end and the drain last; nothing binds, nothing is written, before start."""
        server = self.built()
        self.assertEqual([s.name for s in server.root], EXTERNAL)
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertFalse(self.data.exists())
        self.assertFalse(server.database.ready)

    def test_tree_with_embedded_database(self) -> None:
        """Embedded PostgreSQL: its supervisor right after it (stopped before it); no
        replica events (it serves one replica)."""
        server = self.built(db_url=None)
        names = [s.name for s in server.root]
        self.assertEqual(
            names[:4], ["threads", "database", "database-supervisor", "replica-registry"]
        )
        self.assertNotIn("replica-events", names)
        self.assertEqual(names[-1], "drain")

    def test_docker_backend_services_before_the_sandboxes(self) -> None:
        """The docker backend's pool and preparation start before the sandboxes' service, and
        its sandboxes carry this server's instance id (kept in the data directory)."""
        server = build(config(self.data, backend="docker"), self.reactor, on_fatal=failed)
        names = [s.name for s in server.root]
        at = names.index("docker-threads")
        self.assertEqual(names[at - 1], "replica-events")
        self.assertEqual(names[at + 1 : at + 3], [None, "sandboxes"])  # (its preparation)
        written = (self.data / "instance-id").read_text()
        self.assertRegex(written, r"^[0-9a-f]{16}\n$")
        assert server.registry is not None
        self.assertEqual(server.registry.me.backend_instance, written.strip())

    def test_listeners_bind_on_start(self) -> None:
        """Each --listen becomes a listener serving the router, bound when it starts."""
        server = self.built()
        server.root.getServiceNamed("http-0").startService()
        server.root.getServiceNamed("http-1").startService()
        self.assertEqual(
            [(p, i) for p, _, _, i in self.reactor.tcpServers], [(9001, ""), (9002, "127.0.0.1")]
        )
        self.assertEqual({f for _, f, _, _ in self.reactor.tcpServers}, {server.router})

    def test_the_drain_stops_first(self) -> None:
        """SIGTERM stops the drain first: /readyz then says draining (the flag it reads is the
        drain's) and twisted.web's answers say close."""
        server = self.built()
        self.assertIs(list(server.root)[-1], server.drain)
        assert server.drain is not None
        client = StubTreq(server.site.resource)
        before = result_of(client.get("http://localhost:8080/readyz"))
        self.assertEqual(before.code, 503)
        self.assertEqual(result_of(before.json())["error"]["code"], "starting")
        server.drain.startService()
        result_of(server.drain.stopService())
        self.assertTrue(server.drain.draining)
        self.assertTrue(server.site.requests.draining)
        after = result_of(client.get("http://localhost:8080/readyz"))
        self.assertEqual(after.code, 503)
        self.assertEqual(result_of(after.json()), {"status": "draining"})

    def test_every_hook_is_heard(self) -> None:
        """Each hook has its hearers, and the injected backend reports exits through one."""
        server = self.built()
        assert server.hooks is not None
        self.assertEqual([h.subscribers for h in server.hooks.all()], [1, 3, 1, 1])
        self.assertIs(server.backend.on_exit, server.hooks.sandbox_exited)

    def test_single_replica_tells_nobody(self) -> None:
        """Embedded PostgreSQL: a tunnel change is heard by the two proxies only."""
        server = self.built(db_url=None)
        assert server.hooks is not None
        self.assertEqual(server.hooks.tunnel_changed.subscribers, 2)

    def test_stop_step_allows_the_drain(self) -> None:
        """A long --drain-timeout lengthens each stop step, so the drain is not cut short."""
        server = self.built(drain_timeout=120.0)
        self.assertEqual(server.root.step_timeout, 130.0)
