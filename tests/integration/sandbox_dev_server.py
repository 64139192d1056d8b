"""A dev server to run INSIDE a sandbox (standard library only: the sandbox sees the host's
/usr, not our virtualenv): a page, an asset, a POST that says what it received, an event
stream and a WebSocket echo, as a web app's dev server has. Usage: python3 this.py PORT"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = (
    b'<!doctype html><title>dev</title><h1>made in the sandbox</h1><script src="/app.js"></script>'
)
ASSET = b"document.title = 'asset loaded';\n"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/":
            self._send(200, "text/html", PAGE)
        elif self.path == "/app.js":
            self._send(200, "application/javascript", ASSET)
        elif self.path == "/headers":
            self._send(200, "application/json", json.dumps(dict(self.headers)).encode())
        elif self.path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for n in range(3):
                self.wfile.write(f"data: tick {n}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.05)
            self.close_connection = True
        elif self.path.startswith("/ws"):
            self._websocket()
        else:
            self._send(404, "text/plain", b"no such page")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        said = {"body": body.decode(), "headers": dict(self.headers)}
        self._send(200, "application/json", json.dumps(said).encode())

    def _websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2 or head[0] & 0x0F == 0x8:  # closed, or a close frame
                break
            length = head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(self.rfile.read(2), "big")
            mask = self.rfile.read(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            size = bytes([len(data)]) if len(data) < 126 else b"\x7e" + len(data).to_bytes(2)
            self.wfile.write(bytes([0x80 | (head[0] & 0x0F)]) + size + data)
            self.wfile.flush()
        self.close_connection = True


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
