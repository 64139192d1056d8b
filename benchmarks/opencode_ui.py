#!/usr/bin/env python3
"""Whole-path benchmark: how long headless Chromium takes to load opencode's web UI through
cli-server's subdomain proxy vs straight from opencode's port, cold cache and warm.

    apt-get install -y chromium           # once; node and playwright-core: the README's setup
    .venv/bin/python benchmarks/opencode_ui.py [--rounds 10] [--json opencode-ui.json]

Starts a real `twistd cli-server` (embedded PostgreSQL, the process backend, real opencode) on
a scratch data directory and a loopback port, creates one sandbox and waits for it to run.
**proxy** is `http://oc-<id>.localhost:<port>/` with the sandbox session cookie an Open ticket
gives (redeemed once, then set in each fresh browser context); **direct** is opencode's own
listening port on the host (the port the server itself forwards to) with its Basic
credential, sent as a header on every request. `opencode_ui.mjs` drives Chromium
(playwright-core): each round, each target in turn (the order turning each round) is loaded
once in a new browser context (empty cache: **cold**) and once more in a new page of the same
context (**warm**). **Loaded**: the page's `load` event has fired, opencode's session search
box is in the document, and no request other than its event stream has been pending for
500 ms (the network is idle); the time is the latest of the load event's end, the search
box's appearance and the last response's end (opencode's API calls included: `/provider`
takes opencode itself a second or more), from the navigation's start. The load event and the
search box are reported too. Prints each load, a table of medians and ratios; writes --json.
Every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_api import free_port  # noqa: E402  (benchmarks/local_api.py, shared)
from sandbox_lifecycle import Client, sandbox_cookie  # noqa: E402  (the benchmark beside it)

sys.path.insert(0, str(Path(__file__).resolve().parent / "proxy"))
from run import OthersCpu, tree  # noqa: E402  (benchmarks/proxy/run.py)

HERE = Path(__file__).resolve().parent


def require_tools(chromium: str) -> None:
    if not Path(chromium).exists() and not shutil.which(chromium):
        raise SystemExit(f"{chromium} is missing: apt-get install -y chromium (or set CHROMIUM)")
    if not shutil.which("node"):
        raise SystemExit("node is missing: apt-get install -y nodejs")
    probe = subprocess.run(
        ["node", "-e", "import('playwright-core')"], cwd=HERE, capture_output=True, text=True
    )
    if probe.returncode:
        raise SystemExit(
            "playwright-core is missing: `npm ci` in webui/, then link webui/node_modules as "
            "node_modules at the checkout's root (or npm install playwright-core there)"
        )


def loopback_listeners(pid: int) -> list[int]:
    """The ports ``pid`` listens on at 127.0.0.1 (its socket inodes in its own /proc net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes and local.startswith("0100007F:"):
            ports.append(int(local.split(":")[1], 16))
    return ports


def opencode_direct(server_pid: int) -> tuple[int, str]:
    """opencode's port on the host and its password: the `opencode serve` under our server
    (its environment holds the password) and what listens for it on 127.0.0.1 (slirp4netns's
    forward with the isolated process backend, opencode itself without isolation)."""
    password, ports = "", []
    for pid in tree(server_pid) - {server_pid}:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = Path(argv[0].decode()).name
            if name == "opencode" and argv[1:2] == [b"serve"]:
                for var in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    if var.startswith(b"OPENCODE_SERVER_PASSWORD="):
                        password = var.split(b"=", 1)[1].decode()
            if name in ("opencode", "slirp4netns"):
                ports += loopback_listeners(pid)
        except (OSError, IndexError):
            continue
    if not password or len(ports) != 1:
        raise SystemExit(f"cannot find opencode's port and password (ports {ports})")
    return ports[0], password


def start_server(root: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    twistd = str(Path(sys.executable).parent / "twistd")
    return subprocess.Popen(
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
            *extra,
        ],
        start_new_session=True,
    )


def wait_ready(client: Client, server: subprocess.Popen[bytes], root: Path) -> None:
    began = time.monotonic()
    while True:
        try:
            if client.call("GET", "/readyz")[0] == 200:
                return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() - began > 120:
            raise SystemExit(f"the server did not start: see {root / 'server.log'}")
        time.sleep(0.1)


def check_direct(port: int, password: str) -> None:
    auth = base64.b64encode(f"opencode:{password}".encode()).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET /global/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Basic {auth}\r\nConnection: close\r\n\r\n".encode()
        )
        status = sock.recv(100).split(b"\r\n", 1)[0]
    if b" 200 " not in status:
        raise SystemExit(f"opencode's port {port} answered {status!r}")


MEASURES = {"ms": "loaded", "load_ms": "load event", "search_ms": "search box shown"}


def table(loads: list[dict[str, float | str | int]]) -> dict[str, float]:
    """Medians per cache and measure, and the median of each round's proxy / direct."""
    medians: dict[str, float] = {}
    print("\n| load | moment | proxy ms | direct ms | proxy / direct (rounds) |")
    print("|---|---|---|---|---|")
    for cache in ("cold", "warm"):
        proxy = [x for x in loads if x["target"] == "proxy" and x["cache"] == cache]
        direct = [x for x in loads if x["target"] == "direct" and x["cache"] == cache]
        for key, moment in MEASURES.items():
            p = statistics.median(float(x[key]) for x in proxy)
            d = statistics.median(float(x[key]) for x in direct)
            ratios = [float(a[key]) / float(b[key]) for a, b in zip(proxy, direct, strict=True)]
            ratio = statistics.median(ratios)
            medians[f"proxy_{cache}_{key}"], medians[f"direct_{cache}_{key}"] = p, d
            medians[f"ratio_{cache}_{key}"] = ratio
            print(
                f"| {cache} | {moment} | {p:.0f} | {d:.0f} | {ratio:.2f} "
                f"({min(ratios):.2f}–{max(ratios):.2f}) |"
            )
    return medians


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=10, help="rounds over both targets (10)")
    ap.add_argument("--json", type=Path, default=Path("opencode-ui.json"), help="results")
    ap.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="one more argument for `twistd cli-server` (e.g. --server-arg=--proxy-workers=2)",
    )
    args = ap.parse_args()
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    require_tools(chromium)
    root = Path(tempfile.mkdtemp(prefix="cli-bench-ui-"))
    root.chmod(0o711)
    port = free_port()
    server = start_server(root, port, args.server_arg)
    client = Client(f"http://127.0.0.1:{port}")
    browser = None
    try:
        wait_ready(client, server, root)
        client.call("POST", "/api/auth/register", {"username": "bench", "password": "benchmark1"})
        client.call("POST", "/api/auth/login", {"username": "bench", "password": "benchmark1"})
        wid = client.call("POST", "/api/workspaces", {"name": "bench"})[1]["id"]
        sid = client.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "ui"})[1]["id"]
        client.wait(sid, "running")
        cookie = sandbox_cookie(client, port, sid)
        direct_port, password = opencode_direct(server.pid)
        check_direct(direct_port, password)
        name, _, value = cookie.partition("=")
        plan = {
            "chromium": chromium,
            "rounds": args.rounds,
            "targets": {
                "proxy": {
                    "url": f"http://oc-{sid}.localhost:{port}/",
                    "cookie": {"name": name, "value": value, "domain": f"oc-{sid}.localhost"},
                },
                "direct": {
                    "url": f"http://127.0.0.1:{direct_port}/",
                    "headers": {
                        "Authorization": "Basic "
                        + base64.b64encode(f"opencode:{password}".encode()).decode()
                    },
                },
            },
        }
        browser = subprocess.Popen(
            ["node", str(HERE / "opencode_ui.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert browser.stdin is not None and browser.stdout is not None
        others = OthersCpu([server, browser])
        browser.stdin.write(json.dumps(plan))
        browser.stdin.close()
        loads = []
        for line in browser.stdout:
            load = json.loads(line)
            loads.append(load)
            print(
                f"round {load['round']} {load['target']} {load['cache']}: {load['ms']:.0f} ms "
                f"(load event {load['load_ms']:.0f}, search box {load['search_ms']:.0f}, last "
                f"{load['last']}), "
                f"{load['requests']} requests, {load['kib']:.0f} KiB, {load['failed']} failed",
                file=sys.stderr,
                flush=True,
            )
        if browser.wait(60) or len(loads) != 4 * args.rounds:
            raise SystemExit(f"opencode_ui.mjs failed after {len(loads)} loads")
        print(
            f"\nopencode's UI, {args.rounds} interleaved rounds, headless Chromium; proxy: "
            f"cli-server's subdomain proxy, direct: opencode's port (Basic credential)"
        )
        medians = table(loads)
        medians["others_cores"] = others.cores()
        print(
            f"\nproxy / direct, loaded: cold {medians['ratio_cold_ms']:.2f}, warm "
            f"{medians['ratio_warm_ms']:.2f} (target ≤ 1.10); requests per load "
            f"{statistics.median(float(x['requests']) for x in loads):.0f}, KiB transferred: "
            + ", ".join(
                f"{c} {statistics.median(float(x['kib']) for x in loads if x['cache'] == c):.0f}"
                for c in ("cold", "warm")
            )
            + f"; other processes on this machine used {medians['others_cores']:.2f} cores"
        )
        args.json.write_text(
            json.dumps(
                {
                    "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "args": vars(args),
                    "medians": medians,
                    "loads": loads,
                },
                indent=1,
                default=str,
            )
        )
        print(f"results: {args.json}")
    finally:
        if browser is not None and browser.poll() is None:
            os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(30)
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
