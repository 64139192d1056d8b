"""Three replicas behind nginx (``replicas.py``): any replica serves any request, an event
stream survives the loss of its replica, and a rolling restart under load fails nothing."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .daemon import processes_mentioning
from .helpers import remove_dir, scratch_dir
from .replicas import (
    OPENCODE_PORT,
    Agent,
    EventStream,
    Replicas,
    alive,
    call,
    children,
    nginx_site,
)

# twistd re-raises SIGTERM after its orderly shutdown
ORDERLY = (0, -signal.SIGTERM)


@pytest.fixture
def replicas(db_url: str) -> Iterator[Replicas]:
    root = scratch_dir("cli-test-replicas-")
    try:
        with Replicas(root, db_url) as running:
            running.start()
            yield running
    finally:
        remove_dir(root)


def test_the_documented_nginx_site_is_the_tested_one() -> None:
    """docs/architecture.md shows operators the nginx site these tests run behind."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    shown = re.search(r"```nginx\n(.*?)```", text, re.S)
    assert shown is not None
    assert shown.group(1) == nginx_site([8081, 8082, 8083], "80")


def test_a_sandbox_made_on_one_replica_opens_on_the_others(replicas: Replicas) -> None:
    """Created through A; its one-time link minted on B and redeemed on C (and the other way
    round); its subdomain then answers on every replica and through nginx."""
    alice = replicas.user("alice", n=0)
    sid = replicas.running_sandbox(alice, n=0)
    for via, redeem in [(1, 2), (2, 1)]:
        cookie = replicas.open(alice, sid, via=via, redeem=redeem)
        for n in (0, 1, 2, None):
            answer = replicas.get(sid, "/session", cookie, n=n)
            assert answer.status == 200, (n, answer.status, answer.body[:300])
            assert answer.json() == {"healthy": True, "path": "/session"}
    # a link is good once, whichever replica sees it again
    opened = replicas.api(1, "POST", f"/api/sandboxes/{sid}/open", alice, {}).json()["url"]
    path = opened.split(replicas.host(sid), 1)[1]
    assert call(replicas.servers[2].port, "GET", path, replicas.host(sid)).status in (302, 303)
    again = call(replicas.servers[0].port, "GET", path, replicas.host(sid))
    assert again.status not in (302, 303) and not again.cookie().startswith("cli_sandbox=")


def test_an_event_stream_survives_losing_its_replica(replicas: Replicas) -> None:
    """An event stream through nginx; its replica is killed (SIGKILL): the stream ends, the
    browser reconnects through nginx and gets events again, from another replica."""
    alice = replicas.user("alice")
    sid = replicas.running_sandbox(alice)
    cookie = replicas.open(alice, sid, via=None, redeem=None)
    first = EventStream(replicas.nginx.port, replicas.host(sid), cookie)
    assert first.response.status == 200
    assert len(first.events(3)) == 3
    serving = replicas.replica_at(first.upstream)
    proc = replicas.servers[serving].proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert first.wait_end(10), "the stream outlived its replica"
    first.close()
    began = time.monotonic()
    again = EventStream(replicas.nginx.port, replicas.host(sid), cookie)
    assert again.response.status == 200
    assert len(again.events(3)) == 3
    assert replicas.replica_at(again.upstream) != serving
    again.close()
    print(f"event stream back through another replica in {time.monotonic() - began:.3f} s")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_requests_under_way_and_closes_streams_last(replicas: Replicas) -> None:
    """SIGTERM on a replica: it refuses new connections at once, answers /readyz with 503
    draining on a connection already open, finishes a request under way (answered whole),
    closes its event streams only after that, and exits in order, leaving no process."""
    alice = replicas.user("alice")
    sid = replicas.running_sandbox(alice)
    cookie = replicas.open(alice, sid, via=0, redeem=0)
    server = replicas.servers[0]
    assert server.proc is not None
    probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # (kept alive)
    probe.request("GET", "/readyz", headers={"Host": replicas.base_domain})
    ready = probe.getresponse()
    assert (ready.status, json.loads(ready.read())["status"]) == (200, "ready")
    stream = EventStream(server.port, replicas.host(sid), cookie)
    assert len(stream.events(2)) == 2
    slow = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    slow.request("GET", "/slow?s=2", headers={"Host": replicas.host(sid), "Cookie": cookie})
    time.sleep(0.3)  # (under way at the sandbox)
    workers = children(server.proc.pid)
    assert workers, "no relay worker"

    began = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    deadline = began + 2
    while not _refused(server.port):
        assert time.monotonic() < deadline, "still accepting connections"
        time.sleep(0.02)
    refused_after = time.monotonic() - began
    probe.request("GET", "/readyz", headers={"Host": replicas.base_domain})
    draining = probe.getresponse()
    assert (draining.status, json.loads(draining.read())) == (503, {"status": "draining"})
    assert stream.ended_at is None and len(stream.events(2)) == 2  # still flowing

    answer = slow.getresponse()
    body = json.loads(answer.read())
    answered = time.monotonic()
    assert answer.status == 200 and body == {"healthy": True, "path": "/slow?s=2"}
    assert answer.headers.get("connection") == "close"
    assert stream.wait_end(10)
    assert stream.ended_at is not None and stream.ended_at >= answered - 0.05  # streams last
    assert server.proc.wait(30) in ORDERLY
    stopped = time.monotonic() - began
    log = server.log.read_text()
    drained = re.search(r"drained in ([0-9.]+) s", log)
    assert drained is not None, log[-3000:]
    assert processes_mentioning(str(server.data_dir)) == []
    assert not [pid for pid in workers if alive(pid)], "a relay worker outlived its server"
    print(
        f"refused new connections after {refused_after:.3f} s; drained in"
        f" {drained.group(1)} s; process gone {stopped:.2f} s after SIGTERM"
    )
    for connection in (probe, slow):
        connection.close()
    stream.close()


def _wrk_figures(text: str) -> dict[str, float]:
    """What wrk printed: requests, failures (non-2xx/3xx answers and socket errors), and
    the slowest request in seconds."""
    requests = re.search(r"(\d+) requests in", text)
    assert requests is not None, text
    failures = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx is not None:
        failures += int(non_2xx.group(1))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if errors is not None:
        failures += sum(int(n) for n in errors.groups())
    slowest = re.search(r"Latency\s+\S+\s+\S+\s+([0-9.]+)(us|ms|s)\b", text)
    assert slowest is not None, text
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[slowest.group(2)]
    return {
        "requests": int(requests.group(1)),
        "failures": failures,
        "slowest": float(slowest.group(1)) * scale,
    }


def test_a_rolling_restart_under_load_fails_no_request(replicas: Replicas) -> None:
    """wrk keeps a running sandbox's subdomain busy through nginx (8 connections, a valid
    sandbox session) while each replica in turn is stopped (SIGTERM), waited for and started
    again: not one request fails."""
    wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is not installed (apt-get install nginx wrk)"
    alice = replicas.user("alice")
    sid = replicas.running_sandbox(alice)
    cookie = replicas.open(alice, sid, via=None, redeem=None)
    assert replicas.get(sid, "/session", cookie).status == 200
    argv = [
        wrk,
        "-t1",
        "-c8",
        "-d600s",
        "--timeout",
        "10s",
        "--latency",
        "-H",
        f"Host: {replicas.host(sid)}",
        "-H",
        f"Cookie: {cookie}",
        f"http://127.0.0.1:{replicas.nginx.port}/session",
    ]
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    drains: list[float] = []
    stops: list[float] = []
    starts: list[float] = []
    timeline: list[str] = []
    try:
        time.sleep(2)
        for n, server in enumerate(replicas.servers):
            timeline.append(f"{time.time():.3f} SIGTERM to replica {n} ({server.port})")
            began = time.monotonic()
            assert server.stop(signal.SIGTERM, timeout=60) in ORDERLY
            stops.append(time.monotonic() - began)
            drained = re.findall(r"drained in ([0-9.]+) s", server.log.read_text())
            drains.append(float(drained[-1]))
            timeline.append(f"{time.time():.3f} replica {n} stopped; starting it")
            starts.append(server.start())
            timeline.append(f"{time.time():.3f} replica {n} ready")
            time.sleep(1)
        time.sleep(2)
    finally:
        load.send_signal(signal.SIGINT)
        output, _ = load.communicate(timeout=30)
    text = output.decode()
    figures = _wrk_figures(text)
    print(text)
    print("\n".join(timeline))
    print("slowest through nginx:", *replicas.nginx.slowest(), sep="\n  ")
    print(
        f"rolling restart: {figures['requests']:.0f} requests, {figures['failures']:.0f} failed,"
        f" slowest {figures['slowest']:.3f} s; drain per replica {drains} s;"
        f" SIGTERM to exit {[round(s, 2) for s in stops]} s;"
        f" start to ready {[round(s, 2) for s in starts]} s"
    )
    assert figures["requests"] > 100
    assert figures["failures"] == 0, text


def _holding(replicas: Replicas, sandbox_id: str, skip: int | None = None) -> int | None:
    """The replica whose log says the sandbox's tunnel connected (last), or None."""
    line = f"tunnel for {sandbox_id} connected"
    for n, server in enumerate(replicas.servers):
        if n != skip and server.log.exists() and line in server.log.read_text():
            return n
    return None


def test_an_agent_told_restarting_reconnects_at_once_elsewhere(replicas: Replicas) -> None:
    """A real agent's tunnel, through nginx, on one replica; SIGTERM there: the agent is told
    ``goaway restarting`` and its tunnel is up on another replica at once (no backoff)."""
    alice = replicas.user("alice")
    agent = Agent(replicas.root / "laptop")
    agent.join(replicas, alice, f"http://{replicas.opencode.ip}:{OPENCODE_PORT}")
    try:
        deadline = time.monotonic() + 60
        sid = None
        while sid is None:
            assert time.monotonic() < deadline, agent.logs()[-3000:]
            found = re.search(r"registered as local sandbox laptop \(([0-9a-f-]+)\)", agent.logs())
            sid = found.group(1) if found else None
            time.sleep(0.1)
        holder = None
        while holder is None:
            assert time.monotonic() < deadline, agent.logs()[-3000:]
            holder = _holding(replicas, sid)
            time.sleep(0.05)
        server = replicas.servers[holder]
        assert server.proc is not None
        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        elsewhere = None
        while elsewhere is None:
            assert time.monotonic() < began + 10, agent.logs()[-3000:]
            elsewhere = _holding(replicas, sid, skip=holder)
            time.sleep(0.01)
        moved = time.monotonic() - began
        assert server.proc.wait(30) in ORDERLY
        logs = agent.logs()
        assert "the server is stopping" in logs, logs[-3000:]
        assert moved < 2.0, f"the agent took {moved:.2f} s to come back"
        state = replicas.api(elsewhere, "GET", f"/api/sandboxes/{sid}", alice).json()
        assert state["status"] == "running", state
        print(f"agent's tunnel up on another replica {moved:.3f} s after SIGTERM")
    finally:
        agent.stop()


def test_the_drain_is_bounded_by_its_timeout(db_url: str) -> None:
    """A request longer than ``--drain-timeout`` does not hold the stop: the replica exits
    in order about that long after SIGTERM, cutting it, and says so."""
    root = scratch_dir("cli-test-replicas-")
    try:
        with Replicas(root, db_url, 1, "--drain-timeout=1s") as one:
            one.start()
            alice = one.user("alice")
            sid = one.running_sandbox(alice)
            cookie = one.open(alice, sid, via=0, redeem=0)
            server = one.servers[0]
            assert server.proc is not None
            slow = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
            slow.request("GET", "/slow?s=10", headers={"Host": one.host(sid), "Cookie": cookie})
            time.sleep(0.3)
            began = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(30) in ORDERLY
            stopped = time.monotonic() - began
            with pytest.raises((http.client.HTTPException, OSError)):
                slow.getresponse().read()
            slow.close()
            assert 1.0 <= stopped < 5.0, stopped
            log = server.log.read_text()
            assert "1 request(s) still under way after 1 s; closing them" in log, log[-3000:]
            print(f"--drain-timeout=1s: process gone {stopped:.2f} s after SIGTERM")
    finally:
        remove_dir(root)
