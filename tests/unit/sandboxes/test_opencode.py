"""The opencode client: where it connects, and how its clock bounds each try.

Connections go to a memory reactor (nothing answers); time is a separate fake clock, so the
tests see which of the two roles each part of the client uses.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed

from cli_server.sandboxes.backend import BackendError, Endpoint
from cli_server.sandboxes.opencode import OpencodeClient, basic_auth


def _accept(connections: MemoryReactorClock, accepted: list[StringTransport]) -> None:
    """Complete every connection attempt not yet completed; the server never answers."""
    connections.advance(1.0)  # (HostnameEndpoint's attempts are timed by its reactor)
    for host, port, factory, _, _ in connections.tcpClients[len(accepted) :]:
        transport = StringTransport()
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(transport)
        accepted.append(transport)


class OpencodeClientTests(SynchronousTestCase):
    def test_connects_to_the_endpoint(self) -> None:
        """A request opens a TCP connection to the sandbox's endpoint, through ``connections``."""
        clock, connections = Clock(), MemoryReactorClock()
        client = OpencodeClient(clock, connections=connections)
        d = Deferred.fromCoroutine(
            client.get_json(Endpoint("127.0.0.1", 41234), "pw", "/global/health")
        )
        accepted: list[StringTransport] = []
        _accept(connections, accepted)
        self.assertEqual([c[:2] for c in connections.tcpClients], [("127.0.0.1", 41234)])
        sent = accepted[0].value()
        self.assertTrue(sent.startswith(b"GET /global/health HTTP/1.1\r\n"), sent)
        self.assertIn(b"\r\nAuthorization: " + basic_auth("pw") + b"\r\n", sent)
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.1)  # (its timeout, on the client's clock: the request is cancelled)
        self.failureResultOf(d, ResponseFailed)

    def test_gives_up_by_the_clock(self) -> None:
        """Polling for health stops at the deadline on the client's clock, however many tries
        that took, and says what the last try saw."""
        clock, connections = Clock(), MemoryReactorClock()
        client = OpencodeClient(clock, connections=connections)
        d = Deferred.fromCoroutine(
            client.wait_healthy(Endpoint("127.0.0.1", 41234), "pw", timeout=5.0)
        )
        accepted: list[StringTransport] = []
        for _ in range(40):  # (bounded: 0.25 s steps, 10 s of fake time)
            if d.called:
                break
            _accept(connections, accepted)
            clock.advance(0.25)
        failure = self.failureResultOf(d, BackendError)
        self.assertIn("did not become healthy", str(failure.value))
        self.assertGreaterEqual(clock.seconds(), 5.0)
        self.assertGreater(len(accepted), 1)  # (one connection per try)
        self.assertIn("(ResponseNeverReceived)", str(failure.value))  # (the last try's end)

    def test_basic_auth(self) -> None:
        """opencode's server password goes as HTTP basic auth for the user ``opencode``."""
        self.assertEqual(basic_auth("secret"), b"Basic b3BlbmNvZGU6c2VjcmV0")

    def test_retries_after_a_try_whose_connection_hangs(self) -> None:
        """A try whose connection never completes is cut at its 1 s timeout (a
        ``ConnectingCancelledError``) and the wait tries again: the next connection, which
        answers healthy, ends it well before the overall deadline."""
        clock, connections = Clock(), MemoryReactorClock()
        client = OpencodeClient(clock, connections=connections)
        d = Deferred.fromCoroutine(
            client.wait_healthy(Endpoint("127.0.0.1", 41234), "pw", timeout=30.0)
        )
        connections.advance(1.0)  # (HostnameEndpoint's attempt starts on its reactor)
        self.assertEqual(len(connections.tcpClients), 1)  # the first try: it never connects
        clock.advance(1.0)  # its timeout: the connection attempt is cancelled
        self.assertNoResult(d)
        clock.advance(0.25)  # the pause between tries
        connections.advance(1.0)
        self.assertEqual(len(connections.tcpClients), 2)
        host, port, factory, _, _ = connections.tcpClients[1]
        transport = StringTransport()
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"GET /global/health HTTP/1.1\r\n"))
        body = b'{"healthy": true}'
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.assertIsNone(self.successResultOf(d))
        self.assertLess(clock.seconds(), 30.0)
