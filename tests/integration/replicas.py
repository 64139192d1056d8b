"""Several replicas behind one hostname, for real: N `twistd cli-server` processes on loopback
(each its own port and data dir; one PostgreSQL, one ``--base-domain``) behind a real nginx
from Debian, configured as docs/architecture.md tells an operator to (round robin, WebSockets,
no buffering, the next replica on a refused connection or a 503).

The backend is ``k8s`` against the FAKE Kubernetes API (``fake_kubernetes.py``), which every
replica shares as they would share a cluster; the test plays the controller (``make_ready``)
and a FAKE opencode (``FakeOpencode``) answers at the pod's address. Nothing here depends on
cross-replica notifications or a leader: sessions and tickets live in PostgreSQL.

    with Replicas(root, db_url) as replicas:
        replicas.start()
        alice = replicas.user("alice")               # registered and signed in (replica 0)
        sid = replicas.running_sandbox(alice)        # created, Ready, running
        cookie = replicas.open(alice, sid, via=1, redeem=2)
        replicas.get(sid, "/", cookie)               # through nginx

Every process is stopped (and killed if it does not stop) when the block ends.
"""

from __future__ import annotations

import http.client
import json
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import psycopg2

from .daemon import Daemon, clean_env, processes_mentioning, twistd
from .fake_kubernetes import FakeKubernetes
from .helpers import free_port
from .laptop_upstream import stream_events

OPENCODE_PORT = 4096  # where the k8s backend expects opencode in a pod

NGINX_CONF = """\
# {note}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 4096; }}
http {{
    log_format timed '$msec $status $request_time "$upstream_addr" "$upstream_status"';
    access_log {root}/access.log timed;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;

{body}
}}
"""

# The part docs/architecture.md shows (the same text: a test compares them).
SITE = """\
    # WebSockets (terminals, local agents' tunnels): pass the upgrade on, else close.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream cli_server {{
{servers}
    }}

    server {{
        listen {listen};
        server_name _;                       # the main site and every oc-* subdomain
        client_max_body_size 0;              # the server caps bodies itself

        location / {{
            proxy_pass http://cli_server;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;             # event streams flush at once
            proxy_request_buffering off;     # uploads stream
            proxy_read_timeout 1h;           # event streams and terminals stay open
            proxy_send_timeout 1h;
            proxy_connect_timeout 5s;
            # a stopping replica refuses connections; a starting one answers 503
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
"""


def nginx_site(ports: Sequence[int], listen: str) -> str:
    servers = "\n".join(
        f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in ports
    )
    return SITE.format(servers=servers, listen=listen)


class _Opencode(BaseHTTPRequestHandler):
    """opencode's part: health, any page, ``/slow?s=N`` (answers after N seconds), and
    ``/event`` (an event stream, one event every ``EVERY`` seconds, chunked) until the
    client or the test goes."""

    protocol_version = "HTTP/1.1"
    server: _OpencodeServer
    EVERY = 0.2

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):  # answers after ?s= seconds
            self.server.stopping.wait(float(self.path.partition("?s=")[2] or 1))
        elif self.path.startswith("/event"):
            return stream_events(self, self.server.stopping, self.EVERY)
        body = json.dumps({"healthy": True, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _OpencodeServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # (the default 5 drops connections under load: 1 s retries)
    stopping: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # (a client that left: nothing to say)


class FakeOpencode:
    """A FAKE opencode at a pod's address (127.x.y.z:4096, free on the loopback /8)."""

    def __init__(self) -> None:
        self.ip = (
            f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
        )
        self._server = _OpencodeServer((self.ip, OPENCODE_PORT), _Opencode)
        self._server.stopping = threading.Event()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class Nginx:
    """A real nginx (Debian's) in front of ``ports``, its files under ``root``."""

    def __init__(self, root: Path, ports: Sequence[int]) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        assert Path(binary).exists(), "nginx is not installed (apt-get install nginx wrk)"
        self.binary = binary
        self.root = root
        self.port = free_port()
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (root / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        self.conf = root / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(
                note="written by tests/integration/replicas.py",
                root=root,
                body=nginx_site(ports, f"127.0.0.1:{self.port}"),
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        check = subprocess.run(
            [self.binary, "-t", "-p", str(self.root), "-c", str(self.conf)],
            capture_output=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr.decode()
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.root), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "error.log").read_text()[-2000:]
            try:
                http.client.HTTPConnection("127.0.0.1", self.port, timeout=1).connect()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not listen")

    def slowest(self, count: int = 5) -> list[str]:
        """The slowest requests in the access log: when (epoch seconds), status, seconds,
        the replicas tried and their answers."""
        lines = (self.root / "access.log").read_text().splitlines()
        return sorted(lines, key=lambda line: -float(line.split()[2]))[:count]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # (graceful: its workers finish and exit)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a replica's relay workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def cookie(self) -> str:
        """The first Set-Cookie's ``name=value``."""
        value = self.headers.get("set-cookie") or ""
        return value.split(";", 1)[0]


def call(
    port: int,
    method: str,
    path: str,
    host: str,
    *,
    body: Any = None,
    cookie: str | None = None,
    timeout: float = 10.0,
) -> Answer:
    """One request to 127.0.0.1:``port`` (a replica, or nginx) with that Host."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Host": host}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if cookie:
        headers["Cookie"] = cookie
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


class Replicas:
    """``count`` replicas, a FAKE cluster and opencode, and nginx in front."""

    def __init__(self, root: Path, db_url: str, count: int = 3, *extra: str) -> None:
        self.root = root
        self.cluster = FakeKubernetes()
        self.opencode = FakeOpencode()
        kubeconfig = self.cluster.kubeconfig(root)
        self.servers = [
            Daemon(root / f"replica-{n}", log_dir=root) for n in range(count)
        ]  # (ports chosen now: nginx names them)
        self.nginx = Nginx(root / "nginx", [server.port for server in self.servers])
        self.base_domain = f"localhost:{self.nginx.port}"
        for server in self.servers:
            server.extra = (
                f"--db-url={db_url}",
                f"--base-domain={self.base_domain}",
                "--backend=k8s",
                "--agent-image=registry.example/sandbox:1",
                f"--kubeconfig={kubeconfig}",
                "--k8s-instance=replicas",  # (one deployment: each sees the others' sandboxes)
                "--in-cluster-url=http://cli-server:8080",
                "--proxy-workers=1",
                *extra,
            )

    def __enter__(self) -> Replicas:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        for server in self.servers:
            server.data_dir.mkdir(parents=True, exist_ok=True)
            server.start()
        self.nginx.start()

    def stop(self) -> None:
        self.nginx.stop()
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                try:
                    server.stop(signal.SIGTERM, timeout=60)
                except subprocess.TimeoutExpired:
                    server.proc.kill()
                    server.proc.wait(10)
        for pid in processes_mentioning(str(self.root)):  # (relay workers never outlive theirs)
            subprocess.run(["kill", "-9", str(pid)], check=False)
        self.opencode.stop()
        self.cluster.stop()

    # -- talking to it ---------------------------------------------------------------------

    def api(self, n: int | None, method: str, path: str, cookie: str, body: Any = None) -> Answer:
        """The main site's API on replica ``n`` directly (None: through nginx)."""
        port = self.nginx.port if n is None else self.servers[n].port
        return call(port, method, path, self.base_domain, body=body, cookie=cookie)

    def host(self, sandbox_id: str) -> str:
        return f"oc-{sandbox_id}.{self.base_domain}"

    def user(self, name: str, n: int = 0) -> str:
        """A new account, signed in on replica ``n``: its session cookie."""
        credentials = {"username": name, "password": "correct horse battery"}
        assert self.api(n, "POST", "/api/auth/register", "", credentials).status == 201
        login = self.api(n, "POST", "/api/auth/login", "", credentials)
        assert login.status == 200, login.body
        return login.cookie()

    def local_sandbox(self, cookie: str, workspace_id: str, timeout: float = 60.0) -> str:
        """The id of the local sandbox ``laptop`` (``Agent.join``'s) in the workspace, once its
        agent's tunnel is up (the API, through nginx, says it runs)."""
        path = f"/api/workspaces/{workspace_id}/sandboxes"
        deadline = time.monotonic() + timeout
        while True:
            data = self.api(None, "GET", path, cookie).json()
            items = data if isinstance(data, list) else data.get("sandboxes", [])
            found = [s for s in items if s["name"] == "laptop" and s["status"] == "running"]
            if found:
                return str(found[0]["id"])
            assert time.monotonic() < deadline, f"not within {timeout} s: the agent connected"
            time.sleep(0.1)

    def running_sandbox(self, cookie: str, n: int = 0, timeout: float = 30.0) -> str:
        """A workspace and a sandbox created on replica ``n``, made Ready at the FAKE
        opencode's address; its id once the API says it runs."""
        workspace = self.api(n, "POST", "/api/workspaces", cookie, {"name": "w"}).json()
        created = self.api(
            n, "POST", f"/api/workspaces/{workspace['id']}/sandboxes", cookie, {"name": "s"}
        )
        assert created.status in (201, 202), created.body
        sid = str(created.json()["id"])
        name = f"cli-sbx-{sid}"
        deadline = time.monotonic() + timeout
        while name not in self.cluster.objects("sandboxes"):
            assert time.monotonic() < deadline, "no Sandbox was submitted"
            time.sleep(0.1)
        self.cluster.make_ready(name, None, [self.opencode.ip])
        while self.api(n, "GET", f"/api/sandboxes/{sid}", cookie).json()["status"] != "running":
            assert time.monotonic() < deadline, self.servers[n].log.read_text()[-3000:]
            time.sleep(0.1)
        return sid

    def open(self, cookie: str, sandbox_id: str, via: int | None, redeem: int | None) -> str:
        """A one-time link minted on replica ``via``, redeemed on replica ``redeem`` (None:
        through nginx): the sandbox session's cookie."""
        opened = self.api(via, "POST", f"/api/sandboxes/{sandbox_id}/open", cookie, {})
        assert opened.status == 200, opened.body
        url = urlsplit(opened.json()["url"])
        assert url.netloc == self.host(sandbox_id), url
        port = self.nginx.port if redeem is None else self.servers[redeem].port
        answer = call(port, "GET", f"{url.path}?{url.query}", self.host(sandbox_id))
        assert answer.status in (302, 303), (answer.status, answer.body)
        return answer.cookie()

    def get(self, sandbox_id: str, path: str, cookie: str, n: int | None = None) -> Answer:
        """A GET on the sandbox's subdomain, on replica ``n`` (None: through nginx)."""
        port = self.nginx.port if n is None else self.servers[n].port
        return call(port, "GET", path, self.host(sandbox_id), cookie=cookie)

    def replica_at(self, upstream: str) -> int:
        """Which replica nginx's ``X-Upstream`` (its last ``host:port``) names."""
        port = int(upstream.split(",")[-1].strip().rsplit(":", 1)[1])
        return [server.port for server in self.servers].index(port)


class EventStream:
    """A browser's event stream (``/event``) on a sandbox's subdomain: its events as they
    come, and whether it ended."""

    def __init__(self, port: int, host: str, cookie: str, timeout: float = 10.0) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self._connection.request("GET", "/event", headers={"Host": host, "Cookie": cookie})
        self.response = self._connection.getresponse()
        self._buffer = b""
        self.ended_at: float | None = None

    @property
    def upstream(self) -> str:
        """nginx's X-Upstream: the replica that serves it."""
        return str(self.response.headers.get("x-upstream", ""))

    def events(self, count: int, timeout: float = 10.0) -> list[Any]:
        """The next ``count`` events; fewer if the stream ends first."""
        found: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            while b"\n\n" in self._buffer and len(found) < count:
                event, self._buffer = self._buffer.split(b"\n\n", 1)
                found.append(json.loads(event.removeprefix(b"data: ")))
            if len(found) < count and not self._read():
                break
        return found

    def _read(self) -> bool:
        try:
            data = self.response.read1(65536)
        except (http.client.IncompleteRead, OSError):
            data = b""
        if not data:
            self.ended_at = time.monotonic()
        self._buffer += data
        return bool(data)

    def wait_end(self, timeout: float = 30.0) -> bool:
        """Reads (and drops) events until the stream ends; whether it did in time."""
        deadline = time.monotonic() + timeout
        while self.ended_at is None and time.monotonic() < deadline:
            self._read()
            self._buffer = b""
        return self.ended_at is not None

    def close(self) -> None:
        self._connection.close()


class Agent:
    """A real `twistd cli-agent` on the "laptop", with its own HOME under ``root``; each
    ``start`` is a new process with its own log (``agent-N.log``)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, *args: str) -> None:
        self.runs += 1
        self.proc = subprocess.Popen(
            [twistd(), "-n", "--pidfile=", f"--logfile={self.root}/agent-{self.runs}.log"]
            + ["cli-agent", *args],
            env={**clean_env(), "HOME": str(self.root / "home")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.root,
            start_new_session=True,
        )

    def join(self, replicas: Replicas, user: str, opencode_url: str, *more: str) -> Any:
        """Registered with a code of a new workspace of ``user``'s and started, dialling the
        replicas through nginx: the workspace."""
        workspace = replicas.api(None, "POST", "/api/workspaces", user, {"name": "w"}).json()
        code = replicas.api(None, "POST", f"/api/workspaces/{workspace['id']}/agent-code", user, {})
        assert code.status in (200, 201), code.body
        self.start(
            *("--server", f"http://127.0.0.1:{replicas.nginx.port}", "--code", code.json()["code"]),
            *("--name", "laptop", "--opencode-url", opencode_url, *more),
        )
        return workspace

    def logs(self) -> str:
        log = self.root / f"agent-{self.runs}.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self) -> None:
        """SIGTERM, as a laptop's user stopping it; killed if it does not go."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def tunnel_holder(db_url: str, sandbox_id: str) -> str | None:
    """The advertise URL of the replica holding the sandbox's tunnel, per the database."""
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT r.advertise_url FROM tunnel_holders h JOIN replicas r ON r.id = h.replica_id"
            " WHERE h.sandbox_id = %s",
            (sandbox_id,),
        )
        row = cur.fetchone()
    return None if row is None else str(row[0])
