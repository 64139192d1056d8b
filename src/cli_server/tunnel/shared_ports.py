"""The ports a laptop shares through its tunnel (``--allow-port``): parsing the option, and
the loopback connection a shared port's stream gets.

Sharing is a run-time choice of whoever runs the agent, never saved with the credentials:
each run shares exactly the ports it was given, none by default. opencode's own port is
never shared (its loopback listener has no password; the browser reaches it only through
the server's checks).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from cli_server.tunnel.frames import MAX_SHARED_PORTS, SHARED_PORTS

CONNECT_TIMEOUT = 10.0


class PortNotShared(Exception):
    """A local sandbox's laptop does not share this port (its agent's ``--allow-port``)."""


def parse_ports(values: Iterable[str]) -> tuple[int, ...]:
    """``["5173,8000", "3000"]`` -> ``(3000, 5173, 8000)``; ValueError with a line that
    says what is wrong."""
    ports: set[int] = set()
    for value in values:
        for part in value.split(","):
            text = part.strip()
            if not text.isdigit() or int(text) not in SHARED_PORTS:
                raise ValueError(
                    f"--allow-port {part.strip()!r}: give port numbers from "
                    f"{SHARED_PORTS.start} to {SHARED_PORTS.stop - 1}, separated by commas"
                )
            ports.add(int(text))
    if len(ports) > MAX_SHARED_PORTS:
        raise ValueError(f"--allow-port: at most {MAX_SHARED_PORTS} ports")
    return tuple(sorted(ports))


def check_not_opencode(ports: Iterable[int], opencode_url: str) -> None:
    """Refuse to share the port opencode listens on here (ValueError)."""
    parts = urlsplit(opencode_url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return  # (a bad URL is refused elsewhere, with its own message)
    if port in set(ports):
        raise ValueError(
            f"--allow-port {port}: that is opencode's port ({opencode_url}); the browser "
            "reaches opencode through the server already, and its port is never shared"
        )


@implementer(IStreamClientEndpoint)
@frozen
class LoopbackEndpoint:
    """``127.0.0.1:port``, and ``[::1]:port`` if nothing listens there (dev servers that
    listen on "localhost" take only ::1 on some systems)."""

    _reactor: IReactorTCP
    _port: int

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        v4 = TCP4ClientEndpoint(self._reactor, "127.0.0.1", self._port, CONNECT_TIMEOUT)

        def try_v6(failure: Failure) -> Deferred[IProtocol]:
            failure.trap(ConnectionRefusedError)
            v6 = TCP6ClientEndpoint(self._reactor, "::1", self._port, CONNECT_TIMEOUT)
            d: Deferred[IProtocol] = v6.connect(factory)
            # (both refused: say so for the IPv4 address, the one the docs name)
            d.addErrback(lambda _: failure)
            return d

        return v4.connect(factory).addErrback(try_v6)
