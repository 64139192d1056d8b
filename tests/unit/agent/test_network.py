"""The agent's way to the server: which proxy (HTTPS_PROXY, NO_PROXY), the CONNECT tunnel
through it, which CAs are trusted (--ca-file, SSL_CERT_FILE), and the one-line explanations
of TLS and proxy failures. In memory: MemoryReactorClock and StringTransport."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity.exceptions import DNSMismatch, VerificationError
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.error import ConnectionRefusedError as TCPConnectionRefused
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from cli_server.agent.http_proxy import ProxyError, bypassed, proxy_for
from cli_server.agent.machine import windows_store
from cli_server.agent.network import CONNECT_TIMEOUT, Network, ReportingEndpoint
from cli_server.agent.service import AgentError, Credentials, TunnelAgent, TunnelClientProtocol
from cli_server.agent.tls import Trust, explain_tls
from tests.unit.deferreds import failure_of, result_of

SECRET = "p@ss:word"
PROXY_ENV = {
    "HTTPS_PROXY": "http://alice:p%40ss%3Aword@proxy.corp:3128",
    "HTTP_PROXY": "http://alice:p%40ss%3Aword@proxy.corp:3128",
}

# -- which proxy -------------------------------------------------------------------------------


def test_https_urls_use_https_proxy() -> None:
    proxy = proxy_for("https://cli.example.com", PROXY_ENV)
    assert proxy is not None
    assert (proxy.host, proxy.port, proxy.variable) == ("proxy.corp", 3128, "HTTPS_PROXY")
    assert proxy.authorization == b"Basic YWxpY2U6cEBzczp3b3Jk"  # alice:p@ss:word, decoded
    assert proxy_for("wss://cli.example.com/api/tunnel/x", PROXY_ENV) == proxy


def test_the_proxys_credentials_never_show() -> None:
    proxy = proxy_for("https://cli.example.com", PROXY_ENV)
    assert str(proxy) == repr(proxy) == "http://proxy.corp:3128"
    assert f"{proxy!r} {[proxy]}".count("alice") == 0


def test_lower_case_wins_and_http_urls_use_http_proxy() -> None:
    environ = {"https_proxy": "lower:8080", "HTTPS_PROXY": "upper:8080", "HTTP_PROXY": "plain"}
    https = proxy_for("https://a.example", environ)
    assert https is not None and (https.host, https.variable) == ("lower", "https_proxy")
    http = proxy_for("http://a.example", environ)
    assert http is not None and (http.host, http.port, http.variable) == ("plain", 80, "HTTP_PROXY")
    assert proxy_for("https://a.example", {}) is None
    assert proxy_for("http://a.example", {"HTTPS_PROXY": "p:1"}) is None


@pytest.mark.parametrize(
    ("host", "no_proxy", "skip"),
    [
        ("cli.example.com", "cli.example.com", True),
        ("cli.example.com", "example.com", True),
        ("cli.example.com", ".example.com", True),
        ("cli.example.com", "*.example.com", True),
        ("cli.example.com", "other.org, example.com:443", True),
        ("cli.example.com", "*", True),
        ("cli.example.com", "ample.com", False),
        ("cli.example.com", "", False),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("10.1.2.3", "192.168.0.0/16,localhost", False),
        ("LOCALHOST", "localhost", True),
    ],
)
def test_no_proxy(host: str, no_proxy: str, skip: bool) -> None:
    assert bypassed(host, {"NO_PROXY": no_proxy}) is skip
    assert (proxy_for(f"https://{host}", {**PROXY_ENV, "no_proxy": no_proxy}) is None) is skip


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("https://proxy.corp:3128", "only http:// proxies work"),
        ("socks5://proxy.corp:1080", "only http:// proxies work"),
        ("http://proxy.corp:99999", "port is not a number"),
    ],
)
def test_proxy_urls_we_cannot_use(value: str, words: str) -> None:
    with pytest.raises(AgentError) as raised:
        proxy_for("https://a.example", {"HTTPS_PROXY": value})
    assert str(raised.value).startswith("HTTPS_PROXY: ")
    assert words in str(raised.value)


@pytest.mark.parametrize(
    "value",
    [
        "http://u:12s/cr3t@proxy.corp:3128",  # an unencoded "/" in the password
        "http://u:s3cr?t@proxy.corp:3128",
        "http://u:s3cr#t@proxy.corp:3128",
        "http://proxy.corp:3128/path",
        "http://proxy.corp:3128/?q=1",
    ],
)
def test_a_proxy_url_with_more_than_host_and_port_is_refused(value: str) -> None:
    """Anything after the port is refused (it usually means a password with an unencoded
    / ? or #, whose rest would be taken for the host): one line that names the variable and
    the fix, and shows nothing of the value."""
    with pytest.raises(AgentError) as raised:
        proxy_for("https://a.example", {"HTTPS_PROXY": value})
    said = str(raised.value)
    assert said == (
        "HTTPS_PROXY: give the proxy as http://host:port, with nothing after the port; a / ? # "
        "or @ in the user or password must be %-encoded (%2F %3F %23 %40)"
    )
    assert proxy_for("https://a.example", {"HTTPS_PROXY": "http://u:12s%2Fcr3t@p:3128/"}) == (
        proxy_for("https://a.example", {"HTTPS_PROXY": "p:3128"})
    )


@pytest.mark.parametrize("value", ["http://[bad", "http://u:s3cr3t@[::1:3128"])
def test_a_proxy_url_that_is_no_url_is_one_line(value: str) -> None:
    """What urllib refuses with a ValueError is one AgentError line, without the value."""
    with pytest.raises(AgentError) as raised:
        proxy_for("https://a.example", {"HTTPS_PROXY": value})
    assert str(raised.value) == "HTTPS_PROXY: not a URL; give the proxy as http://host:port"


# -- the CONNECT tunnel ---------------------------------------------------------------------------


class Inner(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = reason


def through_proxy(url: str, environ: dict[str, str] = PROXY_ENV) -> Any:
    """Connect Network.endpoint(url) in memory: (reactor, the connect Deferred, the proxy's
    transport, the protocol talking to the proxy, the inner protocol made later)."""
    reactor = MemoryReactorClock()
    inner = Inner()
    d = Network(environ=environ).endpoint(reactor, url).connect(Factory.forProtocol(lambda: inner))
    [(_, port, factory, timeout, _)] = reactor.tcpClients  # (names resolve to 127.0.0.1)
    assert (port, timeout) == (3128, CONNECT_TIMEOUT)
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 3128))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return reactor, d, transport, protocol, inner


def test_connect_then_pass_through() -> None:
    """CONNECT host:port with the proxy's authorization; after a 200 the inner protocol gets
    the connection, bytes that came with the answer, and everything after."""
    _, d, transport, protocol, inner = through_proxy("http://cli.example.com:8080/x")
    assert transport.value() == (
        b"CONNECT cli.example.com:8080 HTTP/1.1\r\nHost: cli.example.com:8080\r\n"
        b"Proxy-Authorization: Basic YWxpY2U6cEBzczp3b3Jk\r\n\r\n"
    )
    assert not d.called
    protocol.dataReceived(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n")
    assert not d.called
    protocol.dataReceived(b"\r\nfirst")
    assert result_of(d) is inner
    assert inner.transport is transport
    protocol.dataReceived(b" and more")
    assert inner.received == b"first and more"
    transport.clear()
    inner.transport.write(b"upstream")
    assert transport.value() == b"upstream"
    protocol.connectionLost(Failure(ConnectionDone()))
    assert inner.lost is not None


def test_tls_goes_inside_the_tunnel() -> None:
    """For https the TLS handshake (naming the server, not the proxy) starts only after the
    proxy opened the tunnel."""
    _, d, transport, protocol, _ = through_proxy("https://cli.example.com")
    assert transport.value().startswith(b"CONNECT cli.example.com:443 HTTP/1.1\r\n")
    transport.clear()
    protocol.dataReceived(b"HTTP/1.0 200 OK\r\n\r\n")
    result_of(d)
    hello = transport.value()
    assert hello[:1] == b"\x16" and b"cli.example.com" in hello


@pytest.mark.parametrize(
    ("environ", "hint"),
    [
        (PROXY_ENV, "check the user and password in HTTPS_PROXY"),
        (
            {"HTTPS_PROXY": "proxy.corp:3128"},
            "it wants a user and password: http://user:password@host:port in HTTPS_PROXY",
        ),
    ],
)
def test_a_407_says_what_to_fix(environ: dict[str, str], hint: str) -> None:
    _, d, transport, protocol, inner = through_proxy("https://cli.example.com", environ)
    protocol.dataReceived(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    failure = failure_of(d)
    assert failure.check(ProxyError)
    assert str(failure.value) == (
        "the proxy http://proxy.corp:3128 (HTTPS_PROXY) refused CONNECT cli.example.com:443: "
        f"407 Proxy Authentication Required; {hint}"
    )
    assert transport.disconnecting or getattr(transport, "aborted", False)
    assert inner.transport is None


def test_a_hostile_refusal_is_printable_and_short() -> None:
    """A proxy's refusal reaches the agent's one-line error (and its log) as printable ASCII
    only, at most 100 characters of it: no escape codes, line breaks, bells or filler."""
    _, d, _, protocol, _ = through_proxy("https://cli.example.com")
    reason = b"403 \x1b[2J\x1b]0;owned\x07Forbidden\nX-Injected: 1\x00\xff" + b"A" * 15000
    protocol.dataReceived(b"HTTP/1.1 " + reason + b"\r\nVia: x\r\n\r\n")
    said = str(failure_of(d).value)
    prefix = "the proxy http://proxy.corp:3128 (HTTPS_PROXY) refused CONNECT cli.example.com:443: "
    assert said.startswith(prefix)
    status = said[len(prefix) :]
    assert status.startswith("403 [2J]0;ownedForbidden X-Injected: 1AAAA")
    assert status.endswith("A...") and len(status) == 100
    assert all(" " <= c <= "~" for c in said)


def test_proxy_hangs_up_or_says_nothing() -> None:
    _, d, _, protocol, _ = through_proxy("https://cli.example.com")
    protocol.connectionLost(Failure(ConnectionDone()))
    assert "closed the connection before answering CONNECT" in str(failure_of(d).value)
    reactor, d, _, protocol, _ = through_proxy("https://cli.example.com")
    reactor.advance(CONNECT_TIMEOUT)
    assert "did not answer CONNECT" in str(failure_of(d).value)
    _, d, _, protocol, _ = through_proxy("https://cli.example.com")
    protocol.dataReceived(b"x" * 20000)
    assert "endless head" in str(failure_of(d).value)


def test_proxy_unreachable() -> None:
    reactor = MemoryReactorClock()
    d = Network(environ=PROXY_ENV).endpoint(reactor, "https://cli.example.com")
    connecting = d.connect(Factory.forProtocol(Inner))
    [(_, _, factory, _, _)] = reactor.tcpClients
    factory.clientConnectionFailed(reactor.connectors[0], Failure(TCPConnectionRefused()))
    reactor.advance(CONNECT_TIMEOUT)
    failure = failure_of(connecting)
    assert failure.check(ProxyError)
    assert str(failure.value).startswith(
        "cannot reach the proxy http://proxy.corp:3128 (HTTPS_PROXY): "
    )
    assert SECRET not in str(failure.value) and "alice" not in str(failure.value)


# -- trust ------------------------------------------------------------------------------------


def ca_certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2100, 1, 1))
        .sign(key, hashes.SHA256())
    )
    return cert


def write_ca(path: Path) -> Path:
    pem = ca_certificate().public_bytes(serialization.Encoding.PEM)
    path.write_bytes(b"# a comment\n" + pem * 2)
    return path


def test_trust_chooses_option_then_environment_then_default(tmp_path: Path) -> None:
    env = {"SSL_CERT_FILE": "/env.pem"}
    assert Trust.choose("/opt.pem", env) == Trust(Path("/opt.pem"), "--ca-file")
    assert Trust.choose(None, env, Path("/d.pem")) == Trust(Path("/env.pem"), "SSL_CERT_FILE")
    assert Trust.choose(None, {}, Path("/d.pem")) == Trust(Path("/d.pem"), "the default CA bundle")
    assert Trust.choose(None, {"SSL_CERT_FILE": ""}) == Trust()


def test_a_bundle_is_read(tmp_path: Path) -> None:
    trust = Trust.choose(str(write_ca(tmp_path / "ca.pem")), {}).read()
    assert len(trust.certificates) == 2
    assert trust.read() is trust
    assert trust.for_host("cli.example.com") is not None


def test_windows_trusts_its_certificate_store() -> None:
    """Where OpenSSL cannot read the system's store (Windows), its DER certificates are
    loaded, skipping what does not parse; --ca-file and SSL_CERT_FILE still come first."""
    der = ca_certificate().public_bytes(serialization.Encoding.DER)
    trust = Trust.choose(None, {}, None, store=lambda: [der, b"not a certificate"])
    assert trust.custom and Network(trust).special("https://cli.example.com")
    loaded = trust.read()
    assert (len(loaded.certificates), loaded.source) == (1, "the system's store")
    assert Trust.choose(None, {"SSL_CERT_FILE": "/e.pem"}, None, store=lambda: [der]) == Trust(
        Path("/e.pem"), "SSL_CERT_FILE"
    )
    assert not Trust().custom and not Network().special("https://cli.example.com")
    assert windows_store() == []  # (here: the ssl module has no Windows store to list)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read it (No such file or directory)"),
        (b"not a certificate", "no PEM certificate in it"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "damaged"),
    ],
)
def test_a_bad_bundle_is_one_line(tmp_path: Path, content: bytes | None, words: str) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AgentError) as raised:
        Trust.choose(None, {"SSL_CERT_FILE": str(path)}).read()
    assert str(raised.value).startswith(f"SSL_CERT_FILE {path}: ")
    assert words in str(raised.value)


# -- explanations ---------------------------------------------------------------------------


UNKNOWN_CA = SSL.Error([("SSL routines", "", "certificate verify failed")])
WRONG_HOST = VerificationError(errors=[DNSMismatch("cli.example.com")])


def test_unknown_ca_says_to_give_the_ca() -> None:
    line = explain_tls(UNKNOWN_CA, "cli.example.com", Trust())
    assert line == (
        "the server's certificate (at cli.example.com) is not signed by a CA this agent "
        "trusts; if the server uses a private CA, pass --ca-file with that CA's PEM file (or "
        "set SSL_CERT_FILE)"
    )
    given = Trust(Path("/etc/corp.pem"), "--ca-file")
    line = explain_tls(UNKNOWN_CA, "cli.example.com", given)
    assert line is not None
    assert line.endswith("check that /etc/corp.pem (--ca-file) holds the CA that signed it")


def test_wrong_host_and_plain_http_and_others() -> None:
    line = explain_tls(WRONG_HOST, "10.0.0.5", Trust())
    assert line is not None and line.startswith(
        "the server's certificate is not valid for the host name '10.0.0.5'"
    )
    plain = SSL.Error([("SSL routines", "", "wrong version number")])
    assert explain_tls(plain, "h", Trust()) == (
        "h did not answer TLS: does --server start with http:// there?"
    )
    other = SSL.Error([("SSL routines", "", "sslv3 alert handshake failure")])
    assert explain_tls(other, "h", Trust()) == (
        "the TLS handshake with h failed (SSL routines sslv3 alert handshake failure)"
    )
    assert explain_tls(TCPConnectionRefused(), "h", Trust()) is None


def test_explanations_look_inside_treqs_errors() -> None:
    """treq reports a failed request as ResponseNeverReceived around the real reasons."""
    network = Network()
    wrapped = ResponseNeverReceived([Failure(UNKNOWN_CA)])
    line = network.explain(wrapped, "https://cli.example.com")
    assert line is not None and "not signed by a CA" in line
    refused = ProxyError("the proxy http://p:1 (HTTPS_PROXY) refused CONNECT h:443: 403")
    assert network.explain(ResponseNeverReceived([Failure(refused)]), "https://h") == str(refused)
    assert network.explain(ConnectionDone(), "https://h") is None


def test_the_tunnels_failed_handshake_reaches_the_agent() -> None:
    """Autobahn's onClose only says "closed uncleanly": the agent gets the TLS reason."""

    class Agent:
        calls: list[str] = []

        def explain(self, failure: Failure) -> str | None:
            assert failure.value is not None
            return Network().explain(failure.value, "https://cli.example.com")

        def disconnected(self, goaway: Any, status: Any, why: str, was_up: bool) -> None:
            self.calls.append(why)

    protocol = TunnelClientProtocol()
    agent = Agent()
    protocol.factory = type("Factory", (), {"agent": agent})()  # type: ignore[assignment]
    protocol.lost = Failure(WRONG_HOST)
    protocol.onClose(False, 1006, "connection was closed uncleanly")
    assert len(agent.calls) == 1
    assert agent.calls[0].startswith("the server's certificate is not valid for the host name")
    failure_of(protocol.welcomed)


def test_no_proxy_password_in_any_repr(tmp_path: Path) -> None:
    """ClientService logs its endpoint's repr on every retry: nothing on the way shows the
    proxy's password (or the rest of the environment)."""
    network = Network(environ={**PROXY_ENV, "ANTHROPIC_API_KEY": "sk-secret"})
    agent = TunnelAgent(MemoryReactorClock(), tmp_path / "agent.json", network=network)
    endpoint = ReportingEndpoint(network.endpoint(MemoryReactorClock(), "https://h"), print)
    for shown in (repr(network), repr(agent), repr(endpoint)):
        assert "p%40ss" not in shown and SECRET not in shown and "sk-secret" not in shown


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_bad_ca_file_stops_the_agent_before_it_dials(tmp_path: Path, scheme: str) -> None:
    """An https server: the bundle is read first, and a wrong one is one fatal line with no
    connection attempt. An http server needs no bundle, so it is not read."""
    config = tmp_path / "agent.json"
    Credentials(
        server=f"{scheme}://cli.example.com",
        sandbox_id="sb-1",
        workspace_id="ws-1",
        tunnel_token="t",
        name="laptop",
        opencode_url="http://127.0.0.1:4096",
    ).save(config)
    reactor = MemoryReactorClock()
    fatal: list[str] = []
    missing = tmp_path / "missing.pem"
    network = Network(Trust(missing, "--ca-file"))
    agent = TunnelAgent(reactor, config, on_fatal=fatal.append, network=network)
    agent.startService()
    if scheme == "https":
        assert fatal == [f"--ca-file {missing}: cannot read it (No such file or directory)"]
        assert reactor.tcpClients == []
    else:
        assert fatal == []
        assert len(reactor.tcpClients) == 1
        agent.stopService()
