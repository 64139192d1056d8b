#!/usr/bin/env python3
"""Local-agent tunnel benchmark: direct vs through the tunnel, measured in one run.

    /work/venv/bin/python benchmarks/tunnel/run.py [--profile always]   # curl, wrk on PATH
    /work/venv/bin/python benchmarks/tunnel/run.py --help   # sizes, counts, durations
    /work/venv/bin/python benchmarks/tunnel/run.py --hold   # set up only, measure by hand

Starts, all on 127.0.0.1 and each in its own process group:

- ``upstream.py``, a small asyncio HTTP server standing in for the laptop's opencode
  (``/small``, ``/bulk?n=``, ``/sse``, ``/echo``, ``/upload``);
- ``twistd -n cli-server --allow-unisolated`` with an embedded PostgreSQL in a scratch dir;
- ``twistd -n cli-agent`` registered with a one-time code (its HOME is a scratch dir), the
  way the integration tests and users do it.

It opens the local sandbox through the ticket flow (``POST /api/sandboxes/{id}/open``, then
the ticket URL on ``oc-{id}.localhost:PORT`` answers 303 with the ``cli_sandbox`` cookie) and
measures each workload twice: **direct** (client -> upstream) and **tunnel** (client ->
cli-server's subdomain proxy -> tunnel WebSocket -> cli-agent -> upstream):

1. bulk download (curl, N MiB, repeated; best and median MB/s, MB = 10^6 bytes), and upload;
2. small GETs with wrk (req/s, latency p50/p99);
3. S concurrent downloads of M MiB each (own asyncio client): total time, per-stream
   throughput min/median/max and fastest/slowest ratio, how far the others had got when the
   first stream completed, time to first byte, and meanwhile the event latency of a few SSE
   streams and the peak RSS of the server and agent ("no stream starves another");
   then the same at a few smaller S through the tunnel (``--scaling``), to show how the
   latency of other streams grows with the number of busy ones;
4. SSE event latency over E concurrent streams (receive time - the event's send time), idle
   and while a bulk download runs through the same path.

Also the CPU used by the server, the agent and the upstream during each workload. If the
tunnel's bulk download is below ``--target-mbps`` (or with ``--profile always``), py-spy
records the server and the agent during a bulk download and the script prints where their
time goes. Prints a Markdown table; writes everything to ``--json``. Every wait is bounded;
everything started is stopped, process groups are killed on error.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import hashlib
import http.client
import http.cookiejar
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from local_api import Api, free_port  # noqa: E402  (benchmarks/local_api.py, shared)
from upstream import expected_bulk  # noqa: E402
from wrk import wrk  # noqa: E402  (benchmarks/wrk.py, shared by the benchmark scripts)

MiB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), 1):
        return True


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed")
    return found


# -- processes ---------------------------------------------------------------------------


class Processes:
    """What we started, each in its own session (so its group can be killed as a whole);
    plus, as a last resort, any process whose command line names our scratch dir (the
    embedded PostgreSQL daemonises out of the server's group)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self.started.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        """SIGTERM the leader (twistd stops its own children cleanly), then kill its group."""
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"pid {proc.pid} ignored SIGTERM for {timeout:.0f} s: SIGKILL")
            except ProcessLookupError:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)  # stragglers left in its group
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.2)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        for _, proc in reversed(self.started):
            self.stop(proc)
        for sig in (signal.SIGINT, signal.SIGKILL):  # SIGINT: PostgreSQL's fast shutdown
            left = processes_mentioning(str(self.scratch))
            if not left:
                break
            log(f"left behind, naming {self.scratch}: {left}; signal {sig.name}")
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and processes_mentioning(str(self.scratch)):
                time.sleep(0.2)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def cpu_ticks(pid: int) -> int:
    return sum(user_system_ticks(pid))


def user_system_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def runqueue_wait(pid: int) -> float:
    """Seconds the process's main thread has spent runnable but waiting for a CPU."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


class RssPeak:
    """Samples the resident memory of some processes every 50 ms, in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: 0.0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                try:
                    self.peak[name] = max(self.peak[name], rss_mib(pid))
                except OSError:
                    pass
            self._stop.wait(0.05)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine_busy_ticks() -> int:
    """Busy jiffies of the whole machine (all CPUs): everything but idle and iowait."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


class Cpu:
    """CPU used by some processes over a stretch of wall time (seconds, and % of one core),
    and by everything else on the machine meanwhile (``others_cores``: the machine's busy
    time minus these processes, this script and its waited-for children such as curl and
    wrk; background noise from other users of the machine)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def __enter__(self) -> Cpu:
        self.began = time.monotonic()
        self.ticks = {name: cpu_ticks(pid) for name, pid in self.pids.items()}
        self.waits = {name: runqueue_wait(pid) for name, pid in self.pids.items()}
        self.kernel = {name: user_system_ticks(pid)[1] for name, pid in self.pids.items()}
        self.machine = machine_busy_ticks()
        self.own = _own_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = wall = time.monotonic() - self.began
        self.seconds = {
            name: (cpu_ticks(pid) - self.ticks[name]) / CLK_TCK for name, pid in self.pids.items()
        }
        self.percent = {name: round(s / wall * 100, 1) for name, s in self.seconds.items()}
        self.kernel_share = {
            name: round((user_system_ticks(pid)[1] - self.kernel[name]) / CLK_TCK / sec * 100, 1)
            if (sec := self.seconds[name])
            else 0.0
            for name, pid in self.pids.items()
        }
        self.waiting = {
            name: round((runqueue_wait(pid) - self.waits[name]) / wall * 100, 1)
            for name, pid in self.pids.items()
        }
        ours = sum(self.seconds.values()) + _own_cpu() - self.own
        machine = (machine_busy_ticks() - self.machine) / CLK_TCK
        self.others_cores = round(max(0.0, machine - ours) / wall, 2)

    def report(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall, 3),
            "cpu_s": {k: round(v, 3) for k, v in self.seconds.items()},
            "percent": self.percent,
            "runqueue_wait_percent": self.waiting,
            "kernel_percent_of_cpu": self.kernel_share,
            "others_cores": self.others_cores,
        }


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# -- the cli-server API ------------------------------------------------------------------


def wait_for(what: str, check: Any, timeout: float, step: float = 0.1, proc: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with status {proc.returncode}")
        try:
            result = check()
        except (OSError, http.client.HTTPException):
            result = None
        if result:
            return result
        time.sleep(step)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def http_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


# -- workloads ---------------------------------------------------------------------------


def header_args(headers: dict[str, str]) -> list[str]:
    return [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]


def curl_download(url: str, headers: dict[str, str], n: int) -> dict[str, float]:
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "--max-time", "300", *header_args(headers),
         "-w", "%{http_code} %{size_download} %{speed_download} %{time_total}", url],
        capture_output=True, text=True, timeout=330,
    )  # fmt: skip
    code, size, speed, took = out.stdout.split()
    if code != "200" or int(size) != n:
        raise RuntimeError(f"download {url}: HTTP {code}, {size} of {n} bytes; {out.stderr}")
    return {"mbps": float(speed) / 1e6, "seconds": float(took)}


def curl_upload(url: str, headers: dict[str, str], path: Path) -> dict[str, float]:
    out = subprocess.run(
        ["curl", "-sS", "-o", "-", "--max-time", "300", *header_args(headers),
         "-H", "Content-Type: application/octet-stream", "-H", "Expect:",
         "--data-binary", f"@{path}",
         "-w", "\n%{http_code} %{size_upload} %{speed_upload} %{time_total}", url],
        capture_output=True, text=True, timeout=330,
    )  # fmt: skip
    body, _, meta = out.stdout.rpartition("\n")
    code, size, _, took = meta.split()
    n = path.stat().st_size
    if code != "200" or int(size) != n or json.loads(body).get("length") != n:
        raise RuntimeError(f"upload {url}: HTTP {code}, {size} of {n} bytes; {body!r}")
    # speed_upload divides by the whole time; the answer is tiny, so that is the upload rate
    return {"mbps": n / float(took) / 1e6, "seconds": float(took)}


def best_and_median(runs: list[dict[str, float]]) -> dict[str, Any]:
    speeds = [r["mbps"] for r in runs]
    return {"runs_mbps": speeds, "best_mbps": max(speeds), "median_mbps": statistics.median(speeds)}


class Download(asyncio.Protocol):
    """One GET whose body is counted, not kept; every read's time and total are recorded."""

    def __init__(self, request: bytes, done: asyncio.Future[None]) -> None:
        self.request, self.done = request, done
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.length: int | None = None
        self.status = 0
        self.got = 0
        self.first: float | None = None
        self.finished: float | None = None
        self.progress: list[tuple[float, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.length is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.head[:end]).decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    self.length = int(value)
            if self.length is None:
                self.length = -1  # not what we expect: counted as an error
                return self._end()
            n = len(self.head) - end - 4
            self.first = now
        else:
            n = len(data)
        self.got += n
        self.progress.append((now, self.got))
        if self.got >= self.length:
            self.finished = now
            self._end()

    def _end(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def concurrent_downloads(
    port: int, headers: dict[str, str], streams: int, size: int, timeout: float, probes: int
) -> dict[str, Any]:
    """``streams`` connections first, then every request at the same instant; meanwhile
    ``probes`` SSE streams (opened a second before) measure event latency."""
    loop = asyncio.get_running_loop()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k != "Host")
    request = (
        f"GET /bulk?n={size} HTTP/1.1\r\nHost: {headers.get('Host', '127.0.0.1')}\r\n{extra}\r\n"
    ).encode()
    gate, stop = asyncio.Event(), asyncio.Event()
    probe = asyncio.ensure_future(sse_latency(port, headers, probes, timeout, gate, stop))
    await asyncio.sleep(1.0)
    downloads: list[Download] = []
    for _ in range(streams):
        done: asyncio.Future[None] = loop.create_future()
        download = Download(request, done)
        await loop.create_connection(lambda d=download: d, "127.0.0.1", port)  # type: ignore[misc]
        downloads.append(download)
    gate.set()
    began = time.perf_counter()
    for d in downloads:
        d.send()
    try:
        await asyncio.wait_for(asyncio.gather(*(d.done for d in downloads)), timeout)
    except TimeoutError:
        pass
    stop.set()
    for d in downloads:
        if d.transport is not None:
            d.transport.abort()
    sse = await probe
    ok = [d for d in downloads if d.status == 200 and d.finished is not None and d.got == size]
    errors = streams - len(ok)
    if not ok:
        return {"errors": errors, "sse": sse}
    finished = sorted(d.finished for d in ok if d.finished is not None)
    total = finished[-1] - began
    per_stream = sorted(size / (f - began) / 1e6 for f in finished)
    first_done = finished[0]
    at_first = sorted(  # each stream's share of its body when the first stream completed
        d.progress[i - 1][1] / size
        if (i := bisect.bisect_right(d.progress, (first_done, 2**62)))
        else 0.0
        for d in ok
    )
    first_bytes = sorted((d.first - began) * 1000 for d in ok if d.first is not None)
    return {
        "errors": errors,
        "total_s": total,
        "aggregate_mbps": len(ok) * size / total / 1e6,
        "stream_mbps_min": per_stream[0],
        "stream_mbps_median": statistics.median(per_stream),
        "stream_mbps_max": per_stream[-1],
        "max_min_ratio": per_stream[-1] / per_stream[0],
        "first_finish_s": first_done - began,
        "at_first_finish_min": at_first[0],
        "at_first_finish_median": statistics.median(at_first),
        "first_byte_ms_median": statistics.median(first_bytes),
        "first_byte_ms_max": first_bytes[-1],
        "sse": sse,
    }


async def sse_latency(
    port: int,
    headers: dict[str, str],
    streams: int,
    seconds: float,
    gate: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """``streams`` event streams for ``seconds`` (or until ``stop``); every event carries its
    send time. With ``gate``, only events received after it is set count."""
    latencies: list[float] = []
    errors = 0
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k != "Host")
    request = f"GET /sse HTTP/1.1\r\nHost: {headers.get('Host', '127.0.0.1')}\r\n{extra}\r\n"
    began = time.time()

    def going() -> bool:
        return time.time() < began + seconds and not (stop is not None and stop.is_set())

    async def one() -> None:
        nonlocal errors
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            errors += 1
            return
        writer.write(request.encode())
        try:
            status = await asyncio.wait_for(reader.readline(), timeout=10)
            if b" 200 " not in status:
                errors += 1
                return
            while going():
                line = await asyncio.wait_for(reader.readline(), timeout=5)
                if not line:
                    errors += 1
                    return
                if line.startswith(b"data: ") and (gate is None or gate.is_set()):
                    latencies.append((time.time() - float(line[6:].strip())) * 1000)
        except (TimeoutError, OSError, ValueError):
            errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(streams)))
    latencies.sort()
    return {
        "streams": streams,
        "events": len(latencies),
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "errors": errors,
    }


def background_download(url: str, headers: dict[str, str], seconds: float) -> subprocess.Popen[str]:
    """curl pulling an endless body for ``seconds`` (exits 28 then; -w still reports)."""
    return subprocess.Popen(
        ["curl", "-sS", "-o", "/dev/null", "--max-time", str(seconds), *header_args(headers),
         "-w", "%{http_code} %{size_download} %{speed_download}", url],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip


def finish_background(proc: subprocess.Popen[str]) -> dict[str, float]:
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    parts = out.split()
    return {"mbps": float(parts[2]) / 1e6 if len(parts) == 3 else float("nan")}


# -- profiling ---------------------------------------------------------------------------


def profile(
    pids: dict[str, int], url: str, headers: dict[str, str], seconds: int, out_dir: Path
) -> dict[str, Any]:
    """py-spy on each process while curl downloads through the tunnel."""
    out_dir.mkdir(parents=True, exist_ok=True)
    load = background_download(url, headers, seconds + 4)
    time.sleep(1.0)
    spies = {}
    for name, pid in pids.items():
        raw = out_dir / f"{name}.collapsed.txt"
        spies[name] = (
            subprocess.Popen(
                [tool("py-spy"), "record", "-p", str(pid), "-d", str(seconds), "-r", "200",
                 "-f", "raw", "--threads", "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                start_new_session=True,
            ),
            raw,
        )  # fmt: skip
    summary: dict[str, Any] = {}
    for name, (spy, raw) in spies.items():
        try:
            _, err = spy.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            os.killpg(spy.pid, signal.SIGKILL)
            _, err = spy.communicate()
        if not raw.exists():
            summary[name] = {"error": err.strip()[-500:]}
            continue
        summary[name] = summarise_profile(raw)
        summary[name]["file"] = str(raw)
    summary["load"] = finish_background(load)
    return summary


def _frame_name(frame: str) -> tuple[str, str]:
    """'func (path/to/file.py:123)' -> ('func (short/file.py)', 'short/file.py')."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame, frame
    func, path = m.groups()
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})", path


# Code whose inclusive time is worth a look (the reactor's own frames are in every sample).
PYTHON_LAYERS = ("cli_server/", "autobahn/", "txaio/", "twisted/web/", "json/", "<attrs")

# Where a sample's innermost frame is, in words (first match wins).
TUNNEL_CODE = ("cli_server/tunnel/", "json/", "<attrs generated methods cli_server.tunnel")
AREAS = [
    ("socket send (syscall)", lambda f, p: f.startswith(("untilConcludes", "Connection.writeS"))),
    ("socket recv (syscall)", lambda f, p: f.startswith("Connection.doRead")),
    ("WebSocket framing, masking (autobahn)", lambda f, p: p.startswith(("autobahn/", "txaio/"))),
    ("tunnel: frames, mux, hub (cli_server/tunnel, json)", lambda f, p: p.startswith(TUNNEL_CODE)),
    ("HTTP server and client (twisted.web)", lambda f, p: p.startswith("twisted/web/")),
    ("proxy and activity (cli_server, other)", lambda f, p: p.startswith("cli_server/")),
    ("reactor, transports, Deferreds, logging (twisted)", lambda f, p: p.startswith("twisted/")),
    ("other", lambda f, p: True),
]  # fmt: skip


def summarise_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """Main-thread samples: how many were in epoll_wait; of the rest, self time by area and
    function, and inclusive time of what runs below the reactor loop."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    python: collections.Counter[str] = collections.Counter()  # inclusive, syscalls left out
    python_total = 0
    areas: collections.Counter[str] = collections.Counter()
    total = epoll = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or "MainThread" not in stack.split(";", 1)[0]:
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")[1:]]
        if not frames:
            continue
        func, path = frames[-1]
        if func.startswith("EPollReactor.doPoll"):
            epoll += n
            continue
        self_time[func] += n
        area = next(name for name, match in AREAS if match(func, path))
        areas[area] += n
        below = False
        for name in dict.fromkeys(f[0] for f in frames):
            if below:
                inclusive[name] += n
            below = below or name.startswith("EPollReactor.doPoll")
        if "syscall" not in area:
            python_total += n
            for name, where in dict.fromkeys(frames):
                if where.startswith(PYTHON_LAYERS):
                    python[name] += n
    work = total - epoll

    def pct(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(v / work * 100, 1)) for k, v in counter.most_common(top)] if work else []

    return {
        "samples": total,
        "epoll_percent": round(epoll / total * 100, 1) if total else None,
        "areas": pct(areas),
        "self": pct(self_time),
        "inclusive": [(k, v) for k, v in pct(inclusive) if v < 99],
        "python_inclusive": [
            (k, round(v / python_total * 100, 1)) for k, v in python.most_common(top + 10)
        ]
        if python_total
        else [],
    }


# -- the run -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def start_everything(procs: Processes, work: Path, twistd: list[str]) -> dict[str, Any]:
    up_port, port = free_port(), free_port()
    upstream = procs.start(
        "upstream",
        [sys.executable, str(HERE / "upstream.py"), str(up_port)],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "upstream.log", "wb"),  # noqa: SIM115
    )
    wait_for("upstream", lambda: listening(up_port), 10, proc=upstream)

    server_log = work / "server.log"
    began = time.monotonic()
    server = procs.start(
        "server",
        [*twistd, "-n", "--pidfile=", f"--logfile={server_log}", "cli-server",
         "--allow-unisolated", "--data-dir", str(work / "data"),
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--base-domain", f"localhost:{port}"],
        cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    api = Api(base, timeout=15)
    try:
        wait_for("cli-server /readyz", lambda: api.call("GET", "/readyz")[0] == 200, 120,
                 0.1, server)  # fmt: skip
    except RuntimeError as e:
        raise RuntimeError(f"{e}\n{tail(server_log)}") from None
    ready_s = time.monotonic() - began
    log(f"cli-server ready on {base} in {ready_s:.1f} s")

    def ok(reply: tuple[int, Any], wanted: int) -> Any:
        if reply[0] != wanted:
            raise RuntimeError(f"API answered {reply}")
        return reply[1]

    ok(api.call("POST", "/api/auth/register", {"username": "bench", "password": "benchmark1"}), 201)
    ok(api.call("POST", "/api/auth/login", {"username": "bench", "password": "benchmark1"}), 200)
    wid = ok(api.call("POST", "/api/workspaces", {"name": "bench"}), 201)["id"]
    code = ok(api.call("POST", f"/api/workspaces/{wid}/agent-code"), 201)["code"]

    home = work / "home"
    home.mkdir()
    agent_log = work / "agent.log"
    agent = procs.start(
        "agent",
        [*twistd, "-n", "--pidfile=", f"--logfile={agent_log}", "cli-agent",
         "--server", base, "--code", code, "--name", "bench-laptop",
         "--opencode-url", f"http://127.0.0.1:{up_port}",
         "--config", str(home / ".cli-server" / "agent.json")],
        cwd=work, env={**clean_env(), "HOME": str(home)},
        stdout=subprocess.DEVNULL, stderr=open(work / "agent.stderr", "wb"),  # noqa: SIM115
    )  # fmt: skip

    def local_running() -> Any:
        listed = ok(api.call("GET", f"/api/workspaces/{wid}/sandboxes"), 200)
        return next((s for s in listed if s["is_local"] and s["status"] == "running"), None)

    try:
        sandbox = wait_for("the agent's sandbox running", local_running, 60, 0.1, agent)
    except RuntimeError as e:
        raise RuntimeError(f"{e}\n{tail(agent_log)}\n{tail(server_log)}") from None
    sid = sandbox["id"]
    url = ok(api.call("POST", f"/api/sandboxes/{sid}/open"), 200)["url"]
    host = f"oc-{sid}.localhost:{port}"
    status, headers, _ = http_get(port, url.split(host, 1)[1], {"Host": host})
    if status != 303 or "set-cookie" not in headers:
        raise RuntimeError(f"ticket answered {status} {headers}")
    cookie = headers["set-cookie"].split(";")[0]
    log(f"agent connected; sandbox {sid} opened at {host}")
    return {
        "upstream": upstream,
        "server": server,
        "agent": agent,
        "up_port": up_port,
        "port": port,
        "tunnel_headers": {"Host": host, "Cookie": cookie},
        "ready_s": ready_s,
        "logs": {"server": server_log, "agent": agent_log},
    }


def clean_env() -> dict[str, str]:
    drop = {"DATABASE_URL", "CLI_SERVER_DATA", "BASE_DOMAIN", "BASE_SCHEME", "SESSION_LIFETIME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def check_integrity(targets: dict[str, tuple[int, dict[str, str]]], n: int) -> None:
    want = hashlib.sha256(expected_bulk(n)).hexdigest()
    for name, (port, headers) in targets.items():
        status, _, body = http_get(port, f"/bulk?n={n}", headers)
        got = hashlib.sha256(body).hexdigest()
        if status != 200 or got != want:
            raise RuntimeError(f"{name}: /bulk?n={n} answered {status}, {len(body)} bytes, {got}")
        status, _, body = http_get(port, "/small", headers)
        if status != 200 or len(body) != 100:
            raise RuntimeError(f"{name}: /small answered {status}, {body[:200]!r}")


def measure(
    name: str,
    port: int,
    headers: dict[str, str],
    cpu_pids: dict[str, int],
    args: argparse.Namespace,
    upload_file: Path,
) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    row: dict[str, Any] = {"cpu": {}}
    n = args.bulk_mib * MiB

    log(f"{name}: bulk download {args.bulk_mib} MiB x{args.repeats}")
    with Cpu(cpu_pids) as cpu:
        runs = [curl_download(f"{base}/bulk?n={n}", headers, n) for _ in range(args.repeats)]
    row["bulk"] = best_and_median(runs)
    row["cpu"]["bulk"] = cpu.report()
    row["bulk"]["cpu_ms_per_mb"] = per_unit(cpu, n * args.repeats / 1e6, 1000)

    log(f"{name}: upload {args.upload_mib} MiB x{args.repeats}")
    with Cpu(cpu_pids) as cpu:
        runs = [curl_upload(f"{base}/upload", headers, upload_file) for _ in range(args.repeats)]
    row["upload"] = best_and_median(runs)
    row["cpu"]["upload"] = cpu.report()
    row["upload"]["cpu_ms_per_mb"] = per_unit(
        cpu, upload_file.stat().st_size * args.repeats / 1e6, 1000
    )

    log(f"{name}: wrk small GETs, {args.seconds} s")
    with Cpu(cpu_pids) as cpu:
        row["small"] = wrk(f"{base}/small", headers, args.seconds, args.connections)
    row["cpu"]["small"] = cpu.report()
    row["small"]["cpu_us_per_request"] = per_unit(cpu, row["small"]["rps"] * cpu.wall, 1e6)

    if name == "tunnel":  # smaller counts first: RSS peaks are the process's peak so far
        row["scaling"] = {}
        for streams in sorted(n for n in args.scaling if n != args.streams):
            log(f"{name}: {streams} concurrent downloads of {args.stream_mib} MiB")
            with RssPeak(cpu_pids) as rss:
                got = asyncio.run(
                    concurrent_downloads(
                        port, headers, streams, args.stream_mib * MiB, 300, args.probes
                    )
                )
            got["rss_mib_peak"] = rss.peak
            row["scaling"][streams] = got
            time.sleep(1)

    log(f"{name}: {args.streams} concurrent downloads of {args.stream_mib} MiB")
    with Cpu(cpu_pids) as cpu, RssPeak(cpu_pids) as rss:
        row["concurrent"] = asyncio.run(
            concurrent_downloads(
                port, headers, args.streams, args.stream_mib * MiB, 300, args.probes
            )
        )
    row["cpu"]["concurrent"] = cpu.report()
    row["concurrent"]["rss_mib_peak"] = rss.peak
    if name == "tunnel":
        row["scaling"][args.streams] = row["concurrent"]

    log(f"{name}: {args.sse} SSE streams, {args.sse_seconds} s")
    with Cpu(cpu_pids) as cpu:
        row["sse"] = asyncio.run(sse_latency(port, headers, args.sse, args.sse_seconds))
    row["cpu"]["sse"] = cpu.report()

    log(f"{name}: {args.sse} SSE streams while a bulk download runs, {args.sse_seconds} s")
    with Cpu(cpu_pids) as cpu:
        load = background_download(f"{base}/bulk?n={2**40}", headers, args.sse_seconds + 2)
        time.sleep(0.5)
        row["sse_loaded"] = asyncio.run(sse_latency(port, headers, args.sse, args.sse_seconds))
        row["sse_loaded"]["bulk_mbps"] = finish_background(load)["mbps"]
    row["cpu"]["sse_loaded"] = cpu.report()
    return row


def per_unit(cpu: Cpu, units: float, scale: float) -> dict[str, float]:
    """CPU time per unit of work (e.g. ms per MB), by process."""
    return {
        k: round(v / units * scale, 2) if units else float("nan") for k, v in cpu.seconds.items()
    }


def fmt(v: float, digits: int = 1) -> str:
    return "–" if v != v else f"{v:,.{digits}f}"  # NaN -> dash


def table(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    d, t = rows["direct"], rows["tunnel"]

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}×" if a else "–"

    def pair(r: dict[str, Any], a: str, b: str, digits: int = 2) -> str:
        return f"{fmt(r.get(a, float('nan')), digits)} / {fmt(r.get(b, float('nan')), digits)}"

    nan = float("nan")
    lines = [
        "| measure | direct | tunnel | tunnel / direct |",
        "|---|---|---|---|",
    ]
    sizes = (("bulk", "download", args.bulk_mib), ("upload", "upload", args.upload_mib))
    for key, label, size in sizes:
        lines.append(
            f"| {label} {size} MiB, MB/s: best (median of {args.repeats}) "
            f"| {fmt(d[key]['best_mbps'], 0)} ({fmt(d[key]['median_mbps'], 0)}) "
            f"| {fmt(t[key]['best_mbps'], 0)} ({fmt(t[key]['median_mbps'], 0)}) "
            f"| {ratio(d[key]['best_mbps'], t[key]['best_mbps'])} |"
        )
        lines.append(
            f"| … CPU ms per MB: upstream · server / agent "
            f"| {fmt(d[key]['cpu_ms_per_mb'].get('upstream', nan), 2)} "
            f"| {fmt(t[key]['cpu_ms_per_mb'].get('upstream', nan), 2)} · "
            f"{pair(t[key]['cpu_ms_per_mb'], 'server', 'agent')} | |"
        )
    lines += [
        f"| small GET req/s (wrk -t2 -c{args.connections}) | {fmt(d['small']['rps'], 0)} "
        f"| {fmt(t['small']['rps'], 0)} | {ratio(d['small']['rps'], t['small']['rps'])} |",
        f"| … latency p50 / p99 ms | {pair(d['small'], 'p50_ms', 'p99_ms')} "
        f"| {pair(t['small'], 'p50_ms', 'p99_ms')} | |",
        f"| … CPU µs per request: upstream · server / agent "
        f"| {fmt(d['small']['cpu_us_per_request'].get('upstream', nan), 0)} "
        f"| {fmt(t['small']['cpu_us_per_request'].get('upstream', nan), 0)} · "
        f"{pair(t['small']['cpu_us_per_request'], 'server', 'agent', 0)} | |",
    ]
    dc, tc = d["concurrent"], t["concurrent"]
    if "total_s" in dc and "total_s" in tc:
        lines += [
            f"| {args.streams} × {args.stream_mib} MiB downloads at once: total s "
            f"(aggregate MB/s) | {fmt(dc['total_s'], 2)} ({fmt(dc['aggregate_mbps'], 0)}) "
            f"| {fmt(tc['total_s'], 2)} ({fmt(tc['aggregate_mbps'], 0)}) "
            f"| {ratio(dc['aggregate_mbps'], tc['aggregate_mbps'])} |",
            f"| … per-stream MB/s min / median / max "
            f"| {fmt(dc['stream_mbps_min'], 2)} / {fmt(dc['stream_mbps_median'], 2)} / "
            f"{fmt(dc['stream_mbps_max'], 2)} "
            f"| {fmt(tc['stream_mbps_min'], 2)} / {fmt(tc['stream_mbps_median'], 2)} / "
            f"{fmt(tc['stream_mbps_max'], 2)} | |",
            f"| … fairness: fastest / slowest stream | {fmt(dc['max_min_ratio'], 2)} "
            f"| {fmt(tc['max_min_ratio'], 2)} | |",
            f"| … when the first stream completed, the others had: least / median "
            f"| {dc['at_first_finish_min']:.0%} / {dc['at_first_finish_median']:.0%} "
            f"| {tc['at_first_finish_min']:.0%} / {tc['at_first_finish_median']:.0%} | |",
            f"| … first byte ms: median / max "
            f"| {pair(dc, 'first_byte_ms_median', 'first_byte_ms_max', 0)} "
            f"| {pair(tc, 'first_byte_ms_median', 'first_byte_ms_max', 0)} | |",
            f"| … meanwhile SSE latency over {args.probes} streams: p50 / p99 / max ms "
            f"| {pair(dc['sse'], 'p50_ms', 'p99_ms')} / {fmt(dc['sse']['max_ms'], 0)} "
            f"| {pair(tc['sse'], 'p50_ms', 'p99_ms')} / {fmt(tc['sse']['max_ms'], 0)} | |",
        ]
    else:
        lines.append(f"| {args.streams} concurrent downloads | {dc} | {tc} | |")
    for key, label in (("sse", "idle"), ("sse_loaded", "during a bulk download")):
        lines.append(
            f"| SSE event latency, {args.sse} streams {label}: p50 / p99 ms "
            f"| {pair(d[key], 'p50_ms', 'p99_ms')} | {pair(t[key], 'p50_ms', 'p99_ms')} | |"
        )
    lines.append(
        f"| … the bulk download meanwhile, MB/s | {fmt(d['sse_loaded']['bulk_mbps'], 0)} "
        f"| {fmt(t['sse_loaded']['bulk_mbps'], 0)} | |"
    )
    errors = {
        name: int(r["small"]["errors"] + r["concurrent"].get("errors", 0) + r["sse"]["errors"]
                  + r["sse_loaded"]["errors"] + r["concurrent"]["sse"]["errors"])
        for name, r in rows.items()
    }  # fmt: skip
    lines.append(f"| errors (wrk, streams, SSE) | {errors['direct']} | {errors['tunnel']} | |")
    noise = {name: max(c["others_cores"] for c in r["cpu"].values()) for name, r in rows.items()}
    lines.append(
        f"| other processes on the machine, cores (worst phase) | {noise['direct']:.2f} "
        f"| {noise['tunnel']:.2f} | |"
    )
    bulk = t["cpu"]["bulk"]
    use = " · ".join(
        f"{bulk['percent'].get(k, 0):.0f} / {bulk['runqueue_wait_percent'].get(k, 0):.0f}"
        for k in ("server", "agent", "upstream")
    )
    lines.append(
        "| during the tunnel's bulk download: CPU % / % of time waiting for a CPU: "
        f"server · agent · upstream | | {use} | |"
    )
    kernel = " · ".join(
        f"{bulk['kernel_percent_of_cpu'].get(k, 0):.0f}%" for k in ("server", "agent")
    )
    lines.append(f"| … share of that CPU spent in the kernel: server · agent | | {kernel} | |")
    return "\n".join(lines)


def scaling_table(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"| concurrent {args.stream_mib} MiB downloads through the tunnel | aggregate MB/s "
        f"| first byte max ms | SSE latency of {args.probes} other streams p50 / p99 ms "
        "| agent RSS peak MiB | server RSS peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for streams, r in sorted(rows["tunnel"].get("scaling", {}).items()):
        if "total_s" not in r:
            lines.append(f"| {streams} | errors: {r.get('errors')} | | | | |")
            continue
        rss = r.get("rss_mib_peak", {})
        lines.append(
            f"| {streams} | {fmt(r['aggregate_mbps'], 0)} | {fmt(r['first_byte_ms_max'], 0)} "
            f"| {fmt(r['sse']['p50_ms'], 0)} / {fmt(r['sse']['p99_ms'], 0)} "
            f"| {fmt(rss.get('agent', float('nan')), 0)} "
            f"| {fmt(rss.get('server', float('nan')), 0)} |"
        )
    return "\n".join(lines)


def print_profile(summary: dict[str, Any], top: int) -> None:
    load = summary.get("load", {})
    mbps = load.get("mbps", float("nan"))
    print(f"\nbulk download through the tunnel while profiling: {mbps:.0f} MB/s")
    for name, s in summary.items():
        if name == "load":
            continue
        if "error" in s:
            print(f"\n{name}: py-spy failed: {s['error']}")
            continue
        print(
            f"\n### {name}: main thread, {s['samples']} samples; {s['epoll_percent']}% of them in "
            f"epoll_wait (waiting), the rest is work:"
        )
        for key, title in (("areas", "self time by area (share of work samples)"),
                           ("self", "self time by function"),
                           ("python_inclusive", "inclusive time in tunnel, WebSocket and HTTP "
                            "code (share of work samples outside socket syscalls)")):  # fmt: skip
            print(f"\n{title}:")
            for frame, share in s[key][:top]:
                print(f"  {share:5.1f}%  {frame}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bulk-mib", type=int, default=200, help="bulk download size [200]")
    ap.add_argument(
        "--upload-mib", type=int, default=50, help="upload size (the proxy takes <= 64 MiB) [50]"
    )
    ap.add_argument("--repeats", type=int, default=3, help="bulk/upload repetitions [3]")
    ap.add_argument("--seconds", type=int, default=10, help="wrk duration [10]")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections [50]")
    ap.add_argument("--streams", type=int, default=200, help="concurrent downloads [200]")
    ap.add_argument("--stream-mib", type=int, default=2, help="size of each [2]")
    ap.add_argument("--probes", type=int, default=10,
                    help="SSE streams measured during the concurrent downloads [10]")  # fmt: skip
    ap.add_argument(
        "--scaling",
        type=lambda v: [int(n) for n in v.split(",") if n],
        default=[10, 50],
        help="also these numbers of concurrent downloads, through the tunnel only [10,50]",
    )
    ap.add_argument("--sse", type=int, default=100, help="concurrent SSE streams [100]")
    ap.add_argument("--sse-seconds", type=int, default=10, help="SSE duration [10]")
    ap.add_argument("--target-mbps", type=float, default=100.0, help="bulk target [100]")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                    help="py-spy the server and agent: below the target (auto) [auto]")  # fmt: skip
    ap.add_argument("--profile-seconds", type=int, default=15, help="py-spy duration [15]")
    ap.add_argument("--json", type=Path, default=HERE / "results.json", help="[%(default)s]")
    ap.add_argument("--profile-dir", type=Path, default=HERE / "profiles", help="[%(default)s]")
    ap.add_argument(
        "--twistd",
        default="",
        help="command that runs twistd, for both server and agent (e.g. 'python "
        "benchmarks/tunnel/twistd_patched.py', to try an optimisation) [the venv's twistd]",
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    ap.add_argument("--hold", action="store_true",
                    help="only set up, print the ports, headers and pids, and wait for Ctrl-C "
                    "(to measure or profile by hand)")  # fmt: skip
    args = ap.parse_args()
    for name in ("curl", "wrk"):
        if not shutil.which(name):
            raise SystemExit(f"{name} is missing: apt-get install -y curl wrk")

    def on_signal(signum: int, _: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    work = Path(tempfile.mkdtemp(prefix="cli-bench-tunnel-"))
    work.chmod(0o711)
    procs = Processes(work)
    started = time.time()
    try:
        # relative paths made absolute (the agent runs in the scratch dir); links kept (a venv)
        twistd = [os.path.abspath(a) if Path(a).exists() else a for a in shlex.split(args.twistd)]
        up = start_everything(procs, work, twistd or [tool("twistd")])
        upload_file = work / "upload.bin"
        upload_file.write_bytes(os.urandom(args.upload_mib * MiB))
        tunnel_headers = up["tunnel_headers"]
        targets = {
            "direct": (up["up_port"], {}),
            "tunnel": (up["port"], tunnel_headers),
        }
        check_integrity(targets, 16 * MiB + 12345)
        log("integrity: 16 MiB identical direct and through the tunnel")
        pids = {
            "server": up["server"].pid,
            "agent": up["agent"].pid,
            "upstream": up["upstream"].pid,
        }
        if args.hold:
            print(json.dumps({"direct": f"http://127.0.0.1:{up['up_port']}",
                              "tunnel": f"http://127.0.0.1:{up['port']}",
                              "tunnel_headers": tunnel_headers, "pids": pids,
                              "scratch": str(work)}, indent=2), flush=True)  # fmt: skip
            log("holding; Ctrl-C (or SIGTERM) stops everything")
            while True:
                time.sleep(3600)
        rss_idle = {k: rss_mib(v) for k, v in pids.items()}
        rows = {}
        for name, (port, headers) in targets.items():
            cpu_pids = pids if name == "tunnel" else {"upstream": pids["upstream"]}
            rows[name] = measure(name, port, headers, cpu_pids, args, upload_file)
        rss_peak = {k: rss_mib(v, "VmHWM") for k, v in pids.items()}
        result: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
            "command": " ".join([sys.executable, *sys.argv]),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": machine(),
            "server_ready_s": up["ready_s"],
            "rss_mib_idle": rss_idle,
            "rss_mib_peak": rss_peak,
            "results": rows,
        }
        best = rows["tunnel"]["bulk"]["best_mbps"]
        if args.profile == "always" or (args.profile == "auto" and best < args.target_mbps):
            log(
                f"profiling server and agent for {args.profile_seconds} s (bulk through the tunnel)"
            )
            result["profile"] = profile(
                {"server": pids["server"], "agent": pids["agent"]},
                f"http://127.0.0.1:{up['port']}/bulk?n={2**40}",
                tunnel_headers,
                args.profile_seconds,
                args.profile_dir,
            )
        m = result["machine"]
        print(
            f"\n{m['nproc']} × {m['cpu_model']}, {m['mem_gib']} GiB, Linux {m['kernel']}, "
            f"Python {m['python']}; {result['date']}\n"
        )
        print(table(rows, args))
        print()
        print(scaling_table(rows, args))
        print(
            f"\ntunnel bulk best {best:.0f} MB/s: target ≥ {args.target_mbps:.0f} MB/s "
            f"{'met' if best >= args.target_mbps else 'NOT met'}; "
            f"{args.streams} streams: fastest/slowest "
            f"{rows['tunnel']['concurrent'].get('max_min_ratio', float('nan')):.2f}"
        )
        print(
            "RSS MiB idle → peak: "
            + ", ".join(f"{k} {rss_idle[k]:.0f} → {rss_peak[k]:.0f}" for k in pids)
        )
        if "profile" in result:
            print_profile(result["profile"], 15)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"results in {args.json}")
    except (KeyboardInterrupt, SystemExit):
        log("stopping")
        raise
    except BaseException:
        log(f"failed; logs in {work}" if args.keep else "failed (use --keep to keep the logs)")
        raise
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
