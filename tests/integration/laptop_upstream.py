"""A laptop's "opencode" for the replica tests: a plain threaded HTTP server (no reactor, as
the replicas harness has none running) with a page, a download, an upload digest, an event
stream and a WebSocket echo; and a small WebSocket client."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


class _Laptop(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LaptopUpstream

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path.startswith("/ws"):
            return self._websocket()
        if self.path.startswith("/event"):
            return self._events()
        if self.path.startswith("/random"):
            n = int(self.path.partition("?n=")[2])
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(n))
            self.end_headers()
            data = random.Random(n).randbytes(n)
            for i in range(0, n, 1 << 16):
                self.wfile.write(data[i : i + (1 << 16)])
            return None
        self._json({"laptop": True, "path": self.path, "host": self.headers.get("host")})

    def do_POST(self) -> None:
        self.server.paths.append(self.path)
        length = int(self.headers.get("content-length") or 0)
        digest = hashlib.sha256()
        left = length
        while left:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        self._json({"length": length - left, "sha256": digest.hexdigest()})

    def _json(self, value: Any) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _events(self) -> None:
        stream_events(self, self.server.stopping, 0.1)

    def _websocket(self) -> None:
        key = (self.headers.get("sec-websocket-key") or "").encode()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.connection.settimeout(30)
        try:
            while True:
                opcode, payload = read_frame(self.rfile.read)
                if opcode == 8:
                    break
                self.wfile.write(frame(opcode, payload, masked=False))
                self.wfile.flush()
        except (OSError, EOFError):
            pass
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LaptopUpstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, preview: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _Laptop)
        self.stopping = threading.Event()
        self.paths: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        # a dev server on another port of the laptop, which its agent may share
        self.preview: LaptopUpstream | None = LaptopUpstream(False) if preview else None

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # (a browser that hangs up mid-stream is no error here)

    @property
    def preview_port(self) -> int:
        assert self.preview is not None
        return int(self.preview.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        if self.preview is not None:
            self.preview.stop()
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(10)


def stream_events(handler: BaseHTTPRequestHandler, stopping: threading.Event, every: float) -> None:
    """An event stream of ``{"n": 0}``, ``{"n": 1}``... every ``every`` seconds, chunked,
    until the server stops or the client goes; then the connection closes."""
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    handler.send_header("transfer-encoding", "chunked")
    handler.end_headers()
    n = 0
    while not stopping.is_set():
        event = f"data: {json.dumps({'n': n})}\n\n".encode()
        try:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            handler.wfile.flush()
        except OSError:
            break
        n += 1
        stopping.wait(every)
    handler.close_connection = True


def frame(opcode: int, payload: bytes, masked: bool = True) -> bytes:
    head = bytes([0x80 | opcode])
    bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(read: Any) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = read(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    first, second = exactly(2)
    n = second & 0x7F
    if n == 126:
        n = struct.unpack(">H", exactly(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", exactly(8))[0]
    mask = exactly(4) if second & 0x80 else None
    payload = exactly(n)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


def websocket_echo(port: int, host: str, cookie: str, message: bytes) -> tuple[int, bytes]:
    """Upgrades ``/ws`` on 127.0.0.1:``port`` (Host ``host``), sends ``message``: the
    answer's status and the echo (b"" if none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
                f"Origin: http://{host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        while reader.readline() not in (b"\r\n", b""):
            pass
        if status != 101:
            return status, b""
        sock.sendall(frame(2, message))
        _, echo = read_frame(reader.read)
        sock.sendall(frame(8, b""))
        return status, echo
