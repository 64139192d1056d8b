"""Several real `twistd cli-server` replicas on one real PostgreSQL: one leader, failover when it
is killed, the replica registry, and the refusals of what is single-replica.

The replicas use the k8s backend against the FAKE Kubernetes API (shared by all of them), the
backend that works with any number of replicas without a container engine on the test host.
"""

from __future__ import annotations

import http.server
import json
import random
import re
import signal
import socket
import statistics
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_twisted

from cli_server.db.embedded import EmbeddedPostgres
from cli_server.db.pool import Database
from cli_server.domain.workspaces import Workspaces

from .conftest import Running, server_config, start_server, stop_server
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


class _IdleOpencode(http.server.BaseHTTPRequestHandler):
    """A sandbox's opencode that is healthy and whose agent does nothing."""

    def do_GET(self) -> None:
        body = b"{}" if self.path.startswith("/session/status") else b'{"healthy": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_successor_runs_the_idle_monitor(
    data_dir: Path, db_url: str, kubernetes: FakeKubernetes
) -> None:
    """The leader dies just after a sandbox started: the next leader pauses it once idle, as
    if nothing happened (the idle monitor carries on within its period)."""
    pod_ip = f"127.0.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
    opencode = http.server.ThreadingHTTPServer((pod_ip, 4096), _IdleOpencode)
    threading.Thread(target=opencode.serve_forever, daemon=True).start()
    root = data_dir.parent
    daemons = [replica(root, f"r{i}", kubernetes, db_url) for i in range(2)]
    try:
        for d in daemons:
            d.start()
        leader = wait_for_one_leader(daemons)
        (other,) = [d for d in daemons if d is not leader]
        credentials = {"username": "alice", "password": "correct horse"}
        assert other.request("POST", "/api/auth/register", credentials)[0] == 201
        assert other.request("POST", "/api/auth/login", credentials)[0] == 200
        wid = other.request("POST", "/api/workspaces", {"name": "w"})[1]["id"]
        sid = other.request("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})[1]["id"]
        name = f"cli-sbx-{sid}"
        deadline = time.monotonic() + 30
        while name not in kubernetes.objects("sandboxes"):
            assert time.monotonic() < deadline, "no Sandbox was submitted"
            time.sleep(0.05)
        kubernetes.make_ready(name, None, [pod_ip])
        while other.request("GET", f"/api/sandboxes/{sid}")[1]["status"] != "running":
            assert time.monotonic() < deadline, other.log.read_text()[-3000:]
            time.sleep(0.05)
        running_at = time.monotonic()
        leader.stop(signal.SIGKILL)
        assert wait_for_one_leader([other]) is other
        while other.request("GET", f"/api/sandboxes/{sid}")[1]["status"] != "paused":
            assert time.monotonic() < deadline, other.log.read_text()[-3000:]
            time.sleep(0.05)
        paused_after = time.monotonic() - running_at
        print(f"\nidle sandbox paused {paused_after:.2f}s after it ran (idle timeout 4s)")
        # idle timeout, plus one idle-monitor period, plus slack for a loaded test host
        assert paused_after < 4.0 + 1.0 + 2.0
        assert "paused after 4s idle" in other.log.read_text()
    finally:
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
        opencode.shutdown()
        opencode.server_close()


def _wait(what: str, done: Any, daemon: Daemon, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what}:\n{daemon.log.read_text()[-3000:]}"
        time.sleep(0.05)


def _sql(db_url: str, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cursor:
        cursor.execute(statement, args)
        rows = cursor.fetchall() if cursor.description else []
    conn.close()
    return rows


def test_the_leader_leaves_another_replicas_start_alone(
    data_dir: Path, db_url: str, kubernetes: FakeKubernetes
) -> None:
    """Replica B is starting a sandbox (its Sandbox not Ready yet) when the leader A sweeps:
    A leaves it `creating` and it becomes `running` through B; a `creating` row whose replica
    died is repaired by the same sweep."""
    pod_ip = f"127.0.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
    opencode = http.server.ThreadingHTTPServer((pod_ip, 4096), _IdleOpencode)
    threading.Thread(target=opencode.serve_forever, daemon=True).start()
    root = data_dir.parent
    a = replica(root, "a", kubernetes, db_url)
    b = replica(root, "b", kubernetes, db_url)
    try:
        a.start()
        assert wait_for_one_leader([a]) is a
        b.start()
        credentials = {"username": "alice", "password": "correct horse"}
        assert b.request("POST", "/api/auth/register", credentials)[0] == 201
        assert b.request("POST", "/api/auth/login", credentials)[0] == 200
        user = b.request("GET", "/api/auth/me")[1]["id"]
        wid = b.request("POST", "/api/workspaces", {"name": "w"})[1]["id"]
        sid = b.request("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})[1]["id"]
        name = f"cli-sbx-{sid}"
        _wait("no Sandbox was submitted", lambda: name in kubernetes.objects("sandboxes"), b)

        # A replica that died starting a sandbox, and a Sandbox with no row: the sweep's
        # last step removes it, so its absence says the sweep is over.
        orphan, stray = str(uuid.uuid4()), str(uuid.uuid4())
        _sql(
            db_url,
            "INSERT INTO replicas (id, hostname, instance, backend, embedded_db, heartbeat_at)"
            " VALUES ('gone', 'elsewhere', '/srv', 'k8s', false, now() - interval '1 hour');"
            " INSERT INTO sandboxes (id, workspace_id, name, status, backend, created_by,"
            " opencode_password, worked_by) VALUES (%s, %s, 'orphan', 'creating', 'k8s', %s,"
            " 'x', 'gone')",
            (orphan, wid, user),
        )
        template = kubernetes.objects("sandboxes")[name]
        kubernetes.put(
            "sandboxes",
            "v1beta1",
            f"cli-sbx-{stray}",
            json.loads(json.dumps(template).replace(sid, stray)),
        )

        # B holds still (its start in flight) while A is made to take the lead again, which
        # runs the reconciler at once.
        assert b.proc is not None
        b.proc.send_signal(signal.SIGSTOP)
        try:
            _sql(
                db_url,
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity s"
                " ON s.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                " AND s.application_name LIKE 'cli-server %%'",
            )
            leads = "now leads the periodic work"
            _wait("A did not lead again", lambda: a.log.read_text().count(leads) >= 2, a)
            _wait(
                "A's sweep did not finish",
                lambda: f"cli-sbx-{stray}" not in kubernetes.objects("sandboxes"),
                a,
            )
        finally:
            b.proc.send_signal(signal.SIGCONT)
        statuses = dict(_sql(db_url, "SELECT id::text, status FROM sandboxes"))
        assert statuses == {sid: "creating", orphan: "failed"}, a.log.read_text()[-3000:]
        assert name in kubernetes.objects("sandboxes")
        assert f"sandbox {sid}:" not in a.log.read_text()

        kubernetes.make_ready(name, None, [pod_ip])
        _wait(
            "B's sandbox did not run",
            lambda: b.request("GET", f"/api/sandboxes/{sid}")[1]["status"] == "running",
            b,
        )
        assert _sql(db_url, "SELECT worked_by FROM sandboxes WHERE id = %s", (sid,)) == [(None,)]
    finally:
        for d in (a, b):
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGCONT)
                d.stop()
        opencode.shutdown()
        opencode.server_close()


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


@pytest_twisted.ensureDeferred
async def test_tunnels_are_released_at_start_only_by_a_lone_replica(db_url: str) -> None:
    """A replica starting next to live ones leaves the local sandboxes their agents hold
    through the others; alone, it knows none is connected."""
    first = await start_server(db_url)
    db = first.db
    user = str(uuid.uuid4())
    await db.execute("INSERT INTO users (id, username) VALUES (%s, 'u')", (user,))
    workspace = (await Workspaces(db).create(user, "w"))["id"]
    local = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO sandboxes (id, workspace_id, name, status, is_local, backend, created_by,"
        " opencode_password) VALUES (%s, %s, 'laptop', 'running', true, 'local', %s, 'x')",
        (local, workspace, user),
    )
    assert first.server.registry is not None  # (its agent's tunnel is held by the first)
    await db.execute(
        "INSERT INTO tunnel_holders (sandbox_id, replica_id) VALUES (%s, %s)",
        (local, first.server.registry.me.id),
    )

    async def status(db: Database) -> str:
        (row,) = await db.query("SELECT status FROM sandboxes WHERE id = %s", (local,))
        return str(row["status"])

    second = await start_server(db_url, config=server_config(db_url, "/nonexistent-second"))
    assert second.server.registry is not None and not second.server.registry.alone
    assert await status(second.db) == "running"
    await stop_server(second)
    await stop_server(first)
    third = await start_server(db_url)
    assert third.server.registry is not None and third.server.registry.alone
    assert await status(third.db) == "offline"
    await stop_server(third)
