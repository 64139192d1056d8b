"""A FAKE sandbox: an HTTP server standing in for opencode that records what reaches it."""

from __future__ import annotations

import json
import random
from hashlib import sha256
from typing import Any

from attrs import define, field
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from cli_server.sandboxes.backend import Endpoint
from cli_server.testing import FakeBackend


class Recorder(Resource):
    """Every request's method, URI and headers are kept in ``seen``."""

    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.seen: list[dict[str, Any]] = []
        self.streamed = 0  # bytes written by /flood so far
        self.flood_paused = False
        self.ticking = 0  # open /ticks streams

    def render(self, request: Any) -> Any:
        if request.path == b"/digest":  # an upload's length and SHA-256, not kept
            body = request.content.read()
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"length": len(body), "sha256": sha256(body).hexdigest()}).encode()
        if request.path == b"/random":  # ?n= bytes that are the same for the same n
            n = int(request.args[b"n"][0])
            return random.Random(n).randbytes(n)
        headers = {
            k.decode().lower(): [v.decode() for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }
        self.seen.append(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": headers,
                "body": request.content.read().decode(),
            }
        )
        path = request.path
        if path == b"/hang":  # never answers
            return NOT_DONE_YET
        if path == b"/cookies":
            request.responseHeaders.setRawHeaders(
                b"set-cookie",
                [
                    b"a=1; Path=/",
                    b"b=2; Domain=localhost; Path=/",
                    b"c=3; domain=.localhost",
                    b"cli_session=evil; Path=/",
                    b"cli_sandbox=evil",
                    b"d=4; HttpOnly",
                ],
            )
            return b"ok"
        if path == b"/sse":
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b"data: first\n\n")
            self.reactor.callLater(0.2, request.write, b"data: second\n\n")
            self.reactor.callLater(0.4, request.finish)
            return NOT_DONE_YET
        if path == b"/ticks":  # an event every 50 ms until the browser leaves
            request.setHeader(b"content-type", b"text/event-stream")
            ticks = LoopingCall(request.write, b"data: tick\n\n")
            ticks.clock = self.reactor
            ticks.start(0.05)
            self.ticking += 1

            def stop(_: object) -> None:
                ticks.stop()
                self.ticking -= 1

            request.notifyFinish().addBoth(stop)
            return NOT_DONE_YET
        if path == b"/flood":
            Flood(self, request).start()
            return NOT_DONE_YET
        if path == b"/big":
            return b"x" * (1024 * 1024)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.seen[-1]).encode()


@implementer(IPushProducer)
class Flood:
    """Writes 64 KiB chunks as fast as the connection takes them, honouring backpressure."""

    def __init__(self, recorder: Recorder, request: Any) -> None:
        self.recorder, self.request = recorder, request
        self.paused = False
        self.stopped = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.recorder.flood_paused = False
        while not self.paused and not self.stopped and self.recorder.streamed < 256 * 2**20:
            self.request.write(b"y" * 65536)
            self.recorder.streamed += 65536

    def pauseProducing(self) -> None:
        self.paused = True
        self.recorder.flood_paused = True

    def stopProducing(self) -> None:
        self.stopped = True


def serve(reactor: Any) -> tuple[Recorder, Any]:
    recorder = Recorder(reactor)
    port = reactor.listenTCP(0, Site(recorder), interface="127.0.0.1")
    return recorder, port


class Echo(WebSocketServerProtocol):
    """A dev server's hot-reload socket: echoes each message; its handshake's headers are
    kept, and its 101 sets a cookie for the parent domain (dropped) and one for itself."""

    opened = False

    def onConnect(self, request: Any) -> tuple[None, dict[str, list[str]]]:
        self.factory.handshakes.append(request.headers)
        return None, {"Set-Cookie": ["hmr=1; Domain=localhost", "vite=2; Path=/"]}

    def onOpen(self) -> None:
        self.opened = True
        self.factory.open += 1

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.opened:
            self.opened = False
            self.factory.open -= 1


class _EchoFactory(WebSocketServerFactory):
    protocol = Echo

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.handshakes: list[dict[str, str]] = []
        self.open = 0  # sockets open now


class DevServer(Resource):
    """A FAKE dev server in a sandbox (a preview's port): ``/ws`` echoes WebSocket messages,
    every other path is a ``Recorder``'s."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.recorder = Recorder(reactor)
        self.sockets = _EchoFactory(reactor)
        self.putChild(b"ws", WebSocketResource(self.sockets))

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self.recorder


def serve_dev_server(reactor: Any) -> tuple[DevServer, Any]:
    server = DevServer(reactor)
    port = reactor.listenTCP(0, Site(server), interface="127.0.0.1")
    return server, port


@define(eq=False)
class PreviewBackend(FakeBackend):
    """A FAKE backend whose sandboxes' preview ports are test servers on the host: port N in
    a running sandbox is ``previews[N]`` here, else ``closed`` (where nothing listens)."""

    previews: dict[int, int] = field(factory=dict)
    closed: int = 9  # (discard: nothing listens there on a test machine)
    asked: list[tuple[str, int]] = field(factory=list)

    def preview_endpoint(self, sandbox_id: str, port: int) -> Deferred[Endpoint | None]:
        self.asked.append((sandbox_id, port))
        if sandbox_id not in self.running:
            return succeed(None)
        return succeed(Endpoint("127.0.0.1", self.previews.get(port, self.closed)))

    def listening_ports(self, sandbox_id: str) -> Deferred[list[int]]:
        return succeed(sorted(self.previews) if sandbox_id in self.running else [])
