"""Client connection pools that do not log each connection.

twisted logs "Starting factory …" and "Stopping factory …" around every connection a noisy
factory makes; the HTTP client's factory is noisy, and a server that proxies opens thousands of
connections, burying the lines an operator needs to read."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

P = TypeVar("P", bound=IProtocol)


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory


class _OneShot(Factory):
    """``connectProtocol``'s factory, without its two lines per connection."""

    noisy = False

    def __init__(self, protocol: IProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Any:
        return self._protocol


def connect_quietly(endpoint: IStreamClientEndpoint, protocol: P) -> Deferred[P]:
    """``twisted.internet.endpoints.connectProtocol``, quietly."""
    return endpoint.connect(_OneShot(protocol)).addCallback(lambda _: protocol)
