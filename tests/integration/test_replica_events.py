"""Two real ``twistd cli-server`` replicas on one real PostgreSQL: what is revoked on A ends
what is open through B.

Both run the k8s backend against the FAKE Kubernetes API (fake_kubernetes.py), so a sandbox
made through A is reachable through B; a FAKE opencode (threads in this process, at the pod
address, port 4096) serves an endless event stream and a WebSocket that stays open. Requests
reach B's port with the Host a load balancer would pass on (A's base domain).
"""

from __future__ import annotations

import base64
import http.client
import http.cookiejar
import json
import os
import random
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from cli_server.db.embedded import EmbeddedPostgres
from cli_server.db.pool import Database
from cli_server.replicas.events import EventTable

from .conftest import _reactor
from .daemon import Daemon
from .fake_kubernetes import FakeKubernetes
from .helpers import remove_dir, scratch_dir

PASSWORD = "correct horse battery"


class FakeOpencode(BaseHTTPRequestHandler):
    """opencode's health, an event stream that never ends, and a WebSocket that echoes."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.connection.settimeout(120)
        if self.path == "/ticks":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(2400):  # (at most two minutes)
                    self.wfile.write(b"data: tick\n\n")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
            self.close_connection = True
        elif self.path == "/pty" and self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers["Sec-WebSocket-Key"].encode()
            guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            accept = base64.b64encode(__import__("hashlib").sha1(key + guid).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            try:
                while self.rfile.read(1):  # (held open until the proxy lets go)
                    pass
            except OSError:
                pass
            self.close_connection = True
        else:
            body = b'{"healthy": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


class Browser:
    """One person's cookies, talking to any replica."""

    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def call(self, at: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            at.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this module's own (used as an external one, via --db-url), which a
    test may restart."""
    root = scratch_dir("cli-test-replicas-pg-")
    pg = EmbeddedPostgres(root, _reactor())
    pytest_twisted.blockon(Deferred.fromCoroutine(pg.start()))
    yield pg
    pytest_twisted.blockon(Deferred.fromCoroutine(pg.stop()))
    remove_dir(root)


@pytest.fixture
def replicas(postgres: EmbeddedPostgres, tmp_path: Path) -> Iterator[Cluster]:
    name = "r_" + uuid.uuid4().hex[:12]
    admin(postgres, f"CREATE DATABASE {name}")
    dsn = postgres.dsn.replace("dbname=cli_server", f"dbname={name}")
    cluster = Cluster(postgres, dsn, tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        admin(postgres, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def admin(postgres: EmbeddedPostgres, statement: str) -> None:
    conn = psycopg2.connect(postgres.dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


class Cluster:
    """Replicas A and B, the fake Kubernetes API and the fake opencode at the pod address."""

    def __init__(self, postgres: EmbeddedPostgres, dsn: str, tmp: Path) -> None:
        self.postgres, self.dsn, self.tmp = postgres, dsn, tmp
        self.fake = FakeKubernetes()
        self.pod_ip = f"127.0.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
        self.opencode = ThreadingHTTPServer((self.pod_ip, 4096), FakeOpencode)
        self.opencode.daemon_threads = True
        threading.Thread(target=self.opencode.serve_forever, daemon=True).start()
        kubeconfig = self.fake.kubeconfig(tmp)
        common = (
            f"--db-url={dsn}",
            "--backend=k8s",
            "--agent-image=registry.example/sandbox:1",
            f"--kubeconfig={kubeconfig}",
            "--k8s-instance=replicas-test",
            "--in-cluster-url=http://cli.cli.svc:8080",
            "--direct-members=*",
        )
        self.a = Daemon(tmp / "a", *common)
        self.b = Daemon(tmp / "b", *common)
        self.domain = f"localhost:{self.a.port}"  # (one hostname for both, as behind a balancer)
        for replica in (self.a, self.b):
            replica.extra = (*replica.extra, f"--base-domain={self.domain}")
            replica.data_dir.mkdir()

    def start(self) -> None:
        self.a.start()
        self.b.start()

    def stop(self) -> None:
        for replica in (self.a, self.b):
            if replica.proc is not None and replica.proc.poll() is None:
                replica.stop()
        self.fake.stop()
        self.opencode.shutdown()
        self.opencode.server_close()

    def sandbox(self, owner: Browser) -> tuple[str, str]:
        """A running sandbox in a new workspace of ``owner``'s, made through A."""
        code, workspace = owner.call(self.a, "POST", "/api/workspaces", {"name": "w"})
        assert code == 201, workspace
        wid = workspace["id"]
        code, made = owner.call(self.a, "POST", f"/api/workspaces/{wid}/sandboxes", {"name": "s"})
        assert code == 201, made
        sid = made["id"]
        deadline = time.monotonic() + 30
        while f"cli-sbx-{sid}" not in self.fake.objects("sandboxes"):
            assert time.monotonic() < deadline, "no Sandbox was submitted"
            time.sleep(0.05)
        self.fake.make_ready(f"cli-sbx-{sid}", None, [self.pod_ip])
        while owner.call(self.a, "GET", f"/api/sandboxes/{sid}")[1]["status"] != "running":
            assert time.monotonic() < deadline, self.a.log.read_text()[-3000:]
            time.sleep(0.05)
        return wid, sid

    def host(self, sid: str) -> str:
        return f"oc-{sid}.{self.domain}"

    def sandbox_cookie(self, person: Browser, sid: str, at: Daemon) -> str:
        """Opens the sandbox (Open link from A, redeemed at ``at``): its session cookie."""
        code, opened = person.call(self.a, "POST", f"/api/sandboxes/{sid}/open")
        assert code == 200, opened
        path = opened["url"].split(self.host(sid), 1)[1]
        conn = http.client.HTTPConnection("127.0.0.1", at.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": self.host(sid)})
            response = conn.getresponse()
            response.read()
            cookie = response.getheader("Set-Cookie")
        finally:
            conn.close()
        assert cookie, f"no session cookie ({response.status})"
        return cookie.split(";", 1)[0]

    def stream(self, sid: str, cookie: str, at: Daemon) -> socket.socket:
        """The sandbox's event stream through ``at``, once its first event arrived."""
        sock = socket.create_connection(("127.0.0.1", at.port), timeout=10)
        sock.sendall(
            f"GET /ticks HTTP/1.1\r\nHost: {self.host(sid)}\r\nCookie: {cookie}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        seen = b""
        while b"data: tick" not in seen:
            chunk = sock.recv(65536)
            assert chunk, f"the stream ended at once: {seen!r}"
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
        return sock

    def terminal(self, sid: str, cookie: str, at: Daemon) -> socket.socket:
        """A WebSocket to the sandbox through ``at``, open (101)."""
        sock = socket.create_connection(("127.0.0.1", at.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /pty HTTP/1.1\r\nHost: {self.host(sid)}\r\nCookie: {cookie}\r\n"
            f"Origin: http://{self.host(sid)}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"closed during the upgrade: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        return sock

    def listening_backends(self) -> list[int]:
        """PostgreSQL backends that LISTEN on the replicas' channel (one per replica)."""
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND query IN ('LISTEN cli_replica_events',"
                " 'SELECT 1') AND backend_type = 'client backend'"
                # (the leader's lock connection says SELECT 1 too; it names itself)
                " AND application_name NOT LIKE 'cli-server %%'"
            )
            return [row[0] for row in cursor.fetchall()]


def closed_at(sock: socket.socket, timeout: float = 10.0) -> float:
    """When the server closed the connection (monotonic); fails after ``timeout``."""
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                if not sock.recv(65536):
                    return time.monotonic()
            except TimeoutError:
                continue
            except ConnectionResetError:
                return time.monotonic()
        raise AssertionError(f"still open after {timeout}s")
    finally:
        sock.close()


def signed_in(cluster: Cluster, name: str, at: Daemon | None = None) -> tuple[Browser, str]:
    person = Browser()
    at = at or cluster.a
    credentials = {"username": name, "password": PASSWORD}
    code, made = person.call(at, "POST", "/api/auth/register", credentials)
    assert code in (201, 409), made
    code, user = person.call(at, "POST", "/api/auth/login", credentials)
    assert code == 200, user
    return person, user["id"]


def log_in_again(cluster: Cluster, person: Browser, name: str) -> None:
    credentials = {"username": name, "password": PASSWORD}
    assert person.call(cluster.a, "POST", "/api/auth/login", credentials)[0] == 200


def test_logout_on_a_cuts_streams_and_terminals_on_b(replicas: Cluster) -> None:
    """Twenty times: a stream and a WebSocket open through B; logout through A; both end
    within 1 s of the logout being sent. Prints median and max."""
    owner, _ = signed_in(replicas, "owner")
    _, sid = replicas.sandbox(owner)
    streams: list[float] = []
    terminals: list[float] = []
    for n in range(20):
        if n:
            log_in_again(replicas, owner, "owner")
        cookie = replicas.sandbox_cookie(owner, sid, replicas.b)
        stream = replicas.stream(sid, cookie, replicas.b)
        terminal = replicas.terminal(sid, cookie, replicas.b)
        sent = time.monotonic()
        assert owner.call(replicas.a, "POST", "/api/auth/logout")[0] == 204
        streams.append(closed_at(stream) - sent)
        terminals.append(closed_at(terminal) - sent)
    report = (
        f"cross-replica revocation (logout on A -> cut on B), 20 runs: event stream median "
        f"{statistics.median(streams) * 1000:.0f} ms max {max(streams) * 1000:.0f} ms; "
        f"WebSocket median {statistics.median(terminals) * 1000:.0f} ms "
        f"max {max(terminals) * 1000:.0f} ms"
    )
    print(report)
    assert max(streams) < 1.0 and max(terminals) < 1.0, report


def test_member_removal_and_sandbox_deletion_on_a_cut_b(replicas: Cluster) -> None:
    """A member's role changed through A ends their stream open through B; removed through
    A, they lose the one they opened again; then the sandbox deleted through A ends the
    owner's stream through B."""
    owner, _ = signed_in(replicas, "owner")
    member, member_id = signed_in(replicas, "member", at=replicas.b)
    wid, sid = replicas.sandbox(owner)
    code, added = owner.call(
        replicas.a,
        "POST",
        f"/api/workspaces/{wid}/members",
        {"username": "member", "role": "developer"},
    )
    assert (code, added["status"]) == (201, "member"), added
    theirs = replicas.stream(sid, replicas.sandbox_cookie(member, sid, replicas.b), replicas.b)
    sent = time.monotonic()
    code, changed = owner.call(
        replicas.a, "PUT", f"/api/workspaces/{wid}/members/{member_id}", {"role": "guest"}
    )
    assert code == 200, changed
    assert closed_at(theirs) - sent < 1.0
    theirs = replicas.stream(sid, replicas.sandbox_cookie(member, sid, replicas.b), replicas.b)
    mine = replicas.stream(sid, replicas.sandbox_cookie(owner, sid, replicas.b), replicas.b)
    sent = time.monotonic()
    assert owner.call(replicas.a, "DELETE", f"/api/workspaces/{wid}/members/{member_id}")[0] == 204
    assert closed_at(theirs) - sent < 1.0
    mine.settimeout(0.3)
    assert mine.recv(65536), "the owner's stream ended with the member's"
    sent = time.monotonic()
    assert owner.call(replicas.a, "DELETE", f"/api/sandboxes/{sid}")[0] == 204
    assert closed_at(mine) - sent < 1.0


def test_nothing_lost_when_the_listening_connection_drops(replicas: Cluster) -> None:
    """B's listening connection is killed (pg_terminate_backend) right before a logout on A:
    the NOTIFY reaches nobody at B, and B's catch-up read after reconnecting still cuts."""
    owner, _ = signed_in(replicas, "owner")
    _, sid = replicas.sandbox(owner)
    stream = replicas.stream(sid, replicas.sandbox_cookie(owner, sid, replicas.b), replicas.b)
    backends = replicas.listening_backends()
    assert len(backends) == 2, backends
    with psycopg2.connect(replicas.dsn) as conn, conn.cursor() as cursor:
        for pid in backends:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
    sent = time.monotonic()
    assert owner.call(replicas.a, "POST", "/api/auth/logout")[0] == 204
    took = closed_at(stream, timeout=15.0) - sent
    print(f"revocation delivered after the listening connection was killed: {took * 1000:.0f} ms")
    assert "the listening connection closed" in replicas.b.log.read_text()


@pytest_twisted.ensureDeferred
async def test_nothing_lost_across_a_postgresql_restart(replicas: Cluster) -> None:
    """PostgreSQL restarts; a logout on A lands before B listens again: B delivers it on
    reconnecting. (The HTTP calls block the reactor briefly: the replicas are processes.)"""
    owner, _ = signed_in(replicas, "owner")
    _, sid = replicas.sandbox(owner)
    stream = replicas.stream(sid, replicas.sandbox_cookie(owner, sid, replicas.b), replicas.b)
    await Deferred.fromCoroutine(replicas.postgres.stop())
    await deferLater(_reactor(), 1.5)  # (B's retries back off meanwhile)
    await Deferred.fromCoroutine(replicas.postgres.start())
    deadline = time.monotonic() + 20
    while True:  # A's pool reconnects on demand; the first tries may find PostgreSQL starting
        code, _ = owner.call(replicas.a, "POST", "/api/auth/logout")
        if code == 204:
            break
        assert code == 503 and time.monotonic() < deadline, code
        await deferLater(_reactor(), 0.1)
    sent = time.monotonic()
    took = closed_at(stream, timeout=20.0) - sent
    print(f"revocation delivered across a PostgreSQL restart: {took * 1000:.0f} ms")
    log = replicas.b.log.read_text()
    assert "listening for the other replicas' events failed" in log


def test_login_and_registration_failures_count_on_every_replica(replicas: Cluster) -> None:
    """Wrong passwords for one account from one address, alternately through A and B: the
    sixth meets the delay that five failures earn, wherever it lands. Registrations from one
    address likewise count together."""
    signed_in(replicas, "victim")
    guesser = Browser()
    wrong = {"username": "victim", "password": "not the password"}
    for n in range(5):
        at = (replicas.a, replicas.b)[n % 2]
        code, body = guesser.call(at, "POST", "/api/auth/login", wrong)
        assert code == 401, (n, body)
    code, body = guesser.call(replicas.b, "POST", "/api/auth/login", wrong)
    assert code == 429, body
    assert "too many failed logins for this account from this address" in body["error"]["message"]
    made = 1  # ("victim")
    while made < 20:
        at = (replicas.a, replicas.b)[made % 2]
        credentials = {"username": f"person{made}", "password": PASSWORD}
        assert Browser().call(at, "POST", "/api/auth/register", credentials)[0] == 201
        made += 1
    for at in (replicas.a, replicas.b):
        code, body = Browser().call(
            at, "POST", "/api/auth/register", {"username": "onetoomany", "password": PASSWORD}
        )
        assert code == 429, body


def test_pause_on_a_reaches_b_s_caches(replicas: Cluster) -> None:
    """A pause through A: the stream open through B ends within 1 s, and B's next request
    finds the sandbox not running (its cached session, status and address were dropped)."""
    owner, _ = signed_in(replicas, "owner")
    _, sid = replicas.sandbox(owner)
    cookie = replicas.sandbox_cookie(owner, sid, replicas.b)
    stream = replicas.stream(sid, cookie, replicas.b)
    sent = time.monotonic()
    code, paused = owner.call(replicas.a, "POST", f"/api/sandboxes/{sid}/pause")
    assert code == 200, paused
    assert closed_at(stream) - sent < 1.0
    deadline = time.monotonic() + 10
    while owner.call(replicas.a, "GET", f"/api/sandboxes/{sid}")[1]["status"] != "paused":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    conn = http.client.HTTPConnection("127.0.0.1", replicas.b.port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": replicas.host(sid), "Cookie": cookie})
        response = conn.getresponse()
        page = response.read()
    finally:
        conn.close()
    assert b"healthy" not in page, page[:200]  # (not opencode's answer)
    assert b"paused" in page.lower(), page[:300]


def test_a_revocation_whose_write_fails_reaches_b_once_the_table_heals(
    replicas: Cluster,
) -> None:
    """The insert into replica_events fails (a constraint added for the test stands in for a
    full disk or a lock timeout): the logout on A still answers 204 (A's own cut is done);
    once the table can be written again, A writes the event and B cuts the stream."""
    owner, _ = signed_in(replicas, "owner")
    _, sid = replicas.sandbox(owner)
    stream = replicas.stream(sid, replicas.sandbox_cookie(owner, sid, replicas.b), replicas.b)
    with psycopg2.connect(replicas.dsn) as conn, conn.cursor() as cursor:
        cursor.execute("ALTER TABLE replica_events ADD CONSTRAINT down CHECK (false) NOT VALID")
    try:
        assert owner.call(replicas.a, "POST", "/api/auth/logout")[0] == 204
        stream.settimeout(2.0)
        assert stream.recv(65536), "B cut the stream before the event could be written"
    finally:
        with psycopg2.connect(replicas.dsn) as conn, conn.cursor() as cursor:
            cursor.execute("ALTER TABLE replica_events DROP CONSTRAINT down")
    healed = time.monotonic()
    took = closed_at(stream, timeout=15.0) - healed
    print(f"revocation delivered {took * 1000:.0f} ms after the table could be written again")
    assert "the unwritten events are written" in replicas.a.log.read_text()


@pytest_twisted.ensureDeferred
async def test_the_table_answers_what_the_bus_asks(replicas: Cluster) -> None:
    """``EventTable`` on PostgreSQL: rows above an id or among the ids waited for, in order;
    the highest id taken stays known after its rows are pruned."""
    db = Database(_reactor(), replicas.dsn)
    try:
        table = EventTable(db, _reactor())
        start = await table.taken()
        for n in range(4):  # (the replicas hear them: revocations of users nobody is)
            await table.add("test", "user_revoked", {"user_id": str(uuid.uuid4())})
        rows = await table.after(start + 3, 10, [start + 1])
        assert [r["id"] - start for r in rows] == [1, 4]
        assert rows[1]["origin"] == "test" and set(rows[1]["payload"]) == {"user_id"}
        assert await table.newest() == await table.taken() == start + 4
        await db.execute("DELETE FROM replica_events WHERE id > %s", (start,))
        assert await table.newest() <= start and await table.taken() == start + 4
    finally:
        db.close()
