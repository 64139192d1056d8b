#!/usr/bin/env python3
"""Proxy benchmark: direct vs nginx vs cli-server, interleaved rounds in one run on this machine.

    apt-get install -y nginx wrk          # once
    .venv/bin/python benchmarks/proxy/run.py [--seconds 10] [--streams 1000] [--repeat 3]
    .venv/bin/python benchmarks/proxy/run.py --proxy-workers-arg 1 --proxy-workers-arg 2

The same upstream serves every target: an nginx (``worker_processes auto``) with a 100-byte
and a 1 MiB file, and ``upstream.py`` (one epoll loop) for SSE and WebSocket echo. The targets:
**direct** (those upstreams themselves), **nginx** (a second nginx, ``worker_processes auto``,
as an operator runs a reverse proxy: keep-alive to the upstreams, HTTP/1.1, no buffering for
the event stream) and **cli-server** (``server.py``: the real service tree, embedded
PostgreSQL, a FAKE backend whose sandboxes "run" at those upstreams), with its default relay
workers, or one target per ``--proxy-workers-arg N``. Each round measures, target after
target (the order turning each round): small GETs and 1 MiB GETs (wrk), event latency over
``--streams`` concurrent SSE streams (``sse_client.py``, its own process), WebSocket echo round
trips, and the memory of each proxy (its process and all its children) before and with
``--idle-streams`` idle event streams open. Prints every round, a table of medians and the
targets; writes everything to ``--json``. Every loop is bounded; everything started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import signal
import socket
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

COMMON = """
worker_processes auto;
worker_rlimit_nofile 16384;
daemon off;
user root;
error_log {dir}/error-{name}.log warn;
pid {dir}/nginx-{name}.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body-{name}; proxy_temp_path {dir}/proxy-{name};
  fastcgi_temp_path {dir}/fcgi-{name}; uwsgi_temp_path {dir}/uwsgi-{name};
  scgi_temp_path {dir}/scgi-{name};
  {servers}
}}
"""

FILES_SERVER = "server {{ listen 127.0.0.1:{files}; root {dir}/www; }}"

PROXY_SERVERS = """
  upstream files {{ server 127.0.0.1:{files}; keepalive 64; }}
  upstream streams {{ server 127.0.0.1:{streams}; keepalive 64; }}
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
"""


def require(*tools: str) -> None:
    for tool in tools:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y nginx wrk")


def wait_listening(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} is not listening on {port}")


def start_nginx(work: Path, name: str, servers: str) -> subprocess.Popen[bytes]:
    conf = work / f"nginx-{name}.conf"
    conf.write_text(COMMON.format(dir=work, name=name, servers=servers))
    return subprocess.Popen(
        ["nginx", "-e", str(work / f"error-{name}.log"), "-c", str(conf), "-p", str(work)],
        start_new_session=True,
    )


def start_files(prefix: str) -> tuple[Path, subprocess.Popen[bytes], int]:
    """A work directory with the small and 1 MiB files and an nginx (its own, auto workers)
    serving them: the directory, the process, its port."""
    require("nginx", "wrk")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o711)
    (work / "www").mkdir()
    (work / "www" / "small").write_bytes(b"x" * 100)
    (work / "www" / "big").write_bytes(os.urandom(1024 * 1024))
    files = free_port()
    nginx = start_nginx(work, "files", FILES_SERVER.format(files=files, dir=work))
    wait_listening(files, nginx, "nginx (files)")
    return work, nginx, files


def stop(procs: list[subprocess.Popen[Any]], work: Path) -> None:
    """Ends what was started (each in its own session) and removes the work directory."""
    for proc in reversed(procs):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    shutil.rmtree(work, ignore_errors=True)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> set[int]:
    """``pid`` and all its descendants."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def tree_rss_mib(pid: int) -> float:
    """RSS of ``pid`` and its descendants (cli-server's relay workers; nginx's workers) but
    the embedded PostgreSQL's, whose RSS grows as it touches its shared buffers."""
    total = 0
    for each in tree(pid):
        try:
            if Path(f"/proc/{each}/comm").read_text().strip() == "postgres":
                continue
        except OSError:
            continue
        total += rss_kib(each)
    return total / 1024


TICK = os.sysconf("SC_CLK_TCK")


class OthersCpu:
    """The CPU used on this machine by processes other than this benchmark's, in cores: a
    shared machine's bursts land on some targets and not others, so each round says how
    busy the rest of the machine was."""

    def __init__(self, procs: list[subprocess.Popen[Any]]) -> None:
        self.procs = procs
        self.at = self.sample()

    def sample(self) -> tuple[float, float, float]:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(int(x) for i, x in enumerate(fields) if i not in (3, 4)) / TICK
        ours = sum(
            resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        for proc in self.procs:
            for pid in tree(proc.pid):
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                ours += sum(int(x) for x in stat[11:15]) / TICK  # u, s, children's u, s
        return time.monotonic(), busy, ours

    def cores(self) -> float:
        """Since the last call."""
        (t0, busy0, ours0), self.at = self.at, self.sample()
        t1, busy1, ours1 = self.at
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0)


def sse_client(port: int, headers: dict[str, str], streams: int, last: str) -> list[str]:
    return [
        sys.executable,
        str(HERE / "sse_client.py"),
        str(port),
        headers.get("Host", "127.0.0.1"),
        headers.get("Cookie", "-"),
        str(streams),
        last,
    ]


def sse_latency(
    port: int, headers: dict[str, str], streams: int, seconds: float
) -> dict[str, float]:
    """Event latency over ``streams`` streams (``sse_client.py``, its own process)."""
    out = subprocess.run(
        sse_client(port, headers, streams, str(seconds)),
        capture_output=True,
        text=True,
        timeout=seconds + 180,
    )
    if out.returncode:
        raise SystemExit(f"sse_client failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout))


def idle_memory(port: int, headers: dict[str, str], streams: int, pid: int) -> dict[str, float]:
    """RSS of ``pid``'s tree before and with ``streams`` idle event streams open."""
    before = tree_rss_mib(pid)
    client = subprocess.Popen(
        sse_client(port, headers, streams, "hold"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        opened = json.loads(client.stdout.readline())
        time.sleep(1)  # let the proxy settle what it allocates per stream
        during = tree_rss_mib(pid)
        client.stdin.close()
        client.wait(60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    return {
        "rss_before_mib": before,
        "rss_open_mib": during,
        "kib_per_stream": (during - before) * 1024 / max(1, opened["open"]),
        "errors": opened["errors"],
    }


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


def start_cli_server(
    files: int, streams: int, workers: int | None
) -> tuple[subprocess.Popen[str], int, dict[str, str], dict[str, str]]:
    port = free_port()
    argv = [sys.executable, str(HERE / "server.py"), str(port), str(files), str(streams)]
    if workers is not None:
        argv += ["--proxy-workers", str(workers)]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line:
        server.wait(30)
        raise SystemExit(f"cli-server ({' '.join(argv[2:])}) did not start")
    plain, stream = json.loads(line)["sandboxes"]
    return (
        server,
        port,
        {"Host": plain["host"], "Cookie": plain["cookie"]},
        {"Host": stream["host"], "Cookie": stream["cookie"]},
    )


def median_of(rounds: list[dict[str, Any]], target: str, measure: str, key: str) -> float:
    return statistics.median(r[target][measure][key] for r in rounds)


def write_results(args: argparse.Namespace, rounds: list[dict[str, Any]]) -> None:
    """Every round, with the arguments and the machine's CPU count, to ``args.json``."""
    args.json.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "args": vars(args),
                "cpus": os.cpu_count(),
                "rounds": rounds,
            },
            indent=1,
            default=str,
        )
    )
    print(f"\nresults: {args.json}")


def summarize(rounds: list[dict[str, Any]], names: list[str], args: argparse.Namespace) -> None:
    print(
        f"\n{len(rounds)} interleaved rounds; wrk -t2 -c50 (100 B) / -c10 (1 MiB), "
        f"{args.seconds} s each; {args.streams} SSE streams (an event each every "
        f"{args.sse_interval * 1000:.0f} ms, {'all at once' if args.sse_burst else 'spread'}), "
        f"{args.seconds} s; {args.ws_rounds} "
        f"WebSocket echoes; {args.idle_streams} idle event streams.\n"
        "Medians (memory: the largest round):\n"
    )
    print(
        "| target | small GET req/s | × nginx | p50 / p99 ms | 1 MiB GET MiB/s "
        "| SSE p50 / p99 ms | SSE p99 added ms | WS echo p50 / p99 ms | KiB per idle stream "
        "| errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        m = {(meas, key): median_of(rounds, name, meas, key) for meas, key in _KEYS}
        ratio = m["small", "rps"] / median_of(rounds, "nginx", "small", "rps")
        added = statistics.median(
            r[name]["sse"]["p99_ms"] - r["direct"]["sse"]["p99_ms"] for r in rounds
        )
        kib = (
            f"{max(r[name]['idle']['kib_per_stream'] for r in rounds):.1f}"
            if "idle" in rounds[0][name]
            else "–"
        )
        errors = sum(
            r[name][meas].get("errors", 0) for r in rounds for meas in ("small", "big", "sse")
        )
        print(
            f"| {name} | {m['small', 'rps']:.0f} | {ratio:.2f} | {m['small', 'p50_ms']:.2f} / "
            f"{m['small', 'p99_ms']:.2f} | {m['big', 'mib_s']:.0f} | {m['sse', 'p50_ms']:.2f} / "
            f"{m['sse', 'p99_ms']:.2f} | {added:.2f} | {m['ws', 'p50_ms']:.3f} / "
            f"{m['ws', 'p99_ms']:.3f} | {kib} | {errors:.0f} |"
        )
    cpu = max(r[n]["sse"]["cpu_share"] for r in rounds for n in names)
    print(f"\nSSE client CPU: at most {cpu:.2f} s per s measured (1.0 would be saturated)")
    print(
        "other processes on this machine, in cores, per round: "
        + ", ".join(f"{r['others_cores']:.2f}" for r in rounds)
    )
    for name in names:
        if not name.startswith("cli-server"):
            continue
        ratios = [r[name]["small"]["rps"] / r["nginx"]["small"]["rps"] for r in rounds]
        added = [r[name]["sse"]["p99_ms"] - r["direct"]["sse"]["p99_ms"] for r in rounds]
        kib = [r[name]["idle"]["kib_per_stream"] for r in rounds]
        print(
            f"{name}: small GETs {statistics.median(ratios):.2f}× nginx (target ≥ 0.8; rounds "
            f"{', '.join(f'{x:.2f}' for x in ratios)}); SSE p99 added "
            f"{', '.join(f'{x:.1f}' for x in added)} ms (target ≤ 2 every round: "
            f"{'met' if max(added) <= 2 else 'not met'}); KiB per idle stream "
            f"{', '.join(f'{x:.1f}' for x in kib)} (target ≤ 8)"
        )


_KEYS = [
    ("small", "rps"),
    ("small", "p50_ms"),
    ("small", "p99_ms"),
    ("big", "mib_s"),
    ("sse", "p50_ms"),
    ("sse", "p99_ms"),
    ("ws", "p50_ms"),
    ("ws", "p99_ms"),
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=10, help="per wrk run and SSE test (10)")
    ap.add_argument("--streams", type=int, default=1000, help="concurrent SSE streams (1000)")
    ap.add_argument("--sse-interval", type=float, default=0.1, help="s between events (0.1)")
    ap.add_argument(
        "--sse-burst",
        action="store_true",
        help="every stream's event at the same moment (a stress test), not spread over the "
        "interval",
    )
    ap.add_argument(
        "--idle-streams", type=int, help="idle event streams for the memory test (= --streams)"
    )
    ap.add_argument("--ws-rounds", type=int, default=2000, help="WebSocket echoes (2000)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds over all targets, interleaved; the table shows medians (3)",
    )
    ap.add_argument(
        "--proxy-workers-arg",
        type=int,
        action="append",
        metavar="N",
        help="a cli-server target started with --proxy-workers N (repeat it to compare, "
        "e.g. 1 and 2); without it: one target with the server's defaults",
    )
    ap.add_argument("--json", type=Path, default=Path("proxy-benchmark.json"), help="results")
    args = ap.parse_args()
    args.idle_streams = args.idle_streams or args.streams
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the children inherit it
    work, files_nginx, files = start_files("cli-bench-")
    procs: list[subprocess.Popen[Any]] = [files_nginx]
    try:
        streams = free_port()
        upstream = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "upstream.py"),
                str(streams),
                str(args.sse_interval),
                "1" if args.sse_burst else "20",
            ],
            start_new_session=True,
        )
        procs.append(upstream)
        wait_listening(streams, upstream, "upstream.py")
        proxy = free_port()
        nginx = start_nginx(
            work, "proxy", PROXY_SERVERS.format(files=files, streams=streams, proxy=proxy)
        )
        procs.append(nginx)
        wait_listening(proxy, nginx, "nginx (proxy)")
        # name: (port for files, port for streams, headers, stream headers, pid to weigh)
        targets: dict[str, tuple[int, int, dict[str, str], dict[str, str], int]] = {
            "direct": (files, streams, {}, {}, 0),
            "nginx": (proxy, proxy, {}, {}, nginx.pid),
        }
        for workers in args.proxy_workers_arg or [None]:
            server, port, plain, stream = start_cli_server(files, streams, workers)
            procs.append(server)
            name = "cli-server" if workers is None else f"cli-server w{workers}"
            targets[name] = (port, port, plain, stream, server.pid)
        names = list(targets)
        for name, (port, _, hdrs, _, _) in targets.items():  # warm-up, not counted
            wrk(f"http://127.0.0.1:{port}/small", hdrs, 1, 50)
        rounds: list[dict[str, Any]] = []
        others = OthersCpu(procs)
        for n in range(args.repeat):
            order = names[n % len(names) :] + names[: n % len(names)]
            row: dict[str, Any] = {name: {} for name in names}
            # Memory first: freed by the stream tests, memory the allocators keep would be
            # counted in "before" and reused by the idle streams.
            for name in order:
                _, port, _, shdrs, pid = targets[name]
                if pid:
                    row[name]["idle"] = idle_memory(port, shdrs, args.idle_streams, pid)
            for name in order:
                port, _, hdrs, _, _ = targets[name]
                row[name]["small"] = wrk(f"http://127.0.0.1:{port}/small", hdrs, args.seconds, 50)
            for name in order:
                port, _, hdrs, _, _ = targets[name]
                row[name]["big"] = wrk(f"http://127.0.0.1:{port}/big", hdrs, args.seconds, 10)
            for name in order:
                _, port, _, shdrs, _ = targets[name]
                row[name]["sse"] = sse_latency(port, shdrs, args.streams, args.seconds)
            for name in order:
                _, port, _, shdrs, _ = targets[name]
                row[name]["ws"] = asyncio.run(ws_echo(port, shdrs, args.ws_rounds))
            row["others_cores"] = others.cores()
            rounds.append(row)
            print(
                f"round {n + 1}: other processes used {row['others_cores']:.2f} cores",
                file=sys.stderr,
                flush=True,
            )
            for name in names[1:]:
                print(
                    f"round {n + 1} {name}: small GET {row[name]['small']['rps']:.0f} req/s "
                    f"({row[name]['small']['rps'] / row['nginx']['small']['rps']:.2f}× nginx), "
                    f"SSE p99 {row[name]['sse']['p99_ms']:.2f} ms (direct "
                    f"{row['direct']['sse']['p99_ms']:.2f}), "
                    f"{row[name]['idle']['kib_per_stream']:.1f} KiB per idle stream",
                    file=sys.stderr,
                    flush=True,
                )
        summarize(rounds, names, args)
        write_results(args, rounds)
    finally:
        stop(procs, work)


if __name__ == "__main__":
    main()
