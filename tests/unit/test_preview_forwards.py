"""The process backend's preview forwards, against slirp4netns' API socket played by hand
(MemoryReactorClock: no processes, no sockets)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cli_server.sandboxes.backend import BackendError, Endpoint
from cli_server.sandboxes.opencode import OpencodeClient
from cli_server.sandboxes.process_backend import ProcessBackend, _Live, _Watched


class _Process:
    pid = 4242


def _backend(reactor: MemoryReactorClock, *, isolated: bool = True) -> ProcessBackend:
    return ProcessBackend(
        reactor,
        Path(tempfile.mkdtemp()),
        Path("/bin/true"),
        OpencodeClient(reactor),
        account=None,
        isolated=isolated,
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
