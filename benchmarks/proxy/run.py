#!/usr/bin/env python3
"""Proxy benchmark: direct vs nginx vs cli-server, measured in one run on this machine.

    apt-get install -y nginx wrk          # once
    .venv/bin/python benchmarks/proxy/run.py [--seconds 10] [--streams 500]

Starts nginx as the plain-HTTP upstream (small and 1 MiB files) and as a reverse proxy, a
small Twisted upstream for SSE and WebSocket echo, and cli-server (real service tree, embedded
PostgreSQL, a FAKE backend pointing its sandboxes at those upstreams), all on 127.0.0.1. Then:
wrk for small-GET req/s and latency and 1 MiB throughput; our own clients for event latency
across N concurrent SSE streams (sse_client.py) and for WebSocket echo round trips. Prints a
Markdown table. Every loop is bounded; everything started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from local_api import free_port  # noqa: E402  (benchmarks/local_api.py, shared)
from wrk import wrk  # noqa: E402  (benchmarks/wrk.py, shared by the benchmark scripts)

HERE = Path(__file__).resolve().parent


NGINX_CONF = """
worker_processes 1;
daemon off;
user root;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream files {{ server 127.0.0.1:{files}; keepalive 64; }}
  upstream streams {{ server 127.0.0.1:{streams}; keepalive 64; }}
  server {{ listen 127.0.0.1:{files}; root {dir}/www; }}
  server {{
    listen 127.0.0.1:{proxy};
    location / {{ proxy_pass http://files; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }}
    location /sse {{ proxy_pass http://streams; proxy_http_version 1.1;
                    proxy_set_header Connection ""; proxy_buffering off;
                    proxy_read_timeout 1h; }}
    location /ws {{ proxy_pass http://streams; proxy_http_version 1.1;
                   proxy_set_header Upgrade $http_upgrade;
                   proxy_set_header Connection "upgrade"; proxy_read_timeout 1h; }}
  }}
}}
"""


def sse_latency(
    port: int, headers: dict[str, str], streams: int, seconds: float, watch_pid: int = 0
) -> dict[str, float]:
    """Event latency over ``streams`` streams (``sse_client.py``, its own process); the RSS of
    ``watch_pid`` and its children (the stream relay) halfway through."""
    cookie = headers.get("Cookie", "-")
    client = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "sse_client.py"),
            str(port),
            headers.get("Host", "127.0.0.1"),
            cookie,
            str(streams),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(2 + seconds / 2)  # (sse_client.WARMUP, then halfway)
    rss_during = tree_rss_mib(watch_pid) if watch_pid else float("nan")
    out, _ = client.communicate(timeout=seconds + 120)
    return {**json.loads(out), "rss_during": rss_during}


async def ws_echo(port: int, headers: dict[str, str], rounds: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {headers.get('Host', '127.0.0.1')}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items() if k != "Host"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise SystemExit(f"no upgrade: {head[:200]!r}")
    payload = b"x" * 32
    rtts = []
    for _ in range(rounds):
        mask = os.urandom(4)
        frame = (
            bytes([0x82, 0x80 | len(payload)])
            + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        )
        began = time.perf_counter()
        writer.write(frame)
        header = await asyncio.wait_for(reader.readexactly(2), timeout=5)
        await reader.readexactly(header[1] & 0x7F)
        rtts.append((time.perf_counter() - began) * 1000)
    writer.close()
    rtts.sort()
    return {"p50_ms": statistics.median(rtts), "p99_ms": rtts[int(len(rtts) * 0.99)]}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mib(pid: int) -> float:
    """RSS of ``pid`` and its children (cli-server's stream relay is one)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return rss_mib(pid) + sum(rss_mib(int(child)) for child in children)


def _median_row(rows: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Each number of a table row: its median over the rounds (errors: their sum)."""
    merged: list[Any] = []
    for column in zip(*rows, strict=True):
        if isinstance(column[0], dict):
            keys = column[0].keys()
            merged.append(
                {
                    k: sum(c[k] for c in column)
                    if k == "errors"
                    else statistics.median(c[k] for c in column)
                    for k in keys
                }
            )
        else:
            merged.append(statistics.median(column))
    return tuple(merged)


def start_nginx(prefix: str) -> tuple[Path, subprocess.Popen[bytes], tuple[int, int, int]]:
    """A work directory with the small and 1 MiB files, and nginx serving them; also its
    reverse proxy (to the files and to a stream upstream, if one runs). Returns the
    directory, the process and its ports: files, streams upstream, proxy."""
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y nginx wrk")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o711)
    (work / "www").mkdir()
    (work / "www" / "small").write_bytes(b"x" * 100)
    (work / "www" / "big").write_bytes(os.urandom(1024 * 1024))
    ports = (free_port(), free_port(), free_port())
    (work / "nginx.conf").write_text(
        NGINX_CONF.format(dir=work, files=ports[0], streams=ports[1], proxy=ports[2])
    )
    nginx = subprocess.Popen(
        ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], start_new_session=True
    )
    return work, nginx, ports


def stop(procs: list[subprocess.Popen[Any]], work: Path) -> None:
    """Ends what was started (each in its own session) and removes the work directory."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds over all targets, interleaved; the table shows medians (this machine "
        "is shared: a burst of someone else's load should not decide a ratio)",
    )
    args = ap.parse_args()
    work, nginx, (files, streams, proxy) = start_nginx("cli-bench-")
    ours = free_port()
    procs = [nginx]
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, str(HERE / "backend.py"), str(streams)], start_new_session=True
            )
        )
        server = subprocess.Popen(
            [sys.executable, str(HERE / "server.py"), str(ours), str(files), str(streams)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        procs.append(server)
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        time.sleep(1)
        plain, stream = info["sandboxes"]
        ours_plain = {"Host": plain["host"], "Cookie": plain["cookie"]}
        ours_stream = {"Host": stream["host"], "Cookie": stream["cookie"]}
        targets = {
            "direct": (files, streams, {}, {}),
            "nginx": (proxy, proxy, {}, {}),
            "cli-server": (ours, ours, ours_plain, ours_stream),
        }
        rounds: list[dict[str, Any]] = []
        for n in range(args.repeat):
            rows = {}
            for name, (http_port, stream_port, hdrs, shdrs) in targets.items():
                small = wrk(f"http://127.0.0.1:{http_port}/small", hdrs, args.seconds, 50)
                big = wrk(f"http://127.0.0.1:{http_port}/big", hdrs, args.seconds, 10)
                rss_before = tree_rss_mib(server.pid)
                watch = server.pid if name == "cli-server" else 0
                sse = sse_latency(stream_port, shdrs, args.streams, args.seconds, watch)
                ws = asyncio.run(ws_echo(stream_port, shdrs, args.rounds))
                rows[name] = (small, big, sse, ws, rss_before)
                print(f"round {n + 1}: {name} done", file=sys.stderr, flush=True)
            rounds.append(rows)
            ratio = rows["cli-server"][0]["rps"] / rows["nginx"][0]["rps"]
            extra = rows["cli-server"][2]["p99_ms"] - rows["direct"][2]["p99_ms"]
            print(
                f"round {n + 1}: small GET {ratio:.2f}x nginx, SSE p99 added {extra:.2f} ms",
                file=sys.stderr,
                flush=True,
            )
        rows = {name: _median_row([r[name] for r in rounds]) for name in targets}
        print(
            f"\n{args.streams} SSE streams, wrk -t2 -c50 (small) / -c10 (1 MiB), "
            f"{args.seconds} s each\n"
        )
        print(
            "| target | small GET req/s | p50 / p99 ms | 1 MiB GET MiB/s | SSE p50 / p99 ms "
            "| WS echo p50 / p99 ms | errors |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, (small, big, sse, ws, _) in rows.items():
            errors = int(small["errors"] + big["errors"] + sse["errors"])
            print(
                f"| {name} | {small['rps']:.0f} | {small.get('p50_ms', 0):.2f} / "
                f"{small.get('p99_ms', 0):.2f} | {big.get('mib_s', 0):.0f} | "
                f"{sse['p50_ms']:.2f} / {sse['p99_ms']:.2f} | {ws['p50_ms']:.3f} / "
                f"{ws['p99_ms']:.3f} | {errors} |"
            )
        ratios = [r["cli-server"][0]["rps"] / r["nginx"][0]["rps"] for r in rounds]
        added = [r["cli-server"][2]["p99_ms"] - r["direct"][2]["p99_ms"] for r in rounds]
        print(
            f"\nsmall-GET throughput cli-server/nginx: {statistics.median(ratios):.2f}x "
            f"(target >= 0.5; rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
        )
        print(
            f"SSE p99 added by cli-server over direct: {statistics.median(added):.2f} ms "
            f"(target <= 5; rounds: {', '.join(f'{x:.1f}' for x in added)})"
        )
        idle, during = rows["cli-server"][4], rows["cli-server"][2]["rss_during"]
        print(
            f"cli-server RSS (with its stream relay): {idle:.0f} MiB before the stream test, "
            f"{during:.0f} MiB with "
            f"{args.streams} open SSE streams: "
            f"{(during - idle) * 1024 / args.streams:.0f} KiB per stream"
        )
    finally:
        stop(procs, work)


if __name__ == "__main__":
    main()
