"""Event latency over N concurrent SSE streams, as its own process: one selectors loop and one
clock read per read, so the client is never what the benchmark measures (an asyncio client
with a reader per stream spent long enough per event to double direct's latency).

    python sse_client.py PORT HOST COOKIE|- STREAMS SECONDS

Opens the streams, lets them settle for WARMUP seconds (events queued while 500 connections
open say nothing about the proxy), then for SECONDS records, for every ``data: <send time>``
line, now minus its send time. Prints one JSON line: events, p50_ms, p99_ms, errors.
"""

from __future__ import annotations

import json
import selectors
import socket
import statistics
import sys
import time

WARMUP = 2.0


def main() -> None:
    port, host, cookie = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    streams, seconds = int(sys.argv[4]), float(sys.argv[5])
    request = f"GET /sse HTTP/1.1\r\nHost: {host}\r\n"
    if cookie != "-":
        request += f"Cookie: {cookie}\r\n"
    request += "\r\n"
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, bytes] = {}  # an unfinished line per stream
    errors = 0
    for _ in range(streams):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request.encode())
        except OSError:
            errors += 1
            continue
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        pending[sock] = b""
    latencies: list[float] = []
    start = time.time() + WARMUP
    end = start + seconds
    while pending and time.time() < end:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            now = time.time()
            if not data:
                errors += 1
                selector.unregister(sock)
                del pending[sock]
                continue
            text = pending[sock] + data
            at = 0
            while (begin := text.find(b"data: ", at)) >= 0:
                at = text.find(b"\n", begin)
                if at < 0:
                    at = begin
                    break
                if now >= start:
                    latencies.append((now - float(text[begin + 6 : at])) * 1000)
            pending[sock] = text[max(at, text.rfind(b"\n")) :]
    for sock in pending:
        sock.close()
    latencies.sort()
    print(
        json.dumps(
            {
                "events": len(latencies),
                "p50_ms": statistics.median(latencies) if latencies else float("nan"),
                "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
                "errors": errors,
            }
        )
    )


if __name__ == "__main__":
    main()
