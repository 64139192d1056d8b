"""The stream relay's loop, driven step by step over real socket pairs (no child process:
``test_stream_relay.py`` starts the real one)."""

from __future__ import annotations

import socket
import struct

import pytest

from cli_server.proxy.relay_process import ID, START, Relay


class Stream:
    """A relay with one stream: ``browser`` and ``sandbox`` are the far ends of its sockets."""

    def __init__(self, chunked: bool = True) -> None:
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.relay = Relay(theirs)
        self.browser, browser_near = socket.socketpair()
        self.sandbox, sandbox_near = socket.socketpair()
        for far in (self.browser, self.sandbox, self.control):
            far.settimeout(5)
        socket.send_fds(
            self.control,
            [START.pack(b"S", 7, chunked)],
            [
                browser_near.fileno(),
                sandbox_near.fileno(),
            ],
        )
        browser_near.close()  # (the relay has its own copies now, as from the server)
        sandbox_near.close()
        self.turn()
        assert self.relay.carrying == 1

    def turn(self, times: int = 3) -> bool:
        return all([self.relay.step(0) for _ in range(times)])

    def read(self) -> bytes:
        self.turn()
        self.browser.setblocking(False)
        out = b""
        try:
            while chunk := self.browser.recv(65536):
                out += chunk
        except BlockingIOError:
            pass
        self.browser.settimeout(5)
        return out

    def closed(self) -> bool:
        self.browser.setblocking(False)
        try:
            return self.browser.recv(1) == b""
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True

    def report(self) -> bytes:
        return self.control.recv(64)


def test_chunks_are_framed_again_and_the_end_closes_the_browser_cleanly() -> None:
    s = Stream()
    s.sandbox.sendall(b"5\r\nhello\r\n")
    assert s.read() == b"5\r\nhello\r\n"
    s.sandbox.sendall(b"3;ext=1\r\nabc\r\n2\r\nde\r\n")  # extensions dropped, chunks kept
    assert s.read() == b"3\r\nabc\r\n2\r\nde\r\n"
    s.sandbox.sendall(b"0\r\nX-Trailer: no\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")  # nothing after
    assert s.read() == b"0\r\n\r\n"
    assert s.closed() and s.relay.carrying == 0
    assert s.report() == b"E" + ID.pack(7)


def test_a_chunked_stream_cut_short_is_not_given_an_ending() -> None:
    s = Stream()
    s.sandbox.sendall(b"5\r\nhel")
    s.sandbox.close()
    assert s.read() == b"3\r\nhel\r\n"  # what came, then the connection ends: no 0-chunk
    assert s.closed() and s.relay.carrying == 0


def test_a_stream_framed_by_its_close_ends_with_a_last_chunk() -> None:
    s = Stream(chunked=False)
    s.sandbox.sendall(b"data: 1\n\n")
    assert s.read() == b"9\r\ndata: 1\n\n\r\n"
    s.sandbox.shutdown(socket.SHUT_WR)
    assert s.read() == b"0\r\n\r\n"
    assert s.closed()


def test_broken_framing_and_a_browser_that_leaves_end_the_stream() -> None:
    s = Stream()
    s.sandbox.sendall(b"zz\r\n")
    s.turn()
    assert s.closed() and s.relay.carrying == 0
    s = Stream()
    s.browser.close()
    s.turn()
    assert s.relay.carrying == 0
    with pytest.raises(OSError):
        for _ in range(100):
            s.sandbox.sendall(b"x" * 65536)  # its socket is closed too: sends soon fail


def test_a_slow_browser_stops_the_relay_reading_the_sandbox() -> None:
    s = Stream(chunked=False)
    s.browser.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sandbox.setblocking(False)
    sent = 0
    for _ in range(200):  # the sandbox writes far more than the browser takes
        try:
            sent += s.sandbox.send(b"x" * 65536)
        except BlockingIOError:
            pass
        s.turn(1)
    waiting = sum(len(b) for b in next(iter(s.relay._streams.values())).out)
    assert waiting <= 65536 + 16  # at most one read waits in the relay
    assert sent < 200 * 65536  # and the rest waits in the sandbox's socket, not in memory
    got = 0
    for _ in range(10_000):  # the browser reads all of it once it reads
        got += len(s.read())
        if got >= sent:
            break
    assert got > sent  # (its chunk framing too)
    assert s.relay.carrying == 1


def test_revoked_streams_are_cut_and_the_relay_ends_with_the_server() -> None:
    s = Stream()
    s.control.send(b"X" + ID.pack(99) + ID.pack(7))
    s.turn()
    assert s.closed() and s.relay.carrying == 0
    s = Stream()
    s.control.send(b"?")  # nothing it knows: ignored
    assert s.turn()
    s.control.close()
    assert not s.relay.step(0)
    s.relay.run()  # (returns at once: the server is gone) and closes what it carried
    assert s.closed()


def test_a_sandbox_that_resets_while_the_browser_is_slow_is_not_read_until_it_catches_up() -> None:
    s = Stream(chunked=False)
    s.browser.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sandbox.setblocking(False)
    stream = next(iter(s.relay._streams.values()))
    for _ in range(100):
        try:
            s.sandbox.send(b"x" * 65536)
        except BlockingIOError:
            break
        s.turn(1)
    assert stream.blocked
    s.sandbox.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.sandbox.close()  # a reset
    waiting = sum(map(len, stream.out))
    assert s.relay._poll.poll(0) == []  # nothing to do (no error reported over and over)
    assert sum(map(len, stream.out)) == waiting
    for _ in range(10_000):  # the browser reads: the stream ends, without its last chunk
        s.read()
        if s.relay.carrying == 0:
            break
    assert s.relay.carrying == 0
    assert s.report() == b"E" + ID.pack(7)


def test_reports_wait_for_a_server_that_reads_slowly() -> None:
    s = Stream()
    s.relay._control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sent = 0
    while True:  # the server does not read: the relay's socket fills up
        try:
            s.relay._control.send(b"E" + ID.pack(0))
            sent += 1
        except BlockingIOError:
            break
    s.control.send(b"X" + ID.pack(7))
    assert s.turn()  # the cut happens; its report waits instead of blocking the relay
    assert s.relay.carrying == 0 and len(s.relay._reports) == 1
    for _ in range(sent):
        assert s.report() == b"E" + ID.pack(0)
    s.turn()
    assert s.report() == b"E" + ID.pack(7) and s.relay._reports == []
