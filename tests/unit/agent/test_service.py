"""The agent's side of the tunnel (``twistd cli-agent`` and ``cli-server agent connect``).

Nothing here touches the network or a real reactor: time is a ``Clock`` (or a
``MemoryReactorClock``, whose name resolution and TCP connections are in memory),
registration talks to a ``StubTreq`` wrapping a small resource that answers like the server,
and the tunnel is a server ``Session`` and the agent's ``Session`` back to back in memory.
"""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from attrs import asdict
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost
from twisted.internet.error import ConnectionRefusedError as TCPConnectionRefused
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from zope.interface import implementer

from cli_server import cli
from cli_server.agent.service import (
    CONNECT_TIMEOUT,
    STABLE_AFTER,
    AgentError,
    Backoff,
    Credentials,
    OpencodeConnector,
    TunnelAgent,
    TunnelClientProtocol,
    check_url,
    client_endpoint,
    register,
    tunnel_url,
)
from cli_server.tap.agent import Options
from cli_server.tunnel.frames import Frame, decode
from cli_server.tunnel.mux import OPEN_TIMEOUT, WINDOW, Session, Stream
from tests.unit.deferreds import failure_of, result_of
from tests.unit.streams import RecordingPeer

SERVER = "http://server.example:8080"
OPENCODE = "http://127.0.0.1:4096"
TOKEN = "tunnel-token-that-must-not-leak"
CREDENTIALS = Credentials(
    server=SERVER,
    sandbox_id="sb-1",
    workspace_id="ws-1",
    tunnel_token=TOKEN,
    name="laptop",
    opencode_url=OPENCODE,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- Backoff ---------------------------------------------------------------------------------


def test_backoff_doubles_up_to_a_minute() -> None:
    """Without jitter the delays are 1, 2, 4 … s, capped at 60 s."""
    backoff = Backoff(random=lambda: 1.0)
    assert [backoff(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_jitter_takes_off_at_most_half() -> None:
    """The most jitter halves each delay; any jitter stays within [delay/2, delay]."""
    halved = Backoff(random=lambda: 0.0)
    assert [halved(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    jittered = Backoff(random=random.Random(7).random)
    for n, delay in enumerate([1, 2, 4, 8, 16, 32, 60, 60, 60, 60], 1):
        assert delay / 2 <= jittered(n) <= delay


def test_backoff_reset_starts_again_at_one_second() -> None:
    """After reset() the next delay is 1 s again, then doubling resumes."""
    backoff = Backoff(random=lambda: 1.0)
    for n in range(1, 6):
        backoff(n)
    backoff.reset()
    assert [backoff(n) for n in range(1, 4)] == [1, 2, 4]


def test_backoff_survives_days_of_failures() -> None:
    """Thousands of failures in a row (a server down over a weekend) still give 60 s."""
    backoff = Backoff(random=lambda: 1.0)
    delays = [backoff(n) for n in range(1, 5001)]
    assert delays[-1] == 60
    backoff.reset()
    assert backoff(1) == 1


# -- TunnelAgent: what a disconnect means ----------------------------------------------------


class RunningAgent:
    """A TunnelAgent started with saved credentials on a MemoryReactorClock: its
    ClientService dials the server (in memory) and retries on the reactor's clock."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "agent.json"
        CREDENTIALS.save(self.config)
        self.reactor = MemoryReactorClock()
        self.fatal: list[str] = []
        self.agent = TunnelAgent(self.reactor, self.config, on_fatal=self.fatal.append)
        self.agent.backoff = Backoff(random=lambda: 1.0)
        self.agent.startService()
        assert self.fatal == []
        assert self.dials() == 1

    def dials(self) -> int:
        """How many TCP connections to the server were attempted."""
        return sum(1 for host, port, *_ in self.reactor.tcpClients if port == 8080)

    def refuse(self) -> None:
        """The server refuses the last connection attempt."""
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(TCPConnectionRefused()))
        self.reactor.advance(1)  # HostnameEndpoint gives up on its only address

    @property
    def retrying(self) -> bool:
        return self.agent.dialling


@pytest.mark.parametrize(
    ("goaway", "words"),
    [
        ("revoked", ["the server's words", "register again", "--code"]),
        ("replaced", ["another agent", "same credentials"]),
        ("version", ["protocol version", "upgrade"]),
    ],
)
def test_fatal_goaway_stops_the_agent(tmp_path: Path, goaway: str, words: list[str]) -> None:
    """A goaway the agent cannot get past reports one clear line and stops retrying."""
    running = RunningAgent(tmp_path)
    running.refuse()
    running.reactor.advance(2)
    assert running.dials() == 2  # it was retrying
    running.agent.disconnected((goaway, "the server's words"), None, "bye", was_up=True)
    assert len(running.fatal) == 1
    for word in words:
        assert word in running.fatal[0]
    assert "\n" not in running.fatal[0]
    assert not running.retrying
    running.reactor.advance(600)
    assert running.dials() == 2


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_stops_the_agent(tmp_path: Path, status: int) -> None:
    """The server refusing the token (HTTP 401/403 on the upgrade) is fatal too."""
    running = RunningAgent(tmp_path)
    running.agent.disconnected(None, status, f"HTTP {status}", was_up=False)
    assert len(running.fatal) == 1
    assert "refused this agent's token" in running.fatal[0]
    assert "--code" in running.fatal[0]
    assert not running.retrying
    running.reactor.advance(600)
    assert running.dials() == 1


@pytest.mark.parametrize(
    ("goaway", "status", "was_up"),
    [
        (None, None, True),  # the connection dropped
        (None, None, False),  # could not connect
        (("restarting", "the server is stopping"), None, True),
        (("timeout", "the peer stopped answering"), None, True),
        (("protocol", "unexpected frame"), None, True),
        (None, 502, False),  # a proxy in front of a server that is down
        (None, 404, False),
    ],
)
def test_other_disconnects_retry(
    tmp_path: Path, goaway: tuple[str, str] | None, status: int | None, was_up: bool
) -> None:
    """Anything else is worth another try: the service keeps dialling."""
    running = RunningAgent(tmp_path)
    running.agent.disconnected(goaway, status, "connection lost", was_up=was_up)
    assert running.fatal == []
    assert running.retrying
    running.refuse()
    running.reactor.advance(1)
    assert running.dials() == 2


def test_backoff_resets_only_after_a_stable_connection() -> None:
    """A connection that lasted STABLE_AFTER seconds resets the backoff; a shorter one, or a
    failed attempt however long ago, does not."""
    clock = Clock()
    agent = TunnelAgent(clock, Path("unused.json"), backoff=Backoff(random=lambda: 1.0))
    session = Session(clock, lambda _: None, lambda *_: None, is_server=False)
    session.version = 1
    for n in range(1, 5):
        agent.backoff(n)  # 1, 2, 4, 8 s

    agent.connected(session)
    clock.advance(STABLE_AFTER - 0.5)
    agent.disconnected(None, None, "connection lost", was_up=True)
    assert agent.backoff(5) == 16  # a flapping connection keeps backing off

    clock.advance(STABLE_AFTER * 10)
    agent.disconnected(None, None, "connection refused", was_up=False)
    assert agent.backoff(6) == 32  # time spent failing is not a stable connection

    agent.connected(session)
    clock.advance(STABLE_AFTER)
    agent.disconnected(None, None, "connection lost", was_up=True)
    assert agent.backoff(1) == 1


def test_disconnect_after_stop_is_quiet(tmp_path: Path) -> None:
    """Once the service stopped, an ordinary disconnect neither fails nor restarts it."""
    running = RunningAgent(tmp_path)
    running.agent.stopService()
    running.agent.disconnected(None, None, "connection lost", was_up=True)
    assert running.fatal == []
    assert not running.retrying
    running.reactor.advance(600)
    assert running.dials() == 1


class RecordingAgent:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, str] | None, int | None, str, bool]] = []

    def disconnected(
        self, goaway: tuple[str, str] | None, status: int | None, why: str, was_up: bool
    ) -> None:
        self.calls.append((goaway, status, why, was_up))


def closed_protocol(status_line: str | None, reason: str | None) -> tuple[RecordingAgent, Failure]:
    """A TunnelClientProtocol closed before the welcome; what it told the agent, and how its
    ``welcomed`` failed."""
    protocol = TunnelClientProtocol()
    agent = RecordingAgent()
    factory: Any = type("Factory", (), {"agent": agent})()
    protocol.factory = factory
    if status_line is not None:
        protocol.http_status_line = status_line
    protocol.onClose(False, 1006, reason)
    return agent, failure_of(protocol.welcomed)


def test_client_protocol_reports_the_http_status() -> None:
    """A refused upgrade reaches disconnected() as its HTTP status (what makes 401 fatal)."""
    agent, why = closed_protocol("HTTP/1.1 401 Unauthorized", None)
    assert agent.calls == [(None, 401, "HTTP 401", False)]
    assert why.check(ConnectionDone)
    agent, _ = closed_protocol(None, "connection was closed uncleanly")
    assert agent.calls == [(None, None, "connection was closed uncleanly", False)]


# -- Credentials -----------------------------------------------------------------------------


def test_save_is_private(tmp_path: Path) -> None:
    """save() makes the directory 0700 and the file 0600, whatever was there before."""
    path = tmp_path / "home" / ".cli-server" / "agent.json"
    old_umask = os.umask(0o022)
    try:
        CREDENTIALS.save(path)
        assert mode(path.parent) == 0o700
        assert mode(path) == 0o600
        path.parent.chmod(0o755)
        path.chmod(0o644)
        CREDENTIALS.save(path)
    finally:
        os.umask(old_umask)
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["agent.json"]  # no .tmp left


def test_load_round_trips(tmp_path: Path) -> None:
    """What save() wrote, load() reads back equal, with or without the Anthropic proxy."""
    path = tmp_path / "agent.json"
    CREDENTIALS.save(path)
    assert Credentials.load(path) == CREDENTIALS
    with_key = Credentials(
        **{**json.loads(path.read_text()), "anthropic": {"base_url": "u", "api_key": "k"}}
    )
    with_key.save(path)
    assert Credentials.load(path) == with_key
    assert json.loads(path.read_text())["tunnel_token"] == TOKEN


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    """A missing file says where it looked and how to register."""
    path = tmp_path / "nowhere" / "agent.json"
    with pytest.raises(AgentError) as e:
        Credentials.load(path)
    message = str(e.value)
    assert str(path) in message
    assert "--code" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b'"agent"',
        b'{"server": "http://x"}',
        json.dumps({**asdict(CREDENTIALS), "extra": 1}).encode(),
        b"\xff\xfe\x00garbage",
    ],
    ids=["empty", "broken", "list", "string", "missing-keys", "unknown-key", "not-utf8"],
)
def test_load_of_a_garbled_file(tmp_path: Path, content: bytes) -> None:
    """A file that is not our JSON gives one line naming the file, not a traceback."""
    path = tmp_path / "agent.json"
    path.write_bytes(content)
    with pytest.raises(AgentError) as e:
        Credentials.load(path)
    message = str(e.value)
    assert str(path) in message
    assert "register again" in message
    assert "\n" not in message


def test_load_of_a_directory(tmp_path: Path) -> None:
    """An unreadable path is reported the same way."""
    with pytest.raises(AgentError, match="cannot read"):
        Credentials.load(tmp_path)


def test_repr_hides_secrets() -> None:
    """Neither the tunnel token nor the proxy key shows up in a repr (or a log line)."""
    credentials = Credentials(
        **{**asdict(CREDENTIALS), "anthropic": {"base_url": "u", "api_key": "sk-proxy"}}
    )
    for text in (repr(credentials), str(credentials), f"{credentials}"):
        assert TOKEN not in text
        assert "sk-proxy" not in text
        assert "sb-1" in text


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "checked"),
    [
        ("http://server", "http://server"),
        ("https://cli.example.com/", "https://cli.example.com"),
        ("https://cli.example.com:8443/base/", "https://cli.example.com:8443/base"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_check_url_accepts(url: str, checked: str) -> None:
    assert check_url("--server", url) == checked


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://server", "http:// or https://"),
        ("ws://server", "http:// or https://"),
        ("server:8080", "http:// or https://"),
        ("cli.example.com", "http:// or https://"),
        ("http://", "with a host"),
        ("https:///path", "with a host"),
        ("http://server:99999", "port"),
        ("http://server:http", "port"),
        ("http://server:-1", "port"),
        ("http://server:0", "port"),
    ],
)
def test_check_url_rejects(url: str, words: str) -> None:
    """A bad URL is refused with the option and the URL named."""
    with pytest.raises(AgentError) as e:
        check_url("--opencode-url", url)
    message = str(e.value)
    assert message.startswith(f"--opencode-url {url!r}:")
    assert words in message


@pytest.mark.parametrize(
    ("server", "url"),
    [
        ("http://server.example:8080", "ws://server.example:8080/api/tunnel/sb-1"),
        ("https://cli.example.com", "wss://cli.example.com/api/tunnel/sb-1"),
        ("https://example.com/cli", "wss://example.com/cli/api/tunnel/sb-1"),
        ("https://example.com/cli/", "wss://example.com/cli/api/tunnel/sb-1"),
    ],
)
def test_tunnel_url(server: str, url: str) -> None:
    """http becomes ws, https becomes wss, and a path prefix is kept."""
    assert tunnel_url(server, "sb-1") == url


def dial(url: str) -> tuple[str, int, float, StringTransport]:
    """Connect client_endpoint(url) in memory: the address and timeout it dialled, and what
    it sent first."""
    reactor = MemoryReactorClock()
    endpoint = client_endpoint(reactor, url)
    endpoint.connect(Factory.forProtocol(Protocol))
    [(host, port, factory, timeout, _)] = reactor.tcpClients
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    return host, port, timeout, transport


@pytest.mark.parametrize(
    ("url", "port"),
    [("http://server.example", 80), ("ws://server.example:8080/x", 8080)],
)
def test_client_endpoint_plain(url: str, port: int) -> None:
    """http/ws dial plain TCP, to the URL's port or 80, within CONNECT_TIMEOUT."""
    _, dialled, timeout, transport = dial(url)
    assert (dialled, timeout) == (port, CONNECT_TIMEOUT)
    assert transport.value() == b""  # nothing said before the application speaks


@pytest.mark.parametrize(
    ("url", "port"),
    [("https://server.example", 443), ("wss://server.example:8443/x", 8443)],
)
def test_client_endpoint_tls(url: str, port: int) -> None:
    """https/wss dial TLS to the URL's port or 443, naming the host (SNI)."""
    _, dialled, timeout, transport = dial(url)
    assert (dialled, timeout) == (port, CONNECT_TIMEOUT)
    hello = transport.value()
    assert hello[:1] == b"\x16"  # a TLS handshake record: the ClientHello
    assert b"server.example" in hello


# -- twistd cli-agent options ----------------------------------------------------------------


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def usage_error(*argv: str) -> str:
    with pytest.raises(usage.UsageError) as e:
        parse(*argv)
    return str(e.value)


def test_options_first_time(tmp_path: Path) -> None:
    """A first-time command parses, with the URL normalised and the config made absolute."""
    config = tmp_path / "agent.json"
    options = parse(
        "--server",
        "https://cli.example.com/",
        "--code",
        "ABCD-1234",
        "--name",
        " laptop ",
        "--opencode-url",
        "http://127.0.0.1:5000",
        "--use-server-key",
        "--config",
        str(config),
    )
    assert options["server"] == "https://cli.example.com"
    assert options["code"] == "ABCD-1234"
    assert options["name"] == "laptop"
    assert options["opencode-url"] == "http://127.0.0.1:5000"
    assert options["use-server-key"]
    assert options["config"] == config
    assert options["config"].is_absolute()


def test_options_name_defaults_to_the_hostname(tmp_path: Path) -> None:
    options = parse("--server", SERVER, "--code", "C", "--config", str(tmp_path / "a.json"))
    assert options["name"] == socket.gethostname().strip()


def test_options_afterwards(tmp_path: Path) -> None:
    """With saved credentials no option is needed."""
    config = tmp_path / "agent.json"
    CREDENTIALS.save(config)
    options = parse("--config", str(config))
    assert (options["server"], options["code"], options["config"]) == (None, None, config)


def test_options_config_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative --config is resolved now: twistd may change directory later."""
    monkeypatch.chdir(tmp_path)
    CREDENTIALS.save(tmp_path / "agent.json")
    assert parse("--config", "agent.json")["config"] == tmp_path / "agent.json"


def test_options_code_needs_server(tmp_path: Path) -> None:
    message = usage_error("--code", "C", "--config", str(tmp_path / "a.json"))
    assert "--code needs --server" in message


def test_options_server_key_needs_code(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    CREDENTIALS.save(config)
    message = usage_error("--use-server-key", "--config", str(config))
    assert "--use-server-key" in message
    assert "--code" in message


def test_options_without_credentials_or_code(tmp_path: Path) -> None:
    """No code and nothing saved: the error names the file it looked for."""
    config = tmp_path / "missing" / "agent.json"
    for argv in (["--config", str(config)], ["--server", SERVER, "--config", str(config)]):
        message = usage_error(*argv)
        assert f"no saved credentials in {config}" in message
        assert "--code" in message


@pytest.mark.parametrize("option", ["--server", "--opencode-url"])
def test_options_bad_urls(tmp_path: Path, option: str) -> None:
    argv = ["--server", SERVER, "--code", "C", "--config", str(tmp_path / "a.json")]
    argv += [option, "ftp://nope"]
    message = usage_error(*argv)
    assert message.startswith(f"{option} 'ftp://nope':")


def test_options_bad_name(tmp_path: Path) -> None:
    config = str(tmp_path / "a.json")
    for name in ("   ", "x" * 101):
        message = usage_error("--server", SERVER, "--code", "C", "--name", name, "--config", config)
        assert "--name must be 1 to 100 characters" in message


# -- cli-server ------------------------------------------------------------------------------


def test_twistd_argv() -> None:
    """Our two commands become foreground twistd runs without a pid file; others are not
    ours."""
    twistd = ["twistd", "--nodaemon", "--pidfile="]
    assert cli.twistd_argv(["serve"]) == [*twistd, "cli-server"]
    assert cli.twistd_argv(["serve", "--listen", "tcp:8080"]) == [
        *twistd,
        *["cli-server", "--listen", "tcp:8080"],
    ]
    assert cli.twistd_argv(["agent", "connect", "--code", "C", "--server", SERVER]) == [
        *twistd,
        *["cli-agent", "--code", "C", "--server", SERVER],
    ]
    for argv in ([], ["agent"], ["agent", "disconnect"], ["connect"], ["--help"], ["srv"]):
        assert cli.twistd_argv(argv) is None, argv


@pytest.mark.parametrize("argv", [[], ["bogus"], ["agent"], ["agent", "status"]])
def test_main_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Anything else exits with status 2 and the usage on stderr."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: cli-server serve")
    assert "cli-server agent connect" in err


def test_main_runs_twistd(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command of ours runs twistd with the translated command line."""
    import twisted.scripts.twistd

    seen: list[list[str]] = []
    monkeypatch.setattr(sys, "argv", ["cli-server"])
    monkeypatch.setattr(twisted.scripts.twistd, "run", lambda: seen.append(list(sys.argv)))
    cli.main(["agent", "connect", "--opencode-url", OPENCODE])
    assert seen == [["twistd", "--nodaemon", "--pidfile=", "cli-agent", "--opencode-url", OPENCODE]]


# -- register --------------------------------------------------------------------------------


class FakeServer(Resource):
    """``POST /api/agent/register`` answering like cli-server (or not)."""

    isLeaf = True

    def __init__(self, code: int, body: bytes, content_type: bytes = b"application/json"):
        super().__init__()
        self.code = code
        self.body = body
        self.content_type = content_type
        self.requests: list[tuple[bytes, bytes, Any]] = []

    def render_POST(self, request: IRequest) -> bytes:
        req: Any = request
        self.requests.append((req.path, req.getHeader(b"content-type"), json.load(req.content)))
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", self.content_type)
        return self.body


ANSWER = {
    "sandbox_id": "sb-9",
    "workspace_id": "ws-3",
    "tunnel_token": "fresh-token",
    "name": "laptop (2)",
}


def registering(server: FakeServer, use_server_key: bool = False) -> Deferred[Credentials]:
    stub = StubTreq(server)
    clock = Clock()
    d = Deferred.fromCoroutine(
        register(clock, SERVER, "ABCD-1234", "laptop", OPENCODE, use_server_key, http=stub)
    )
    stub.flush()
    assert clock.getDelayedCalls() == []  # the request's timeout was cancelled
    return d


def registration_error(server: FakeServer) -> str:
    failure = failure_of(registering(server))
    assert failure.check(AgentError), failure
    message = str(failure.value)
    assert "\n" not in message
    return message


def test_register() -> None:
    """201 with the server's JSON becomes Credentials; the request says what the server
    reads."""
    anthropic = {"base_url": "http://server.example:8080/anthropic", "api_key": "sk-p"}
    server = FakeServer(201, json.dumps({**ANSWER, "anthropic": anthropic}).encode())
    credentials = result_of(registering(server, use_server_key=True))
    assert credentials == Credentials(
        server=SERVER,
        sandbox_id="sb-9",
        workspace_id="ws-3",
        tunnel_token="fresh-token",
        name="laptop (2)",
        opencode_url=OPENCODE,
        anthropic=anthropic,
    )
    assert server.requests == [
        (
            b"/api/agent/register",
            b"application/json; charset=UTF-8",
            {"code": "ABCD-1234", "name": "laptop", "use_server_key": True},
        )
    ]


def test_register_refused_code() -> None:
    body = {"error": {"code": "invalid_code", "message": "this code is unknown"}}
    message = registration_error(FakeServer(401, json.dumps(body).encode()))
    assert "expired" in message
    assert "new one from the dashboard" in message


def test_register_other_errors_show_the_servers_message() -> None:
    body = {"error": {"code": "bad_request", "message": "name is too long"}}
    message = registration_error(FakeServer(400, json.dumps(body).encode()))
    assert message == "registration failed (400): name is too long"


@pytest.mark.parametrize(
    ("code", "body"),
    [
        (201, {"sandbox_id": "sb-9"}),  # no token
        (201, ["not", "an", "object"]),
        (502, {"error": "bad gateway"}),  # someone else's JSON error
        (500, {"error": None}),
    ],
)
def test_register_odd_json(code: int, body: Any) -> None:
    message = registration_error(FakeServer(code, json.dumps(body).encode()))
    assert message == f"registration failed ({code}): no details"


@pytest.mark.parametrize("code", [200, 401, 502])
def test_register_not_a_cli_server(code: int) -> None:
    """An HTML page (a wrong URL, a captive portal) is not mistaken for an answer."""
    server = FakeServer(code, b"<html><body>Welcome</body></html>", b"text/html")
    message = registration_error(server)
    assert message == f"{SERVER} did not answer like a cli-server; check --server"


def test_register_unreachable() -> None:
    class Unreachable:
        def post(self, url: str, **kwargs: Any) -> Deferred[Any]:
            return fail(TCPConnectionRefused("127.0.0.1", 8080))

    d = Deferred.fromCoroutine(
        register(Clock(), SERVER, "C", "laptop", OPENCODE, False, http=Unreachable())
    )
    failure = failure_of(d)
    assert failure.check(AgentError)
    message = str(failure.value)
    assert message.startswith(f"cannot reach the server at {SERVER}: ")
    assert "refused" in message


def test_register_gives_up_after_thirty_seconds() -> None:
    """A server that never answers: the request is cancelled after 30 s and the agent says
    it cannot reach the server (no timer is left behind)."""
    asked: list[Deferred[Any]] = []

    class Silent:
        def post(self, url: str, **kwargs: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            asked.append(d)
            return d

    clock = Clock()
    d = Deferred.fromCoroutine(
        register(clock, SERVER, "C", "laptop", OPENCODE, False, http=Silent())
    )
    clock.advance(29)
    assert not d.called and len(asked) == 1
    clock.advance(1)
    failure = failure_of(d)
    assert failure.check(AgentError)
    assert str(failure.value).startswith(f"cannot reach the server at {SERVER}: ")
    assert clock.getDelayedCalls() == []


# -- TunnelAgent start-up --------------------------------------------------------------------


def test_agent_registers_then_dials(tmp_path: Path) -> None:
    """With a code the agent registers, saves the credentials (and the proxy's env file)
    privately, then dials the server."""
    anthropic = {"base_url": "http://server.example:8080/anthropic", "api_key": "sk-p"}
    stub = StubTreq(FakeServer(201, json.dumps({**ANSWER, "anthropic": anthropic}).encode()))
    reactor = MemoryReactorClock()
    config = tmp_path / "dot" / "agent.json"
    fatal: list[str] = []
    agent = TunnelAgent(
        reactor,
        config,
        server=SERVER,
        code="ABCD-1234",
        name="laptop",
        use_server_key=True,
        on_fatal=fatal.append,
        http=stub,
    )
    agent.startService()
    stub.flush()
    assert fatal == []
    assert agent.credentials == Credentials.load(config)
    assert agent.credentials.tunnel_token == "fresh-token"
    assert agent.credentials.opencode_url == "http://127.0.0.1:4096"
    env = config.with_name("anthropic.env")
    assert env.read_text() == (
        "ANTHROPIC_BASE_URL=http://server.example:8080/anthropic\nANTHROPIC_API_KEY=sk-p\n"
    )
    assert (mode(config.parent), mode(config), mode(env)) == (0o700, 0o600, 0o600)
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 8080)]
    agent.stopService()


def test_agent_without_credentials_stops(tmp_path: Path) -> None:
    fatal: list[str] = []
    agent = TunnelAgent(MemoryReactorClock(), tmp_path / "agent.json", on_fatal=fatal.append)
    agent.startService()
    assert len(fatal) == 1
    assert f"no saved credentials in {tmp_path / 'agent.json'}" in fatal[0]


def test_agent_refuses_credentials_of_another_server(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    CREDENTIALS.save(config)
    fatal: list[str] = []
    reactor = MemoryReactorClock()
    agent = TunnelAgent(reactor, config, server="https://other.example", on_fatal=fatal.append)
    agent.startService()
    assert fatal == [
        f"{config} belongs to {SERVER}; pass --code to register with https://other.example, "
        "or --config for another file"
    ]
    assert reactor.tcpClients == []


def test_agent_remembers_a_new_opencode_url(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    CREDENTIALS.save(config)
    agent = TunnelAgent(MemoryReactorClock(), config, opencode_url="http://127.0.0.1:5000")
    agent.startService()
    assert Credentials.load(config).opencode_url == "http://127.0.0.1:5000"
    assert Credentials.load(config).tunnel_token == TOKEN
    agent.stopService()


# -- OpencodeConnector -----------------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """opencode's endpoint: each connect() waits until the test says how it went."""

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[IProtocol]]] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = Deferred()
        self.attempts.append((protocolFactory, d))
        return d

    def succeed(self) -> tuple[IProtocol, StringTransport]:
        """The last attempt connects: opencode's side of it, and its TCP transport."""
        factory, d = self.attempts[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4096))
        assert protocol is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4096))
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol, transport

    def refuse(self) -> None:
        self.attempts[-1][1].errback(TCPConnectionRefused("127.0.0.1", 4096))


Browser = RecordingPeer  # The server's end of a stream (the proxied browser request).


class Tunnel:
    """A server Session and the agent's Session (made by TunnelAgent.new_session, so its
    streams go to the connector) back to back in memory."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.connector = OpencodeConnector(self.endpoint, OPENCODE)
        self.to_agent: deque[bytes] = deque()
        self.to_server: deque[bytes] = deque()
        self.agent_sent: list[Frame] = []
        self.closes: list[tuple[int, str]] = []
        agent = TunnelAgent(self.clock, tmp_path / "agent.json")
        agent.set_up(CREDENTIALS, self.connector)
        self.agent = agent.new_session(self._agent_send, self._close)
        self.server = Session(
            self.clock, self.to_agent.append, self._close, is_server=True, label="sb-1"
        )
        self.server.start()
        self.agent.start()
        self.pump()
        assert self.server.version == self.agent.version == 2

    def _agent_send(self, message: bytes) -> None:
        self.agent_sent.append(decode(message))
        self.to_server.append(message)

    def _close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def pump(self) -> None:
        while self.to_agent or self.to_server:
            if self.to_agent:
                self.agent.message_received(self.to_agent.popleft())
            if self.to_server:
                self.server.message_received(self.to_server.popleft())

    def open(self) -> Deferred[Stream]:
        """The server opens a stream; the agent starts connecting it to opencode."""
        d = self.server.open_stream()
        self.pump()
        return d

    def connect(self) -> tuple[Stream, Browser, IProtocol, StringTransport]:
        """A stream opened and connected: (server stream, browser, opencode's side of the
        TCP connection, its transport)."""
        d = self.open()
        assert not d.called  # the stream opens only once opencode answered
        protocol, transport = self.endpoint.succeed()
        self.pump()
        stream = result_of(d)
        browser = Browser()
        stream.attach(browser)
        return stream, browser, protocol, transport


def test_connected_stream_carries_bytes_both_ways(tmp_path: Path) -> None:
    """Once opencode accepted the TCP connection the stream opens, and bytes flow both ways
    until opencode closes."""
    tunnel = Tunnel(tmp_path)
    stream, browser, opencode, transport = tunnel.connect()
    assert [f.type for f in tunnel.agent_sent if f.stream == stream.id] == ["opened"]

    stream.write(b"GET /session HTTP/1.1\r\nHost: x\r\n\r\n")
    tunnel.pump()
    assert transport.value() == b"GET /session HTTP/1.1\r\nHost: x\r\n\r\n"

    opencode.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    opencode.dataReceived(b"[]")
    tunnel.pump()
    assert bytes(browser.received) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"

    # opencode closes: the browser's stream ends cleanly, after all the bytes
    opencode.connectionLost(Failure(ConnectionDone()))
    tunnel.pump()
    assert len(browser.lost) == 1 and browser.lost[0].check(ConnectionDone)
    assert not transport.disconnected  # not aborted
    assert tunnel.closes == []  # the tunnel itself stays up


def test_flow_control_reaches_opencode(tmp_path: Path) -> None:
    """opencode's TCP connection is paused while the tunnel has no credit, and resumed
    once the server took the bytes; the stream is the producer for opencode's socket."""
    tunnel = Tunnel(tmp_path)
    stream, browser, opencode, transport = tunnel.connect()
    assert transport.streaming and transport.producer is not None
    big = random.Random(1).randbytes(2 * WINDOW + 1)
    opencode.dataReceived(big)
    assert transport.producerState == "paused"
    tunnel.pump()
    assert transport.producerState == "producing"
    assert bytes(browser.received) == big


def test_browser_going_away_aborts_opencodes_request(tmp_path: Path) -> None:
    tunnel = Tunnel(tmp_path)
    stream, _, opencode, transport = tunnel.connect()
    stream.abortConnection()
    tunnel.pump()
    assert transport.disconnected  # aborted, not just closed
    assert transport.producer is None
    opencode.connectionLost(Failure(ConnectionLost()))  # the socket reports it
    tunnel.pump()
    assert [f.type for f in tunnel.agent_sent if f.stream == stream.id] == ["opened"]


def test_browser_closing_closes_opencode_cleanly(tmp_path: Path) -> None:
    tunnel = Tunnel(tmp_path)
    stream, _, _, transport = tunnel.connect()
    stream.loseConnection()
    tunnel.pump()
    assert transport.disconnecting and not transport.disconnected


def test_refused_connection_resets_the_stream(tmp_path: Path) -> None:
    """opencode not listening: the server's open fails with a message naming the URL."""
    tunnel = Tunnel(tmp_path)
    d = tunnel.open()
    tunnel.endpoint.refuse()
    tunnel.pump()
    failure = failure_of(d)
    assert failure.check(ConnectError)
    assert f"opencode is not reachable on the agent's machine ({OPENCODE})" in str(failure.value)
    [reset] = [f for f in tunnel.agent_sent if f.type == "reset"]
    assert OPENCODE in reset["reason"]
    assert tunnel.server.streams == tunnel.agent.streams == 0


def warnings_in(events: Sequence[dict[str, Any]]) -> list[str]:
    return [
        e["log_format"].format(**e)
        for e in events
        if e["log_level"] == LogLevel.warn and "not reachable" in e["log_format"]
    ]


def test_refusals_warn_once_until_opencode_answers(tmp_path: Path) -> None:
    tunnel = Tunnel(tmp_path)
    with capturedLogs() as events:
        for _ in range(3):
            d = tunnel.open()
            tunnel.endpoint.refuse()
            tunnel.pump()
            failure_of(d)
        warned = warnings_in(events)
        assert len(warned) == 1
        assert OPENCODE in warned[0] and "opencode serve" in warned[0]

        tunnel.connect()  # opencode came back
        d = tunnel.open()
        tunnel.endpoint.refuse()  # and went away again: worth a warning
        tunnel.pump()
        failure_of(d)
        assert len(warnings_in(events)) == 2


def test_stream_closed_before_opencode_answered(tmp_path: Path) -> None:
    """The server gave up on the stream while opencode was slow to accept: the late TCP
    connection is closed and the stream is not reopened."""
    tunnel = Tunnel(tmp_path)
    d = tunnel.open()
    tunnel.clock.advance(OPEN_TIMEOUT)  # the server resets the stream
    tunnel.pump()
    failure_of(d)
    opencode, transport = tunnel.endpoint.succeed()
    tunnel.pump()
    assert transport.disconnecting
    assert [f.type for f in tunnel.agent_sent if f.stream] == []  # no opened, no end
    opencode.connectionLost(Failure(ConnectionDone()))
    tunnel.pump()
    assert [f.type for f in tunnel.agent_sent if f.stream] == []


def test_tunnel_lost_aborts_opencode_connections(tmp_path: Path) -> None:
    tunnel = Tunnel(tmp_path)
    _, _, _, transport = tunnel.connect()
    tunnel.agent.connection_lost()
    assert transport.disconnected
