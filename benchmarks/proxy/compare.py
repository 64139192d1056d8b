"""Small GETs through two versions of cli-server, alternating: does a change help?

    apt-get install -y nginx wrk          # once
    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/proxy/compare.py /tmp/before/src src --rounds 2

Each version's ``src`` directory goes first on PYTHONPATH (the relay process inherits it),
runs the proxy benchmark's server (``server.py``: the real service tree, a FAKE backend)
in front of the same nginx as ``run.py``'s, for its 100-byte file, and takes ``--rounds`` wrk runs
(``-t2 -c50``); the versions alternate so that this shared machine's swings fall on both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from local_api import free_port  # noqa: E402  (benchmarks/local_api.py, shared)
from wrk import wrk  # noqa: E402  (benchmarks/wrk.py, shared by the benchmark scripts)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import start_files, stop  # noqa: E402  (the benchmark beside this one)


def run_version(src: str, files: int, seconds: int) -> dict[str, float]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), str(port), str(files), str(files)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        plain = json.loads(server.stdout.readline())["sandboxes"][0]
        time.sleep(1)
        headers = {"Host": plain["host"], "Cookie": plain["cookie"]}
        return wrk(f"http://127.0.0.1:{port}/small", headers, seconds, 50)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("before", help="the src directory of one version")
    ap.add_argument("after", help="the src directory of the other")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    work, nginx, files = start_files("cli-compare-")
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    try:
        time.sleep(0.5)
        for n in range(args.rounds):
            for name in ("before", "after"):
                result = run_version(getattr(args, name), files, args.seconds)
                results[name].append(result)
                print(
                    f"round {n + 1} {name}: {result['rps']:.0f} req/s, p50 "
                    f"{result.get('p50_ms', 0):.2f} ms, p99 {result.get('p99_ms', 0):.2f} ms, "
                    f"errors {result['errors']:.0f}",
                    flush=True,
                )
    finally:
        stop([nginx], work)
    before = statistics.median(r["rps"] for r in results["before"])
    after = statistics.median(r["rps"] for r in results["after"])
    print(f"median: before {before:.0f} req/s, after {after:.0f} req/s ({after / before:.2f}x)")


if __name__ == "__main__":
    main()
