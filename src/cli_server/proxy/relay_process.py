"""The stream relay's process: carries open event streams for the front door.

An event stream (``/event``, SSE) is one long answer of small writes. Relaying each write
through Twisted's reactor costs about 40 µs of CPU, most of it dispatch, and when a burst of
events arrives on hundreds of streams at once they queue behind one another and behind every
other request. Once an event stream's head has been relayed and the answer stands between two
chunks, the front door sends both of its sockets here (``stream_relay.py``) and forgets
them. This loop only reads the sandbox's bytes, frames them as chunks again and writes them
to the browser, with flow control: a few microseconds of Python per event, on its own core.

Run as ``python -m cli_server.proxy.relay_process FD``; FD is one end of a ``SOCK_SEQPACKET``
pair. Messages from the server: ``S`` + stream id + framing, with two descriptors (the
browser's, the sandbox's); ``X`` + stream ids: cut these (their session was revoked). To the
server: ``E`` + stream id: that stream ended. The loop ends when the server's end closes, so
the relay never outlives the server; its streams close with it.

Only the standard library and httptools: it starts in a fraction of a second.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import struct
import sys

import httptools

START = struct.Struct("!cQ?")  # b"S", stream id, chunked (else the body ends at close)
ID = struct.Struct("!Q")
_CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
_READ = select.EPOLLIN
_READ_WRITE = select.EPOLLIN | select.EPOLLOUT
# What a browser may send on a stream's connection (our answer said "connection: close"):
# nothing, so anything past this is not a browser.
_BROWSER_SLACK = 64 * 1024


class _Stream:
    """One event stream: the browser's socket, the sandbox's, and what waits to be written."""

    __slots__ = ("id", "browser", "sandbox", "parser", "out", "ended", "heard", "blocked")

    def __init__(
        self, stream_id: int, browser: socket.socket, sandbox: socket.socket, chunked: bool
    ):
        self.id, self.browser = stream_id, browser
        self.sandbox: socket.socket | None = sandbox  # None once its part is over
        self.out: list[bytes] = []
        self.ended = False  # the sandbox's answer is complete
        self.heard = 0  # bytes the browser sent anyway
        self.blocked = False  # waiting for the browser to take ``out``; the sandbox unread
        self.parser: httptools.HttpResponseParser | None = None
        if chunked:
            # The server read the real head and is between two chunks: a parser given an
            # equivalent head is exactly where the server's was.
            self.parser = httptools.HttpResponseParser(self)
            self.parser.feed_data(_CHUNKED_HEAD)

    # httptools callbacks

    def on_body(self, data: bytes) -> None:
        if self.ended:
            return  # (a second answer in the same read: ignored, as the server does)
        self.out.append(b"%x\r\n%s\r\n" % (len(data), data))

    def on_message_complete(self) -> None:
        self.ended = True


class Relay:
    def __init__(self, control: socket.socket) -> None:
        control.setblocking(False)  # (a server that reads slowly must not stop every stream)
        self._control = control
        self._poll = select.epoll()
        self._poll.register(control.fileno(), _READ)
        self._reports: list[bytes] = []  # to the server, once it can take them
        self._streams: dict[int, _Stream] = {}
        self._by_fd: dict[int, tuple[_Stream, bool]] = {}  # fd: (stream, is the sandbox's)

    def run(self) -> None:
        try:
            while self.step(-1):
                pass
        finally:
            for stream in list(self._streams.values()):
                self._close(stream)

    def step(self, timeout: float) -> bool:
        """One wait and what it brought; False once the server is gone."""
        for fd, events in self._poll.poll(timeout):
            if fd == self._control.fileno():
                if events & select.EPOLLOUT:
                    self._send_reports()
                if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    if not self._control_message():
                        return False
                continue
            entry = self._by_fd.get(fd)
            if entry is None:
                continue  # (closed earlier in this batch)
            stream, from_sandbox = entry
            if from_sandbox:
                self._from_sandbox(stream)
                continue
            if events & select.EPOLLOUT:
                self._write(stream)
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                self._from_browser(stream)
        return True

    @property
    def carrying(self) -> int:
        return len(self._streams)

    # the server

    def _control_message(self) -> bool:
        try:
            msg, fds, _, _ = socket.recv_fds(self._control, 4096, 2)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not msg:
            return False
        if msg[:1] == b"S" and len(msg) == START.size:
            _, stream_id, chunked = START.unpack(msg)
            if len(fds) == 2:
                browser, sandbox = (socket.socket(fileno=fd) for fd in fds)
                self.adopt(stream_id, browser, sandbox, chunked)
                return True
            self._report(stream_id)  # (out of descriptors: it ends here, and is counted so)
        for fd in fds:  # (nothing we can use)
            os.close(fd)
        if msg[:1] == b"X":
            for (stream_id,) in ID.iter_unpack(msg[1 : 1 + (len(msg) - 1) // 8 * 8]):
                stream = self._streams.get(stream_id)
                if stream is not None:
                    self._close(stream)
        return True

    def adopt(
        self, stream_id: int, browser: socket.socket, sandbox: socket.socket, chunked: bool
    ) -> None:
        stream = _Stream(stream_id, browser, sandbox, chunked)
        browser.setblocking(False)
        sandbox.setblocking(False)
        self._streams[stream_id] = stream
        self._by_fd[browser.fileno()] = (stream, False)
        self._by_fd[sandbox.fileno()] = (stream, True)
        self._poll.register(browser.fileno(), _READ)
        self._poll.register(sandbox.fileno(), _READ)
        # (bytes may have arrived between the server's last read and now: epoll reports
        # them, since it reports a socket's state, not its changes)

    def _report(self, stream_id: int) -> None:
        self._reports.append(b"E" + ID.pack(stream_id))
        if len(self._reports) == 1:
            self._send_reports()

    def _send_reports(self) -> None:
        reports = self._reports
        while reports:
            try:
                self._control.send(reports[0])
            except BlockingIOError:
                break
            except OSError:
                reports.clear()  # the server is gone: run() ends at the next wait
                break
            del reports[0]
        self._poll.modify(self._control.fileno(), _READ_WRITE if reports else _READ)

    # a stream

    def _from_sandbox(self, stream: _Stream) -> None:
        sandbox = stream.sandbox
        if sandbox is None:
            return
        try:
            data = sandbox.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if stream.parser is None or stream.ended:
                self._finish(stream)  # an answer framed by its connection ends so
            else:
                self._close(stream)  # cut short: the browser must not see an ending
            return
        if stream.parser is None:
            stream.out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            try:
                stream.parser.feed_data(data)
            except httptools.HttpParserError:
                if not stream.ended:  # (bytes after the end are ignored, as the server does)
                    self._close(stream)
                    return
        if stream.ended:
            self._finish(stream)
        else:
            self._write(stream)

    def _finish(self, stream: _Stream) -> None:
        """The answer is complete: its last chunk goes out, then the browser's connection
        closes. The sandbox's part is over, so it is neither read nor watched again."""
        self._drop_sandbox(stream)
        stream.out.append(b"0\r\n\r\n")
        self._write(stream)

    def _drop_sandbox(self, stream: _Stream) -> None:
        sandbox, stream.sandbox = stream.sandbox, None
        if sandbox is not None:
            self._by_fd.pop(sandbox.fileno(), None)
            if not stream.blocked:
                self._poll.unregister(sandbox.fileno())
            sandbox.close()

    def _write(self, stream: _Stream) -> None:
        if stream.id not in self._streams:
            return
        out = stream.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            try:
                sent = stream.browser.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close(stream)
                return
            out.clear()
            if sent < len(data):
                # The browser reads slowly: stop reading the sandbox until it catches up, so
                # what waits here is at most one read.
                out.append(data[sent:])
                if not stream.blocked:
                    stream.blocked = True
                    self._poll.modify(stream.browser.fileno(), _READ_WRITE)
                    if stream.sandbox is not None:  # (not watched at all: its errors wait too)
                        self._poll.unregister(stream.sandbox.fileno())
                return
        if stream.sandbox is None:
            self._close(stream)  # all written
        elif stream.blocked:
            stream.blocked = False
            self._poll.modify(stream.browser.fileno(), _READ)
            self._poll.register(stream.sandbox.fileno(), _READ)

    def _from_browser(self, stream: _Stream) -> None:
        if stream.id not in self._streams:
            return
        try:
            data = stream.browser.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        stream.heard += len(data)
        if not data or stream.heard > _BROWSER_SLACK:
            self._close(stream)  # the browser left

    def _close(self, stream: _Stream) -> None:
        if self._streams.pop(stream.id, None) is None:
            return
        self._drop_sandbox(stream)
        self._by_fd.pop(stream.browser.fileno(), None)
        self._poll.unregister(stream.browser.fileno())
        stream.browser.close()
        self._report(stream.id)


def main() -> None:
    # Ctrl-C at a terminal reaches the whole process group: the server stops in order and
    # closes our control socket, which is when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Two descriptors per stream: as many as the system lets us have.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass  # (fs.nr_open is lower: what we have will do)
    control = socket.socket(fileno=int(sys.argv[1]))
    Relay(control).run()


if __name__ == "__main__":
    main()
