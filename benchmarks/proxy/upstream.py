"""The benchmark's upstream for streams, the same for every target: SSE and WebSocket echo
over one epoll loop of the standard library, cheap enough to hold thousands of streams
without being what is measured (the Twisted server it replaces stamped 500 events at once
and then spent milliseconds writing them, so the last stream's latency was its own).

    python upstream.py PORT [INTERVAL [SLOTS]]

``GET /sse``: an event stream, one event every INTERVAL seconds (0.1) per stream, the
streams spread evenly over the interval (over SLOTS moments, 20; 1: all at once), each
event carrying the time it is written (stamped just before its ``send``).
``GET /sse?idle=1``: a stream that says hello and then nothing (the memory test's idle
streams). ``GET /ws``: WebSocket echo. Anything else: 404. Plain files come from a separate
nginx.
"""

from __future__ import annotations

import base64
import hashlib
import selectors
import socket
import sys
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC175B11"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Conn:
    """One accepted connection: its unread input, unsent output and what it became."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.kind = ""  # "", "sse", "idle", "ws"


class Upstream:
    def __init__(self, port: int, interval: float, slots: int) -> None:
        self.selector = selectors.EpollSelector()
        self.listener = socket.create_server(("127.0.0.1", port), backlog=4096)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.interval = interval
        # the interval is cut into slots; stream n ticks in slot n % len(slots)
        self.slots: list[set[Conn]] = [set() for _ in range(slots)]
        self.next_slot = 0
        self.assigned = 0

    def run(self) -> None:
        slot_len = self.interval / len(self.slots)
        due = time.monotonic()
        while True:
            timeout = max(0.0, due - time.monotonic())
            for key, mask in self.selector.select(timeout):
                if key.fileobj is self.listener:
                    self.accept()
                    continue
                conn: Conn = key.data
                if mask & selectors.EVENT_WRITE:
                    self.flush(conn)
                if mask & selectors.EVENT_READ:
                    self.readable(conn)
            while time.monotonic() >= due:
                self.tick(self.slots[self.next_slot])
                self.next_slot = (self.next_slot + 1) % len(self.slots)
                due += slot_len

    def accept(self) -> None:
        for _ in range(256):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock)
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)
            return
        conn.inbuf += data
        if conn.kind == "ws":
            self.echo(conn)
        elif not conn.kind and b"\r\n\r\n" in conn.inbuf:
            head, conn.inbuf = conn.inbuf.split(b"\r\n\r\n", 1)
            self.request(conn, head)

    def request(self, conn: Conn, head: bytes) -> None:
        lines = head.split(b"\r\n")
        target = lines[0].split(b" ")[1] if lines[0].count(b" ") >= 2 else b""
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        path, _, query = target.partition(b"?")
        if path == b"/sse":
            conn.kind = "idle" if b"idle=1" in query else "sse"
            self.send(conn, SSE_HEAD + chunk(b": hello\n\n"))
            if conn.kind == "sse":
                self.slots[self.assigned % len(self.slots)].add(conn)
                self.assigned += 1
        elif path == b"/ws" and b"sec-websocket-key" in headers:
            accept = base64.b64encode(
                hashlib.sha1(headers[b"sec-websocket-key"] + WS_GUID).digest()
            )
            conn.kind = "ws"
            self.send(
                conn,
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                b"connection: Upgrade\r\nsec-websocket-accept: " + accept + b"\r\n\r\n",
            )
            self.echo(conn)
        else:
            self.send(conn, b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")

    def echo(self, conn: Conn) -> None:
        """Every complete client frame back, unmasked (a close frame closes)."""
        buf = conn.inbuf
        while len(buf) >= 2:
            opcode, length, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, at = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + 4 + length:
                break
            mask = buf[at : at + 4]
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[at + 4 : at + 4 + length]))
            buf = buf[at + 4 + length :]
            if length < 126:
                header = bytes([0x80 | opcode, length])
            else:
                header = bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big")
            self.send(conn, header + payload)
            if opcode == 8:
                self.close(conn)
                return
        conn.inbuf = buf

    def tick(self, conns: set[Conn]) -> None:
        for conn in list(conns):
            self.send(conn, chunk(b"data: %.6f\n\n" % time.time()))

    def send(self, conn: Conn, data: bytes) -> None:
        if conn.outbuf:
            conn.outbuf += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close(conn)
            return
        if sent < len(data):
            conn.outbuf = data[sent:]
            self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self.close(conn)
            return
        conn.outbuf = conn.outbuf[sent:]
        if not conn.outbuf:
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def close(self, conn: Conn) -> None:
        for slot in self.slots:
            slot.discard(conn)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.kind = "closed"


if __name__ == "__main__":
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
    slots = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    Upstream(int(sys.argv[1]), interval, slots).run()
