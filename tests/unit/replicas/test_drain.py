"""A stopping replica (SIGTERM): the drain's order and bounds on a hand-moved clock, the
relay workers' part over real socket pairs, and what a stopping server says on /readyz."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from cli_server.agent.service import Backoff
from cli_server.proxy.relay.wire import DRAIN, DRAINING
from cli_server.proxy.workers import RelayWorkers
from cli_server.replicas.drain import Drain
from cli_server.web.open_requests import OpenRequests, lasting
from cli_server.web.site import MainSite
from tests.unit.agent.test_service import RunningAgent
from tests.unit.proxy.relay.test_connection import OK, Kept, _closed, get


class Listener(Service):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def stopService(self) -> None:
        super().stopService()
        self.log.append("stop listening")


class Counter:
    def __init__(self, n: int = 0) -> None:
        self.in_flight = n


class Workers(Counter):
    def __init__(self, n: int = 0) -> None:
        super().__init__(n)
        self.asked = 0

    def drain(self) -> None:
        self.asked += 1


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.log: list[str] = []
        self.web = Counter(1)
        self.workers = Workers(1)
        listeners = [Listener(self.log), Listener(self.log)]
        self.drain = Drain(
            self.clock,
            30.0,
            listeners,
            [Counter(0), self.web],
            self.workers,
            lambda: self.log.append("goaway"),
            [lambda: self.log.append("close streams")],
            lambda: self.log.append("draining"),
        )
        for listener in listeners:
            listener.startService()
        self.drain.startService()

    def stop(self) -> Deferred[None]:
        return self.drain.stopService()

    def test_stops_accepting_at_once_and_waits_for_requests_under_way(self) -> None:
        stopping = self.stop()
        assert self.drain.draining
        assert self.log == ["draining", "stop listening", "stop listening"]
        self.clock.advance(5)
        self.assertNoResult(stopping)
        assert self.workers.asked > 1  # asked again each round
        self.web.in_flight = 0
        self.clock.advance(1)
        self.assertNoResult(stopping)  # a worker still carries one
        self.workers.in_flight = 0
        self.clock.advance(self.drain.poll)
        self.successResultOf(stopping)
        assert self.log[-2:] == ["goaway", "close streams"]  # agents, then long streams last
        assert self.drain.drained_in is not None and 6 <= self.drain.drained_in <= 6.2

    def test_nothing_under_way_stops_in_no_time(self) -> None:
        self.web.in_flight = self.workers.in_flight = 0
        self.successResultOf(self.stop())
        assert self.log[-2:] == ["goaway", "close streams"]
        assert self.drain.drained_in == 0

    def test_a_request_that_never_ends_is_given_the_drain_timeout_only(self) -> None:
        stopping = self.stop()
        self.clock.advance(29.9)
        self.assertNoResult(stopping)
        assert "goaway" not in self.log
        self.clock.advance(0.2)
        self.successResultOf(stopping)
        assert self.log[-2:] == ["goaway", "close streams"]

    def test_without_relay_workers(self) -> None:
        drain = Drain(self.clock, 30.0, [], [Counter(0)], None, lambda: None, [])
        drain.startService()
        self.successResultOf(drain.stopService())


class RelayWorkerDrainTests(SynchronousTestCase):
    """The worker's side: on ``D`` idle connections close, busy ones after their answer, and
    event streams and WebSockets are not waited for; ``d`` says how many are busy."""

    def drained(self, k: Kept, number: int) -> int:
        k.control.send(DRAIN.pack(b"D", number))
        msg, _ = k.report(b"d")
        _, answered, busy = DRAINING.unpack(msg)
        assert answered == number
        result: int = busy
        return result

    def test_an_idle_connection_closes_at_once(self) -> None:
        k = Kept()
        k.upstream()
        k.answer(OK)
        assert self.drained(k, 1) == 0
        assert _closed(k.browser)

    def test_a_request_under_way_ends_with_its_answer_and_says_close(self) -> None:
        k = Kept()
        assert k.upstream().startswith(b"GET /x ")
        assert self.drained(k, 1) == 1  # asked, not answered
        got = k.answer(OK)
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"hi")
        assert b"connection: close\r\n" in got
        assert _closed(k.browser)
        assert self.drained(k, 2) == 0

    def test_a_request_pipelined_behind_the_last_answer_is_not_taken(self) -> None:
        k = Kept()
        k.upstream()
        k.control.send(DRAIN.pack(b"D", 1))
        k.report(b"d")
        k.browser.sendall(get(b"/late"))  # (already on its way: pipelined)
        k.turn()
        got = k.answer(OK)
        assert got.count(b"HTTP/1.1") == 1  # (the browser sends it again elsewhere)
        assert _closed(k.browser)

    def test_an_event_stream_is_not_waited_for(self) -> None:
        k = Kept(get(b"/event"))
        k.upstream()
        k.sandbox.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n"
        )
        assert b"data:" in k.got()
        assert self.drained(k, 1) == 0
        assert not _closed(k.browser)  # closed last, when the worker stops
        k.sandbox.sendall(b"6\r\ndata:1\r\n")
        assert b"data:1" in k.got()


class Spawning(MemoryReactorClock):
    """A reactor whose spawned workers are only their control sockets: the child's end
    (its fd 3) is kept in ``children``, as the worker process would hold it."""

    def __init__(self) -> None:
        super().__init__()
        self.children: list[socket.socket] = []

    def spawnProcess(self, protocol: object, executable: str, args: object, **kw: Any) -> object:
        child = socket.socket(fileno=os.dup(kw["childFDs"][3]))
        self.children.append(child)
        return SimpleNamespace(pid=4242, signalProcess=lambda name: None)


class ServerSideWorkerTests(SynchronousTestCase):
    """``RelayWorkers.in_flight`` trusts only an answer to a drain asked after the worker's
    last connection was given."""

    def test_answers_count_only_for_connections_given_before_the_drain(self) -> None:
        reactor = Spawning()
        workers = RelayWorkers(reactor, 1)
        workers.startService()
        (theirs,) = reactor.children
        self.addCleanup(theirs.close)
        (worker,) = workers.workers
        assert worker.control is not None
        self.addCleanup(worker.control.close)
        workers.drain()
        assert theirs.recv(64) == DRAIN.pack(b"D", 1)
        assert workers.in_flight == 1  # no answer yet
        theirs.send(DRAINING.pack(b"d", 1, 2))
        worker.doRead()
        assert workers.in_flight == 1  # two requests under way
        theirs.send(DRAINING.pack(b"d", 1, 0))
        worker.doRead()
        assert workers.in_flight == 0
        worker.given = 1  # a connection given after the first drain was asked
        assert workers.in_flight == 1
        workers.drain()
        theirs.send(DRAINING.pack(b"d", 2, 0))
        worker.doRead()
        assert workers.in_flight == 0
        worker.control_lost()  # (a worker that is gone carries nothing)
        worker.given = 5
        assert workers.in_flight == 0


class OpenRequestsTests(SynchronousTestCase):
    def request(self, headers: dict[bytes, bytes] | None = None) -> DummyRequest:
        request = DummyRequest([b""])
        for name, value in (headers or {}).items():
            request.requestHeaders.setRawHeaders(name, [value])
        return request

    def test_long_streams_are_not_in_flight(self) -> None:
        requests = OpenRequests()
        plain, terminal, events = (
            self.request(),
            self.request({b"upgrade": b"websocket"}),
            self.request(),
        )
        events.responseHeaders.setRawHeaders(b"content-type", [b"text/event-stream"])
        for request in (plain, terminal, events):
            requests.opened(request)
        assert [lasting(r) for r in (plain, terminal, events)] == [False, True, True]
        assert requests.in_flight == 1
        requests.closed(plain)
        assert requests.in_flight == 0


def test_readyz_says_draining() -> None:
    draining = [False]
    site = MainSite(None, None, None, None, None, None, lambda: False, draining=lambda: draining[0])  # type: ignore[arg-type]
    draining[0] = True
    request = DummyRequest([b""])
    body = site.readyz.__wrapped__(site, request)  # type: ignore[attr-defined]
    result = Deferred.fromCoroutine(body)
    answer: list[bytes] = []
    result.addCallback(answer.append)
    assert request.responseCode == 503
    assert json.loads(answer[0]) == {"status": "draining"}


def test_an_agent_told_restarting_redials_at_once(tmp_path: Path) -> None:
    """goaway ``restarting`` (a replica's rolling restart): the next dial waits for nothing
    and the backoff starts again from 1 s; other disconnects still back off."""
    running = RunningAgent(tmp_path)
    backoff: Backoff = running.agent.backoff
    for n in range(1, 5):
        backoff(n)  # 1, 2, 4, 8 s
    running.agent.disconnected(("restarting", "the server is stopping"), None, "closed", True)
    assert backoff(1) == 0
    assert [backoff(n) for n in range(2, 4)] == [1, 2]
    running.agent.disconnected(None, None, "connection lost", was_up=False)
    assert backoff(4) == 4
