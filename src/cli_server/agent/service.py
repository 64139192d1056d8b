"""The laptop's side of the tunnel: ``twistd -n cli-agent``.

The agent registers once with a code (or loads the credentials it saved), dials the server's
``/api/tunnel/{id}`` WebSocket through a ``ClientService`` (jittered exponential backoff from
1 s to 60 s, reset after a stable connection), and connects every stream the server opens to
the local opencode over TCP. A tunnel the server revoked, or a token it refuses, stops the
agent with one clear line instead of retrying for ever.
"""

from __future__ import annotations

import json
import os
import random
import sys
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import treq
from attrs import asdict, define, evolve, field, frozen
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from treq.client import HTTPClient
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IProtocol,
    IPushProducer,
    IReactorCore,
    IReactorTCP,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.iweb import IResponse
from zope.interface import implementer

from cli_server._version import __version__
from cli_server.agent.errors import AgentError as AgentError
from cli_server.agent.machine import Platform, PrivateFiles, current
from cli_server.agent.network import CONNECT_TIMEOUT as CONNECT_TIMEOUT
from cli_server.agent.network import IAgentReactor, Network, ReportingEndpoint
from cli_server.plumbing.nodelay import no_delay
from cli_server.plumbing.threads import Runner, synchronous_runner
from cli_server.tunnel.carrier import SessionCarrier
from cli_server.tunnel.frames import MAX_MESSAGE
from cli_server.tunnel.mux import Session, Stream
from cli_server.tunnel.shared_ports import LoopbackEndpoint, check_not_opencode

STABLE_AFTER = 30.0  # a connection that lasted this long resets the backoff
_FATAL_GOAWAY = {
    "revoked": "this local sandbox was deleted from its workspace; register again with a new "
    "code (--code)",
    "replaced": "another agent connected with the same credentials; this one stops",
    "version": "the server speaks another tunnel protocol version; upgrade cli-server here",
}


def default_config_path(platform: Platform | None = None) -> Path:
    return (platform or current()).config_path()


@frozen(repr=False)
class Credentials:
    """What registration returned, kept in ``agent.json`` (0600, in a 0700 directory)."""

    server: str
    sandbox_id: str
    workspace_id: str
    tunnel_token: str
    name: str
    opencode_url: str
    anthropic: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"Credentials(server={self.server!r}, sandbox_id={self.sandbox_id!r})"

    @classmethod
    def load(cls, path: Path) -> Credentials:
        try:
            raw = json.loads(path.read_text())
            made = cls(**raw)
            if not all(isinstance(v, str) for k, v in raw.items() if k != "anthropic"):
                raise TypeError("a field is not a string")
            return made
        except FileNotFoundError:
            raise AgentError(
                f"no saved credentials in {path}: register first with --server, --code and "
                "--name (the dashboard's 'Connect a local agent' shows the command)"
            ) from None
        except (OSError, ValueError, TypeError) as e:
            raise AgentError(f"cannot read {path}: {e}; register again with --code") from None

    def save(self, path: Path, files: PrivateFiles | None = None) -> None:
        files = files or current().files
        try:
            files.make_dir(path.parent)
            files.write(path, json.dumps(asdict(self), indent=2) + "\n")
        except OSError as e:
            raise AgentError(f"cannot save the credentials in {path}: {e}") from None


def write_private(path: Path, text: str, files: PrivateFiles | None = None) -> None:
    """Write a file only its owner can read, replacing any old one atomically."""
    try:
        (files or current().files).write(path, text)
    except OSError as e:
        raise AgentError(f"cannot write {path}: {e}") from None


def check_url(option: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AgentError(f"{option} {url!r}: give an http:// or https:// URL with a host")
    try:
        port = parts.port  # (raises on a bad port, but lets 0 through)
    except ValueError:
        port = 0
    if port == 0:
        raise AgentError(f"{option} {url!r}: the port is not a number from 1 to 65535")
    return url.rstrip("/")


def tunnel_url(server: str, sandbox_id: str) -> str:
    parts = urlsplit(server)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/api/tunnel/{sandbox_id}"


def client_endpoint(
    reactor: IAgentReactor, url: str, network: Network | None = None
) -> IStreamClientEndpoint:
    """TCP (TLS for https/wss) to ``url``; through ``network``'s proxy and trust if given."""
    return (network or Network()).endpoint(reactor, url)


REGISTER_TIMEOUT = 30.0


class HTTPPoster(typing.Protocol):
    """What registration needs of an HTTP client: treq's ``post`` (a ``treq.client.HTTPClient``;
    in tests a ``treq.testing.StubTreq`` over a fake server)."""

    def post(self, url: str, *, json: object) -> Awaitable[IResponse]: ...


async def register(
    reactor: IAgentReactor,
    server: str,
    code: str,
    name: str,
    opencode_url: str,
    use_server_key: bool,
    network: Network | None = None,
    http: HTTPPoster | None = None,
) -> Credentials:
    """Trade a one-time code for a local sandbox and its tunnel token.

    ``http`` is the client for a server reached directly (default: a treq ``HTTPClient``
    over an ``Agent`` on ``reactor``); one behind a proxy or a CA bundle is reached through
    ``network``'s own agent instead. The request gives up after ``REGISTER_TIMEOUT``."""
    network = network or Network()
    client: HTTPPoster
    if network.special(server):
        client = HTTPClient(network.http_agent(reactor))
    else:
        client = http or HTTPClient(Agent(reactor))

    async def post() -> IResponse:
        payload = {"code": code, "name": name, "use_server_key": use_server_key}
        return await client.post(server + "/api/agent/register", json=payload)

    try:
        posted = Deferred.fromCoroutine(post())
        timer = reactor.callLater(REGISTER_TIMEOUT, posted.cancel)  # (as treq's timeout=)
        try:
            response = await posted
        finally:
            if timer.active():
                timer.cancel()
        body = await treq.json_content(response) if response.code != 204 else {}
    except ValueError:
        raise AgentError(f"{server} did not answer like a cli-server; check --server") from None
    except AgentError:
        raise
    except Exception as e:
        explained = network.explain(e, server)
        if explained is not None:
            raise AgentError(f"cannot register with {server}: {explained}") from None
        raise AgentError(f"cannot reach the server at {server}: {e}") from None
    if response.code == 401:
        raise AgentError(
            "the server refused the code: it is unknown, already used or expired (codes work "
            "once, for 10 minutes); get a new one from the dashboard"
        )
    if response.code != 201 or not isinstance(body, dict) or "tunnel_token" not in body:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        hint = ""
        if response.code == 409 and isinstance(error, dict) and error.get("code") == "name_taken":
            hint = "; the code still works: run again with another --name"
        raise AgentError(f"registration failed ({response.code}): {message or 'no details'}{hint}")
    return Credentials(
        server=server,
        sandbox_id=body["sandbox_id"],
        workspace_id=body["workspace_id"],
        tunnel_token=body["tunnel_token"],
        name=body.get("name", name),
        opencode_url=opencode_url,
        anthropic=body.get("anthropic"),
    )


@define
class Backoff:
    """``ClientService``'s retry policy: 1 s, 2 s, 4 s … 60 s, each with up to half taken
    off at random (so agents that lost the same server do not return in step)."""

    random: Callable[[], float] = random.random
    initial: float = 1.0
    maximum: float = 60.0
    failures: int = 0
    _now: bool = False  # the next attempt goes at once (see ``at_once``)

    def __call__(self, attempt: int) -> float:
        if self._now:
            self._now = False
            return 0.0
        delay = min(self.maximum, self.initial * 2.0**self.failures)
        if delay < self.maximum:  # (2.0 ** 1024 overflows: stop counting at the cap)
            self.failures += 1
        return delay * (0.5 + self.random() / 2)

    def reset(self) -> None:
        self.failures = 0

    def at_once(self) -> None:
        """The server said it restarts: another replica (through the load balancer) takes
        us now, so the next attempt waits for nothing; later ones back off as before."""
        self.reset()
        self._now = True


class _ToTunnel(Protocol):
    """The TCP connection to opencode: what it sends goes into the stream."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.stream.registerProducer(self.transport, True)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        self.stream.write(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.stream.unregisterProducer()
        if reason.check(ConnectionDone):
            self.stream.loseConnection()  # what is still buffered goes first
        else:
            self.stream.abortConnection()  # (a reset: a cut reply must not look complete)


@implementer(IPushProducer)
@frozen
class _Reader:
    """The stream as the producer of the local connection. The connection stops its
    producer when it closes: that must not reset the stream, whose last bytes (a reply
    followed by a close, as HTTP/1.0 servers do) are still on their way to the server."""

    stream: Stream

    def pauseProducing(self) -> None:
        self.stream.pauseProducing()

    def resumeProducing(self) -> None:
        self.stream.resumeProducing()

    def stopProducing(self) -> None:
        pass  # (_ToTunnel.connectionLost ends the stream, cleanly or not)


class _ToOpencode(Protocol):
    """The stream: what the server sends goes to opencode."""

    def __init__(self, opencode: _ToTunnel) -> None:
        self.opencode = opencode

    def connectionMade(self) -> None:
        # (opencode's TCP transport is a consumer too; our transport is the stream)
        opencode = typing.cast(IConsumer, self.opencode.transport)
        stream = typing.cast(Stream, self.transport)
        opencode.registerProducer(_Reader(stream), True)

    def dataReceived(self, data: bytes) -> None:
        assert self.opencode.transport is not None
        self.opencode.transport.write(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        transport = self.opencode.transport
        if transport is None:
            return
        typing.cast(IConsumer, transport).unregisterProducer()  # (a TCP transport)
        if reason.check(ConnectionDone):
            transport.loseConnection()
        else:
            # the browser went away: abort opencode's request
            typing.cast(ITCPTransport, transport).abortConnection()


@define(eq=False)
class OpencodeConnector:
    """Connects each new stream to the local opencode."""

    _endpoint: IStreamClientEndpoint
    _url: str
    _log = Logger()
    _warned: bool = False

    def accept(self, session: Session, stream: Stream) -> None:
        side = _ToTunnel(stream)
        d = connectProtocol(self._endpoint, side)

        def connected(_: object) -> None:
            if stream.closed:
                assert side.transport is not None
                side.transport.loseConnection()
                return
            self._warned = False
            session.accept_stream(stream, _ToOpencode(side))

        def failed(f: Failure) -> None:
            if not self._warned:
                self._warned = True
                self._log.warn(
                    "opencode is not reachable at {url}: {why}; is 'opencode serve' running?",
                    url=self._url,
                    why=f.getErrorMessage(),
                )
            stream.reset(f"opencode is not reachable on the agent's machine ({self._url})")

        d.addCallbacks(connected, failed)


@define(eq=False)
class PortConnector:
    """Connects a stream that names a port to that port on this machine's loopback if its
    user shares it (``--allow-port``), and refuses it otherwise, whatever the server asked."""

    _reactor: IReactorTCP
    _ports: frozenset[int]
    _log = Logger()

    def accept(self, session: Session, stream: Stream) -> None:
        port = stream.port
        if port not in self._ports:
            self._log.warn("refused the server a stream to port {port}: not shared", port=port)
            stream.reset(f"port {port} is not shared by this laptop (--allow-port)")
            return
        side = _ToTunnel(stream)

        def connected(_: object) -> None:
            if stream.closed:
                assert side.transport is not None
                side.transport.loseConnection()
                return
            session.accept_stream(stream, _ToOpencode(side))

        def failed(f: Failure) -> None:
            stream.reset(f"nothing is listening on port {port} on the agent's machine")

        connectProtocol(LoopbackEndpoint(self._reactor, port), side).addCallbacks(connected, failed)


class TunnelClientFactory(WebSocketClientFactory):
    def __init__(self, agent: TunnelAgent, credentials: Credentials) -> None:
        super().__init__(
            tunnel_url(credentials.server, credentials.sandbox_id),
            headers={"Authorization": f"Bearer {credentials.tunnel_token}"},
            useragent=f"cli-agent/{__version__.public()}",
        )
        self.protocol = TunnelClientProtocol
        self.agent = agent
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE,
            maxMessagePayloadSize=MAX_MESSAGE,
            autoFragmentSize=0,
            openHandshakeTimeout=15,
            closeHandshakeTimeout=5,
        )


# (type: ignore: Autobahn's own two bases disagree on ``peer`` once a mixin comes first)
class TunnelClientProtocol(SessionCarrier, WebSocketClientProtocol):  # type: ignore[misc]
    factory: TunnelClientFactory

    def __init__(self) -> None:
        super().__init__()
        self.welcomed: Deferred[None] = Deferred()
        self.lost: Failure | None = None

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = reason  # (Autobahn's onClose does not say why, e.g. which TLS check failed)
        super().connectionLost(reason)

    def onOpen(self) -> None:
        session = self.factory.agent.new_session(self.send_frame, self.close_tunnel)
        no_delay(self.transport)
        self.carry(session)
        session.ready.addCallback(self._welcomed)
        session.start()

    def _welcomed(self, session: Session) -> None:
        self.factory.agent.connected(session)
        self.welcomed.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.deliver(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session = self.session
        if session is not None:
            session.connection_lost()
        status = None
        line = getattr(self, "http_status_line", None)
        if isinstance(line, str) and len(line.split()) > 1 and line.split()[1].isdigit():
            status = int(line.split()[1])
        explained = self.factory.agent.explain(self.lost) if self.lost is not None else None
        why = (
            explained
            or reason
            or (f"HTTP {status}" if status and status != 101 else "connection lost")
        )
        self.factory.agent.disconnected(
            session.goaway if session else None, status, why, was_up=self.welcomed.called
        )
        if not self.welcomed.called:
            self.welcomed.errback(ConnectionDone(why))


@define(eq=False)
class TunnelAgent(Service):
    """Keeps one tunnel to the server up, for as long as the server wants it."""

    _reactor: IAgentReactor
    _config_path: Path
    _opencode_url: str | None = None
    _server: str | None = None
    _code: str | None = field(default=None, repr=False)
    _name: str | None = None
    _use_server_key: bool = False
    _on_fatal: Callable[[str], None] | None = None
    _platform: Platform = field(factory=current)
    _network: Network = field(factory=Network)
    _http: HTTPPoster | None = None  # registration's client (None: see ``register``)
    # saving runs commands on Windows (icacls): off the reactor thread in the daemon
    _runner: Runner = synchronous_runner
    backoff: Backoff = field(factory=Backoff)
    ping_interval: float = 15.0
    dead_after: float = 45.0
    allowed_ports: tuple[int, ...] = ()  # --allow-port: shared for this run only
    credentials: Credentials | None = field(default=None, init=False)
    _client: ClientService | None = field(default=None, init=False)
    _connector: OpencodeConnector | None = field(default=None, init=False)
    _up_since: float | None = field(default=None, init=False)
    _session: Session | None = field(default=None, init=False)
    _log = Logger()

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        d.addErrback(self._start_failed)

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(AgentError):
            self._fatal(str(failure.value))
        else:
            self._log.failure("the agent could not start", failure)
            self._fatal("the agent could not start (see the log above)")

    async def _start(self) -> None:
        if self._code:
            if not self._server or not self._name:
                raise AgentError("--code needs --server and --name")
            self._read_trust(self._server)
            opencode_url = self._opencode_url or "http://127.0.0.1:4096"
            credentials = await register(
                self._reactor,
                self._server,
                self._code,
                self._name,
                opencode_url,
                self._use_server_key,
                self._network,
                self._http,
            )
            await self._runner(credentials.save, self._config_path, self._platform.files)
            self._log.info(
                "registered as local sandbox {name} ({sandbox_id}); credentials saved in {path}",
                name=credentials.name,
                sandbox_id=credentials.sandbox_id,
                path=str(self._config_path),
            )
            if credentials.anthropic:
                env = self._config_path.with_name("anthropic.env")
                await self._runner(
                    write_private,
                    env,
                    f"ANTHROPIC_BASE_URL={credentials.anthropic['base_url']}\n"
                    f"ANTHROPIC_API_KEY={credentials.anthropic['api_key']}\n",
                    self._platform.files,
                )
                self._log.info(
                    "opencode here may use the server's Anthropic key while this agent is "
                    "connected: start it with '{command}'",
                    command=self._platform.with_env_file(env, "opencode serve"),
                )
        else:
            credentials = Credentials.load(self._config_path)
            self._read_trust(credentials.server)
            if self._server and self._server != credentials.server:
                raise AgentError(
                    f"{self._config_path} belongs to {credentials.server}; pass --code to "
                    f"register with {self._server}, or --config for another file"
                )
            if self._opencode_url and self._opencode_url != credentials.opencode_url:
                credentials = evolve(credentials, opencode_url=self._opencode_url)
                await self._runner(credentials.save, self._config_path, self._platform.files)
        self.set_up(
            credentials,
            OpencodeConnector(
                client_endpoint(self._reactor, credentials.opencode_url), credentials.opencode_url
            ),
        )
        self._client = ClientService(
            ReportingEndpoint(
                client_endpoint(self._reactor, credentials.server, self._network),
                self._dial_failed,
            ),
            TunnelClientFactory(self, credentials),
            retryPolicy=self.backoff,
            clock=self._reactor,
            prepareConnection=_welcomed,
        )
        self._log.info(
            "connecting to {server} as {name}; opencode at {url}",
            server=credentials.server,
            name=credentials.name,
            url=credentials.opencode_url,
        )
        self._share_ports(credentials.opencode_url)
        if self.running:
            self._client.startService()

    def set_up(self, credentials: Credentials, connector: OpencodeConnector) -> None:
        """Take ``credentials`` and send the streams of new sessions through ``connector``
        (what start-up does before dialling; a test sets the agent up without dialling)."""
        self.credentials = credentials
        self._connector = connector

    @property
    def dialling(self) -> bool:
        """Whether the agent keeps (re)connecting to the server: set up, and not stopped
        for good."""
        return self._client is not None and bool(self._client.running)

    def _share_ports(self, opencode_url: str) -> None:
        if not self.allowed_ports:
            return
        try:
            check_not_opencode(self.allowed_ports, opencode_url)
        except ValueError as e:
            raise AgentError(str(e)) from None
        self._log.info(
            "sharing ports {ports} of this machine's loopback with the workspace",
            ports=", ".join(str(p) for p in self.allowed_ports),
        )

    def new_session(
        self, send: Callable[[bytes], None], close: Callable[[int, str], None]
    ) -> Session:
        assert self.credentials is not None and self._connector is not None
        connector = self._connector
        ports = PortConnector(self._reactor, frozenset(self.allowed_ports))
        session: Session

        def accept(stream: Stream) -> None:
            if stream.port is None:
                connector.accept(session, stream)
            else:
                ports.accept(session, stream)

        session = Session(
            self._reactor,
            send,
            close,
            is_server=False,
            label=self.credentials.sandbox_id,
            accept=accept,
            agent_name=f"cli-agent/{__version__.public()}",
            ports=self.allowed_ports,
            ping_interval=self.ping_interval,
            dead_after=self.dead_after,
        )
        return session

    def _read_trust(self, server: str) -> None:
        if urlsplit(server).scheme == "https":
            self._network = evolve(self._network, trust=self._network.trust.read())

    def explain(self, failure: Failure) -> str | None:
        """One line for a TLS or proxy failure on the way to the server, else None."""
        server = self.credentials.server if self.credentials else (self._server or "")
        if failure.value is None:
            return None
        return self._network.explain(failure.value, server)

    def _dial_failed(self, failure: Failure) -> None:
        if self.running:
            self._log.info(
                "could not connect ({why}); will retry",
                why=self.explain(failure) or failure.getErrorMessage(),
            )

    def connected(self, session: Session) -> None:
        self._session = session
        self._up_since = self._reactor.seconds()
        self._log.info(
            "connected: the browser reaches this opencode at {server} (tunnel protocol {v})",
            server=self.credentials.server if self.credentials else "?",
            v=session.version,
        )

    def disconnected(
        self, goaway: tuple[str, str] | None, status: int | None, why: str, was_up: bool
    ) -> None:
        self._session = None
        if was_up and self._up_since is not None:
            if self._reactor.seconds() - self._up_since >= STABLE_AFTER:
                self.backoff.reset()
            self._up_since = None
        if goaway is not None and goaway[0] == "revoked" and goaway[1]:
            return self._fatal(f"{goaway[1]}; register again with a new code (--code)")
        if goaway is not None and goaway[0] in _FATAL_GOAWAY:
            return self._fatal(_FATAL_GOAWAY[goaway[0]])
        if status in (401, 403):
            return self._fatal(
                "the server refused this agent's token: the local sandbox was deleted or the "
                "token is wrong; register again with a new code (--code)"
            )
        if not self.running:
            return
        if goaway is not None and goaway[0] == "restarting":
            self.backoff.at_once()
        detail = f"{goaway[1]}" if goaway else why
        if was_up:
            self._log.warn("disconnected from the server ({why}); reconnecting", why=detail)
        else:
            self._log.info("could not connect ({why}); will retry", why=detail)

    def _fatal(self, message: str) -> None:
        self._log.error("cli-agent stops: {message}", message=message)
        if self._client is not None and self._client.running:
            self._client.stopService()
        if self._on_fatal is not None:
            self._on_fatal(message)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._session is not None:
            # the server shows the sandbox offline at once, not after the dead-peer timeout
            self._session.say_goodbye("stopping", "the agent on the laptop was stopped")
        if self._client is not None and self._client.running:
            d: Deferred[None] = self._client.stopService()
            return d
        return None


def _welcomed(protocol: IProtocol) -> Deferred[None]:
    """ClientService counts a connection as made once the server said welcome."""
    return typing.cast(TunnelClientProtocol, protocol).welcomed  # (our factory's protocol)


def exit_with_error(reactor: IReactorCore) -> Callable[[str], None]:
    """Print one line, stop the reactor and exit with status 1 (twistd cannot set it)."""

    def fatal(message: str) -> None:
        print(f"cli-agent: {message}", file=sys.stderr, flush=True)
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    return fatal
