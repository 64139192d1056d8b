"""A relay worker: serves keep-alive browser connections the router granted it.

Relaying through Twisted's reactor costs tens of microseconds of CPU per request or event,
most of it dispatch; at thousands of small requests a second, or hundreds of event streams,
that is the server's whole core, and everything else queues behind it. Each worker runs a
plain epoll loop instead, on a core of its own. A browser's keep-alive connection comes here
with its next request once the router has routed it (``K``, see ``connection.py``), and is
served request after request while its grant covers them (renewed by the server while it is
in use: ``R``, ``G``), event streams and uploads included, with flow control both ways; then
it goes back (``B``). The worker opens its own sandbox connections and keeps those that may
carry another request, for a few seconds, for any of its connections to the same address.
Workers share nothing: the server is the one authority over every grant.

Messages are described in ``wire.py``. Run as ``python -m cli_server.proxy.relay.worker FD``;
FD is one end of a ``SOCK_SEQPACKET`` pair. The loop ends when the server's end closes, so a
worker never outlives the server; its connections close with it.

Only the standard library and httptools (no Twisted): it starts in a fraction of a second.
"""

from __future__ import annotations

import gc
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable

from cli_server.proxy.relay.connection import Address, KeptConnection
from cli_server.proxy.relay.wire import (
    BACK,
    DRAIN,
    DRAINING,
    ID,
    RENEWED,
    Back,
    activity_message,
    read_keep,
)

_READ = select.EPOLLIN
_READ_WRITE = select.EPOLLIN | select.EPOLLOUT
IDLE_SECONDS = 2.0  # how long a sandbox connection nobody uses is kept
IDLE_MAX = 64  # per address
CONTROL_BATCH = 256  # the server's messages read at most per turn of the loop


class Worker:
    def __init__(self, control: socket.socket, clock: Callable[[], float] = time.monotonic) -> None:
        control.setblocking(False)  # (a server that reads slowly must not stop every connection)
        self._control = control
        self.clock = clock
        self.poll = select.epoll()
        self.poll.register(control.fileno(), _READ)
        # To the server, once it can take them: a message, and a socket to send along.
        self._reports: list[tuple[bytes, socket.socket | None]] = []
        self._kept: dict[int, KeptConnection] = {}
        # each connection's two sockets: the connection, and what handles their events
        self._by_fd: dict[int, tuple[KeptConnection, Callable[[int], None]]] = {}
        self._relayed: dict[bytes, int] = {}  # requests per sandbox since the last report
        # sandbox connections that may carry another request, and since when, per address
        self._idle: dict[Address, list[tuple[socket.socket, float]]] = {}
        self._tick_at = clock() + 1.0
        self.draining = False  # the server stops: each connection ends after its answer

    def run(self) -> None:
        try:
            while self.step(max(0.0, self._tick_at - self.clock())):
                if self.clock() >= self._tick_at:
                    self.tick()
        finally:
            for conn in list(self._kept.values()):
                conn.close_both()
            for idle in self._idle.values():
                for sock, _ in idle:
                    sock.close()

    def step(self, timeout: float) -> bool:
        """One wait and what it brought; False once the server is gone."""
        control = self._control.fileno()
        for fd, events in self.poll.poll(timeout):
            if fd == control:
                if events & select.EPOLLOUT:
                    self._send_reports()
                if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    # (all that waits, within reason: a cut must not queue behind a step
                    # per message while the server's outbox fills)
                    for _ in range(CONTROL_BATCH):
                        read = self._control_message()
                        if read is None:
                            break
                        if not read:
                            return False
                continue
            entry = self._by_fd.get(fd)
            if entry is None:
                continue  # (closed earlier in this batch)
            try:
                entry[1](events)
            except Exception:
                self._failed(entry[0])
        return True

    def _guard(self, conn: KeptConnection, call: Callable[..., None], *args: object) -> None:
        try:
            call(*args)
        except Exception:
            self._failed(conn)

    def _failed(self, conn: KeptConnection) -> None:
        """A bug met on one connection costs that connection, not all the others here: it
        is closed, and the traceback goes to the server's log (our stderr)."""
        traceback.print_exc()
        try:
            conn.close_both()
        except Exception:
            traceback.print_exc()

    def tick(self) -> None:
        """Once a second: connections that waited too long, and what was relayed."""
        now = self.clock()
        self._tick_at = now + 1.0
        for conn in list(self._kept.values()):
            self._guard(conn, conn.expired, now)
            if conn.active:  # (a terminal in use is activity, as requests are)
                conn.active = False
                self.relayed(conn.grant.sandbox_id)
        if self._relayed:
            counts, self._relayed = self._relayed, {}
            self._report(activity_message(counts))
        for address, idle in list(self._idle.items()):
            while idle and now - idle[0][1] >= IDLE_SECONDS:  # (the oldest come first)
                idle.pop(0)[0].close()
            if not idle:
                del self._idle[address]

    # the server

    def _control_message(self) -> bool | None:
        """False: the server is gone; None: nothing more waits."""
        try:
            msg, fds, _, _ = socket.recv_fds(self._control, 1 << 18, 1)
        except BlockingIOError:
            return None
        except OSError:
            return False
        if not msg:
            return False
        kind = msg[:1]
        if kind == b"K":
            self._keep(msg, fds)
        else:
            for fd in fds:  # (nothing we can use)
                os.close(fd)
        if kind == b"G" and len(msg) == RENEWED.size:
            _, conn_id, until = RENEWED.unpack(msg)
            conn = self._kept.get(conn_id)
            if conn is not None:  # (renewed, or over: it goes back with its next request)
                conn.until, conn.renewing = until, False
        elif kind == b"D" and len(msg) == DRAIN.size:
            self._drain(DRAIN.unpack(msg)[1])
        elif kind == b"X":
            for (conn_id,) in ID.iter_unpack(msg[1 : 1 + (len(msg) - 1) // 8 * 8]):
                conn = self._kept.get(conn_id)
                if conn is not None:
                    self._guard(conn, conn.close_both)
        return True

    def _drain(self, number: int) -> None:
        """The server stops: connections end after their answers (event streams and
        WebSockets go on until the server closes us); says how many requests are in flight."""
        if not self.draining:
            self.draining = True
            for conn in list(self._kept.values()):
                self._guard(conn, conn.drain)
        busy = sum(1 for conn in self._kept.values() if conn.in_flight)
        self._report(DRAINING.pack(b"d", number, busy))

    def _keep(self, msg: bytes, fds: list[int]) -> None:
        socks = [socket.socket(fileno=fd) for fd in fds]
        try:
            conn_id, until, grant, data = read_keep(msg)
        except ValueError:
            conn_id = -1
        if conn_id < 0 or len(socks) != 1:
            for sock in socks:
                sock.close()
            if conn_id >= 0:  # (out of descriptors: it ends here)
                self._report(b"E" + ID.pack(conn_id))
            return
        try:
            conn = KeptConnection(self, conn_id, socks[0], grant, until, data)
        except Exception:
            traceback.print_exc()
            for sock in socks:
                self.detach(sock.fileno())
                sock.close()  # (epoll forgets a closed socket by itself)
            self._report(b"E" + ID.pack(conn_id))
            return
        self._kept[conn_id] = conn
        self._guard(conn, conn.next_request)
        # (bytes may have arrived between the server's last read and now: epoll reports
        # them, since it reports a socket's state, not its changes)

    # read-only views (for tests and debugging)

    @property
    def kept_count(self) -> int:
        """How many browser connections this worker relays now."""
        return len(self._kept)

    def kept(self, conn_id: int) -> KeptConnection | None:
        """The browser connection the server handed over as ``conn_id``, while relayed."""
        return self._kept.get(conn_id)

    def idle_sockets(self, address: Address) -> list[socket.socket]:
        """The sandbox connections kept idle for another request to ``address``."""
        return [sock for sock, _ in self._idle.get(address, [])]

    @property
    def idle_addresses(self) -> int:
        """How many sandbox addresses have idle connections kept."""
        return len(self._idle)

    @property
    def waiting_reports(self) -> int:
        """Reports waiting for the server to read its end of the control socket."""
        return len(self._reports)

    # what a kept connection asks of its loop

    def take_idle(self, address: Address) -> socket.socket | None:
        idle = self._idle.get(address)
        while idle:
            sock, _ = idle.pop()
            try:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return sock  # quiet, as an idle connection should be
            except OSError:
                pass
            sock.close()  # closed by the sandbox meanwhile, or talking out of turn
        return None

    def give_idle(self, address: Address, sock: socket.socket) -> None:
        idle = self._idle.setdefault(address, [])
        if len(idle) >= IDLE_MAX:
            sock.close()
        else:
            idle.append((sock, self.clock()))

    def attach(self, fd: int, conn: KeptConnection, handler: Callable[[int], None]) -> None:
        self._by_fd[fd] = (conn, handler)

    def detach(self, fd: int) -> None:
        self._by_fd.pop(fd, None)

    def ended(self, conn: KeptConnection) -> None:
        if self._kept.pop(conn.id, None) is not None:
            self._report(b"E" + ID.pack(conn.id))

    def hand_back(self, conn: KeptConnection, why: Back, data: bytes) -> None:
        if self._kept.pop(conn.id, None) is not None:
            self._report(BACK.pack(b"B", conn.id, why) + data, conn.browser)

    def relayed(self, sandbox_id: bytes) -> None:
        self._relayed[sandbox_id] = self._relayed.get(sandbox_id, 0) + 1

    def renew(self, conn: KeptConnection) -> None:
        self._report(b"R" + ID.pack(conn.id))

    def _report(self, msg: bytes, sock: socket.socket | None = None) -> None:
        self._reports.append((msg, sock))
        if len(self._reports) == 1:
            self._send_reports()

    def _send_reports(self) -> None:
        reports = self._reports
        while reports:
            msg, sock = reports[0]
            try:
                if sock is None:
                    self._control.send(msg)
                else:
                    socket.send_fds(self._control, [msg], [sock.fileno()])
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionError):
                for _, sock in reports:
                    if sock is not None:
                        sock.close()
                reports.clear()  # the server is gone: run() ends at the next wait
                break
            except OSError:  # (this message cannot go: its connection closes instead)
                if sock is not None:
                    msg = b"E" + msg[1 : 1 + ID.size]
                    sock.close()
                    reports[0] = (msg, None)
                    continue
            del reports[0]
            if sock is not None:
                sock.close()  # (the server has its own now)
        self.poll.modify(self._control.fileno(), _READ_WRITE if reports else _READ)


def main() -> None:
    # Ctrl-C at a terminal, or a service manager's SIGTERM to the whole process group, reaches
    # us too: the server stops in order and closes our control socket, which is when we stop
    # (and it would take dying first for a crash, restarting us while it shuts down).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Two descriptors per connection: as many as the system lets us have.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass  # (fs.nr_open is lower: what we have will do)
    control = socket.socket(fileno=int(sys.argv[1]))
    # What is loaded now lives as long as we do: the collector need not look at it again.
    gc.freeze()
    Worker(control).run()


if __name__ == "__main__":
    main()
