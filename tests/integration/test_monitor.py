"""Idle monitor and reconciler: a fake clock and a FAKE backend, real PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest_twisted
from attrs import define
from twisted.internet.task import Clock

from cli_server.compose.hooks import Hook
from cli_server.db.pool import Database
from cli_server.domain.workspaces import Workspaces
from cli_server.sandboxes.activity import ActivityRecorder
from cli_server.sandboxes.manager import SandboxManager
from cli_server.sandboxes.monitor import IdleMonitor, Reconciler
from cli_server.testing import FakeAgentStatus, FakeBackend

from .conftest import _reactor

IDLE = 600.0


@define
class World:
    db: Database
    clock: Clock
    backend: FakeBackend
    agents: FakeAgentStatus
    manager: SandboxManager
    activity: ActivityRecorder
    idle: IdleMonitor
    reconciler: Reconciler
    user: str
    workspace: str

    async def sandbox(self, status: str = "running") -> str:
        made = await self.manager.create(self.workspace, self.user, f"s-{uuid.uuid4()}")
        await self.manager.drain()
        if status != "running":
            await self.db.execute(
                "UPDATE sandboxes SET status = %s WHERE id = %s", (status, made["id"])
            )
        return str(made["id"])

    async def status(self, sandbox_id: str) -> str | None:
        rows = await self.db.query("SELECT status FROM sandboxes WHERE id = %s", (sandbox_id,))
        return rows[0]["status"] if rows else None

    def port(self, sandbox_id: str) -> int:
        return self.backend.running[sandbox_id].port


@pytest_twisted.async_yield_fixture
async def world(db_url: str) -> AsyncIterator[World]:
    db = Database(_reactor(), db_url)
    user = str(uuid.uuid4())
    await db.execute("INSERT INTO users (id, username) VALUES (%s, 'u')", (user,))
    workspace = await Workspaces(db).create(user, "w")
    clock = Clock()
    clock.advance(time.time())  # the fake clock starts at the database's "now"
    exits: Hook[[str, str]] = Hook("sandbox_exited")  # (the backend is built first)
    backend, agents = FakeBackend(on_exit=exits), FakeAgentStatus()
    manager = SandboxManager(db, backend, Workspaces(db), 100)
    exits.subscribe(manager.exited)
    activity = ActivityRecorder(db, clock)
    yield World(
        db,
        clock,
        backend,
        agents,
        manager,
        activity,
        IdleMonitor(db, backend, manager, agents, activity, IDLE, clock),
        Reconciler(db, backend, manager),
        user,
        workspace["id"],
    )
    await manager.drain()
    db.close()


@pytest_twisted.ensureDeferred
async def test_idle_sandbox_is_paused(world: World) -> None:
    """No activity for the timeout: paused, and its process stopped."""
    sid = await world.sandbox()
    await world.idle.sweep()
    assert await world.status(sid) == "running"
    world.clock.advance(IDLE + 1)
    await world.idle.sweep()
    await world.manager.drain()
    assert await world.status(sid) == "paused"
    assert sid not in world.backend.running


@pytest_twisted.ensureDeferred
async def test_busy_agent_is_never_paused(world: World) -> None:
    """A session that is working counts as activity, however long it runs."""
    sid = await world.sandbox()
    world.agents.working.add(world.port(sid))
    for _ in range(3):
        world.clock.advance(IDLE + 1)
        await world.idle.sweep()
        await world.manager.drain()
        assert await world.status(sid) == "running"
    world.agents.working.clear()
    world.clock.advance(IDLE + 1)
    await world.idle.sweep()
    await world.manager.drain()
    assert await world.status(sid) == "paused"


@pytest_twisted.ensureDeferred
async def test_unknown_agent_status_is_not_a_reason_to_pause(world: World) -> None:
    """If opencode cannot say whether it is busy, the monitor does not guess."""
    sid = await world.sandbox()
    world.agents.broken.add(world.port(sid))
    world.clock.advance(IDLE + 1)
    await world.idle.sweep()
    assert await world.status(sid) == "running"


@pytest_twisted.ensureDeferred
async def test_activity_defers_pausing_and_is_throttled(world: World) -> None:
    """touch() moves last_activity_at; repeated touches within the throttle write once."""
    sid = await world.sandbox()
    world.clock.advance(IDLE - 10)
    await world.db.execute(
        "UPDATE sandboxes SET last_activity_at = to_timestamp(%s)",
        (world.clock.seconds() - IDLE + 5,),
    )
    await world.idle.sweep()
    assert await world.status(sid) == "running"
    world.activity.touch(sid)
    world.activity.touch(sid)
    assert world.activity.remembered() == [sid]
    world.clock.advance(31)
    world.activity.prune()
    assert world.activity.remembered() == []


@pytest_twisted.ensureDeferred
async def test_only_running_cloud_sandboxes_are_considered(world: World) -> None:
    """Paused, failed and local sandboxes are left alone."""
    paused = await world.sandbox("paused")
    local = await world.sandbox()
    await world.db.execute("UPDATE sandboxes SET is_local = true WHERE id = %s", (local,))
    world.clock.advance(IDLE + 1)
    await world.idle.sweep()
    await world.manager.drain()
    assert (await world.status(paused), await world.status(local)) == ("paused", "running")


@pytest_twisted.ensureDeferred
async def test_reconciler_repairs_every_interrupted_state(world: World) -> None:
    """Rows left mid-transition or running without a process end somewhere sane."""
    alive = await world.sandbox()
    dead = await world.sandbox()
    world.backend.crash(dead)
    killed = await world.sandbox()  # the backend can tell how it ended (a dead container)
    world.backend.crash(killed, "opencode ran out of memory (killed by the kernel's OOM killer)")
    creating = await world.sandbox("creating")
    world.backend.crash(creating)
    pausing = await world.sandbox("pausing")
    resuming_alive = await world.sandbox("resuming")
    resuming_dead = await world.sandbox("resuming")
    world.backend.crash(resuming_dead)
    orphan = "99999999-9999-4999-8999-999999999999"
    world.backend.stopped.add(orphan)

    await world.reconciler.sweep()
    assert await world.status(alive) == "running"
    assert await world.status(dead) == "paused"
    (row,) = await world.db.query("SELECT status, error FROM sandboxes WHERE id = %s", (killed,))
    assert (row["status"], row["error"]) == (
        "failed",
        "opencode ran out of memory (killed by the kernel's OOM killer)",
    )
    assert await world.status(creating) == "failed"
    assert await world.status(pausing) == "paused"
    assert pausing not in world.backend.running
    assert await world.status(resuming_alive) == "running"
    assert await world.status(resuming_dead) == "paused"
    assert ("delete", orphan) in world.backend.calls
    (row,) = await world.db.query("SELECT error FROM sandboxes WHERE id = %s", (creating,))
    assert "resume to retry" in row["error"]


@pytest_twisted.ensureDeferred
async def test_reconciler_leaves_work_in_progress_alone(world: World) -> None:
    """A sandbox this process is still starting is not "repaired" from under it."""
    world.backend.hold()
    made = await world.manager.create(world.workspace, world.user, "slow")
    await world.reconciler.sweep()
    assert await world.status(made["id"]) == "creating"
    world.backend.release()
    await world.manager.drain()
    assert await world.status(made["id"]) == "running"


@pytest_twisted.ensureDeferred
async def test_an_exit_nobody_asked_for_fails_the_sandbox_at_once(world: World) -> None:
    """The backend reports a dead opencode: failed with the reason, no sweep needed; an exit
    while pausing (we caused it) is not a failure; Resume starts the failed one again."""
    dying, pausing = await world.sandbox(), await world.sandbox("pausing")
    world.backend.die(dying, "opencode was killed by signal 9 (SIGKILL)")
    world.backend.die(pausing)
    await world.manager.drain()
    (row,) = await world.db.query("SELECT status, error FROM sandboxes WHERE id = %s", (dying,))
    assert (row["status"], row["error"]) == ("failed", "opencode was killed by signal 9 (SIGKILL)")
    assert ("stop", dying) in world.backend.calls  # what outlived opencode is cleaned up
    assert await world.status(pausing) == "pausing"
    await world.manager.resume(dying, world.user)
    await world.manager.drain()
    (row,) = await world.db.query("SELECT status, error FROM sandboxes WHERE id = %s", (dying,))
    assert (row["status"], row["error"]) == ("running", None)


@pytest_twisted.ensureDeferred
async def test_sandboxes_of_another_host_are_left_alone(world: World) -> None:
    """A backend whose sandboxes only their host reaches (process): each start records the
    host, and a server on another host neither reconciles nor pauses them."""
    world.manager.host = "here"
    ours, theirs, starting = await world.sandbox(), await world.sandbox(), await world.sandbox()
    (row,) = await world.db.query("SELECT host FROM sandboxes WHERE id = %s", (ours,))
    assert row["host"] == "here"
    await world.db.execute(
        "UPDATE sandboxes SET host = 'elsewhere' WHERE id = ANY(%s::uuid[])", ([theirs, starting],)
    )
    await world.db.execute("UPDATE sandboxes SET status = 'creating' WHERE id = %s", (starting,))
    for sid in (ours, theirs, starting):
        world.backend.crash(sid)  # (not running on this host)
    await world.reconciler.sweep()
    assert await world.status(ours) == "paused"
    assert await world.status(theirs) == "running"
    assert await world.status(starting) == "creating"

    idle = await world.sandbox()
    await world.db.execute("UPDATE sandboxes SET status = 'running' WHERE id = %s", (theirs,))
    world.clock.advance(IDLE + 1)
    await world.idle.sweep()
    await world.manager.drain()
    assert await world.status(idle) == "paused"
    assert await world.status(theirs) == "running"
    await world.manager.paused_by_shutdown()
    assert await world.status(theirs) == "running"


async def _replica(db: Database, silent_for: float) -> str:
    """A replica row in the registry that last heartbeat ``silent_for`` seconds ago."""
    replica = uuid.uuid4().hex[:12]
    await db.execute(
        "INSERT INTO replicas (id, hostname, instance, backend, embedded_db, heartbeat_at)"
        " VALUES (%s, 'elsewhere', %s, 'fake', false, now() - make_interval(secs => %s))",
        (replica, f"/data/{replica}", silent_for),
    )
    return replica


@pytest_twisted.ensureDeferred
async def test_reconciler_leaves_another_live_replicas_work_alone(world: World) -> None:
    """A sandbox a live replica is creating, resuming or pausing is that replica's: the
    leader neither fails, forces nor pauses it; once that replica's heartbeat has expired
    (it died mid-transition) the row is repaired as after a crash."""
    world.manager.replica = "leader"
    busy, dead = await _replica(world.db, 0), await _replica(world.db, 3600)
    creating, resuming, pausing = [
        await world.sandbox(s) for s in ("creating", "resuming", "pausing")
    ]
    running = await world.sandbox()
    orphaned = await world.sandbox("creating")
    for sid in (creating, resuming, pausing, running, orphaned):
        world.backend.crash(sid)  # (not running yet: the other replica is still at it)
    await world.db.execute(
        "UPDATE sandboxes SET worked_by = %s WHERE id = ANY(%s::uuid[])",
        (busy, [creating, resuming, pausing, running]),
    )
    await world.db.execute("UPDATE sandboxes SET worked_by = %s WHERE id = %s", (dead, orphaned))
    await world.reconciler.sweep()
    assert [await world.status(s) for s in (creating, resuming, pausing, running)] == [
        "creating",
        "resuming",
        "pausing",
        "running",
    ]
    assert not {("stop", s) for s in (creating, resuming, pausing)} & set(world.backend.calls)
    (row,) = await world.db.query(
        "SELECT status, error, worked_by FROM sandboxes WHERE id = %s", (orphaned,)
    )
    assert (row["status"], row["worked_by"]) == ("failed", None)
    assert "start was interrupted" in row["error"]

    # The idle monitor too leaves what another live replica works on.
    idle = await world.sandbox()
    world.clock.advance(IDLE + 1)
    await world.idle.sweep()
    await world.manager.drain()
    assert await world.status(idle) == "paused"
    assert await world.status(running) == "running"

    # That replica dies: its rows are repaired by the next sweep.
    await world.db.execute(
        "UPDATE replicas SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (busy,)
    )
    await world.reconciler.sweep()
    assert [await world.status(s) for s in (creating, resuming, pausing, running)] == [
        "failed",
        "paused",
        "paused",
        "paused",
    ]


@pytest_twisted.ensureDeferred
async def test_transitions_record_and_clear_their_replica(world: World) -> None:
    """Each background transition names this replica on the row while it runs and clears it
    in the statement that ends it, success or failure."""
    world.manager.replica = "me"

    async def worked_by(sandbox_id: str) -> str | None:
        (row,) = await world.db.query(
            "SELECT worked_by FROM sandboxes WHERE id = %s", (sandbox_id,)
        )
        return row["worked_by"]  # type: ignore[no-any-return]

    world.backend.hold()
    made = str((await world.manager.create(world.workspace, world.user, "held"))["id"])
    assert await worked_by(made) == "me"
    world.backend.release()
    await world.manager.drain()
    assert (await world.status(made), await worked_by(made)) == ("running", None)

    await world.manager.pause(made, world.user)  # (the FAKE stop is instant: not seen mid-way)
    await world.manager.drain()
    assert (await world.status(made), await worked_by(made)) == ("paused", None)

    world.backend.hold()
    await world.manager.resume(made, world.user)
    assert await worked_by(made) == "me"
    world.backend.release()
    await world.manager.drain()
    assert (await world.status(made), await worked_by(made)) == ("running", None)
    await world.manager.pause(made, world.user)
    await world.manager.drain()

    world.backend.fail_next = "no capacity"
    await world.manager.resume(made, world.user)
    await world.manager.drain()
    assert (await world.status(made), await worked_by(made)) == ("failed", None)
