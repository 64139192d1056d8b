"""The holder's end of the internal channel refuses what is not signed, and the channel is
routed only from hosts that are not a sandbox's."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from cli_server.proxy.replica_relay import InternalChannel, Keyring
from cli_server.replicas import channel
from cli_server.web.dispatch import HostDispatcher

SANDBOX = "0b6c2f0e-3d4f-4a51-9c1e-2d7f6a8b9c01"
KEY = b"k" * 32


class _Hub:
    """No tunnel is held here: a signed request gets the offline page."""

    def session(self, sandbox_id: str) -> None:
        return None


class _Named(Resource):
    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    def render(self, request: Any) -> bytes:
        return self.name


def _request(path: bytes, headers: dict[bytes, bytes], host: bytes = b"10.0.0.2:8080") -> Any:
    request = DummyRequest([])
    request.uri = request.path = path
    request.method = b"GET"
    request.channel = object()  # (connected)
    request.startedWriting = False
    request.requestHeaders.setRawHeaders(b"host", [host])
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name, [value])
    return request


class InternalChannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(5000)
        self.keyring = Keyring(KEY)
        self.channel = InternalChannel(
            self.keyring,
            _Hub(),
            None,
            self.clock,
            "http://example.com/",  # type: ignore[arg-type]
        )
        self.target = channel.Target(SANDBOX, None, b"/session")
        self.path = channel.internal_path(self.target)

    def signed(self, key: bytes = KEY, now: float | None = None) -> dict[bytes, bytes]:
        when = self.clock.seconds() if now is None else now
        return dict(channel.sign(key, b"GET", self.target, b"oc-x.example.com", when))

    def render(self, request: Any) -> Any:
        self.channel.render(request)
        self.assertEqual(request.finished, 1)
        return request

    def test_unsigned_wrong_key_expired_and_replayed_are_403(self) -> None:
        good = self.signed()
        for headers in [
            {},
            self.signed(key=b"another key"),
            self.signed(now=self.clock.seconds() - channel.WINDOW - 1),
        ]:
            request = self.render(_request(self.path, headers))
            self.assertEqual(request.responseCode, 403)
            self.assertEqual(b"".join(request.written), b"forbidden\n")
        self.assertEqual(self.render(_request(self.path, good)).responseCode, 503)  # offline
        self.assertEqual(self.render(_request(self.path, good)).responseCode, 403)  # replayed

    def test_a_full_nonce_table_is_busy_not_forbidden(self) -> None:
        # (memory is bounded within the window: beyond it a good request waits, 503)
        self.channel.nonce_limit = 1
        self.assertIn(b"offline", b"".join(self.render(_request(self.path, self.signed())).written))
        self.clock.advance(1)
        busy = self.render(_request(self.path, self.signed()))
        self.assertEqual(busy.responseCode, 503)
        self.assertIn(b"Busy", b"".join(busy.written))
        self.clock.advance(2 * channel.WINDOW + 1)
        request = self.render(_request(self.path, self.signed()))
        self.assertIn(b"offline", b"".join(request.written))

    def test_nothing_before_the_key_is_known(self) -> None:
        self.keyring.key = None
        request = self.render(_request(self.path, self.signed()))
        self.assertEqual(request.responseCode, 503)


class DispatchTests(SynchronousTestCase):
    def test_the_channel_only_from_hosts_not_a_sandbox(self) -> None:
        dispatcher = HostDispatcher(
            _Named(b"main"), _Named(b"sandbox"), b"example.com", _Named(b"internal")
        )
        path = b"/_cli-relay/" + SANDBOX.encode() + b"/opencode/"
        for host, expected in [
            (b"10.0.0.2:8080", b"internal"),
            (b"example.com", b"internal"),
            (b"oc-" + SANDBOX.encode() + b".example.com", b"sandbox"),
            (b"oc-" + SANDBOX.encode() + b"-p5173.example.com", b"sandbox"),
        ]:
            self.assertEqual(dispatcher.render(_request(path, {}, host)), expected, host)
        self.assertEqual(dispatcher.render(_request(b"/api/x", {}, b"example.com")), b"main")
