"""The process backend's preview forwards, against slirp4netns' API socket played by hand
(MemoryReactorClock: no processes, no sockets)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessTerminated
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cli_server.plumbing.process import ProcessResult
from cli_server.sandboxes.backend import BackendError, Endpoint
from cli_server.sandboxes.forward_guard import ForwardGuard, ruleset, table_name
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

    def signalProcess(self, signal: str) -> None:
        pass


class _Listening:
    """The thread pool's runner, answering reads of a sandbox's ports with ``ports``."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.reads: list[tuple[Any, ...]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        assert f is listening_ports
        self.reads.append(args)
        return succeed(list(self.ports))


class _Nft:
    """nft played by hand: records its arguments (and the ruleset of ``-f``), then answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.rulesets: list[str] = []
        self.code = 0

    async def __call__(self, args: Sequence[str]) -> ProcessResult:
        self.calls.append(tuple(args))
        if args[0] == "-f":
            self.rulesets.append(Path(args[1]).read_text())
        return ProcessResult(("nft", *args), self.code, "Error: no" if self.code else "")

    def elements(self, verb: str) -> list[str]:
        return [c[-1] for c in self.calls if c[:2] == (verb, "element")]


class _Ports:
    """Host ports for forwards in a fixed order, each handed out once: the real choice is
    random and binds a socket to see a port free, which nothing in these fakes holds, so two
    forwards could draw the same port."""

    def __init__(self, first: int = 50000) -> None:
        self.next = first

    def __call__(self, resting: Container[int]) -> int:
        while self.next in resting:
            self.next += 1
        self.next += 1
        return self.next - 1


def _backend(
    reactor: MemoryReactorClock,
    *,
    isolated: bool = True,
    listening: _Listening | None = None,
    nft: _Nft | None = None,
    guard: ForwardGuard | None = None,
    chosen_ports: bool = True,
) -> ProcessBackend:
    """A process backend on fakes; its forwards' host ports come from ``_Ports`` unless
    ``chosen_ports`` is false (the server's own choice)."""
    data = Path(tempfile.mkdtemp())
    ports = {"pick_port": _Ports()} if chosen_ports else {}
    return ProcessBackend(
        reactor,
        data,
        Path("/bin/true"),
        OpencodeClient(reactor),
        account=None,
        isolated=isolated,
        threads=listening or _Listening(list(range(1024, 65536))),
        guard=guard or ForwardGuard(nft or _Nft(), "cli_forwards_test", data / "forwards.nft"),
        **ports,
    )


def _running(backend: ProcessBackend, sandbox_id: str, *, slirp: bool = True) -> _Live:
    watched = _Watched("opencode", lambda fd, data: b"listening" in data)
    watched.childDataReceived(1, b"opencode server listening\n")  # (started)
    slirp_watched = _Watched("slirp4netns", lambda fd, data: False) if slirp else None
    live = _Live(40000, _Process(), watched, _Process() if slirp else None, slirp_watched)
    backend.track(sandbox_id, live)
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
        backend.stop("s-1")  # (its first step: the sandbox is no longer tracked)
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
        self.assertTrue(backend.resting(hosts[2001]))

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
        backend = _backend(reactor, chosen_ports=False)
        _running(backend, "s-1")
        pending = backend.preview_endpoint("s-1", 8000)
        host_port = _answer(reactor, {"return": {"id": 2}})["arguments"]["host_port"]
        low, high = (
            int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        )
        self.assertNotIn(host_port, range(low, high + 1) if 65535 - high >= 1000 else ())
        self.assertEqual(self.successResultOf(pending).port, host_port)


class ForwardGuardTests(SynchronousTestCase):
    def test_ruleset_admits_our_uid_only(self) -> None:
        """One table per data directory; to the set's ports on 127.0.0.1, any other uid's
        connection is reset."""
        self.assertEqual(table_name(Path("/a")), table_name(Path("/a")))
        self.assertNotEqual(table_name(Path("/a")), table_name(Path("/b")))
        rules = ruleset("cli_forwards_x", 0)
        self.assertIn("delete table ip cli_forwards_x", rules)  # (a crashed run's replaced)
        self.assertIn("hook output", rules)
        self.assertIn(
            "ip daddr 127.0.0.1 tcp dport @ports meta skuid != 0 reject with tcp reset", rules
        )

    def test_each_forward_guarded_before_it_listens_until_it_is_gone(self) -> None:
        """The table is made once, each forward's host port joins the set before slirp4netns
        is asked for it and leaves it when refused, evicted or stopped; the server's stop
        deletes the table."""
        reactor = MemoryReactorClock()
        nft = _Nft()
        guard = ForwardGuard(nft, "cli_forwards_test", Path(tempfile.mkdtemp()) / "forwards.nft")
        backend = _backend(reactor, guard=guard)
        live = _running(backend, "s-1")
        pending = backend.preview_endpoint("s-1", 8000)
        self.assertEqual(len(nft.rulesets), 1)
        self.assertIn("meta skuid != ", nft.rulesets[0])
        (added,) = nft.elements("add")
        request = _answer(reactor, {"error": {"desc": "slirp_add_hostfwd failed"}})
        self.assertEqual(added, f"{{ {request['arguments']['host_port']} }}")
        self.assertEqual(nft.elements("delete"), [added])  # refused: released
        request = _answer(reactor, {"return": {"id": 2}})
        first = self.successResultOf(pending).port
        self.assertEqual(request["arguments"]["host_port"], first)
        self.assertEqual(nft.elements("add")[-1], f"{{ {first} }}")

        for n in range(MAX_FORWARDS):  # the last one pushes out 8000's
            more = backend.preview_endpoint("s-1", 2000 + n)
            if n == MAX_FORWARDS - 1:
                _answer(reactor, {"return": {}})
            _answer(reactor, {"return": {"id": 10 + n}})
            self.successResultOf(more)
        self.assertEqual(nft.elements("delete")[-1], f"{{ {first} }}")
        self.assertEqual(len(nft.rulesets), 1)

        # opencode dies; once its slirp4netns has ended, the forwards' ports leave the set
        ports = sorted(f.host_port for f in live.forwards.values())
        live.sandbox_proto.processEnded(Failure(ProcessTerminated(signal=9)))
        self.assertEqual(nft.elements("delete")[-1], f"{{ {first} }}")  # (not yet)
        assert live.slirp_proto is not None
        live.slirp_proto.ended.callback(None)
        self.assertEqual(nft.elements("delete")[-1], "{ " + ", ".join(map(str, ports)) + " }")
        self.successResultOf(guard.release([first]))  # (not in the set: no call)
        calls = len(nft.calls)
        self.successResultOf(backend.close())
        self.assertEqual(nft.calls[calls:], [("delete", "table", "ip", "cli_forwards_test")])

    def test_nft_refusing_fails_the_preview(self) -> None:
        """No guard, no forward: nft's failure is the preview's, and slirp4netns is not asked."""
        reactor = MemoryReactorClock()
        nft = _Nft()
        nft.code = 1
        guard = ForwardGuard(nft, "cli_forwards_test", Path(tempfile.mkdtemp()) / "forwards.nft")
        backend = _backend(reactor, guard=guard)
        _running(backend, "s-1")
        failing = backend.preview_endpoint("s-1", 8000)
        self.assertIn(
            "nft -f failed", self.failureResultOf(failing, BackendError).getErrorMessage()
        )
        self.assertEqual(reactor.unixClients, [])

    def test_a_table_gone_already_does_not_fail_the_stop(self) -> None:
        """Another server on the same data directory deleted the table: the stop goes on."""
        nft = _Nft()
        guard = ForwardGuard(nft, "cli_forwards_test", Path(tempfile.mkdtemp()) / "f.nft")
        self.successResultOf(Deferred.fromCoroutine(guard.admit_only_us(61234)))
        nft.code = 1
        self.successResultOf(Deferred.fromCoroutine(guard.close()))
        self.assertEqual(nft.calls[-1], ("delete", "table", "ip", "cli_forwards_test"))
        self.flushLoggedErrors()
