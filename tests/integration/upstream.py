"""A FAKE sandbox: an HTTP server standing in for opencode that records what reaches it."""

from __future__ import annotations

import json
import random
from hashlib import sha256
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer


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
