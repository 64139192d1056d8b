"""The tunnel multiplexer: a server Session and an agent Session back to back in memory.

Each side's ``send`` only queues the message; ``Pair.pump`` delivers queued messages one at a
time, alternating directions, until nothing moves (like twisted.test.iosim), so no frame is
handled re-entrantly inside the ``send`` that produced it. A side's ``close`` is modelled as
a WebSocket close: its queued messages still go out, then the close frame; the peer answers
it (its own queued messages still reach the closer first) and both sides' ``onClose`` calls
``connection_lost``. A send after a side's WebSocket is closing is recorded as a late send
(autobahn would raise ``Disconnected``); every test checks there are none.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, cast

from attrs import frozen
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cli_server.tunnel.frames import MAX_PAYLOAD, Frame, decode, encode
from cli_server.tunnel.mux import OPEN_TIMEOUT, WINDOW, Session, Stream, TunnelAddress
from tests.unit.deferreds import failure_of, result_of


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class Recorder(Protocol):
    """Records what it gets. If asked: echoes it back, pauses its transport after pause_at
    bytes, calls loseConnection from connectionLost."""

    def __init__(
        self, echo: bool = False, pause_at: int | None = None, close_on_lost: bool = False
    ) -> None:
        self.echo = echo
        self.pause_at = pause_at
        self.close_on_lost = close_on_lost
        self.received = bytearray()
        self.made = 0
        self.lost: list[Failure] = []

    @property
    def stream(self) -> Stream:
        assert self.transport is not None
        return cast(Stream, self.transport)

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        assert not self.lost, "data after connectionLost"
        self.received += data
        if self.echo:
            self.stream.write(data)
        if self.pause_at is not None and len(self.received) >= self.pause_at:
            self.pause_at = None
            self.stream.pauseProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)
        if self.close_on_lost:
            self.stream.loseConnection()

    @property
    def reason(self) -> Failure:
        assert len(self.lost) == 1, f"connectionLost called {len(self.lost)} times"
        return self.lost[0]


@implementer(IPushProducer)
class FakeProducer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@frozen
class Close:
    code: int
    reason: str
    reply: bool  # the peer's answer to a close frame


class Side:
    """One end of the in-memory WebSocket."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outbox: deque[bytes | Close] = deque()
        self.sent: list[Frame] = []
        self.closes: list[tuple[int, str]] = []
        self.closing = False
        self.late: list[bytes] = []
        self.session: Session

    def send(self, message: bytes) -> None:
        if self.closing:
            self.late.append(message)
            return
        self.sent.append(decode(message))  # whatever a session sends must be a valid frame
        self.outbox.append(message)

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        if not self.closing:
            self.closing = True
            self.outbox.append(Close(code, reason, reply=False))

    def frames(self, type: str, stream: int | None = None) -> list[Frame]:
        return [f for f in self.sent if f.type == type and stream in (None, f.stream)]

    def data_sent(self, stream: int) -> int:
        return sum(len(f.payload) for f in self.frames("data", stream))

    def credit_sent(self, stream: int) -> int:
        return sum(f["n"] for f in self.frames("credit", stream))


class Pair:
    """A server Session and an agent Session connected back to back."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        mode: str = "accept",
        echo: bool = False,
        window: int = WINDOW,
        agent_window: int | None = None,
        start: bool = True,
    ) -> None:
        self.clock = clock or Clock()
        self.mode = mode
        self.echo = echo
        self.accepted: list[tuple[Stream, Recorder]] = []
        self.pending: list[Stream] = []
        self.s = Side("server")
        self.a = Side("agent")
        self.server = self.s.session = Session(
            self.clock, self.s.send, self.s.close, is_server=True, label="sb-1", window=window
        )
        self.agent = self.a.session = Session(
            self.clock,
            self.a.send,
            self.a.close,
            is_server=False,
            label="agent",
            accept=self._accept,
            agent_name="test-agent",
            window=window if agent_window is None else agent_window,
        )
        if start:
            self.server.start()
            self.agent.start()
            self.pump()
            assert self.server.version == self.agent.version == 2

    def _accept(self, stream: Stream) -> None:
        if self.mode == "accept":
            protocol = Recorder(echo=self.echo)
            self.agent.accept_stream(stream, protocol)
            self.accepted.append((stream, protocol))
        elif self.mode == "refuse":
            stream.reset("connection refused")
        else:
            self.pending.append(stream)

    def _deliver(self, src: Side, dst: Side) -> bool:
        if not src.outbox:
            return False
        item = src.outbox.popleft()
        if isinstance(item, bytes):
            dst.session.message_received(item)
        elif item.reply:
            src.session.connection_lost()  # the closing handshake is over
            dst.session.connection_lost()
        else:
            if not dst.closing:
                dst.closing = True  # it answers the close frame; it can send no more
                dst.outbox.append(Close(item.code, item.reason, reply=True))
            dst.session.connection_lost()
        return True

    def pump(self, limit: int | None = None) -> int:
        """Deliver queued messages (at most limit) until quiet; how many were delivered."""
        n = 0
        while limit is None or n < limit:
            moved = self._deliver(self.s, self.a)
            if moved:
                n += 1
            if limit is not None and n >= limit:
                break
            if self._deliver(self.a, self.s):
                n += 1
            elif not moved:
                break
            assert n < 1_000_000, "the sessions never go quiet"
        return n

    def open(self, **recorder: Any) -> tuple[Stream, Recorder, Stream, Recorder]:
        """A new stream: (server stream, server protocol, agent stream, agent protocol)."""
        d = self.server.open_stream()
        self.pump()
        stream = result_of(d)
        protocol = Recorder(**recorder)
        stream.attach(protocol)
        agent_stream, agent_protocol = self.accepted[-1]
        assert agent_stream.id == stream.id
        return stream, protocol, agent_stream, agent_protocol

    def check(self) -> None:
        assert self.s.late == [], f"the server sent after closing: {self.s.late[:3]!r}"
        assert self.a.late == [], f"the agent sent after closing: {self.a.late[:3]!r}"


class PairTestCase(SynchronousTestCase):
    def pair(self, **kwargs: Any) -> Pair:
        pair = Pair(**kwargs)
        self.addCleanup(pair.check)
        return pair

    def assertClean(self, protocol: Recorder) -> None:
        protocol.reason.trap(ConnectionDone)

    def assertNotClean(self, protocol: Recorder, kind: type[Exception] = ConnectionLost) -> None:
        reason = protocol.reason
        self.assertFalse(reason.check(ConnectionDone), reason)
        self.assertTrue(reason.check(kind), reason)


# -- hello and welcome -----------------------------------------------------------------------


class HandshakeTests(PairTestCase):
    def test_hello_welcome(self) -> None:
        """The agent says hello, the server welcomes it; both agree on version 2."""
        pair = self.pair(start=False)
        self.assertNoResult(pair.server.ready)
        pair.server.start()
        pair.agent.start()
        self.assertEqual([f.type for f in pair.a.sent], ["hello"])
        self.assertEqual(pair.s.sent, [])  # the server waits for the hello
        pair.pump()
        self.assertIs(result_of(pair.server.ready), pair.server)
        self.assertIs(result_of(pair.agent.ready), pair.agent)
        self.assertEqual((pair.server.version, pair.agent.version), (2, 2))
        assert pair.server.hello is not None
        self.assertEqual(pair.server.hello["agent"], "test-agent")
        self.assertEqual(pair.a.frames("hello")[0]["versions"], [1, 2])
        self.assertNotIn("ports", pair.a.frames("hello")[0].fields)  # (none shared)
        welcome = pair.s.frames("welcome")
        self.assertEqual([(f["version"], f["sandbox_id"]) for f in welcome], [(2, "sb-1")])
        self.assertEqual(pair.s.closes + pair.a.closes, [])

    def test_server_refuses_unknown_versions(self) -> None:
        """A hello without a version in common: goaway "version", close, no ready."""
        pair = self.pair(start=False)
        pair.server.start()
        pair.a.send(encode("hello", versions=[3, 7], agent="future-agent"))
        pair.pump()
        self.assertEqual([f["code"] for f in pair.s.frames("goaway")], ["version"])
        self.assertEqual(pair.s.closes, [(4002, "version")])
        self.assertIsNone(pair.server.version)
        self.assertNoResult(pair.server.ready)
        self.assertEqual(pair.s.frames("welcome"), [])
        self.assertRaises(ConnectError, pair.server.open_stream)
        assert pair.agent.goaway is not None
        self.assertEqual(pair.agent.goaway[0], "version")
        self.assertIn("1, 2", pair.agent.goaway[1])

    def test_agent_refuses_unknown_version(self) -> None:
        """A welcome with a version the agent did not offer: goaway "version", close."""
        pair = self.pair(start=False)
        pair.agent.start()
        pair.s.send(encode("welcome", version=3, sandbox_id="sb-1"))
        pair.pump()
        self.assertEqual(pair.a.closes, [(4002, "version")])
        self.assertEqual([f["code"] for f in pair.a.frames("goaway")], ["version"])
        self.assertIsNone(pair.agent.version)
        self.assertNoResult(pair.agent.ready)

    def test_second_hello_closes_the_tunnel(self) -> None:
        """Hello or welcome after the handshake, or to the wrong side, is a protocol error."""
        for target, frame in [
            ("server", encode("hello", versions=[1], agent="again")),
            ("agent", encode("welcome", version=1, sandbox_id="again")),
            ("agent", encode("hello", versions=[1], agent="x")),
            ("server", encode("welcome", version=1, sandbox_id="x")),
        ]:
            pair = self.pair()
            side = pair.s if target == "server" else pair.a
            side.session.message_received(frame)
            self.assertEqual(side.closes, [(4002, "protocol")])
            self.assertEqual([f["code"] for f in side.frames("goaway")], ["protocol"])

    def test_stream_frame_before_hello(self) -> None:
        """A stream frame before the handshake closes the tunnel."""
        pair = self.pair(start=False)
        pair.server.start()
        pair.a.send(encode("data", 1, b"x"))
        pair.pump()
        self.assertEqual(pair.s.closes, [(4002, "protocol")])
        assert pair.agent.goaway is not None
        self.assertIn("before hello", pair.agent.goaway[1])

    def test_goaway_is_recorded_by_the_peer(self) -> None:
        """say_goodbye sends the reason, then closes with the given code."""
        pair = self.pair()
        _, sp, _, ap = pair.open()
        pair.server.say_goodbye("revoked", "the sandbox was deleted", 4003)
        pair.pump()
        self.assertEqual(pair.agent.goaway, ("revoked", "the sandbox was deleted"))
        self.assertEqual(pair.s.closes, [(4003, "revoked")])
        self.assertNotClean(ap)
        self.assertNotClean(sp)
        self.assertEqual((pair.server.streams, pair.agent.streams), (0, 0))

    def test_ping_is_answered_with_the_same_number(self) -> None:
        """A ping gets a pong with its number."""
        pair = self.pair()
        pair.agent.message_received(encode("ping", n=42))
        self.assertEqual([f["n"] for f in pair.a.frames("pong")], [42])
        pair.server.message_received(encode("ping", n=-3))
        self.assertEqual([f["n"] for f in pair.s.frames("pong")], [-3])


# -- opening streams -------------------------------------------------------------------------


class OpenTests(PairTestCase):
    def test_open_stream(self) -> None:
        """The server opens a stream; the agent accepts it with a protocol; ids count up."""
        pair = self.pair()
        stream, protocol, agent_stream, agent_protocol = pair.open()
        self.assertEqual(stream.id, 1)
        self.assertEqual((protocol.made, agent_protocol.made), (1, 1))
        self.assertIs(agent_protocol.transport, agent_stream)
        self.assertEqual((pair.server.streams, pair.agent.streams), (1, 1))
        self.assertEqual(stream.getPeer(), TunnelAddress("sb-1", 1))
        self.assertEqual(agent_stream.getHost(), TunnelAddress("agent", 1))
        self.assertEqual([f["window"] for f in pair.s.frames("open")], [WINDOW])
        self.assertEqual([f["window"] for f in pair.a.frames("opened")], [WINDOW])
        second, _, _, _ = pair.open()
        self.assertEqual(second.id, 2)
        self.assertEqual((pair.server.streams, pair.agent.streams), (2, 2))

    def test_only_a_connected_server_opens(self) -> None:
        """Before the handshake, on the agent, or after the end: ConnectError at once."""
        pair = self.pair(start=False)
        self.assertRaises(ConnectError, pair.server.open_stream)
        pair = self.pair()
        self.assertRaises(ConnectError, pair.agent.open_stream)
        pair.server.connection_lost()
        self.assertRaises(ConnectError, pair.server.open_stream)

    def test_agent_refuses(self) -> None:
        """The agent resets the new stream: open_stream fails with ConnectError."""
        pair = self.pair(mode="refuse")
        d = pair.server.open_stream()
        pair.pump()
        failure = failure_of(d)
        failure.trap(ConnectError)
        self.assertIn("connection refused", str(failure.value))
        self.assertEqual((pair.server.streams, pair.agent.streams), (0, 0))
        self.assertEqual(len(pair.clock.getDelayedCalls()), 2)  # the pings; no open timer

    def test_open_timeout(self) -> None:
        """An agent that never answers: open_stream fails after OPEN_TIMEOUT and the stream is
        reset on the agent."""
        pair = self.pair(mode="defer")
        d = pair.server.open_stream()
        pair.pump()
        [pending] = pair.pending
        pair.clock.advance(OPEN_TIMEOUT - 0.01)
        self.assertNoResult(d)
        pair.clock.advance(0.01)
        failure_of(d).trap(ConnectError)
        self.assertEqual([f["reason"] for f in pair.s.frames("reset", 1)], ["timed out opening"])
        self.assertEqual(pair.server.streams, 0)
        pair.pump()
        self.assertTrue(pending.closed)
        self.assertEqual(pair.agent.streams, 0)
        # accepting it now is a no-op: nothing is sent, the protocol is not connected
        late = Recorder()
        pair.agent.accept_stream(pending, late)
        self.assertEqual(pair.a.frames("opened"), [])
        self.assertEqual(late.made, 0)

    def test_opened_racing_the_timeout(self) -> None:
        """The agent accepts just as the server gives up: both ends close the stream, and the
        resets do not bounce back and forth."""
        pair = self.pair(mode="defer")
        d = pair.server.open_stream()
        pair.pump()
        pair.clock.advance(OPEN_TIMEOUT)
        failure_of(d).trap(ConnectError)
        protocol = Recorder()
        pair.agent.accept_stream(pair.pending[0], protocol)  # before the reset arrives
        self.assertEqual(protocol.made, 1)
        self.assertEqual(pair.pump(), 3)  # opened; reset (timed out); reset (unknown stream)
        self.assertNotClean(protocol)
        self.assertEqual((pair.server.streams, pair.agent.streams), (0, 0))
        self.assertEqual(pair.s.closes + pair.a.closes, [])

    def test_connection_lost_fails_pending_opens(self) -> None:
        """A pending open_stream fails when the tunnel goes; its timer is cancelled."""
        pair = self.pair(mode="defer")
        d1 = pair.server.open_stream()
        d2 = pair.server.open_stream()
        pair.server.connection_lost()
        for d in (d1, d2):
            failure_of(d).trap(ConnectError)
        self.assertEqual(pair.server.streams, 0)
        # left: the agent's pings only (the server's pings and open timers are gone)
        self.assertEqual(len(pair.clock.getDelayedCalls()), 1)
        pair.clock.advance(OPEN_TIMEOUT * 2)  # nothing fires twice

    def test_open_stream_on_a_lost_tunnel_after_ready(self) -> None:
        """connection_lost twice is harmless; open after it fails."""
        pair = self.pair()
        _, sp, _, _ = pair.open()
        pair.server.connection_lost()
        pair.server.connection_lost()
        self.assertNotClean(sp)
        self.assertRaises(ConnectError, pair.server.open_stream)


# -- bytes both ways ---------------------------------------------------------------------------


class DataTests(PairTestCase):
    def test_round_trip_both_ways(self) -> None:
        """Bytes written on either end arrive at the other, byte for byte, in frames of at
        most MAX_PAYLOAD."""
        pair = self.pair()
        stream, sp, agent_stream, ap = pair.open()
        up, down = blob(100_000, 1), blob(70_001, 2)
        stream.write(up[:10])
        stream.writeSequence([up[10:50_000], up[50_000:]])
        agent_stream.write(down)
        pair.pump()
        self.assertEqual(bytes(ap.received), up)
        self.assertEqual(bytes(sp.received), down)
        self.assertTrue(all(len(f.payload) <= MAX_PAYLOAD for f in pair.s.frames("data")))
        self.assertEqual(pair.s.data_sent(1), len(up))
        self.assertEqual(pair.a.data_sent(1), len(down))

    def test_empty_writes_send_nothing(self) -> None:
        pair = self.pair()
        stream, _, _, _ = pair.open()
        stream.write(b"")
        stream.writeSequence([b"", b""])
        self.assertEqual(pair.s.frames("data"), [])

    def test_echo_many_streams(self) -> None:
        """Several streams at once keep their bytes apart."""
        pair = self.pair(echo=True)
        opened = [pair.open() for _ in range(5)]
        for n, (stream, _, _, _) in enumerate(opened):
            stream.write(blob(40_000 + n, n))
        pair.pump()
        for n, (_, sp, _, ap) in enumerate(opened):
            self.assertEqual(bytes(ap.received), blob(40_000 + n, n))
            self.assertEqual(bytes(sp.received), blob(40_000 + n, n))

    def test_credit_is_granted_in_batches(self) -> None:
        """The receiver grants credit only for bytes its protocol took, and not per frame."""
        pair = self.pair()
        stream, _, _, ap = pair.open()
        stream.write(blob(3 * WINDOW))
        pair.pump()
        self.assertEqual(len(ap.received), 3 * WINDOW)
        credits = pair.a.frames("credit", 1)
        self.assertLess(len(credits), 3 * WINDOW // MAX_PAYLOAD)
        self.assertTrue(all(f["n"] >= WINDOW // 4 for f in credits))
        self.assertLessEqual(pair.a.credit_sent(1), 3 * WINDOW)
        self.assertGreaterEqual(pair.a.credit_sent(1), 2 * WINDOW)

    def test_small_window(self) -> None:
        """A session with a small window still moves any amount of data."""
        pair = self.pair(window=4096, echo=True)
        stream, sp, _, ap = pair.open()
        data = blob(100_000)
        stream.write(data)
        pair.pump()
        self.assertEqual(bytes(ap.received), data)
        self.assertEqual(bytes(sp.received), data)
        self.assertTrue(all(len(f.payload) <= 4096 for f in pair.s.frames("data")))

    def test_different_windows_per_side(self) -> None:
        """Each side advertises its own window; the other side keeps to it."""
        pair = self.pair(window=64 * 1024, agent_window=WINDOW * 2)
        stream, sp, agent_stream, ap = pair.open()
        agent_stream.pauseProducing()
        stream.pauseProducing()
        stream.write(blob(5 * WINDOW))
        agent_stream.write(blob(5 * WINDOW))
        pair.pump()
        self.assertEqual(pair.s.data_sent(1), 2 * WINDOW)  # the agent's window
        self.assertEqual(pair.a.data_sent(1), 64 * 1024)  # the server's window
        stream.resumeProducing()
        agent_stream.resumeProducing()
        pair.pump()
        self.assertEqual(bytes(ap.received), blob(5 * WINDOW))
        self.assertEqual(bytes(sp.received), blob(5 * WINDOW))


# write sizes: tiny, around a frame's payload, around a window, and large
chunk_sizes = st.one_of(
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=MAX_PAYLOAD - 2, max_value=MAX_PAYLOAD + 2),
    st.integers(min_value=WINDOW - 2, max_value=WINDOW + 2),
    st.integers(min_value=1, max_value=600_000),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(chunk_sizes, min_size=1, max_size=20),
    st.lists(st.booleans(), max_size=20),
    st.integers(min_value=0, max_value=2**32),
)
@example(sizes=[3 * WINDOW + 1, 1, MAX_PAYLOAD - 1, 2 * WINDOW], pumps=[False], seed=0)
@example(sizes=[MAX_PAYLOAD] * 64 + [1] * 100, pumps=[True, False] * 10, seed=1)
def test_arbitrary_splits_echo(sizes: list[int], pumps: list[bool], seed: int) -> None:
    """Bytes written in any split come back from the agent's echo byte-identical; then an end
    both ways closes the stream cleanly on both sides."""
    pair = Pair(echo=True)
    stream, sp, agent_stream, ap = pair.open()
    data = blob(sum(sizes), seed)
    at = 0
    for n, size in enumerate(sizes):
        stream.write(data[at : at + size])
        at += size
        if n < len(pumps) and pumps[n]:
            pair.pump()
    stream.loseConnection()
    stream.write(b"dropped: written after loseConnection")
    pair.pump()
    assert bytes(ap.received) == data
    assert bytes(sp.received) == data
    sp.reason.trap(ConnectionDone)
    ap.reason.trap(ConnectionDone)
    assert stream.closed and agent_stream.closed
    assert (pair.server.streams, pair.agent.streams) == (0, 0)
    assert pair.s.frames("reset") == pair.a.frames("reset") == []
    pair.check()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("write"), chunk_sizes),
            st.tuples(st.just("pump"), st.integers(min_value=1, max_value=60)),
            st.tuples(st.just("pause"), st.just(0)),
            st.tuples(st.just("resume"), st.just(0)),
        ),
        max_size=40,
    ),
    st.integers(min_value=0, max_value=2**32),
)
def test_arbitrary_pauses(ops: list[tuple[str, int]], seed: int) -> None:
    """The agent writes while the server's protocol pauses and resumes at random: the agent
    never has more than a window unacknowledged, nothing is lost or reset."""
    pair = Pair()
    stream, sp, agent_stream, _ = pair.open()
    written = bytearray()
    for op, n in ops:
        if op == "write":
            chunk = blob(n, seed + len(written))
            agent_stream.write(chunk)
            written += chunk
        elif op == "pump":
            pair.pump(n)
        elif op == "pause":
            stream.pauseProducing()
        else:
            stream.resumeProducing()
        assert pair.a.data_sent(1) <= WINDOW + pair.s.credit_sent(1)
        assert sp.received == written[: len(sp.received)]
    stream.resumeProducing()
    pair.pump()
    assert sp.received == written
    assert pair.s.frames("reset") == pair.a.frames("reset") == []
    assert sp.lost == []
    pair.check()


# -- flow control ---------------------------------------------------------------------------


class FlowControlTests(PairTestCase):
    def test_paused_receiver_stops_the_sender_after_one_window(self) -> None:
        """Paused before any data: exactly WINDOW bytes are sent and held; resuming delivers
        the rest, nothing lost."""
        pair = self.pair()
        stream, _, agent_stream, ap = pair.open()
        agent_stream.pauseProducing()
        data = blob(3 * WINDOW + 123)
        stream.write(data)
        pair.pump()
        self.assertEqual(pair.s.data_sent(1), WINDOW)
        self.assertEqual(ap.received, b"")
        self.assertEqual(pair.a.frames("credit"), [])
        agent_stream.resumeProducing()
        pair.pump()
        self.assertEqual(bytes(ap.received), data)
        self.assertEqual(pair.s.data_sent(1), len(data))

    def test_protocol_pausing_mid_stream(self) -> None:
        """A protocol that pauses its transport inside dataReceived: the sender stops with
        exactly one window unacknowledged."""
        pair = self.pair()
        stream, sp, agent_stream, ap = pair.open()
        ap.pause_at = 300_000
        data = blob(4 * WINDOW)
        stream.write(data)
        pair.pump()
        self.assertGreaterEqual(len(ap.received), 300_000)
        self.assertLess(len(ap.received), 300_000 + MAX_PAYLOAD)
        self.assertEqual(pair.s.data_sent(1), WINDOW + pair.a.credit_sent(1))
        self.assertLess(pair.s.data_sent(1), len(data))
        agent_stream.resumeProducing()
        pair.pump()
        self.assertEqual(bytes(ap.received), data)

    def test_producer_paused_at_high_water_and_resumed(self) -> None:
        """The writer's producer is paused once unsent bytes pass WINDOW, and resumed when the
        peer's credit brings them back under half a window."""
        pair = self.pair()
        stream, _, agent_stream, ap = pair.open()
        self.assertRaises(ValueError, stream.registerProducer, FakeProducer(), False)
        producer = FakeProducer()
        stream.registerProducer(producer, True)
        agent_stream.pauseProducing()
        written = 0
        chunk = 50_000
        while written - WINDOW <= WINDOW:  # the buffer (written - the peer's window)
            self.assertEqual(producer.events, [])
            stream.write(blob(chunk, written))
            written += chunk
        self.assertEqual(producer.events, ["pause"])  # just as the buffer passed WINDOW
        stream.write(blob(chunk, written))  # a producer that keeps writing anyway
        written += chunk
        self.assertEqual(producer.events, ["pause"])
        pair.pump()
        self.assertEqual(pair.s.data_sent(1), WINDOW)
        agent_stream.resumeProducing()
        pair.pump()
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertEqual(len(ap.received), written)
        stream.unregisterProducer()
        stream.write(blob(3 * WINDOW))
        self.assertEqual(producer.events, ["pause", "resume"])

    def test_paused_stream_does_not_stall_another(self) -> None:
        """One stream's stalled receiver leaves the other streams of the tunnel running."""
        pair = self.pair(echo=True)
        stalled, stalled_p, stalled_agent, _ = pair.open()
        stream, sp, _, ap = pair.open()
        stalled_p.stream.pauseProducing()  # the server does not read the echo
        stalled_agent.pauseProducing()  # and the agent does not read the request
        stalled.write(blob(4 * WINDOW))
        data = blob(3 * WINDOW, 9)
        stream.write(data)
        pair.pump()
        self.assertEqual(bytes(ap.received), data)
        self.assertEqual(bytes(sp.received), data)
        self.assertEqual(pair.s.data_sent(stalled.id), WINDOW)
        self.assertEqual(stalled_p.received, b"")
        self.assertEqual(pair.s.frames("reset") + pair.a.frames("reset"), [])

    def test_pausing_after_end_still_delivers(self) -> None:
        """A paused receiver gets the buffered bytes and then the clean end when it resumes."""
        pair = self.pair()
        stream, sp, agent_stream, ap = pair.open()
        agent_stream.pauseProducing()
        data = blob(2 * WINDOW + 5)
        stream.write(data)
        stream.loseConnection()
        pair.pump()
        self.assertEqual(pair.s.frames("end"), [])  # the end waits behind the data
        self.assertEqual(ap.lost, [])
        agent_stream.resumeProducing()
        pair.pump()
        self.assertEqual(bytes(ap.received), data)
        self.assertClean(ap)
        self.assertClean(sp)
        self.assertEqual(len(pair.s.frames("end")), 1)
        self.assertEqual((pair.server.streams, pair.agent.streams), (0, 0))


# -- ending streams -----------------------------------------------------------------------------


class EndTests(PairTestCase):
    def test_lose_connection_ends_both_ways(self) -> None:
        """loseConnection: end, the peer's protocol is told, it answers end; both clean."""
        for closer in ("server", "agent"):
            pair = self.pair()
            stream, sp, agent_stream, ap = pair.open()
            first, second = (stream, agent_stream) if closer == "server" else (agent_stream, stream)
            first.write(b"last words")
            first.loseConnection()
            self.assertTrue(first.disconnecting)
            pair.pump()
            self.assertClean(sp)
            self.assertClean(ap)
            self.assertEqual(bytes((ap if closer == "server" else sp).received), b"last words")
            self.assertTrue(first.closed and second.closed)
            self.assertEqual((pair.server.streams, pair.agent.streams), (0, 0))
            self.assertEqual((len(pair.s.frames("end")), len(pair.a.frames("end"))), (1, 1))
            first.loseConnection()  # again: nothing more happens
            second.loseConnection()
            pair.pump()
            self.assertEqual((len(pair.s.frames("end")), len(pair.a.frames("end"))), (1, 1))

    def test_protocol_closing_in_connection_lost(self) -> None:
        """A protocol that calls loseConnection from connectionLost sends one end only."""
        pair = self.pair()
        stream, sp, agent_stream, ap = pair.open(close_on_lost=True)
        agent_stream.loseConnection()
        pair.pump()
        self.assertClean(ap)
        self.assertClean(sp)
        self.assertEqual(len(pair.s.frames("end")), 1)
        self.assertEqual(len(pair.a.frames("end")), 1)
        self.assertEqual((pair.server.streams, pair.agent.streams), (0, 0))

    def test_abort_resets(self) -> None:
        """abortConnection: reset; the peer's protocol sees a non-clean end; both forget it."""
        pair = self.pair()
        stream, sp, agent_stream, ap = pair.open()
        agent_stream.pauseProducing()
        stream.write(blob(2 * WINDOW))
        stream.abortConnection()
        self.assertNotClean(sp, ConnectionAborted)
        pair.pump()
        self.assertNotClean(ap)
        self.assertIn("aborted", str(ap.reason.value))
        self.assertEqual([f["reason"] for f in pair.s.frames("reset")], ["aborted"])
        self.assertEqual((pair.server.streams, pair.agent.streams), (0, 0))
        self.assertTrue(stream.closed and agent_stream.closed)
        stream.write(b"more")  # after the end: dropped
        stream.abortConnection()  # again: nothing
        self.assertEqual(len(pair.s.frames("reset")), 1)
        self.assertEqual(pair.a.frames("reset"), [])  # the reset is not answered

    def test_stop_producing_aborts(self) -> None:
        """The stream as a producer: stopProducing aborts it."""
        pair = self.pair()
        stream, sp, _, ap = pair.open()
        stream.stopProducing()
        pair.pump()
        self.assertNotClean(sp, ConnectionAborted)
        self.assertNotClean(ap)

    def test_agent_reset_after_open(self) -> None:
        """The agent's reset of an open stream reaches the server's protocol."""
        pair = self.pair()
        stream, sp, agent_stream, ap = pair.open()
        agent_stream.reset("opencode went away")
        pair.pump()
        self.assertNotClean(sp)
        self.assertIn("opencode went away", str(sp.reason.value))
        self.assertNotClean(ap)
        self.assertEqual((pair.server.streams, pair.agent.streams), (0, 0))


# -- hostile or broken peers ------------------------------------------------------------------


class HostileTests(PairTestCase):
    def test_frames_on_unknown_streams(self) -> None:
        """data, end and opened on an unknown stream get a reset back; credit and reset are
        ignored; the tunnel stays up."""
        pair = self.pair()
        cases: list[tuple[str, dict[str, Any]]] = [
            ("data", {}),
            ("end", {}),
            ("opened", {"window": 5}),
        ]
        for type, fields in cases:
            pair.agent.message_received(encode(type, 99, **fields))
            pair.server.message_received(encode(type, 77, **fields))
        pair.agent.message_received(encode("credit", 99, n=5))
        pair.agent.message_received(encode("reset", 99, reason="x"))
        pair.server.message_received(encode("credit", 77, n=5))
        pair.server.message_received(encode("reset", 77, reason="x"))
        self.assertEqual(
            [(f.stream, f["reason"]) for f in pair.a.frames("reset")], [(99, "unknown stream")] * 3
        )
        self.assertEqual(
            [(f.stream, f["reason"]) for f in pair.s.frames("reset")], [(77, "unknown stream")] * 3
        )
        self.assertEqual(pair.s.closes + pair.a.closes, [])
        pair.pump()  # the resets are ignored in turn
        stream, sp, agent_stream, ap = pair.open()
        stream.write(b"still fine")
        pair.pump()
        self.assertEqual(bytes(ap.received), b"still fine")

    def test_data_beyond_the_window(self) -> None:
        """A peer that sends more than the window gets that stream reset, and only it."""
        pair = self.pair(echo=True)
        _, sp1, agent1, ap1 = pair.open()
        stream2, sp2, _, ap2 = pair.open()
        agent1.pauseProducing()
        for _ in range(WINDOW // MAX_PAYLOAD):
            pair.agent.message_received(encode("data", 1, b"x" * MAX_PAYLOAD))
        self.assertEqual(pair.a.frames("reset"), [])  # a full window is fine
        pair.agent.message_received(encode("data", 1, b"y"))
        self.assertEqual(
            [(f.stream, f["reason"]) for f in pair.a.frames("reset")],
            [(1, "data beyond the window")],
        )
        self.assertNotClean(ap1)
        self.assertEqual(ap1.received, b"")
        pair.pump()
        self.assertNotClean(sp1)
        stream2.write(b"stream 2 is unaffected")
        pair.pump()
        self.assertEqual(bytes(sp2.received), b"stream 2 is unaffected")
        self.assertEqual(ap2.lost, [])
        self.assertEqual(pair.s.closes + pair.a.closes, [])
        self.assertEqual((pair.server.streams, pair.agent.streams), (1, 1))

    def test_window_counts_only_acknowledged_bytes(self) -> None:
        """Credit the receiver granted reopens the window, and no more than that."""
        pair = self.pair()
        stream, sp, agent_stream, ap = pair.open()
        stream.write(blob(WINDOW))  # sent, delivered, credited
        pair.pump()
        room = pair.a.credit_sent(1)  # the window, less what arrived, plus what was credited
        self.assertGreater(room, 0)
        agent_stream.pauseProducing()
        for start in range(0, room, MAX_PAYLOAD):
            pair.agent.message_received(encode("data", 1, b"z" * min(MAX_PAYLOAD, room - start)))
        self.assertEqual(pair.a.frames("reset"), [])
        pair.agent.message_received(encode("data", 1, b"!"))
        self.assertEqual([f["reason"] for f in pair.a.frames("reset")], ["data beyond the window"])

    def test_duplicate_end(self) -> None:
        """A second end resets the stream (whether it is still open or already gone)."""
        pair = self.pair()
        _, _, agent_stream, ap = pair.open()
        agent_stream.pauseProducing()  # so the stream stays open after the first end
        pair.agent.message_received(encode("data", 1, b"unread"))
        pair.agent.message_received(encode("end", 1))
        self.assertEqual(ap.lost, [])
        pair.agent.message_received(encode("end", 1))
        self.assertEqual([f["reason"] for f in pair.a.frames("reset", 1)], ["duplicate end"])
        self.assertNotClean(ap)
        self.assertEqual(pair.agent.streams, 0)

        _, _, agent_stream, ap = pair.open()
        pair.agent.message_received(encode("end", 2))
        self.assertClean(ap)  # answered with end and gone
        pair.agent.message_received(encode("end", 2))
        self.assertEqual([f["reason"] for f in pair.a.frames("reset", 2)], ["unknown stream"])

    def test_data_after_end(self) -> None:
        """Data after the peer's end resets the stream."""
        pair = self.pair()
        _, _, agent_stream, ap = pair.open()
        agent_stream.pauseProducing()  # so the stream stays open after the end
        pair.agent.message_received(encode("data", 1, b"unread"))
        pair.agent.message_received(encode("end", 1))
        pair.agent.message_received(encode("data", 1, b"late"))
        self.assertEqual([f["reason"] for f in pair.a.frames("reset", 1)], ["data after end"])
        self.assertNotClean(ap)

    def test_stream_protocol_violations(self) -> None:
        """opened where nothing was opened, open to the server, a reused id, credit overflow:
        each resets one stream and the tunnel stays up."""
        pair = self.pair()
        _, sp, _, ap = pair.open()
        pair.agent.message_received(encode("opened", 1, window=10))
        self.assertEqual([f["reason"] for f in pair.a.frames("reset", 1)], ["unexpected opened"])
        self.assertNotClean(ap)
        pair.pump()
        self.assertNotClean(sp)

        pair.server.message_received(encode("open", 50, window=10))
        self.assertEqual(
            [f["reason"] for f in pair.s.frames("reset", 50)], ["the server accepts no streams"]
        )
        pair.agent.message_received(encode("open", 1, window=10))
        self.assertEqual(
            [f["reason"] for f in pair.a.frames("reset", 1)][-1:], ["stream id reused"]
        )
        self.assertEqual(len(pair.accepted), 1)

        _, sp, agent_stream, ap = pair.open()
        pair.agent.message_received(encode("credit", agent_stream.id, n=2**30))
        pair.agent.message_received(encode("credit", agent_stream.id, n=2**30))
        self.assertEqual(
            [f["reason"] for f in pair.a.frames("reset", agent_stream.id)], ["credit overflow"]
        )
        self.assertNotClean(ap)
        self.assertEqual(pair.s.closes + pair.a.closes, [])

    def test_unparseable_frame_closes_the_tunnel(self) -> None:
        """Garbage: goaway "protocol", a 4xxx close, every stream on both sides lost."""
        pair = self.pair()
        opened = [pair.open() for _ in range(3)]
        pair.agent.message_received(b"\x00\x00\x00\x02{]")
        self.assertEqual(len(pair.a.closes), 1)
        code, reason = pair.a.closes[0]
        self.assertTrue(4000 <= code < 5000, code)
        self.assertEqual(reason, "protocol")
        self.assertEqual([f["code"] for f in pair.a.frames("goaway")], ["protocol"])
        for _, _, _, ap in opened:
            self.assertNotClean(ap)
        self.assertEqual(pair.agent.streams, 0)
        pair.pump()
        assert pair.server.goaway is not None
        self.assertEqual(pair.server.goaway[0], "protocol")
        self.assertIn("not JSON", pair.server.goaway[1])
        for _, sp, _, _ in opened:
            self.assertNotClean(sp)
        self.assertEqual(pair.server.streams, 0)
        self.assertRaises(ConnectError, pair.server.open_stream)
        self.assertEqual(pair.clock.getDelayedCalls(), [])  # no pings left

    def test_frames_after_the_tunnel_is_lost_are_ignored(self) -> None:
        """What the peer sent before it saw our close still arrives (the WebSocket is closing,
        not closed); the lost session ignores it: no new stream, no reply."""
        pair = self.pair()
        stream, sp, _, ap = pair.open()
        d = pair.server.open_stream()  # in flight as the agent fails
        stream.write(b"in flight")
        pair.server.message_received(encode("ping", n=1))  # the server owes a pong
        pair.agent.message_received(b"garbage")
        pair.pump()
        self.assertEqual(len(pair.accepted), 1)  # the late open created nothing
        failure_of(d).trap(ConnectError)
        self.assertNotClean(ap)
        self.assertNotClean(sp)
        self.assertEqual(ap.received, b"")
        self.assertEqual((pair.server.streams, pair.agent.streams), (0, 0))
        pair.check()


# -- liveness -----------------------------------------------------------------------------------


class PingTests(PairTestCase):
    def test_dead_peer(self) -> None:
        """No word from the peer for more than dead_after: close 4008, streams lost."""
        pair = self.pair()
        _, sp, _, _ = pair.open()
        for _ in range(3):  # 15, 30, 45 s: a ping each time, still alive
            pair.clock.advance(15)
        self.assertEqual([f["n"] for f in pair.s.frames("ping")], [1, 2, 3])
        self.assertEqual(pair.s.closes, [])
        self.assertEqual(sp.lost, [])
        pair.clock.advance(15)  # 60 s since the last message
        self.assertEqual(pair.s.closes, [(4008, "ping timeout")])
        self.assertEqual(pair.server.goaway, ("timeout", "the peer stopped answering"))
        self.assertNotClean(sp)
        self.assertEqual(pair.server.streams, 0)
        self.assertEqual(len(pair.s.frames("ping")), 3)
        pair.clock.advance(100)
        self.assertEqual(len(pair.s.closes), 1)  # once

    def test_one_big_clock_jump(self) -> None:
        """A clock that jumps past dead_after at once also closes."""
        pair = self.pair()
        pair.clock.advance(45)
        self.assertEqual(pair.s.closes, [])  # the ping due at 15 runs at 45: not yet dead
        pair.clock.advance(15.5)
        self.assertEqual(pair.s.closes, [(4008, "ping timeout")])
        self.assertEqual(pair.a.closes, [(4008, "ping timeout")])
        pair = self.pair()
        pair.clock.advance(46)  # the first ping runs when the clock already says 46
        self.assertEqual(pair.s.closes, [(4008, "ping timeout")])

    def test_healthy_pair_stays_up(self) -> None:
        """Pings answered by pongs keep the tunnel alive indefinitely."""
        pair = self.pair()
        _, sp, _, ap = pair.open()
        for _ in range(600):
            pair.clock.advance(1)
            pair.pump()
        self.assertEqual(pair.s.closes + pair.a.closes, [])
        self.assertEqual(len(pair.s.frames("ping")), 40)
        self.assertEqual(len(pair.a.frames("ping")), 40)
        self.assertEqual(
            [f["n"] for f in pair.a.frames("pong")], [f["n"] for f in pair.s.frames("ping")]
        )
        self.assertEqual(sp.lost + ap.lost, [])

    def test_any_frame_counts_as_life(self) -> None:
        """A peer that never pongs but keeps sending other frames is alive."""
        pair = self.pair()
        _, sp, _, _ = pair.open()
        for _ in range(30):  # 300 s; nothing is pumped, so the server's pings go unanswered
            pair.clock.advance(10)
            pair.server.message_received(encode("data", 1, b"tick"))
        self.assertEqual(pair.s.closes, [])
        self.assertEqual(len(pair.s.frames("ping")), 20)
        self.assertEqual(bytes(sp.received), b"tick" * 30)
        self.assertEqual(sp.lost, [])
        self.assertEqual(pair.a.closes, [(4008, "ping timeout")])  # the agent heard nothing


class FairSendingTests(PairTestCase):
    """The session is its connection's producer and serves streams one frame each in turn."""

    def test_a_full_connection_holds_data_but_not_control_frames(self) -> None:
        pair = self.pair()
        stream, _, agent_stream, _ = pair.open()
        pair.agent.pauseProducing()  # the agent's connection buffer is full
        agent_stream.write(b"x" * 40_000)
        stream.write(b"y" * 300_000)  # the server sends; the agent must grant credit
        pair.pump()
        self.assertEqual(pair.a.data_sent(stream.id), 0)  # held back
        self.assertGreater(pair.a.credit_sent(stream.id), 0)  # control frames still go
        pair.agent.resumeProducing()
        pair.pump()
        self.assertEqual(pair.a.data_sent(stream.id), 40_000)

    def test_a_peer_that_floods_while_we_are_congested_is_cut_off(self) -> None:
        pair = self.pair()
        pair.server.pauseProducing()
        for n in range(1001):
            pair.server.message_received(encode("ping", n=n))
        self.assertEqual(pair.s.frames("pong"), [])  # no answers pile up
        self.assertEqual(pair.s.closes[-1][0], 4002)

    def test_streams_take_turns(self) -> None:
        pair = self.pair()
        first, _, _, _ = pair.open()
        second, _, _, _ = pair.open()
        pair.agent.pauseProducing()
        agent_first, agent_second = pair.accepted[-2][0], pair.accepted[-1][0]
        agent_first.write(b"a" * 5 * 16384)  # a big download queued first
        agent_second.write(b"b" * 100)  # then one small event
        pair.agent.resumeProducing()
        order = [f.stream for f in pair.a.frames("data")]
        # The event goes out second, not behind the whole download.
        self.assertEqual(order[:3], [first.id, second.id, first.id])
        self.assertEqual(order.count(first.id), 5)

    def test_cancelling_an_open_drops_both_halves(self) -> None:
        pair = self.pair(mode="pending")  # the agent is still connecting to opencode
        d = pair.server.open_stream()
        pair.pump()
        d.cancel()
        pair.pump()
        self.assertIsInstance(failure_of(d).value, CancelledError)
        self.assertEqual(pair.server.streams, 0)
        self.assertEqual(pair.agent.streams, 0)
        self.assertTrue(pair.pending[-1].closed)
