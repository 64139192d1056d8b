"""The requests twisted.web serves now, for a stopping server to wait for and then close."""

from __future__ import annotations

import weakref

from attrs import define, field
from twisted.web import http


def lasting(request: http.Request) -> bool:
    """A request that lasts for hours once answered: a WebSocket (a terminal, a tunnel) or an
    event stream. A stopping server closes these last and waits for the others."""
    if request.requestHeaders.hasHeader(b"upgrade"):
        return True
    kind = request.responseHeaders.getRawHeaders(b"content-type") or [b""]
    return bool(kind[0].lower().startswith(b"text/event-stream"))


@define(eq=False)
class OpenRequests:
    """The requests twisted.web serves now (from their headers to their end), for a stopping
    server to wait for (``in_flight``) and then to close what lasts (``close_lasting``)."""

    _open: weakref.WeakSet[http.Request] = field(factory=weakref.WeakSet, init=False)
    draining: bool = False  # answers say ``connection: close``

    def opened(self, request: http.Request) -> None:
        self._open.add(request)

    def closed(self, request: http.Request) -> None:
        self._open.discard(request)

    @property
    def in_flight(self) -> int:
        return sum(1 for request in list(self._open) if not lasting(request))

    def close_lasting(self) -> None:
        for request in list(self._open):
            # (the channel is None once the client left)
            transport = getattr(request.channel, "transport", None)
            if transport is not None:
                transport.loseConnection()
