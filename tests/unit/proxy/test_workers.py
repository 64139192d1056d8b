"""What the server says to a relay worker, and when it gives up on one: a cut is never
queued behind renewals, and a worker that is slow but takes messages is not stopped."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from twisted.internet.task import Clock

from cli_server.proxy.relay.wire import RENEWED, read_activity
from cli_server.proxy.workers import _Worker


class FakeProcess:
    def __init__(self) -> None:
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


def _worker() -> tuple[_Worker, socket.socket, FakeProcess, Clock]:
    clock = Clock()
    process = FakeProcess()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    worker = _Worker(SimpleNamespace(reactor=clock), 0, process=process)  # type: ignore[arg-type]
    worker.control = ours
    return worker, theirs, process, clock


def _fill(worker: _Worker) -> int:
    """Sends until the worker's socket takes no more; how many went."""
    sent = 0
    while True:
        worker.send(b"F%06d" % sent)
        if worker.behind:  # (the first one it could not take)
            return sent
        sent += 1


def _read_all(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(1 << 16))
        except BlockingIOError:
            return got


def test_a_renewal_is_not_queued_while_messages_wait_so_a_cut_never_waits_behind_one() -> None:
    worker, theirs, _, clock = _worker()
    _fill(worker)
    renewal = RENEWED.pack(b"G", 7, 123.0)
    worker.send(renewal, unless_behind=True)
    worker.send(b"X" + b"\0" * 8)  # a cut
    _read_all(theirs)
    clock.advance(0.05)
    got = _read_all(theirs)
    assert renewal not in got and got[-1] == b"X" + b"\0" * 8
    worker.send(renewal, unless_behind=True)  # (nothing waits now: it goes)
    assert _read_all(theirs) == [renewal]


def test_a_slow_worker_that_takes_messages_is_not_stopped_and_a_stuck_one_is() -> None:
    worker, theirs, process, clock = _worker()
    _fill(worker)
    for n in range(200):
        worker.send(b"C%06d" % n)
    for _ in range(100):  # 10 s: it takes one message every 0.1 s
        theirs.recv(1 << 16)
        clock.advance(0.1)
    assert process.signals == []
    clock.advance(5.1)  # now it takes nothing
    assert process.signals == ["KILL"]


def test_activity_a_worker_reports_is_read_only_in_its_one_shape() -> None:
    assert read_activity(b'A{"s1": 3}') == {"s1": 3}
    for bad in (
        b"A[1]",
        b'A{"s1": -1}',
        b'A{"s1": 1.5}',
        b'A{"s1": true}',
        b'A{"s1": 1e400}',
        b'A{"s1": 99999999999}',
        b"A" + b'{"' + b"x" * 65 + b'": 1}',
        b"A\x80",
        b"A{",
    ):
        try:
            read_activity(bad)
        except ValueError:
            continue
        raise AssertionError(f"read: {bad!r}")
