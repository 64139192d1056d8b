#!/usr/bin/env python3
"""Measure sandbox create->running and resume->running times, RSS per sandbox, and small GETs
through the subdomain proxy to a running sandbox (wrk, opencode's /global/health).

Starts a real `twistd cli-server` (embedded PostgreSQL, process backend, real opencode) on a
scratch data dir and loopback port, creates N sandboxes one after another, pauses and resumes
each, and prints a table. Run as root from the checkout after the README's Quick start:

    .venv/bin/python benchmarks/sandbox_lifecycle.py --count 5
    DOCKER_HOST=unix:///run/docker.sock .venv/bin/python benchmarks/sandbox_lifecycle.py \
        --count 5 --backend docker --agent-image cli-server-sandbox:1.18.33
"""

from __future__ import annotations

import argparse
import http.client
import http.cookiejar
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_api import Api, free_port  # noqa: E402  (benchmarks/local_api.py, shared)
from wrk import wrk  # noqa: E402  (benchmarks/wrk.py, shared by the benchmark scripts)


class Client(Api):
    def wait(self, sandbox_id: str, status: str, timeout: float = 120) -> float:
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            got = self.call("GET", f"/api/sandboxes/{sandbox_id}")[1]["status"]
            if got == status:
                return time.monotonic() - began
            if got == "failed":
                raise SystemExit(
                    f"sandbox failed: {self.call('GET', f'/api/sandboxes/{sandbox_id}')}"
                )
            time.sleep(0.02)
        raise SystemExit(f"timeout waiting for {status}")


def sandbox_cookie(client: Client, port: int, sandbox_id: str) -> str:
    """Redeem an Open link as the browser does; the subdomain's session cookie."""
    url = client.call("POST", f"/api/sandboxes/{sandbox_id}/open")[1]["url"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "GET", url.split(f":{port}", 1)[1], headers={"Host": f"oc-{sandbox_id}.localhost:{port}"}
    )
    reply = conn.getresponse()
    cookie = reply.getheader("Set-Cookie") or ""
    conn.close()
    return cookie.split(";", 1)[0]


def rss_mib_of_sandboxes() -> list[float]:
    sizes = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if len(argv) < 2 or Path(argv[0].decode()).name != "opencode" or argv[1] != b"serve":
                continue  # opencode itself, under bubblewrap or in a container alike
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--backend", default="process", choices=["process", "docker"])
    ap.add_argument("--agent-image", help="the sandbox image, with --backend docker")
    ap.add_argument("--proxy-seconds", type=int, default=5, help="wrk through the proxy; 0: skip")
    args = ap.parse_args()
    backend = ["--backend", args.backend]
    if args.agent_image:
        backend += ["--agent-image", args.agent_image]
    root = Path(tempfile.mkdtemp(prefix="cli-bench-"))
    root.chmod(0o711)
    port = free_port()
    twistd = str(Path(sys.executable).parent / "twistd")
    server = subprocess.Popen(
        [
            twistd,
            "-n",
            "--pidfile=",
            f"--logfile={root / 'server.log'}",
            "cli-server",
            "--data-dir",
            str(root / "data"),
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--base-domain",
            f"localhost:{port}",
            *backend,
        ],
        start_new_session=True,
    )
    client = Client(f"http://127.0.0.1:{port}")
    workspaces: list[str] = []
    try:
        began = time.monotonic()
        while True:
            try:
                if client.call("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() - began > 120:
                raise SystemExit(f"the server did not start: see {root / 'server.log'}")
            time.sleep(0.05)
        start_s = time.monotonic() - began
        client.call("POST", "/api/auth/register", {"username": "bench", "password": "benchmark1"})
        client.call("POST", "/api/auth/login", {"username": "bench", "password": "benchmark1"})
        wid = client.call("POST", "/api/workspaces", {"name": "bench"})[1]["id"]
        creates, resumes, ids = [], [], []
        workspaces.append(wid)
        for n in range(args.count):
            t = time.monotonic()
            sid = client.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": f"b{n}"})[1][
                "id"
            ]
            client.wait(sid, "running")
            creates.append(time.monotonic() - t)
            ids.append(sid)
        rss = rss_mib_of_sandboxes()
        proxied = None
        if args.proxy_seconds:
            headers = {
                "Host": f"oc-{ids[0]}.localhost:{port}",
                "Cookie": sandbox_cookie(client, port, ids[0]),
            }
            url = f"http://127.0.0.1:{port}/global/health"
            proxied = wrk(url, headers, args.proxy_seconds, 16)
        for sid in ids:
            client.call("POST", f"/api/sandboxes/{sid}/pause")
            client.wait(sid, "paused")
            t = time.monotonic()
            client.call("POST", f"/api/sandboxes/{sid}/resume")
            client.wait(sid, "running")
            resumes.append(time.monotonic() - t)
        print(f"backend: {args.backend} {args.agent_image or ''}")
        print(f"server start to ready (cold, embedded PostgreSQL initdb): {start_s:.2f} s")
        for name, values in (("create -> running", creates), ("resume -> running", resumes)):
            print(
                f"{name}: median {statistics.median(values):.2f} s, "
                f"min {min(values):.2f} s, max {max(values):.2f} s (n={len(values)})"
            )
        if proxied is not None:
            print(
                f"small GET through the proxy (wrk -c16, /global/health): {proxied['rps']:.0f} "
                f"req/s, p50 {proxied.get('p50_ms', 0):.2f} ms, p99 {proxied.get('p99_ms', 0):.2f}"
                f" ms, errors {proxied['errors']:.0f}"
            )
        print(
            f"RSS per idle opencode: median {statistics.median(rss):.0f} MiB "
            f"(n={len(rss)}, no prompt yet)"
        )
    finally:
        # Docker objects outlive the server: leave none behind (containers, volumes, network).
        for wid in workspaces:
            client.call("DELETE", f"/api/workspaces/{wid}")
        if args.backend == "docker" and (root / "data" / "instance-id").exists():
            instance = (root / "data" / "instance-id").read_text().strip()
            subprocess.run(["docker", "network", "rm", f"cli-sandboxes-{instance}"], check=False)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
