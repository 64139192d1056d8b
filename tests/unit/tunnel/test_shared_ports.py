"""Shared ports through the tunnel (``--allow-port``, protocol version 2).

The laptop's side is the real ``TunnelAgent`` session and ``PortConnector`` over a
``MemoryReactorClock`` (TCP connections recorded, answered by the test); the server's side is
the real ``TunnelHub`` and its ``TunnelEndpoint``, with a database that records statements.
The two sessions are connected back to back in memory.
"""

from __future__ import annotations

import json
import random
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost
from twisted.internet.error import ConnectionRefusedError as TCPConnectionRefused
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure

from cli_server import cli
from cli_server.agent.service import Credentials, OpencodeConnector, TunnelAgent
from cli_server.tap.agent import Options, makeService
from cli_server.tunnel.frames import MAX_SHARED_PORTS, Frame, ProtocolError, decode, encode
from cli_server.tunnel.hub import TunnelHub
from cli_server.tunnel.mux import Session
from cli_server.tunnel.shared_ports import (
    LoopbackEndpoint,
    PortNotShared,
    check_not_opencode,
    parse_ports,
)
from tests.unit.deferreds import failure_of, result_of
from tests.unit.streams import RecordingPeer

SANDBOX = "sb-1"
OPENCODE = "http://127.0.0.1:4096"
CREDENTIALS = Credentials(
    server="http://server.example:8080",
    sandbox_id=SANDBOX,
    workspace_id="ws-1",
    tunnel_token="tunnel-token",
    name="laptop",
    opencode_url=OPENCODE,
)


# -- the option ------------------------------------------------------------------------------


def test_parse_ports_takes_commas_and_repeats() -> None:
    assert parse_ports([]) == ()
    assert parse_ports(["5173,8000", "3000", " 8000 "]) == (3000, 5173, 8000)
    assert parse_ports(["1024,65535"]) == (1024, 65535)


@pytest.mark.parametrize("bad", ["80", "0", "65536", "1023", "abc", "5173,", "-5173", "5173.0"])
def test_parse_ports_refuses_what_is_not_a_preview_port(bad: str) -> None:
    with pytest.raises(ValueError, match="port numbers from 1024 to 65535"):
        parse_ports([bad])


def test_parse_ports_has_a_limit() -> None:
    many = ",".join(str(p) for p in range(2000, 2000 + MAX_SHARED_PORTS))
    assert len(parse_ports([many])) == MAX_SHARED_PORTS
    with pytest.raises(ValueError, match=f"at most {MAX_SHARED_PORTS}"):
        parse_ports([many + ",9999"])


def test_opencodes_own_port_is_never_shared() -> None:
    check_not_opencode([5173], OPENCODE)
    with pytest.raises(ValueError, match="that is opencode's port"):
        check_not_opencode([5173, 4096], OPENCODE)
    with pytest.raises(ValueError, match="opencode's port"):
        check_not_opencode([8080], "http://localhost:8080/")


def parse(tmp_path: Path, *argv: str) -> Options:
    config = tmp_path / "agent.json"
    CREDENTIALS.save(config)
    options = Options()
    options.parseOptions(["--config", str(config), *argv])
    return options


def test_options_allow_port(tmp_path: Path) -> None:
    """--allow-port is repeatable and comma-separated; none by default; it reaches the agent."""
    assert parse(tmp_path)["allow-port"] == ()
    options = parse(tmp_path, "--allow-port", "8000,5173", "--allow-port=3000")
    assert options["allow-port"] == (3000, 5173, 8000)
    service = makeService(options, reactor=MemoryReactorClock())
    # (the agent, or the agent among its siblings)
    agents = [s for s in [service, *getattr(service, "services", [])] if isinstance(s, TunnelAgent)]
    assert [a.allowed_ports for a in agents] == [(3000, 5173, 8000)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--allow-port", "80"], "--allow-port '80': give port numbers from 1024 to 65535"),
        (["--allow-port", "http"], "--allow-port 'http'"),
        (
            ["--opencode-url", "http://127.0.0.1:5000", "--allow-port", "5173,5000"],
            "--allow-port 5000: that is opencode's port",
        ),
    ],
)
def test_options_allow_port_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError) as e:
        parse(tmp_path, *argv)
    assert message in str(e.value)


def test_the_original_spelling_passes_allow_port_on() -> None:
    argv = ["agent", "connect", "--allow-port", "5173,8000"]
    assert cli.twistd_argv(argv) == [
        "twistd",
        "--nodaemon",
        "--pidfile=",
        "cli-agent",
        "--allow-port",
        "5173,8000",
    ]


def test_agent_refuses_to_share_its_saved_opencodes_port(tmp_path: Path) -> None:
    """The saved opencode URL is known only at start: sharing its port stops the agent."""
    config = tmp_path / "agent.json"
    CREDENTIALS.save(config)
    fatal: list[str] = []
    reactor = MemoryReactorClock()
    agent = TunnelAgent(reactor, config, allowed_ports=(4096,), on_fatal=fatal.append)
    agent.startService()
    assert len(fatal) == 1 and "--allow-port 4096: that is opencode's port" in fatal[0]
    assert reactor.tcpClients == []


# -- frames ----------------------------------------------------------------------------------


def test_version_2_frames_round_trip() -> None:
    hello = decode(encode("hello", versions=[1, 2], agent="a", ports=[5173, 8000]))
    assert hello["ports"] == [5173, 8000]
    assert "ports" not in decode(encode("hello", versions=[1], agent="a")).fields
    assert decode(encode("open", 3, window=10, port=5173)).fields == {"window": 10, "port": 5173}
    assert decode(encode("open", 3, window=10)).fields == {"window": 10}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"t": "hello", "s": 0, "versions": [2], "agent": "a", "ports": 5173}, "wrong type"),
        ({"t": "hello", "s": 0, "versions": [2], "agent": "a", "ports": [80]}, "bad port list"),
        ({"t": "hello", "s": 0, "versions": [2], "agent": "a", "ports": [65536]}, "port list"),
        ({"t": "hello", "s": 0, "versions": [2], "agent": "a", "ports": [True]}, "port list"),
        ({"t": "hello", "s": 0, "versions": [2], "agent": "a", "ports": ["5173"]}, "port list"),
        ({"t": "hello", "s": 0, "versions": [2], "agent": "a", "ports": [5173, 5173]}, "list"),
        ({"t": "hello", "s": 0, "versions": [2], "agent": "a", "port": 5173}, "wrong fields"),
        ({"t": "open", "s": 1, "window": 1, "port": 1023}, "bad port"),
        ({"t": "open", "s": 1, "window": 1, "port": 0}, "bad port"),
        ({"t": "open", "s": 1, "window": 1, "port": True}, "not an integer"),
        ({"t": "open", "s": 1, "window": 1, "port": "5173"}, "not an integer"),
        ({"t": "open", "s": 1, "port": 5173}, "wrong fields"),
        ({"t": "opened", "s": 1, "window": 1, "port": 5173}, "wrong fields"),
    ],
)
def test_bad_port_fields_are_protocol_errors(fields: dict[str, Any], message: str) -> None:
    header = json.dumps(fields).encode()
    with pytest.raises(ProtocolError, match=message):
        decode(len(header).to_bytes(4, "big") + header)


def test_too_many_ports_in_a_hello() -> None:
    ports = list(range(2000, 2001 + MAX_SHARED_PORTS))
    with pytest.raises(ProtocolError, match="bad port list"):
        decode(encode("hello", versions=[2], agent="a", ports=ports))


# -- the tunnel: hub, sessions, agent -----------------------------------------------------------


class RecordingDatabase:
    """The hub writes the sandbox's status; these tests only need it to succeed."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    async def execute(self, sql: str, args: Any = None) -> None:
        self.statements.append(sql)


Client = RecordingPeer  # The server's end of a stream (the proxy's request to the preview).


class Laptop:
    """A TunnelHub holding the agent's live tunnel; the agent's session made by the real
    TunnelAgent (so its streams go to its connectors, over ``reactor``)."""

    def __init__(self, tmp_path: Path, ports: tuple[int, ...], versions: list[int] | None = None):
        self.reactor = MemoryReactorClock()
        self.hub = TunnelHub(RecordingDatabase(), self.reactor)  # type: ignore[arg-type]
        self.to_agent: deque[bytes] = deque()
        self.to_server: deque[bytes] = deque()
        self.agent_sent: list[Frame] = []
        self.server_sent: list[Frame] = []
        agent = TunnelAgent(self.reactor, tmp_path / "agent.json", allowed_ports=ports)
        # (what start-up would set, without dialling the server)
        agent.set_up(CREDENTIALS, OpencodeConnector(LoopbackEndpoint(self.reactor, 4096), OPENCODE))
        self.agent = agent.new_session(self._agent_send, lambda code, why: None)
        self.server = self.hub.new_session(SANDBOX, self._server_send, lambda code, why: None)
        self.server.ready.addCallback(lambda _: self.hub.attach(SANDBOX, self.server))
        self.server.start()
        if versions is None:
            self.agent.start()
        else:  # an agent of another protocol version: its own hello, by hand
            self._agent_send(encode("hello", versions=versions, agent="old-agent"))
        self.pump()

    def _agent_send(self, message: bytes) -> None:
        self.agent_sent.append(decode(message))
        self.to_server.append(message)

    def _server_send(self, message: bytes) -> None:
        self.server_sent.append(decode(message))
        self.to_agent.append(message)

    def pump(self) -> None:
        while self.to_agent or self.to_server:
            if self.to_agent:
                self.agent.message_received(self.to_agent.popleft())
            if self.to_server:
                self.server.message_received(self.to_server.popleft())

    def dials(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def answer(self) -> tuple[Protocol, StringTransport]:
        """The last TCP connection the agent dialled is accepted."""
        _, port, factory, *_ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        protocol.makeConnection(transport)
        self.pump()
        return protocol, transport

    def refuse(self) -> None:
        host, port, factory, *_ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(TCPConnectionRefused(host, port)))
        self.pump()

    def stream_frames(self) -> list[tuple[str, dict[str, Any]]]:
        return [(f.type, f.fields) for f in self.server_sent + self.agent_sent if f.stream]


def connect(laptop: Laptop, port: int | None) -> Any:
    d = laptop.hub.endpoint(SANDBOX, port).connect(Factory.forProtocol(Client))
    laptop.pump()
    return d


def test_hub_knows_the_ports_the_live_agent_shares(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path, (8000, 5173))
    assert laptop.agent_sent[0]["ports"] == [5173, 8000]
    assert laptop.server.version == 2
    assert laptop.hub.allowed_ports(SANDBOX) == (5173, 8000)
    assert laptop.hub.allowed_ports("another") == ()
    laptop.hub.detach(SANDBOX, laptop.server)
    assert laptop.hub.allowed_ports(SANDBOX) == ()  # offline: nothing is shared


def test_a_shared_port_is_served_from_the_laptops_loopback(tmp_path: Path) -> None:
    """The hub opens a stream naming the port; the agent connects it to 127.0.0.1:port and
    bytes flow both ways, like opencode's streams."""
    laptop = Laptop(tmp_path, (5173,))
    d = connect(laptop, 5173)
    assert laptop.stream_frames() == [("open", {"window": 512 * 1024, "port": 5173})]
    assert laptop.dials() == [("127.0.0.1", 5173)]
    assert not d.called  # the stream opens once the dev server answered
    server, transport = laptop.answer()
    client = result_of(d)
    assert isinstance(client, Client)
    assert client.transport is not None
    client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    laptop.pump()
    assert transport.value() == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    server.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    server.connectionLost(Failure(ConnectionDone()))
    laptop.pump()
    assert bytes(client.received).endswith(b"\r\n\r\nhi")
    assert len(client.lost) == 1 and client.lost[0].check(ConnectionDone)
    assert laptop.dials() == [("127.0.0.1", 5173)]  # (opencode's port never dialled)


def test_opencode_streams_still_go_to_opencode(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path, (5173,))
    connect(laptop, None)
    assert laptop.stream_frames() == [("open", {"window": 512 * 1024})]
    assert laptop.dials() == [("127.0.0.1", 4096)]


def test_a_port_not_shared_is_refused_at_the_server(tmp_path: Path) -> None:
    """The server refuses before asking: no open frame, no connection on the laptop."""
    laptop = Laptop(tmp_path, (5173,))
    for port in (8000, 4096):
        failure = failure_of(connect(laptop, port))
        assert failure.check(PortNotShared)
        assert f"port {port} is not shared" in str(failure.value)
    assert laptop.stream_frames() == []
    assert laptop.dials() == []


def test_an_offline_agent_is_offline_not_port_not_shared(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path, (5173,))
    laptop.hub.detach(SANDBOX, laptop.server)
    assert failure_of(connect(laptop, 5173)).check(ConnectError)
    assert not failure_of(connect(laptop, 5173)).check(PortNotShared)


def test_the_agent_refuses_a_port_it_does_not_share_even_if_asked(tmp_path: Path) -> None:
    """A server that asks anyway (its check bypassed here) gets a reset with the reason;
    the laptop never dials the port."""
    laptop = Laptop(tmp_path, (5173,))
    laptop.server.shared_ports = frozenset({5173, 22222, 4096})  # a lying or buggy server
    for port in (22222, 4096):
        failure = failure_of(connect(laptop, port))
        assert failure.check(ConnectError)
        assert f"port {port} is not shared by this laptop (--allow-port)" in str(failure.value)
    assert [f.type for f in laptop.server_sent if f.stream] == ["open", "open"]
    assert [f.type for f in laptop.agent_sent if f.stream] == ["reset", "reset"]
    assert laptop.dials() == []
    assert laptop.server.streams == laptop.agent.streams == 0


def test_the_agent_refuses_a_raw_open_for_a_port(tmp_path: Path) -> None:
    """The same, with the frame written by hand (no server-side code involved)."""
    laptop = Laptop(tmp_path, ())
    laptop.agent.message_received(encode("open", 7, window=1024, port=5173))
    [reset] = [f for f in laptop.agent_sent if f.type == "reset"]
    assert reset.stream == 7 and "not shared" in reset["reason"]
    assert laptop.dials() == []


def test_nothing_listening_on_a_shared_port(tmp_path: Path) -> None:
    """Refused on 127.0.0.1 and on ::1: the server's connect fails saying so."""
    laptop = Laptop(tmp_path, (5173,))
    d = connect(laptop, 5173)
    laptop.refuse()
    assert laptop.dials() == [("127.0.0.1", 5173), ("::1", 5173)]
    laptop.refuse()
    failure = failure_of(d)
    assert failure.check(ConnectError)
    assert "nothing is listening on port 5173 on the agent's machine" in str(failure.value)


def test_a_dev_server_on_ipv6_loopback_only_is_reached(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path, (5173,))
    d = connect(laptop, 5173)
    laptop.refuse()
    laptop.answer()
    assert isinstance(result_of(d), Client)
    assert laptop.dials() == [("127.0.0.1", 5173), ("::1", 5173)]


def test_an_agent_of_version_1_shares_nothing(tmp_path: Path) -> None:
    """Backward compatibility: a version-1 hello (no ports) is welcomed with version 1."""
    laptop = Laptop(tmp_path, (), versions=[1])
    [welcome] = [f for f in laptop.server_sent if f.type == "welcome"]
    assert welcome["version"] == 1
    assert laptop.hub.session(SANDBOX) is laptop.server
    assert laptop.hub.allowed_ports(SANDBOX) == ()
    assert failure_of(connect(laptop, 5173)).check(PortNotShared)


def test_ports_in_a_version_1_hello_are_ignored() -> None:
    """Ports belong to version 2: a hello that offers only version 1 shares none."""
    sent: list[bytes] = []
    server = Session(MemoryReactorClock(), sent.append, lambda c, w: None, is_server=True)
    server.start()
    server.message_received(encode("hello", versions=[1], agent="odd", ports=[5173]))
    assert server.version == 1
    assert server.shared_ports == frozenset()
    with pytest.raises(PortNotShared):
        server.open_stream(port=5173)
    server.connection_lost()


def test_an_agent_sharing_nothing_sends_a_version_1_compatible_hello(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path, ())
    hello = laptop.agent_sent[0]
    assert set(hello.fields) == {"versions", "agent"}
    assert hello["versions"] == [1, 2]


def closed_as_tcp_closes(protocol: Protocol, transport: StringTransport, reason: Exception) -> None:
    """What a real TCP connection does when it closes: stop its producer, then tell its
    protocol (twisted.internet.tcp.Connection.connectionLost, in that order)."""
    if transport.producer is not None:
        transport.producer.stopProducing()
    protocol.connectionLost(Failure(reason))


def test_a_reply_followed_by_a_close_arrives_whole(tmp_path: Path) -> None:
    """An HTTP/1.0 dev server writes its reply and closes at once, while most of it still
    waits for credit: every byte reaches the server, then a clean end."""
    laptop = Laptop(tmp_path, (8000,))
    d = connect(laptop, 8000)
    server, transport = laptop.answer()
    client = result_of(d)
    reply = random.Random(2).randbytes(3 * 512 * 1024 + 5)
    server.dataReceived(reply)
    closed_as_tcp_closes(server, transport, ConnectionDone())
    laptop.pump()
    assert bytes(client.received) == reply
    assert len(client.lost) == 1 and client.lost[0].check(ConnectionDone)
    assert "reset" not in [f.type for f in laptop.agent_sent]


def test_a_local_connection_reset_is_not_a_clean_end(tmp_path: Path) -> None:
    """A dev server that crashes mid-reply: the server's side sees the stream cut, not a
    complete-looking short reply."""
    laptop = Laptop(tmp_path, (8000,))
    d = connect(laptop, 8000)
    server, transport = laptop.answer()
    client = result_of(d)
    server.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
    closed_as_tcp_closes(server, transport, ConnectionLost())
    laptop.pump()
    assert len(client.lost) == 1 and not client.lost[0].check(ConnectionDone)
    assert [f.type for f in laptop.agent_sent if f.stream] == ["opened", "data", "reset"]
