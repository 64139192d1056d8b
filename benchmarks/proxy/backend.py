"""The benchmark's upstream for streams: SSE (/sse: an event every 100 ms carrying its send
time) and WebSocket echo (/ws). Plain HTTP (/small, /big) comes from nginx, which is faster
than any Python server and so never the bottleneck."""

from __future__ import annotations

import sys
import time

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor, task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class Events(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.listeners: set = set()
        task.LoopingCall(self.tick).start(0.1)

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        request.setHeader(b"content-type", b"text/event-stream")
        request.write(b": hello\n\n")
        self.listeners.add(request)
        request.notifyFinish().addBoth(lambda _: self.listeners.discard(request))
        return NOT_DONE_YET

    def tick(self) -> None:
        line = f"data: {time.time():.6f}\n\n".encode()
        for request in list(self.listeners):
            request.write(line)


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def main() -> None:
    port = int(sys.argv[1])
    root = Resource()
    root.putChild(b"sse", Events())
    factory = WebSocketServerFactory()
    factory.protocol = Echo
    root.putChild(b"ws", WebSocketResource(factory))
    reactor.listenTCP(port, Site(root), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
