"""A local agent's tunnel served from every replica: three real `twistd cli-server` behind a
real nginx (``replicas.py``) on one PostgreSQL, and a real `twistd -n cli-agent` whose
"opencode" is a real local upstream (``laptop_upstream.py``). The agent lands on one replica
(B); a page, an upload, an event stream and a WebSocket reach it through the two others, over
the internal channel. Killing B moves the agent; killing its new replica and the agent too
leaves the tunnel to the survivor to release."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import pytest

from cli_server.replicas import channel

from .helpers import remove_dir, scratch_dir
from .laptop_upstream import LaptopUpstream, websocket_echo
from .replicas import Agent, EventStream, Replicas, call, tunnel_holder


@pytest.fixture
def cluster(db_url: str) -> Iterator[tuple[Replicas, LaptopUpstream, Agent]]:
    root = scratch_dir("cli-test-replica-tunnels-")
    laptop = LaptopUpstream()
    agent = Agent(root)
    try:
        with Replicas(root, db_url) as replicas:
            for server in replicas.servers:
                server.extra = (*server.extra, f"--advertise-url={server.base}")
            replicas.start()
            yield replicas, laptop, agent
            agent.kill()
    finally:
        agent.kill()
        laptop.stop()
        if not os.environ.get("KEEP_REPLICAS"):  # (set it to read the replicas' logs after)
            remove_dir(root)


def _wait(what: str, test: Any, timeout: float) -> float:
    began = time.monotonic()
    while not test():
        assert time.monotonic() - began < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - began


def _key(db_url: str) -> bytes:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT value FROM instance_secrets WHERE name = 'internal_channel'")
        row = cur.fetchone()
    assert row is not None
    return str(row[0]).encode()


def _send(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _serves_all(
    replicas: Replicas, laptop: LaptopUpstream, sid: str, cookie: str, via: list[int]
) -> None:
    """A page, an upload, an event stream and a WebSocket through each replica of ``via``."""
    host = replicas.host(sid)
    for n in via:
        port = replicas.servers[n].port
        page = replicas.get(sid, f"/page?from={n}", cookie, n=n)
        assert page.status == 200, (n, page.status, page.body[:300])
        assert page.json() == {"laptop": True, "path": f"/page?from={n}", "host": host}
        upload = os.urandom(4 * 2**20)
        status, body = _send(
            port,
            "POST",
            "/upload",
            {"Host": host, "Cookie": cookie, "Origin": f"http://{host}"},
            upload,
        )
        assert status == 200, (n, status, body[:300])
        assert b'"sha256": "%s"' % hashlib.sha256(upload).hexdigest().encode() in body
        stream = EventStream(port, host, cookie)
        try:
            assert stream.response.status == 200
            assert [e["n"] for e in stream.events(3)] == [0, 1, 2]
        finally:
            stream.close()
        status, echo = websocket_echo(port, host, cookie, b"hello from replica %d" % n)
        assert (status, echo) == (101, b"hello from replica %d" % n)


def test_an_agent_on_one_replica_serves_through_the_others(
    cluster: tuple[Replicas, LaptopUpstream, Agent], db_url: str
) -> None:
    replicas, laptop, agent = cluster
    alice = replicas.user("alice")
    workspace = agent.join(replicas, alice, laptop.url, "--allow-port", str(laptop.preview_port))
    server = f"http://127.0.0.1:{replicas.nginx.port}"

    sid = replicas.local_sandbox(alice, workspace["id"])
    ports = {server.base: n for n, server in enumerate(replicas.servers)}
    b = ports[tunnel_holder(db_url, sid) or ""]
    others = [n for n in range(3) if n != b]
    cookie = replicas.open(alice, sid, via=others[0], redeem=others[1])
    _serves_all(replicas, laptop, sid, cookie, others)

    # a preview of the shared port, through the replicas not holding the tunnel
    shared = laptop.preview_port
    opened = replicas.api(others[0], "POST", f"/api/sandboxes/{sid}/open", alice, {"port": shared})
    assert opened.status == 200, opened.body
    url = urlsplit(opened.json()["url"])
    preview = call(replicas.servers[others[1]].port, "GET", f"{url.path}?{url.query}", url.netloc)
    assert preview.status in (302, 303), (preview.status, preview.body[:300])
    for n in others:
        page = call(replicas.servers[n].port, "GET", "/p", url.netloc, cookie=preview.cookie())
        assert page.status == 200, (n, page.status, page.body[:300])
        assert page.json() == {"laptop": True, "path": "/p", "host": url.netloc}
    unshared = url.netloc.replace(f"-p{shared}.", "-p5999.")
    assert call(replicas.servers[others[0]].port, "GET", "/", unshared).status != 200

    # -- the channel refuses everyone else ------------------------------------------------
    b_port = replicas.servers[b].port
    target = channel.Target(sid, None, b"/page?direct")
    path = channel.internal_path(target).decode()
    direct = {"Host": f"127.0.0.1:{b_port}"}
    assert _send(b_port, "GET", path, direct)[0] == 403  # unsigned
    forged = dict(channel.sign(b"x" * 43, b"GET", target, replicas.host(sid).encode(), time.time()))
    headers = {**direct, **{k.decode(): v.decode() for k, v in forged.items()}}
    assert _send(b_port, "GET", path, headers)[0] == 403  # another key
    signed = dict(
        channel.sign(_key(db_url), b"GET", target, replicas.host(sid).encode(), time.time())
    )
    headers = {**direct, **{k.decode(): v.decode() for k, v in signed.items()}}
    # from a sandbox's host name the channel is not even routed: the sandbox's own pages
    status, body = _send(b_port, "GET", path, {**headers, "Host": replicas.host(sid)})
    assert status != 403 and status != 200 and b"laptop" not in body, (status, body[:200])
    status, body = _send(b_port, "GET", path, headers)
    assert status == 200 and b'"path": "/page?direct"' in body  # the same, signed: served
    assert _send(b_port, "GET", path, headers)[0] == 403  # and never twice
    assert laptop.paths.count("/page?direct") == 1
    assert not any(p.startswith("/_cli-relay") for p in laptop.paths)

    # -- B dies: the agent moves, the sandbox is running again ----------------------------
    assert replicas.servers[b].proc is not None
    replicas.servers[b].proc.send_signal(signal.SIGKILL)
    replicas.servers[b].proc.wait(10)
    killed = time.monotonic()

    def moved() -> bool:
        holder = tunnel_holder(db_url, sid)
        return holder is not None and ports[holder] != b

    _wait("the agent reconnected to another replica", moved, 60)
    print(f"\nagent on another replica {time.monotonic() - killed:.1f} s after B died")
    assert replicas.api(others[0], "GET", f"/api/sandboxes/{sid}", alice).json()["status"] == (
        "running"
    )
    _wait(
        "a page through both survivors",
        lambda: all(replicas.get(sid, "/page", cookie, n=n).status == 200 for n in others),
        30,
    )
    _serves_all(replicas, laptop, sid, cookie, others)

    # -- the agent and its new replica die: the last one releases the tunnel ---------------
    c = ports[tunnel_holder(db_url, sid) or ""]
    (last,) = [n for n in others if n != c]
    # (C first: an agent that stops on a live replica is released there at once)
    assert replicas.servers[c].proc is not None
    replicas.servers[c].proc.send_signal(signal.SIGKILL)
    agent.kill()
    replicas.servers[c].proc.wait(10)
    killed = time.monotonic()

    def status_now() -> str:
        return str(replicas.api(last, "GET", f"/api/sandboxes/{sid}", alice).json()["status"])

    assert status_now() == "running"  # (C's heartbeat has not expired yet)
    took = _wait("the dead replica's tunnel released", lambda: status_now() == "offline", 60)
    print(f"tunnel of a dead replica released (offline) {took:.1f} s after it died")
    assert tunnel_holder(db_url, sid) is None
    page = replicas.get(sid, "/page", cookie, n=last)
    assert page.status == 503 and b"offline" in page.body.lower()
    log = replicas.servers[last].log.read_text(errors="replace")
    assert log.count(f"tunnel of {sid} released") == 1
    # the agent comes back (to the last replica, through nginx): running, served
    agent.start("--server", server)
    _wait("the agent back", lambda: status_now() == "running", 60)
    assert replicas.get(sid, "/page", cookie, n=last).status == 200
    assert (
        call(replicas.nginx.port, "GET", "/page", replicas.host(sid), cookie=cookie).status == 200
    )


def _joined(
    replicas: Replicas, laptop: LaptopUpstream, agent: Agent, db_url: str
) -> tuple[str, str, int, list[int]]:
    """An agent joined through nginx: alice's cookie, the sandbox, the replica holding its
    tunnel and the two others."""
    alice = replicas.user("alice")
    workspace = agent.join(replicas, alice, laptop.url, "--allow-port", str(laptop.preview_port))
    listed = f"/api/workspaces/{workspace['id']}/sandboxes"

    def running() -> list[Any]:
        return [
            s for s in replicas.api(None, "GET", listed, alice).json() if s["status"] == "running"
        ]

    _wait("the agent connected", lambda: bool(running()), 60)
    sid = str(running()[0]["id"])
    ports = {server.base: n for n, server in enumerate(replicas.servers)}
    b = ports[tunnel_holder(db_url, sid) or ""]
    return alice, sid, b, [n for n in range(3) if n != b]


def test_the_newest_tunnel_wins_across_replicas(
    cluster: tuple[Replicas, LaptopUpstream, Agent], db_url: str
) -> None:
    """The same agent's credentials connect to C while its first tunnel, on B, is half-open
    (the agent stopped, its socket not closed): C's tunnel takes over for good, B's closes as
    replaced, and the first agent, once it runs again, stops instead of fighting back."""
    replicas, laptop, agent = cluster
    alice, sid, b, (a, c) = _joined(replicas, laptop, agent, db_url)
    cookie = replicas.open(alice, sid, via=a, redeem=c)
    root = scratch_dir("cli-test-second-agent-")
    second = Agent(root)
    try:
        shutil.copytree(agent.root / "home", root / "home")  # (a copied agent.json)
        saved = root / "home" / ".cli-server" / "agent.json"
        nginx = f"http://127.0.0.1:{replicas.nginx.port}"
        saved.write_text(saved.read_text().replace(nginx, replicas.servers[c].base))
        agent.proc.send_signal(signal.SIGSTOP)
        second.start("--server", replicas.servers[c].base, "--opencode-url", laptop.url)
        _wait(
            "C took the tunnel", lambda: tunnel_holder(db_url, sid) == replicas.servers[c].base, 30
        )
        # Longer than two sweeps of every replica: the row stays C's, A relays there at once.
        ended = time.monotonic() + 12
        while time.monotonic() < ended:
            assert tunnel_holder(db_url, sid) == replicas.servers[c].base
            began = time.monotonic()
            page = call(replicas.servers[a].port, "GET", "/page", replicas.host(sid), cookie=cookie)
            assert page.status == 200, (page.status, page.body[:300])
            assert time.monotonic() - began < 2
            time.sleep(0.5)
        log = replicas.servers[b].log.read_text(errors="replace")
        assert f"tunnel for {sid} replaced by a newer one on another replica" in log
        agent.proc.send_signal(signal.SIGCONT)
        agent.proc.wait(30)  # (it reads the goodbye it was sent, and stops)
        first = agent.logs()
        assert "another agent connected with the same credentials; this one stops" in first
        assert second.proc.poll() is None
        assert tunnel_holder(db_url, sid) == replicas.servers[c].base
        status = replicas.api(b, "GET", f"/api/sandboxes/{sid}", alice).json()["status"]
        assert status == "running"
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGCONT)
        second.kill()
        remove_dir(root)


def test_every_replica_shows_a_local_sandbox_s_ports_and_agent(
    cluster: tuple[Replicas, LaptopUpstream, Agent], db_url: str
) -> None:
    """The laptop's shared ports and its agent's release, as the holder knows them, through
    each replica (those that do not hold the tunnel read them from ``tunnel_holders``)."""
    replicas, laptop, agent = cluster
    alice, sid, b, others = _joined(replicas, laptop, agent, db_url)
    held = replicas.api(b, "GET", f"/api/sandboxes/{sid}", alice).json()["agent"]
    assert held is not None and held["version"] and held["protocol"] >= 1, held
    for n in [b, *others]:
        ports = replicas.api(n, "GET", f"/api/sandboxes/{sid}/ports", alice)
        assert ports.status == 200, (n, ports.body)
        assert ports.json() == {"ports": [laptop.preview_port], "listed": True, "shared_only": True}
        assert replicas.api(n, "GET", f"/api/sandboxes/{sid}", alice).json()["agent"] == held
        workspace = replicas.api(n, "GET", f"/api/sandboxes/{sid}", alice).json()["workspace_id"]
        listed = replicas.api(n, "GET", f"/api/workspaces/{workspace}/sandboxes", alice).json()
        assert [s["agent"] for s in listed] == [held]
