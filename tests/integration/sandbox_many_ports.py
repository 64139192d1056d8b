"""Run inside a sandbox by the tests: ``port count``: an HTTP server on each of ``count``
ports from ``port`` (every address), each answering ``port N`` with its own number."""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"port {self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


first, count = int(sys.argv[1]), int(sys.argv[2])
servers = [ThreadingHTTPServer(("0.0.0.0", p), Handler) for p in range(first, first + count)]
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()
