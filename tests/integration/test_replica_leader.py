"""Several real `twistd cli-server` replicas on one real PostgreSQL: one leader, failover when it
is killed, the replica registry, and the refusals of what is single-replica.

The replicas use the k8s backend against the FAKE Kubernetes API (shared by all of them), the
backend that works with any number of replicas without a container engine on the test host.
"""

from __future__ import annotations

import re
import signal
import socket
import statistics
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import pytest_twisted

from cli_server.db.embedded import EmbeddedPostgres

from .conftest import Running
from .daemon import Daemon
from .fake_kubernetes import FakeKubernetes

IDLE_TIMEOUT = "4s"  # idle monitor every 1 s, so the leader is tried for every 1 s


def metric(daemon: Daemon, name: str) -> str | None:
    with urllib.request.urlopen(daemon.base + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return found.group(1) if found else None


def leaders(daemons: list[Daemon]) -> list[Daemon]:
    return [d for d in daemons if metric(d, "cli_leader") == "1.0"]


def replicas_table(db_url: str) -> list[dict[str, object]]:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT id, hostname, advertise_url, backend, embedded_db FROM replicas"
            " WHERE heartbeat_at > now() - interval '30 seconds' ORDER BY started_at"
        )
        names = [c.name for c in cursor.description]
        rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    conn.close()
    return rows


@pytest.fixture
def kubernetes() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes()
    yield fake
    fake.stop()


def replica(root: Path, name: str, fake: FakeKubernetes, db_url: str, *extra: str) -> Daemon:
    data = root / name
    data.mkdir(parents=True, exist_ok=True)
    return Daemon(
        data,
        "--backend=k8s",
        "--agent-image=registry.example/sandbox:1",
        f"--kubeconfig={fake.kubeconfig(root)}",
        "--k8s-instance=replicas-test",
        f"--db-url={db_url}",
        f"--idle-timeout={IDLE_TIMEOUT}",
        *extra,
    )


def wait_for_one_leader(daemons: list[Daemon], timeout: float = 20.0) -> Daemon:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = leaders(daemons)
        assert len(found) <= 1, f"two leaders: {[d.port for d in found]}"
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("no replica took the lead")


def test_one_leader_and_failover_when_it_is_killed(
    data_dir: Path, db_url: str, kubernetes: FakeKubernetes
) -> None:
    """Three replicas: the registry lists them, exactly one leads; kill -9 the leader and another
    leads within one idle-monitor period (1 s here), every time."""
    root = data_dir.parent
    daemons = [replica(root, f"r{i}", kubernetes, db_url) for i in range(3)]
    try:
        for d in daemons:
            d.start()
        rows = replicas_table(db_url)
        assert len(rows) == 3
        host = socket.gethostname()
        assert {r["advertise_url"] for r in rows} == {f"http://{host}:{d.port}" for d in daemons}
        assert {(r["hostname"], r["backend"], r["embedded_db"]) for r in rows} == {
            (host, "k8s", False)
        }
        leader = wait_for_one_leader(daemons)
        for _ in range(10):  # and it stays one, while every replica keeps trying
            assert leaders(daemons) == [leader]
            time.sleep(0.1)
        info = {metric(d, "cli_live_streams") for d in daemons}
        assert info == {"0.0"}

        failovers = []
        for n in range(3):
            survivors = [d for d in daemons if d is not leader]
            began = time.monotonic()
            leader.stop(signal.SIGKILL)
            successor = wait_for_one_leader(survivors)
            failovers.append(time.monotonic() - began)
            assert successor in survivors
            log = successor.log.read_text()
            assert "now leads the periodic work" in log
            # the killed replica comes back (its old row is its own, not a live replica's)
            restarted = replica(root, leader.data_dir.name, kubernetes, db_url)
            restarted.start()
            daemons[daemons.index(leader)] = restarted
            assert len(replicas_table(db_url)) == 3
            assert leaders(daemons) == [successor]
            leader = successor
        print(
            f"\nleader failover after kill -9: median {statistics.median(failovers):.2f}s,"
            f" max {max(failovers):.2f}s over {len(failovers)} runs"
        )
        assert max(failovers) < 1.0 + 1.0  # one election period, plus scrape and connect
    finally:
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
    assert replicas_table(db_url) == []  # clean stops leave the registry


def test_a_replica_refuses_another_ones_embedded_database(
    data_dir: Path, kubernetes: FakeKubernetes
) -> None:
    """A second replica pointed at a replica's embedded PostgreSQL refuses in one line."""
    first = Daemon(data_dir)
    first.start()
    try:
        dsn = EmbeddedPostgres(data_dir, None).dsn
        second = replica(data_dir.parent, "second", kubernetes, dsn)
        with pytest.raises(AssertionError) as failed:
            second.start()
        assert second.proc is not None and second.proc.wait(10) == 1
        (line,) = re.findall(r"cli-server: cannot start: [^\\]*", str(failed.value))
        assert "runs this database embedded" in line and "--db-url" in line, line
        assert first.request("GET", "/readyz")[0] == 200
    finally:
        first.stop()


def test_the_process_backend_refuses_company(
    data_dir: Path, db_url: str, kubernetes: FakeKubernetes
) -> None:
    """The process backend starts only alone on its database: not next to a live replica of
    another host, nor next to another server on this one."""
    with psycopg2.connect(db_url) as conn, conn.cursor() as cursor:
        cursor.execute(
            "INSERT INTO replicas (id, hostname, instance, advertise_url, backend, embedded_db)"
            " VALUES ('far', 'elsewhere', '/srv', 'http://elsewhere:8080', 'k8s', false)"
        )
    conn.close()
    process = Daemon(data_dir, f"--db-url={db_url}")
    with pytest.raises(AssertionError) as failed:
        process.start()
    assert process.proc is not None and process.proc.wait(10) == 1
    assert "replica far on elsewhere" in str(failed.value)
    assert "process sandboxes run on one host only" in str(failed.value)

    with psycopg2.connect(db_url) as conn, conn.cursor() as cursor:
        cursor.execute("DELETE FROM replicas")
    conn.close()
    k8s = replica(data_dir.parent, "k8s", kubernetes, db_url)
    k8s.start()
    try:
        process = Daemon(data_dir, f"--db-url={db_url}")
        with pytest.raises(AssertionError) as failed:
            process.start()
        assert "child processes of one server" in str(failed.value)
        assert [r["backend"] for r in replicas_table(db_url)] == ["k8s"]
    finally:
        k8s.stop()


@pytest_twisted.ensureDeferred
async def test_a_lone_server_leads_and_says_so(app: Running) -> None:
    """One replica leads from its start; /metrics names the replica and its streams."""
    assert app.server.leadership is not None and app.server.leadership.leading
    reply = await app.client().call("GET", "/metrics")
    text = reply.body.decode() if isinstance(reply.body, bytes) else str(reply.body)
    assert "cli_leader 1.0" in text
    assert "cli_live_streams 0.0" in text
    assert app.server.registry is not None
    me = app.server.registry.me
    named = f'cli_replica_info{{backend="{me.backend}",hostname="{me.hostname}",replica="{me.id}"}}'
    assert f"{named} 1.0" in text
    assert me.backend == "injected"  # (a test's FAKE backend: several may share a database)
    assert [r["id"] for r in await app.server.registry.live()] == [me.id]
