"""What a sandbox card shows (created, started, last active, who paused it, why it failed,
a short id), unique names, the sandbox log and its authorization, the crashed page, and a
reused sandbox link: real server and PostgreSQL, a FAKE sandbox upstream, and real opencode
under bubblewrap for the crash and its log."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import gatherResults

from cli_server.db.embedded import EmbeddedPostgres
from cli_server.db.migrations import load_migrations, migrate
from cli_server.db.pool import Database
from cli_server.testing import FakeBackend

from .conftest import Real, _reactor, real_server, server_config, start_server, stop_server
from .helpers import Api, needs_isolation, wait_until
from .test_proxy import Proxy
from .test_sandboxes_api import team, wait_status
from .upstream import serve

KILLED = "opencode was killed by signal 9 (SIGKILL)"


@pytest_twisted.async_yield_fixture
async def cards(db_url: str) -> AsyncIterator[Proxy]:
    """A team, one workspace and one running sandbox on a FAKE backend whose sandboxes all
    answer at a recording upstream."""
    recorder, port = serve(_reactor())
    backend = FakeBackend(serve_at=port.getHost().port)
    app = await start_server(db_url, backend=backend, config=server_config(db_url))
    people, wid = await team(app)
    made = await people["developer"].call(
        "POST", f"/api/workspaces/{wid}/sandboxes", {"name": "card"}
    )
    assert made.code == 201, made
    await wait_status(people["owner"], made.body["id"], "running")
    yield Proxy(app, recorder, people, wid, made.body["id"])
    await stop_server(app)
    await port.stopListening()


def backend_of(world: Proxy) -> FakeBackend:
    backend = world.app.server.backend
    assert isinstance(backend, FakeBackend)
    return backend


async def card(client: Api, sandbox_id: str) -> dict[str, Any]:
    reply = await client.call("GET", f"/api/sandboxes/{sandbox_id}")
    assert reply.code == 200, reply
    return dict(reply.body)


@pytest_twisted.ensureDeferred
async def test_card_fields_through_a_life(cards: Proxy) -> None:
    """short_id, created_by, started_at only while running, last_activity_at, paused_by a
    person or idleness (with its minutes), and the failure reason."""
    owner, dev, sid = cards.people["owner"], cards.people["developer"], cards.sandbox
    shown = await card(owner, sid)
    assert shown["short_id"] == sid.replace("-", "")[:8] and len(shown["short_id"]) == 8
    assert shown["created_by"] == "developer"
    assert shown["started_at"] is not None and shown["last_activity_at"] is not None
    assert shown["paused_by"] is None
    listed = (await owner.call("GET", f"/api/workspaces/{cards.workspace}/sandboxes")).body
    assert listed[0]["short_id"] == shown["short_id"]

    assert (await dev.call("POST", f"/api/sandboxes/{sid}/pause")).code == 200
    await wait_status(owner, sid, "paused")
    paused = await card(owner, sid)
    assert paused["paused_by"] == {"kind": "user", "username": "developer"}
    assert paused["started_at"] is None and paused["paused_at"] is not None

    assert (await owner.call("POST", f"/api/sandboxes/{sid}/resume")).code == 200
    await wait_status(owner, sid, "running")
    assert (await card(owner, sid))["paused_by"] is None
    # Idle for 25 minutes, then the idle monitor's pause.
    await cards.app.db.execute(
        "UPDATE sandboxes SET last_activity_at = now() - interval '25 minutes' WHERE id = %s",
        (sid,),
    )
    assert await cards.app.server.manager.pause_idle(sid)
    await wait_status(owner, sid, "paused")
    assert (await card(owner, sid))["paused_by"] == {"kind": "idle", "idle_minutes": 25}

    assert (await owner.call("POST", f"/api/sandboxes/{sid}/resume")).code == 200
    await wait_status(owner, sid, "running")
    backend_of(cards).die(sid, KILLED)
    await wait_status(owner, sid, "failed")
    failed = await card(owner, sid)
    assert (failed["error"], failed["started_at"], failed["paused_by"]) == (KILLED, None, None)


@pytest_twisted.ensureDeferred
async def test_sandbox_names_are_unique_in_a_workspace(cards: Proxy) -> None:
    """Case-insensitive, 409 name_taken with a sentence naming the field; other workspaces
    may reuse a name; two creates at once: one 201, one 409."""
    dev, owner, wid = cards.people["developer"], cards.people["owner"], cards.workspace
    taken = await dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "CARD"})
    assert (taken.code, taken.error_code) == (409, "name_taken"), taken
    assert taken.body["error"]["message"] == (
        'A sandbox named "CARD" already exists in this workspace.'
    )
    assert taken.body["error"]["field"] == "name"
    rows = await cards.app.db.query("SELECT count(*) AS n FROM sandboxes")
    assert rows[0]["n"] == 1

    other = (await owner.call("POST", "/api/workspaces", {"name": "other"})).body["id"]
    elsewhere = await owner.call("POST", f"/api/workspaces/{other}/sandboxes", {"name": "card"})
    assert elsewhere.code == 201, elsewhere

    raced = await gatherResults(
        [
            dev.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "twin"}),
            owner.call("POST", f"/api/workspaces/{wid}/sandboxes", {"name": "Twin"}),
        ]
    )
    assert sorted(r.code for r in raced) == [201, 409], raced
    assert [r.error_code for r in raced if r.code == 409] == ["name_taken"]


@pytest_twisted.ensureDeferred
async def test_workspace_names_are_unique_per_owner(cards: Proxy) -> None:
    owner, dev = cards.people["owner"], cards.people["developer"]
    again = await owner.call("POST", "/api/workspaces", {"name": "W"})  # team() made "w"
    assert (again.code, again.error_code) == (409, "name_taken"), again
    assert again.body["error"]["message"] == 'You already created a workspace named "W".'
    assert again.body["error"]["field"] == "name"
    mine = await dev.call("POST", "/api/workspaces", {"name": "w"})
    assert mine.code == 201, mine  # another owner may use the same name


@pytest_twisted.ensureDeferred
async def test_logs_authorization(cards: Proxy) -> None:
    """Developers and up read the log; guests 403, non-members 404, signed out 401, a bad id
    and an unknown id 404; a local sandbox's log is on its agent's machine (409)."""
    sid = cards.sandbox
    backend_of(cards).output[sid] = ["opencode server listening on http://0.0.0.0:4096"]
    for who in ("owner", "maintainer", "developer"):
        reply = await cards.people[who].call("GET", f"/api/sandboxes/{sid}/logs")
        assert reply.code == 200, (who, reply)
        assert reply.body == {
            "lines": ["opencode server listening on http://0.0.0.0:4096"],
            "truncated": False,
        }
    expected = {"guest": 403, "outsider": 404, "anonymous": 401}
    for who, code in expected.items():
        reply = await cards.people[who].call("GET", f"/api/sandboxes/{sid}/logs")
        assert reply.code == code, (who, reply)
    owner = cards.people["owner"]
    assert (await owner.call("GET", "/api/sandboxes/not-an-id/logs")).code == 404
    assert (await owner.call("GET", f"/api/sandboxes/{uuid.uuid4()}/logs")).code == 404

    local = str(uuid.uuid4())
    await cards.app.db.execute(
        "INSERT INTO sandboxes (id, workspace_id, name, status, is_local, backend,"
        " opencode_password) VALUES (%s, %s, 'laptop', 'offline', true, 'local', 'pw')",
        (local, cards.workspace),
    )
    there = await owner.call("GET", f"/api/sandboxes/{local}/logs")
    assert (there.code, there.error_code) == (409, "logs_on_agent"), there
    assert "agent" in there.body["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_logs_blank_the_sandbox_password(cards: Proxy) -> None:
    sid = cards.sandbox
    (row,) = await cards.app.db.query(
        "SELECT opencode_password FROM sandboxes WHERE id = %s", (sid,)
    )
    backend_of(cards).output[sid] = [f"password is {row['opencode_password']}!"]
    reply = await cards.people["developer"].call("GET", f"/api/sandboxes/{sid}/logs")
    assert reply.body["lines"] == ["password is [redacted]!"]


@pytest_twisted.ensureDeferred
async def test_logs_the_backend_cannot_read_answer_503_in_words(cards: Proxy) -> None:
    backend_of(cards).logs_fail = "the Docker engine did not answer"
    reply = await cards.people["developer"].call("GET", f"/api/sandboxes/{cards.sandbox}/logs")
    assert (reply.code, reply.error_code) == (503, "logs_unavailable"), reply
    assert "the Docker engine did not answer" in reply.body["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_crashed_page_says_why(cards: Proxy) -> None:
    """The subdomain of a failed sandbox says it crashed, with the reason, and offers Resume."""
    cookie = await cards.open("developer")
    backend_of(cards).die(cards.sandbox, KILLED)
    await wait_status(cards.people["owner"], cards.sandbox, "failed")
    page = await cards.visit("/", cookie=cookie)
    assert page.code == 503
    assert b"This sandbox crashed" in page.body and KILLED.encode() in page.body
    assert b"/_cli/resume" in page.body and b"starting" not in page.body.lower()


@pytest_twisted.ensureDeferred
async def test_a_reused_link_with_a_session_goes_to_the_work(cards: Proxy) -> None:
    """A used or expired link with this sandbox's session lands in the work; without one (or
    with another sandbox's) it is an error page linking to the dashboard; the ticket stays
    burnt either way. The landing page opens opencode on /data/disk0."""
    dev = cards.people["developer"]
    url = (await dev.call("POST", f"/api/sandboxes/{cards.sandbox}/open")).body["url"]
    path = url.split(cards.host(), 1)[1]
    first = await cards.visit(path)
    assert first.code == 303 and first.headers.getRawHeaders("location") == ["/_cli/open"]
    cookie = first.headers.getRawHeaders("set-cookie")[0].split(";")[0].split("=", 1)[1]

    again = await cards.visit(path, cookie=cookie)
    assert again.code == 303 and again.headers.getRawHeaders("location") == ["/_cli/open"]
    assert again.headers.getRawHeaders("set-cookie") is None  # nothing new granted
    bare = await cards.visit(path)
    assert bare.code == 401 and b"This link has expired" in bare.body
    assert b"Back to the dashboard" in bare.body
    assert (await cards.visit(path, cookie="not-a-session")).code == 401

    other = (
        await dev.call("POST", f"/api/workspaces/{cards.workspace}/sandboxes", {"name": "b"})
    ).body["id"]
    await wait_status(dev, other, "running")
    elsewhere = await cards.visit(path, sandbox_id=other)
    assert elsewhere.code == 401
    other_url = (await dev.call("POST", f"/api/sandboxes/{other}/open")).body["url"]
    other_path = other_url.split(cards.host(other), 1)[1]
    # This sandbox's cookie on the other's subdomain is no session there.
    assert (await cards.visit(other_path, cookie=cookie, sandbox_id=other)).code == 303
    assert (await cards.visit(other_path, cookie=cookie, sandbox_id=other)).code == 401

    url = (await dev.call("POST", f"/api/sandboxes/{cards.sandbox}/open")).body["url"]
    await cards.app.db.execute("UPDATE sandbox_tickets SET expires_at = now() - interval '1s'")
    expired = url.split(cards.host(), 1)[1]
    assert (await cards.visit(expired)).code == 401
    assert (await cards.visit(expired, cookie=cookie)).code == 303

    landing = await cards.visit("/_cli/open", cookie=cookie)
    assert landing.code == 200 and b'"/data/disk0"' in landing.body
    assert landing.headers.getRawHeaders("cache-control") == ["no-store"]
    assert (await cards.visit("/_cli/open")).code == 401


@pytest_twisted.ensureDeferred
async def test_migration_renames_duplicates(postgres: EmbeddedPostgres) -> None:
    """Databases made before names were unique migrate: later duplicates get the first free
    " (2)", " (3)"... and the unique indexes then hold."""
    reactor = _reactor()
    name = "t_" + uuid.uuid4().hex[:16]
    admin = Database(reactor, postgres.dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    db = Database(reactor, postgres.dsn.replace("dbname=cli_server", f"dbname={name}"))
    try:
        before = [m for m in load_migrations() if m.version < 9]
        await migrate(db, before)
        users = [str(uuid.uuid4()) for _ in range(2)]
        for n, user in enumerate(users):
            await db.execute("INSERT INTO users (id, username) VALUES (%s, %s)", (user, f"u{n}"))
        spaces = [str(uuid.uuid4()) for _ in range(4)]
        for space, (owner, wname) in zip(
            spaces, [(0, "Team"), (0, "team"), (0, "team (2)"), (1, "team")], strict=True
        ):
            await db.execute(
                "INSERT INTO workspaces (id, name, created_by) VALUES (%s, %s, %s)",
                (space, wname, users[owner]),
            )
        boxes = [str(uuid.uuid4()) for _ in range(3)]
        for n, box in enumerate(boxes):
            await db.execute(
                "INSERT INTO sandboxes (id, workspace_id, name, status, backend,"
                " opencode_password, created_at) VALUES (%s, %s, %s, 'paused', 'process',"
                " 'pw', now() + make_interval(secs => %s))",
                (box, spaces[0], ["web", "Web", "WEB"][n], n),
            )
        assert await migrate(db) == [v for v in range(9, len(load_migrations()) + 1)]
        names = {str(r["id"]): r["name"] for r in await db.query("SELECT id, name FROM sandboxes")}
        assert [names[b] for b in boxes] == ["web", "Web (2)", "WEB (3)"]
        spaces_now = {
            str(r["id"]): r["name"] for r in await db.query("SELECT id, name FROM workspaces")
        }
        assert spaces_now[spaces[0]] == "Team" and spaces_now[spaces[3]] == "team"
        assert spaces_now[spaces[2]] == "team (2)"  # a name of its own: kept
        assert spaces_now[spaces[1]] == "team (3)"
    finally:
        db.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_real_opencode_works_on_the_disk_and_its_crash_is_told(real: Real) -> None:
    """opencode's own API, through the proxy, reports /data/disk0 as its directory; SIGKILL
    to it makes the sandbox failed at once with the signal, and its log shows opencode's
    output and the reason, never its password."""
    reactor = _reactor()
    sid, _ = await real.create("a", "crash")
    url = (await real.owner.call("POST", f"/api/sandboxes/{sid}/open")).body["url"]
    host = f"oc-{sid}.localhost:8080"
    client = real.app.client()
    opened = await client.call("GET", url.split(host, 1)[1], headers={"Host": host})
    assert opened.code == 303, opened
    cookie = opened.headers.getRawHeaders("set-cookie")[0].split(";")[0].split("=", 1)[1]
    headers = {"Host": host, "Cookie": f"cli_sandbox={cookie}"}
    where = await client.call("GET", "/path", headers=headers)
    assert where.code == 200 and where.body["directory"] == "/data/disk0", where
    project = await client.call("GET", "/project/current", headers=headers)
    assert project.code == 200 and project.body["worktree"] in ("/", "/data/disk0"), project
    landing = await client.call("GET", "/_cli/open", headers=headers)
    assert landing.code == 200 and b'"/data/disk0"' in landing.body

    os.kill(real.pid(sid), signal.SIGKILL)

    async def failed() -> bool:
        reply = await real.owner.call("GET", f"/api/sandboxes/{sid}")
        return bool(reply.body["status"] == "failed")

    await wait_until(reactor, failed, timeout=10, step=0.1)
    shown = (await real.owner.call("GET", f"/api/sandboxes/{sid}")).body
    assert shown["error"] == KILLED, shown

    logs = await real.owner.call("GET", f"/api/sandboxes/{sid}/logs")
    assert logs.code == 200, logs
    text = "\n".join(logs.body["lines"])
    assert "opencode server listening" in text, text
    assert f"--- {KILLED} ---" in text, text
    (row,) = await real.app.db.query(
        "SELECT opencode_password FROM sandboxes WHERE id = %s", (sid,)
    )
    assert row["opencode_password"] not in text
    on_disk = (real.data_dir / "sandboxes" / sid / "opencode.log").read_text()
    assert "opencode server listening" in on_disk and row["opencode_password"] not in on_disk


@pytest_twisted.async_yield_fixture
async def hungry(db_url: str) -> AsyncIterator[Real]:
    """A real server whose sandboxes may use 512 MiB."""
    async with real_server(db_url, sandbox_memory=512 * 1024**2, sandbox_pids=512) as world:
        yield world


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_real_opencode_out_of_memory_is_told(hungry: Real) -> None:
    """The kernel's OOM killer ends opencode (made its first choice, and a process in its
    memory cgroup asks for more than the limit): the sandbox fails at once, saying so."""
    sid, _ = await hungry.create("a", "hungry")
    groups = hungry.backend.cgroups.paths(sid)
    memory = next(g for g in groups if "pids" not in g.parts)
    Path(f"/proc/{hungry.pid(sid)}/oom_score_adj").write_text("1000")
    # (a host process, joined to the sandbox's memory cgroup before it allocates)
    hog = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            f'echo $$ > "{memory}/cgroup.procs" && exec python3 -c '
            "\"import time; x = b'x' * (1 << 30); time.sleep(60)\"",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def failed() -> bool:
            reply = await hungry.owner.call("GET", f"/api/sandboxes/{sid}")
            return bool(reply.body["status"] == "failed")

        await wait_until(_reactor(), failed, timeout=30, step=0.1)
        shown = (await hungry.owner.call("GET", f"/api/sandboxes/{sid}")).body
        assert shown["error"] == (
            "opencode ran out of memory (killed by the kernel's OOM killer)"
        ), shown
    finally:
        hog.kill()
        hog.wait(timeout=30)
    logs = await hungry.owner.call("GET", f"/api/sandboxes/{sid}/logs")
    assert "--- opencode ran out of memory" in "\n".join(logs.body["lines"]), logs
    for group in groups:  # (the hog kept it from going with the sandbox)
        await wait_until(_reactor(), lambda g=group: _gone(g), timeout=30)


def _gone(group: Path) -> bool:
    try:
        group.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


@pytest_twisted.async_yield_fixture
async def broken(db_url: str) -> AsyncIterator[Real]:
    """A real server whose opencode is a stand-in that prints its secrets, complains and
    exits."""
    scratch = Path(tempfile.mkdtemp(prefix="cli-test-broken-"))
    stand_in = scratch / "broken-opencode"
    stand_in.write_text(
        '#!/bin/sh\necho "password $OPENCODE_SERVER_PASSWORD key $ANTHROPIC_API_KEY"\n'
        "echo 'config error: no such provider' >&2\nexit 3\n"
    )
    stand_in.chmod(0o755)
    try:
        async with real_server(db_url, opencode=stand_in) as world:
            yield world
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@needs_isolation
@pytest_twisted.ensureDeferred
async def test_a_start_that_fails_is_in_the_log(broken: Real) -> None:
    """An opencode that cannot start (here a stand-in that prints its secrets, complains and
    exits): the sandbox is failed with the reason, and the log holds what it wrote and why
    the start failed; neither shows the secrets."""
    made = await broken.owner.call(
        "POST", f"/api/workspaces/{broken.workspaces['a']}/sandboxes", {"name": "broken"}
    )
    assert made.code == 201, made
    sid = made.body["id"]

    async def failed() -> bool:
        reply = await broken.owner.call("GET", f"/api/sandboxes/{sid}")
        return bool(reply.body["status"] == "failed")

    await wait_until(_reactor(), failed, timeout=60, step=0.1)
    shown = (await broken.owner.call("GET", f"/api/sandboxes/{sid}")).body
    assert "config error: no such provider" in shown["error"], shown
    lines = (await broken.owner.call("GET", f"/api/sandboxes/{sid}/logs")).body["lines"]
    assert lines[0] == "--- opencode starting ---", lines
    assert "config error: no such provider" in lines, lines
    assert lines[-1].startswith("--- the start failed: opencode exited: "), lines
    # Its secrets, printed, are blanked in the log and in the error.
    assert "password [redacted] key [redacted]" in lines, lines
    assert "password [redacted] key [redacted]" in shown["error"], shown
