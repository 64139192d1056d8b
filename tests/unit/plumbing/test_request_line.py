"""The channel that tells a request its request line before its body, over a real Site."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from cli_server.plumbing.request_line import (
    RequestLine,
    RequestLineChannel,
    parse_request_line,
)


class _LineRequest(Request):
    """Records, as the headers end, the request line it knew by then."""

    request_line: RequestLine | None = None
    seen_at_length: list[RequestLine | None] = []

    def gotLength(self, length: int | None) -> None:
        self.seen_at_length.append(self.request_line)
        super().gotLength(length)


class _Ok(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"ok"


def _connect(site: Site) -> tuple[Any, StringTransport]:
    address = IPv4Address("TCP", "127.0.0.1", 1234)
    protocol = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def test_parse_request_line() -> None:
    assert parse_request_line(b"POST /a?b=1 HTTP/1.1") == (b"POST", b"/a?b=1", b"HTTP/1.1")
    assert parse_request_line(b"GET /") is None
    assert parse_request_line(b"GET  / HTTP/1.1") is None  # (an empty word)
    assert parse_request_line(b"") is None


def test_each_request_knows_its_line_before_its_body() -> None:
    """Two pipelined requests on one connection: each learns its own line by the time its
    headers are in (twisted.web's own channel tells it only after the body)."""
    _LineRequest.seen_at_length = []
    site = Site(_Ok(), requestFactory=_LineRequest, reactor=Clock())
    site.protocol = RequestLineChannel  # type: ignore[assignment]
    protocol, transport = _connect(site)
    protocol.dataReceived(
        b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /second?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert _LineRequest.seen_at_length == [
        (b"POST", b"/first", b"HTTP/1.1"),
        (b"GET", b"/second?x=1", b"HTTP/1.1"),
    ]
    assert transport.value().count(b"HTTP/1.1 200 OK") == 2


def test_twisted_webs_channel_does_not_tell_it() -> None:
    _LineRequest.seen_at_length = []
    site = Site(_Ok(), requestFactory=_LineRequest, reactor=Clock())
    protocol, transport = _connect(site)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert _LineRequest.seen_at_length == [None]
    assert b"200 OK" in transport.value()


def test_a_malformed_line_is_still_refused() -> None:
    site = Site(_Ok(), requestFactory=_LineRequest, reactor=Clock())
    site.protocol = RequestLineChannel  # type: ignore[assignment]
    protocol, transport = _connect(site)
    protocol.dataReceived(b"GET\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ")
