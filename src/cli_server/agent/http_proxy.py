"""An HTTP proxy on the way to the server (``HTTPS_PROXY``, ``NO_PROXY``), as corporate
networks have: the agent asks the proxy for a tunnel with ``CONNECT host:port`` and then
speaks TLS (and the WebSocket, or the registration call) through it as if directly.

The proxy's user and password come from its URL's userinfo and go only into the
``Proxy-Authorization`` header; the proxy is shown everywhere else without them.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from cli_server.agent.errors import AgentError

MAX_ANSWER = 16 * 1024  # the proxy's answer to CONNECT, head only
MAX_SHOWN = 100  # characters of the proxy's own words in our one-line messages


class ProxyError(AgentError):
    """The proxy could not be reached, or would not open the tunnel."""


@frozen(repr=False)
class Proxy:
    host: str
    port: int
    variable: str  # the environment variable that named it, for messages
    authorization: bytes | None = field(default=None, eq=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    __repr__ = __str__


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """What a proxy said, fit for a one-line message and a terminal: printable ASCII only
    (no escape codes, line breaks or bells from a hostile proxy), at most ``limit`` long."""
    kept = " ".join("".join(c for c in text if " " <= c <= "~" or c in "\t\r\n").split())
    return kept if len(kept) <= limit else kept[: limit - 3] + "..."


def _variable(environ: Mapping[str, str], scheme: str) -> tuple[str, str] | None:
    base = "https_proxy" if scheme in ("https", "wss") else "http_proxy"
    for name in (base, base.upper()):  # (lower case first, as curl and urllib read them)
        if environ.get(name, "").strip():
            return name, environ[name].strip()
    return None


def bypassed(host: str, environ: Mapping[str, str]) -> bool:
    """Whether ``NO_PROXY`` (or ``no_proxy``) names ``host``: ``*``, a host or domain (with or
    without a leading dot; its subdomains too), or an IP address or network."""
    listed = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    host = host.lower().strip("[]")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in listed.replace(",", " ").split():
        entry = entry.lower()
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
        name = entry.lstrip("*").lstrip(".")
        if name.count(":") == 1:  # host:port (any port matches)
            name = name.split(":", 1)[0]
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_for(url: str, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy to reach ``url`` through, or None to go direct."""
    parts = urlsplit(url)
    found = _variable(environ, parts.scheme)
    if found is None or bypassed(parts.hostname or "", environ):
        return None
    name, value = found
    # (no message quotes the value: it may hold the proxy's password)
    try:
        proxy = urlsplit(value if "://" in value else "http://" + value)
        hostname = proxy.hostname
    except ValueError:
        raise AgentError(f"{name}: not a URL; give the proxy as http://host:port") from None
    if proxy.scheme != "http" or not hostname:
        raise AgentError(f"{name}: give the proxy as http://host:port (only http:// proxies work)")
    if proxy.path not in ("", "/") or proxy.query or proxy.fragment:
        # e.g. an unencoded "/" in the password: the rest would be taken for host and port
        raise AgentError(
            f"{name}: give the proxy as http://host:port, with nothing after the port; a / ? # "
            "or @ in the user or password must be %-encoded (%2F %3F %23 %40)"
        )
    try:
        port = proxy.port or 80
    except ValueError:
        raise AgentError(f"{name}: the proxy's port is not a number from 1 to 65535") from None
    authorization = None
    if proxy.username is not None:
        pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        authorization = b"Basic " + base64.b64encode(pair.encode())
    return Proxy(hostname, port, name, authorization)


class _Connect(Protocol):
    """Asks the proxy for the tunnel, then hands the connection to the real protocol and
    stays in between as a pass-through."""

    def __init__(
        self,
        proxy: Proxy,
        target: str,
        factory: IProtocolFactory,
        done: Deferred[IProtocol],
        clock: IReactorTime,
        timeout: float,
    ) -> None:
        self._proxy = proxy
        self._target = target
        self._factory = factory
        self._done = done
        self._clock = clock
        self._timeout = timeout
        self._timer: IDelayedCall | None = None
        self._answer = b""
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        head = [f"CONNECT {self._target} HTTP/1.1".encode(), f"Host: {self._target}".encode()]
        if self._proxy.authorization is not None:
            head.append(b"Proxy-Authorization: " + self._proxy.authorization)
        assert self.transport is not None
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n")
        self._timer = self._clock.callLater(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(f"the proxy {self._proxy} ({self._proxy.variable}) did not answer CONNECT")

    def _fail(self, message: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._done.called:
            self._done.errback(ProxyError(message))
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            return self._inner.dataReceived(data)
        self._answer += data
        end = self._answer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._answer) > MAX_ANSWER:
                self._fail(f"the proxy {self._proxy} answered CONNECT with an endless head")
            return
        status, rest = self._answer[:end].split(b"\r\n", 1)[0], self._answer[end + 4 :]
        words = status.decode("latin-1").split(" ", 2)
        if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].startswith("2"):
            return self._refused(shown(" ".join(words[1:]) or status.decode("latin-1")))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self.transport is not None
        inner = self._factory.buildProtocol(self.transport.getPeer())
        if inner is None:
            return self._fail("the connection was not wanted any more")
        self._inner = inner
        inner.makeConnection(self.transport)
        self._done.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _refused(self, status: str) -> None:
        proxy = f"the proxy {self._proxy} ({self._proxy.variable})"
        hint = ""
        if status.startswith("407"):
            hint = (
                f"; check the user and password in {self._proxy.variable}"
                if self._proxy.authorization is not None
                else f"; it wants a user and password: http://user:password@host:port in "
                f"{self._proxy.variable}"
            )
        self._fail(f"{proxy} refused CONNECT {self._target}: {status}{hint}")

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self._done.called:
            self._done.errback(
                ProxyError(
                    f"the proxy {self._proxy} ({self._proxy.variable}) closed the connection "
                    "before answering CONNECT"
                )
            )


@implementer(IStreamClientEndpoint)
@define(eq=False)
class ConnectEndpoint:
    """Connections to ``host:port`` through the proxy's CONNECT tunnel."""

    _clock: IReactorTime
    _to_proxy: IStreamClientEndpoint
    _proxy: Proxy
    _host: str
    _port: int
    _timeout: float

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        host = f"[{self._host}]" if ":" in self._host else self._host
        done: Deferred[IProtocol] = Deferred()
        connect = _Connect(
            self._proxy, f"{host}:{self._port}", factory, done, self._clock, self._timeout
        )

        def unreachable(failure: Failure) -> None:
            if not done.called:
                done.errback(
                    ProxyError(
                        f"cannot reach the proxy {self._proxy} ({self._proxy.variable}): "
                        f"{failure.getErrorMessage()}"
                    )
                )

        connectProtocol(self._to_proxy, connect).addErrback(unreachable)
        return done
