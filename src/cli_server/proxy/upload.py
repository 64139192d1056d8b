"""A request body passed on while it arrives: uploads to a sandbox are never stored whole.

twisted.web reads a whole body before it renders a request. For sandbox subdomains the request
class starts the proxy as soon as the headers are in, and hands it this producer; the body's
chunks go to the upstream as they come. When the upstream reads slower than the browser sends,
we stop reading from the browser (its TCP window closes), so memory stays bounded.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

MAX_SANDBOX_BODY = 64 * 1024 * 1024  # uploads through a sandbox's proxy
HIGH_WATER = 1024 * 1024  # buffered bytes at which we stop reading from the browser


@implementer(IBodyProducer)
class StreamedBody:
    def __init__(self, network: IPushProducer, length: int | None) -> None:
        self.length = UNKNOWN_LENGTH if length is None else length
        self._network = network  # the browser connection's transport (to pause reading)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._complete = False  # the browser sent all of it
        self._paused = False  # by the upstream connection
        self._holding = False  # we paused the browser's connection
        self._stopped = False
        self._waiting: list[Deferred[None]] = []

    @property
    def complete(self) -> bool:
        return self._complete

    def when_complete(self) -> Deferred[None]:
        """Fires once the browser has sent the whole body."""
        d: Deferred[None] = Deferred()
        if self._complete:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d

    # -- from the browser ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._consumer is not None and not self._paused and not self._chunks:
            self._consumer.write(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            # (again even if we paused before: the HTTP channel resumes its transport too)
            self._holding = True
            self._network.pauseProducing()

    def finish(self) -> None:
        self._complete = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        self._flush()

    # -- IBodyProducer, for the upstream connection ----------------------------------------

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        done: Deferred[None] = Deferred()
        self._done = done
        self._flush()
        return done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self._stopped = True
        self._chunks.clear()
        self._buffered = 0
        self._release()

    def _flush(self) -> None:
        if self._consumer is None or self._stopped:
            return
        while self._chunks and not self._paused:
            data = self._chunks.popleft()
            self._buffered -= len(data)
            self._consumer.write(data)
        if self._buffered <= HIGH_WATER // 2:
            self._release()
        if self._complete and not self._chunks and self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._network.resumeProducing()
