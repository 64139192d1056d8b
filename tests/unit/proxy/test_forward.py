"""Relay: copying an upstream body to a client, when the client is already gone."""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.test.requesthelper import DummyRequest

from cli_server.proxy.forward import Relay


class _Upstream:
    """The response body's producer, as Response.deliverBody hands it to the protocol."""

    stopped = False

    def stopProducing(self) -> None:
        self.stopped = True


def test_a_client_gone_before_the_body_starts_stops_the_upstream_and_gets_nothing() -> None:
    request = DummyRequest([b""])
    request.channel = None  # the browser disconnected after the upstream's headers arrived
    upstream = _Upstream()
    relay = Relay(request)
    relay.makeConnection(upstream)  # used to raise: the request has no channel to register on
    assert upstream.stopped
    relay.dataReceived(b"late bytes")
    relay.connectionLost(Failure(ResponseDone()))
    assert request.written == [] and not request.finished
