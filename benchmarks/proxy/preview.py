#!/usr/bin/env python3
"""The preview path's overhead: small GETs and WebSocket echo through a preview address
(``oc-{id}-p{port}``) vs opencode's address vs straight to the same upstream, interleaved
rounds in one run on this machine.

    apt-get install -y nginx wrk          # once
    .venv/bin/python benchmarks/proxy/preview.py [--seconds 5] [--ws-rounds 2000] [--repeat 3]

The upstreams are ``run.py``'s: an nginx with a 100-byte file, and ``upstream.py`` (one epoll
loop) for WebSocket echo. One cli-server (``server.py --previews``: the real service tree,
embedded PostgreSQL, a FAKE backend whose sandboxes "run" at those upstreams and whose
preview of port N is 127.0.0.1:N) with the daemon's default relay workers. The targets:
**direct** (the upstreams), **opencode** (each sandbox's opencode address: the credential
added) and **preview** (the preview address of the upstream's port: no credential). Each round
measures, target after target (the order turning each round): small GETs (wrk -t2 -c50) and
WebSocket echo round trips. Prints every round and a table of medians; writes everything to
``--json``. Every loop is bounded; everything started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from local_api import free_port  # noqa: E402
from run import (  # noqa: E402
    HERE,
    OthersCpu,
    start_files,
    stop,
    wait_listening,
    write_results,
    ws_echo,
)
from wrk import wrk  # noqa: E402


def start_server(files: int, streams: int) -> tuple[subprocess.Popen[str], int, dict[str, Any]]:
    port = free_port()
    argv = [sys.executable, str(HERE / "server.py"), str(port), str(files), str(streams)]
    server = subprocess.Popen(
        [*argv, "--previews"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line:
        server.wait(30)
        raise SystemExit("cli-server (server.py --previews) did not start")
    return server, port, json.loads(line)


def headers(entry: dict[str, str]) -> dict[str, str]:
    return {"Host": entry["host"], "Cookie": entry["cookie"]}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=5, help="per wrk run (5)")
    ap.add_argument("--ws-rounds", type=int, default=2000, help="WebSocket echoes (2000)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (3)")
    ap.add_argument("--json", type=Path, default=Path("preview-benchmark.json"), help="results")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work, files_nginx, files = start_files("cli-bench-preview-")
    procs: list[subprocess.Popen[Any]] = [files_nginx]
    try:
        streams = free_port()
        upstream = subprocess.Popen(
            [sys.executable, str(HERE / "upstream.py"), str(streams), "0.1", "20"],
            start_new_session=True,
        )
        procs.append(upstream)
        wait_listening(streams, upstream, "upstream.py")
        server, port, said = start_server(files, streams)
        procs.append(server)
        (plain, stream), (plain_p, stream_p) = said["sandboxes"], said["previews"]
        # name: (port for GETs, headers for GETs, port for WebSockets, their headers)
        targets: dict[str, tuple[int, dict[str, str], int, dict[str, str]]] = {
            "direct": (files, {}, streams, {}),
            "opencode": (port, headers(plain), port, headers(stream)),
            "preview": (port, headers(plain_p), port, headers(stream_p)),
        }
        names = list(targets)
        for name, (p, hdrs, _, _) in targets.items():  # warm-up, not counted
            wrk(f"http://127.0.0.1:{p}/small", hdrs, 1, 50)
        rounds: list[dict[str, Any]] = []
        others = OthersCpu(procs)
        for n in range(args.repeat):
            order = names[n % len(names) :] + names[: n % len(names)]
            row: dict[str, Any] = {name: {} for name in names}
            for name in order:
                p, hdrs, _, _ = targets[name]
                row[name]["small"] = wrk(f"http://127.0.0.1:{p}/small", hdrs, args.seconds, 50)
            for name in order:
                _, _, p, hdrs = targets[name]
                row[name]["ws"] = asyncio.run(ws_echo(p, hdrs, args.ws_rounds))
            row["others_cores"] = others.cores()
            rounds.append(row)
            print(
                f"round {n + 1} (other processes: {row['others_cores']:.2f} cores): "
                + "; ".join(
                    f"{name} {row[name]['small']['rps']:.0f} req/s, WS p50 "
                    f"{row[name]['ws']['p50_ms']:.3f} ms"
                    for name in names
                ),
                file=sys.stderr,
                flush=True,
            )
        summarize(rounds, names, args)
        write_results(args, rounds)
    finally:
        stop(procs, work)


def summarize(rounds: list[dict[str, Any]], names: list[str], args: argparse.Namespace) -> None:
    def median(name: str, measure: str, key: str) -> float:
        return statistics.median(r[name][measure][key] for r in rounds)

    print(
        f"\n{len(rounds)} interleaved rounds; wrk -t2 -c50 on a 100-byte file, {args.seconds} s"
        f" each; {args.ws_rounds} WebSocket echoes (32 bytes). Medians:\n"
    )
    print(
        "| target | small GET req/s | × direct | p50 / p99 ms | WS echo p50 / p99 ms "
        "| WS p50 added ms | errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        rps = median(name, "small", "rps")
        added = statistics.median(
            r[name]["ws"]["p50_ms"] - r["direct"]["ws"]["p50_ms"] for r in rounds
        )
        errors = sum(r[name]["small"].get("errors", 0) for r in rounds)
        print(
            f"| {name} | {rps:.0f} | {rps / median('direct', 'small', 'rps'):.2f} | "
            f"{median(name, 'small', 'p50_ms'):.2f} / {median(name, 'small', 'p99_ms'):.2f} | "
            f"{median(name, 'ws', 'p50_ms'):.3f} / {median(name, 'ws', 'p99_ms'):.3f} | "
            f"{added:.3f} | {errors:.0f} |"
        )
    ratios = [r["preview"]["small"]["rps"] / r["opencode"]["small"]["rps"] for r in rounds]
    print(
        "\npreview / opencode small GETs, per round: "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + "\nother processes on this machine, in cores, per round: "
        + ", ".join(f"{r['others_cores']:.2f}" for r in rounds)
    )


if __name__ == "__main__":
    main()
