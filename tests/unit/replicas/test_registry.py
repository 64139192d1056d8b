"""Which replicas may share a database, and where a replica says it is reached."""

from __future__ import annotations

import socket
from typing import Any

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cli_server.config import default_advertise_url, parse_advertise_url
from cli_server.replicas.registry import Replica, refusal
from cli_server.tap.server import Options


def _me(backend: str = "k8s", embedded: bool = False, host: str = "h1") -> Replica:
    return Replica("me", host, "/var/lib/cli-server", "http://h1:8080", backend, embedded, "rel")


def _row(
    backend: str = "k8s", embedded: bool = False, host: str = "h2", instance: str = "rel"
) -> dict[str, Any]:
    return {
        "id": "other",
        "hostname": host,
        "backend": backend,
        "embedded_db": embedded,
        "backend_instance": instance,
    }


class RefusalTests(SynchronousTestCase):
    def test_alone_anything_goes(self) -> None:
        for backend in ("process", "docker", "k8s"):
            self.assertIsNone(refusal(_me(backend, embedded=True), []))

    def test_shared_backends_on_an_external_database(self) -> None:
        self.assertIsNone(refusal(_me("k8s"), [_row("k8s"), _row("k8s", host="h3")]))
        self.assertIsNone(refusal(_me("docker"), [_row("docker", host="h1")]))

    def test_embedded_database_is_single_replica(self) -> None:
        """Either side embedded: refused, and the line says what to do."""
        for why in (refusal(_me(embedded=True), [_row()]), refusal(_me(), [_row(embedded=True)])):
            assert why is not None
            self.assertIn("replica other on h2", why)
            self.assertIn("--db-url", why)
            self.assertNotIn("\n", why)

    def test_process_backend_is_per_host(self) -> None:
        """A process replica next to a live replica of another host is refused, both ways."""
        for why in (
            refusal(_me("process"), [_row("k8s")]),
            refusal(_me("k8s"), [_row("process")]),
            refusal(_me("process"), [_row("process")]),
        ):
            assert why is not None
            self.assertIn("process sandboxes run on one host only", why)

    def test_process_backend_is_one_process_on_its_host_too(self) -> None:
        why = refusal(_me("process"), [_row("process", host="h1")])
        assert why is not None
        self.assertIn("child processes of one server", why)

    def test_one_label_for_the_sandboxes_of_all_replicas(self) -> None:
        """Replicas labelling their sandboxes apart would each reconcile the other's away."""
        why = refusal(_me("docker"), [_row("docker", instance="a1b2")])
        assert why is not None
        self.assertIn("labels its docker sandboxes 'a1b2', this one 'rel'", why)
        self.assertIn("K8S_INSTANCE", why)
        self.assertIsNone(refusal(_me("docker"), [_row("docker")]))


class AdvertiseUrlTests(SynchronousTestCase):
    def test_default_is_the_first_tcp_listener(self) -> None:
        host = socket.gethostname()
        self.assertEqual(
            default_advertise_url(["unix:/run/x.sock", "tcp:9001:interface=127.0.0.1", "tcp:1"]),
            f"http://{host}:9001",
        )
        self.assertEqual(default_advertise_url(["8081"]), f"http://{host}:8081")
        self.assertIsNone(default_advertise_url(["unix:/run/x.sock"]))

    def test_option_and_environment(self) -> None:
        def parsed(argv: list[str], environ: dict[str, str]) -> Any:
            options = Options(environ=environ, preflight=False)
            options.parseOptions(["--db-url", "postgres://db/x", *argv])
            return options.config().advertise_url

        self.assertEqual(
            parsed(["--listen", "tcp:9009"], {}), f"http://{socket.gethostname()}:9009"
        )
        self.assertEqual(
            parsed([], {"ADVERTISE_URL": "http://10.0.0.7:8080/"}), "http://10.0.0.7:8080"
        )
        self.assertEqual(
            parsed(["--advertise-url", "https://r1.internal"], {"ADVERTISE_URL": "http://x:1"}),
            "https://r1.internal",
        )

    def test_a_bare_ipv6_pod_address_is_bracketed(self) -> None:
        """The chart's http://$(POD_IP):8080 works on IPv6 clusters too."""
        self.assertEqual(parse_advertise_url("http://fd00::1:8080"), "http://[fd00::1]:8080")
        self.assertEqual(parse_advertise_url("http://[fd00::1]:8080/"), "http://[fd00::1]:8080")
        self.assertEqual(parse_advertise_url("http://10.0.0.7:8080"), "http://10.0.0.7:8080")
        with self.assertRaises(ValueError):
            parse_advertise_url("http://fd00::zz:8080")

    def test_bad_values_fail_in_one_line(self) -> None:
        for bad in ("r1:8080", "ftp://r1", "http://u:p@r1:8080", "http://r1:port"):
            options = Options(environ={}, preflight=False)
            with self.assertRaises(usage.UsageError) as caught:
                options.parseOptions(["--db-url", "postgres://db/x", "--advertise-url", bad])
            self.assertTrue(str(caught.exception).startswith("--advertise-url: "))
