"""The agent on a laptop's network, end to end with real components: a real server behind TLS
with a private CA made here, a real HTTP CONNECT proxy (a few dozen lines of Twisted, below),
and real `twistd cli-agent` / `cli-server agent connect` processes stopped by signals."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from .conftest import _reactor
from .daemon import twistd
from .helpers import wait_until
from .test_tunnel import Laptop, Team, team  # noqa: F401  (the fixture)
from .upstream import Recorder, serve

# -- a private CA and the server's certificate ------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca_and_server_cert(root: Path) -> tuple[Path, Path]:
    """``ca.pem`` (a private CA) and ``server.pem`` (key + certificate for DNS:localhost only,
    signed by that CA)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("cli-server test CA"))
        .issuer_name(_name("cli-server test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = root / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_file = root / "server.pem"
    server_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return ca_file, server_file


# -- a small HTTP CONNECT proxy ----------------------------------------------------------------


class _Upstream(Protocol):
    def __init__(self, client: _ProxyClient) -> None:
        self.client = client

    def connectionMade(self) -> None:
        assert self.transport is not None and self.client.transport is not None
        mine: Any = self.transport
        theirs: Any = self.client.transport
        mine.registerProducer(theirs, True)
        theirs.registerProducer(mine, True)

    def dataReceived(self, data: bytes) -> None:
        assert self.client.transport is not None
        self.client.transport.write(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if self.client.transport is not None:
            self.client.transport.loseConnection()


class _ProxyClient(Protocol):
    def __init__(self, proxy: ConnectProxy) -> None:
        self.proxy = proxy
        self.head = b""
        self.upstream: _Upstream | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.upstream is not None:
            assert self.upstream.transport is not None
            self.upstream.transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, rest = self.head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        self.proxy.seen.append((lines[0], headers.get("Proxy-Authorization")))
        assert self.transport is not None
        method, target, _ = lines[0].split(" ", 2)
        if self.proxy.authorization and headers.get("Proxy-Authorization") != (
            self.proxy.authorization
        ):
            self.transport.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
            )
            self.transport.loseConnection()
            return
        host, port = target.rsplit(":", 1)
        if method != "CONNECT" or host not in ("localhost", "127.0.0.1"):
            self.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()
            return
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        upstream = _Upstream(self)
        d = connectProtocol(
            TCP4ClientEndpoint(self.proxy.reactor, "127.0.0.1", int(port)), upstream
        )

        def connected(_: object) -> None:
            assert self.transport is not None and upstream.transport is not None
            self.upstream = upstream
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.transport.write(rest)
            self.transport.resumeProducing()  # type: ignore[attr-defined]

        def failed(_: Failure) -> None:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()

        d.addCallbacks(connected, failed)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.loseConnection()


@attrs.define
class ConnectProxy:
    """Opens CONNECT tunnels to this machine only; remembers every request line it saw."""

    reactor: Any
    authorization: str | None = None  # the Proxy-Authorization it insists on
    seen: list[tuple[str, str | None]] = attrs.Factory(list)

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: _ProxyClient(self))


# -- the laptop, with its own environment --------------------------------------------------------


@attrs.define
class NetLaptop(Laptop):
    env: dict[str, str] = attrs.Factory(dict)
    command: str = "twistd"

    def start(self, *args: str) -> None:
        self.runs += 1
        env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in ("ssl_cert_file", "https_proxy", "http_proxy", "no_proxy")
        }
        env.update(HOME=str(self.root / "home"), **self.env)
        if self.command == "twistd":
            argv = [twistd(), "-n", "--pidfile=", f"--logfile={self.log}", "cli-agent", *args]
            out: Any = subprocess.DEVNULL
        else:  # `cli-server agent connect` logs to stdout, as people run it
            argv = [str(Path(sys.executable).parent / "cli-server"), "agent", "connect", *args]
            out = self.log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
            cwd=self.root,
            start_new_session=True,
        )
        if out is not subprocess.DEVNULL:
            out.close()

    async def failed(self) -> str:
        """It exits with status 1 by itself: the one line it printed (twistd puts what we
        print on stderr into its log)."""
        assert await self.exited(timeout=30) == 1
        marker = "[stderr#error] "
        lines = [line.split(marker, 1)[1] for line in self.logs().splitlines() if marker in line]
        assert len(lines) == 1, self.logs()
        return lines[0]


@attrs.define
class Tls:
    port: int
    ca_file: Path

    @property
    def server(self) -> str:
        return f"https://localhost:{self.port}"


@pytest_twisted.async_yield_fixture
async def tls(team: Team) -> AsyncIterator[Tls]:  # noqa: F811
    """The team's server also listening with TLS, its certificate from a private CA."""
    ca_file, server_file = make_ca_and_server_cert(team.root)
    endpoint = serverFromString(
        _reactor(),
        f"ssl:0:interface=127.0.0.1:privateKey={server_file}:certKey={server_file}",
    )
    port = await endpoint.listen(team.app.server.router)
    yield Tls(port.getHost().port, ca_file)
    await port.stopListening()


def own_dir(of: Team, name: str) -> Path:
    made = of.root / name
    made.mkdir()
    return made


async def through_the_tunnel(of: Team, recorder: Recorder) -> None:
    """The browser's request reaches the laptop's "opencode" and comes back."""
    sandbox = await of.local_sandbox()
    host, cookie = await of.open(sandbox["id"])
    reply = await of.app.client().call(
        "GET", "/echo", headers={"Host": host, "Cookie": f"cli_sandbox={cookie}"}
    )
    assert reply.code == 200, reply
    assert any(seen["uri"] == "/echo" for seen in recorder.seen)


@pytest_twisted.ensureDeferred
async def test_a_private_ca_is_trusted_only_when_given(team: Team, tls: Tls) -> None:  # noqa: F811
    """Without the CA the agent stops with one line naming --ca-file; with the right CA but a
    host name the certificate does not have it says so; with --ca-file it registers and
    serves through the tunnel; later runs trust SSL_CERT_FILE, and without any CA the
    tunnel's own connection says why it fails."""
    recorder, upstream = serve(_reactor())
    target = f"http://127.0.0.1:{upstream.getHost().port}"
    code = await team.code()
    try:
        plain = NetLaptop(own_dir(team, "plain"), tls.server, target)
        plain.register(code)
        line = await plain.failed()
        assert line.startswith(f"cli-agent: cannot register with {tls.server}: "), line
        assert "not signed by a CA this agent trusts" in line
        assert "--ca-file" in line and "SSL_CERT_FILE" in line

        by_ip = NetLaptop(own_dir(team, "by-ip"), f"https://127.0.0.1:{tls.port}", target)
        by_ip.register(code, "--ca-file", str(tls.ca_file))
        line = await by_ip.failed()
        assert "not valid for the host name '127.0.0.1'" in line, line

        laptop = NetLaptop(team.root, tls.server, target)
        laptop.register(code, "--ca-file", str(tls.ca_file))  # the code was never spent
        await team.wait_status("running")
        await through_the_tunnel(team, recorder)
        laptop.kill()
        await team.wait_status("offline", timeout=60)

        laptop.env = {"SSL_CERT_FILE": str(tls.ca_file)}
        laptop.start()
        await team.wait_status("running")
        await through_the_tunnel(team, recorder)
        laptop.kill()
        await team.wait_status("offline", timeout=60)

        laptop.env = {}
        laptop.start()
        await wait_until(
            _reactor(), lambda: "not signed by a CA this agent trusts" in laptop.logs(), timeout=30
        )
        assert laptop.proc is not None and laptop.proc.poll() is None  # it keeps trying
    finally:
        for one in ("plain", "by_ip", "laptop"):
            running = locals().get(one)
            if running is not None:
                running.kill()
        await upstream.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_agent_goes_through_an_https_proxy(team: Team, tls: Tls) -> None:  # noqa: F811
    """HTTPS_PROXY with a user and password: a wrong password stops the agent with one line
    (and no password in it); the right one registers and carries the tunnel, both through
    CONNECT; the password never appears in the agent's output."""
    reactor = _reactor()
    # user "alice", password "p@ss:word" (percent-encoded in the URL)
    proxy = ConnectProxy(reactor, authorization="Basic YWxpY2U6cEBzczp3b3Jk")
    listening = reactor.listenTCP(0, proxy.factory(), interface="127.0.0.1")
    proxy_url = f"http://alice:{{}}@127.0.0.1:{listening.getHost().port}"
    recorder, upstream = serve(reactor)
    target = f"http://127.0.0.1:{upstream.getHost().port}"
    code = await team.code()
    wrong = NetLaptop(
        own_dir(team, "wrong"), tls.server, target, env={"HTTPS_PROXY": proxy_url.format("x")}
    )
    laptop = NetLaptop(
        team.root, tls.server, target, env={"https_proxy": proxy_url.format("p%40ss%3Aword")}
    )
    try:
        wrong.register(code, "--ca-file", str(tls.ca_file))
        line = await wrong.failed()
        assert "refused CONNECT localhost:" in line and "407" in line, line
        assert "check the user and password in HTTPS_PROXY" in line
        assert proxy.seen[-1][0] == f"CONNECT localhost:{tls.port} HTTP/1.1"

        laptop.register(code, "--ca-file", str(tls.ca_file))
        await team.wait_status("running")
        await through_the_tunnel(team, recorder)
        granted = [line for line, auth in proxy.seen if auth == proxy.authorization]
        # the registration call and the tunnel's WebSocket
        assert granted == [f"CONNECT localhost:{tls.port} HTTP/1.1"] * 2, proxy.seen
        said = laptop.logs() + wrong.logs() + line
        assert "p@ss" not in said and "p%40ss" not in said and "alice" not in said
    finally:
        wrong.kill()
        laptop.kill()
        await upstream.stopListening()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_signals_stop_the_agent_cleanly(team: Team) -> None:  # noqa: F811
    """Ctrl-C on `twistd -n cli-agent`, and a service manager's SIGTERM on `cli-server agent
    connect`: each exits 0 within seconds with one line saying why, and the server shows the
    sandbox offline at once (the agent said goodbye), not after the 45 s dead-peer timeout."""
    recorder, upstream = serve(_reactor())
    laptop = NetLaptop(team.root, team.base, f"http://127.0.0.1:{upstream.getHost().port}")
    heard: list[str] = []

    def hub_said(event: dict[str, Any]) -> None:
        if "disconnected (" in event.get("log_format", ""):
            heard.append(formatEvent(event))

    globalLogPublisher.addObserver(hub_said)
    goodbye = "disconnected (goaway stopping: the agent on the laptop was stopped)"
    try:
        laptop.register(await team.code())
        await team.wait_status("running")
        began = time.monotonic()
        laptop.signal(signal.SIGINT)
        assert await laptop.exited(timeout=10) == 0
        print(f"\nSIGINT to exit: {time.monotonic() - began:.2f} s")
        assert await team.wait_status("offline", timeout=5) < 5
        assert "cli-agent stops: SIGINT received; closing the tunnel" in laptop.logs()
        assert [line.split(" ", 3)[-1] for line in heard] == [goodbye]

        laptop.command = "cli-server"
        laptop.start()
        await team.wait_status("running")
        await through_the_tunnel(team, recorder)
        began = time.monotonic()
        laptop.signal(signal.SIGTERM)
        assert await laptop.exited(timeout=10) == 0
        print(f"SIGTERM to exit: {time.monotonic() - began:.2f} s")
        assert await team.wait_status("offline", timeout=5) < 5
        assert "cli-agent stops: SIGTERM received; closing the tunnel" in laptop.logs()
        assert [line.split(" ", 3)[-1] for line in heard] == [goodbye] * 2
    finally:
        globalLogPublisher.removeObserver(hub_said)
        laptop.kill()
        await upstream.stopListening()
