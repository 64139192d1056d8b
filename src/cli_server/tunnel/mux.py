"""Many byte streams over one tunnel, each with its own flow control (docs/tunnel.md).

A ``Stream`` is a virtual TCP connection between the server and the agent's opencode: the
server opens it, the agent connects it to opencode, and from then on each side is an ordinary
Twisted transport (the server's HTTP client and WebSocket splice run over it unchanged).

Flow control: each side may have at most ``window`` unacknowledged bytes in flight on a
stream. A receiver grants credit back only as its own consumer takes the bytes, so a slow
browser stalls its own stream and nothing else, and no byte is ever dropped. A peer that
sends beyond its window, on an unknown stream, or a second ``end`` gets that stream reset; a
frame that cannot be parsed closes the tunnel. Pings both ways detect a dead peer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IProducer,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cli_server.tunnel.frames import (
    MAX_PAYLOAD,
    PORTS_VERSION,
    SUPPORTED_VERSIONS,
    Frame,
    ProtocolError,
    decode,
    encode,
)
from cli_server.tunnel.shared_ports import PortNotShared

WINDOW = 512 * 1024  # per stream and direction; enough for >100 MB/s on a LAN
_CREDIT_BATCH = WINDOW // 4  # grant credit in batches, not per frame
_HIGH_WATER = WINDOW  # unsent bytes at which the stream pauses its producer
_LOW_WATER = WINDOW // 2
OPEN_TIMEOUT = 10.0
MAX_REPLIES_WHILE_CONGESTED = 1000
PING_TIMEOUT = 4008  # (internal) a peer that stopped answering: the carrier drops the connection


@implementer(IAddress)
@frozen
class TunnelAddress:
    tunnel: str
    stream: int


@implementer(ITransport, IPushProducer, IConsumer)
class Stream:
    """One stream, as a transport for the protocol attached to it."""

    def __init__(self, session: Session, stream_id: int, peer_window: int) -> None:
        self.id = stream_id
        self.port: int | None = None  # a port the agent shares, else its opencode
        self.protocol: IProtocol | None = None
        self.closed = False
        self.disconnecting = False
        self._session = session
        self._data_prefix = encode("data", stream_id)
        self._credit = peer_window  # bytes we may still send
        self._window_left = session.window  # bytes the peer may still send us
        self._out: deque[bytes] = deque()
        self._out_size = 0
        self._inbox: deque[bytes] = deque()  # received, not yet given to the protocol
        self._unacked = 0  # given to the protocol, not yet credited back
        self._paused = False
        self._producer: IPushProducer | None = None
        self._producer_paused = False
        self._sent_end = False
        self._got_end = False
        self._told_lost = False

    def __repr__(self) -> str:
        return f"<Stream {self._session.label}#{self.id}>"

    def attach(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)
        self._drain()

    # -- ITransport ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.closed or not data:
            return
        self._out.append(bytes(data))
        self._out_size += len(data)
        self._flush()
        if self._producer and not self._producer_paused and self._out_size > _HIGH_WATER:
            self._producer_paused = True
            self._producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        """Send what is buffered, then ``end``."""
        if not self.closed:
            self.disconnecting = True
            self._flush()

    def abortConnection(self) -> None:
        self.reset("aborted", ConnectionAborted())

    def getPeer(self) -> TunnelAddress:
        return TunnelAddress(self._session.label, self.id)

    def getHost(self) -> TunnelAddress:
        return TunnelAddress(self._session.label, self.id)

    # -- IConsumer: what writes to us ------------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if not streaming or not IPushProducer.providedBy(producer):
            raise ValueError("a tunnel stream takes streaming producers only")
        self._producer, self._producer_paused = producer, False

    def unregisterProducer(self) -> None:
        self._producer = None

    # -- IPushProducer: what we deliver to our protocol ------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._drain()

    def stopProducing(self) -> None:
        self.abortConnection()

    # -- sending ---------------------------------------------------------------------------

    def _flush(self) -> None:
        """Queue our data with the session (which sends it in turn with other streams'), or
        finish with ``end`` once everything is out."""
        if self.closed:
            return
        if self._out and self._credit > 0:
            self._session.schedule(self)
        self._after_send()

    def send_one(self) -> bool:
        """The session's turn for us: send one frame; True if we have more to send."""
        if self.closed or not self._out or self._credit <= 0:
            return False
        chunk = self._out[0]
        n = min(len(chunk), MAX_PAYLOAD, self._credit)
        if n < len(chunk):
            self._out[0] = chunk[n:]
            chunk = chunk[:n]
        else:
            self._out.popleft()
        self._out_size -= n
        self._credit -= n
        self._session.send(self._data_prefix + chunk)
        self._after_send()
        return bool(self._out) and self._credit > 0 and not self.closed

    def _after_send(self) -> None:
        if self.closed:
            return
        if not self._out and self.disconnecting and not self._sent_end:
            self._sent_end = True
            self._session.send(encode("end", self.id))
            self._maybe_done()
        if self._producer and self._producer_paused and self._out_size <= _LOW_WATER:
            self._producer_paused = False
            self._producer.resumeProducing()

    def reset(self, reason: str, error: Exception | None = None) -> None:
        if self.closed:
            return
        self._session.send(encode("reset", self.id, reason=reason[:200]))
        self.terminate(error or ConnectionLost(reason))

    # -- receiving (called by the session) -------------------------------------------------

    def on_data(self, payload: bytes) -> None:
        if self._got_end:
            return self.reset("data after end")
        if len(payload) > self._window_left:
            return self.reset("data beyond the window")
        self._window_left -= len(payload)
        self._inbox.append(payload)
        self._drain()

    def on_credit(self, n: int) -> None:
        self._credit += n
        if self._credit > 2**31:
            return self.reset("credit overflow")
        self._flush()

    def on_end(self) -> None:
        if self._got_end:
            return self.reset("duplicate end")
        self._got_end = True
        self.disconnecting = True  # a half-closed stream is a closed stream: we answer with end
        self._drain()
        self._flush()

    def on_reset(self, reason: str) -> None:
        self.terminate(ConnectionLost(f"reset by the peer: {reason}"))

    def _drain(self) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        while self._inbox and not self._paused and not self.closed:
            data = self._inbox.popleft()
            self._unacked += len(data)
            protocol.dataReceived(data)
        if self.closed:
            return
        if self._unacked >= self._session.credit_batch and not self._paused and not self._got_end:
            self._session.send(encode("credit", self.id, n=self._unacked))
            self._window_left += self._unacked
            self._unacked = 0
        if self._got_end and not self._inbox and not self._told_lost:
            self._told_lost = True
            protocol.connectionLost(Failure(ConnectionDone()))
            self._maybe_done()

    def _maybe_done(self) -> None:
        if self._sent_end and self._got_end and self._told_lost:
            self.closed = True
            self._session.forget(self.id)

    def terminate(self, error: Exception) -> None:
        """The stream is over, whatever was in flight."""
        if self.closed:
            return
        self.closed = self.disconnecting = True
        self._session.forget(self.id)
        self._out.clear()
        self._inbox.clear()
        self._out_size = 0
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()  # what was writing into us has nowhere to go
        if self.protocol is not None and not self._told_lost:
            self._told_lost = True
            self.protocol.connectionLost(Failure(error))


@implementer(IPushProducer)
class Session:
    """One tunnel: the frames of one WebSocket connection, as streams.

    ``send`` sends one binary message; ``close`` ends the connection (with a WebSocket close
    code and reason). The server opens streams (``open_stream``); the agent accepts them
    (``accept`` is called with each new stream, and must ``accept_stream`` or ``reset`` it).
    ``shared_ports``: the ports the agent shares, as its hello announced them (on the agent,
    ``ports``; on the server, empty until the hello, and for agents of version 1).
    """

    def __init__(
        self,
        clock: IReactorTime,
        send: Callable[[bytes], None],
        close: Callable[[int, str], None],
        *,
        is_server: bool,
        label: str = "tunnel",
        accept: Callable[[Stream], None] | None = None,
        agent_name: str = "cli-agent",
        ports: tuple[int, ...] = (),
        window: int = WINDOW,
        ping_interval: float = 15.0,
        dead_after: float = 45.0,
    ) -> None:
        self.send = send
        self.label = label
        self.window = window
        self.credit_batch = min(_CREDIT_BATCH, max(1, window // 4))  # never above the window
        self.version: int | None = None
        self.ready: Deferred[Session] = Deferred()  # fires after hello/welcome, never fails
        self.goaway: tuple[str, str] | None = None  # what the peer said when it hung up
        self.hello: Frame | None = None
        self.shared_ports: frozenset[int] = frozenset(ports)
        self._clock = clock
        self._close = close
        self._is_server = is_server
        self._accept = accept
        self._agent_name = agent_name
        self._streams: dict[int, Stream] = {}
        # Streams with data and credit, served one frame each in turn, while the connection
        # takes more (the session is its transport's producer): one busy stream cannot queue
        # megabytes ahead of another's next event. Control frames do not wait here.
        self._ready: deque[Stream] = deque()
        self._queued: set[int] = set()
        self._writable = True
        self._pumping = False
        self._replies_while_congested = 0
        self._opening: dict[int, tuple[Deferred[Stream], IDelayedCall]] = {}
        self._last_id = 0
        self._lost = False
        self._last_heard = clock.seconds()
        self._dead_after = dead_after
        self._pings = LoopingCall(self._ping)
        self._pings.clock = clock
        self._ping_interval = ping_interval
        self._ping_n = 0
        self._log = Logger()

    @property
    def streams(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        self._last_heard = self._clock.seconds()
        self._pings.start(self._ping_interval, now=False)
        if not self._is_server:
            # (no ``ports`` when none are shared: a version-1 server takes that hello)
            ports: dict[str, Any] = (
                {"ports": sorted(self.shared_ports)} if self.shared_ports else {}
            )
            versions = list(SUPPORTED_VERSIONS)
            self.send(encode("hello", versions=versions, agent=self._agent_name, **ports))

    # -- sending data fairly -----------------------------------------------------------------

    def schedule(self, stream: Stream) -> None:
        if stream.id not in self._queued:
            self._queued.add(stream.id)
            self._ready.append(stream)
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return  # (a send that leads back here: the running loop picks the stream up)
        self._pumping = True
        try:
            while self._writable and self._ready and not self._lost:
                stream = self._ready.popleft()
                if stream.send_one():
                    self._ready.append(stream)
                else:
                    self._queued.discard(stream.id)
        finally:
            self._pumping = False

    def pauseProducing(self) -> None:
        """The connection's buffer is full: hold data frames back."""
        self._writable = False

    def resumeProducing(self) -> None:
        self._writable = True
        self._replies_while_congested = 0
        self._pump()

    def _owe_reply(self) -> None:
        """A peer that makes us answer while it does not read (pings, frames for streams
        that do not exist) would grow our send buffer without end: hang up on it."""
        if not self._writable:
            self._replies_while_congested += 1
            if self._replies_while_congested > MAX_REPLIES_WHILE_CONGESTED:
                self.fail("protocol", "too many frames that need an answer while not reading")

    def stopProducing(self) -> None:
        self._writable = False

    def forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    # -- the server's side -----------------------------------------------------------------

    def open_stream(
        self, timeout: float = OPEN_TIMEOUT, port: int | None = None
    ) -> Deferred[Stream]:
        """A new stream, connected by the agent to its opencode, or to ``port`` if it shares
        that port (the agent checks again: it has the last word)."""
        if not self._is_server or self.version is None or self._lost:
            raise ConnectError("the tunnel is not connected")
        if port is not None and port not in self.shared_ports:
            raise PortNotShared(f"port {port} is not shared by this local sandbox's agent")
        self._last_id += 1
        stream_id = self._last_id
        stream = Stream(self, stream_id, peer_window=0)
        self._streams[stream_id] = stream
        d: Deferred[Stream] = Deferred(lambda _: self._open_cancelled(stream_id))
        timer = self._clock.callLater(timeout, self._open_timed_out, stream_id)
        self._opening[stream_id] = (d, timer)
        where: dict[str, Any] = {} if port is None else {"port": port}
        self.send(encode("open", stream_id, window=self.window, **where))
        return d

    def _open_timed_out(self, stream_id: int) -> None:
        d, _ = self._opening.pop(stream_id)
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.reset("timed out opening")
        d.errback(ConnectError("the agent did not open the stream in time"))

    def _open_cancelled(self, stream_id: int) -> None:
        """The caller gave up (a browser that left): the agent drops its half too."""
        _, timer = self._opening.pop(stream_id)
        timer.cancel()
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.reset("cancelled")

    def _opened(self, stream_id: int, error: str | None = None) -> None:
        d, timer = self._opening.pop(stream_id)
        timer.cancel()
        if error is None:
            d.callback(self._streams[stream_id])
        else:
            d.errback(ConnectError(error))

    # -- the agent's side ------------------------------------------------------------------

    def accept_stream(self, stream: Stream, protocol: IProtocol) -> None:
        """The agent connected ``stream`` to opencode; ``protocol`` now owns it."""
        if stream.closed:
            return
        self.send(encode("opened", stream.id, window=self.window))
        stream.attach(protocol)

    # -- receiving -------------------------------------------------------------------------

    def message_received(self, message: bytes) -> None:
        if self._lost:
            return  # the WebSocket is closing; what the peer sent before it knew is moot
        self._last_heard = self._clock.seconds()
        try:
            frame = decode(message)
        except ProtocolError as e:
            return self.fail("protocol", str(e))
        if frame.stream == 0:
            return self._tunnel_frame(frame)
        if self.version is None:
            return self.fail("protocol", "stream frame before hello")
        stream = self._streams.get(frame.stream)
        if frame.type == "open":
            return self._on_open(frame)
        if stream is None:
            if frame.type in ("data", "end", "opened"):
                self._owe_reply()
                self.send(encode("reset", frame.stream, reason="unknown stream"))
            return  # (credit and reset for a stream that is gone are harmless)
        if frame.type == "opened":
            if frame.stream not in self._opening:
                return stream.reset("unexpected opened")
            stream.on_credit(frame["window"])
            return self._opened(frame.stream)
        if frame.type == "reset" and frame.stream in self._opening:
            stream.on_reset(frame["reason"])
            return self._opened(frame.stream, f"the agent could not connect: {frame['reason']}")
        if frame.type == "data":
            stream.on_data(frame.payload)
        elif frame.type == "credit":
            stream.on_credit(frame["n"])
        elif frame.type == "end":
            stream.on_end()
        elif frame.type == "reset":
            stream.on_reset(frame["reason"])

    def _on_open(self, frame: Frame) -> None:
        if self._is_server or self._accept is None:
            return self.send(encode("reset", frame.stream, reason="the server accepts no streams"))
        if frame.stream <= self._last_id:
            return self.send(encode("reset", frame.stream, reason="stream id reused"))
        self._last_id = frame.stream
        stream = Stream(self, frame.stream, peer_window=frame["window"])
        stream.port = frame.fields.get("port")
        self._streams[frame.stream] = stream
        self._accept(stream)

    def _tunnel_frame(self, frame: Frame) -> None:
        if frame.type == "ping":
            if self._writable:  # (congested: any frame of ours shows we are alive)
                self.send(encode("pong", n=frame["n"]))
            else:
                self._owe_reply()
        elif frame.type == "pong":
            pass
        elif frame.type == "goaway":
            self.goaway = (frame["code"], frame["message"])
        elif frame.type == "hello" and self._is_server and self.version is None:
            common = set(frame["versions"]) & set(SUPPORTED_VERSIONS)
            if not common:
                wanted = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
                return self.fail("version", f"this server speaks tunnel protocol {wanted}")
            self.version = max(common)
            self.hello = frame
            if self.version >= PORTS_VERSION:
                self.shared_ports = frozenset(frame.fields.get("ports", ()))
            self.send(encode("welcome", version=self.version, sandbox_id=self.label))
            self.ready.callback(self)
        elif frame.type == "welcome" and not self._is_server and self.version is None:
            if frame["version"] not in SUPPORTED_VERSIONS:
                return self.fail("version", "the server chose a version we do not speak")
            self.version = frame["version"]
            self.ready.callback(self)
        else:
            self.fail("protocol", f"unexpected {frame.type}")

    # -- liveness and the end --------------------------------------------------------------

    def _ping(self) -> None:
        if self._clock.seconds() - self._last_heard > self._dead_after:
            self._log.warn(
                "tunnel {label}: no word from the peer in {s:.0f} s; closing",
                label=self.label,
                s=self._dead_after,
            )
            self.goaway = ("timeout", "the peer stopped answering")
            self._close(PING_TIMEOUT, "ping timeout")
            self.connection_lost()
            return
        self._ping_n += 1
        self.send(encode("ping", n=self._ping_n))

    def say_goodbye(self, code: str, message: str, close_code: int = 4000) -> None:
        """Tell the peer why we hang up (it shows the message), then close."""
        if not self._lost:
            self.send(encode("goaway", code=code, message=message))
            self._close(close_code, code)

    def fail(self, code: str, message: str) -> None:
        self._log.warn("tunnel {label}: {message}", label=self.label, message=message)
        self.say_goodbye(code, message, 4002)
        self.connection_lost()

    def connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        if self._pings.running:
            self._pings.stop()
        for d, timer in list(self._opening.values()):
            timer.cancel()
            d.errback(ConnectError("the tunnel closed"))
        self._opening.clear()
        for stream in list(self._streams.values()):
            stream.terminate(ConnectionLost("the tunnel closed"))
        self._streams.clear()
