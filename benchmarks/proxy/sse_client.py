"""Event latency over N concurrent SSE streams, as its own process: one selectors loop and one
clock read per read, so the client is never what the benchmark measures (an asyncio client
with a reader per stream spent long enough per event to double direct's latency). It reports
its own CPU time over the measured seconds: near 1 s per second, it would be the bottleneck.

    python sse_client.py PORT HOST COOKIE|- STREAMS SECONDS
    python sse_client.py PORT HOST COOKIE|- STREAMS hold

Latency: opens the streams, lets them settle for WARMUP seconds (events queued while 1,000
connections open say nothing about the proxy), then for SECONDS records, for every
``data: <send time>`` line, now minus its send time. Prints one JSON line: events, p50_ms,
p99_ms, errors, cpu_share (CPU seconds per second measured).

``hold``: opens STREAMS idle streams (``/sse?idle=1``), waits until each has its first bytes,
prints one JSON line (open, errors), keeps them open until its standard input closes.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import statistics
import sys
import time

WARMUP = 2.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def open_streams(
    port: int, host: str, cookie: str, streams: int, path: str
) -> tuple[selectors.BaseSelector, dict[socket.socket, bytes], int]:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
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
    return selector, pending, errors


def receive(sock: socket.socket) -> bytes | None:
    """What arrived (b"": the stream ended or broke), or None: nothing yet."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def hold(port: int, host: str, cookie: str, streams: int) -> None:
    selector, pending, errors = open_streams(port, host, cookie, streams, "/sse?idle=1")
    waiting = set(pending)
    deadline = time.monotonic() + 60
    while waiting and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            data = receive(sock)
            if data is None:
                continue
            if not data or b" 200 " not in data.split(b"\r\n", 1)[0]:
                errors += 1
            selector.unregister(sock)
            waiting.discard(sock)
    errors += len(waiting)
    print(json.dumps({"open": len(pending) - errors, "errors": errors}), flush=True)
    sys.stdin.read()
    for sock in pending:
        sock.close()


def latency(port: int, host: str, cookie: str, streams: int, seconds: float) -> None:
    selector, pending, errors = open_streams(port, host, cookie, streams, "/sse")
    latencies: list[float] = []
    start = time.time() + WARMUP
    end = start + seconds
    cpu_start = None
    while pending and time.time() < end:
        if cpu_start is None and time.time() >= start:
            cpu_start = cpu_seconds()
        for key, _ in selector.select(timeout=1.0):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            data = receive(sock)
            if data is None:
                continue
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
    cpu = cpu_seconds() - cpu_start if cpu_start is not None else float("nan")
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
                "cpu_share": cpu / seconds,
            }
        )
    )


def main() -> None:
    port, host, cookie, streams = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    if sys.argv[5] == "hold":
        hold(port, host, cookie, streams)
    else:
        latency(port, host, cookie, streams, float(sys.argv[5]))


if __name__ == "__main__":
    main()
