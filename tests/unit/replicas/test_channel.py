"""The internal channel's signatures: good, wrong key, replayed, expired, tampered."""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from cli_server.proxy.forward import client_endpoint
from cli_server.replicas import channel
from cli_server.replicas.holders import holder_address
from cli_server.sandboxes.backend import Endpoint

SANDBOX = "0b6c2f0e-3d4f-4a51-9c1e-2d7f6a8b9c01"
KEY = b"k" * 32


def _signed(
    target: channel.Target, key: bytes = KEY, now: float = 1000.0, method: bytes = b"GET"
) -> tuple[bytes, dict[bytes, bytes]]:
    headers = dict(channel.sign(key, method, target, b"oc-x.example.com", now))
    return channel.internal_path(target), headers


class SignatureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.verifier = channel.Verifier(KEY, self.clock.seconds)
        self.target = channel.Target(SANDBOX, None, b"/session?x=1")

    def check(self, method: bytes, path: bytes, headers: dict[bytes, bytes]) -> object:
        return self.verifier.check(method, path, headers.get)

    def test_good(self) -> None:
        path, headers = _signed(self.target)
        self.assertEqual(path, b"/_cli-relay/" + SANDBOX.encode() + b"/opencode/session?x=1")
        self.assertEqual(self.check(b"GET", path, headers), self.target)

    def test_a_port(self) -> None:
        target = channel.Target(SANDBOX, 5173, b"/")
        path, headers = _signed(target)
        self.assertEqual(self.check(b"GET", path, headers), target)

    def test_wrong_key(self) -> None:
        path, headers = _signed(self.target, key=b"another key of the same length!!")
        self.assertEqual(self.check(b"GET", path, headers), "bad signature")

    def test_unsigned(self) -> None:
        path, _ = _signed(self.target)
        self.assertEqual(self.check(b"GET", path, {}), "unsigned")

    def test_replayed(self) -> None:
        path, headers = _signed(self.target)
        self.assertEqual(self.check(b"GET", path, headers), self.target)
        self.clock.advance(5)
        self.assertEqual(self.check(b"GET", path, headers), "replayed")

    def test_replayed_after_the_window_is_expired(self) -> None:
        path, headers = _signed(self.target)
        self.assertEqual(self.check(b"GET", path, headers), self.target)
        self.clock.advance(channel.WINDOW + 1)
        self.assertEqual(self.check(b"GET", path, headers), "expired")

    def test_expired_and_from_the_future(self) -> None:
        path, headers = _signed(self.target, now=1000 - channel.WINDOW - 1)
        self.assertEqual(self.check(b"GET", path, headers), "expired")
        path, headers = _signed(self.target, now=1000 + channel.WINDOW + 1)
        self.assertEqual(self.check(b"GET", path, headers), "expired")

    def test_tampered_path(self) -> None:
        path, headers = _signed(self.target)
        other = path.replace(b"/session", b"/file")
        self.assertEqual(self.check(b"GET", other, headers), "bad signature")

    def test_tampered_sandbox(self) -> None:
        path, headers = _signed(self.target)
        other = path.replace(SANDBOX.encode(), SANDBOX.replace("0b6c", "1b6c").encode())
        self.assertEqual(self.check(b"GET", other, headers), "bad signature")

    def test_tampered_port(self) -> None:
        path, headers = _signed(channel.Target(SANDBOX, 5173, b"/"))
        self.assertEqual(
            self.check(b"GET", path.replace(b"/5173/", b"/5174/"), headers), "bad signature"
        )
        self.assertEqual(
            self.check(b"GET", path.replace(b"/5173/", b"/opencode/"), headers),
            "bad signature",
        )

    def test_tampered_method_host_and_time(self) -> None:
        path, headers = _signed(self.target)
        self.assertEqual(self.check(b"POST", path, headers), "bad signature")
        for name, value in [(channel.HOST, b"oc-y.example.com"), (channel.TIME, b"1001")]:
            self.assertEqual(self.check(b"GET", path, {**headers, name: value}), "bad signature")

    def test_not_internal_paths(self) -> None:
        for path in [
            b"/api/x",
            b"/_cli-relay/not-a-uuid/opencode/",
            b"/_cli-relay/" + SANDBOX.encode() + b"/80/",  # (below the preview ports)
            b"/_cli-relay/" + SANDBOX.encode() + b"/opencode",  # (no target)
        ]:
            self.assertIsNone(channel.parse_path(path))

    def test_nonces_are_forgotten_after_twice_the_window(self) -> None:
        for _ in range(3):
            path, headers = _signed(self.target, now=self.clock.seconds())
            self.assertEqual(self.check(b"GET", path, headers), self.target)
            self.clock.advance(2 * channel.WINDOW + 1)
        self.assertEqual(self.verifier.remembered(), 1)

    def test_forgetting_costs_only_the_expired_nonces(self) -> None:
        # Each check used to rebuild the whole table above 1024 nonces (4.9 ms at 50k).
        counted = _CountingSet()
        self.verifier = channel.Verifier(KEY, self.clock.seconds, seen=counted)
        for _ in range(5000):
            path, headers = _signed(self.target, now=self.clock.seconds())
            self.assertEqual(self.check(b"GET", path, headers), self.target)
        self.assertEqual(counted.discarded, 0)
        self.clock.advance(channel.WINDOW)
        for _ in range(5000):
            path, headers = _signed(self.target, now=self.clock.seconds())
            self.assertEqual(self.check(b"GET", path, headers), self.target)
        self.assertEqual((counted.discarded, self.verifier.remembered()), (0, 10000))
        self.clock.advance(channel.WINDOW + 1)  # the first 5000 expire, the others do not
        path, headers = _signed(self.target, now=self.clock.seconds())
        self.assertEqual(self.check(b"GET", path, headers), self.target)
        self.assertEqual((counted.discarded, self.verifier.remembered()), (5000, 5001))
        self.assertEqual(self.check(b"GET", path, headers), "replayed")

    def test_memory_is_bounded_within_the_window(self) -> None:
        verifier = channel.Verifier(KEY, self.clock.seconds, limit=100)
        for _ in range(100):
            path, headers = _signed(self.target, now=self.clock.seconds())
            self.assertEqual(verifier.check(b"GET", path, headers.get), self.target)
        path, headers = _signed(self.target, now=self.clock.seconds())
        self.assertEqual(verifier.check(b"GET", path, headers.get), channel.BUSY)
        self.assertEqual(verifier.remembered(), 100)
        self.clock.advance(2 * channel.WINDOW + 1)  # all forgotten: good requests pass again
        path, headers = _signed(self.target, now=self.clock.seconds())
        self.assertEqual(verifier.check(b"GET", path, headers.get), self.target)
        self.assertEqual(verifier.remembered(), 1)


class _CountingSet(set[bytes]):
    discarded = 0

    def discard(self, item: bytes) -> None:
        self.discarded += 1
        super().discard(item)


class AdvertiseUrlTests(SynchronousTestCase):
    def test_addresses(self) -> None:
        self.assertEqual(holder_address("http://10.0.0.5:8080"), ("10.0.0.5", 8080))
        self.assertEqual(holder_address("http://pod-a"), ("pod-a", 80))
        self.assertIsNone(holder_address(None))
        self.assertIsNone(holder_address("https://pod-a:8443"))
        self.assertEqual(holder_address("http://[fd00::1]:8080"), ("fd00::1", 8080))

    def test_an_ipv6_holder_is_reached_over_ipv6(self) -> None:
        reactor = MemoryReactorClock()
        for host in ("fd00::1", "10.0.0.5"):
            endpoint = client_endpoint(reactor, Endpoint(host, 8080), None)
            endpoint.connect(Factory.forProtocol(Protocol))
            self.assertEqual(reactor.tcpClients[-1][:2], (host, 8080))
