"""Three replicas behind nginx (``replicas.py``): any replica serves any request, an event
stream survives the loss of its replica, and a rolling restart under load fails nothing."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from .daemon import processes_mentioning
from .helpers import remove_dir, scratch_dir
from .replicas import EventStream, Replicas, call

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
    print(
        f"refused new connections after {refused_after:.3f} s; drained in"
        f" {drained.group(1)} s; process gone {stopped:.2f} s after SIGTERM"
    )
    for connection in (probe, slow):
        connection.close()
    stream.close()
