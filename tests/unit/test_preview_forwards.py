"""The process backend's preview forwards, against slirp4netns' API socket played by hand
(MemoryReactorClock: no processes, no sockets)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cli_server.sandboxes.backend import BackendError, Endpoint
from cli_server.sandboxes.listening import listening_ports
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.sandboxes.process_backend import (
    MAX_FORWARDS,
    NOT_LISTENING,
    ProcessBackend,
    _Live,
    _Watched,
    forward_ports,
)


class _Process:
    pid = 4242


class _Listening:
    """The thread pool's runner, answering reads of a sandbox's ports with ``ports``."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.reads: list[tuple[Any, ...]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        assert f is listening_ports
        self.reads.append(args)
        return succeed(list(self.ports))


def _backend(
    reactor: MemoryReactorClock, *, isolated: bool = True, listening: _Listening | None = None
) -> ProcessBackend:
    return ProcessBackend(
        reactor,
        Path(tempfile.mkdtemp()),
        Path("/bin/true"),
        OpencodeClient(reactor),
        account=None,
        isolated=isolated,
        threads=listening or _Listening(list(range(1024, 65536))),
    )


def _running(backend: ProcessBackend, sandbox_id: str, *, slirp: bool = True) -> _Live:
    watched = _Watched("opencode", lambda fd, data: False)
    live = _Live(40000, _Process(), watched, _Process() if slirp else None, None)
    backend._live[sandbox_id] = live
    return live


def _answer(reactor: MemoryReactorClock, reply: dict[str, Any]) -> dict[str, Any]:
    """Play slirp4netns for the latest API connection: its request, after ``reply``."""
    path, factory = reactor.unixClients[-1][:2]
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(json.dumps(reply).encode())
    protocol.connectionLost(Failure(ConnectionError()))
    request: dict[str, Any] = json.loads(transport.value())
    assert path.endswith("/slirp.sock"), path
    return request


class PreviewForwardTests(SynchronousTestCase):
    def test_one_forward_per_port_on_loopback_reused(self) -> None:
        """Two requests at once add one forward, to 127.0.0.1 only, which later requests
        reuse; another port gets its own."""
        reactor = MemoryReactorClock()
        backend = _backend(reactor)
        _running(backend, "s-1")
        first = backend.preview_endpoint("s-1", 5173)
        second = backend.preview_endpoint("s-1", 5173)
        self.assertEqual(len(reactor.unixClients), 1)
        request = _answer(reactor, {"return": {"id": 2}})
        self.assertEqual(request["execute"], "add_hostfwd")
        arguments = request["arguments"]
        self.assertEqual((arguments["host_addr"], arguments["guest_port"]), ("127.0.0.1", 5173))
        expected = Endpoint("127.0.0.1", arguments["host_port"])
        self.assertEqual(self.successResultOf(first), expected)
        self.assertEqual(self.successResultOf(second), expected)
        self.assertEqual(self.successResultOf(backend.preview_endpoint("s-1", 5173)), expected)
        self.assertEqual(len(reactor.unixClients), 1)

        other = backend.preview_endpoint("s-1", 8000)
        self.assertEqual(_answer(reactor, {"return": {"id": 3}})["arguments"]["guest_port"], 8000)
        self.assertNotEqual(self.successResultOf(other), expected)

    def test_a_refused_forward_is_tried_again_then_said(self) -> None:
        """A host port taken meanwhile is picked again; three refusals fail with slirp's word."""
        reactor = MemoryReactorClock()
        backend = _backend(reactor)
        _running(backend, "s-1")
        retried = backend.preview_endpoint("s-1", 8000)
        _answer(reactor, {"error": {"desc": "bad request: add_hostfwd: slirp_add_hostfwd failed"}})
        _answer(reactor, {"return": {"id": 2}})
        self.assertEqual(self.successResultOf(retried).host, "127.0.0.1")

        failing = backend.preview_endpoint("s-1", 8001)
        for _ in range(3):
            _answer(reactor, {"error": {"desc": "slirp_add_hostfwd failed"}})
        why = self.failureResultOf(failing, BackendError).getErrorMessage()
        self.assertIn("port forward refused", why)
        self.assertIn("slirp_add_hostfwd failed", why)

    def test_a_sandbox_stopped_meanwhile_has_no_preview(self) -> None:
        """Stopped while its forward was being added: None, and nothing is remembered."""
        reactor = MemoryReactorClock()
        backend = _backend(reactor)
        live = _running(backend, "s-1")
        pending = backend.preview_endpoint("s-1", 8000)
        del backend._live["s-1"]  # (what a stop does first)
        _answer(reactor, {"return": {"id": 2}})
        self.assertIsNone(self.successResultOf(pending))
        self.assertEqual(live.forwards, {})
        self.assertIsNone(self.successResultOf(backend.preview_endpoint("s-1", 8000)))

    def test_unisolated_sandboxes_have_no_previews(self) -> None:
        """Their ports are the host's own: refused, and none listed."""
        reactor = MemoryReactorClock()
        backend = _backend(reactor, isolated=False)
        _running(backend, "s-1", slirp=False)
        self.failureResultOf(backend.preview_endpoint("s-1", 8000), BackendError)
        self.assertEqual(self.successResultOf(backend.listening_ports("s-1")), [])
        self.assertFalse(backend.lists_ports)
        self.assertEqual(reactor.unixClients, [])

    def test_a_port_nothing_listens_on_gets_no_forward(self) -> None:
        """Only a port the sandbox listens on now is forwarded; another gets the endpoint
        that refuses at once (the proxy's "nothing is listening" page), and no forward."""
        reactor = MemoryReactorClock()
        listening = _Listening([8000])
        backend = _backend(reactor, listening=listening)
        _running(backend, "s-1")
        self.assertEqual(self.successResultOf(backend.preview_endpoint("s-1", 5173)), NOT_LISTENING)
        self.assertEqual(reactor.unixClients, [])
        (read,) = listening.reads
        self.assertEqual(read[0], Path("/proc/4242/net"))
        self.assertEqual(set(read[2]), {4096, 4097})  # opencode and the Anthropic door

        listening.ports = [5173, 8000]  # the dev server has started
        started = backend.preview_endpoint("s-1", 5173)
        _answer(reactor, {"return": {"id": 2}})
        self.assertNotEqual(self.successResultOf(started), NOT_LISTENING)

    def test_forwards_are_capped_least_recently_used_out(self) -> None:
        """Past ``MAX_FORWARDS`` ports, the forward used least recently is removed through
        slirp4netns (by its id) before the new one is added; its host port is not reused
        for a while."""
        reactor = MemoryReactorClock()
        backend = _backend(reactor)
        live = _running(backend, "s-1")
        hosts = {}
        for n in range(MAX_FORWARDS):
            pending = backend.preview_endpoint("s-1", 2000 + n)
            _answer(reactor, {"return": {"id": 10 + n}})
            hosts[2000 + n] = self.successResultOf(pending).port
        # 2000 used again: 2001 is now the least recently used
        self.assertEqual(
            self.successResultOf(backend.preview_endpoint("s-1", 2000)).port, hosts[2000]
        )
        clients = len(reactor.unixClients)

        pending = backend.preview_endpoint("s-1", 3000)
        removal = _answer(reactor, {"return": {}})
        self.assertEqual(removal, {"execute": "remove_hostfwd", "arguments": {"id": 11}})
        added = _answer(reactor, {"return": {"id": 40}})
        self.assertEqual(added["execute"], "add_hostfwd")
        self.assertNotEqual(added["arguments"]["host_port"], hosts[2001])
        self.successResultOf(pending)
        self.assertEqual(len(reactor.unixClients), clients + 2)
        self.assertEqual(len(live.forwards), MAX_FORWARDS)
        self.assertNotIn(2001, live.forwards)
        self.assertIn(hosts[2001], backend._resting)

        # 2001 asked again: a new forward, pushing out 2002
        again = backend.preview_endpoint("s-1", 2001)
        self.assertEqual(_answer(reactor, {"return": {}})["arguments"], {"id": 12})
        _answer(reactor, {"return": {"id": 41}})
        self.successResultOf(again)
        self.assertEqual(list(live.forwards)[-2:], [3000, 2001])
        self.assertEqual(len(live.forwards), MAX_FORWARDS)

    def test_a_forward_not_removed_keeps_its_place(self) -> None:
        """slirp4netns refusing the removal: no new forward, the old one still counted."""
        reactor = MemoryReactorClock()
        backend = _backend(reactor)
        live = _running(backend, "s-1")
        for n in range(MAX_FORWARDS):
            pending = backend.preview_endpoint("s-1", 2000 + n)
            _answer(reactor, {"return": {"id": 10 + n}})
            self.successResultOf(pending)
        failing = backend.preview_endpoint("s-1", 3000)
        _answer(reactor, {"error": {"desc": "bad request: remove_hostfwd: no such id"}})
        self.assertIn("not removed", self.failureResultOf(failing, BackendError).getErrorMessage())
        self.assertEqual(len(live.forwards), MAX_FORWARDS)
        self.assertIn(2000, live.forwards)

    def test_host_ports_above_the_outgoing_range(self) -> None:
        """Forwards' host ports lie above the kernel's range for outgoing connections when a
        thousand are there, else anywhere unprivileged."""
        self.assertEqual(forward_ports("32768\t60999\n"), range(61000, 65536))
        self.assertEqual(forward_ports("1024 65000"), range(1024, 65536))
        self.assertEqual(forward_ports("nonsense"), range(1024, 65536))
        reactor = MemoryReactorClock()
        backend = _backend(reactor)
        _running(backend, "s-1")
        pending = backend.preview_endpoint("s-1", 8000)
        host_port = _answer(reactor, {"return": {"id": 2}})["arguments"]["host_port"]
        low, high = (
            int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        )
        self.assertNotIn(host_port, range(low, high + 1) if 65535 - high >= 1000 else ())
        self.assertEqual(self.successResultOf(pending).port, host_port)
